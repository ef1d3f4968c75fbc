"""Diagnosis: what happened to the job and its ranks, in words. Pure: no Textual, no I/O.

The headless console and the Textual UI say the same things with these functions, so a
verdict reads the same in a CI log, on the job bar and in the summary screen:

- status_text / outcome_text: one rank, short (a table cell) or as an outcome;
- job_state_text and verdict / verdict_line: the job's state (with the SIGKILL
  countdown while it stops), exit code, and why: the first failure (by time across
  nodes, decided by the model), the error that ended it, or why it was stopped;
- ERROR_RE / TRACEBACK: lines worth jumping to (tracebacks, errors);
- RateMeter: lines per second per rank, from the model's counters;
- the elastic mode's words: attempts, the bar text, the end-of-run lines.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flextui.model import JobModel, JobState, RankState, RankStatus

if TYPE_CHECKING:
    from flextui.modes.elastic import Attempt, ElasticJobModel

#: A line worth jumping to: a traceback header or an error/exception.
ERROR_RE = re.compile(
    r"Traceback \(most recent call last\)|\b[A-Za-z_]*(?:Error|Exception)\b(?!\w)"
    r"|\bERROR\b|\bFATAL\b|\bCRITICAL\b|\berror:|Segmentation fault|core dumped"
)
TRACEBACK = "Traceback (most recent call last)"


def is_error_line(text: str) -> bool:
    return ERROR_RE.search(text) is not None


# -- one rank ------------------------------------------------------------------------------


def signal_name(number: int | None) -> str:
    try:
        return signal.Signals(number).name
    except (ValueError, TypeError):
        return f"signal {number}"


def status_text(rank: RankState) -> str:
    """pending, running, exited 0, failed 3, killed SIGKILL, lost — "stopped" when we did it."""
    status = rank.status
    if status is RankStatus.EXITED:
        return f"exited {rank.code or 0}"
    if status is RankStatus.FAILED:
        return f"{'stopped' if rank.stopped else 'failed'} {rank.code}"
    if status is RankStatus.KILLED:
        return f"{'stopped' if rank.stopped else 'killed'} {signal_name(rank.signal)}"
    return status.value


def outcome_text(rank: RankState) -> str:
    """How a rank ended, as the summary and the verdict say it: `exit 3`,
    `signal 9 (SIGKILL) (stopped)`, `lost`, `running`."""
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
    return text + (" (stopped)" if rank.stopped else "")


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


def verdict(model: JobModel, now: float, error: str | None = None) -> Verdict:
    """The job's state and why: its first failure, else the error that ended it (`error`
    wins over the model's: say, a launch error the UI caught), else why it was stopped."""
    state, key = job_state_text(model, now)
    exit_code = model.exit_code if model.state.finished else None
    first = model.first_failure
    if first is not None:
        kind, reason = "first_failure", (f"first failure: rank {first.rank} on {first.info.host}, "
                                         f"{outcome_text(first)}")
    elif error or model.error:
        kind, reason = "error", error or model.error
    elif model.stop_reason:
        kind, reason = "stop", model.stop_reason
    else:
        kind, reason = None, ""
    return Verdict(state, key, exit_code, kind, reason, first)


def verdict_line(model: JobModel, now: float, error: str | None = None) -> str:
    """`job failed (exit code 3); first failure: rank 2 on node1, exit 3`."""
    v = verdict(model, now, error)
    text = f"job {v.state}" + (f" (exit code {v.exit_code})" if v.exit_code is not None else "")
    return text + (f"; {v.reason}" if v.reason else "")


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
    if rank.stopped:
        who = "the user" if rank.rank in stopped_by_user or model.aborted_by_user else "flextui"
        return f"stopped by {who} ({how})"
    return f"failed: {how}" if status is RankStatus.FAILED else f"killed by {how}"


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
