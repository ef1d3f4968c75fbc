"""Issue 11 across real nodes (the sshd test cluster): a detached job's console comes back
with every node's history; `stop` from another shell, a killed supervisor and a killed
console each leave 0 processes on every node (the `cluster` fixture counts them inside
each node's PID namespace after every test, too)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from flextui.client import ClientJob
from flextui.model import JobState, RankStatus
from flextui.runs import describe_run
from tests.test_ssh_e2e import wait_no_job_processes
from tests.test_ui_tmux import Terminal, _quote

WORKER = r'''
import os, sys, time
rank = int(os.environ["RANK"])
i = 0
while True:
    print(f"rank {rank} on {os.uname().nodename} line {i}", flush=True)
    i += 1
    time.sleep(0.05)
'''


@pytest.fixture
def job_dir(cluster, tmp_path):
    (tmp_path / "hostfile").write_text("".join(f"{n.name} slots=2\n" for n in cluster.nodes[:2]))
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path


def flextui(cluster, job_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flextui", *args], cwd=job_dir, env=cluster.env(),
                          capture_output=True, text=True, timeout=timeout)


def detach(cluster, job_dir: Path) -> Path:
    result = flextui(cluster, job_dir, "--detach", "--log-dir", "runs", "--grace", "3", "--no_local_rank",
                     "hostfile", "worker.py")
    assert result.returncode == 0, result.stderr
    return job_dir / "runs" / result.stdout.split()[2].rstrip(":")


def wait_lines(run_dir: Path, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(len((run_dir / f"rank-{r}.log").read_text().splitlines()) >= count
               for r in range(4) if (run_dir / f"rank-{r}.log").exists()) and \
                len(list(run_dir.glob("rank-*.log"))) == 4:
            return
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} lines per rank within {timeout}s")


def test_detach_attach_and_stop_from_another_shell_across_nodes(cluster, job_dir):
    run_dir = detach(cluster, job_dir)
    wait_lines(run_dir, 30)  # copied from the nodes' events by the supervisor, no console attached
    hosts = [n.name for n in cluster.nodes[:2]]

    async def look() -> None:
        job = await ClientJob.connect(str(run_dir))
        started = {e["rank"]: e["pid"] for e in map(json.loads, (run_dir / "events.jsonl").read_text().splitlines())
                   if e["ev"] == "started"}
        assert job.model.state is JobState.RUNNING
        for rank in job.model.ranks:
            host = hosts[rank.rank // 2]
            assert (rank.info.host, rank.status, rank.pid) == (host, RankStatus.RUNNING, started[rank.rank])
            tail = list(rank.tail)
            assert len(tail) >= 20 and tail == [f"rank {rank.rank} on {host} line {i}" for i in range(len(tail))]
        job.detach()

    asyncio.run(look())
    assert sum(cluster.job_process_count(n) for n in cluster.nodes) >= 4
    stopped = flextui(cluster, job_dir, "stop", "--log-dir", "runs", run_dir.name)
    assert stopped.returncode == 0, stopped.stderr
    assert "job aborted (exit code 130)" in stopped.stderr
    wait_no_job_processes(cluster, 5)  # stop returned once every node reported its ranks gone
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["state"] == "aborted" and all(r["status"] == "killed" for r in summary["ranks"])


def test_kill_9_of_the_supervisor_leaves_nothing_on_any_node(cluster, job_dir):
    run_dir = detach(cluster, job_dir)
    wait_lines(run_dir, 5)
    assert sum(cluster.job_process_count(n) for n in cluster.nodes) >= 4
    os.kill(json.loads((run_dir / "run.json").read_text())["owner"]["pid"], signal.SIGKILL)
    wait_no_job_processes(cluster, 20)  # every launcher saw its channel close
    assert describe_run(str(run_dir)).state == "supervisor lost"
    listed = flextui(cluster, job_dir, "ls", "--log-dir", "runs")
    assert f"{run_dir.name}  supervisor lost  4x2" in listed.stdout


def test_kill_9_of_the_console_that_started_the_job_stops_every_node(cluster, job_dir):
    term = Terminal(job_dir, width=120, height=40)
    marker = f"flextui-console-{uuid.uuid4().hex[:8]}"
    env = " ".join(f"{k}={_quote(v)}" for k, v in cluster.env().items() if k == "HOME")
    command = " ".join(_quote(a) for a in [sys.executable, "-m", "flextui", "--grace", "3", "--log-dir", "runs",
                                           "--no_local_rank", "hostfile", "worker.py", marker])
    term.tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", "sh", "-c",
              f"cd {_quote(str(job_dir))} && env {env} {command}; sleep 600")
    try:
        term.wait_for("● 4 running", timeout=60)
        import psutil

        console = [p for p in psutil.process_iter(["cmdline"])
                   if marker in (p.info["cmdline"] or []) and "flextui" in (p.info["cmdline"] or [])]
        assert len(console) == 1
        console[0].kill()
        wait_no_job_processes(cluster, 20)
        run_dir = next((job_dir / "runs").iterdir())
        deadline = time.monotonic() + 10
        while not (run_dir / "summary.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        summary = json.loads((run_dir / "summary.json").read_text())
        assert (summary["state"], summary["exit_code"]) == ("aborted", 129)
        assert summary["stop_reason"].startswith("console gone (pid ")
    finally:
        term.close()
