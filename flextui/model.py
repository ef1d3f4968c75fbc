"""The job model: every rank's state, built only from node-launcher events.

Pure logic and Textual-free: the console's orchestration (job.py) feeds it events, the
headless printer and the Textual UI read it. It reads the time only from its clock (time.time
unless a test gives it another), so every decision can be tested from a table of events. Log text is kept per rank in a bounded ring
(the full log lives in the run directory), so memory stays flat however long a job runs.
"""

from __future__ import annotations

import enum
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat

from flextui.rootcause import error_line, is_peer_error, is_signalled_error
from flextui.world import RankInfo, World

DEFAULT_TAIL_LINES = 5000
#: Seconds a running rank may write nothing before it is flagged "stalled?" (--stall_after).
DEFAULT_STALL_AFTER = 300.0
MAX_LIVE_CHARS = 1 << 16  # of an unfinished line kept for display
DEFAULT_COMBINED_LINES = 50000  # the "all ranks" ring: (rank, line) across every rank

#: Seconds since the epoch, like time.time (which it is, but in tests).
Clock = Callable[[], float]


class RankStatus(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    EXITED = "exited"  # exit code 0
    FAILED = "failed"  # non-zero exit code
    KILLED = "killed"  # ended by a signal
    LOST = "lost"  # its node's connection dropped before it reported an exit

    @property
    def finished(self) -> bool:
        return self not in (RankStatus.PENDING, RankStatus.RUNNING)


class JobState(enum.Enum):
    LAUNCHING = "launching"
    RUNNING = "running"
    STOPPING = "stopping"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.ABORTED)


@dataclass(frozen=True)
class GpuUsage:
    """A rank's bound GPU as its node launcher read it through NVML (None: not reported)."""

    device: str  # its CUDA_VISIBLE_DEVICES entry: an index, or a GPU-/MIG- UUID
    util: float | None = None  # percent of the last sample period the GPU was busy
    mem_used: int | None = None  # bytes used on the device, by every process
    mem_total: int | None = None
    proc_mem: int | None = None  # bytes the rank's own processes hold on it

    @classmethod
    def from_event(cls, data: dict) -> GpuUsage:
        return cls(str(data.get("device", "?")), data.get("util"), data.get("mem_used"),
                   data.get("mem_total"), data.get("proc_mem"))


@dataclass(frozen=True)
class Usage:
    """What a rank's process tree used at its node launcher's last sample (every ~2 s)."""

    t: float  # when it arrived (the model's clock)
    cpu: float | None  # percent of one core, summed over the tree, since the previous sample
    rss: int  # bytes resident, summed over the tree
    threads: int
    procs: int  # processes in the tree: the rank and its children
    gpu: GpuUsage | None = None

    @classmethod
    def from_event(cls, data: dict, t: float) -> Usage:
        gpu = data.get("gpu")
        return cls(t, data.get("cpu"), int(data.get("rss") or 0), int(data.get("threads") or 0),
                   int(data.get("procs") or 0), GpuUsage.from_event(gpu) if isinstance(gpu, dict) else None)


def exit_status(code: int | None, signal: int | None) -> int:
    """One number per outcome, as a shell reports it: 128 + N for signal N."""
    return 128 + signal if signal else (code or 0)


@dataclass
class RankState:
    info: RankInfo
    tail_lines: int = DEFAULT_TAIL_LINES
    status: RankStatus = RankStatus.PENDING
    pid: int | None = None
    code: int | None = None
    signal: int | None = None
    stopped: bool = False  # it ended because the job (or the user) stopped it
    started_at: float | None = None
    ended_at: float | None = None
    line_count: int = 0  # complete lines received so far, also those gone from `tail`
    byte_count: int = 0
    #: Bytes of the rank's log file taken in so far: where, in rank-N.log, what the model
    #: holds ends (a console in another process reads the file up to here, see mirror.py).
    log_bytes: int = 0
    tail: deque[str] = field(init=False)
    live: str = ""  # the line being written (no newline yet), e.g. a tqdm bar; bounded
    cpus: str | None = None  # the CPUs it is pinned to ("0-3"), with --bind_cores_to_rank
    last_heard: float | None = None  # the model's clock when it started or last wrote anything
    usage: Usage | None = None  # its process tree at the last sample
    error_line: str | None = None  # after a non-zero exit: its last error (rootcause.error_line)
    peer_error: bool = False  # that error was a lost peer's, not its own (rootcause.is_peer_error)
    collateral: bool = False  # it died of a lost peer's error: another rank, a node or the stop went first

    def __post_init__(self) -> None:
        self.tail = deque(maxlen=self.tail_lines)
        self._unfinished: list[str] = []  # the pieces of the line being written

    @property
    def rank(self) -> int:
        return self.info.rank

    @property
    def exit_status(self) -> int | None:
        if not self.status.finished or self.status is RankStatus.LOST:
            return None
        return exit_status(self.code, self.signal)

    @property
    def last_line(self) -> str:
        if self.live:
            return self.live
        return self.tail[-1] if self.tail else ""

    def runtime(self, now: float) -> float:
        """Seconds it ran: until it ended, else until `now`."""
        if self.started_at is None:
            return 0.0
        return (self.ended_at or now) - self.started_at

    def add_output(self, data: str) -> list[str]:
        """Append raw log text; returns the complete lines it finished (for display).

        A carriage return rewrites the current line, so a progress bar becomes one
        updating line instead of thousands. An unfinished line is kept in pieces (joined
        once, when it ends) and shown through `live`, a bounded copy: a giant line sent
        in many pieces costs its size, not its size times the pieces.
        """
        if data.isascii():
            self.log_bytes += len(data)
        else:  # the launcher's bytes, undecodable ones surrogate-escaped (launch.py)
            raw = data.encode("utf-8", "surrogateescape")
            self.log_bytes += len(raw)
            data = raw.decode("utf-8", "replace")
        self.byte_count += len(data)
        pieces = data.split("\n")
        rest = pieces.pop()
        if pieces:
            if self._unfinished:
                pieces[0] = "".join(self._unfinished) + pieces[0]
                self._unfinished, self.live = [], ""
            if "\r" in data:
                pieces = [_after_carriage_return(p) if "\r" in p else p for p in pieces]
            self.tail.extend(pieces)
            self.line_count += len(pieces)
        if "\r" in rest:  # whatever came before it on this line is overwritten
            rest = _after_carriage_return(rest)
            self._unfinished, self.live = [rest], rest[:MAX_LIVE_CHARS]
        elif rest:
            self._unfinished.append(rest)
            if len(self.live) < MAX_LIVE_CHARS:
                self.live = (self.live + rest)[:MAX_LIVE_CHARS]
        return pieces

    def record_exit(self, event: dict) -> None:
        """Outcome from a launcher's "exited" event."""
        self.code, self.signal = event.get("code"), event.get("signal")
        self.ended_at = event.get("t")
        self.stopped = bool(event.get("stopped"))
        if self.signal:
            self.status = RankStatus.KILLED
        elif self.code:
            self.status = RankStatus.FAILED
        else:
            self.status = RankStatus.EXITED
        self.recheck_error()

    def recheck_error(self) -> None:
        """Its last error line and whether a lost peer caused it, from its output (after
        a non-zero exit)."""
        if self.status in (RankStatus.FAILED, RankStatus.KILLED):
            self.error_line = error_line(self.tail, killed=self.status is RankStatus.KILLED)
            self.peer_error = is_peer_error(self.error_line)

    def finish_output(self) -> list[str]:
        """The rank is done: its unfinished last line is a line now (returned, if any)."""
        finished = []
        if self.live:
            finished.append("".join(self._unfinished))
            self.tail.extend(finished)
            self.line_count += 1
        self._unfinished, self.live = [], ""
        return finished


def _after_carriage_return(line: str) -> str:
    """What a terminal shows: the text after the last carriage return that has any."""
    for segment in reversed(line.split("\r")):
        if segment:
            return segment
    return ""


@dataclass
class NodeState:
    host: str
    node_rank: int
    ranks: range
    launcher_pid: int | None = None
    hostname: str | None = None
    done: bool = False
    lost: bool = False
    code: int | None = None
    error: str | None = None
    #: why the node stopped its running ranks before the console asked it to (it heard
    #: nothing from the console for --node_timeout, its launcher was signalled)
    stopped_job: str | None = None
    sampled: bool = False  # its launcher reported what its ranks use (a "sample" event)
    #: why its launcher cannot read its GPUs (no nvidia-ml-py, no driver); None: it can,
    #: or it has not said yet (see `sampled`)
    no_gpu_telemetry: str | None = None


class JobModel:
    """Applies launcher events; decides nothing that needs I/O."""

    def __init__(
        self,
        world: World,
        run_id: str,
        tail_lines: int = DEFAULT_TAIL_LINES,
        combined_lines: int = DEFAULT_COMBINED_LINES,
        clock: Clock = time.time,
    ) -> None:
        self.clock = clock
        self.world = world
        self.run_id = run_id
        self.ranks = [RankState(info, tail_lines) for info in world.ranks]
        # Every completed line of every rank in arrival order, bounded like the tails;
        # `combined_count` counts all ever added, so a reader can tell what it missed.
        self.combined: deque[tuple[int, str]] = deque(maxlen=combined_lines)
        self.combined_count = 0
        self.nodes = [NodeState(n.host, n.node_rank, n.ranks) for n in world.nodes]
        self.state = JobState.LAUNCHING
        self.started_at = clock()
        self.ended_at: float | None = None
        self.first_failure: RankState | None = None
        self.stop_reason: str | None = None
        self.stop_started_at: float | None = None
        self.grace: float | None = None
        self.aborted_by_user = False
        self.abort_signal = 2  # SIGINT: what the user's abort counts as in the exit code
        self.error: str | None = None  # why the job could not start / was cut short
        self.stall_after = DEFAULT_STALL_AFTER  # seconds of silence that flag a running rank
        self._flagged: set[int] = set()  # id() of the ranks update_stalls flagged, while they stay silent

    @property
    def current_ranks(self) -> list[RankState]:
        """The ranks of the job as it runs now (in an elastic job: the current attempt's)."""
        return self.ranks

    # -- events from node launchers ------------------------------------------------------

    def apply(self, node_rank: int, event: dict) -> list[str] | None:
        """Apply one launcher event; returns the display lines it completed (output, or
        an exiting rank's last line without a newline)."""
        kind = event.get("ev")
        if kind == "out":
            rank_no = event["rank"]
            rank = self.ranks[rank_no]
            rank.last_heard = self.clock()
            lines = rank.add_output(event["data"])
            if lines:
                self.combined.extend(zip(repeat(rank_no), lines))
                self.combined_count += len(lines)
            return lines
        node = self.nodes[node_rank]
        if kind == "started":
            rank = self.ranks[event["rank"]]
            rank.status, rank.pid, rank.started_at = RankStatus.RUNNING, event["pid"], event["t"]
            rank.cpus = event.get("cpus")
            rank.last_heard = self.clock()
            if self.state is JobState.LAUNCHING and all(
                r.status is not RankStatus.PENDING for r in self.ranks
            ):
                self.state = JobState.RUNNING
        elif kind == "exited":
            return self._rank_exited(self.ranks[event["rank"]], event)
        elif kind == "sample":
            self.apply_sample(node_rank, event)
        elif kind == "hello":
            node.launcher_pid, node.hostname = event.get("pid"), event.get("host")
        elif kind == "stopping":
            self.grace = event.get("grace", self.grace)
            if self.stop_started_at is None and not all(self.ranks[r].status.finished for r in node.ranks):
                node.stopped_job = event.get("reason") or "stopped"
        elif kind == "error":
            node.error = event.get("message")
        elif kind == "done":
            node.done, node.code = True, event.get("code")
        return None

    def apply_sample(self, node_rank: int, event: dict) -> None:
        """A launcher's "sample": what each of its ranks' process trees uses now."""
        node = self.nodes[node_rank]
        node.sampled, node.no_gpu_telemetry = True, event.get("nvml")
        now = self.clock()
        for entry in event.get("ranks", ()):
            rank = self._sampled_rank(node_rank, entry)
            if rank is not None and not rank.status.finished:
                rank.usage = Usage.from_event(entry, now)

    def _sampled_rank(self, node_rank: int, entry: dict) -> RankState | None:
        number = entry.get("rank")
        if isinstance(number, int) and 0 <= number < len(self.ranks):
            rank = self.ranks[number]
            return rank if rank.info.node_rank == node_rank else None
        return None

    def _finish_output(self, rank: RankState, shown: bool = True) -> list[str]:
        finished = rank.finish_output()
        if finished and shown:
            self.combined.append((rank.rank, finished[0]))
            self.combined_count += 1
        return finished if shown else []

    def _rank_exited(self, rank: RankState, event: dict) -> list[str]:
        finished = self._finish_output(rank)
        rank.record_exit(event)
        self._find_root_cause()
        return finished

    def _find_root_cause(self) -> None:
        """The first failure is the cascade's root cause: the earliest failure (by time
        across nodes, not by arrival) that is not a lost peer's error. Failures that are
        (gloo's "Connection closed by peer", NCCL's "remote process exited") are collateral
        of it; if every failure is, the earliest is the cause, unless a lost node or a stop
        came first: then no rank is."""
        failures = [r for r in self.ranks if r.status in (RankStatus.FAILED, RankStatus.KILLED) and not r.stopped]
        if failures:
            for rank in self.ranks:
                if self._failed_while_stopped(rank):
                    rank.stopped = False
                    failures.append(rank)
        own = [r for r in failures if not r.peer_error]
        root = min(own or failures, key=lambda r: r.ended_at or 0.0, default=None)
        if root is not None and not own and self._cause_before(root):
            root = None
        self.first_failure = root
        for rank in self.ranks:  # also a rank we stopped while it died of its lost peer
            rank.collateral = rank.peer_error and rank is not root and rank.status in (
                RankStatus.FAILED, RankStatus.KILLED)

    @staticmethod
    def _failed_while_stopped(rank: RankState) -> bool:
        """A rank stopped after a failure that exited with an error of its own (not the
        stop's: no signal, no KeyboardInterrupt or SignalException; not a lost peer's): it
        was dying of it when the stop came, so it failed on its own, later than the cause."""
        return (rank.stopped and rank.status is RankStatus.FAILED and rank.error_line is not None
                and not rank.peer_error and not is_signalled_error(rank.error_line))

    def recheck_errors(self) -> None:
        """Each ended rank's error line again from its tail, then the root cause: for a
        model whose ranks' output came after their exits (a run rebuilt from its files)."""
        for rank in self.ranks:
            rank.recheck_error()
        self._find_root_cause()

    def _cause_before(self, failure: RankState) -> bool:
        """Whether something other than a rank ended the job's peers before this failure:
        a node was lost, or the job was being stopped."""
        if any(n.lost for n in self.nodes):
            return True
        return self.stop_started_at is not None and self.stop_started_at <= (failure.ended_at or 0.0)

    def node_lost(self, node_rank: int, reason: str) -> None:
        node = self.nodes[node_rank]
        if node.done:
            return
        node.lost, node.done, node.error = True, True, reason
        for rank_no in node.ranks:
            rank = self.ranks[rank_no]
            if not rank.status.finished:
                self._finish_output(rank)
                rank.status, rank.ended_at = RankStatus.LOST, self.clock()
        self._find_root_cause()

    def interrupted(self, reason: str) -> None:
        """A node's launcher was ended from outside the job (scancel, a time limit): the job
        fails with that reason. Whoever ends a step signals every process in it at once, so
        a rank that died of SIGTERM or SIGKILL may have died before its launcher began
        stopping: it was stopped, not a failure."""
        self.error = self.error or reason
        for rank in self.ranks:
            if rank.status is RankStatus.KILLED and rank.signal in (signal.SIGTERM, signal.SIGKILL):
                rank.stopped = True
        self._find_root_cause()

    # -- decisions ---------------------------------------------------------------------

    def silent_for(self, rank: RankState, now: float) -> float | None:
        """Seconds a running rank has written nothing (since it started); None if it is
        not running."""
        if rank.status is not RankStatus.RUNNING or rank.last_heard is None:
            return None
        return max(0.0, now - rank.last_heard)

    def is_stalled(self, rank: RankState, now: float) -> bool:
        """A running rank silent for --stall_after seconds, while the job runs: "stalled?"."""
        if self.state is not JobState.RUNNING or not self.stall_after:
            return False
        silent = self.silent_for(rank, now)
        return silent is not None and silent >= self.stall_after

    def stalled(self, now: float) -> list[RankState]:
        return [r for r in self.current_ranks if self.is_stalled(r, now)]

    def collective_hang(self, now: float) -> bool:
        """Every running rank (two or more) is stalled: they wait on each other, typically
        in a collective one of them never reached."""
        running = [r for r in self.current_ranks if r.status is RankStatus.RUNNING]
        return len(running) > 1 and all(self.is_stalled(r, now) for r in running)

    def update_stalls(self, now: float) -> list[RankState]:
        """The ranks stalled now that were not at the last call (each flagged once per
        silence: a rank that writes again can be flagged again later)."""
        stalled = self.stalled(now)
        new = [r for r in stalled if id(r) not in self._flagged]
        self._flagged = {id(r) for r in stalled}
        return new

    @property
    def must_stop(self) -> bool:
        """A rank failed or a node was lost and the job is not stopping yet."""
        if self.stop_started_at is not None or self.state.finished:
            return False
        return self.first_failure is not None or any(n.lost or n.stopped_job for n in self.nodes)

    def node_stop_reason(self) -> str | None:
        """Why a node stopped the job on its own, if one did: "node H stopped the job: ..."."""
        node = next((n for n in self.nodes if n.stopped_job), None)
        return None if node is None else f"node {node.host} stopped the job: {node.stopped_job}"

    def begin_stop(self, reason: str, grace: float, by_user: bool = False) -> bool:
        """Record a stop; False if one is already under way."""
        if self.stop_started_at is not None or self.state.finished:
            return False
        self.stop_reason, self.grace = reason, grace
        self.stop_started_at = self.clock()
        self.aborted_by_user = by_user
        self.state = JobState.STOPPING
        return True

    def finish(self) -> None:
        self.ended_at = self.clock()
        if self.first_failure is not None or self.error or any(n.lost or n.stopped_job for n in self.nodes):
            self.state = JobState.FAILED
        elif self.aborted_by_user or any(r.stopped for r in self.ranks):
            self.state = JobState.ABORTED
        elif all(r.status is RankStatus.EXITED for r in self.ranks):
            self.state = JobState.SUCCEEDED
        else:
            self.state = JobState.FAILED

    @property
    def exit_code(self) -> int:
        if self.first_failure is not None:
            return self.first_failure.exit_status or 1
        if self.state is JobState.SUCCEEDED:
            return 0
        if self.aborted_by_user or self.state is JobState.ABORTED:
            return 128 + self.abort_signal
        if any(n.lost for n in self.nodes):
            return 255
        return 1

    def stop_deadline(self) -> float | None:
        if self.stop_started_at is None or self.grace is None:
            return None
        return self.stop_started_at + self.grace

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in RankStatus}
        for rank in self.ranks:
            counts[rank.status.value] += 1
        return counts

    def summary(self) -> dict:
        now = self.ended_at or self.clock()
        return {
            "run_id": self.run_id,
            "state": self.state.value,
            "exit_code": self.exit_code,
            "world_size": self.world.world_size,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "stop_reason": self.stop_reason,
            "error": self.error,
            "first_failure": self.first_failure.rank if self.first_failure else None,
            "ranks": [
                {
                    "rank": r.rank, "job_rank": self.world.global_rank(r.rank),  # rank-<rank>.log
                    "host": r.info.host, "node_rank": r.info.node_rank,
                    "local_rank": r.info.local_rank, "gpu": r.info.gpu, "pid": r.pid,
                    "status": r.status.value, "code": r.code, "signal": r.signal,
                    "stopped": r.stopped, "duration": round(r.runtime(now), 3),
                    "lines": r.line_count, **({"cpus": r.cpus} if r.cpus else {}),
                    **({"error": r.error_line} if r.error_line else {}),
                    **({"collateral": True} if r.collateral else {}),
                }
                for r in self.ranks
            ],
        }
