from flextui.model import MAX_LIVE_CHARS, JobModel, RankStatus
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
