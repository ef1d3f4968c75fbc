#!/usr/bin/env python3
"""A real-OpenSSH multi-node test cluster on one Linux machine (needs root).

Each node K (1..N) is

* a network namespace ``<prefix>K`` whose ``eth0`` is one end of a veth pair;
  the other end (``<prefix>-vK``) sits in a bridge ``<prefix>-br`` that owns
  ``10.213.X.1/24`` on the host, so the host (where the console runs) reaches
  every node and the nodes reach each other.  Node K is ``10.213.X.(10+K)``.
  Loopback is up, there is deliberately NO default route (with one, torch's
  reverse lookups of peers stall ~20 s on an unreachable DNS server);
* its own PID, mount and UTS namespaces, with ``/usr/sbin/sshd`` as PID 1 and
  the node name as hostname.  Killing that PID 1 makes the kernel kill every
  process of the node: a node crash.

Node names get one line each in the (shared) ``/etc/hosts`` so they resolve on
the host and inside every node; the lines carry the marker
``# sshcluster:<prefix>`` and exactly those lines are removed at stop.

Authentication is key-only and strict host-key checking stays on: every node
has its own ed25519 host key, recorded (by name and IP) in a cluster
known_hosts file; a client key authorised for root lives in a fake HOME::

    base_dir/home/.ssh/{config,known_hosts,id_ed25519}

so ``HOME=base_dir/home`` makes asyncssh connect with no options at all, and
``ssh -F base_dir/home/.ssh/config <node>`` does the same for OpenSSH's ssh
(which ignores $HOME).

Library use (tests, bench scripts)::

    sys.path.insert(0, "/path/to/repo/tests")      # from bench scripts
    from sshcluster import SSHCluster
    with SSHCluster(4, Path("/tmp/ftc"), prefix="ftb") as cluster:
        subprocess.run(["flextui", ...], env=cluster.env())

CLI (humans, benchmarks)::

    python tests/sshcluster.py up --nodes 4 --dir /tmp/ftcluster [--prefix ftn]
    python tests/sshcluster.py status --dir /tmp/ftcluster
    python tests/sshcluster.py down --dir /tmp/ftcluster   # or: down --prefix ftn

``up`` stays in the foreground until Ctrl+C / SIGTERM and then tears down;
``base_dir/state.json`` appears once every node accepts connections (poll for
it from scripts) and disappears at teardown.

Every process is started and stopped by PID, never by name.  A cluster whose
owner died without tearing down (SIGKILL) is cleaned up by the next start with
the same prefix, or by ``down``.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Iterable, Iterator, Sequence

__all__ = [
    "SSHCluster",
    "Node",
    "ClusterError",
    "check_prerequisites",
    "cleanup_stale",
]

SSHD = "/usr/sbin/sshd"
HOSTS_FILE = Path("/etc/hosts")
STATE_DIR = Path("/run/sshcluster")  # claim files + global lock (tmpfs)
NETNS_DIR = Path("/run/netns")
MARKER = "# sshcluster:"
SUBNET_BASE = "10.213"
REQUIRED_TOOLS = ("ip", "unshare", "nsenter", "ssh-keygen", "sh", "hostname")
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,6}[a-z-]$|^[a-z]$")
# sshd processes: listener, per-connection children ("sshd: root@notty", "sshd: root [priv]",
# "[sshd]" while a child exits with its cmdline gone; sshd-session from OpenSSH 9.8 on)
_SSHD_ARGS_RE = re.compile(r"^\[?(\S*/)?sshd(-session|-auth)?(\]|:|\s|$)")


class ClusterError(RuntimeError):
    """Anything that keeps the cluster from coming up or going down cleanly."""


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def check_prerequisites() -> None:
    """Raise ClusterError with a clear message if the machine can't host a cluster."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (network namespaces, /etc/hosts)")
    if not os.access(SSHD, os.X_OK):
        problems.append(f"{SSHD} missing: apt-get install -y openssh-server")
    for tool in REQUIRED_TOOLS:
        if shutil.which(tool) is None:
            pkg = {"ip": "iproute2", "ssh-keygen": "openssh-client"}.get(tool, "util-linux")
            problems.append(f"'{tool}' not found on PATH (package {pkg})")
    if problems:
        raise ClusterError("SSH test cluster prerequisites missing:\n  - " + "\n  - ".join(problems))


def _run(argv: Sequence[str], *, input: str | None = None, check: bool = True,
         timeout: float = 30) -> subprocess.CompletedProcess:
    cp = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise ClusterError(f"command failed ({cp.returncode}): {' '.join(argv)}\n{cp.stderr.strip()}")
    return cp


def _ip_batch(lines: Iterable[str], *, netns: str | None = None, force: bool = False) -> subprocess.CompletedProcess:
    argv = ["ip"] + (["-n", netns] if netns else []) + (["-force"] if force else []) + ["-batch", "-"]
    return _run(argv, input="\n".join(lines) + "\n", check=not force)


@contextlib.contextmanager
def _global_lock() -> Iterator[None]:
    """Serialise network / /etc/hosts changes between clusters (and processes)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _proc_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _pid_alive(pid: int, start_time: str | None) -> bool:
    st = _proc_start_time(pid)
    return st is not None and (start_time is None or st == start_time)


def _pids_in_netns(netns: str) -> list[int]:
    """Host PIDs of every process living in network namespace `netns` (like `ip netns pids`)."""
    try:
        ref = os.stat(NETNS_DIR / netns)
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (ref.st_dev, ref.st_ino):
            pids.append(int(entry))
    return pids


def _kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _rewrite_hosts(prefix: str, add: Sequence[str] = ()) -> None:
    """Drop every line marked for `prefix` from /etc/hosts, then append `add`.

    Written in place (not renamed): /etc/hosts is often a bind mount.  Caller holds the lock.
    """
    marker = f"{MARKER}{prefix}"
    with open(HOSTS_FILE, "r+") as fh:
        old = fh.read()
        kept = [ln for ln in old.splitlines() if not ln.rstrip().endswith(marker)]
        new = "\n".join(kept + [f"{ln}\t{marker}" for ln in add]) + "\n"
        if new != old:
            fh.seek(0)
            fh.write(new)
            fh.truncate()


def _claim_path(prefix: str) -> Path:
    return STATE_DIR / f"{prefix}.json"


def _read_claim(prefix: str) -> dict | None:
    try:
        return json.loads(_claim_path(prefix).read_text())
    except (OSError, ValueError):
        return None


def _claim_is_live(prefix: str) -> bool:
    claim = _read_claim(prefix)
    return bool(claim) and _pid_alive(claim["owner_pid"], claim.get("owner_start"))


def _leftovers(prefix: str) -> bool:
    netns = [p.name for p in NETNS_DIR.glob(f"{prefix}*") if re.fullmatch(re.escape(prefix) + r"\d+", p.name)]
    links = [p.name for p in Path("/sys/class/net").glob(f"{prefix}-*")]
    return bool(netns or links or _claim_path(prefix).exists())


def _cleanup_locked(prefix: str) -> list[str]:
    """Remove whatever a cluster with this prefix left behind. Caller holds the lock."""
    done = []
    nsnames = sorted(p.name for p in NETNS_DIR.glob(f"{prefix}*")
                     if re.fullmatch(re.escape(prefix) + r"\d+", p.name))
    for ns in nsnames:
        pids = _pids_in_netns(ns)
        _kill_pids(pids)
        if pids:
            done.append(f"killed {len(pids)} process(es) in netns {ns}: {pids}")
    links = sorted(p.name for p in Path("/sys/class/net").glob(f"{prefix}-*")
                   if re.fullmatch(re.escape(prefix) + r"-(v\d+|br)", p.name))
    lines = [f"link del {ln}" for ln in links] + [f"netns del {ns}" for ns in nsnames]
    if lines:
        _ip_batch(lines, force=True)
        done.append("; ".join(lines))
    _rewrite_hosts(prefix)
    with contextlib.suppress(FileNotFoundError):
        _claim_path(prefix).unlink()
    return done


def cleanup_stale(prefix: str) -> list[str]:
    """Tear down leftovers of a cluster with `prefix` whose owner process is gone.

    Refuses (ClusterError) if the owner is still alive.  Returns what was done.
    """
    with _global_lock():
        if _claim_is_live(prefix):
            raise ClusterError(f"cluster prefix {prefix!r} is owned by live pid {_read_claim(prefix)['owner_pid']}")
        return _cleanup_locked(prefix)


# --------------------------------------------------------------------------- #
# the cluster
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Node:
    index: int              # K, 1-based
    name: str               # e.g. "ftn1": hostname, /etc/hosts name, netns name
    ip: str
    netns: str
    veth: str               # host-side veth (in the bridge)
    dir: Path               # base_dir/nodes/<name>: host key, sshd_config, sshd.log
    sshd_pid: int | None = None   # host-side PID of the node's PID 1 (sshd)
    proc: subprocess.Popen | None = dataclasses.field(default=None, repr=False)

    @property
    def host_key(self) -> Path:
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    @property
    def log(self) -> Path:
        return self.dir / "sshd.log"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __str__(self) -> str:
        return self.name


NodeRef = "Node | str | int"


class SSHCluster:
    """N sshd nodes in network/PID/mount/UTS namespaces; see the module docstring.

    ``prefix`` names everything (nodes ``<prefix>1..N``, netns, links, /etc/hosts
    marker); it must not end with a digit and is at most 8 characters.  Two
    clusters can coexist if their prefixes differ; the subnet 10.213.X.0/24 is
    derived from the prefix (next free X if taken) unless ``subnet="10.213.7"``
    is given.  With ``auto_prefix=True`` a prefix already owned by a live
    cluster is replaced by the first free ``<prefix>a``, ``<prefix>b``, ...
    ``sshd_options`` are extra sshd_config lines.
    """

    def __init__(self, n_nodes: int, base_dir: Path, prefix: str = "ftn", *,
                 subnet: str | None = None, port: int = 22,
                 sshd_options: Sequence[str] = (), auto_prefix: bool = False,
                 ready_timeout: float = 15.0) -> None:
        if not 1 <= n_nodes <= 200:
            raise ValueError("n_nodes must be in 1..200")
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"bad prefix {prefix!r}: 1-8 chars [a-z0-9-], starting with a letter, "
                             "not ending with a digit")
        self.n_nodes = n_nodes
        self.base_dir = Path(base_dir).absolute()
        self.prefix = prefix
        self.port = port
        self.sshd_options = list(sshd_options)
        self.auto_prefix = auto_prefix
        self.ready_timeout = ready_timeout
        self._subnet_arg = subnet
        self.subnet: str | None = None        # "10.213.X" once started
        self.nodes: list[Node] = []
        self.timings: dict[str, float] = {}
        self._spawned: list[subprocess.Popen] = []
        self._claimed = False
        self._started = False

        self.home = self.base_dir / "home"
        self.ssh_config = self.home / ".ssh" / "config"
        self.known_hosts = self.home / ".ssh" / "known_hosts"
        self.identity = self.home / ".ssh" / "id_ed25519"
        self.authorized_keys = self.base_dir / "authorized_keys"
        self.state_file = self.base_dir / "state.json"

    # ------------------------------------------------------------------ API
    def __enter__(self) -> "SSHCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SSHCluster {self.prefix} {self.n_nodes} nodes subnet={self.subnet} dir={self.base_dir}>"

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ copy with HOME = the fake home (and no ssh-agent)."""
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)
        env["HOME"] = str(self.home)
        env.update(extra)
        return env

    def ssh_argv(self, node: NodeRef, *command: str) -> list[str]:
        """argv for OpenSSH's client: ``ssh -F <cfg> <node> [command...]``."""
        return ["ssh", "-F", str(self.ssh_config), self.node(node).name, *command]

    def node(self, ref: NodeRef) -> Node:
        """Resolve a Node, a node name or a 1-based index K."""
        if isinstance(ref, Node):
            return ref
        for n in self.nodes:
            if ref == n.name or ref == n.index:
                return n
        raise KeyError(f"no node {ref!r} in {self!r}")

    def start(self) -> "SSHCluster":
        if self._started:
            return self
        check_prerequisites()
        t0 = time.monotonic()
        self._started = True
        atexit.register(self.stop)
        try:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            with _global_lock():
                self._claim_prefix()
                self._pick_subnet()
                self.nodes = [
                    Node(index=k, name=f"{self.prefix}{k}", ip=f"{self.subnet}.{10 + k}",
                         netns=f"{self.prefix}{k}", veth=f"{self.prefix}-v{k}",
                         dir=self.base_dir / "nodes" / f"{self.prefix}{k}")
                    for k in range(1, self.n_nodes + 1)
                ]
                self._setup_network()
                _rewrite_hosts(self.prefix, [f"{n.ip}\t{n.name}" for n in self.nodes])
            self._make_keys_and_configs()
            for n in self.nodes:
                self._launch(n)
            for n in self.nodes:
                self._wait_ready(n)
            self._write_state()
        except BaseException:
            self.stop()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Tear everything down (idempotent; safe after a partial start)."""
        if not self._started:
            return
        t0 = time.monotonic()
        self._started = False
        atexit.unregister(self.stop)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        for n in self.nodes:                       # kill every PID 1 first, then wait
            if n.running and n.sshd_pid:
                _kill_pids([n.sshd_pid])
            if n.proc is not None and n.proc.poll() is None and not n.sshd_pid:
                _kill_pids([n.proc.pid])           # start() failed before PID 1 was known
        errors = []
        for n in self.nodes:
            try:
                self._reap(n)
            except ClusterError as e:       # keep tearing down; report at the end
                errors.append(str(e))
        for p in self._spawned:
            if p.poll() is None:
                _kill_pids([p.pid])
        for p in self._spawned:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=5)
        self._spawned.clear()
        if self._claimed:
            with _global_lock():
                # anything else still inside our netns (e.g. `ip netns exec` by a test): by PID
                for n in self.nodes:
                    _kill_pids(_pids_in_netns(n.netns))
                lines = [f"link del {n.veth}" for n in self.nodes if Path(f"/sys/class/net/{n.veth}").exists()]
                if Path(f"/sys/class/net/{self.bridge}").exists():
                    lines.append(f"link del {self.bridge}")
                lines += [f"netns del {n.netns}" for n in self.nodes if (NETNS_DIR / n.netns).exists()]
                if lines:
                    _ip_batch(lines, force=True)
                _rewrite_hosts(self.prefix)
                with contextlib.suppress(FileNotFoundError):
                    _claim_path(self.prefix).unlink()
            self._claimed = False
        self.timings["down"] = time.monotonic() - t0
        if errors:
            raise ClusterError("teardown incomplete: " + "; ".join(errors))

    # --------------------------------------------------------- node control
    def crash_node(self, node: NodeRef, timeout: float = 10.0) -> None:
        """kill -9 the node's PID 1: the kernel kills every process of the node. Waits until gone."""
        n = self.node(node)
        if n.running and n.sshd_pid:
            _kill_pids([n.sshd_pid])
        self._reap(n, timeout)

    def restart_node(self, node: NodeRef) -> None:
        """(Crash if needed and) start sshd again in a fresh PID namespace, same host key/IP."""
        n = self.node(node)
        if n.running:
            self.crash_node(n)
        self._launch(n)
        self._wait_ready(n)
        self._write_state()

    def disconnect_node(self, node: NodeRef) -> None:
        """Cut the node's cable (host-side veth down): packets vanish, no FIN/RST."""
        _run(["ip", "link", "set", "dev", self.node(node).veth, "down"])

    def reconnect_node(self, node: NodeRef) -> None:
        _run(["ip", "link", "set", "dev", self.node(node).veth, "up"])

    def ensure_up(self) -> list[Node]:
        """Restart every node whose sshd is gone; returns the restarted nodes."""
        dead = [n for n in self.nodes if not n.running]
        for n in dead:
            self.restart_node(n)
        return dead

    # ----------------------------------------------------- inside the nodes
    def node_processes(self, node: NodeRef) -> list[tuple[int, int, str]]:
        """(pid, ppid, args) of every process in the node's PID namespace, node PIDs,
        except the node's PID 1 (the sshd listener).

        Read from the node's own /proc mount (via /proc/<sshd_pid>/root/proc), so
        no helper process shows up in the list.
        """
        n = self.node(node)
        if not n.running or not n.sshd_pid:
            return []
        proc = Path(f"/proc/{n.sshd_pid}/root/proc")
        out = []
        try:
            entries = os.listdir(proc)
        except OSError:
            return []
        for entry in entries:
            if not entry.isdigit() or entry == "1":
                continue
            try:
                stat = (proc / entry / "stat").read_text()
                raw = (proc / entry / "cmdline").read_bytes()
            except OSError:
                continue  # exited meanwhile
            comm, rest = stat.split("(", 1)[1].rsplit(")", 1)
            fields = rest.split()
            args = raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            if not args:
                args = f"[{comm}]" + (" <defunct>" if fields[0] == "Z" else "")
            out.append((int(entry), int(fields[1]), args))
        return sorted(out)

    def job_processes(self, node: NodeRef) -> list[tuple[int, int, str]]:
        """node_processes() minus every sshd process (listener children, sessions)."""
        return [p for p in self.node_processes(node) if not _SSHD_ARGS_RE.match(p[2])]

    def job_process_count(self, node: NodeRef) -> int:
        return len(self.job_processes(node))

    def kill_node_processes(self, node: NodeRef, pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
        """Signal processes by their node-side PIDs (as listed by node_processes)."""
        pids = [str(p) for p in pids]
        if pids:
            self.run(node, ["kill", f"-{int(sig)}", *pids], check=False)

    def _nsenter(self, n: Node, cwd: str | None) -> list[str]:
        if not n.running or not n.sshd_pid:
            raise ClusterError(f"node {n.name} is down")
        return ["nsenter", "-t", str(n.sshd_pid), "-n", "-p", "-m", "-u", f"--wd={cwd or '/'}", "--"]

    def run(self, node: NodeRef, cmd: str | Sequence[str], *, check: bool = False,
            timeout: float | None = 60, cwd: str | None = None, input: str | None = None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` (str → sh -c) inside the node's namespaces; captures text output."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        return subprocess.run(self._nsenter(self.node(node), cwd) + argv, check=check, timeout=timeout,
                              capture_output=True, text=True, input=input, env=env)

    def spawn(self, node: NodeRef, cmd: str | Sequence[str], *, cwd: str | None = None,
              **popen_kwargs) -> subprocess.Popen:
        """Start `cmd` inside the node in the background (tracked; killed at stop)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        popen_kwargs.setdefault("stdout", subprocess.DEVNULL)
        popen_kwargs.setdefault("stderr", subprocess.DEVNULL)
        p = subprocess.Popen(self._nsenter(self.node(node), cwd) + argv, **popen_kwargs)
        self._spawned = [q for q in self._spawned if q.poll() is None] + [p]
        return p

    def hostfile(self, path: Path | str, slots: int | Sequence[int] = 1,
                 nodes: Sequence[NodeRef] | None = None) -> Path:
        """Write a DeepSpeed-style hostfile (``ftn1 slots=2`` per line)."""
        chosen = [self.node(r) for r in nodes] if nodes is not None else list(self.nodes)
        per = [slots] * len(chosen) if isinstance(slots, int) else list(slots)
        if len(per) != len(chosen):
            raise ValueError("one slots value per node expected")
        path = Path(path)
        path.write_text("".join(f"{n.name} slots={s}\n" for n, s in zip(chosen, per)))
        return path

    # ------------------------------------------------------------- internal
    def _claim_prefix(self) -> None:
        candidates = [self.prefix] + ([self.prefix + c for c in "abcdefghijklmnopqrstuvwxyz"
                                       if len(self.prefix) < 8] if self.auto_prefix else [])
        for prefix in candidates:
            if _claim_is_live(prefix):
                continue
            if _leftovers(prefix):
                for what in _cleanup_locked(prefix):
                    print(f"sshcluster: cleaned stale {prefix!r}: {what}", file=sys.stderr)
            self.prefix = prefix
            break
        else:
            claim = _read_claim(self.prefix) or {}
            raise ClusterError(f"cluster prefix {self.prefix!r} is in use by live pid {claim.get('owner_pid')} "
                               f"(dir {claim.get('base_dir')}); use another prefix")
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        _claim_path(self.prefix).write_text(json.dumps({
            "owner_pid": os.getpid(), "owner_start": _proc_start_time(os.getpid()),
            "base_dir": str(self.base_dir)}))
        self._claimed = True

    def _pick_subnet(self) -> None:
        used = set(re.findall(r"inet (\d+\.\d+\.\d+)\.\d+/", _run(["ip", "-4", "-o", "addr", "show"]).stdout))
        if self._subnet_arg:
            if self._subnet_arg in used:
                raise ClusterError(f"subnet {self._subnet_arg}.0/24 already in use on this host")
            self.subnet = self._subnet_arg
            return
        first = zlib.crc32(self.prefix.encode()) % 250 + 1
        for i in range(250):
            cand = f"{SUBNET_BASE}.{(first - 1 + i) % 250 + 1}"
            if cand not in used:
                self.subnet = cand
                return
        raise ClusterError(f"no free {SUBNET_BASE}.X.0/24 subnet")

    def _setup_network(self) -> None:
        host = [f"link add name {self.bridge} type bridge nf_call_iptables 0 nf_call_ip6tables 0 "
                f"nf_call_arptables 0",
                f"addr add {self.subnet}.1/24 dev {self.bridge}",
                f"link set {self.bridge} up"]
        for n in self.nodes:
            host += [f"netns add {n.netns}",
                     f"link add {n.veth} type veth peer name eth0 netns {n.netns}",
                     f"link set {n.veth} master {self.bridge} up"]
        _ip_batch(host)
        procs = []
        for n in self.nodes:
            script = f"link set lo up\naddr add {n.ip}/24 dev eth0\nlink set eth0 up\n"
            procs.append((n, subprocess.Popen(["ip", "-n", n.netns, "-batch", "-"], stdin=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)))
            procs[-1][1].stdin.write(script)
            procs[-1][1].stdin.close()
        for n, p in procs:
            if p.wait() != 0:
                raise ClusterError(f"configuring netns {n.netns} failed: {p.stderr.read().strip()}")
            p.stderr.close()

    def _make_keys_and_configs(self) -> None:
        (self.home / ".ssh").mkdir(parents=True, exist_ok=True)
        os.chmod(self.home / ".ssh", 0o700)
        jobs = [(self.identity, f"sshcluster-client@{self.prefix}")]
        for n in self.nodes:
            n.dir.mkdir(parents=True, exist_ok=True)
            jobs.append((n.host_key, n.name))
        procs = []
        for key, comment in jobs:
            for f in (key, key.with_name(key.name + ".pub")):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
            procs.append(subprocess.Popen(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                                           "-f", str(key)], stdin=subprocess.DEVNULL,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        for p in procs:
            _, err = p.communicate()
            if p.returncode != 0:
                raise ClusterError(f"ssh-keygen failed: {err.decode().strip()}")

        self.authorized_keys.write_text(self.identity.with_name("id_ed25519.pub").read_text())
        kh = []
        for n in self.nodes:
            keytype, blob = n.host_key.with_name(n.host_key.name + ".pub").read_text().split()[:2]
            names = f"{n.name},{n.ip}" if self.port == 22 else f"[{n.name}]:{self.port},[{n.ip}]:{self.port}"
            kh.append(f"{names} {keytype} {blob}\n")
            n.sshd_config.write_text("\n".join([
                f"ListenAddress {n.ip}",
                f"Port {self.port}",
                f"HostKey {n.host_key}",
                f"AuthorizedKeysFile {self.authorized_keys}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PidFile none",
                "UseDNS no",
                "PrintMotd no",
                "PrintLastLog no",
                "X11Forwarding no",
                "AcceptEnv LANG LC_*",
                "MaxStartups 200:30:400",   # a console opens many channels/connections at once
                "MaxSessions 200",
                "LoginGraceTime 30",
                "LogLevel INFO",
                "Subsystem sftp internal-sftp",
                *self.sshd_options,
            ]) + "\n")
        self.known_hosts.write_text("".join(kh))
        self.ssh_config.write_text("\n".join([
            f"Host {self.prefix}* {self.subnet}.*",
            "    User root",
            f"    IdentityFile {self.identity}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {self.known_hosts}",
            "    GlobalKnownHostsFile /dev/null",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    ConnectTimeout 5",
            "    LogLevel ERROR",
            "",
        ]))
        os.chmod(self.ssh_config, 0o600)
        self.hostfile(self.base_dir / "hostfile")

    def _launch(self, n: Node) -> None:
        # `ip netns exec` execs unshare (same PID = n.proc.pid); unshare forks the node's PID 1,
        # which sets the hostname and execs sshd.  --kill-child: if unshare dies, the node dies.
        inner = f"hostname {n.name} && exec {SSHD} -D -e -f {n.sshd_config}"
        argv = ["ip", "netns", "exec", n.netns, "unshare", "--pid", "--fork", "--kill-child",
                "--mount-proc", "--uts", "sh", "-c", inner]
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd privilege separation dir
        with open(n.log, "ab") as log:
            log.write(f"=== {time.strftime('%H:%M:%S')} launching {n.name}\n".encode())
            log.flush()
            n.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)   # Ctrl+C in a terminal must not hit nodes
        n.sshd_pid = None
        children = Path(f"/proc/{n.proc.pid}/task/{n.proc.pid}/children")
        deadline = time.monotonic() + self.ready_timeout
        while n.sshd_pid is None:
            with contextlib.suppress(OSError, ValueError):
                kids = children.read_text().split()
                # before the exec, the `ip` process itself has no children: wait for unshare's fork
                if kids and Path(f"/proc/{n.proc.pid}/exe").resolve().name == "unshare":
                    n.sshd_pid = int(kids[0])
                    break
            self._check_alive(n, deadline)
            time.sleep(0.001)

    def _check_alive(self, n: Node, deadline: float) -> None:
        if n.proc.poll() is not None:
            raise ClusterError(f"node {n.name}: sshd exited with {n.proc.returncode}:\n{self._log_tail(n)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"node {n.name}: not ready after {self.ready_timeout}s:\n{self._log_tail(n)}")

    def _wait_ready(self, n: Node) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            try:
                with socket.create_connection((n.ip, self.port), timeout=0.5):
                    return
            except OSError:
                pass
            self._check_alive(n, deadline)
            time.sleep(0.003)

    def _log_tail(self, n: Node, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(n.log.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _reap(self, n: Node, timeout: float = 10.0) -> None:
        if n.proc is None:
            return
        try:
            n.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"node {n.name} (pid {n.proc.pid}) did not die within {timeout}s") from None
        n.sshd_pid = None

    def _write_state(self) -> None:
        state = {
            "prefix": self.prefix, "subnet": f"{self.subnet}.0/24", "port": self.port,
            "owner_pid": os.getpid(), "base_dir": str(self.base_dir),
            "home": str(self.home), "ssh_config": str(self.ssh_config),
            "known_hosts": str(self.known_hosts), "identity": str(self.identity),
            "hostfile": str(self.base_dir / "hostfile"),
            "nodes": [{"name": n.name, "ip": n.ip, "netns": n.netns, "sshd_pid": n.sshd_pid}
                      for n in self.nodes],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def _cmd_up(args: argparse.Namespace) -> int:
    stop = {"sig": None}

    def on_signal(signum, _frame):
        stop["sig"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    cluster = SSHCluster(args.nodes, Path(args.dir), prefix=args.prefix, subnet=args.subnet)
    try:
        cluster.start()
        cluster.hostfile(cluster.base_dir / "hostfile", args.slots)
        names = [n.name for n in cluster.nodes]
        print(f"sshcluster: {len(names)} nodes up in {cluster.timings['up']:.2f}s "
              f"on {cluster.subnet}.0/24 (prefix {cluster.prefix}):", flush=True)
        for n in cluster.nodes:
            print(f"  {n.name:<10} {n.ip:<15} netns={n.netns} sshd_pid={n.sshd_pid}")
        print(f"""
  console:   HOME={cluster.home} flextui ...
  ssh:       ssh -F {cluster.ssh_config} {names[0]} hostname
  hostfile:  {cluster.base_dir / 'hostfile'}  (slots={args.slots})
  state:     {cluster.state_file}
  in a node: nsenter -t {cluster.nodes[0].sshd_pid} -n -p -m -u -- ps -ef

Ctrl+C or SIGTERM (pid {os.getpid()}) tears the cluster down.""", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):   # don't interrupt the teardown
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
        if "down" in cluster.timings:
            print(f"sshcluster: torn down in {cluster.timings['down']:.2f}s", flush=True)
    return 0


def _state(args: argparse.Namespace) -> dict | None:
    if args.dir:
        with contextlib.suppress(OSError, ValueError):
            return json.loads((Path(args.dir) / "state.json").read_text())
    return None


def _cmd_down(args: argparse.Namespace) -> int:
    state = _state(args)
    prefix = args.prefix or (state or {}).get("prefix")
    if not prefix:
        print("sshcluster: need --prefix or a --dir with state.json", file=sys.stderr)
        return 2
    claim = _read_claim(prefix)
    if claim and _pid_alive(claim["owner_pid"], claim.get("owner_start")):
        os.kill(claim["owner_pid"], signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid_alive(claim["owner_pid"], claim.get("owner_start")) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"sshcluster: asked owner pid {claim['owner_pid']} to tear {prefix!r} down")
    for what in cleanup_stale(prefix):
        print(f"sshcluster: {what}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state = _state(args)
    if state is None:
        print("sshcluster: no state.json (cluster not up)")
        return 1
    print(json.dumps(state, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="sshcluster", description="multi-node OpenSSH test cluster (root)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start N nodes, stay in foreground until Ctrl+C/SIGTERM")
    up.add_argument("--nodes", type=int, default=4)
    up.add_argument("--dir", required=True, help="base directory (keys, fake HOME, state.json)")
    up.add_argument("--prefix", default="ftn")
    up.add_argument("--subnet", default=None, help="e.g. 10.213.7 (default: derived from prefix)")
    up.add_argument("--slots", type=int, default=1, help="slots per node in DIR/hostfile")
    down = sub.add_parser("down", help="tear down a cluster (signals its owner, cleans leftovers)")
    down.add_argument("--dir")
    down.add_argument("--prefix")
    st = sub.add_parser("status", help="print DIR/state.json")
    st.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    try:
        return {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status}[args.cmd](args)
    except ClusterError as e:
        print(f"sshcluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
