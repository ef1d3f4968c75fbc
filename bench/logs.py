#!/usr/bin/env python3
"""The console on a huge rank log (issue 11 "whole logs"): a finished run whose rank 1
wrote SIZE GB (~100-byte lines), opened as `flextui open RUN` opens it (RecordedJob in the
real FlexApp, headless via App.run_test, 160x48). Prints:

  rss            the console process's RSS with the log open and indexed (and its peak)
  open           RecordedJob read from the run directory (the last 5,000 lines per rank)
  index          the rank's tab shown -> its log file indexed (lines numbered, MB/s)
  g              `g` -> line 1 of the file on screen
  search N       `N` from the end -> a line near the start: the whole file backward (MB/s)
  search miss    `/` a pattern on no line: the whole file (MB/s), case-sensitive and
                 smart-case (lower-case pattern: the bytes are lower-cased first), a regex
  x              `x` -> the first failure's traceback near the start of its log

The file is in the page cache (just written; 24 GB of RAM): the figures are the console's
own cost, not the disk's. Usage: .venv/bin/python bench/logs.py [--size-gb 5] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flextui.runs import RecordedJob  # noqa: E402
from flextui.ui.app import FlexApp  # noqa: E402
from flextui.world import World  # noqa: E402

NEEDLE_AT = 1_000  # the line `N` and `/` look for, near the start
TRACEBACK_AT = 2_000
BLOCK_LINES = 500_000


def line(i: int) -> bytes:
    return (b"[rank 1] step %09d | loss 2.%06d | lr 3.0e-04 | grad_norm 0.87 | 1534.2 tokens/s | mem 11.2 GB\n"
            % (i, i % 999_983))


def write_run(run_dir: Path, size: int) -> tuple[int, int]:
    """A finished 2-rank run; rank 1's log is `size` bytes. (lines, bytes) of that log."""
    world = World.from_slots({"localhost": [0, 1]})
    run_dir.mkdir(parents=True)
    events = [{"ev": "plan", **world.plan(), "run_id": run_dir.name, "mode": "fixed"}]
    for rank in (0, 1):
        events.append({"ev": "started", "node": 0, "rank": rank, "pid": 100 + rank, "t": 1.0})
        events.append({"ev": "exited", "node": 0, "rank": rank, "code": rank, "signal": None, "t": 9.0})
    events.append({"ev": "finished", "t": 10.0})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "rank-0.log").write_text("hello\n")
    head = [line(i) for i in range(BLOCK_LINES)]
    head[NEEDLE_AT] = b"[rank 1] a needle-in-the-haystack line near the start\n"
    head[TRACEBACK_AT:TRACEBACK_AT + 3] = [b"Traceback (most recent call last):\n",
                                           b'  File "train.py", line 9, in main\n',
                                           b"ValueError: bad batch\n"]
    written, lines = 0, 0
    with open(run_dir / "rank-1.log", "wb") as f:
        block = b"".join(head)
        while written < size:
            if lines == BLOCK_LINES:  # then the same steps again (formatting 50M lines is slow)
                block = b"".join(line(i) for i in range(lines, lines + BLOCK_LINES))
            f.write(block)
            written += len(block)
            lines += BLOCK_LINES
    (run_dir / "summary.json").write_text(json.dumps({"ranks": [{"rank": 0, "lines": 1},
                                                                 {"rank": 1, "lines": lines}]}))
    return lines, written


async def until(pilot, condition, timeout: float = 600.0) -> float:
    t0 = time.perf_counter()
    while not condition():
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError("timed out")
        await pilot.pause(0.005)
    return time.perf_counter() - t0


async def measure(run_dir: Path) -> dict:
    proc = psutil.Process()
    out: dict = {"rss_before_mb": proc.memory_info().rss / 2**20}
    t = time.perf_counter()
    job = RecordedJob(str(run_dir))
    out["open_s"] = time.perf_counter() - t
    app = FlexApp(job, theme="dark", theme_dirs=[])
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.3)
        view = app.log_view

        def screen() -> list[str]:
            return view.visible_text()

        t = time.perf_counter()
        app.open_tab("r1")
        source = view.source
        await until(pilot, lambda: source.ready)
        out["index_s"] = time.perf_counter() - t
        out["lines"] = source.index.lines
        out["checkpoints"] = len(source.index._offsets)
        view.focus()
        await pilot.press("g")
        out["g_s"] = await until(pilot, lambda: screen()[0].startswith("[rank 1] step 000000000 "))
        out["rss_open_mb"] = proc.memory_info().rss / 2**20

        answers: list[float] = []  # when each search's answer came back
        find_later = view.find_later

        def timed_find_later(predicate, then, *args, **kwargs):
            def answered(index):
                answers.append(time.perf_counter())
                then(index)
            return find_later(predicate, answered, *args, **kwargs)

        view.find_later = timed_find_later

        async def search(pattern: str, key: str | None, expect) -> float:
            await pilot.press("G")
            await pilot.pause(0.05)
            asked = len(answers)
            if key is None:  # `/`: the prompt searches forward from the view's top line
                await pilot.press("slash")
                app.prompt.value = pattern
                t = time.perf_counter()
                await pilot.press("enter")
            else:
                t = time.perf_counter()
                await pilot.press(key)
            await until(pilot, lambda: len(answers) > asked)
            elapsed = answers[-1] - t
            assert expect(view.cursor), (pattern, view.cursor)
            return elapsed

        # set the search (found at once: forward from the bottom wraps to the start), then
        # N from the end: backward through the whole file
        out["search_wrap_s"] = await search("needle-in-the", None, lambda c: c == NEEDLE_AT)
        out["search_back_s"] = await search("needle-in-the", "N", lambda c: c == NEEDLE_AT)
        def missed(cursor) -> bool:
            return cursor is None  # G left no cursor; a miss sets none

        out["search_miss_s"] = await search("NO-SUCH-LINE", None, missed)
        out["search_miss_fold_s"] = await search("no-such-line", None, missed)
        out["search_miss_regex_s"] = await search(r"loss 7\.\d+ \| lr 9", None, missed)
        await pilot.press("escape")
        t = time.perf_counter()
        await pilot.press("x")
        await until(pilot, lambda: view.cursor == TRACEBACK_AT, timeout=600)
        out["x_s"] = time.perf_counter() - t
        out["rss_end_mb"] = proc.memory_info().rss / 2**20
        app.exit()
    out["rss_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=5.0)
    parser.add_argument("--dir", default="/tmp", help="where the run directory goes (deleted after)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = int(args.size_gb * 1e9)
    free = shutil.disk_usage(args.dir).free
    if free < size * 1.2:
        print(f"bench/logs.py: {args.dir} has {free / 1e9:.1f} GB free, need {size * 1.2 / 1e9:.1f}", file=sys.stderr)
        return 1
    base = Path(tempfile.mkdtemp(prefix="flextui-bench-logs-", dir=args.dir))
    try:
        t = time.perf_counter()
        run_dir = base / "20260101-000000-bench"
        # in a child process: the peak RSS reported is the console's, not the generator's
        writer = multiprocessing.get_context("fork").Process(target=write_run, args=(run_dir, size))
        writer.start()
        writer.join()
        if writer.exitcode != 0:
            print(f"bench/logs.py: writing the log failed ({writer.exitcode})", file=sys.stderr)
            return 1
        generated = time.perf_counter() - t
        written = (run_dir / "rank-1.log").stat().st_size
        out = asyncio.run(measure(run_dir))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    mb = written / 1e6
    out.update({"size_mb": mb, "generate_s": generated, "load_1min": os.getloadavg()[0]})
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    rows = [
        ("rank log", f"{mb / 1000:.2f} GB, {out['lines']:,} lines ({out['checkpoints']:,} index checkpoints)"),
        ("rss (console, log open)", f"{out['rss_open_mb']:.0f} MB  (before open {out['rss_before_mb']:.0f} MB, "
                                    f"after the searches {out['rss_end_mb']:.0f} MB, peak {out['rss_peak_mb']:.0f} MB)"),
        ("open (RecordedJob)", f"{out['open_s']:.2f} s"),
        ("index (tab -> numbered)", f"{out['index_s']:.2f} s  ({mb / out['index_s']:.0f} MB/s)"),
        ("g -> line 1 on screen", f"{out['g_s'] * 1000:.0f} ms"),
        ("search N from the end", f"{out['search_back_s']:.2f} s  ({mb / out['search_back_s']:.0f} MB/s, line {NEEDLE_AT:,})"),
        ("search miss, literal", f"{out['search_miss_s']:.2f} s  ({mb / out['search_miss_s']:.0f} MB/s)"),
        ("search miss, smart-case", f"{out['search_miss_fold_s']:.2f} s  ({mb / out['search_miss_fold_s']:.0f} MB/s)"),
        ("search miss, regex", f"{out['search_miss_regex_s']:.2f} s  ({mb / out['search_miss_regex_s']:.0f} MB/s)"),
        ("x -> traceback at start", f"{out['x_s']:.2f} s  ({mb / out['x_s']:.0f} MB/s)"),
        ("machine load (1 min)", f"{out['load_1min']:.2f}  (2 cores, shared)"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
