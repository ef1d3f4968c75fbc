#!/usr/bin/env python3
"""The Textual console under log load: key latency, frames, timer slip, CPU, RSS.

A synthetic job (no processes) feeds W ranks × R lines/s into the real JobModel as
launcher "out" events (JSON-decoded like the real ones) from the same event loop the
UI runs on, while the app runs headless (App.run_test). Every --key-every seconds a
key is sent and timed until the screen shows its effect (the log view re-rendered the
new tab / the table moved its cursor).

    .venv/bin/python bench/ui_load.py                        # 64 ranks x 1000 lines/s, 10 s
    .venv/bin/python bench/ui_load.py --ranks 8 --rate 10000 --seconds 20 --tab rank
    .venv/bin/python bench/ui_load.py --ranks 512 --rate 10 --seconds 30 --keys tab,table,search,sort,group
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import json
import os
import signal
import sys
import time
from pathlib import Path
from time import perf_counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import psutil  # noqa: E402
from textual import events  # noqa: E402

from flextui.model import JobModel  # noqa: E402
from flextui.ui.app import FlexApp  # noqa: E402
from flextui.world import World  # noqa: E402


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
                for r in model.ranks:
                    data = "".join(  # ranks differ in more than their number: no collapsing
                        f"rank {r.rank} step {step + i} loss {((step + i + r.rank) % 977) / 977:.4f} "
                        f"lr 3.0e-04 tokens/s {51234 + i} mem 12.3GB\n" for i in range(n)
                    )
                    line = json.dumps({"ev": "out", "rank": r.rank, "data": data})
                    model.apply(r.info.node_rank, json.loads(line))
                    self.lines += n
                step += n
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


def late(t0: float, limit: float = 5.0) -> bool:
    """A key not answered in `limit` seconds counts as that long (and the bench goes on)."""
    return perf_counter() - t0 > limit


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


class TimedApp(FlexApp):
    """FlexApp that notes when each of its refresh ticks ran (the product keeps no such list)."""

    CSS_PATH = str(Path(inspect.getfile(FlexApp)).parent / FlexApp.CSS_PATH)  # not beside this file

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.tick_times: list[float] = []
        self.tick_costs: list[float] = []  # seconds each refresh took (the app's own work)

    def _tick(self) -> None:
        t = perf_counter()
        self.tick_times.append(t)
        super()._tick()
        self.tick_costs.append(perf_counter() - t)


def count_table_renders(app: FlexApp) -> list[int]:
    """A counter of the rank table's drawn rows (to see a sort or grouping on screen)."""
    counter = [0]
    draw = app.table.render_line

    def render_line(y: int):
        counter[0] += 1
        return draw(y)

    app.table.render_line = render_line
    return counter


async def bench(args: argparse.Namespace) -> dict:
    job = SyntheticJob(args.ranks, args.per_node, args.rate, args.tail)
    app = TimedApp(job, theme="dark")
    proc = psutil.Process()
    kinds = args.keys.split(",")
    latencies: dict[str, list[float]] = {kind: [] for kind in kinds}
    async with app.run_test(size=(200, 50)) as pilot:
        await pilot.pause(0.2)
        app.table.focus()
        if args.tab == "rank":
            app.open_rank(0)
        view = app.log_view
        table_renders = count_table_renders(app)
        lags: list[float] = []

        async def probe() -> None:  # event-loop lag: how late a 10 ms sleep wakes up
            while True:
                t = perf_counter()
                await asyncio.sleep(0.01)
                lags.append(perf_counter() - t - 0.01)

        prober = asyncio.get_running_loop().create_task(probe())
        cpu0 = sum(proc.cpu_times()[:2])
        t_start = perf_counter()
        ticks0 = len(app.tick_times)
        costs0 = len(app.tick_costs)
        lines0 = job.lines
        renders0 = view.renders
        deadline = t_start + args.seconds
        n = 0
        while perf_counter() < deadline:
            await asyncio.sleep(args.key_every)
            n += 1
            kind = kinds[n % len(kinds)]
            if os.environ.get("UI_LOAD_DEBUG"):
                print(n, kind, file=sys.stderr)
            t0 = perf_counter()
            if kind == "tab":
                before = view.source
                app.post_message(events.Key("tab", None))
                while view.source is before and not late(t0):
                    await asyncio.sleep(0.001)
                renders = view.renders
                while view.renders == renders and not late(t0):
                    await asyncio.sleep(0.001)
            elif kind == "table":
                cursor = app.table.cursor
                app.post_message(events.Key("down" if cursor == 0 else "up", None))
                while app.table.cursor == cursor and not late(t0):
                    await asyncio.sleep(0.001)
            elif kind in ("sort", "group"):  # the table re-ordered and drawn
                order = (app.table.order.sort, app.table.order.grouped)
                drawn = table_renders[0]
                app.post_message(events.Key("o" if kind == "sort" else "b", None))
                while (app.table.order.sort, app.table.order.grouped) == order and not late(t0):
                    await asyncio.sleep(0.001)
                while table_renders[0] == drawn and not late(t0):
                    await asyncio.sleep(0.001)
            else:  # a search over the shown tab's ring
                renders = view.renders
                view.set_search("step 1")
                app.action_search_next()
                while view.renders == renders and not late(t0):
                    await asyncio.sleep(0.001)
            latencies[kind].append(perf_counter() - t0)
        elapsed = perf_counter() - t_start
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        ticks = app.tick_times[ticks0:]
        costs = app.tick_costs[costs0:]
        intervals = [b - a for a, b in zip(ticks, ticks[1:])]
        renders = view.renders - renders0
        gc.collect()
        rss = proc.memory_info().rss
        lines = job.lines - lines0
        prober.cancel()
        job.stop("bench over")
        await pilot.pause(0.2)
        app.exit()
    everything = [x for v in latencies.values() for x in v]
    return {
        "ranks": args.ranks, "rate_per_rank": args.rate, "seconds": round(elapsed, 1),
        "lines_fed": lines, "lines_per_s": round(lines / elapsed),
        "key_p50_ms": round(pct(everything, 0.5) * 1000, 1),
        "key_p95_ms": round(pct(everything, 0.95) * 1000, 1),
        "key_max_ms": round(max(everything) * 1000, 1) if everything else None,
        "keys": len(everything),
        "by_key_p95_ms": {k: round(pct(v, 0.95) * 1000, 1) for k, v in latencies.items() if v},
        "tick_p50_ms": round(pct(intervals, 0.5) * 1000, 1),
        "tick_p95_ms": round(pct(intervals, 0.95) * 1000, 1),
        "ticks_per_s": round(len(ticks) / elapsed, 1),
        "tick_cost_p50_ms": round(pct(costs, 0.5) * 1000, 1),
        "tick_cost_p95_ms": round(pct(costs, 0.95) * 1000, 1),
        "log_rows_rendered_per_s": round(renders / elapsed),
        "loop_lag_p95_ms": round(pct(lags, 0.95) * 1000, 1),
        "cpu_percent_of_core": round(100 * cpu / elapsed),
        "rss_mb": round(rss / 2**20, 1),
        "machine_load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--per-node", type=int, default=8)
    parser.add_argument("--rate", type=float, default=1000.0, help="lines/s per rank")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--key-every", type=float, default=0.25)
    parser.add_argument("--tail", type=int, default=5000, help="lines kept per rank")
    parser.add_argument("--tab", choices=("all", "rank"), default="all", help="tab shown first")
    parser.add_argument("--keys", default="tab,table,tab,search",
                        help="the keys sent in turn: tab (next rank's log), table (cursor), search "
                             "(next match), sort (o), group (b)")
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
