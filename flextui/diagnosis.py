"""Diagnosis: what happened to the job and its ranks, in words. Pure: no Textual, no I/O.

The headless console and the Textual UI say the same things with these functions, so a
verdict reads the same in a CI log, on the job bar and in the summary screen:

- status_text / outcome_text: one rank, short (a table cell) or as an outcome;
- job_state_text and verdict / verdict_line: the job's state (with the SIGKILL
  countdown while it stops), exit code, and why: the first failure (by time across
  nodes, decided by the model), the error that ended it, or why it was stopped;
- ERROR_RE / TRACEBACK: lines worth jumping to (tracebacks, errors; from rootcause.py,
  which also finds a failed rank's last error line and tells a lost peer's error);
- root_cause_lines: the cascade in words (root cause, collateral ranks);
- what ranks use and whether they are stuck: cpu_text, mem_text, gpu_text, silent_text,
  stall_text / stall_warning (the decisions are the model's), gpu_telemetry_note;
- RateMeter: lines per second per rank, from the model's counters;
- the elastic mode's words: attempts, the bar text, the end-of-run lines.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flextui.model import JobModel, JobState, RankState, RankStatus, Usage
from flextui.rootcause import ERROR_RE, TRACEBACK, is_error_line  # noqa: F401 - the console's names for them
from flextui.stacks import rank_spans

if TYPE_CHECKING:
    from flextui.modes.elastic import Attempt, ElasticJobModel

#: A running rank's silence is shown (SILENT) once it is this long: a rank that writes a
#: line every second or two is not news.
SILENT_SHOWN = 5.0


# -- one rank ------------------------------------------------------------------------------


def signal_name(number: int | None) -> str:
    try:
        return signal.Signals(number).name
    except (ValueError, TypeError):
        return f"signal {number}"


def status_text(rank: RankState) -> str:
    """pending, running, exited 0, failed 3, killed SIGKILL, lost — "stopped" when we did
    it, "collateral" when a lost peer's error ended it."""
    status = rank.status
    if status is RankStatus.EXITED:
        return f"exited {rank.code or 0}"
    word = "collateral" if rank.collateral else "stopped" if rank.stopped else None
    if status is RankStatus.FAILED:
        return f"{word or 'failed'} {rank.code}"
    if status is RankStatus.KILLED:
        return f"{word or 'killed'} {signal_name(rank.signal)}"
    return status.value


def outcome_text(rank: RankState) -> str:
    """How a rank ended, as the summary and the verdict say it: `exit 3`,
    `signal 9 (SIGKILL) (stopped)`, `exit 1 (collateral)`, `lost`, `running`."""
    if rank.status is RankStatus.KILLED:
        try:
            name = signal.Signals(rank.signal).name
        except (ValueError, TypeError):
            name = "?"
        text = f"signal {rank.signal} ({name})"
    elif rank.status in (RankStatus.EXITED, RankStatus.FAILED):
        text = f"exit {rank.code}"
    else:
        text = rank.status.value
    if rank.collateral:
        return text + " (collateral)"
    return text + (" (stopped)" if rank.stopped else "")


def error_text(rank: RankState) -> str | None:
    """What a rank that failed died of (its last error line), also when it is collateral;
    none for a rank flextui stopped (its error is the stop's)."""
    if rank.error_line and (rank.collateral or not rank.stopped):
        return rank.error_line
    return None


def rank_status_text(model: JobModel, rank: RankState, now: float) -> str:
    """The table's STATUS: status_text, or "stalled?" for a running rank silent for
    --stall_after seconds."""
    if model.is_stalled(rank, now):
        return "stalled?"
    text = status_text(rank)
    # "collateral SIGTERM" does not fit the column: the panel and the summary say which signal
    return "collateral" if rank.collateral and len(text) > 15 else text


# -- the job -------------------------------------------------------------------------------


def job_state_text(model: JobModel, now: float) -> tuple[str, str]:
    """(words, theme colour key) for the job's state, with the SIGKILL countdown."""
    state = model.state
    if state is JobState.STOPPING:
        deadline = model.stop_deadline()
        if deadline is None or model.grace == 0:
            return "stopping — killing now", "killed"
        left = deadline - now
        if left > 0:
            return f"stopping — SIGKILL in {left:.0f}s", "killed"
        return "stopping — SIGKILL sent", "killed"
    key = {
        JobState.LAUNCHING: "pending", JobState.RUNNING: "running",
        JobState.SUCCEEDED: "exited", JobState.FAILED: "failed", JobState.ABORTED: "killed",
    }[state]
    return state.value, key


@dataclass(frozen=True)
class Verdict:
    """The job in one sentence, in parts a display can style."""

    state: str  # "running", "stopping — SIGKILL in 8s", "failed", ...
    key: str  # the theme colour of the state: pending, running, exited, failed, killed
    exit_code: int | None  # once finished
    kind: str | None  # what `reason` is: "first_failure", "error", "stop" (None: no reason)
    reason: str  # "first failure: rank 5 on node-b, exit 1", the error, or why it stopped
    first_failure: RankState | None
    error_line: str | None = None  # what the first failure died of: "RuntimeError: boom"


def verdict(model: JobModel, now: float, error: str | None = None) -> Verdict:
    """The job's state and why: its first failure, else the error that ended it (`error`
    wins over the model's: say, a launch error the UI caught), else why it was stopped."""
    state, key = job_state_text(model, now)
    exit_code = model.exit_code if model.state.finished else None
    first = model.first_failure
    if first is not None:
        kind, reason = "first_failure", failure_text(model, first, with_error=False)
    elif error or model.error:
        kind, reason = "error", error or model.error
    elif model.stop_reason:
        kind, reason = "stop", model.stop_reason
    else:
        kind, reason = None, ""
    return Verdict(state, key, exit_code, kind, reason, first, error_text(first) if first else None)


def failure_text(model: JobModel, first: RankState, with_error: bool = True) -> str:
    """`first failure: rank 5 on n2, exit 1: RuntimeError: boom` — "root cause" when other
    ranks failed of it (collateral); with_error=False leaves out what it died of."""
    collateral = any(r.collateral for r in model.current_ranks)
    text = (f"{'root cause' if collateral else 'first failure'}: rank {model.world.global_rank(first.rank)} "
            f"on {first.info.host}, {outcome_text(first).removesuffix(' (collateral)')}")
    error = error_text(first) if with_error else None
    return text + (f": {error}" if error else "")


def collateral_text(model: JobModel) -> str | None:
    """`collateral: ranks 0-2,4-7 failed after rank 3 with a peer-connection error`."""
    number = model.world.global_rank  # the job's RANK (--no_ssh runs a share of it)
    collateral = [number(r.rank) for r in model.current_ranks if r.collateral]
    if not collateral:
        return None
    first = model.first_failure
    lost = [n.host for n in model.nodes if n.lost]
    if first is not None:
        cause = f"rank {number(first.rank)}"
    elif lost:
        cause = f"node {', '.join(lost)} was lost"
    else:
        cause = "the job was stopped"
    return (f"collateral: {'rank' if len(collateral) == 1 else 'ranks'} {rank_spans(collateral)} "
            f"failed after {cause} with a peer-connection error")


def root_cause_lines(model: JobModel) -> list[str]:
    """The cascade after a failure, for the summary: which rank is the root cause and
    why, which ranks failed only because of it."""
    first = model.first_failure
    lines = [failure_text(model, first)] if first is not None else []
    collateral = collateral_text(model)
    return lines + ([collateral] if collateral else [])


def verdict_line(model: JobModel, now: float, error: str | None = None) -> str:
    """`job failed (exit code 3); first failure: rank 2 on node1, exit 3: ValueError: bad`."""
    v = verdict(model, now, error)
    text = f"job {v.state}" + (f" (exit code {v.exit_code})" if v.exit_code is not None else "")
    text += f"; {v.reason}" if v.reason else ""
    return text + (f": {v.error_line}" if v.error_line else "")


# -- activity, resources, stalls -----------------------------------------------------------


def short_duration(seconds: float) -> str:
    """`45s`, `5m`, `5m30s`, `2h05m`: a silence, a stall threshold."""
    whole = int(max(0.0, seconds))
    if whole < 60:
        return f"{whole}s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def silent_text(model: JobModel, rank: RankState, now: float) -> str:
    """The table's SILENT: how long a running rank has written nothing, once that is
    SILENT_SHOWN seconds or more (or it is flagged stalled: a short --stall_after); else
    empty."""
    silent = model.silent_for(rank, now)
    if silent is None or silent < min(SILENT_SHOWN, model.stall_after or SILENT_SHOWN):
        return ""
    return short_duration(silent)


def stall_text(model: JobModel, now: float) -> str | None:
    """For the job bar: `⚠ 3 silent > 5m`, or when every running rank is: `⚠ all 8 ranks
    silent > 5m: a collective hang?`; None when nothing is stalled."""
    stalled = model.stalled(now)
    if not stalled:
        return None
    limit = short_duration(model.stall_after)
    if model.collective_hang(now):
        return f"⚠ all {len(stalled)} ranks silent > {limit}: a collective hang? (d: stacks)"
    return f"⚠ {len(stalled)} silent > {limit} (d: stacks)"


def stall_warning(model: JobModel, rank: RankState, now: float) -> str:
    """One line when a rank is first flagged: `rank 5 on n2: silent for 5m (--stall_after
    300): stalled? (it keeps running)`."""
    silent = model.silent_for(rank, now) or 0.0
    return (f"rank {model.world.global_rank(rank.rank)} on {rank.info.host}: silent for {short_duration(silent)} "
            f"(--stall_after {model.stall_after:g}): stalled? (it keeps running)")


def cpu_text(usage: Usage | None) -> str:
    """`97%` of one core (over the rank's process tree); `-` before the first sample."""
    if usage is None or usage.cpu is None:
        return "-"
    return f"{usage.cpu:.0f}%"


def mem_text(size: int | None) -> str:
    """Bytes in 4 characters or so: `812M`, `1.2G`, `14G`."""
    if size is None:
        return "-"
    for unit, scale in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale:
            value = size / scale
            return f"{value:.1f}{unit}" if value < 10 else f"{value:.0f}{unit}"
    return f"{size}B"


def gpu_text(rank: RankState) -> str:
    """The GPU column: the binding, and with telemetry its use: `3 87% 12G/80G` (busy %,
    what the rank's processes hold / the device's total)."""
    text = str(rank.info.gpu)
    gpu = rank.usage.gpu if rank.usage is not None else None
    if gpu is None or rank.status is not RankStatus.RUNNING:
        return text
    held = gpu.proc_mem if gpu.proc_mem is not None else gpu.mem_used
    util = f" {gpu.util:.0f}%" if gpu.util is not None else ""
    memory = f" {mem_text(held)}/{mem_text(gpu.mem_total)}" if held is not None and gpu.mem_total else ""
    return text + util + memory


def gpu_telemetry_note(model: JobModel) -> str | None:
    """`no GPU telemetry on n1, n2 (nvidia-ml-py is not installed for /usr/bin/python3)`:
    once the nodes without it have said so; None when every node has it."""
    without = [n for n in model.nodes if n.sampled and n.no_gpu_telemetry]
    if not without:
        return None
    reasons = list(dict.fromkeys(n.no_gpu_telemetry for n in without))
    why = reasons[0] if len(reasons) == 1 else "; ".join(f"{n.host}: {n.no_gpu_telemetry}" for n in without)
    return f"no GPU telemetry on {', '.join(n.host for n in without)} ({why})"


# -- output ------------------------------------------------------------------------------


class RateMeter:
    """Lines per second per rank from the model's line counters, sampled about once a second."""

    def __init__(self, model: JobModel, period: float = 1.0) -> None:
        self.model = model
        self.period = period
        self.rates = [0.0] * len(model.ranks)
        self.total = 0.0
        self._last_t: float | None = None
        self._last = [0] * len(model.ranks)

    def sample(self, now: float) -> bool:
        if self._last_t is None:
            self._last_t = now
            self._last = [r.line_count for r in self.model.ranks]
            return False
        dt = now - self._last_t
        if dt < self.period:
            return False
        counts = [r.line_count for r in self.model.ranks]
        self.rates = [(c - p) / dt for c, p in zip(counts, self._last)]
        self.total = sum(self.rates)
        self._last, self._last_t = counts, now
        return True


# -- elastic jobs ----------------------------------------------------------------------------


def attempt_text(model: ElasticJobModel, attempt: Attempt) -> str:
    """One line: `attempt 1 (restart 1): world size 4: ranks 0-1 ftn1, 2-3 ftn3`."""
    parts = []
    for group in sorted(attempt.groups.values(), key=lambda g: min(g.ranks, default=0)):
        ranks = sorted(group.ranks)
        span = f"{ranks[0]}-{ranks[-1]}" if len(ranks) > 1 else (str(ranks[0]) if ranks else "-")
        parts.append(f"{span} {model.nodes[group.node_rank].host}")
    return (f"attempt {attempt.number} (restart {attempt.restart_count}): world size "
            f"{attempt.world_size}: ranks {', '.join(parts)}")


def elastic_bar_text(model: ElasticJobModel) -> str:
    """For a status bar: `attempt 1 · restart 1 · world 4 · 2/3 nodes · lost ftn3`."""
    attempt = model.current_attempt
    if attempt is None:
        text = f"elastic · waiting for rendezvous ({model.elastic.min_nodes}-{model.elastic.max_nodes} nodes)"
    else:
        text = (f"attempt {attempt.number} · restart {attempt.restart_count} · world {attempt.world_size} · "
                f"{len(attempt.groups)}/{len(model.nodes)} nodes")
    if model.lost_nodes:
        text += " · lost " + ", ".join(model.nodes[n].host for n in model.lost_nodes)
    return text


def elastic_summary_lines(model: ElasticJobModel) -> list[str]:
    """The end of an elastic run: every attempt, and the nodes lost on the way."""
    lines = [attempt_text(model, a) for a in model.attempts]
    if model.lost_nodes:
        lines.append("lost: " + ", ".join(f"{model.nodes[n].host} ({model.nodes[n].error})"
                                          for n in model.lost_nodes))
    return lines


# -- many ranks at once (the 512-rank console: table order, grouped summary) ---------------


def attention(rank: RankState, model: JobModel) -> int:
    """How much a rank needs a look, lowest first: the first failure, failures, killed,
    lost, running, pending, stopped by flextui, exited."""
    if model.first_failure is rank:
        return 0
    status = rank.status
    if status is RankStatus.FAILED and not rank.stopped:
        return 1
    if status is RankStatus.KILLED and not rank.stopped:
        return 2
    if status is RankStatus.LOST:
        return 3
    if status is RankStatus.RUNNING:
        return 4
    if status is RankStatus.PENDING:
        return 5
    if status is not RankStatus.EXITED:  # stopped by flextui or the user
        return 6
    return 7


def outcome_words(rank: RankState, model: JobModel, stopped_by_user=frozenset()) -> str:
    """A rank's outcome in words that are the same for the same outcome, so ranks group:
    `failed: exit 3`, `killed by SIGSEGV`, `stopped by flextui (SIGTERM)`, `exited 0`.
    `stopped_by_user`: ranks the user stopped one by one (else flextui stopped them,
    unless the user aborted the job)."""
    status = rank.status
    if status is RankStatus.EXITED:
        return "exited 0" if not rank.stopped else "exited 0 when stopped"
    if status is RankStatus.LOST:
        return "lost (its node's connection dropped)"
    if status is RankStatus.PENDING:
        return "never started"
    if status is RankStatus.RUNNING:
        return "running"
    how = f"exit {rank.code}" if status is RankStatus.FAILED else signal_name(rank.signal)
    if rank.collateral:  # its own error line differs by peer address: one group for all
        what = how if status is RankStatus.FAILED else f"killed by {how}"
        return f"collateral: {what} after a lost peer's error"
    if rank.stopped:
        who = "the user" if rank.rank in stopped_by_user or model.aborted_by_user else "flextui"
        return f"stopped by {who} ({how})"
    words = f"failed: {how}" if status is RankStatus.FAILED else f"killed by {how}"
    return f"{words}: {rank.error_line}" if rank.error_line else words


@dataclass
class OutcomeGroup:
    """Ranks that ended the same way (the first failure is a group of its own)."""

    outcome: str
    first_failure: bool
    rank: RankState  # the first of them (its status gives the colour)
    ranks: list[int]
    hosts: list[str]
    shortest: float
    longest: float
    lines: int


def outcome_groups(model: JobModel, ranks: list[RankState], now: float,
                   stopped_by_user=frozenset()) -> list[OutcomeGroup]:
    """`ranks` grouped by outcome, what needs a look first: "1-63: stopped by flextui (SIGTERM)"."""
    end = model.ended_at or now
    groups: dict[tuple[bool, str], OutcomeGroup] = {}
    for r in sorted(ranks, key=lambda r: (attention(r, model), r.rank)):
        first = r is model.first_failure
        words = outcome_words(r, model, stopped_by_user)
        runtime = r.runtime(end)
        group = groups.get((first, words))
        if group is None:
            groups[(first, words)] = OutcomeGroup(words, first, r, [r.rank], [r.info.host],
                                                  runtime, runtime, r.line_count)
            continue
        group.ranks.append(r.rank)
        if r.info.host not in group.hosts:
            group.hosts.append(r.info.host)
        group.shortest, group.longest = min(group.shortest, runtime), max(group.longest, runtime)
        group.lines += r.line_count
    return list(groups.values())
