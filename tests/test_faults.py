"""Faults on real multi-node clusters: the fault matrix (tests/faultkit.py) for every
backend, and the console's own faults of issue 9 (its terminal, its stdout, its run
directory, its own suspension).

Every case: real sshd (or slurmd) nodes in namespaces, real workers with children, real
signals. The cluster fixtures fail a test that leaves any job process on any node.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

import faultkit
from faultkit import BACKENDS, CASES, FAULT_WORKER

MATRIX = [pytest.param(backend, case, id=f"{backend.name}-{case.name}",
                       marks=[pytest.mark.xfail(strict=True, reason=why)] if (why := backend.pending.get(case.name))
                       else [])
          for backend in BACKENDS for case in CASES if backend.applies(case)]


def cluster_of(request, backend: faultkit.Backend):
    cluster = request.getfixturevalue(backend.fixture)
    return cluster(2) if backend.fixture == "make_cluster" else cluster


@pytest.mark.cluster  # its cluster fixture is looked up per backend, which the tier hook cannot see
@pytest.mark.parametrize("backend, case", MATRIX)
def test_fault_matrix(request, tmp_path, backend, case):
    cluster = cluster_of(request, backend)
    outcome = faultkit.run_case(backend, cluster, case, tmp_path)
    assert outcome.exit_code == case.expected_exit, outcome.stderr[-2000:]
    assert outcome.clean_after is not None, f"job processes left on the nodes: {outcome.left}"
    assert outcome.logs_ok, outcome.log_problems
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    if case.name != "sigkill":
        summary = json.loads((outcome.run_dir / "summary.json").read_text())
        assert summary["exit_code"] == case.expected_exit


# -- the console's own faults (issue 9, defects 2, 3, 5, 6) ---------------------------------


def ssh_job_argv(cluster, tmp_path: Path, *worker_args: str, options: tuple[str, ...] = ()) -> list[str]:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{n.name} slots=2\n" for n in cluster.nodes[:2]))
    return [sys.executable, "-m", "flextui", "--log-dir", str(tmp_path / "runs"), "--grace", "5", *options,
            str(hostfile), FAULT_WORKER, "--copy-dir", str(tmp_path / "copies"),
            "--trigger", str(tmp_path / "trigger"), *worker_args]


def the_run_dir(tmp_path: Path) -> Path:
    runs = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout:g}s")


def all_ready(tmp_path: Path, world: int = 4) -> bool:
    runs = tmp_path / "runs"
    logs = list(runs.glob("*/rank-*.log")) if runs.is_dir() else []
    return sum(b"ready rank" in log.read_bytes()[:200] for log in logs) == world


def has_exited(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # exited; this machine's init reaps late
    except psutil.NoSuchProcess:
        return True


def job_processes(cluster) -> int:
    return sum(cluster.job_process_count(n) for n in cluster.nodes[:2])


def test_tui_exits_when_its_terminal_closes(make_cluster, tmp_path):
    """Defect 2: `tmux kill-session` hangs the terminal up. Textual's driver restarted
    application mode on the SIGCONT that comes with the hangup and its writer thread died
    on EIO, so the next write blocked the event loop forever after the job had stopped.

    The TUI is a client of its supervisor (issue 11): the console exits at once, and its
    supervisor, seeing its console gone without detaching, then stops the job on every node
    and exits. Both must happen, within bounds."""
    cluster = make_cluster(2)
    argv = ssh_job_argv(cluster, tmp_path)
    pid_file = tmp_path / "console.pid"
    command = f"echo $$ > {shlex.quote(str(pid_file))}; exec env -u SSH_AUTH_SOCK HOME={shlex.quote(str(cluster.home))} " \
              + " ".join(map(shlex.quote, argv))
    socket = f"flextui-faults-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    tmux = ["tmux", "-L", socket]
    console = supervisor = None
    subprocess.run([*tmux, "new-session", "-d", "-s", "t", "-x", "120", "-y", "40", "-c", str(tmp_path),
                    "-e", "LANG=C.UTF-8", "sh", "-c", command], check=True, timeout=10)
    try:
        console = psutil.Process(int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(),
                                                10, "the console's pid")))
        wait_until(lambda: all_ready(tmp_path), 60, "every rank ready")
        supervisor = the_supervisor_of(console)
        assert job_processes(cluster) == 2 * (1 + 2 * 2)  # a launcher, 2 workers with a child each
        closed_at = time.monotonic()
        subprocess.run([*tmux, "kill-session", "-t", "t"], check=True, timeout=10)
        wait_until(lambda: has_exited(console), 10, "the console's exit after its terminal closed")
        console_exit = time.monotonic() - closed_at
        assert console_exit < 5
        # the console does not wait for the job: its supervisor stops it, then exits
        wait_until(lambda: has_exited(supervisor) and job_processes(cluster) == 0, 15,
                   f"the supervisor's exit with 0 job processes on every node (left: {job_processes(cluster)})")
        print(f"console exited {console_exit:.2f}s, supervisor and job {time.monotonic() - closed_at:.2f}s "
              "after the terminal closed")
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
        for process in (console, supervisor):  # only after a failure above, which is what fails the test
            if process is not None and not has_exited(process):
                process.send_signal(signal.SIGTERM if process is supervisor else signal.SIGKILL)
        if supervisor is not None:
            with contextlib.suppress(AssertionError):
                wait_until(lambda: has_exited(supervisor), 15, "the supervisor's exit after SIGTERM")
    assert job_processes(cluster) == 0
    run_dir = the_run_dir(tmp_path)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["state"], summary["exit_code"]) == ("aborted", 128 + signal.SIGHUP)
    # the console's SIGHUP handler asks its supervisor to abort, unless the console is gone first
    assert summary["stop_reason"] in ("aborted by user (SIGHUP)", f"console gone (pid {console.pid}) without detaching")
    for rank in range(4):
        assert (run_dir / f"rank-{rank}.log").read_bytes() == (tmp_path / "copies" / f"rank-{rank}.log").read_bytes()


def the_supervisor_of(console: psutil.Process) -> psutil.Process:
    """The TUI's supervisor: `python -m flextui.supervisor`, started by the console in a
    session of its own."""
    supervisors = [p for p in console.children() if "flextui.supervisor" in p.cmdline()]
    assert len(supervisors) == 1, [p.cmdline() for p in console.children()]
    return supervisors[0]


def test_headless_output_to_a_closed_pipe_does_not_touch_the_job(make_cluster, tmp_path):
    """Defect 3: `flextui --headless ... | head -n 30`. The broken pipe was raised inside the
    job's event loop and blamed on a node ("node ... lost: [Errno 32] Broken pipe", exit 255)."""
    cluster = make_cluster(2)
    console = subprocess.Popen(ssh_job_argv(cluster, tmp_path, "--on-trigger", "finish", options=("--headless",)),
                               cwd=tmp_path, env=cluster.env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(30):  # what `head -n 30` does
            assert console.stdout.readline()
        console.stdout.close()
        time.sleep(1.0)  # the ranks go on logging into a pipe nobody reads
        (tmp_path / "trigger").touch()  # now they finish
        assert console.wait(30) == 0  # the job's own exit code: it succeeded
        stderr = console.stderr.read().decode()
    finally:
        if console.poll() is None:
            console.kill()
    run_dir = the_run_dir(tmp_path)
    assert stderr.splitlines() == [f"flextui: cannot write the output (Broken pipe): printing stops, the job goes on; "
                                   f"its logs are in {run_dir}"], stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["state"], summary["stop_reason"]) == ("succeeded", None)
    assert not any(e.get("ev") == "node_lost" for e in map(json.loads, (run_dir / "events.jsonl").open()))
    for rank in range(4):
        own = (tmp_path / "copies" / f"rank-{rank}.log").read_bytes()
        assert b"finished after" in own
        assert (run_dir / f"rank-{rank}.log").read_bytes() == own


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: a --log-dir that fills up."""
    path = tmp_path / "small"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "flextui-test", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_run_directory_stops_the_job_saying_why(make_cluster, tmp_path, small_disk):
    """Defect 5: a full --log-dir was blamed on a node ("node lost"), then write_summary
    crashed with a traceback and left no summary.json."""
    cluster = make_cluster(2)
    argv = ssh_job_argv(cluster, tmp_path, "--interval", "0", options=("--headless",))
    argv[argv.index("--log-dir") + 1] = str(small_disk)
    result = subprocess.run(argv, cwd=tmp_path, env=cluster.env(), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    run_dir = next(small_disk.iterdir())
    reason = f"run directory full: {run_dir}: No space left on device"
    assert result.stdout.splitlines()[-1] == f"job failed (exit code 1); {reason}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["state"], summary["exit_code"], summary["error"], summary["stop_reason"]) == \
        ("failed", 1, reason, reason)
    assert all(r["status"] == "killed" and r["stopped"] for r in summary["ranks"]), summary["ranks"]
    assert job_processes(cluster) == 0
    for rank in range(4):  # what fitted is exact
        own = (tmp_path / "copies" / f"rank-{rank}.log").read_bytes()
        assert own.startswith((run_dir / f"rank-{rank}.log").read_bytes())


def test_nodes_stopping_for_a_silent_console_say_so(make_cluster, tmp_path):
    """Defect 6: the console suspended (SIGSTOP) longer than --node_timeout. The nodes rightly
    stopped the job; the console, continued, reported "job aborted" with no stop reason."""
    cluster = make_cluster(2)
    console = subprocess.Popen(ssh_job_argv(cluster, tmp_path, options=("--headless", "--node_timeout", "2")),
                               cwd=tmp_path, env=cluster.env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: all_ready(tmp_path), 60, "every rank ready")
        console.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: job_processes(cluster) == 0, 2 + 5, "the nodes stopping by themselves")
        finally:
            console.send_signal(signal.SIGCONT)
        stdout, stderr = console.communicate(timeout=30)
    finally:
        if console.poll() is None:
            console.kill()
    reasons = [f"node {n.name} stopped the job: no word from the console for 2s" for n in cluster.nodes[:2]]
    assert console.returncode == 1, stdout[-2000:] + stderr
    verdict = stdout.splitlines()[-1]
    assert verdict in [f"job failed (exit code 1); {reason}" for reason in reasons], stdout[-2000:]
    summary = json.loads((the_run_dir(tmp_path) / "summary.json").read_text())
    assert summary["state"] == "failed" and summary["stop_reason"] in reasons, summary
    assert all(r["status"] == "killed" and r["stopped"] for r in summary["ranks"]), summary["ranks"]
