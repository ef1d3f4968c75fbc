"""Mirroring a model into a console (flextui/mirror.py): a replica built from a snapshot and
the run directory's log files, then kept by diffs, holds exactly what the supervisor's
model holds — for fixed and elastic jobs, partial lines, progress bars, undecodable bytes,
a console that fell behind, a ring cleared by a new attempt."""

from __future__ import annotations

import dataclasses
import enum
import os
from collections import deque

import pytest

from flextui.mirror import ConsoleView, Publisher, Replica, read_tail
from flextui.model import JobModel, RankState
from flextui.modes.elastic import ElasticConfig, ElasticMode
from flextui.modes.fixed import FixedMode
from flextui.world import World


def norm(obj):
    """A comparable picture of a model (its clock and world aside)."""
    if isinstance(obj, RankState):
        fields = {k: v for k, v in vars(obj).items() if k != "_unfinished"}
        return ("RankState", norm(fields))
    if isinstance(obj, deque):
        return [norm(x) for x in obj]
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [norm(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): norm(v) for k, v in obj.items()}
    if isinstance(obj, JobModel):
        return (type(obj).__name__, norm({k: v for k, v in vars(obj).items() if k not in ("clock", "world")}))
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return (type(obj).__name__, norm(vars(obj)))
    if isinstance(obj, range):
        return ("range", obj.start, obj.stop)
    return obj


class FakeSupervisor:
    """A model fed with launcher events whose output is written to the run directory first,
    byte for byte, as the job does (RunDir.write_log / the launcher's own file)."""

    def __init__(self, tmp_path, mode, hosts, tail_lines=5, combined_lines=12):
        self.run_path = str(tmp_path / "run")
        os.makedirs(self.run_path)
        self.world = World.from_slots(hosts)
        self.mode = mode
        self.model = mode.new_model(self.world, "run", tail_lines, clock=lambda: 100.0)
        self.model.combined = deque(maxlen=combined_lines)
        self.publisher = Publisher(self.model, lambda: mode.log_files(self.model))

    def log_path(self, node: int, event: dict) -> str | None:
        if event["ev"] == "agent_out":
            return f"agent-{self.model.nodes[node].host}.log"
        attempt = getattr(self.model, "attempt_of", None)
        if attempt is not None:
            found = attempt(node, event.get("seq"))
            return None if found is None else f"attempt-{found.number}/rank-{event['rank']}.log"
        return f"rank-{event['rank']}.log"

    def apply(self, node: int, event: dict) -> None:
        if event["ev"] in ("out", "agent_out"):
            relative = self.log_path(node, event)
            if relative is not None:
                path = os.path.join(self.run_path, relative)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "ab") as f:
                    f.write(event["data"].encode("utf-8", "surrogateescape"))
        self.model.apply(node, event)

    def out(self, node: int, rank: int, data: str | bytes, **more) -> None:
        if isinstance(data, bytes):
            data = data.decode("utf-8", "surrogateescape")
        self.apply(node, {"ev": "out", "rank": rank, "data": data, **more})

    def attach(self, **kwargs) -> tuple[Replica, ConsoleView]:
        view = ConsoleView()
        replica = Replica(self.world, self.run_path, **kwargs)
        replica.apply_snapshot(self.publisher.snapshot(view))
        return replica, view

    def sync(self, replica: Replica, view: ConsoleView):
        self.publisher.refresh()
        diff = self.publisher.diff(view)
        return [] if diff is None else replica.apply_diff(diff)


def started(sup, node, rank, t=1.0):
    sup.apply(node, {"ev": "started", "rank": rank, "pid": 1000 + rank, "t": t})


def test_a_fixed_job_attached_midway_and_followed_to_its_end_is_the_same_model(tmp_path):
    sup = FakeSupervisor(tmp_path, FixedMode(), {"a": [0, 1], "b": [0, 1]})
    for node in range(2):
        sup.apply(node, {"ev": "hello", "pid": 50 + node, "host": f"h{node}", "t": 0.5})
    for rank in range(4):
        started(sup, rank // 2, rank)
    for i in range(8):  # more than the tail (5) and the ring (12) hold
        for rank in range(4):
            sup.out(rank // 2, rank, f"rank {rank} line {i}\n")
    sup.out(0, 0, "epoch 1 |███  | 30%\repoch 1 |████ | 40%")  # a progress bar being drawn
    sup.out(0, 1, b"caf\xc3\xa9 bad \xff bytes\n")  # UTF-8, and a byte that is not
    sup.out(1, 2, "half a li")  # unfinished
    sup.apply(1, {"ev": "exited", "rank": 3, "code": 3, "signal": None, "t": 2.0, "stopped": False})
    sup.out(1, 3, "")  # nothing
    early, early_view = sup.attach()
    assert norm(early.model) == norm(sup.model)
    assert list(early.model.ranks[2].tail)[-1] == "rank 2 line 7" and early.model.ranks[2].live == "half a li"
    assert early.model.ranks[1].tail[-1] == "café bad \ufffd bytes"
    assert early.model.ranks[0].live == "epoch 1 |████ | 40%"

    sup.out(1, 2, "ne\nmore\n")
    sup.out(0, 0, "\repoch 1 |█████| 100%\n")
    sup.model.begin_stop("rank 3 failed", 10.0)
    published = sup.sync(early, early_view)
    assert norm(early.model) == norm(sup.model)
    assert (2, ["half a line", "more"]) in published and (0, ["epoch 1 |█████| 100%"]) in published

    sup.out(0, 1, "last words, no newline")
    for rank in range(3):
        sup.apply(rank // 2, {"ev": "exited", "rank": rank, "code": None, "signal": 15, "t": 3.0, "stopped": True})
    for node in range(2):
        sup.apply(node, {"ev": "done", "code": 1, "t": 3.5})
    sup.model.finish()
    sup.sync(early, early_view)
    assert norm(early.model) == norm(sup.model)
    assert early.model.ranks[1].tail[-1] == "last words, no newline" and early.model.exit_code == 3

    late, _ = sup.attach()  # the finished run: the rank that ended mid-line has it as a line
    assert norm(late.model) == norm(sup.model)
    assert late.log_file(late.model.ranks[1]) == os.path.join(sup.run_path, "rank-1.log")
    assert late.model.ranks[1].log_bytes == os.path.getsize(late.log_file(late.model.ranks[1]))


def test_a_console_that_fell_behind_gets_the_newest_lines_and_every_count(tmp_path):
    sup = FakeSupervisor(tmp_path, FixedMode(), {"a": [0]})
    started(sup, 0, 0)
    replica, view = sup.attach()
    for i in range(1000):  # a flood between two diffs
        sup.out(0, 0, f"flood {i}\n")
    sup.sync(replica, view)
    assert norm(replica.model) == norm(sup.model)
    assert list(replica.model.ranks[0].tail) == [f"flood {i}" for i in range(995, 1000)]
    assert replica.model.ranks[0].line_count == 1000 and replica.model.combined_count == 1000
    assert sup.publisher.diff(view) is None  # nothing new: nothing sent


def test_the_rank_states_a_console_holds_stay_the_same_objects(tmp_path):
    sup = FakeSupervisor(tmp_path, FixedMode(), {"a": [0, 1]})
    replica, view = sup.attach()
    ranks = list(replica.model.ranks)
    started(sup, 0, 0)
    sup.apply(0, {"ev": "exited", "rank": 0, "code": 1, "signal": None, "t": 2.0})
    sup.sync(replica, view)
    assert replica.model.ranks == ranks and all(a is b for a, b in zip(replica.model.ranks, ranks))
    assert replica.model.first_failure is ranks[0]


def group(seq, master, world_size, group_rank, ranks, restart=0, nodes=2):
    return {"ev": "attempt", "seq": seq, "master": master, "world_size": world_size,
            "group_rank": group_rank, "group_world_size": nodes, "restart_count": restart, "t": 1.0,
            "ranks": [{"rank": r, "local_rank": i, "pid": 100 + r} for i, r in enumerate(ranks)]}


def test_an_elastic_job_with_a_new_attempt_and_a_lost_node(tmp_path):
    mode = ElasticMode(ElasticConfig(min_nodes=1, max_nodes=2))
    sup = FakeSupervisor(tmp_path, mode, {"n0": [0, 1], "n1": [0, 1]})
    for node in range(2):
        sup.apply(node, group(0, "n0:1", 4, node, [2 * node, 2 * node + 1]))
        sup.apply(node, {"ev": "agent_out", "data": f"agent {node} up\n"})
    for rank in range(4):
        sup.out(rank // 2, rank, f"attempt 0 rank {rank}\n", seq=0)
    replica, view = sup.attach()
    assert norm(replica.model) == norm(sup.model)
    sup.model.node_lost(1, "node n1 lost: connection closed")
    sup.apply(0, group(1, "n0:2", 2, 0, [0, 1], restart=1, nodes=1))  # the ring is cleared
    sup.out(0, 0, "attempt 1 rank 0\n", seq=1)
    sup.out(0, 1, "late line of attempt 0\n", seq=0)
    published = sup.sync(replica, view)
    assert norm(replica.model) == norm(sup.model)
    assert list(replica.model.combined) == [(0, "attempt 1 rank 0")]
    assert published == [(0, ["attempt 1 rank 0"])]  # the old attempt's late line is not live
    late, _ = sup.attach()
    assert norm(late.model) == norm(sup.model)
    assert late.log_file(late.model.attempts[0].ranks[1]).endswith("attempt-0/rank-1.log")


def test_read_tail_from_the_end_of_a_large_file(tmp_path):
    path = tmp_path / "rank-0.log"
    lines = [f"line {i} " + "x" * (i % 50) for i in range(300_000)]
    data = ("\n".join(lines) + "\npartial").encode()
    path.write_bytes(data)
    assert read_tail(str(path), len(data), 3, unfinished=True) == lines[-3:]
    assert read_tail(str(path), len(data), 3, unfinished=False) == lines[-2:] + ["partial"]
    cut = data.index(b"line 100 ")  # up to an offset: what the model had then
    assert read_tail(str(path), cut, 2, unfinished=False) == lines[98:100]
    assert read_tail(str(path), len(data), 0, unfinished=True) == []
    assert read_tail(str(tmp_path / "missing"), 10, 3, unfinished=True) == []
    assert read_tail(str(path), len(data) + 100, 1, unfinished=True) == lines[-1:]  # the file is shorter


@pytest.mark.parametrize("data, count", [(b"a\nb\n", 5), (b"\n\n\n", 2), (b"only partial", 3), (b"", 3)])
def test_read_tail_matches_the_model(tmp_path, data, count):
    path = tmp_path / "log"
    path.write_bytes(data)
    state = JobModel(World.from_slots({"n": [0]}), "r", tail_lines=count).ranks[0]
    state.add_output(data.decode("utf-8", "surrogateescape"))
    state.finish_output()
    assert read_tail(str(path), len(data), count, unfinished=False) == list(state.tail)
    assert state.log_bytes == len(data)
