#!/usr/bin/env python3
"""The Textual console under log load: key → screen latency, refreshes, CPU, RSS.

The real FlexApp runs with its real terminal driver on a pseudo-terminal this process
owns, as it would in a user's terminal: keys are written as bytes into the terminal
(parsed by Textual's input thread), frames are encoded and written by the driver, and
a reader thread stands in for the terminal emulator, draining what the app writes. A
synthetic job (no processes) feeds W ranks × R lines/s into the real JobModel as
launcher "out" events (JSON-decoded like the real ones) on the app's event loop.

Each key is timed from the moment its bytes are written into the terminal to the moment
the terminal has read the end of the first frame that SHOWS its result: a frame composed
after the app's state reflected the key (table re-sorted, cursor moved, rank log
switched, ...) and in which the widget that shows it was drawn again. Keys sent in turn
(--keys): tab (Tab: the next rank's log), table (↓/↑: the table's cursor), sort (o),
group (b: group by node / ungroup), fold (←/→ on a node row: fold / unfold it), filter
(F node12 Enter / F ^U Enter: filter the table / clear it; timed from Enter), picker
(: 137 Enter, then : 150 Enter, in turn: that rank's log; timed from Enter, once the picker
lists it: the same rank again would change nothing on screen but the picker closing), search
(/ loss 0.1 Enter once, then n: the next match shown; rank r's loss is ((step + r) % 977) / 977,
so ranks 137 and 150, which the picker shows, write such lines in their first ~5 s at 10
lines/s, and they stay in the ring).

CPU and RSS are this process's (the console; it also runs the synthetic feed, whose own
time is reported apart as feed_cpu_percent_of_core).

    .venv/bin/python bench/ui_load.py                        # 64 ranks x 1000 lines/s, 10 s
    .venv/bin/python bench/ui_load.py --ranks 8 --rate 10000 --seconds 20 --tab rank
    .venv/bin/python bench/ui_load.py --ranks 512 --rate 10 --seconds 30 \\
        --keys tab,table,sort,group,fold,filter,picker,search
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import gc
import inspect
import json
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402

from flextui.model import JobModel  # noqa: E402
from flextui.ui.app import FlexApp  # noqa: E402
from flextui.ui.driver import ConsoleDriver  # noqa: E402
from flextui.world import World  # noqa: E402

KEY_BYTES = {"tab": b"\t", "down": b"\x1b[B", "up": b"\x1b[A", "left": b"\x1b[D", "right": b"\x1b[C",
             "enter": b"\r", "ctrl+u": b"\x15"}
LATE = 5.0  # a key not answered in this many seconds counts as that long (the bench goes on)


class SyntheticJob:
    """What FlexApp needs from a Job (flextui.job.JobProtocol), fed by a timer instead of
    node launchers."""

    def __init__(self, ranks: int, per_node: int, rate: float, tail: int) -> None:
        hosts = {f"node{i:02d}": list(range(per_node)) for i in range(max(1, ranks // per_node))}
        self.world = World.from_slots(hosts)
        self.model = JobModel(self.world, "bench", tail_lines=tail)
        self.run_id = "bench"
        self.rate = rate
        self.lines = 0
        self.feed_seconds = 0.0  # time spent making and applying events (the job's side)
        self._stop = asyncio.Event()

        self.grace = 1.0
        self.run_path = "flextui-runs/bench"

    async def run(self) -> int:
        model = self.model
        for r in model.ranks:
            model.apply(r.info.node_rank, {"ev": "started", "rank": r.rank, "pid": 1000 + r.rank,
                                           "t": time.time()})
        period = 0.01
        per_tick = self.rate * period
        carry = 0.0
        step = 0
        next_t = perf_counter()
        while not self._stop.is_set():
            carry += per_tick
            n = int(carry)
            carry -= n
            if n:
                t = perf_counter()
                for r in model.ranks:
                    data = "".join(  # ranks differ in more than their number: no collapsing
                        f"rank {r.rank} step {step + i} loss {((step + i + r.rank) % 977) / 977:.4f} "
                        f"lr 3.0e-04 tokens/s {51234 + i} mem 12.3GB\n" for i in range(n)
                    )
                    line = json.dumps({"ev": "out", "rank": r.rank, "data": data})
                    model.apply(r.info.node_rank, json.loads(line))
                    self.lines += n
                step += n
                self.feed_seconds += perf_counter() - t
            next_t += period
            await asyncio.sleep(max(0.0, next_t - perf_counter()))
        model.finish()
        return 0

    def stop(self, reason: str, by_user: bool = False) -> None:
        self._stop.set()

    def abort(self, signum: int = signal.SIGINT) -> None:
        self._stop.set()

    def kill(self) -> None:
        self._stop.set()

    def stop_rank(self, rank: int) -> None:
        pass

    def kill_rank(self, rank: int) -> None:
        pass

    def stop_node(self, node_rank: int) -> None:
        pass


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


READER = r"""
import os, struct, sys, time
master, out = int(sys.argv[1]), sys.stdout.buffer
total = 0
while True:
    try:
        data = os.read(master, 1 << 16)
    except OSError:
        break
    if not data:
        break
    total += len(data)
    out.write(struct.pack("<qd", total, time.clock_gettime(time.CLOCK_MONOTONIC)))
    out.flush()
"""


class Terminal:
    """The user's side of the pseudo-terminal: keys go in; frames are read by another
    process, as a terminal emulator would, so the app's writes never block on us and the
    time a frame's last byte arrived is known. It is a process, not a thread of this one:
    a reader thread needs this process's GIL, which the app holds most of the time, and
    that added 20-30 ms to every key's latency (the app had written the frame; the
    "terminal" had not been let read it)."""

    def __init__(self, width: int, height: int) -> None:
        self.master, self.slave = os.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", height, width, 0, 0))
        self.read_total = 0
        self._read_at: list[tuple[int, float]] = []  # (bytes read so far, when: CLOCK_MONOTONIC)
        self._cond = threading.Condition()
        self._process = subprocess.Popen([sys.executable, "-c", READER, str(self.master)],
                                         pass_fds=(self.master,), stdout=subprocess.PIPE)
        self._reports = threading.Thread(target=self._collect, daemon=True)
        self._reports.start()

    def _collect(self) -> None:
        pipe = self._process.stdout
        while True:
            record = pipe.read(16)
            if len(record) < 16:
                return
            total, at = struct.unpack("<qd", record)
            with self._cond:
                self.read_total = total
                self._read_at.append((total, at))
                self._cond.notify_all()

    @staticmethod
    def now() -> float:
        return time.clock_gettime(time.CLOCK_MONOTONIC)

    def send(self, data: bytes) -> float:
        t = self.now()
        os.write(self.master, data)
        return t

    def wait_read(self, total: int, timeout: float) -> float | None:
        """When (CLOCK_MONOTONIC, as the reader saw it) `total` bytes had been read (None:
        not within timeout). Called from a worker thread: it blocks."""
        deadline = perf_counter() + timeout
        with self._cond:
            while self.read_total < total:
                left = deadline - perf_counter()
                if left <= 0:
                    return None
                self._cond.wait(left)
            return next(at for read, at in self._read_at if read >= total)

    def close(self) -> None:
        self._process.kill()
        self._process.wait()


class Probe:
    """Waits for the first frame written that shows a key's result."""

    def __init__(self, done: Callable[[], bool]) -> None:
        self.done = done
        self.drawn = False  # the watched widget drew while `done()` held
        self.frame_end: int | None = None  # bytes written up to the end of that frame
        self.frame_at: float | None = None
        self.cpu_at_key = time.thread_time()  # the event loop's thread (the bench sends from it)
        self.cpu_at_frame: float | None = None


class CountingDriver(ConsoleDriver):
    """The console's driver, counting the bytes it writes to the terminal from the first."""

    def write(self, data: str) -> None:
        app = self._app
        encoded = data.encode(app.encoding, "replace")
        # the terminal's output processing (ONLCR, left on by Textual) sends "\n" as "\r\n"
        app.written += len(encoded) + encoded.count(b"\n")
        super().write(data)


class TimedApp(FlexApp):
    """FlexApp plus the bench's instruments: refresh ticks, drawn widgets, written frames."""

    CSS_PATH = str(Path(inspect.getfile(FlexApp)).parent / FlexApp.CSS_PATH)  # not beside this file

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.driver_class = CountingDriver
        self.encoding = getattr(sys.__stderr__, "encoding", None) or "utf-8"
        self.tick_times: list[float] = []
        self.tick_costs: list[float] = []  # seconds each refresh took (the app's own work)
        self.written = 0  # bytes the driver was given to write (encoded as on the terminal)
        self.frames = 0
        self.probe: Probe | None = None
        self.table_renders = 0
        self.view_renders = 0  # rows the log view drew (the product keeps no such counter)

    def _tick(self) -> None:
        t = perf_counter()
        self.tick_times.append(t)
        super()._tick()
        self.tick_costs.append(perf_counter() - t)

    def instrument(self) -> None:
        """Note which draws of the table and log view happened while a probe's condition
        held."""
        for widget in (self.table, self.log_view):
            draw = widget.render_line

            def render_line(y: int, draw=draw, widget=widget):
                if widget is self.table:
                    self.table_renders += 1
                else:
                    self.view_renders += 1
                probe = self.probe
                if probe is not None and probe.watched is widget and not probe.drawn and probe.done():
                    probe.drawn = True
                return draw(y)

            widget.render_line = render_line  # type: ignore[method-assign]

    def _display(self, screen, renderable) -> None:
        super()._display(screen, renderable)
        if renderable is None:
            return
        self.frames += 1
        probe = self.probe
        if probe is not None and probe.drawn and probe.frame_end is None:
            probe.frame_end = self.written
            probe.frame_at = perf_counter()
            probe.cpu_at_frame = time.thread_time()


async def bench(args: argparse.Namespace) -> dict:
    width, height = (int(x) for x in args.size.split("x"))
    terminal = Terminal(width, height)
    # Textual's driver reads keys from stdin and draws on stderr; its size comes from
    # COLUMNS/LINES (shutil), as stdout stays ours (the result goes there).
    saved_stdin, saved_stderr = os.dup(0), os.dup(2)
    os.dup2(terminal.slave, 0)
    os.dup2(terminal.slave, 2)
    os.environ["COLUMNS"], os.environ["LINES"] = str(width), str(height)
    job = SyntheticJob(args.ranks, args.per_node, args.rate, args.tail)
    app = TimedApp(job, theme="dark")
    try:
        return await _drive(app, job, terminal, args)
    finally:
        os.dup2(saved_stdin, 0)
        os.dup2(saved_stderr, 2)
        terminal.close()


async def _drive(app: TimedApp, job: SyntheticJob, terminal: Terminal, args: argparse.Namespace) -> dict:
    proc = psutil.Process()
    kinds = args.keys.split(",")
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    # CPU time of the event loop's thread from the key to its frame: the app's own work for
    # the key plus whatever else the loop ran meanwhile (refresh ticks, the feed) — what the
    # latency would be on an idle machine, at most; the rest of the latency is waiting for a core
    key_cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
    missed: dict[str, int] = {}
    app_task = asyncio.get_running_loop().create_task(app.run_async())
    deadline = perf_counter() + 20
    while not (app.is_running and app._driver is not None and hasattr(app, "log_view")
               and app.log_view.is_attached) and perf_counter() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)
    app.instrument()
    view, table = app.log_view, app.table
    if args.tab == "rank":
        app.open_rank(0)
    lags: list[float] = []
    # Python's collector: a full (generation 2) collection walks every tracked object and
    # stops the event loop meanwhile, so its pauses land on whatever key is pending.
    collections: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = perf_counter()
        else:
            collections[info["generation"]].append(perf_counter() - started[0])

    gc.callbacks.append(on_gc)

    async def probe_loop() -> None:  # event-loop lag: how late a 10 ms sleep wakes up
        while True:
            t = perf_counter()
            await asyncio.sleep(0.01)
            lags.append(perf_counter() - t - 0.01)

    async def settle(done: Callable[[], bool], limit: float = 3.0) -> bool:
        until = perf_counter() + limit
        while not done():
            if perf_counter() > until:
                return False
            await asyncio.sleep(0.005)
        return True

    async def timed(kind: str, keys: bytes, done: Callable[[], bool], watched) -> None:
        probe = Probe(done)
        probe.watched = watched  # type: ignore[attr-defined]
        app.probe = probe
        until = perf_counter() + LATE
        t0 = terminal.send(keys)
        while probe.frame_end is None and perf_counter() < until:
            await asyncio.sleep(0.001)
        shown = None
        if probe.frame_end is not None:
            shown = await asyncio.to_thread(terminal.wait_read, probe.frame_end, max(0.0, until - perf_counter()))
        app.probe = None
        if shown is None and os.environ.get("UI_LOAD_DEBUG"):
            print(kind, "unanswered: done", done(), "drawn", probe.drawn, "frame_end", probe.frame_end,
                  "read", terminal.read_total, "focused", app.focused, "query", table.order.query.text,
                  "prompt", app.prompt.value, "tab", app.current_tab, "cursor", view.cursor, "search",
                  view.search and view.search.pattern, "searching", view.searching,
                  [n.message for n in app._notifications], file=sys.__stdout__, flush=True)
        if shown is None:
            missed[kind] = missed.get(kind, 0) + 1
            latencies[kind].append(LATE)
        else:
            latencies[kind].append(shown - t0)
            key_cpu[kind].append(probe.cpu_at_frame - probe.cpu_at_key)

    async def type_keys(*keys: bytes | int) -> None:
        """One key at a time, as typed (bytes of several keys in one read may be taken
        for a paste)."""
        for key in keys:
            terminal.send(bytes([key]) if isinstance(key, int) else key)
            await asyncio.sleep(0.03)

    async def clear_prompt() -> None:
        """^U in the prompt; alone (Textual's input parser drops a key that arrives in the
        same read as a control character)."""
        if app.prompt.value:
            terminal.send(KEY_BYTES["ctrl+u"])
            await settle(lambda: not app.prompt.value)

    def focus_table() -> None:  # not timed: t would do it, the bench just needs the table's keys
        if app.focused is not table:
            table.focus()


    async def send_key(kind: str) -> None:
        if kind == "tab":
            before = view.source
            await timed(kind, KEY_BYTES["tab"], lambda: view.source is not before, view)
        elif kind == "table":
            focus_table()
            cursor = table.cursor
            key = "down" if cursor == 0 else "up"
            await timed(kind, KEY_BYTES[key], lambda: table.cursor != cursor, table)
        elif kind in ("sort", "group"):
            before = (table.order.sort, table.order.grouped)
            await timed(kind, b"o" if kind == "sort" else b"b",
                        lambda: (table.order.sort, table.order.grouped) != before, table)
        elif kind == "fold":
            focus_table()
            if not table.order.grouped:
                terminal.send(b"b")
                await settle(lambda: table.order.grouped)
            folded = len(table.order.collapsed)
            key = "right" if folded else "left"
            await timed(kind, KEY_BYTES[key], lambda: len(table.order.collapsed) != folded, table)
        elif kind == "filter":
            target = "" if table.order.query.text else "node12"
            terminal.send(b"F")
            if not await settle(lambda: app.focused is app.prompt):
                missed[kind] = missed.get(kind, 0) + 1
                return
            await clear_prompt()
            await type_keys(*target.encode())
            ok = await settle(lambda: app.prompt.value == target)
            if os.environ.get("UI_LOAD_DEBUG"):
                print("typed", ok, repr(app.prompt.value), app.focused, file=sys.__stdout__, flush=True)
            await timed(kind, KEY_BYTES["enter"], lambda: table.order.query.text == target, table)
        elif kind == "picker":
            picks = latencies[kind]
            target = min(137 if len(picks) % 2 == 0 else 150, len(app.model.ranks) - 1)
            terminal.send(b":")
            if not await settle(lambda: app.focused is app.prompt and app.pick_list.display):
                missed[kind] = missed.get(kind, 0) + 1
                return
            await type_keys(*str(target).encode())

            def listed() -> bool:
                picks = app.pick_list
                return picks.option_count > 0 and str(picks.get_option_at_index(0).prompt).startswith(
                    f"rank {target} ")

            if not await settle(listed):
                missed[kind] = missed.get(kind, 0) + 1
                terminal.send(b"\x1b")
                return
            await timed(kind, KEY_BYTES["enter"], lambda: app.current_tab == f"r{target}"
                        and view.source is app.sources.get(f"r{target}"), view)
        elif kind == "search":
            if view.search is None:
                terminal.send(b"/")
                await settle(lambda: app.focused is app.prompt)
                await clear_prompt()
                await type_keys(*b"loss 0.1")
                await settle(lambda: app.prompt.value == "loss 0.1")
                await timed(kind, KEY_BYTES["enter"], lambda: view.search is not None and view.cursor is not None,
                            view)
            else:
                if app.focused is app.prompt:
                    focus_table()
                before = (view.source, view.cursor)
                await timed(kind, b"n", lambda: (view.source, view.cursor) != before, view)
        else:
            raise SystemExit(f"ui_load: unknown key kind {kind!r}")

    prober = asyncio.get_running_loop().create_task(probe_loop())
    cpu0 = sum(proc.cpu_times()[:2])
    feed0 = job.feed_seconds
    t_start = perf_counter()
    ticks0, costs0 = len(app.tick_times), len(app.tick_costs)
    lines0, renders0, frames0, written0 = job.lines, app.view_renders, app.frames, app.written
    end = t_start + args.seconds
    n = 0
    while perf_counter() < end:
        await asyncio.sleep(args.key_every)
        kind = kinds[n % len(kinds)]
        n += 1
        if os.environ.get("UI_LOAD_DEBUG"):
            print(n, kind, file=sys.__stdout__, flush=True)
        await send_key(kind)
    elapsed = perf_counter() - t_start
    cpu = sum(proc.cpu_times()[:2]) - cpu0
    feed = job.feed_seconds - feed0
    ticks = app.tick_times[ticks0:]
    costs = app.tick_costs[costs0:]
    intervals = [b - a for a, b in zip(ticks, ticks[1:])]
    renders = app.view_renders - renders0
    frames = app.frames - frames0
    written = app.written - written0
    gc.callbacks.remove(on_gc)
    tracked = len(gc.get_objects())
    gc.collect()
    rss = proc.memory_info().rss
    lines = job.lines - lines0
    prober.cancel()
    job.stop("bench over")
    await asyncio.sleep(0.3)
    app.exit()
    try:
        await asyncio.wait_for(app_task, 10)
    except (asyncio.TimeoutError, Exception):
        pass
    await asyncio.sleep(0.3)  # the app has stopped writing; the terminal reads the rest
    unaccounted = terminal.read_total - app.written  # bytes on the terminal the count missed (0: exact)
    everything = [x for v in latencies.values() for x in v]
    return {
        "ranks": args.ranks, "rate_per_rank": args.rate, "seconds": round(elapsed, 1),
        "terminal": args.size, "lines_fed": lines, "lines_per_s": round(lines / elapsed),
        "key_p50_ms": round(pct(everything, 0.5) * 1000, 1),
        "key_p95_ms": round(pct(everything, 0.95) * 1000, 1),
        "key_max_ms": round(max(everything) * 1000, 1) if everything else None,
        "keys": len(everything),
        "keys_unanswered": missed,
        "by_key_p95_ms": {k: round(pct(v, 0.95) * 1000, 1) for k, v in latencies.items() if v},
        "by_key_p50_ms": {k: round(pct(v, 0.5) * 1000, 1) for k, v in latencies.items() if v},
        "key_loop_cpu_p50_ms": round(pct([x for v in key_cpu.values() for x in v], 0.5) * 1000, 1),
        "key_loop_cpu_p95_ms": round(pct([x for v in key_cpu.values() for x in v], 0.95) * 1000, 1),
        "by_key_loop_cpu_p95_ms": {k: round(pct(v, 0.95) * 1000, 1) for k, v in key_cpu.items() if v},
        "tick_p50_ms": round(pct(intervals, 0.5) * 1000, 1),
        "tick_p95_ms": round(pct(intervals, 0.95) * 1000, 1),
        "ticks_per_s": round(len(ticks) / elapsed, 1),
        "tick_cost_p50_ms": round(pct(costs, 0.5) * 1000, 1),
        "tick_cost_p95_ms": round(pct(costs, 0.95) * 1000, 1),
        "frames_per_s": round(frames / elapsed, 1),
        "terminal_kb_per_s": round(written / elapsed / 1024, 1),
        "terminal_bytes_unaccounted": unaccounted,
        "log_rows_rendered_per_s": round(renders / elapsed),
        "loop_lag_p95_ms": round(pct(lags, 0.95) * 1000, 1),
        "cpu_percent_of_core": round(100 * cpu / elapsed),
        "feed_cpu_percent_of_core": round(100 * feed / elapsed),
        "rss_mb": round(rss / 2**20, 1),
        "gc_full_collections": len(collections[2]),
        "gc_full_pause_max_ms": round(max(collections[2], default=0) * 1000, 1),
        "gc_young_pause_p95_ms": round(pct(collections[0] + collections[1], 0.95) * 1000, 1),
        "gc_tracked_objects": tracked,
        "machine_load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--per-node", type=int, default=8)
    parser.add_argument("--rate", type=float, default=1000.0, help="lines/s per rank")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--key-every", type=float, default=0.25, help="pause between keys (s)")
    parser.add_argument("--tail", type=int, default=5000, help="lines kept per rank")
    parser.add_argument("--size", default="200x50", help="terminal WIDTHxHEIGHT")
    parser.add_argument("--tab", choices=("all", "rank"), default="all", help="tab shown first")
    parser.add_argument("--keys", default="tab,table,tab,search",
                        help="the keys sent in turn: tab, table, sort, group, fold, filter, picker, search "
                             "(see the module docstring)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(bench(args))
    if args.json:
        print(json.dumps(result))
    else:
        width = max(map(len, result))
        for key, value in result.items():
            print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
