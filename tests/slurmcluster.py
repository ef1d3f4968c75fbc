#!/usr/bin/env python3
"""A real Slurm cluster on one Linux machine for tests and by hand (needs root).

Built on tests/sshcluster.py's namespaces: every node K is a network + PID + mount + UTS
namespace with its own IP on a bridge and its own hostname (``<prefix>K``), PID 1 being
that cluster's sshd. Into each node goes one real ``slurmd -N <prefix>K`` (Debian's
slurm-wlm 22.05 packages), so a multi-node Slurm job really spans separate "machines":
different hostnames, IPs and process tables; killing a node's PID 1 kills everything on
that node, slurmd included. The host side (where the tests and the console run) has

* one ``munged`` with its own key and socket (never the system's /run/munge),
* one ``slurmctld`` listening on a free port; ``SlurmctldHost`` is this machine's
  hostname at the bridge's address, so nodes reach it and srun's step I/O connections
  come back over the bridge,
* ``slurm.conf``/``cgroup.conf`` in ``base_dir/etc``: clients need ``SLURM_CONF``
  (``cluster.env()`` sets it).

What differs from a production cluster, and why:

* ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``: each node's /sys is
  the netns's own sysfs, without the host's cgroup mounts, and all slurmds share one
  cgroup tree; cgroup-based tracking would mix the nodes' steps. linuxproc finds a
  step's processes by parentage, which is what slurmstepd signals on cancel.
* ``CgroupPlugin=cgroup/v1`` with nothing mounted: slurmd 22.05 insists on initialising a
  cgroup plugin at start even when no plugin uses it; v1 does so lazily.
* ``SlurmdParameters=config_overrides``: every node claims ``cpus`` CPUs whatever the
  machine has; the nodes share the machine's cores.
* No accounting (no slurmdbd, so no sacct). GPUs are fake: ``gpus`` per node (default 2)
  backed by device nodes that are /dev/null's twins, so Slurm allocates them and sets CUDA_VISIBLE_DEVICES in steps
  (``--gpus-per-node``, ``--gres=gpu:N``) as on GPU nodes; nothing can compute on them.

Library use (tests)::

    from slurmcluster import SlurmCluster
    with SlurmCluster(3, Path("/tmp/fts")) as cluster:
        subprocess.run(["srun", "-N3", "hostname"], env=cluster.env())

CLI (humans)::

    python tests/slurmcluster.py up --nodes 3 --dir /tmp/ftslurm   # foreground; Ctrl+C ends it
    export SLURM_CONF=/tmp/ftslurm/etc/slurm.conf; sinfo; srun -N3 hostname
    python tests/slurmcluster.py down --dir /tmp/ftslurm

Every daemon is started and stopped by PID, never by name. A cluster whose owner was
SIGKILLed is cleaned up by ``down`` or by the next start with the same directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sshcluster  # noqa: E402
from sshcluster import ClusterError, SSHCluster  # noqa: E402

__all__ = ["SlurmCluster", "ClusterError", "check_prerequisites"]

SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
MUNGED = "/usr/sbin/munged"
CLIENTS = ("srun", "salloc", "scontrol", "squeue", "scancel", "sinfo")
SLURMD_PORT = 6818  # inside each node's own network namespace
FAKE_GPU_MINORS = (3, 5, 7, 8, 9)  # char 1:N = null, zero, full, random, urandom
# Daemons that belong to the node, not to a job (PID 1 sshd is already left out).
_DAEMON_ARGS_RE = re.compile(r"^\[?(\S*/)?(slurmd|sshd(-session|-auth)?)(\]|:|\s|$)")


def check_prerequisites() -> None:
    problems = []
    for path, package in ((SLURMCTLD, "slurmctld"), (SLURMD, "slurmd"), (MUNGED, "munge")):
        if not os.access(path, os.X_OK):
            problems.append(f"{path} missing: apt-get install -y {package}")
    for tool in CLIENTS:
        if shutil.which(tool) is None:
            problems.append(f"'{tool}' not found on PATH (package slurm-client)")
    try:
        sshcluster.check_prerequisites()
    except ClusterError as exc:
        problems.append(str(exc))
    if problems:
        raise ClusterError("Slurm test cluster prerequisites missing:\n  - " + "\n  - ".join(problems))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return s.getsockname()[1]


def _alive(pid: int | None) -> bool:
    """Running (a zombie whose parent has not reaped it yet is not)."""
    if not pid:
        return False
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"


def _stop_pid(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class SlurmCluster:
    """N slurmd nodes in namespaces + slurmctld + munged on the host; see the module docstring."""

    def __init__(self, n_nodes: int, base_dir: Path, prefix: str = "fts", *, cpus: int = 4, gpus: int = 2,
                 kill_wait: int = 10, ready_timeout: float = 30.0) -> None:
        self.base_dir = Path(base_dir).absolute()
        self.cpus = cpus
        if not 0 <= gpus <= len(FAKE_GPU_MINORS):
            raise ValueError(f"gpus must be in 0..{len(FAKE_GPU_MINORS)}")
        self.gpus = gpus
        self.kill_wait = kill_wait
        self.ready_timeout = ready_timeout
        self.net = SSHCluster(n_nodes, self.base_dir / "net", prefix=prefix, auto_prefix=True)
        self.etc = self.base_dir / "etc"
        self.conf = self.etc / "slurm.conf"
        self.munge_dir = self.base_dir / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.state_file = self.base_dir / "state.json"
        self.controller_port: int | None = None
        self.munged: subprocess.Popen | None = None
        self.slurmctld: subprocess.Popen | None = None
        self.slurmd: dict[str, subprocess.Popen] = {}
        self.timings: dict[str, float] = {}
        self._started = False

    # ------------------------------------------------------------------ API
    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<SlurmCluster {[n.name for n in self.nodes]} conf={self.conf}>"

    @property
    def nodes(self) -> list[sshcluster.Node]:
        return self.net.nodes

    def env(self, **extra: str) -> dict[str, str]:
        """os.environ with SLURM_CONF set and no leftover allocation variables."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SALLOC_", "SRUN_", "SBATCH_"))}
        env["SLURM_CONF"] = str(self.conf)
        env.update(extra)
        return env

    def slurm(self, *argv: str, check: bool = True, timeout: float = 30, cwd=None) -> subprocess.CompletedProcess:
        """Run a Slurm client command (scontrol, squeue, ...) against this cluster."""
        cp = subprocess.run(list(argv), env=self.env(), capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and cp.returncode != 0:
            raise ClusterError(f"{' '.join(argv)} failed ({cp.returncode}): {cp.stderr.strip()}")
        return cp

    def start(self) -> "SlurmCluster":
        if self._started:
            return self
        check_prerequisites()
        t0 = time.monotonic()
        self._cleanup_stale()
        self._started = True
        try:
            self.base_dir.mkdir(parents=True, exist_ok=True)
            self.net.start()
            self.timings["net"] = time.monotonic() - t0
            self._write_config()
            self._start_munged()
            self._start_slurmctld()
            for n in self.nodes:
                self._start_slurmd(n)
            self.wait_idle()
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
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        _stop_pid(self.slurmctld)
        for proc in self.slurmd.values():
            _stop_pid(proc)  # the nsenter wrapper; the node's PID 1 going takes slurmd along
        try:
            self.net.stop()  # kills each node's PID 1: every process of the node dies with it
        finally:
            _stop_pid(self.munged)
            self.slurmd.clear()
            self.timings["down"] = time.monotonic() - t0

    def restart_slurmd(self, node) -> None:
        n = self.net.node(node)
        self._start_slurmd(n)
        self.wait_idle([n.name])

    # ----------------------------------------------------- inside the nodes
    def job_processes(self, node) -> list[tuple[int, int, str]]:
        """Processes on the node other than its daemons (sshd, slurmd): slurmstepd, launchers, workers."""
        return [p for p in self.net.node_processes(node) if not _DAEMON_ARGS_RE.match(p[2])]

    def job_process_count(self, node) -> int:
        return len(self.job_processes(node))

    def kill_node_processes(self, node, pids) -> None:
        self.net.kill_node_processes(node, pids)

    def jobs(self) -> list[str]:
        """Job ids in squeue (any state)."""
        return self.slurm("squeue", "-h", "-o", "%i").stdout.split()

    def steps(self, job: str | None = None) -> list[str]:
        """Step ids ("12.0") in squeue, of one job or all."""
        argv = ["squeue", "-h", "-s", "-o", "%i"] + (["-j", str(job)] if job else [])
        return self.slurm(*argv, check=False).stdout.split()

    def job_state(self, job: str) -> str:
        out = self.slurm("scontrol", "show", "job", "-o", str(job), check=False).stdout
        match = re.search(r"\bJobState=(\S+)", out)
        return match.group(1) if match else "UNKNOWN"

    # ------------------------------------------------------------- internal
    def _cleanup_stale(self) -> None:
        state = None
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(self.state_file.read_text())
        if not state:
            return
        if _alive(state.get("owner_pid")) and state.get("owner_pid") != os.getpid():
            raise ClusterError(f"Slurm test cluster in {self.base_dir} is owned by live pid {state['owner_pid']}")
        cleanup_pids(state)
        with contextlib.suppress(ClusterError):
            sshcluster.cleanup_stale(state["prefix"])
        self.state_file.unlink()

    def _write_config(self) -> None:
        self.etc.mkdir(parents=True, exist_ok=True)
        spool = self.base_dir / "spool"
        logs = self.base_dir / "log"
        state = self.base_dir / "ctld-state"
        for d in (spool, logs):
            d.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(state, ignore_errors=True)
        state.mkdir()
        for n in self.nodes:
            (spool / n.name).mkdir(exist_ok=True)
        self.controller_port = _free_port()
        names = ",".join(n.name for n in self.nodes)
        lines = [
            f"ClusterName={self.net.prefix}",
            f"SlurmctldHost={socket.gethostname().split('.')[0]}({self.net.subnet}.1)",
            f"SlurmctldPort={self.controller_port}",
            f"SlurmdPort={SLURMD_PORT}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={state}",
            f"SlurmdSpoolDir={spool}/%n",
            f"SlurmctldPidFile={self.base_dir}/slurmctld.pid",
            f"SlurmdPidFile={spool}/%n/slurmd.pid",
            f"SlurmctldLogFile={logs}/slurmctld.log",
            f"SlurmdLogFile={logs}/slurmd-%n.log",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SlurmdParameters=config_overrides",
            f"KillWait={self.kill_wait}",
            "MessageTimeout=10",
            "InactiveLimit=0",
            "MinJobAge=300",
            *(["GresTypes=gpu"] if self.gpus else []),
            *(f"NodeName={n.name} NodeAddr={n.ip} CPUs={self.cpus} RealMemory=1000 State=UNKNOWN"
              + (f" Gres=gpu:{self.gpus}" if self.gpus else "") for n in self.nodes),
            f"PartitionName=debug Nodes={names} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.etc / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\n")
        # Fake GPUs: device nodes stand in for /dev/nvidiaN. Slurm allocates them as GRES and
        # sets CUDA_VISIBLE_DEVICES for steps like on a GPU node; nothing opens them.
        gres = []
        if self.gpus:
            dev = self.base_dir / "dev"
            dev.mkdir(exist_ok=True)
            for i in range(self.gpus):  # character devices (Slurm insists): /dev/null's twins
                path = dev / f"nvidia{i}"
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, FAKE_GPU_MINORS[i]))
            gres = ["AutoDetect=off", f"Name=gpu File={dev}/nvidia[0-{self.gpus - 1}]"]
        (self.etc / "gres.conf").write_text("\n".join(gres) + "\n")

    def _start_munged(self) -> None:
        d = self.munge_dir
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)  # munged wants its socket directory searchable by all
        key = d / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        with contextlib.suppress(FileNotFoundError):
            self.munge_socket.unlink()
        self.munged = subprocess.Popen(
            [MUNGED, "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
             f"--pid-file={d}/munged.pid", f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(d / "munged.out", "ab"),
            start_new_session=True,
        )
        self._wait(lambda: self.munge_socket.exists(), self.munged, "munged", d / "munged.out")

    def _start_slurmctld(self) -> None:
        log = self.base_dir / "log" / "slurmctld.out"
        self.slurmctld = subprocess.Popen(
            [SLURMCTLD, "-D", "-c", "-f", str(self.conf)], env=self.env(),
            stdin=subprocess.DEVNULL, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def answers() -> bool:
            return self.slurm("scontrol", "ping", check=False, timeout=10).stdout.count("UP") > 0

        self._wait(answers, self.slurmctld, "slurmctld", log, poll=0.1)

    def _start_slurmd(self, n: sshcluster.Node) -> None:
        log = self.base_dir / "log" / f"slurmd-{n.name}.out"
        old = self.slurmd.pop(n.name, None)
        _stop_pid(old)
        self.slurmd[n.name] = self.net.spawn(
            n, [SLURMD, "-D", "-f", str(self.conf), "-N", n.name],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=self.env(), start_new_session=True,
        )

    def wait_idle(self, names: Sequence[str] | None = None) -> None:
        names = set(names or (n.name for n in self.nodes))
        deadline = time.monotonic() + self.ready_timeout
        while True:
            out = self.slurm("sinfo", "-h", "-N", "-o", "%N %T", check=False).stdout
            states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
            if all(states.get(name) == "idle" for name in names):
                return
            for n in self.nodes:
                proc = self.slurmd.get(n.name)
                if n.name in names and proc is not None and proc.poll() is not None:
                    raise ClusterError(f"slurmd on {n.name} exited with {proc.returncode}:\n"
                                       + self._tail(self.base_dir / "log" / f"slurmd-{n.name}.out"))
            if time.monotonic() > deadline:
                raise ClusterError(f"Slurm nodes not idle after {self.ready_timeout}s: {states}\n"
                                   + self._tail(self.base_dir / "log" / "slurmctld.log"))
            time.sleep(0.1)

    def _wait(self, ready, proc: subprocess.Popen, what: str, log: Path, poll: float = 0.02) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not ready():
            if proc.poll() is not None:
                raise ClusterError(f"{what} exited with {proc.returncode}:\n{self._tail(log)}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} not ready after {self.ready_timeout}s:\n{self._tail(log)}")
            time.sleep(poll)

    @staticmethod
    def _tail(path: Path, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _write_state(self) -> None:
        state = {
            "owner_pid": os.getpid(), "prefix": self.net.prefix, "base_dir": str(self.base_dir),
            "slurm_conf": str(self.conf), "controller_port": self.controller_port,
            "munged_pid": self.munged.pid if self.munged else None,
            "slurmctld_pid": self.slurmctld.pid if self.slurmctld else None,
            "nodes": [{"name": n.name, "ip": n.ip, "pid1": n.sshd_pid} for n in self.nodes],
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.state_file)


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return ""


def cleanup_pids(state: dict) -> list[str]:
    """SIGKILL the host-side daemons recorded in a state file, if they are still what we started."""
    done = []
    for key, binary in (("slurmctld_pid", "slurmctld"), ("munged_pid", "munged")):
        pid = state.get(key)
        if pid and binary in _cmdline(pid) and state["base_dir"] in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                done.append(f"killed {binary} pid {pid}")
    return done


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #
def _cmd_up(args: argparse.Namespace) -> int:
    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    cluster = SlurmCluster(args.nodes, Path(args.dir), prefix=args.prefix, cpus=args.cpus, gpus=args.gpus)
    try:
        cluster.start()
        print(f"slurmcluster: {len(cluster.nodes)} nodes up in {cluster.timings['up']:.2f}s", flush=True)
        for n in cluster.nodes:
            print(f"  {n.name:<10} {n.ip:<15} node pid1={n.sshd_pid}")
        print(f"""
  export SLURM_CONF={cluster.conf}
  sinfo; srun -N{len(cluster.nodes)} hostname
  flextui --launcher slurm --slurm_args '-N2' --remote_cwd $PWD examples/train.py
  in a node: nsenter -t {cluster.nodes[0].sshd_pid} -n -p -m -u -- ps -ef

Ctrl+C or SIGTERM (pid {os.getpid()}) tears the cluster down.""", flush=True)
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        cluster.stop()
        print(f"slurmcluster: torn down in {cluster.timings.get('down', 0):.2f}s", flush=True)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    state_file = Path(args.dir) / "state.json"
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        print(f"slurmcluster: no {state_file} (not up)", file=sys.stderr)
        return 1
    owner = state.get("owner_pid")
    if _alive(owner) and owner != os.getpid():
        os.kill(owner, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _alive(owner) and time.monotonic() < deadline:
            time.sleep(0.05)
        print(f"slurmcluster: asked owner pid {owner} to tear down")
    for what in cleanup_pids(state):
        print(f"slurmcluster: {what}")
    for what in sshcluster.cleanup_stale(state["prefix"]):
        print(f"slurmcluster: {what}")
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="slurmcluster", description="multi-node Slurm test cluster (root)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start N slurmd nodes, stay in foreground until Ctrl+C/SIGTERM")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--dir", required=True)
    up.add_argument("--prefix", default="fts")
    up.add_argument("--cpus", type=int, default=4, help="CPUs each node claims")
    up.add_argument("--gpus", type=int, default=2, help="fake GPUs per node (0: none)")
    down = sub.add_parser("down", help="tear down (signals the owner, kills what it left)")
    down.add_argument("--dir", required=True)
    args = ap.parse_args(argv)
    try:
        return {"up": _cmd_up, "down": _cmd_down}[args.cmd](args)
    except ClusterError as e:
        print(f"slurmcluster: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
