"""The job model: rank output, outcomes, and every decision the job takes from events."""

from __future__ import annotations

import pytest

from flextui.model import MAX_LIVE_CHARS, JobModel, JobState, RankStatus
from flextui.world import World


def rank_state():
    return JobModel(World.from_slots({"n": [0]}), "run").ranks[0]


def test_carriage_returns_make_one_updating_line():
    rank = rank_state()
    assert rank.add_output("start\n\r 10%") == ["start"]
    assert rank.live == " 10%"
    assert rank.add_output("\r 50%\r100%\nnext\n") == ["100%", "next"]
    assert list(rank.tail) == ["start", "100%", "next"] and rank.line_count == 3


def test_a_giant_line_in_pieces_keeps_a_bounded_display_copy():
    rank = rank_state()
    piece = "x" * (1 << 20)
    for _ in range(200):  # a 200 MB line, as a flooding rank sends it
        rank.add_output(piece)
        assert len(rank.live) <= MAX_LIVE_CHARS  # so each piece costs its own size, not the line's
    assert rank.add_output("\n") == [piece * 200]  # the whole line, joined once
    assert rank.byte_count == 200 * len(piece) + 1


def test_exit_outcomes():
    rank = rank_state()
    rank.record_exit({"code": None, "signal": 9, "t": 1.0, "stopped": True})
    assert (rank.status, rank.exit_status, rank.stopped) == (RankStatus.KILLED, 137, True)
    rank.record_exit({"code": 3, "signal": None, "t": 1.0})
    assert (rank.status, rank.exit_status) == (RankStatus.FAILED, 3)


def _running_job() -> JobModel:
    model = JobModel(World.from_slots({"a": [0], "b": [0]}), "run")
    for node, rank in ((0, 0), (1, 1)):
        model.apply(node, {"ev": "started", "rank": rank, "pid": 10 + rank, "t": 1.0})
    return model


def test_a_node_stopping_its_ranks_on_its_own_fails_the_job_with_its_reason():
    model = _running_job()
    model.apply(1, {"ev": "stopping", "reason": "no word from the console for 30s", "grace": 10, "t": 2.0})
    assert model.must_stop
    assert model.node_stop_reason() == "node b stopped the job: no word from the console for 30s"
    model.begin_stop(model.node_stop_reason(), 10)
    for node, rank in ((0, 0), (1, 1)):
        model.apply(node, {"ev": "exited", "rank": rank, "code": None, "signal": 15, "t": 3.0, "stopped": True})
    model.finish()
    assert (model.state.value, model.exit_code) == ("failed", 1)


def test_a_stop_the_console_asked_for_or_of_leftover_children_is_not_the_nodes_own():
    model = _running_job()
    model.begin_stop("aborted by user (SIGINT)", 10, by_user=True)
    model.apply(0, {"ev": "stopping", "reason": "stopped by console", "grace": 10, "t": 2.0})
    assert model.nodes[0].stopped_job is None
    done = _running_job()
    done.apply(0, {"ev": "exited", "rank": 0, "code": 0, "signal": None, "t": 2.0, "stopped": False})
    done.apply(0, {"ev": "stopping", "reason": "workers exited, stopping their leftover children", "t": 2.1})
    assert done.nodes[0].stopped_job is None and not done.must_stop


# -- the model's decisions, one table row each -------------------------------------------------
#
# A scenario is what a job's launchers (and the console) did, in arrival order; the row says
# what the model then decides: the first failure, whether the job must stop (before finish),
# its final state and exit code. 2 nodes x 2 ranks: ranks 0-1 on node 0 (n1), 2-3 on node 1 (n2).
# Times are the clock's: the model reads no other.


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def started() -> list[tuple]:
    return [("started", r) for r in range(4)]


def exited(rank: int, code: int | None = 0, signal: int | None = None, t: float = 1010.0,
           stopped: bool = False) -> tuple:
    return ("exited", rank, code, signal, t, stopped)


def all_exit_0() -> list[tuple]:
    return [exited(r) for r in range(4)] + [("done", 0, 0), ("done", 1, 0)]


def play(steps: list[tuple], clock: FakeClock | None = None, stall_after: float | None = None) -> JobModel:
    clock = clock or FakeClock()
    model = JobModel(World.from_slots({"n1": [0, 1], "n2": [0, 1]}), "run", clock=clock)
    if stall_after is not None:
        model.stall_after = stall_after
    for step in steps:
        apply_step(model, clock, step)
    return model


def apply_step(model: JobModel, clock: FakeClock, step: tuple) -> None:
    kind, *args = step
    if kind == "started":
        (rank,) = args
        model.apply(rank // 2, {"ev": "started", "rank": rank, "pid": 100 + rank, "t": clock()})
    elif kind == "out":
        rank, text = args
        model.apply(rank // 2, {"ev": "out", "rank": rank, "data": text})
    elif kind == "exited":
        rank, code, sig, t, stopped = args
        model.apply(rank // 2, {"ev": "exited", "rank": rank, "code": code, "signal": sig, "t": t,
                                "stopped": stopped})
    elif kind == "done":
        node, code = args
        model.apply(node, {"ev": "done", "code": code})
    elif kind == "lost":
        (node,) = args
        model.node_lost(node, f"node n{node + 1} lost: connection closed")
    elif kind == "stop":
        reason, by_user = args
        model.begin_stop(reason, 10.0, by_user)
    elif kind == "abort":
        (signum,) = args
        model.abort_signal = signum
        model.begin_stop("aborted by user", 10.0, by_user=True)
    elif kind == "error":
        (message,) = args
        model.error = message
    elif kind == "node_stops":  # its launcher stopped its ranks on its own
        node, reason = args
        model.apply(node, {"ev": "stopping", "reason": reason, "grace": 10.0, "t": clock()})
    elif kind == "interrupted":
        (reason,) = args
        model.interrupted(reason)
    elif kind == "tick":
        (seconds,) = args
        clock.now += seconds
    else:
        raise ValueError(kind)


def traceback(rank: int, exception: str) -> tuple:
    """A rank printing a traceback the way torch does ("[rankN]: " before every line)."""
    return ("out", rank, f"[rank{rank}]: Traceback (most recent call last):\n"
                         f"[rank{rank}]:   File \"train.py\", line 60, in main\n"
                         f"[rank{rank}]:     dist.all_reduce(value)\n"
                         f"[rank{rank}]: {exception}\n")


GLOO = "RuntimeError: [../gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.0.0.2]:4302"
OWN = "RuntimeError: rank hit a simulated fault"


def died_of(rank: int, exception: str, t: float = 1010.0, code: int | None = 1, signal: int | None = None,
            stopped: bool = False) -> list[tuple]:
    return [traceback(rank, exception), exited(rank, code=code, signal=signal, t=t, stopped=stopped)]


DECISIONS = [
    # name, steps, first failure, must stop, final state, exit code
    ("all exit 0", started() + all_exit_0(), None, False, JobState.SUCCEEDED, 0),
    ("one rank fails", started() + [exited(2, code=3)], 2, True, JobState.FAILED, 3),
    ("first failure by time, not by arrival",
     started() + [exited(3, code=4, t=1012.0), exited(0, code=5, t=1011.0)], 0, True, JobState.FAILED, 5),
    ("a later failure on another node does not replace it",
     started() + [exited(1, code=5, t=1011.0), exited(3, code=4, t=1012.0)], 1, True, JobState.FAILED, 5),
    ("killed by a signal is a failure: 128 + N",
     started() + [exited(1, code=None, signal=9)], 1, True, JobState.FAILED, 137),
    ("a rank the job stopped is not a failure",
     started() + [("stop", "quit by user", True), exited(1, code=None, signal=15, stopped=True)],
     None, False, JobState.ABORTED, 130),
    ("stopped with a non-zero code is not a failure either",
     started() + [exited(1, code=143, stopped=True)], None, False, JobState.ABORTED, 130),
    ("the failures after the first are the stop's: exit code stays the first's",
     started() + [exited(2, code=3, t=1010.0), ("stop", "rank 2 failed", False),
                  exited(0, code=None, signal=15, t=1011.0, stopped=True),
                  exited(3, code=1, t=1011.5)], 2, False, JobState.FAILED, 3),
    ("a lost node stops the job; its exit is 255",
     started() + [("lost", 1)], None, True, JobState.FAILED, 255),
    ("a node that said done is never lost",
     started() + all_exit_0() + [("lost", 1)], None, False, JobState.SUCCEEDED, 0),
    ("Ctrl+C: 130", started() + [("abort", 2)], None, False, JobState.ABORTED, 130),
    ("SIGTERM to the console: 143", started() + [("abort", 15)], None, False, JobState.ABORTED, 143),
    ("a node that stops its ranks on its own fails the job with 1",
     started() + [("node_stops", 1, "no word from the console for 30s")], None, True, JobState.FAILED, 1),
    ("an error (could not start) fails the job with 1", [("error", "n2: unreachable")],
     None, False, JobState.FAILED, 1),
    ("ranks that never ended: failed", started() + [exited(0), exited(1)], None, False, JobState.FAILED, 1),
    ("a stop that is under way is not started again",
     started() + [("stop", "rank 1 failed", False), exited(1, code=2)], 1, False, JobState.FAILED, 2),
    ("interrupted from outside: SIGTERM/SIGKILL deaths were stops, a real failure stays",
     started() + [exited(0, code=None, signal=15, t=1011.0), exited(1, code=2, t=1012.0),
                  ("interrupted", "Slurm job 7 was cancelled")], 1, True, JobState.FAILED, 2),
    ("interrupted from outside with nothing failed: the job failed, exit 1",
     started() + [exited(0, code=None, signal=9), ("interrupted", "Slurm job 7 was cancelled")],
     None, False, JobState.FAILED, 1),
    # -- cascades: the root cause, and the ranks that died of it (COLLATERAL below)
    ("a cascade: rank 3 raises, the others die of gloo errors: rank 3 is the root cause",
     started() + died_of(3, OWN, t=1010.0) + died_of(0, GLOO, t=1010.2) + died_of(1, GLOO, t=1010.3)
     + died_of(2, GLOO, t=1010.1), 3, True, JobState.FAILED, 1),
    ("a peer's error is not the root cause, even when it comes first or earlier",
     started() + died_of(0, GLOO, t=1009.0) + died_of(3, OWN, t=1010.0, code=7), 3, True, JobState.FAILED, 7),
    ("only peers' errors: the earliest is the cause",
     started() + died_of(1, GLOO, t=1011.0, code=2) + died_of(0, GLOO, t=1010.0, code=4), 0, True,
     JobState.FAILED, 4),
    ("peers' errors after a lost node: the node is the cause, not a rank",
     started() + [("lost", 1)] + died_of(0, GLOO), None, True, JobState.FAILED, 255),
    ("peers' errors after the user's stop: the stop is the cause",
     started() + [("abort", 2)] + died_of(0, GLOO), None, False, JobState.ABORTED, 130),
    ("a rank the stop killed while it died of its lost peer is collateral",
     started() + died_of(3, OWN) + [("stop", "rank 3 failed", False)]
     + died_of(0, GLOO, t=1010.5, code=None, signal=15, stopped=True)
     + [exited(1, code=None, signal=15, t=1010.6, stopped=True)], 3, False, JobState.FAILED, 1),
    ("a rank dying of an error of its own as the stop came failed on its own: not the cause",
     started() + died_of(3, OWN, code=5) + [("stop", "rank 3 failed", False)]
     + died_of(0, "ValueError: bad batch", t=1010.2, stopped=True)
     + died_of(1, "KeyboardInterrupt", t=1010.2, stopped=True), 3, False, JobState.FAILED, 5),
]

#: The ranks each DECISIONS row leaves collateral (none where it is not named).
COLLATERAL = {
    "a cascade: rank 3 raises, the others die of gloo errors: rank 3 is the root cause": {0, 1, 2},
    "a peer's error is not the root cause, even when it comes first or earlier": {0},
    "only peers' errors: the earliest is the cause": {1},
    "peers' errors after a lost node: the node is the cause, not a rank": {0},
    "peers' errors after the user's stop: the stop is the cause": {0},
    "a rank the stop killed while it died of its lost peer is collateral": {0},
}


@pytest.mark.parametrize("name, steps, first, must_stop, state, exit_code", DECISIONS, ids=[row[0] for row in DECISIONS])
def test_decisions(name, steps, first, must_stop, state, exit_code):
    model = play(steps)
    assert (model.first_failure.rank if model.first_failure else None) == first
    assert {r.rank for r in model.ranks if r.collateral} == COLLATERAL.get(name, set())
    assert model.must_stop is must_stop
    model.finish()
    assert (model.state, model.exit_code) == (state, exit_code)
    assert model.must_stop is False  # a finished job never needs stopping
    assert model.summary()["exit_code"] == exit_code


# -- stalls: a running rank silent for --stall_after, checked as the job's watch does -------
#
# ("check",) is the job's periodic look (model.update_stalls); the row gives the ranks each
# check newly flags, the ranks stalled at the end, and whether that is a collective hang.

def everyone_writes() -> list[tuple]:
    return [("out", r, f"rank {r} step 1\n") for r in range(4)]


STALLS = [
    # name, stall_after, steps, flagged per check, stalled at the end, collective hang
    ("a rank silent for --stall_after is flagged, once",
     5.0, started() + [("tick", 3)] + [("out", r, "step\n") for r in (0, 1, 2)] + [("tick", 3), ("check",), ("check",)],
     [[3], []], {3}, False),
    ("silence counts from the start for a rank that never wrote",
     5.0, started() + [("tick", 4.9), ("check",), ("tick", 0.1), ("check",)], [[], [0, 1, 2, 3]], {0, 1, 2, 3},
     True),
    ("a progress bar (no newline) is not silence",
     5.0, started() + [("tick", 4)] + [("out", r, "\r 40%") for r in range(4)] + [("tick", 4), ("check",)],
     [[]], set(), False),
    ("a rank that writes again is cleared, and flagged again after another silence",
     5.0, started() + [("tick", 6), ("check",)] + [("out", 1, "back\n"), ("check",), ("tick", 6), ("check",)],
     [[0, 1, 2, 3], [], [1]], {0, 1, 2, 3}, True),
    ("finished ranks are never stalled; one running rank alone is no collective hang",
     5.0, started() + [exited(r) for r in (0, 1, 2)] + [("tick", 6), ("check",)], [[3]], {3}, False),
    ("nothing is flagged while the job stops",
     5.0, started() + [("stop", "quit by user", True), ("tick", 6), ("check",)], [[]], set(), False),
    ("--stall_after 0: never", 0.0, started() + [("tick", 1000), ("check",)], [[]], set(), False),
]


def test_a_rank_that_failed_as_the_stop_came_is_not_stopped():
    model = play(next(row[1] for row in DECISIONS if row[0].startswith("a rank dying of an error of its own")))
    assert [(r.rank, r.stopped, r.collateral) for r in model.ranks[:2]] == [(0, False, False), (1, True, False)]


@pytest.mark.parametrize("stall_after, steps, flagged, stalled, collective", [row[1:] for row in STALLS],
                         ids=[row[0] for row in STALLS])
def test_stall_decisions(stall_after, steps, flagged, stalled, collective):
    clock = FakeClock()
    model = play([], clock, stall_after=stall_after)
    checks = []
    for step in steps:
        if step == ("check",):
            checks.append([r.rank for r in model.update_stalls(clock())])
        else:
            apply_step(model, clock, step)
    assert checks == flagged
    assert {r.rank for r in model.stalled(clock())} == stalled
    assert model.collective_hang(clock()) is collective


def test_samples_reach_the_ranks_of_their_node_only():
    clock = FakeClock()
    model = play(started(), clock)
    model.apply(1, {"ev": "sample", "t": 1.0, "nvml": None, "ranks": [
        {"rank": 2, "cpu": 97.5, "rss": 3 << 30, "threads": 12, "procs": 3,
         "gpu": {"device": "0", "util": 80, "mem_used": 5 << 30, "mem_total": 80 << 30, "proc_mem": 4 << 30}},
        {"rank": 0, "cpu": 1.0, "rss": 1, "threads": 1, "procs": 1},  # not node 1's: ignored
    ]})
    usage = model.ranks[2].usage
    assert (usage.t, usage.cpu, usage.rss, usage.threads, usage.procs) == (1000.0, 97.5, 3 << 30, 12, 3)
    assert (usage.gpu.device, usage.gpu.util, usage.gpu.proc_mem, usage.gpu.mem_total) == ("0", 80, 4 << 30, 80 << 30)
    assert model.ranks[0].usage is None
    assert (model.nodes[1].sampled, model.nodes[1].no_gpu_telemetry) == (True, None)
    model.apply(0, {"ev": "sample", "t": 1.0, "nvml": "nvidia-ml-py is not installed for python3", "ranks": []})
    assert model.nodes[0].no_gpu_telemetry == "nvidia-ml-py is not installed for python3"


def test_every_time_comes_from_the_clock():
    clock = FakeClock(500.0)
    model = play(started(), clock)
    assert model.started_at == 500.0
    clock.now = 503.0
    model.begin_stop("rank 1 failed", 10.0)
    assert (model.stop_started_at, model.stop_deadline()) == (503.0, 513.0)
    clock.now = 504.5
    model.node_lost(1, "node n2 lost: connection closed")
    assert [(r.status, r.ended_at) for r in model.ranks[2:]] == [(RankStatus.LOST, 504.5)] * 2
    assert model.ranks[0].ended_at is None
    clock.now = 507.0
    model.finish()
    assert model.ended_at == 507.0
    summary = model.summary()
    assert [r["duration"] for r in summary["ranks"]] == [7.0, 7.0, 4.5, 4.5]
    assert (summary["started_at"], summary["ended_at"]) == (500.0, 507.0)


def test_a_lost_node_finishes_its_unfinished_ranks_only():
    model = play(started() + [exited(2, code=0), ("lost", 1)])
    assert [r.status for r in model.ranks] == [RankStatus.RUNNING, RankStatus.RUNNING,
                                               RankStatus.EXITED, RankStatus.LOST]
    assert (model.nodes[1].lost, model.nodes[1].done, model.nodes[0].lost) == (True, True, False)
    assert model.ranks[3].exit_status is None  # no exit code for a rank nobody saw end
