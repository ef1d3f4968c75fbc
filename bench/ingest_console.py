"""The flextui console for the ingest and idle benchmarks, driven through its Python API.

    python bench/ingest_console.py --expect LINES --out STATS.json -- FLEXTUI_ARGS...

FLEXTUI_ARGS are exactly what `flextui` takes (hostfile, script, args); the job is built
with the same functions as the CLI (flextui.cli) and run with flextui.job.Job, with one
extra output listener that counts lines reaching the job model and samples their lag:
every 8th line of each batch carries the time.time() its worker wrote it
(bench/workers/flood.py), so lag = now - stamp when the line becomes visible in the model.

This process is the console: the parent measures its CPU and RSS with psutil, and it
reports its own CPU time over the streaming window and its peak RSS (ru_maxrss).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import signal
import sys
import time

from flextui.cli import parse_command_line, parse_env, resolve_world
from flextui.environment import worker_exports
from flextui.job import Job, JobConfig, LaunchError
from flextui.transport import backend_class
from flextui.world import Command

SAMPLE_EVERY = 8


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


class Probe:
    def __init__(self, expect: int) -> None:
        self.expect = expect
        self.lines = 0
        self.lags: list[float] = []
        self.first_stamp: float | None = None
        self.t_first: float | None = None
        self.t_last: float | None = None
        self.cpu_first: float | None = None
        self.cpu_last: float | None = None
        self.batches = 0
        self.trace: list | None = None

    def on_lines(self, rank: int, lines: list[str]) -> None:
        now = time.time()
        if self.t_first is None:
            self.t_first, self.cpu_first = now, cpu_seconds()
        self.batches += 1
        self.lines += len(lines)
        lags = self.lags
        for line in lines[::SAMPLE_EVERY]:
            try:
                stamp = float(line[:17])
            except ValueError:
                continue
            if self.first_stamp is None or stamp < self.first_stamp:
                self.first_stamp = stamp
            lags.append(now - stamp)
            if self.trace is not None:
                self.trace.append((round(now, 4), rank, round(now - stamp, 4)))
        if self.lines >= self.expect and self.t_last is None:
            self.t_last, self.cpu_last = now, cpu_seconds()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def run(args: argparse.Namespace, flextui_argv: list[str]) -> dict:
    fargs = parse_command_line(flextui_argv)
    backend = backend_class(fargs.launcher).from_args(fargs)
    world = resolve_world(fargs, backend.hosts(fargs.hostfile))
    command = Command(
        script=fargs.script, args=tuple(fargs.script_args),
        python=fargs.remote_python or sys.executable, module=fargs.module,
        no_python=fargs.no_python, no_local_rank=fargs.no_local_rank,
    )
    config = JobConfig(
        world=world, command=command, log_root=fargs.log_dir, grace=fargs.grace,
        cwd=fargs.remote_cwd or os.getcwd(), env=worker_exports(os.environ, os.getcwd(), parse_env(fargs.env)),
    )
    job = Job(config, backend)
    probe = Probe(args.expect)
    if args.lag_trace:
        probe.trace = []
    job.output_listeners.append(probe.on_lines)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, job.abort)
    loop.add_signal_handler(signal.SIGTERM, job.abort)
    t0, cpu0 = time.time(), cpu_seconds()
    if args.stop_after:
        loop.call_later(args.stop_after, job.stop, "benchmark over")
    code = await job.run()
    t_end, cpu_end = time.time(), cpu_seconds()
    if args.lag_trace:
        with open(args.lag_trace, "w") as f:
            json.dump(probe.trace, f)
    window = (probe.t_last or t_end) - (probe.first_stamp or probe.t_first or t0)
    stream_cpu = None
    if probe.cpu_first is not None and probe.t_first is not None:
        span = (probe.t_last or t_end) - probe.t_first
        if span > 0:
            stream_cpu = ((probe.cpu_last or cpu_end) - probe.cpu_first) / span
    return {
        "exit_code": code,
        "run_id": job.run_id,
        "run_dir": os.path.abspath(job.run_dir.path),
        "lines_model": probe.lines,
        "lines_expected": args.expect,
        "batches": probe.batches,
        "first_stamp": probe.first_stamp,
        "t_first_seen": probe.t_first,
        "t_last_seen": probe.t_last,
        "model_rate": probe.lines / window if window > 0 and probe.t_last else None,
        "lag_p50": percentile(probe.lags, 0.50),
        "lag_p99": percentile(probe.lags, 0.99),
        "lag_max": max(probe.lags) if probe.lags else None,
        "lag_samples": len(probe.lags),
        "stream_cpu": stream_cpu,  # cores, from first line seen to last expected line seen
        "total_cpu": cpu_end - cpu0,
        "wall": t_end - t0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "t_start": t0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect", type=int, default=0, help="lines the job will write in all")
    parser.add_argument("--out", required=True, help="write the stats JSON here")
    parser.add_argument("--stop-after", type=float, default=0.0, help="stop the job after this many seconds")
    parser.add_argument("--lag-trace", help="also dump (time, rank, lag) of every sample here")
    parser.add_argument("flextui_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.flextui_args[1:] if args.flextui_args[:1] == ["--"] else args.flextui_args
    try:
        stats = asyncio.run(run(args, argv))
    except LaunchError as exc:
        stats = {"error": f"launch failed: {exc}"}
    with open(args.out + ".tmp", "w") as f:
        json.dump(stats, f)
    os.replace(args.out + ".tmp", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
