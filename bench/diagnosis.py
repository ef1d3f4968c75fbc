#!/usr/bin/env python3
"""Issue 12's figures: what the per-rank sampling costs a node launcher, and how long `d`
(every rank's stack, grouped) takes.

    .venv/bin/python bench/diagnosis.py [--only sampling,stacks] [--ranks 8,64] [--seconds 30]
                                        [--runs 3]

sampling  A real node launcher (`python -m flextui.launch`, its spec on stdin) with N ranks,
          each a python process with one child (as a rank with a dataloader worker), all
          idle. Its own CPU time (psutil) over --seconds, with the spec's default 2 s
          sampling and with sampling off: the difference is what sampling costs, as % of
          one core. Also Sampler.sample() timed in-process over the same trees (ms per
          sample; at one sample per 2 s that is the same % another way). Target: <= 1%
          of a core for 8 ranks.
stacks    `d`'s work for 16 ranks on 4 nodes of the sshd test cluster (4 ranks each): a job of
          examples/train.py hung the way issue 12 describes (the last rank in its data
          loader, the others in all_reduce, one from another call site), then Job.dump_stacks()
          timed from the request to the grouped dump (every node's py-spy on each rank and
          its loader worker, the answers, grouping, stacks-HHMMSS.txt written) — --runs times,
          from the `d` key to the groups drawn in the console (FlexApp under Textual's
          headless run_test, 160x48), and Job.dump_stacks() alone.

Figures are printed, never asserted. Needs root for the cluster (namespaces).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

PY = sys.executable
RANK = r'''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(3600)"])
print("up", flush=True)
while True:
    time.sleep(3600)
'''


def log(text: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# -- sampling ------------------------------------------------------------------------------


def launcher_cpu(ranks: int, interval: float, seconds: float, work: Path) -> float:
    """% of one core the launcher itself used over `seconds`, its N ranks idle."""
    script = work / "rank.py"
    script.write_text(RANK)
    logs = work / f"logs-{ranks}-{interval}"
    spec = {
        "run_id": "bench", "node_rank": 0, "log_dir": str(logs), "cwd": str(work), "env": {},
        "grace": 2.0, "console_timeout": 0, "sample_interval": interval,
        "command": {"head": [PY, str(script)], "tail": [], "local_rank_arg": False},
        "workers": [{"rank": r, "local_rank": r, "env": {"RANK": str(r)}} for r in range(ranks)],
    }
    proc = subprocess.Popen([PY, "-m", "flextui.launch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=REPO)
    proc.stdin.write((json.dumps({"cmd": "spec", "spec": spec}) + "\n").encode())
    proc.stdin.flush()
    os.set_blocking(proc.stdout.fileno(), False)
    launcher = psutil.Process(proc.pid)
    try:
        deadline = time.monotonic() + 120
        while sum(1 for _ in logs.glob("rank-*.log") if _.read_text().startswith("up")) < ranks:
            if time.monotonic() > deadline:
                raise RuntimeError("ranks did not come up")
            time.sleep(0.2)
            _drain(proc)
        time.sleep(4.0)  # past the first samples
        _drain(proc)
        before = launcher.cpu_times()
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            time.sleep(0.5)
            _drain(proc)  # as the console reads its events
        after = launcher.cpu_times()
        elapsed = time.monotonic() - start
    finally:
        proc.stdin.write(b'{"cmd": "stop"}\n')
        proc.stdin.flush()
        os.set_blocking(proc.stdout.fileno(), True)
        proc.stdout.read()
        proc.wait(30)
    used = (after.user + after.system) - (before.user + before.system)
    return 100.0 * used / elapsed


def _drain(proc: subprocess.Popen) -> None:
    try:
        while proc.stdout.read(1 << 16):
            pass
    except (BlockingIOError, TypeError):
        pass


def sample_ms(ranks: int, samples: int = 30) -> float:
    """ms per Sampler.sample() over N rank trees (this process's children, as a launcher's)."""
    from flextui.launch import Sampler, Target

    procs = [subprocess.Popen([PY, "-c", RANK], stdout=subprocess.DEVNULL) for _ in range(ranks)]
    try:
        deadline = time.monotonic() + 60
        while any(len(psutil.Process(p.pid).children()) < 1 for p in procs):
            if time.monotonic() > deadline:
                raise RuntimeError("ranks did not come up")
            time.sleep(0.1)
        targets = [Target({"rank": r}, p.pid, None) for r, p in enumerate(procs)]
        sampler = Sampler()
        sampler.sample(targets)
        times = []
        for _ in range(samples):
            start = time.perf_counter()
            entries = sampler.sample(targets)
            times.append(time.perf_counter() - start)
            assert len(entries) == ranks and all(e["procs"] == 2 for e in entries)
            time.sleep(0.05)
        return 1000 * statistics.median(times)
    finally:
        for p in procs:
            for child in psutil.Process(p.pid).children():
                child.kill()
            p.kill()
            p.wait()


def bench_sampling(rank_counts: list[int], seconds: float) -> list[tuple]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="flextui-bench-diag-") as tmp:
        work = Path(tmp)
        for ranks in rank_counts:
            log(f"sampling: {ranks} ranks, launcher CPU with and without sampling ({seconds:g} s each)")
            on = launcher_cpu(ranks, 2.0, seconds, work)
            off = launcher_cpu(ranks, 0.0, seconds, work)
            per_sample = sample_ms(ranks)
            rows.append((ranks, on, off, on - off, per_sample, per_sample / 2000 * 100))
    return rows


# -- stacks -------------------------------------------------------------------------------


async def dump_latency(cluster, runs: int, work: Path) -> tuple[list[float], str]:
    from flextui.cli import parse_command_line, resolve_world
    from flextui.job import Job, JobConfig
    from flextui.transport import backend_class
    from flextui.world import Command

    train = str(REPO / "examples" / "train.py")
    world_size = 16
    args = ("--steps", "100000", "--step-time", "0.2", "--hang-rank", str(world_size - 1), "--stray-rank",
            str(world_size - 3), "--hang-step", "2", "--loader-workers", "1")
    hostfile = work / "hostfile"
    hostfile.write_text("".join(f"{n.name} slots=4\n" for n in cluster.nodes[:4]))
    os.environ.update(cluster.env())
    os.environ.pop("SSH_AUTH_SOCK", None)
    parsed = parse_command_line(["--master_port", "29731", str(hostfile), train, *args])
    backend = backend_class(parsed.launcher).from_args(parsed)
    world = resolve_world(parsed, backend.hosts(str(hostfile)))
    job = Job(JobConfig(world=world, command=Command(script=train, args=args, python=PY),
                        log_root=str(work / "runs"), grace=5.0, cwd=str(work)), backend)
    from flextui.ui.app import FlexApp, stop_job_of
    from flextui.ui.stacksview import StacksScreen

    app = FlexApp(job, theme_dirs=[])
    times, lines = [], ""
    async with app.run_test(size=(160, 48)) as pilot:
        try:
            deadline = time.monotonic() + 600
            while not all(any("step 2/" in line for line in r.tail) for r in job.model.ranks):
                if time.monotonic() > deadline or app.job_done:
                    raise RuntimeError(f"the job did not hang as planned: {[r.last_line for r in job.model.ranks]}")
                await pilot.pause(0.5)
            await pilot.pause(2.0)
            for _ in range(runs):
                start = time.perf_counter()
                await pilot.press("d")
                while not (isinstance(app.screen, StacksScreen) and app.screen.dump is not None):
                    await pilot.pause(0.005)
                await pilot.pause()  # the groups drawn
                on_screen = time.perf_counter() - start
                start = time.perf_counter()
                dump = await job.dump_stacks()
                direct = time.perf_counter() - start
                times.append((on_screen, direct))
                lines = "\n".join(g.line() for g in dump.groups)
                await pilot.press("escape")
                await pilot.pause(1.0)
        finally:
            job.stop("benchmark over")
            while not app.job_done:
                await pilot.pause(0.2)
            app.exit()
            await stop_job_of(app)
    return times, lines


def bench_stacks(runs: int) -> tuple[list[float], str]:
    from sshcluster import SSHCluster

    with tempfile.TemporaryDirectory(prefix="flextui-bench-stacks-") as tmp:
        work = Path(tmp)
        log("stacks: bringing up 4 sshd nodes")
        with SSHCluster(4, work / "cluster", prefix="ftd", auto_prefix=True) as cluster:
            log(f"stacks: 16 ranks of examples/train.py hung on 4 nodes; {runs} dumps")
            return asyncio.run(dump_latency(cluster, runs, work))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="sampling,stacks")
    parser.add_argument("--ranks", default="8,64")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    only = set(args.only.split(","))
    print(f"flextui issue 12 figures on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    if "sampling" in only:
        rows = bench_sampling([int(n) for n in args.ranks.split(",")], args.seconds)
        print("\nnode launcher sampling (2 s interval; ranks idle, one child each)")
        print(f"{'ranks':>5}  {'launcher CPU':>12}  {'no sampling':>11}  {'sampling':>9}  "
              f"{'per sample':>10}  {'= of a core':>11}")
        for ranks, on, off, cost, per_sample, share in rows:
            print(f"{ranks:>5}  {on:>11.2f}%  {off:>10.2f}%  {cost:>8.2f}%  {per_sample:>8.1f}ms  {share:>10.2f}%")
    if "stacks" in only:
        times, lines = bench_stacks(args.runs)
        print("\n`d`: 16 ranks on 4 sshd nodes (py-spy on each rank and its loader worker)")
        print("  key -> groups on screen (FlexApp, headless 160x48): "
              + ", ".join(f"{1000 * t:.0f} ms" for t, _ in times)
              + f"; median {1000 * statistics.median(t for t, _ in times):.0f} ms")
        print("  Job.dump_stacks() alone (request -> grouped dump, file written): "
              + ", ".join(f"{1000 * d:.0f} ms" for _, d in times)
              + f"; median {1000 * statistics.median(d for _, d in times):.0f} ms")
        print("  groups:\n" + "\n".join(f"    {line}" for line in lines.splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
