"""Shared plumbing for bench/run.py: the SSH cluster, the three launchers, watching output.

Every launcher is driven the way a user drives it, from a fresh process group (so a
"Ctrl+C" is SIGINT to the whole group, as a terminal sends it):

* flextui      `python -m flextui --headless HOSTFILE SCRIPT ARGS` with HOME = the cluster's
               fake home (asyncssh reads its ~/.ssh/config and known_hosts there);
* pdsh         `pdsh -R ssh -S -w HOSTS 'cd CWD; export ...; for l in slots: RANK=... python
               SCRIPT &; wait'` (one remote shell per node starts that node's ranks, with the
               variables a torch.distributed script needs);
* DeepSpeed    `deepspeed --hostfile HOSTFILE --master_addr FIRST [--force_multi] SCRIPT ARGS`
               from a separate venv (DS_ACCELERATOR=cpu, also exported to the nodes through
               ./.deepspeed_env), with its own pdsh.

OpenSSH's ssh ignores $HOME, so pdsh and DeepSpeed (whose pre-launch `ssh HOST hostname`
check and pdsh both exec plain `ssh`) get a PATH whose `ssh` is a two-line wrapper adding
`-F <cluster ssh_config>`: the same hosts, keys and strict known_hosts as flextui uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
WORKERS = BENCH / "workers"
PYTHON = sys.executable  # the project's venv python (flextui, torch)
DS_VENV = BENCH / ".ds-venv"

sys.path.insert(0, str(REPO / "tests"))
import sshcluster  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------
# DeepSpeed venv
# --------------------------------------------------------------------------------------
def ensure_deepspeed(venv: Path = DS_VENV, install: bool = True) -> tuple[str | None, str]:
    """(python of a venv with deepspeed, version) or (None, why not).

    torch==2.13.0 is installed first (a CPU build on this machine's disk); deepspeed is
    then built without build isolation so pip never resolves an unpinned (CUDA) torch.
    """
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import deepspeed, torch; print(deepspeed.__version__, torch.__version__)"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}

    def version() -> str | None:
        if not py.exists():
            return None
        cp = subprocess.run(check, capture_output=True, text=True, env=env, timeout=180)
        lines = cp.stdout.strip().splitlines()
        return lines[-1] if cp.returncode == 0 and lines else None

    found = version()
    if found:
        return str(py), found
    if not install:
        return None, f"no deepspeed venv at {venv} (run without --no-install)"
    log(f"installing deepspeed into {venv} (torch==2.13.0 pinned first)")
    constraints = venv.parent / ".ds-constraints.txt"
    steps = [
        [shutil.which("python3") or "python3", "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", "torch==2.13.0"],
        [str(venv / "bin" / "pip"), "install", "-q", "-c", str(constraints), "--no-build-isolation",
         "deepspeed", "numpy", "psutil"],
    ]
    constraints.write_text("torch==2.13.0\n")
    try:
        for argv in steps:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=1200,
                                env={**env, "DS_BUILD_OPS": "0"})
            if cp.returncode != 0:
                tail = (cp.stderr or cp.stdout).strip().splitlines()[-3:]
                return None, f"`{' '.join(argv[:4])} ...` failed: {' | '.join(tail)}"
    finally:
        constraints.unlink(missing_ok=True)
    found = version()
    return (str(py), found) if found else (None, "deepspeed installed but `import deepspeed` fails")


# --------------------------------------------------------------------------------------
# The cluster and the workspace
# --------------------------------------------------------------------------------------
#: MPI runtimes flextui can launch through (Debian: both installed side by side).
MPI_RUNTIMES = {"openmpi": "/usr/bin/mpirun.openmpi", "mpich": "/usr/bin/mpiexec.hydra"}


class Bench:
    """One cluster + a work directory + how to run each launcher against it."""

    def __init__(self, cluster: sshcluster.SSHCluster, work: Path, ds_python: str | None) -> None:
        self.cluster = cluster
        self.work = work
        self.ds_python = ds_python
        self.bin = work / "bin"
        self.bin.mkdir(parents=True, exist_ok=True)
        wrapper = self.bin / "ssh"
        wrapper.write_text(f"#!/bin/sh\nexec /usr/bin/ssh -F {shlex.quote(str(cluster.ssh_config))} \"$@\"\n")
        wrapper.chmod(0o755)
        (work / ".deepspeed_env").write_text("DS_ACCELERATOR=cpu\n")
        self.runs = work / "runs"
        self.hostfiles = work / "hostfiles"
        self.hostfiles.mkdir(exist_ok=True)

    @property
    def names(self) -> list[str]:
        return [n.name for n in self.cluster.nodes]

    def hostfile(self, nodes: int, slots: int) -> Path:
        path = self.hostfiles / f"n{nodes}s{slots}"
        path.write_text("".join(f"{name} slots={slots}\n" for name in self.names[:nodes]))
        return path

    def local_hostfile(self, slots: int) -> Path:
        path = self.hostfiles / f"local{slots}"
        path.write_text(f"localhost slots={slots}\n")
        return path

    # -- environments ------------------------------------------------------------------
    def flextui_env(self) -> dict[str, str]:
        return self.cluster.env()

    def wrapped_env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("SSH_AUTH_SOCK", None)
        env["PATH"] = f"{self.bin}:{env.get('PATH', '')}"
        env.update(extra)
        return env

    # -- command lines -----------------------------------------------------------------
    def flextui_argv(self, nodes: int, slots: int, script: Path, args: list[str], *,
                     grace: float | None = None, local: bool = False, options: list[str] = ()) -> list[str]:
        hf = self.local_hostfile(nodes * slots) if local else self.hostfile(nodes, slots)
        extra = [*options] + (["--grace", str(grace)] if grace is not None else [])
        if local:  # this machine's 29500 may be taken by someone else's job (tests, other benches)
            extra += ["--master_port", str(free_port())]
        return [PYTHON, "-m", "flextui", "--headless", "--log-dir", str(self.runs), *extra,
                str(hf), str(script), *args]

    def mpi_options(self, runtime: str) -> list[str]:
        """flextui's `--launcher mpirun` options for one of MPI_RUNTIMES, reaching the cluster:
        Open MPI's ssh gets the cluster's config, Hydra runs the PATH ssh wrapper and is told
        which interface the nodes reach this machine on (its hostname is 127.0.0.1 here)."""
        program = MPI_RUNTIMES[runtime]
        if runtime == "openmpi":
            reach = ["--mca", "plm_rsh_args", f"-F {self.cluster.ssh_config}"]
        else:
            reach = ["-launcher-exec", str(self.bin / "ssh"), "-iface", self.cluster.bridge]
        return ["--launcher", "mpirun", "--mpirun", program, "--mpi_args", shlex.join(reach)]

    def pdsh_argv(self, nodes: int, slots: int, script: Path, args: list[str]) -> list[str]:
        world = nodes * slots
        exports = {
            "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": slots, "LOCAL_SIZE": slots,
            "MASTER_ADDR": self.names[0], "MASTER_PORT": 29500, "CROSS_SIZE": nodes,
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(slots))), "PYTHONUNBUFFERED": 1,
        }
        export = "export " + " ".join(f"{k}={shlex.quote(str(v))}" for k, v in exports.items())
        script_cmd = " ".join(shlex.quote(a) for a in [PYTHON, "-u", str(script)])
        rest = " ".join(shlex.quote(a) for a in args)
        remote = (
            f"cd {shlex.quote(str(self.work))} && {export} CROSS_RANK=%n; "
            f"for l in $(seq 0 {slots - 1}); do RANK=$((%n*{slots}+l)) LOCAL_RANK=$l "
            f"{script_cmd} --local_rank=$l {rest} & done; wait"
        )
        return ["pdsh", "-R", "ssh", "-S", "-f", "64", "-w", ",".join(self.names[:nodes]), remote]

    def deepspeed_argv(self, nodes: int, slots: int, script: Path, args: list[str]) -> list[str]:
        assert self.ds_python
        ds = str(Path(self.ds_python).parent / "deepspeed")
        force = ["--force_multi"] if nodes == 1 else []  # else DS runs a 1-host hostfile locally
        return [self.ds_python, ds, "--hostfile", str(self.hostfile(nodes, slots)),
                "--master_addr", self.names[0], *force, str(script), *args]

    def deepspeed_env(self) -> dict[str, str]:
        return self.wrapped_env(DS_ACCELERATOR="cpu")

    # -- node processes ----------------------------------------------------------------
    def job_counts(self, nodes: int | None = None) -> list[int]:
        chosen = self.cluster.nodes[: nodes or len(self.cluster.nodes)]
        return [self.cluster.job_process_count(n) for n in chosen]

    def clean_nodes(self) -> int:
        """Kill whatever job processes are left on any node; returns how many there were."""
        total = 0
        for node in self.cluster.nodes:
            procs = self.cluster.job_processes(node)
            if procs:
                total += len(procs)
                self.cluster.kill_node_processes(node, [p[0] for p in procs])
        deadline = time.monotonic() + 5
        while sum(self.job_counts()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return total

    def node_cpu(self) -> float:
        """CPU seconds spent inside every node so far: each node's PID 1 (sshd) plus everything
        it has reaped (cutime/cstime). Orphans are re-parented to PID 1 of the node's PID
        namespace, so once a job is gone this counts every sshd child, shell, launcher and
        worker it ran, and nothing from outside the cluster."""
        tck = os.sysconf("SC_CLK_TCK")
        total = 0
        for node in self.cluster.nodes:
            try:
                fields = Path(f"/proc/{node.sshd_pid}/stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, TypeError):
                continue
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        return total / tck

    def wait_sessions_closed(self, timeout: float = 3.0) -> None:
        """Until no node has any process but its sshd listener (sessions closed, all reaped)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(self.cluster.node_processes(n) for n in self.cluster.nodes):
                return
            time.sleep(0.02)

    def clean_runs(self) -> None:
        """Drop console run dirs and the nodes' copies (/tmp/flextui-runs/<run id>)."""
        if self.runs.is_dir():
            for run in self.runs.iterdir():
                shutil.rmtree(Path("/tmp/flextui-runs") / run.name, ignore_errors=True)
                shutil.rmtree(run, ignore_errors=True)


# --------------------------------------------------------------------------------------
# Watching a launcher's output
# --------------------------------------------------------------------------------------
class Watched:
    """A launcher in its own process group; a thread drains its output and notes, for every
    rank, the first time a line matching `pattern` (group 1 = rank) appeared."""

    def __init__(self, argv: list[str], *, env: dict, cwd: Path, pattern: re.Pattern[bytes],
                 world: int) -> None:
        self.pattern = pattern
        self.world = world
        self.first: dict[int, float] = {}
        self.all_seen = threading.Event()
        self.t_all: float | None = None
        self.tail = b""
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        self.thread = threading.Thread(target=self._drain, daemon=True)
        self.thread.start()

    def _drain(self) -> None:
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            data = os.read(fd, 1 << 16)
            if not data:
                break
            now = time.monotonic() - self.t0
            self.tail = (self.tail + data)[-4000:]
            if self.all_seen.is_set():
                continue
            buf += data
            cut = buf.rfind(b"\n") + 1
            for m in self.pattern.finditer(buf, 0, cut):
                self.first.setdefault(int(m.group(1)), now)
            buf = buf[cut:]
            if len(self.first) >= self.world:
                self.t_all = now
                self.all_seen.set()
        self.proc.stdout.close()

    def wait_all(self, timeout: float) -> float | None:
        self.all_seen.wait(timeout)
        return self.t_all

    def signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def finish(self, timeout: float) -> tuple[int | None, float]:
        """Wait for the launcher to exit (kill its group after `timeout`); (code, seconds)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal_group(signal.SIGKILL)
            self.proc.wait(10)
            code = None
        self.thread.join(5)
        return code, time.monotonic() - self.t0

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self.thread.join(5)


def free_port() -> int:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_info(ds_version: str | None) -> dict:
    def out(argv: list[str]) -> str:
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            return (cp.stdout or cp.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "?"

    import platform

    import psutil
    torch = out([PYTHON, "-c", "import torch; print(torch.__version__)"])
    head = out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
    dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "flextui"],
                           capture_output=True, text=True).stdout.split("\n")
    dirty = [line[3:] for line in dirty if line.strip()]
    return {
        "flextui": head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else ""),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "torch": torch,
        "deepspeed": ds_version or "not available",
        "pdsh": out(["pdsh", "-V"]),
        "openssh": out(["ssh", "-V"]),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "mem_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
