#!/usr/bin/env python3
"""What a job that outlives its terminal costs (issue 11), on this machine, local ranks.

    .venv/bin/python bench/supervisor.py [--ranks 4,64] [--reps 3] [--history 5000] [--runs 1000]
                                         [--only launch,attach,ls] [--json]

launch   `flextui HOSTFILE worker.py` in a terminal (tmux, 160x48): command start -> the rank
         table on screen with every rank running ("● N running"), and the RSS once it runs,
         two ways:
           supervised  what flextui does: the console + a supervisor process (the job's)
           in-process  the job inside the console process, as before issue 11 (this script
                       builds the same Job through cli.main and runs the app on it)
         The difference is what the supervisor costs at launch.
attach   a detached N-rank job whose ranks each wrote --history lines; `flextui attach RUN`
         in a terminal: command start -> the table on screen with every rank running
         (what a user waits for), and, inside one process, ClientJob.connect() alone (the
         snapshot plus every rank's tail read from the run directory).
ls       --runs run directories (copies of a finished 64-rank run's card and summary, a
         tenth of them "supervisor lost"): `flextui ls` and `flextui ls --json`, command
         start -> exit.

Prints medians (and max) over --reps. Run it on a quiet machine; the figures in the
issue-11 note came from this script (the command is printed with them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
sys.path.insert(0, str(REPO))

WORKER = r'''
import os, sys, time
rank = int(os.environ["RANK"])
history = int(sys.argv[1])
out = sys.stdout
for i in range(history):
    out.write(f"rank {rank} step {i} loss {1.0 / (i + 1):.6f} lr 3.0e-04 tokens/s 1500\n")
out.flush()
i = history
while True:
    print(f"rank {rank} step {i} tick", flush=True)
    i += 1
    time.sleep(1.0)
'''

# The job inside the console, as flextui ran a TUI before issue 11 (the baseline).
IN_PROCESS = r'''
import asyncio, sys
sys.path.insert(0, sys.argv[1])
from flextui import cli

async def tui(job):
    await job.preflight()
    from flextui.ui.app import run_app
    return await run_app(job)

sys.exit(cli.main(sys.argv[2:], run_job=lambda job: asyncio.run(tui(job))))
'''


class Terminal:
    def __init__(self, width: int = 160, height: int = 48) -> None:
        self.socket = f"flextui-bench-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.width, self.height = width, height

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True,
                              timeout=10).stdout

    def start(self, cwd: Path, argv: list[str]) -> None:
        command = f"cd {shlex.quote(str(cwd))} && {shlex.join(argv)}; sleep 600"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height), "sh", "-c", command)
        self.tmux("resize-window", "-t", "t", "-x", str(self.width), "-y", str(self.height))

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def wait_for(self, text: str, timeout: float = 120) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.screen():
                return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"{text!r} never appeared:\n{self.screen()}")

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


def processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


def rss_mb(processes: list[psutil.Process]) -> float:
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def wait_gone(marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in processes_with(marker):
        p.kill()


def setup(base: Path, ranks: int) -> Path:
    work = base / f"job-{ranks}-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    (work / "hostfile").write_text(f"localhost slots={ranks}\n")
    (work / "worker.py").write_text(WORKER)
    return work


def job_args(work: Path, history: int) -> list[str]:
    return ["--grace", "2", "--no_local_rank", "--master_port", str(29500 + os.getpid() % 1000),
            "hostfile", "worker.py", str(history), str(work)]


# -- launch ------------------------------------------------------------------------------


def launch_once(base: Path, ranks: int, how: str) -> dict:
    work = setup(base, ranks)
    argv = ([PY, "-m", "flextui"] if how == "supervised" else [PY, "-c", IN_PROCESS, str(REPO)]) + job_args(work, 0)
    term = Terminal()
    try:
        start = time.monotonic()
        term.start(work, argv)
        shown = term.wait_for(f"● {ranks} running")
        time.sleep(2.0)  # settled
        # the console and (supervised) the supervisor; not the workers (python -u worker.py)
        # nor the node launcher (the same in both)
        ours = [p for p in processes_with(str(work))
                if "python" in os.path.basename(p.cmdline()[0]) and p.cmdline()[1:2] != ["-u"]]
        result = {"to_table": shown - start, "rss_mb": rss_mb(ours),
                  "processes": sorted(" ".join(p.cmdline()[1:3])[:40] for p in ours)}
        term.keys("C-c")
        term.wait_for("ABORTED", timeout=60)
        term.keys("q")
    finally:
        term.close()
        wait_gone(str(work))
    return result


# -- attach ------------------------------------------------------------------------------


def detached_job(base: Path, ranks: int, history: int) -> tuple[Path, Path]:
    work = setup(base, ranks)
    result = subprocess.run([PY, "-m", "flextui", "--detach", *job_args(work, history)], cwd=work,
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    run_dir = work / "flextui-runs" / result.stdout.split()[2].rstrip(":")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # every rank's history on disk and taken in
        logs = [run_dir / f"rank-{r}.log" for r in range(ranks)]
        if all(p.exists() and p.stat().st_size > 0 and
               p.read_bytes().count(b"\n") > history for p in logs):
            break
        time.sleep(0.5)
    time.sleep(2.0)
    return work, run_dir


def attach_once(work: Path, run_dir: Path, ranks: int) -> dict:
    from flextui.client import ClientJob

    async def connect() -> float:
        start = time.monotonic()
        job = await ClientJob.connect(str(run_dir))
        took = time.monotonic() - start
        assert all(len(r.tail) > 0 for r in job.model.ranks)
        job.detach()
        return took

    connect_time = asyncio.run(connect())
    term = Terminal()
    try:
        start = time.monotonic()
        term.start(work, [PY, "-m", "flextui", "attach", run_dir.name])
        shown = term.wait_for(f"● {ranks} running")
    finally:
        term.close()  # the terminal goes: the attached console detaches
    return {"to_table": shown - start, "connect": connect_time}


# -- ls ----------------------------------------------------------------------------------


def ls_runs(base: Path, runs: int, reps: int) -> dict:
    """--runs copies of a finished 64-rank run (card + summary + events' first line)."""
    from flextui.model import JobModel
    from flextui.world import World

    root = base / "many" / "flextui-runs"
    root.mkdir(parents=True)
    world = World.from_slots({f"node{i}": list(range(8)) for i in range(8)})
    model = JobModel(world, "x")
    model.finish()
    summary = model.summary()
    for i in range(runs):
        run_id = f"20260101-{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}-{i:06x}"
        path = root / run_id
        path.mkdir()
        lost = i % 10 == 0
        card = {"run_id": run_id, "started_at": 1.7e9 + i, "world_size": 64, "nodes": 8, "state": "running",
                "owner": {"pid": 1, "host": "elsewhere", "start_time": 0}}
        if not lost:
            card.update(state="failed", exit_code=1, ended_at=1.7e9 + i + 60,
                        first_failure={"rank": 3, "host": "node0", "outcome": "exit 1", "exit_status": 1})
            (path / "summary.json").write_text(json.dumps({**summary, "run_id": run_id}, indent=2))
        (path / "run.json").write_text(json.dumps(card))
        (path / "events.jsonl").write_text(json.dumps({"ev": "plan", **world.plan()}) + "\n")
    out = {}
    for flag in ([], ["--json"]):
        times = []
        for _ in range(reps):
            start = time.monotonic()
            result = subprocess.run([PY, "-m", "flextui", "ls", *flag], cwd=root.parent, capture_output=True,
                                    text=True, timeout=120)
            times.append(time.monotonic() - start)
            lost = (sum(r["state"] == "supervisor lost" for r in json.loads(result.stdout)) if flag
                    else result.stdout.count("supervisor lost"))
            assert result.returncode == 0 and lost == (runs + 9) // 10, result.stderr
        out["ls" + (" --json" if flag else "")] = times
    from flextui.runs import list_runs

    start = time.monotonic()
    list_runs(str(root))
    out["list_runs() in-process"] = [time.monotonic() - start]
    return out


# -- main ----------------------------------------------------------------------------------


def summarize(values: list[float], unit: str = "s") -> str:
    if unit == "s":
        return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"
    return f"median {statistics.median(values):.0f} MB, max {max(values):.0f} MB (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", default="4,64")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--history", type=int, default=5000, help="lines per rank before attaching")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--only", default="launch,attach,ls")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    ranks_list = [int(r) for r in args.ranks.split(",")]
    report: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                    "machine": f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}"}
    base = Path(tempfile.mkdtemp(prefix="flextui-bench-sup-"))
    try:
        if "launch" in sections:
            for ranks in ranks_list:
                for how in ("in-process", "supervised"):
                    runs = [launch_once(base, ranks, how) for _ in range(args.reps)]
                    report[f"launch {ranks} ranks, {how}: command -> table"] = summarize([r["to_table"] for r in runs])
                    report[f"launch {ranks} ranks, {how}: RSS (flextui's processes)"] = summarize(
                        [r["rss_mb"] for r in runs], "MB")
                    report[f"launch {ranks} ranks, {how}: processes"] = runs[0]["processes"]
        if "attach" in sections:
            for ranks in ranks_list:
                work, run_dir = detached_job(base, ranks, args.history)
                try:
                    runs = [attach_once(work, run_dir, ranks) for _ in range(args.reps)]
                finally:
                    subprocess.run([PY, "-m", "flextui", "stop", "--kill", run_dir.name], cwd=work,
                                   capture_output=True, timeout=120)
                    wait_gone(str(work))
                label = f"attach {ranks} ranks x {args.history} lines of history"
                report[f"{label}: command -> table"] = summarize([r["to_table"] for r in runs])
                report[f"{label}: ClientJob.connect()"] = summarize([r["connect"] for r in runs])
        if "ls" in sections:
            for name, times in ls_runs(base, args.runs, args.reps).items():
                report[f"{name}, {args.runs} runs"] = summarize(times)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        width = max(map(len, report))
        for key, value in report.items():
            print(f"{key.ljust(width)}  {value}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise SystemExit(main())
