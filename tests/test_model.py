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
