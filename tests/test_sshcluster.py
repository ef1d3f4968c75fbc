"""Checks of the SSH test cluster itself (tests/sshcluster.py + the conftest fixtures)."""

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import psutil
import pytest

from sshcluster import HOSTS_FILE, MARKER, NETNS_DIR, ClusterError, SSHCluster

SCRIPT = Path(__file__).with_name("sshcluster.py")


def ssh(cluster, node, *cmd, known_hosts=None, timeout=15):
    argv = cluster.ssh_argv(node, *cmd)
    if known_hosts is not None:
        argv[1:1] = ["-o", f"UserKnownHostsFile={known_hosts}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


def wait_for(pred, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def assert_gone(prefix):
    assert not [p for p in NETNS_DIR.glob(f"{prefix}[0-9]*")], "netns left behind"
    assert not list(Path("/sys/class/net").glob(f"{prefix}-*")), "links left behind"
    assert f"{MARKER}{prefix}\n" not in HOSTS_FILE.read_text(), "/etc/hosts lines left behind"


# --------------------------------------------------------------------------- #
def test_three_nodes_up(cluster):
    assert len(cluster.nodes) == 3
    hosts = HOSTS_FILE.read_text()
    for n in cluster.nodes:
        assert n.running and Path(f"/proc/{n.sshd_pid}").exists()
        assert f"{n.ip}\t{n.name}\t{MARKER}{cluster.prefix}" in hosts
        assert socket.gethostbyname(n.name) == n.ip              # resolvable on the host
        r = cluster.run(n, "hostname; cat /proc/1/comm; ip route", check=True)
        hostname, pid1, *routes = r.stdout.splitlines()
        assert (hostname, pid1) == (n.name, "sshd")               # own UTS ns, sshd is PID 1
        assert not [ln for ln in routes if ln.startswith("default")], routes   # NO default route
        assert cluster.job_process_count(n) == 0
    state = json.loads(cluster.state_file.read_text())
    assert [x["name"] for x in state["nodes"]] == [n.name for n in cluster.nodes]


def test_ssh_hostname_with_strict_host_key_checking(cluster):
    n2 = cluster.nodes[1]
    r = ssh(cluster, n2, "hostname")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == n2.name
    eff = subprocess.run(["ssh", "-F", str(cluster.ssh_config), "-G", n2.name],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert "stricthostkeychecking true" in eff
    assert "user root" in eff
    # the same by IP (known_hosts has name and IP)
    r = subprocess.run(["ssh", "-F", str(cluster.ssh_config), n2.ip, "hostname"],
                       capture_output=True, text=True, timeout=15)
    assert r.returncode == 0 and r.stdout.strip() == n2.name, r.stderr


def test_nodes_reach_each_other_by_name(cluster):
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    probe = (f"import socket; s = socket.create_connection(({n2.name!r}, 22), timeout=5); "
             "print(s.getpeername()[0], s.recv(64).decode().strip())")
    r = cluster.run(n1, [sys.executable, "-c", probe], check=True)
    peer, banner = r.stdout.split(maxsplit=1)
    assert peer == n2.ip and banner.startswith("SSH-2.0-OpenSSH")
    # ssh from inside node 1 to node 2, by name, strict checking on (as a pdsh-style launcher would)
    r = cluster.run(n1, ["ssh", "-F", str(cluster.ssh_config), n2.name, "hostname"], timeout=15)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == n2.name


def test_processes_are_per_node(cluster):
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    p = cluster.spawn(n1, "exec sleep 4321")
    try:
        wait_for(lambda: any(a == "sleep 4321" for _, _, a in cluster.job_processes(n1)), what="sleep on node1")
        (pid, _, _), = [x for x in cluster.job_processes(n1) if x[2] == "sleep 4321"]
        host_pids = [q.pid for q in psutil.process_iter(["cmdline"]) if q.info["cmdline"] == ["sleep", "4321"]]
        assert host_pids and pid not in host_pids              # a node-side PID, not the host's
        assert cluster.job_process_count(n1) == 1
        assert cluster.job_process_count(n2) == 0
        assert not [x for x in cluster.node_processes(n2) if "4321" in x[2]]
        r = ssh(cluster, n2, "ps -eo args")
        assert r.returncode == 0 and "sleep 4321" not in r.stdout
        r = ssh(cluster, n1, "ps -eo pid,args")
        assert f"{pid} sleep 4321" in [ln.strip() for ln in r.stdout.splitlines()]
        cluster.kill_node_processes(n1, [pid])
        p.wait(timeout=5)
        wait_for(lambda: cluster.job_process_count(n1) == 0, what="node1 clean")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_wrong_or_missing_known_hosts_entry_fails(cluster, tmp_path):
    n1, n2 = cluster.nodes[0], cluster.nodes[1]
    lines = cluster.known_hosts.read_text().splitlines()
    key_of = {ln.split()[0].split(",")[0]: ln.split(None, 1)[1] for ln in lines}
    bad = tmp_path / "known_hosts_bad"
    bad.write_text(f"{n2.name},{n2.ip} {key_of[n1.name]}\n")       # node2 with node1's key
    r = ssh(cluster, n2, "true", known_hosts=bad)
    assert r.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in r.stderr
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    r = ssh(cluster, n2, "true", known_hosts=empty)
    assert r.returncode == 255 and "Host key verification failed" in r.stderr


def test_crash_node_kills_everything_and_restart_brings_it_back(cluster):
    n3 = cluster.nodes[2]
    old_pid1 = n3.sshd_pid
    local = cluster.spawn(n3, "exec sleep 3001")
    remote = subprocess.Popen(cluster.ssh_argv(n3, "sleep 3002"), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: {"sleep 3001", "sleep 3002"} <= {a for _, _, a in cluster.job_processes(n3)},
                 timeout=10, what="both sleeps on node3")
        t0 = time.monotonic()
        cluster.crash_node(n3)
        crash_s = time.monotonic() - t0
        assert not n3.running and not Path(f"/proc/{old_pid1}").exists()
        assert cluster.node_processes(n3) == []
        assert local.wait(timeout=5) != 0
        assert remote.wait(timeout=10) == 255                   # the ssh client saw the node die
        with pytest.raises(OSError):
            socket.create_connection((n3.ip, 22), timeout=1).close()
        with pytest.raises(ClusterError):
            cluster.run(n3, "true")
        assert crash_s < 2
    finally:
        for p in (local, remote):
            if p.poll() is None:
                p.kill()
                p.wait()
    cluster.restart_node(n3)
    assert n3.running and n3.sshd_pid != old_pid1
    r = ssh(cluster, n3, "hostname; ps -eo args")                # same host key: strict check passes
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == n3.name
    assert "sleep" not in r.stdout
    assert cluster.job_process_count(n3) == 0


def test_fixture_restarts_a_crashed_node(cluster):
    cluster.crash_node(cluster.nodes[0])     # the next test's `cluster` setup must bring it back


def test_after_crash_cluster_fixture_has_every_node_up(cluster):
    assert all(n.running for n in cluster.nodes)
    assert ssh(cluster, cluster.nodes[0], "true").returncode == 0


def test_disconnect_and_reconnect_node(cluster):
    n2 = cluster.nodes[1]
    cluster.disconnect_node(n2)
    try:
        with pytest.raises(OSError):                           # silence, not a refusal
            socket.create_connection((n2.ip, 22), timeout=0.3).close()
    finally:
        cluster.reconnect_node(n2)
    wait_for(lambda: ssh(cluster, n2, "true").returncode == 0, what="node2 reachable again")


async def test_asyncssh_connects_with_only_home(cluster, monkeypatch):
    monkeypatch.setenv("HOME", str(cluster.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    for n in cluster.nodes:
        async with asyncssh.connect(n.name) as conn:
            r = await conn.run("hostname", check=True)
            assert r.stdout.strip() == n.name
    assert cluster.env()["HOME"] == str(cluster.home)


def test_hostfile(cluster, tmp_path):
    path = cluster.hostfile(tmp_path / "hostfile", slots=2)
    assert path.read_text() == "".join(f"{n.name} slots=2\n" for n in cluster.nodes)
    path = cluster.hostfile(tmp_path / "hf2", slots=[1, 4], nodes=[3, cluster.nodes[0].name])
    assert path.read_text() == f"{cluster.nodes[2].name} slots=1\n{cluster.nodes[0].name} slots=4\n"


def test_make_cluster_gives_more_nodes(make_cluster, cluster):
    big = make_cluster(4)
    assert len(big.nodes) == 4 and big.prefix != cluster.prefix and big.subnet != cluster.subnet
    last = big.nodes[-1]
    r = ssh(big, last, "hostname")
    assert r.returncode == 0 and r.stdout.strip() == last.name, r.stderr
    # the two clusters are separate networks: no route from a big node to a small one
    r = big.run(big.nodes[0], [sys.executable, "-c",
                               f"import socket; socket.create_connection(({cluster.nodes[0].ip!r}, 22), 1)"])
    assert r.returncode != 0
    assert make_cluster(3) is cluster


def test_failed_start_leaves_nothing_behind(tmp_path):
    c = SSHCluster(2, tmp_path, prefix="ftf", sshd_options=["NoSuchOption yes"])
    with pytest.raises(ClusterError, match="NoSuchOption"):
        c.start()
    assert_gone("ftf")
    assert not c.state_file.exists()


@pytest.mark.cluster  # brings a cluster up through tests/sshcluster.py's command line
def test_cli_up_sigterm_and_down_after_sigkill(tmp_path):
    def up(d):
        p = subprocess.Popen([sys.executable, str(SCRIPT), "up", "--nodes", "2", "--dir", str(d),
                              "--prefix", "ftc", "--slots", "2"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for(lambda: (d / "state.json").exists() or p.poll() is not None, timeout=15, what="state.json")
        assert p.poll() is None, p.stdout.read()
        return p, json.loads((d / "state.json").read_text())

    d = tmp_path / "c1"
    p, state = up(d)
    assert (d / "hostfile").read_text() == "ftc1 slots=2\nftc2 slots=2\n"
    r = subprocess.run(["ssh", "-F", state["ssh_config"], "ftc2", "hostname"], capture_output=True, text=True)
    assert r.stdout.strip() == "ftc2", r.stderr
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=15)
    assert p.returncode == 0, out
    assert "HOME=" in out and "ssh -F" in out and "torn down" in out
    assert_gone("ftc")
    assert not (d / "state.json").exists()

    # owner SIGKILLed: nodes keep running until `down` (or the next start with that prefix) cleans up
    p, state = up(d)
    p.kill()
    p.wait()
    pid1 = state["nodes"][0]["sshd_pid"]
    assert Path(f"/proc/{pid1}").exists()
    r = subprocess.run([sys.executable, str(SCRIPT), "down", "--dir", str(d)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    wait_for(lambda: not Path(f"/proc/{pid1}").exists(), what="stale sshd gone")
    assert_gone("ftc")


def test_prefix_in_use_is_refused(cluster, tmp_path):
    with pytest.raises(ClusterError, match="in use"):
        SSHCluster(1, tmp_path, prefix=cluster.prefix).start()
    assert all(n.running for n in cluster.nodes)   # the refused start touched nothing of ours
    assert socket.gethostbyname(cluster.nodes[0].name) == cluster.nodes[0].ip


def test_bad_prefix_rejected(tmp_path):
    for bad in ("ftn1", "FTN", "toolongprefix", "1ab"):
        with pytest.raises(ValueError):
            SSHCluster(1, tmp_path, prefix=bad)
