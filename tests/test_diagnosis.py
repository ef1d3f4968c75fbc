"""diagnosis.py: the words the headless console and the UI share (pure, no Textual)."""

from __future__ import annotations

import pytest

from flextui.diagnosis import ERROR_RE, is_error_line, outcome_text, status_text, verdict, verdict_line
from flextui.model import JobModel, JobState
from flextui.world import World

T0 = 1000.0


def model(slots: int = 2) -> JobModel:
    m = JobModel(World.from_slots({"n1": list(range(slots)), "n2": list(range(slots))}), "run")
    for r in m.ranks:
        m.apply(r.info.node_rank, {"ev": "started", "rank": r.rank, "pid": 100 + r.rank, "t": T0})
    return m


def exit_rank(m: JobModel, rank: int, code=None, signal=None, t=T0 + 5, stopped=False) -> None:
    m.apply(m.ranks[rank].info.node_rank,
            {"ev": "exited", "rank": rank, "code": code, "signal": signal, "t": t, "stopped": stopped})


@pytest.mark.parametrize("code, signal, stopped, status, outcome", [
    (0, None, False, "exited 0", "exit 0"),
    (3, None, False, "failed 3", "exit 3"),
    (3, None, True, "stopped 3", "exit 3 (stopped)"),
    (None, 9, False, "killed SIGKILL", "signal 9 (SIGKILL)"),
    (None, 15, True, "stopped SIGTERM", "signal 15 (SIGTERM) (stopped)"),
])
def test_a_rank_in_words(code, signal, stopped, status, outcome):
    m = model()
    exit_rank(m, 1, code, signal, stopped=stopped)
    assert (status_text(m.ranks[1]), outcome_text(m.ranks[1])) == (status, outcome)
    assert (status_text(m.ranks[0]), outcome_text(m.ranks[0])) == ("running", "running")


def test_the_verdict_names_the_first_failure_before_any_error_or_stop_reason():
    m = model()
    exit_rank(m, 3, code=2, t=T0 + 4)
    m.begin_stop("rank 3 failed", 10.0)
    m.stop_started_at = T0 + 4.5
    assert verdict_line(m, T0 + 6.0) == ("job stopping — SIGKILL in 8s; "
                                         "first failure: rank 3 on n2, exit 2")
    for rank in (0, 1, 2):
        exit_rank(m, rank, signal=15, t=T0 + 7, stopped=True)
    m.error = "node n1 lost: connection closed"
    m.finish()
    v = verdict(m, T0 + 8, error="a launch error")
    assert (v.state, v.key, v.exit_code, v.kind, v.first_failure) == ("failed", "failed", 2, "first_failure",
                                                                       m.ranks[3])
    assert verdict_line(m, T0 + 8) == "job failed (exit code 2); first failure: rank 3 on n2, exit 2"


def test_the_verdict_without_a_failure_gives_the_error_then_the_stop_reason():
    m = model()
    assert verdict_line(m, T0) == "job running"
    m.begin_stop("aborted by user (SIGINT)", 10.0, by_user=True)
    assert verdict(m, T0).kind == "stop"
    for rank in range(4):
        exit_rank(m, rank, signal=15, stopped=True)
    m.finish()
    assert m.state is JobState.ABORTED
    assert verdict_line(m, T0) == "job aborted (exit code 130); aborted by user (SIGINT)"
    assert verdict_line(m, T0, error="n2: unreachable") == "job aborted (exit code 130); n2: unreachable"


@pytest.mark.parametrize("line, hit", [
    ("Traceback (most recent call last):", True),
    ("RuntimeError: CUDA error: out of memory", True),
    ("torch.distributed.DistBackendError: NCCL", True),
    ("[E] FATAL: rank 3", True),
    ("step 100 loss 0.31 errors_seen=0", False),
    ("ErrorHandler installed", False),
])
def test_error_lines(line, hit):
    assert is_error_line(line) is hit
    assert bool(ERROR_RE.search(line)) is hit
