"""`--launcher mpirun` end to end: Open MPI's mpirun and MPICH's Hydra mpiexec start the
node launchers on the real sshd test cluster.

Every test runs once per runtime (the `mpi_cluster` fixture; the gloo training job only
under Open MPI), which also fails the test if any process (runtime daemon, guard,
launcher, worker) is left on any node afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flextui.launch import LAST_WORDS
from flextui.transport.mpi import DAEMON_TERM_WAIT

REPO = Path(__file__).resolve().parent.parent
WORKER = str(REPO / "tests" / "workers" / "worker.py")
TRAIN = str(REPO / "examples" / "train.py")
FLEXTUI = [sys.executable, "-m", "flextui", "--headless"]


def hostfile(mpi, tmp_path, slots=2, nodes=None) -> str:
    path = tmp_path / "hostfile"
    names = [n.name for n in mpi.nodes][: nodes or len(mpi.nodes)]
    path.write_text("".join(f"{name} slots={slots}\n" for name in names))
    return str(path)


def run_flextui(mpi, tmp_path, *args, mpi_args=(), env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FLEXTUI, "--log-dir", str(tmp_path / "runs"), *mpi.args(*mpi_args), *args],
        cwd=tmp_path, env={**mpi.env(), **(env or {})}, capture_output=True, text=True, timeout=timeout,
    )


def start_flextui(mpi, tmp_path, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [*FLEXTUI, "--log-dir", str(tmp_path / "runs"), *mpi.args(), *args],
        cwd=tmp_path, env=mpi.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def run_dir(tmp_path) -> Path:
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def summary(tmp_path) -> dict:
    return json.loads((run_dir(tmp_path) / "summary.json").read_text())


def wait_ready(tmp_path, world_size: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until every rank's console-side log says it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flextui ended early ({proc.returncode}): {proc.stderr.read()}"
        runs = tmp_path / "runs"
        if runs.is_dir():
            ready = sum("ready rank" in log.read_text(errors="replace") for log in runs.glob("*/rank-*.log"))
            if ready == world_size:
                return
        time.sleep(0.05)
    raise AssertionError(f"ranks not ready within {timeout}s")


def wait_no_job_processes(mpi, timeout: float) -> float:
    """Seconds until no job process is left on any node; fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if all(mpi.cluster.job_process_count(n) == 0 for n in mpi.nodes):
            return time.monotonic() - start
        time.sleep(0.02)
    left = {n.name: mpi.cluster.job_processes(n) for n in mpi.nodes}
    raise AssertionError(f"job processes left after {timeout}s: {left}")


def job_process_total(mpi) -> int:
    return sum(mpi.cluster.job_process_count(n) for n in mpi.nodes)


@pytest.mark.parametrize("mpi_cluster", ["openmpi"], indirect=True)
def test_gloo_training_on_two_nodes_of_two_ranks(mpi_cluster, tmp_path):
    """A real torch job, once: what a rank gets from the runtime (nothing but flextui's own
    identity, all of the node's cores) is checked under both runtimes just below."""
    result = run_flextui(mpi_cluster, tmp_path, hostfile(mpi_cluster, tmp_path, slots=2, nodes=2), TRAIN,
                         "--steps", "3", "--step-time", "0.05")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    names = [n.name for n in mpi_cluster.nodes]
    for rank in range(4):
        text = (run_dir(tmp_path) / f"rank-{rank}.log").read_text()
        assert f"rank {rank}/4 local_rank {rank % 2} on {names[rank // 2]}" in text
        assert f"rank {rank} step 3/3 value 1.000" in text
        assert f"rank {rank}: done" in text
    assert summary(tmp_path)["state"] == "succeeded"


def test_workers_get_flextui_identity_not_the_runtimes(mpi_cluster, tmp_path):
    """The launcher is rank 0 of a one-process MPI job: none of that may reach the workers,
    nor Open MPI's default binding to one core; --mpi_args pass through verbatim."""
    script = tmp_path / "report.py"
    script.write_text(
        "import json, os\n"
        "print('REPORT ' + json.dumps({'mpi': sorted(k for k in os.environ if k.startswith(("
        "'OMPI_', 'PMIX_', 'PMI_', 'MPI_LOCAL'))), 'cpus': sorted(os.sched_getaffinity(0)),"
        " 'rank': os.environ['RANK'], 'value': os.environ.get('FLEXTUI_MPI_TEST')}))\n"
    )
    value = "a b $(touch pwned) `id` 'q' \"dq\""
    result = run_flextui(mpi_cluster, tmp_path, hostfile(mpi_cluster, tmp_path, slots=2, nodes=2), str(script),
                         mpi_args=mpi_cluster.env_args("FLEXTUI_MPI_TEST", value))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    for rank in range(4):
        line = next(ln for ln in (run_dir(tmp_path) / f"rank-{rank}.log").read_text().splitlines()
                    if ln.startswith("REPORT "))
        report = json.loads(line.removeprefix("REPORT "))
        assert report["rank"] == str(rank)
        assert report["mpi"] == []
        assert report["cpus"] == sorted(os.sched_getaffinity(0))
        assert report["value"] == value
    assert not (tmp_path / "pwned").exists()


def test_full_host_names_reach_the_host_they_name(mpi_cluster, tmp_path):
    """Open MPI cuts host names at the first dot before its ssh; the hostfile's name (here
    an ~/.ssh/config alias with dots) must be the one ssh is given."""
    target = mpi_cluster.nodes[1]
    config = tmp_path / "ssh_config"
    config.write_text(f"Host trainer-b.cluster.test\n    HostName {target.name}\n    HostKeyAlias {target.name}\n\n"
                      + Path(mpi_cluster.cluster.ssh_config).read_text().replace("Host ", "Host trainer-b.cluster.test ", 1))
    path = tmp_path / "hostfile"
    path.write_text("trainer-b.cluster.test slots=1\n")
    result = run_flextui(dataclasses.replace(mpi_cluster, ssh_config=config), tmp_path,
                         "--master_addr", target.name, str(path), WORKER, "--lines", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir(tmp_path) / "rank-0.log").read_text().splitlines()[0][4:])
    assert report["host"] == target.name


def test_sigint_stops_every_node(mpi_cluster, tmp_path):
    proc = start_flextui(mpi_cluster, tmp_path, "--grace", "5", hostfile(mpi_cluster, tmp_path), WORKER,
                         "--children", "2")
    wait_ready(tmp_path, 6, proc)
    proc.send_signal(signal.SIGINT)
    gone = wait_no_job_processes(mpi_cluster, timeout=5 + 5)
    assert proc.wait(10) == 130
    assert gone < 5, f"cooperative workers took {gone:.2f}s to stop"
    assert {r["status"] for r in summary(tmp_path)["ranks"]} == {"killed"}


def test_failing_rank_stops_the_others_with_its_code(mpi_cluster, tmp_path):
    start = time.monotonic()
    result = run_flextui(mpi_cluster, tmp_path, "--grace", "10", hostfile(mpi_cluster, tmp_path), WORKER,
                         "--fail-rank", "3", "--fail-after", "1.0", "--code", "7")
    elapsed = time.monotonic() - start
    assert result.returncode == 7, result.stdout[-2000:] + result.stderr
    report = summary(tmp_path)
    assert report["first_failure"] == 3
    assert [r["status"] for r in report["ranks"]] == ["killed"] * 3 + ["failed"] + ["killed"] * 2
    assert "first failure: rank 3" in result.stdout
    assert elapsed < 15, "the others were not stopped promptly (they would have run for 600 s)"


def test_kill_9_of_console_leaves_nothing(mpi_cluster, tmp_path):
    proc = start_flextui(mpi_cluster, tmp_path, "--grace", "5", hostfile(mpi_cluster, tmp_path), WORKER,
                         "--children", "1")
    wait_ready(tmp_path, 6, proc)
    proc.kill()
    proc.wait(5)
    wait_no_job_processes(mpi_cluster, timeout=5 + 5)


def test_sigterm_ignoring_workers_get_the_full_grace_when_the_console_is_killed(mpi_cluster, tmp_path):
    """The runtime SIGKILLs what it started (Hydra at once when mpiexec dies of the closed
    console pipe): the launcher must outlive that to SIGKILL its workers after the grace."""
    proc = start_flextui(mpi_cluster, tmp_path, "--grace", "3", hostfile(mpi_cluster, tmp_path, nodes=2),
                         WORKER, "--ignore-term")
    wait_ready(tmp_path, 4, proc)
    start = time.monotonic()
    proc.kill()
    proc.wait(5)
    time.sleep(1.5)
    workers = [p for n in mpi_cluster.nodes for p in mpi_cluster.cluster.job_processes(n) if "worker.py" in p[2]]
    assert len(workers) == 4, "workers were killed before their grace"
    wait_no_job_processes(mpi_cluster, timeout=3 + 5)
    assert time.monotonic() - start >= 2.5


def test_node_crash_stops_the_others(mpi_cluster, tmp_path):
    proc = start_flextui(mpi_cluster, tmp_path, "--grace", "5", hostfile(mpi_cluster, tmp_path), WORKER)
    wait_ready(tmp_path, 6, proc)
    mpi_cluster.cluster.crash_node(mpi_cluster.nodes[1])
    assert proc.wait(30) == 255
    wait_no_job_processes(mpi_cluster, timeout=5 + 5)
    report = summary(tmp_path)
    statuses = [r["status"] for r in report["ranks"]]
    assert statuses[2:4] == ["lost", "lost"]
    assert all(s == "killed" for s in statuses[:2] + statuses[4:])
    assert f"node {mpi_cluster.nodes[1].name} lost" in proc.stderr.read() + json.dumps(report)


def test_silently_dropped_network_stops_the_cut_off_node(mpi_cluster, tmp_path):
    """No FIN, no RST: the node must notice the console is gone by itself, and the console
    must notice the node (through the runtime's own connection to it)."""
    proc = start_flextui(mpi_cluster, tmp_path, "--node_timeout", "3", "--grace", "1",
                         hostfile(mpi_cluster, tmp_path), WORKER, "--children", "1")
    wait_ready(tmp_path, 6, proc)
    cut_off = mpi_cluster.nodes[2]
    mpi_cluster.cluster.disconnect_node(cut_off)
    try:
        start = time.monotonic()
        # the launcher, its guard, the workers, and the runtime's daemon (orted,
        # hydra_pmi_proxy), which the guard ends: it could never report to its mpirun
        limit = 3 + 1 + LAST_WORDS + DAEMON_TERM_WAIT + 5
        while mpi_cluster.cluster.job_processes(cut_off) and time.monotonic() - start < limit:
            time.sleep(0.05)
        assert mpi_cluster.cluster.job_processes(cut_off) == [], "left on the cut-off node"
        assert proc.wait(3 + 1 + 10) == 255  # the console noticed too, marked the node lost, aborted
    finally:
        if proc.poll() is None:
            proc.kill()
        mpi_cluster.cluster.reconnect_node(cut_off)
    wait_no_job_processes(mpi_cluster, timeout=10)
    report = summary(tmp_path)
    assert [r["status"] for r in report["ranks"]][4:] == ["lost", "lost"]
    assert f"node {cut_off.name} lost: no word from its launcher for 3s" in json.dumps(report) + proc.stderr.read()


def test_runtime_killed_by_someone_else_stops_its_node_and_the_job(mpi_cluster, tmp_path):
    proc = start_flextui(mpi_cluster, tmp_path, "--grace", "5", hostfile(mpi_cluster, tmp_path, nodes=2),
                         WORKER, "--children", "1")
    wait_ready(tmp_path, 4, proc)
    import psutil

    runtimes = [p for p in psutil.Process(proc.pid).children() if p.exe() and "python" not in p.name()]
    assert len(runtimes) == 2, runtimes
    runtimes[0].kill()
    assert proc.wait(30) != 0
    wait_no_job_processes(mpi_cluster, timeout=5 + 5)


def _assert_nothing_started(mpi, tmp_path):
    assert job_process_total(mpi) == 0
    assert not (tmp_path / "runs").exists()


def test_unreachable_host_is_one_line_and_starts_nothing(mpi_cluster, tmp_path):
    mpi_cluster.cluster.crash_node(mpi_cluster.nodes[2])
    result = run_flextui(mpi_cluster, tmp_path, hostfile(mpi_cluster, tmp_path), WORKER, timeout=60)
    assert result.returncode == 1, result.stderr
    bad = mpi_cluster.nodes[2].name
    assert result.stderr.startswith(f"flextui: error: {bad}: "), result.stderr
    assert "Connection refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    _assert_nothing_started(mpi_cluster, tmp_path)


def test_unknown_host_is_one_line(mpi_cluster, tmp_path):
    path = tmp_path / "hostfile"
    path.write_text(f"{mpi_cluster.nodes[0].name} slots=1\nno-such-node.invalid slots=1\n")
    result = run_flextui(mpi_cluster, tmp_path, str(path), WORKER, timeout=60)
    assert result.returncode == 1
    assert result.stderr.startswith("flextui: error: no-such-node.invalid: "), result.stderr
    assert "Could not resolve hostname" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    _assert_nothing_started(mpi_cluster, tmp_path)


def test_missing_remote_python(mpi_cluster, tmp_path):
    result = run_flextui(mpi_cluster, tmp_path, "--remote_python", "/nonexistent/python3",
                         hostfile(mpi_cluster, tmp_path, nodes=2), WORKER, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().endswith("python not found: /nonexistent/python3"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    _assert_nothing_started(mpi_cluster, tmp_path)


def test_missing_runtime_is_one_line(cluster, tmp_path):
    result = subprocess.run(
        [*FLEXTUI, "--launcher", "mpirun", "--mpirun", "/nonexistent/mpirun", "--log-dir", str(tmp_path / "runs"),
         str(cluster.base_dir / "hostfile"), WORKER],
        cwd=tmp_path, env=cluster.env(), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == "flextui: error: --launcher mpirun: /nonexistent/mpirun not found"
    assert not (tmp_path / "runs").exists()


def test_no_runtime_on_path_is_one_line(cluster, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    os.symlink(sys.executable, bin_dir / "python3")
    result = subprocess.run(
        [*FLEXTUI, "--launcher", "mpirun", "--log-dir", str(tmp_path / "runs"),
         str(cluster.base_dir / "hostfile"), WORKER],
        cwd=tmp_path, env=cluster.env(PATH=str(bin_dir)), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("flextui: error: --launcher mpirun: no mpirun or mpiexec on PATH")
    assert len(result.stderr.strip().splitlines()) == 1
