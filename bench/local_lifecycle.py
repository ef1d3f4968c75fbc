#!/usr/bin/env python3
"""Local lifecycle timings of `flextui --headless` on this machine (issue 2's note).

    .venv/bin/python bench/local_lifecycle.py [--ranks 4] [--reps 5] [--train-reps 3] [--json]

For N local ranks (localhost hostfile, no SSH), per repetition:

  launch   cmd -> hello      command start (Popen) -> the node launcher's hello event
           hello -> spawned  hello -> the last rank's "started" event (the launcher's own
                             spawn time: what "launcher start -> all workers spawned" is)
           cmd -> spawned    command start -> the last "started" event
           cmd -> first line command start -> every rank's first log line on disk
  abort    SIGINT -> gone    SIGINT to flextui's process group (what a terminal's Ctrl+C
                             does) -> the last process of the job gone: flextui, its
                             launcher, every worker and every worker's child
           SIGINT -> exit    SIGINT -> flextui's exit (code 130)

Two workloads: a trivial python worker (prints a line, starts one child like a dataloader
worker, sleeps) and examples/train.py (torch, gloo all_reduce steps, --spawn-child).
Event timestamps come from the run directory's events.jsonl (time.time() in the launcher);
the rest is measured here. Prints median and max over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable

TRIVIAL = r'''
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"rank {os.environ['RANK']} up, child {child.pid}", flush=True)
time.sleep(600)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.005):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(interval)


def read_events(run_dir: Path) -> list[dict]:
    try:
        text = (run_dir / "events.jsonl").read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def first_line_seen(run_dir: Path, ranks: int) -> bool:
    for rank in range(ranks):
        try:
            if b"\n" not in (run_dir / f"rank-{rank}.log").read_bytes():
                return False
        except FileNotFoundError:
            return False
    return True


def job_processes(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return [root]


def alive(processes: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            pass
    return left


def one_run(workdir: Path, ranks: int, script: list[str], ready: str) -> dict:
    hostfile = workdir / "hostfile"
    hostfile.write_text(f"localhost slots={ranks}\n")
    log_root = Path(tempfile.mkdtemp(dir=workdir, prefix="runs-"))
    argv = [PY, "-m", "flextui", "--headless", "--log-dir", str(log_root), "--master_port",
            str(free_port()), str(hostfile), *script]
    t_cmd = time.time()
    proc = subprocess.Popen(argv, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        run_dir = wait_for(lambda: next(log_root.iterdir(), None), 30, "the run directory")
        first = wait_for(lambda: first_line_seen(run_dir, ranks) and time.time(), 120, "first lines")
        wait_for(lambda: all(ready in (run_dir / f"rank-{r}.log").read_text(errors="replace")
                             for r in range(ranks)), 120, "every rank ready", 0.02)
        events = read_events(run_dir)
        hello = next(e for e in events if e["ev"] == "hello")
        started = [e["t"] for e in events if e["ev"] == "started"]
        assert len(started) == ranks, events
        processes = job_processes(psutil.Process(proc.pid))
        expected = 2 + 2 * ranks  # flextui, launcher, workers and their children
        assert len(processes) >= expected, [p.cmdline() for p in processes]

        t_sigint = time.time()
        os.killpg(proc.pid, signal.SIGINT)
        t_exit = None
        while True:
            if t_exit is None and proc.poll() is not None:
                t_exit = time.time()
            if not alive(processes):
                t_gone = time.time()
                break
            if time.time() - t_sigint > 60:
                raise RuntimeError(f"still alive 60 s after SIGINT: {alive(processes)}")
            time.sleep(0.002)
        code = proc.wait(30)
        t_exit = t_exit or time.time()
        if code != 130:
            raise RuntimeError(f"flextui exited {code}, not 130: {proc.stderr.read().decode()[-2000:]}")
        return {
            "cmd_to_hello": hello["t"] - t_cmd,
            "hello_to_spawned": max(started) - hello["t"],
            "cmd_to_spawned": max(started) - t_cmd,
            "cmd_to_first_line": first - t_cmd,
            "sigint_to_gone": t_gone - t_sigint,
            "sigint_to_exit": t_exit - t_sigint,
            "processes": len(processes),
        }
    finally:
        if proc.poll() is None:  # only on an error above: never leave the job behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


METRICS = [
    ("cmd_to_hello", "launch: command start -> launcher hello"),
    ("hello_to_spawned", "launch: launcher hello -> all workers spawned"),
    ("cmd_to_spawned", "launch: command start -> all workers spawned"),
    ("cmd_to_first_line", "launch: command start -> every rank's first line"),
    ("sigint_to_exit", "abort: SIGINT -> flextui exited (130)"),
    ("sigint_to_gone", "abort: SIGINT -> last process gone"),
]


def summarize(samples: list[dict]) -> dict:
    return {key: {"median": statistics.median(s[key] for s in samples), "max": max(s[key] for s in samples)}
            for key, _ in METRICS}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--reps", type=int, default=5, help="repetitions, trivial worker")
    parser.add_argument("--train-reps", type=int, default=3, help="repetitions, examples/train.py")
    parser.add_argument("--json", action="store_true", help="also print the raw samples as JSON")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="flextui-lifecycle-") as tmp:
        workdir = Path(tmp)
        (workdir / "trivial.py").write_text(TRIVIAL)
        workloads = [
            ("trivial python worker", ["trivial.py"], " up, child ", args.reps),
            ("examples/train.py (gloo)", [str(REPO / "examples" / "train.py"), "--steps", "100000",
                                          "--step-time", "0.05", "--spawn-child"], "step 1/", args.train_reps),
        ]
        for name, script, ready, reps in workloads:
            if reps <= 0:
                continue
            one_run(workdir, args.ranks, script, ready)  # warm-up: page cache, .pyc files
            results[name] = [one_run(workdir, args.ranks, script, ready) for _ in range(reps)]

    print(f"flextui local lifecycle, {args.ranks} local ranks, {os.cpu_count()} CPUs "
          f"(median / max over the repetitions, milliseconds)")
    names = list(results)
    width = max(len(label) for _, label in METRICS)
    print(" " * width + "".join(f"  {n[:30]:>30}" for n in names))
    stats = {name: summarize(samples) for name, samples in results.items()}
    for key, label in METRICS:
        cells = [f"{stats[n][key]['median'] * 1000:9.1f} / {stats[n][key]['max'] * 1000:9.1f}" for n in names]
        print(f"{label:<{width}}" + "".join(f"  {c:>30}" for c in cells))
    print("reps: " + ", ".join(f"{n}: {len(results[n])} (+1 warm-up), "
                               f"{results[n][0]['processes']} processes per job" for n in names))
    if args.json:
        print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
