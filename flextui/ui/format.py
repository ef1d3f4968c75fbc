"""Plain-text pieces of the console (Textual-free): status words, durations, rates."""

from __future__ import annotations

import signal

from flextui.model import JobModel, JobState, RankState, RankStatus


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


def status_key(rank: RankState) -> str:
    """The theme colour a rank's status is drawn in: status-<key>."""
    return rank.status.value


def fmt_duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f}s"
    if seconds < 60:
        return f"{int(seconds)}s"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_rate(rate: float) -> str:
    if rate < 0.05:
        return "-"
    if rate < 10:
        return f"{rate:.1f}"
    if rate < 10000:
        return f"{rate:.0f}"
    return f"{rate / 1000:.0f}k"


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
