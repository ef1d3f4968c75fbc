"""Multi-node end to end: flextui over real OpenSSH to nodes in their own namespaces.

Every test uses the `cluster` fixture, which also fails the test if any job process
is left on any node afterwards (counted inside each node's PID namespace).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
WORKER = str(REPO / "tests" / "workers" / "worker.py")
TRAIN = str(REPO / "examples" / "train.py")
FLEXTUI = [sys.executable, "-m", "flextui", "--headless"]


def hostfile(cluster, tmp_path, slots=2, nodes=None) -> str:
    path = tmp_path / "hostfile"
    names = [n.name for n in cluster.nodes][: nodes or len(cluster.nodes)]
    path.write_text("".join(f"{name} slots={slots}\n" for name in names))
    return str(path)


def run_flextui(cluster, tmp_path, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*FLEXTUI, "--log-dir", str(tmp_path / "runs"), *args],
        cwd=tmp_path, env={**cluster.env(), **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )


def start_flextui(cluster, tmp_path, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [*FLEXTUI, "--log-dir", str(tmp_path / "runs"), *args],
        cwd=tmp_path, env=cluster.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def run_dir(tmp_path) -> Path:
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def wait_ready(tmp_path, world_size: int, timeout: float = 60) -> None:
    """Until every rank's console-side log says it is ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = tmp_path / "runs"
        if runs.is_dir():
            ready = sum(
                "ready rank" in log.read_text(errors="replace")
                for log in runs.glob("*/rank-*.log")
            )
            if ready == world_size:
                return
        time.sleep(0.05)
    raise AssertionError(f"ranks not ready within {timeout}s")


def wait_no_job_processes(cluster, timeout: float) -> float:
    """Seconds until no job process is left on any node; fails after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if all(cluster.job_process_count(n) == 0 for n in cluster.nodes):
            return time.monotonic() - start
        time.sleep(0.02)
    left = {n.name: cluster.job_processes(n) for n in cluster.nodes}
    raise AssertionError(f"job processes left after {timeout}s: {left}")


def job_process_total(cluster) -> int:
    return sum(cluster.job_process_count(n) for n in cluster.nodes)


def test_env_and_logs_across_three_nodes(cluster, tmp_path):
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path), WORKER, "--lines", "2000")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    names = [n.name for n in cluster.nodes]
    path = run_dir(tmp_path)
    for rank in range(6):
        text = (path / f"rank-{rank}.log").read_text()
        report = json.loads(text.splitlines()[0].removeprefix("ENV "))
        node = rank // 2
        assert report["host"] == names[node]
        assert report["env"] == {
            "RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "6",
            "LOCAL_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "CROSS_RANK": str(node), "CROSS_SIZE": "3",
            "MASTER_ADDR": names[0], "MASTER_PORT": "29500", "CUDA_VISIBLE_DEVICES": "0,1",
            "PYTHONUNBUFFERED": "1", "FLEXTUI_TEST": None,
        }
        assert report["local_rank_arg"] == rank % 2
        assert text.splitlines()[1:] == [f"rank {rank} line {i}" for i in range(2000)]
    summary = json.loads((path / "summary.json").read_text())
    assert summary["state"] == "succeeded"
    assert [r["host"] for r in summary["ranks"]] == [n for n in names for _ in range(2)]


def test_gloo_all_reduce_across_nodes(cluster, tmp_path):
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path), TRAIN,
                         "--steps", "3", "--step-time", "0.05")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    path = run_dir(tmp_path)
    for rank in range(6):
        text = (path / f"rank-{rank}.log").read_text()
        assert f"rank {rank} step 3/3 value 1.000" in text
        assert f"rank {rank}: done" in text
        assert f"CUDA_VISIBLE_DEVICES=0,1" in text


def test_hostile_arguments_arrive_verbatim(cluster, tmp_path):
    marker = tmp_path / "pwned"
    hostile = ["a b", '"x"', f"$(touch {marker})", "`touch " + str(marker) + "`", "'; touch x '", "*"]
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path, slots=1, nodes=2),
                         WORKER, "--lines", "1", "--", *hostile,
                         "--env", "FLEXTUI_TEST=$(touch " + str(marker) + ")")
    # --env after the script belongs to the script: it must arrive as plain words too
    assert result.returncode == 0, result.stderr
    for rank in range(2):
        report = json.loads((run_dir(tmp_path) / f"rank-{rank}.log").read_text().splitlines()[0][4:])
        assert report["rest"] == [*hostile, "--env", f"FLEXTUI_TEST=$(touch {marker})"]
    assert not marker.exists()


def test_env_option_reaches_remote_workers_verbatim(cluster, tmp_path):
    value = "$(hostname) `id` 'q' \"dq\" a b"
    result = run_flextui(cluster, tmp_path, "--env", f"FLEXTUI_TEST={value}",
                         hostfile(cluster, tmp_path, slots=1, nodes=2), WORKER, "--lines", "1")
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir(tmp_path) / "rank-1.log").read_text().splitlines()[0][4:])
    assert report["env"]["FLEXTUI_TEST"] == value


def test_sigint_stops_every_node(cluster, tmp_path):
    proc = start_flextui(cluster, tmp_path, "--grace", "5", hostfile(cluster, tmp_path), WORKER, "--children", "2")
    wait_ready(tmp_path, 6)
    assert job_process_total(cluster) == 3 * (1 + 2 * 3)  # launcher + 2 workers with 2 children each
    proc.send_signal(signal.SIGINT)
    gone = wait_no_job_processes(cluster, timeout=5 + 2)
    assert proc.wait(10) == 130
    assert gone < 2, f"cooperative workers took {gone:.2f}s to stop"


def test_kill_9_of_console_leaves_nothing(cluster, tmp_path):
    proc = start_flextui(cluster, tmp_path, "--grace", "5", hostfile(cluster, tmp_path), WORKER, "--children", "1")
    wait_ready(tmp_path, 6)
    proc.kill()
    proc.wait(5)
    wait_no_job_processes(cluster, timeout=5 + 2)


def test_node_crash_aborts_the_job(cluster, tmp_path):
    proc = start_flextui(cluster, tmp_path, "--grace", "5", hostfile(cluster, tmp_path), WORKER)
    wait_ready(tmp_path, 6)
    cluster.crash_node(cluster.nodes[1])
    assert proc.wait(15) == 255
    wait_no_job_processes(cluster, timeout=5 + 2)
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    statuses = [r["status"] for r in summary["ranks"]]
    assert statuses[2:4] == ["lost", "lost"]
    assert all(s == "killed" for s in statuses[:2] + statuses[4:])
    assert cluster.nodes[1].name in proc.stderr.read() + (run_dir(tmp_path) / "summary.json").read_text()


def test_sigterm_ignoring_worker_is_killed_after_grace(cluster, tmp_path):
    proc = start_flextui(cluster, tmp_path, "--grace", "2", hostfile(cluster, tmp_path, nodes=2),
                         WORKER, "--ignore-term")
    wait_ready(tmp_path, 4)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    wait_no_job_processes(cluster, timeout=2 + 2)
    elapsed = time.monotonic() - start
    assert elapsed >= 1.8, f"SIGTERM-ignoring workers were gone after {elapsed:.2f}s, before the grace"
    assert proc.wait(10) == 130
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert {r["signal"] for r in summary["ranks"]} == {signal.SIGKILL}


def test_failure_on_last_node_stops_the_others(cluster, tmp_path):
    start = time.monotonic()
    result = run_flextui(cluster, tmp_path, "--grace", "10", hostfile(cluster, tmp_path), WORKER,
                         "--fail-rank", "5", "--fail-after", "1.0", "--code", "7")
    elapsed = time.monotonic() - start
    assert result.returncode == 7, result.stdout[-2000:] + result.stderr
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["first_failure"] == 5
    assert [r["status"] for r in summary["ranks"]] == ["killed"] * 5 + ["failed"]
    assert "first failure: rank 5" in result.stdout
    assert elapsed < 10, "the others were not stopped promptly (they would have run for 600 s)"


def _assert_nothing_started(cluster, tmp_path):
    assert job_process_total(cluster) == 0
    assert not (tmp_path / "runs").exists()


def test_unreachable_host(cluster, tmp_path):
    cluster.crash_node(cluster.nodes[2])
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path), WORKER)
    assert result.returncode == 1
    assert result.stderr.strip() == f"flextui: error: {cluster.nodes[2].name}: unreachable (connection refused)"
    _assert_nothing_started(cluster, tmp_path)


def test_unknown_host(cluster, tmp_path):
    path = tmp_path / "hostfile"
    path.write_text(f"{cluster.nodes[0].name} slots=1\nno-such-node.invalid slots=1\n")
    result = run_flextui(cluster, tmp_path, str(path), WORKER)
    assert result.returncode == 1
    assert result.stderr.startswith("flextui: error: no-such-node.invalid: unknown host")
    assert len(result.stderr.strip().splitlines()) == 1
    _assert_nothing_started(cluster, tmp_path)


def test_wrong_host_key(cluster, tmp_path):
    bad = cluster.nodes[1].name
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    config = Path(cluster.home, ".ssh", "config").read_text()
    known = Path(cluster.known_hosts).read_text().splitlines()
    other_key = Path(cluster.known_hosts).read_text().splitlines()[0].split()[1:]
    lines = [line if not line.startswith(bad) else f"{line.split()[0]} {' '.join(other_key)}" for line in known]
    (home / ".ssh" / "known_hosts").write_text("\n".join(lines) + "\n")
    (home / ".ssh" / "config").write_text(config.replace(str(cluster.known_hosts), str(home / ".ssh" / "known_hosts")))
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path), WORKER, env={"HOME": str(home)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"flextui: error: {bad}: host key verification failed"), result.stderr
    _assert_nothing_started(cluster, tmp_path)


def test_refused_auth(cluster, tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / "stranger")], check=True)
    config = Path(cluster.home, ".ssh", "config").read_text()
    (home / ".ssh" / "config").write_text(config.replace(str(cluster.identity), str(home / "stranger")))
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path), WORKER, env={"HOME": str(home)})
    assert result.returncode == 1
    assert result.stderr.startswith("flextui: error: ") and "authentication refused" in result.stderr
    _assert_nothing_started(cluster, tmp_path)


def test_missing_script(cluster, tmp_path):
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path), "no_such_train.py")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"flextui: error: {cluster.nodes[0].name}: script no_such_train.py not found in {tmp_path}"
    )
    _assert_nothing_started(cluster, tmp_path)


def test_missing_remote_python(cluster, tmp_path):
    result = run_flextui(cluster, tmp_path, "--remote_python", "/nonexistent/python3",
                         hostfile(cluster, tmp_path), WORKER)
    assert result.returncode == 1
    assert "python not found: /nonexistent/python3" in result.stderr
    _assert_nothing_started(cluster, tmp_path)


def test_silently_dropped_network_stops_the_cut_off_node(cluster, tmp_path):
    """No FIN, no RST: the node must notice the console is gone by itself, and vice versa."""
    proc = start_flextui(cluster, tmp_path, "--node_timeout", "3", "--grace", "1",
                         hostfile(cluster, tmp_path), WORKER, "--children", "1")
    wait_ready(tmp_path, 6)
    cut_off = cluster.nodes[2]
    cluster.disconnect_node(cut_off)
    try:
        start = time.monotonic()
        while cluster.job_process_count(cut_off) and time.monotonic() - start < 3 + 1 + 3:
            time.sleep(0.05)
        assert cluster.job_process_count(cut_off) == 0, cluster.job_processes(cut_off)
        assert proc.wait(15) == 255  # the console noticed too, marked the node lost, aborted
        wait_no_job_processes(cluster, timeout=1 + 2)
    finally:
        cluster.reconnect_node(cut_off)
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert [r["status"] for r in summary["ranks"]][4:] == ["lost", "lost"]


def test_ssh_config_alias_and_proxyjump_are_honoured(cluster, tmp_path):
    """A hostfile alias resolved by ~/.ssh/config, reached through a jump host."""
    jump, target = cluster.nodes[0], cluster.nodes[1]
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    config = Path(cluster.home, ".ssh", "config").read_text()
    (home / ".ssh" / "config").write_text(
        f"Host trainer-b\n    HostName {target.name}\n    ProxyJump {jump.name}\n"
        f"    User root\n    IdentityFile {cluster.identity}\n    UserKnownHostsFile {cluster.known_hosts}\n\n"
        + config
    )
    path = tmp_path / "hostfile"
    path.write_text("trainer-b slots=1\n")
    log_size = target.log.stat().st_size
    result = run_flextui(cluster, tmp_path, "--master_addr", target.name, str(path), WORKER,
                         "--lines", "1", env={"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir(tmp_path) / "rank-0.log").read_text().splitlines()[0][4:])
    assert report["host"] == target.name
    new_log = target.log.read_bytes()[log_size:].decode(errors="replace")
    assert f"publickey for root from {jump.ip} port" in new_log  # came through the jump host


def test_deepspeed_env_file_and_prefixes_are_exported(cluster, tmp_path):
    (tmp_path / ".deepspeed_env").write_text("FLEXTUI_TEST=from env file\n")
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path, slots=1, nodes=2),
                         WORKER, "--lines", "1", env={"NCCL_DEBUG": "INFO"})
    assert result.returncode == 0, result.stderr
    report = json.loads((run_dir(tmp_path) / "rank-1.log").read_text().splitlines()[0][4:])
    assert report["env"]["FLEXTUI_TEST"] == "from env file"


def test_a_flood_of_wide_characters_arrives_whole_over_ssh(cluster, tmp_path):
    """JSON escapes an emoji to 12 bytes: one event can outgrow the SSH channel's window."""
    script = tmp_path / "emoji.py"
    script.write_text(
        "import sys\n"
        "out = sys.stdout\n"
        "for i in range(60000):\n"
        "    out.write(f'{i} ' + '\\U0001F600' * 40 + '\\n')\n"
    )
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path, slots=1, nodes=1), str(script))
    assert result.returncode == 0, result.stderr
    lines = (run_dir(tmp_path) / "rank-0.log").read_text().splitlines()
    assert lines == [f"{i} " + "\U0001F600" * 40 for i in range(60000)]


ARGS_WORKER = r'''
import hashlib, sys
args = sys.argv[1:]
print("ARGS %d %s" % (len(args), hashlib.sha256("\0".join(args).encode()).hexdigest()), flush=True)
'''


def _args_digest(args: list[str]) -> str:
    import hashlib

    return f"ARGS {len(args)} {hashlib.sha256(chr(0).join(args).encode()).hexdigest()}\n"


@pytest.mark.parametrize("nodes, slots, args", [
    (1, 8, [f"a{i}-" + "x" * 1000 + " $HOME '\"`;" for i in range(1000)]),  # ~1 MB on 8 slots
    (2, 2, [f"w{i}" for i in range(20_000)]),  # 20,000 arguments on 2 x 2
], ids=["1MB-on-8-slots", "20000-args-on-2x2"])
def test_huge_script_arguments_reach_every_remote_rank(cluster, tmp_path, nodes, slots, args):
    """The node spec goes over the SSH channel (stdin), the script arguments once per node:
    in the remote command they were "Argument list too long" or a misleading "unreachable"."""
    (tmp_path / "args_worker.py").write_text(ARGS_WORKER)
    result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path, slots=slots, nodes=nodes),
                         "args_worker.py", *args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    path = run_dir(tmp_path)
    for rank in range(nodes * slots):
        assert (path / f"rank-{rank}.log").read_text() == _args_digest([f"--local_rank={rank % slots}", *args])


# Issue 9 defect 1 (an SSH session stalled while the ranks write and exit loses no event) is
# the fault matrix's "stall-at-exit" case (tests/test_faults.py, tests/faultkit.py): exit 0,
# every rank's log byte for byte, the summary, nothing left; for SSH and both MPI runtimes.


LOGGING_WORKER = r'''
import os, sys, time
rank = os.environ["RANK"]
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ready-" + rank), "w").close()
line = "rank %s %s\n" % (rank, "y" * 200)
while True:  # ~1 MB/s: a cut-off node's channel is full within seconds
    sys.stdout.write(line * 50)
    sys.stdout.flush()
    time.sleep(0.01)
'''


def test_a_partitioned_node_whose_ranks_keep_logging_ends_its_launcher(cluster, tmp_path):
    """Issue 9 defect 10: cut off while its ranks flood their logs, a node stops its ranks
    after --node_timeout, and its launcher (whose channel is blocked, not closed) must then
    exit too: nothing of the job is left on the node within timeout + grace + a little."""
    (tmp_path / "flood.py").write_text(LOGGING_WORKER)
    timeout, grace = 6, 1
    proc = start_flextui(cluster, tmp_path, "--node_timeout", str(timeout), "--grace", str(grace),
                         hostfile(cluster, tmp_path, slots=2, nodes=2), "flood.py")
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("ready-*"))) < 4:
        assert time.monotonic() < deadline and proc.poll() is None, "ranks not running"
        time.sleep(0.05)
    cut_off = cluster.nodes[1]
    cluster.disconnect_node(cut_off)
    try:
        start = time.monotonic()
        while cluster.job_process_count(cut_off) and time.monotonic() - start < timeout + grace + 8:
            time.sleep(0.05)
        left = [(pid, args[:100]) for pid, _, args in cluster.job_processes(cut_off)]
        took = time.monotonic() - start
        assert left == [], f"still on the cut-off node after {took:.1f}s: {left}"
        assert took < timeout + grace + 4, f"{took:.1f}s"
        print(f"cut-off node clean {took:.1f}s after the cut (--node_timeout {timeout} --grace {grace})")
        assert proc.wait(20) == 255  # the console marked the node lost and stopped the rest
        wait_no_job_processes(cluster, timeout=grace + 2)
    finally:
        cluster.reconnect_node(cut_off)


def test_a_read_only_log_root_on_one_node_starts_nothing_anywhere(cluster, tmp_path):
    """Issue 9 defect 4: the preflight checks that each node can write its log directory.
    With /tmp/flextui-runs read-only on node 2 only (a read-only bind mount in its mount
    namespace), nothing may start on node 1 either: one line naming the node and directory."""
    node = cluster.nodes[1]
    root = "/tmp/flextui-runs"
    os.makedirs(root, exist_ok=True)
    mount = f"mount --bind {root} {root} && mount -o remount,bind,ro {root}"
    cluster.run(node, mount, check=True)
    try:
        assert cluster.run(node, f"touch {root}/probe").returncode != 0, "the mount is not read-only"
        result = run_flextui(cluster, tmp_path, hostfile(cluster, tmp_path, slots=2, nodes=2), WORKER)
    finally:
        cluster.run(node, f"umount {root}", check=True)
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    prefix = f"flextui: error: {node.name}: cannot create the log directory {root}/"
    assert line.startswith(prefix) and line.endswith(": Read-only file system"), line
    log_dir = line[len(f"flextui: error: {node.name}: cannot create the log directory "):].split(":")[0]
    assert not os.path.exists(log_dir)  # node 1 (same file system) did not start either
    _assert_nothing_started(cluster, tmp_path)
