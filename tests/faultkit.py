"""The fault matrix: a real multi-node job per case, one fault, then what is left of it.

Shared by tests/test_faults.py (which asserts) and bench/faults.py (which prints the table).

Every case runs `flextui --headless` on 2 nodes x 2 slots of a backend's test cluster, with
tests/workers/fault_worker.py as every rank (each with a child process of its own), waits
until every rank's "ready" line is in the console's run directory, injects its fault and
measures
    exit code    of the console, as a shell shows it (128 + N when signal N ended it)
    clean after  seconds from the fault until no job process is left on any node, counted
                 inside each node's PID namespace (a crashed node has none)
    logs         each rank's log in the console's run directory against the worker's own
                 copy: equal byte for byte, or — for a rank whose console or node died — a
                 byte-exact prefix of it (the console cannot have what never reached it)

A backend is one line in BACKENDS: how flextui is told to use it and which cases apply.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FAULT_WORKER = str(REPO / "tests" / "workers" / "fault_worker.py")
GRACE = 5.0
NODE_TIMEOUT = 3.0  # the partition case's --node_timeout
STALL = 2.5  # seconds the stalled SSH session stays stopped
WORLD = 4  # 2 nodes x 2 slots
READY_TIMEOUT = 60.0


@dataclass(frozen=True)
class Backend:
    name: str
    #: pytest fixture that yields the cluster ("make_cluster" is called with the node count)
    fixture: str
    #: flextui arguments that put the job on the cluster's first two nodes, two slots each
    args: Callable[[object, Path], list[str]]
    #: the SSHCluster whose namespaces are the nodes
    net: Callable[[object], object] = lambda cluster: cluster
    #: job processes on a node: all but the cluster's own daemons (sshd; slurmd)
    processes: Callable[[object, object], int] = lambda cluster, node: cluster.job_process_count(node)
    #: the cases that apply (None: all)
    cases: frozenset[str] | None = None
    #: case -> the open defect it still shows (its test is expected to fail until fixed)
    pending: dict[str, str] = field(default_factory=dict)

    def applies(self, case: "Case") -> bool:
        return self.cases is None or case.name in self.cases


def _ssh_args(cluster, tmp: Path) -> list[str]:
    path = tmp / "hostfile"
    path.write_text("".join(f"{n.name} slots=2\n" for n in cluster.nodes[:2]))
    return [str(path)]


def _mpi_args(flavour: str) -> Callable[[object, Path], list[str]]:
    """`--launcher mpirun` with that runtime (tests/mpicluster.py) on the SSH cluster."""
    def args(cluster, tmp: Path) -> list[str]:
        import mpicluster  # noqa: PLC0415 - only for MPI backends

        if (why := mpicluster.missing(flavour)) is not None:
            raise AssertionError(why)
        return [*mpicluster.MPICluster(cluster, flavour).args(), *_ssh_args(cluster, tmp)]
    return args


def _slurm_args(cluster, tmp: Path) -> list[str]:
    names = ",".join(n.name for n in cluster.nodes[:2])
    return ["--launcher", "slurm", "--slurm_args", f"-N2 -w {names}", "--num_gpus", "2"]


# -- the cases -----------------------------------------------------------------------------


@dataclass
class Run:
    """One job of a case: its console process, directories and the cluster it runs on."""

    backend: Backend
    cluster: object
    tmp: Path
    proc: subprocess.Popen | None = None
    stalled: tuple | None = None  # (node, sshd pids) while stopped
    trigger: Path = field(init=False)
    copies: Path = field(init=False)
    runs: Path = field(init=False)

    def __post_init__(self) -> None:
        self.trigger = self.tmp / "trigger"
        self.copies = self.tmp / "copies"
        self.runs = self.tmp / "runs"

    @property
    def net(self):
        return self.backend.net(self.cluster)

    @property
    def nodes(self) -> list:
        return self.net.nodes[:2]

    def run_dir(self) -> Path | None:
        found = [p for p in self.runs.iterdir() if p.is_dir()] if self.runs.is_dir() else []
        return found[0] if len(found) == 1 else None

    def node_processes(self) -> int:
        return sum(self.backend.processes(self.cluster, n) if n.running else 0 for n in self.nodes)

    def leftovers(self) -> list[str]:
        return [f"{n.name}: {pid} {args}" for n in self.nodes if n.running
                for pid, _, args in self.cluster.job_processes(n)]

    def ssh_sessions(self, node) -> list[int]:
        """Node PIDs of the node's `sshd: USER@notty` processes (the console's session)."""
        return [pid for pid, _, args in self.net.node_processes(node) if args.startswith("sshd:") and "@notty" in args]


@dataclass(frozen=True)
class Case:
    name: str
    what: str  # one line for the table
    expected_exit: int
    fault: Callable[[Run], None]
    flextui_args: tuple[str, ...] = ()
    worker_args: tuple[str, ...] = ()
    #: ranks whose console log may be a prefix of the worker's copy (their console or node died)
    partial_ranks: frozenset[int] = frozenset()
    #: the console's stdout is a pipe the case reads (and closes)
    pipe_stdout: bool = False
    undo: Callable[[Run], None] = lambda run: None


def _signal_console(sig: int) -> Callable[[Run], None]:
    return lambda run: run.proc.send_signal(sig)


def _touch(run: Run) -> None:
    run.trigger.touch()


def _crash_second_node(run: Run) -> None:
    run.net.crash_node(run.nodes[1])


def _cut_second_node(run: Run) -> None:
    run.net.disconnect_node(run.nodes[1])


def _reconnect_second_node(run: Run) -> None:
    run.net.reconnect_node(run.nodes[1])


def _stall_session_at_exit(run: Run) -> None:
    """SIGSTOP the second node's sshd session, let every rank write 50 KB and exit, and
    SIGCONT the session STALL seconds later."""
    node = run.nodes[1]
    sessions = run.ssh_sessions(node)
    assert sessions, f"no sshd session on {node.name}: {run.net.node_processes(node)}"
    stopped_at = time.monotonic()
    run.net.kill_node_processes(node, sessions, signal.SIGSTOP)
    run.stalled = (node, sessions)
    run.trigger.touch()
    time.sleep(max(0.0, stopped_at + STALL - time.monotonic()))
    _resume_stalled(run)


def _resume_stalled(run: Run) -> None:
    if run.stalled:
        run.net.kill_node_processes(*run.stalled, signal.SIGCONT)
        run.stalled = None


def _close_stdout(run: Run) -> None:
    """As `| head -n 30`: read 30 lines, close the pipe; the ranks finish 1 s later."""
    for _ in range(30):
        assert run.proc.stdout.readline(), "the console's output ended before 30 lines"
    run.proc.stdout.close()
    time.sleep(1.0)
    run.trigger.touch()


SECOND_NODE = frozenset({2, 3})

CASES = [
    Case("sigint", "SIGINT to the console", 130, _signal_console(signal.SIGINT)),
    Case("sigterm", "SIGTERM to the console", 143, _signal_console(signal.SIGTERM)),
    Case("sigkill", "SIGKILL of the console", 128 + 9, _signal_console(signal.SIGKILL),
         partial_ranks=frozenset(range(WORLD))),
    Case("rank-failure", "rank 3 exits 7, its child left behind", 7, _touch,
         worker_args=("--on-trigger", "fail", "--fail-rank", "3", "--code", "7")),
    Case("node-crash", "second node's PID 1 killed", 255, _crash_second_node, partial_ranks=SECOND_NODE),
    Case("partition", f"second node cut off (--node_timeout {NODE_TIMEOUT:g}) while every rank logs ~1 MB/s",
         255, _cut_second_node, flextui_args=("--node_timeout", str(NODE_TIMEOUT)),
         worker_args=("--interval", "0.001", "--pad", "1000"), partial_ranks=SECOND_NODE,
         undo=_reconnect_second_node),
    Case("stall-at-exit", f"second node's SSH session stopped {STALL:g}s while ranks write 50 KB and exit 0 "
         f"(clean time includes the stall)",
         0, _stall_session_at_exit, worker_args=("--on-trigger", "burst"), undo=_resume_stalled),
    Case("stdout-closed", "console's stdout closed after 30 lines (| head -n 30); the ranks finish 1 s later",
         0, _close_stdout,
         worker_args=("--on-trigger", "finish"), pipe_stdout=True),
]
CASE_NAMES = [case.name for case in CASES]

# Every case runs over SSH. The other backends run the cases where their own process
# handling is at stake (the console's signals and its stdout are the same code for all):
# Slurm's steps when the console dies or a rank fails; MPI runtimes when the console dies,
# a session stalls at exit or a node is cut off (SIGINT, a failing rank and a node crash
# under both runtimes are in tests/test_mpi_e2e.py). Not run: a node crash or cut under
# Slurm (the shared Slurm cluster would need that node's slurmd restarted and re-registered
# between tests; tests/slurmcluster.py does not do that yet).
SLURM_CASES = frozenset({"sigint", "sigkill", "rank-failure"})
MPI_CASES = frozenset({"sigkill", "stall-at-exit", "partition"})
BACKENDS = [
    Backend("ssh", "make_cluster", _ssh_args),
    Backend("slurm", "slurm", _slurm_args, net=lambda cluster: cluster.net, cases=SLURM_CASES),
    Backend("openmpi", "make_cluster", _mpi_args("openmpi"), cases=MPI_CASES),
    Backend("mpich", "make_cluster", _mpi_args("mpich"), cases=MPI_CASES),
]


# -- running a case ----------------------------------------------------------------------


@dataclass
class Outcome:
    backend: str
    case: str
    exit_code: int
    clean_after: float | None  # None: processes were still left when we gave up
    left: list[str]  # the job processes left then ("node: pid args")
    log_problems: list[str]
    stderr: str
    run_dir: Path | None

    @property
    def logs_ok(self) -> bool:
        return not self.log_problems


def shell_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def run_case(backend: Backend, cluster, case: Case, tmp: Path, env: dict | None = None) -> Outcome:
    """Run one case to its end and leave nothing running (the fault is undone, the console
    and every node process are gone) whatever happened."""
    tmp.mkdir(parents=True, exist_ok=True)
    run = Run(backend, cluster, tmp)
    argv = [sys.executable, "-m", "flextui", "--headless", "--log-dir", str(run.runs), "--grace", str(GRACE),
            *case.flextui_args, *backend.args(cluster, tmp),
            FAULT_WORKER, "--copy-dir", str(run.copies), "--trigger", str(run.trigger), *case.worker_args]
    stdout = subprocess.PIPE if case.pipe_stdout else open(tmp / "console.out", "wb")
    stderr = open(tmp / "console.err", "w+b")
    clean_after, left = None, []
    try:
        run.proc = subprocess.Popen(argv, cwd=tmp, env=env or cluster.env(), stdin=subprocess.DEVNULL,
                                    stdout=stdout, stderr=stderr)
        wait_ready(run)
        fault_at = time.monotonic()
        try:
            case.fault(run)
            clean_after = wait_clean(run, fault_at, timeout=GRACE + NODE_TIMEOUT + 10)
            if clean_after is None:
                left = run.leftovers()
        finally:
            case.undo(run)
        code = shell_status(run.proc.wait(timeout=GRACE + NODE_TIMEOUT + 20))
    finally:
        if run.proc is not None and run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait()
        if not case.pipe_stdout:
            stdout.close()
        elif run.proc is not None and not run.proc.stdout.closed:
            run.proc.stdout.close()
        stderr.seek(0)
        err = stderr.read().decode(errors="replace")
        stderr.close()
    return Outcome(backend.name, case.name, code, clean_after, left, compare_logs(run, case), err, run.run_dir())


def wait_ready(run: Run) -> None:
    """Until every rank's "ready" line is in the console's run directory."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if run.proc.poll() is not None:
            raise AssertionError(f"flextui ended ({run.proc.returncode}) before every rank was ready")
        path = run.run_dir()
        if path is not None and all(
            b"ready rank" in _read(path / f"rank-{rank}.log")[:200] for rank in range(WORLD)
        ):
            return
        time.sleep(0.05)
    raise AssertionError(f"ranks not ready within {READY_TIMEOUT:g}s")


def wait_clean(run: Run, since: float, timeout: float) -> float | None:
    """Seconds from `since` until no job process is left on any node; None after `timeout`."""
    while time.monotonic() - since < timeout:
        if run.node_processes() == 0:
            return time.monotonic() - since
        time.sleep(0.02)
    return None


def compare_logs(run: Run, case: Case) -> list[str]:
    path = run.run_dir()
    if path is None:
        return [f"no single run directory in {run.runs}"]
    problems = []
    for rank in range(WORLD):
        console = _read(path / f"rank-{rank}.log")
        own = _read(run.copies / f"rank-{rank}.log")
        if not own.startswith(b"ready rank"):
            problems.append(f"rank {rank}: the worker's own copy is missing or empty")
        elif rank in case.partial_ranks:
            if not (console.startswith(b"ready rank") and own.startswith(console)):
                problems.append(f"rank {rank}: console log ({len(console)} bytes) is not a prefix of the "
                                f"worker's copy ({len(own)} bytes){_first_difference(console, own)}")
        elif console != own:
            problems.append(f"rank {rank}: console log ({len(console)} bytes) differs from the worker's copy "
                            f"({len(own)} bytes){_first_difference(console, own)}")
    return problems


def _first_difference(a: bytes, b: bytes) -> str:
    at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f", first difference at byte {at}"


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""
