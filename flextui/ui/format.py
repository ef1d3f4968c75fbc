"""Plain-text pieces of the console (Textual-free): durations, rates, status colours.

What the words say about a rank or the job (status, outcome, verdict) is in
flextui/diagnosis.py, shared with the headless console.
"""

from __future__ import annotations

from flextui.model import RankState, RankStatus


def status_key(rank: RankState) -> str:
    """The theme colour a rank's status is drawn in: status-<key>; "stopped" when flextui
    (or the user) ended it, so the ranks a failure took down do not look like failures."""
    if rank.stopped and rank.status in (RankStatus.FAILED, RankStatus.KILLED):
        return "stopped"
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
