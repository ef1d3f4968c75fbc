"""stacks.py: grouping every rank's stack (pure), as `d` and --stacks_on_stall show it."""

from __future__ import annotations

import pytest

from flextui.stacks import build_dump, dump_text, group_stacks, rank_spans, rank_stack, stack_summary

SITE = "/venv/lib/python3.11/site-packages/"
TRAIN = "/work/examples/train.py"


def f(name: str, line: int, path: str = TRAIN) -> list:
    short = path.removeprefix(SITE) if path.startswith(SITE) else path.rsplit("/", 1)[-1]
    return [name, short, line, path]


ALL_REDUCE = [f("all_reduce", 3252, SITE + "torch/distributed/distributed_c10d.py"),
              f("_exception_logger.<locals>.wrapper", 83, SITE + "torch/distributed/c10d_logger.py")]
IN_TRAIN_STEP = ALL_REDUCE + [f("train_step", 78), f("main", 115), f("<module>", 136)]
IN_SYNC = ALL_REDUCE + [f("sync_metrics", 83), f("main", 113), f("<module>", 136)]
IN_LOADER = [f("FakeLoader.__next__", 71), f("main", 105), f("<module>", 136)]


def event(rank: int, frames: list, children: list | None = None, error: str | None = None) -> dict:
    own = {"pid": 100 + rank, "ppid": 1, "cmdline": "python train.py"}
    if error:
        own["error"] = error
    else:
        own["threads"] = [
            {"name": "pin_memory", "tid": 900 + rank, "active": False, "frames": [f("_loop", 9)]},
            {"name": "MainThread", "tid": 100 + rank, "active": False, "frames": frames},
        ]
    kids = [{"pid": 200 + rank, "ppid": 100 + rank, "cmdline": "python -c loader",
             "threads": [{"name": "MainThread", "tid": 200 + rank, "frames": frames_}]} for frames_ in children or ()]
    return {"ev": "stack", "id": 1, "rank": rank, "pid": 100 + rank, "processes": [own, *kids]}


def hang(world: int = 16, loader: int = 7, stray: int = 5) -> list:
    stacks = []
    for rank in range(world):
        frames = IN_LOADER if rank == loader else IN_SYNC if rank == stray else IN_TRAIN_STEP
        # Dataloader workers busy at different lines must not split the groups.
        stacks.append(rank_stack(event(rank, frames, children=[[f("work", 10 + rank)]]), f"n{rank // 8}"))
    return stacks


@pytest.mark.parametrize("ranks, text", [([], ""), ([3], "3"), ([0, 1, 2, 3, 5, 7, 8], "0-3,5,7-8"),
                                          ([8, 0, 6, 1, 2, 3, 4, 5, 9, 10, 11, 12, 13, 14, 15], "0-6,8-15")])
def test_rank_spans(ranks, text):
    assert rank_spans(ranks) == text


def test_a_hang_groups_the_odd_ones_out_first():
    groups = group_stacks(hang())
    assert [g.line() for g in groups] == [
        "rank 5 (1): all_reduce ← sync_metrics (train.py:83) ← main (train.py:113) ← …",
        "rank 7 (1): FakeLoader.__next__ (train.py:71) ← main (train.py:105) ← <module> (train.py:136)",
        "ranks 0-4,6,8-15 (14): all_reduce ← train_step (train.py:78) ← main (train.py:115) ← …",
    ]
    # The frames to look at: where each group's stack is not the closest other group's.
    stray, loader, rest = groups
    assert [stray.stack.frames[i].function for i in sorted(stray.differs)] == ["sync_metrics", "main"]
    assert [rest.stack.frames[i].function for i in sorted(rest.differs)] == ["train_step", "main"]
    assert [loader.stack.frames[i].function for i in sorted(loader.differs)] == ["FakeLoader.__next__", "main"]


def test_one_group_when_every_rank_is_in_the_same_place():
    groups = group_stacks([rank_stack(event(r, IN_TRAIN_STEP), "n") for r in range(4)])
    assert [(g.label(), g.differs) for g in groups] == [("ranks 0-3 (4)", set())]


def test_ranks_py_spy_could_not_read_group_by_error_last():
    stacks = [rank_stack(event(0, IN_TRAIN_STEP), "n1"), rank_stack(event(1, [], error="not a Python process"), "n1"),
              rank_stack(event(2, [], error="not a Python process"), "n2"), rank_stack(event(3, IN_TRAIN_STEP), "n2")]
    assert [g.line() for g in group_stacks(stacks)] == [
        "ranks 0,3 (2): all_reduce ← train_step (train.py:78) ← main (train.py:115) ← …",
        "ranks 1-2 (2): (not a Python process)",
    ]


def test_a_summary_names_the_innermost_frame_and_the_users_code():
    frames = rank_stack(event(0, IN_TRAIN_STEP), "n").frames
    assert stack_summary(frames) == "all_reduce ← train_step (train.py:78) ← main (train.py:115) ← …"
    assert stack_summary(frames[2:3]) == "train_step (train.py:78)"


def test_the_dump_and_its_file():
    stacks = hang(world=8)
    dump = build_dump(0.0, stacks[:6] + stacks[7:], {"n9": "no answer within 15s",
                                                    "n8": "py-spy is not installed for /usr/bin/python3: ..."},
                      expected=list(range(8)))
    assert dump.missing == [6]
    assert dump.headline() == "stacks of 7 ranks: 3 groups; no stack from rank 6"
    assert dump.problem_lines() == [
        "py-spy is missing on n8: pip install 'flextui[stacks]' (or pip install py-spy) for the nodes' python",
        "n9: no answer within 15s",
    ]
    text = dump_text(dump, "run-1")
    assert "ranks 0-4 (5): all_reduce ← train_step (train.py:78)" in text
    assert ">> sync_metrics (train.py:83)" in text and "   all_reduce (torch/distributed/distributed_c10d.py:3252)" in text
    # Every process and thread, children included, with full paths.
    assert "  child of rank 3: pid 203: python -c loader" in text
    assert 'thread 903 (idle): "pin_memory"' in text
    assert f"        train_step ({TRAIN}:78)" in text
