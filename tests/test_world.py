"""Rank maths and worker environment (pure logic): flextui.world."""

from __future__ import annotations

import json

import pytest

from flextui.hostfile import parse_hostfile, select_slots
from flextui.launch import command_argv
from flextui.modes.fixed import FixedMode
from flextui.world import DEFAULT_MASTER_PORT, Command, RankInfo, World


def test_ranks_follow_hostfile_order_contiguous_per_node_with_uneven_slots():
    # a:0,2 + b:1 - the example of the brief: LOCAL_RANK is the index within the node and
    # `gpu` the physical slot, never RANK % LOCAL_SIZE.
    world = World.from_slots({"a": [0, 2], "b": [1]})
    assert world.ranks == (
        RankInfo(rank=0, host="a", node_rank=0, local_rank=0, gpu=0),
        RankInfo(rank=1, host="a", node_rank=0, local_rank=1, gpu=2),
        RankInfo(rank=2, host="b", node_rank=1, local_rank=0, gpu=1),
    )
    assert world.world_size == 3
    assert [(n.host, n.node_rank, n.slots, n.first_rank, list(n.ranks)) for n in world.nodes] == [
        ("a", 0, (0, 2), 0, [0, 1]),
        ("b", 1, (1,), 2, [2]),
    ]


def test_local_rank_does_not_rotate_when_nodes_differ():
    world = World.from_slots({"n3": [0, 1, 2], "n1": [0, 1]})
    assert [(r.rank, r.host, r.local_rank) for r in world.ranks] == [
        (0, "n3", 0), (1, "n3", 1), (2, "n3", 2), (3, "n1", 0), (4, "n1", 1),
    ]
    # What RANK % LOCAL_SIZE would have said for n1: 3 % 2 = 1 and 4 % 2 = 0 (rotated).
    assert [env["LOCAL_RANK"] for env in worker_envs(world)[3:]] == ["0", "1"]


def worker_envs(world: World) -> list[dict[str, str]]:
    """What each rank's worker gets from flextui (the job's own exports aside), in rank order:
    its node's part of the fixed mode's launcher spec, then its own."""
    envs = []
    for node in world.nodes:
        spec = FixedMode().node_spec(world, node, "run", Command("train.py"))
        envs += [{**spec["env"], **worker["env"]} for worker in spec["workers"]]
    return envs


def test_rank_env_for_every_rank_is_exactly_the_documented_set():
    world = World.from_slots({"a": [0, 2], "b": [1]}, master_port=1234)
    expected = [
        {"RANK": "0", "LOCAL_RANK": "0", "CROSS_RANK": "0", "LOCAL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0,2"},
        {"RANK": "1", "LOCAL_RANK": "1", "CROSS_RANK": "0", "LOCAL_SIZE": "2", "CUDA_VISIBLE_DEVICES": "0,2"},
        {"RANK": "2", "LOCAL_RANK": "0", "CROSS_RANK": "1", "LOCAL_SIZE": "1", "CUDA_VISIBLE_DEVICES": "1"},
    ]
    for env, want in zip(worker_envs(world), expected, strict=True):
        assert env == {
            **want,
            "WORLD_SIZE": "3",
            "LOCAL_WORLD_SIZE": want["LOCAL_SIZE"],
            "CROSS_SIZE": "2",
            "MASTER_ADDR": "a",
            "MASTER_PORT": "1234",
            "PYTHONUNBUFFERED": "1",
        }


def test_node_env_is_shared_by_its_workers():
    world = World.from_slots({"a": [1, 3]})
    env = world.node_env(world.nodes[0])
    assert "RANK" not in env and "LOCAL_RANK" not in env
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3"
    for worker_env in worker_envs(world):
        assert worker_env.items() >= env.items()


def test_master_defaults_to_first_selected_host_and_29500():
    hosts = parse_hostfile("h1 slots=2\nh2 slots=2\nh3 slots=1\n")
    world = World.from_slots(select_slots(hosts, include="h3@h2:1"))
    assert DEFAULT_MASTER_PORT == 29500
    assert world.master_addr == "h2" and world.master_port == 29500  # hostfile order, not spec order
    assert [n.host for n in world.nodes] == ["h2", "h3"]
    assert World.from_slots({"h1": [0]}, master_addr="10.0.0.9", master_port=1).plan()["master_addr"] == "10.0.0.9"


def test_empty_world_is_an_error():
    with pytest.raises(ValueError):
        World.from_slots({})


@pytest.mark.parametrize(
    "command, argv",
    [
        (Command("train.py", ("--lr", "0.1")), ["python3", "-u", "train.py", "--local_rank=2", "--lr", "0.1"]),
        (Command("train.py", python="/opt/py"), ["/opt/py", "-u", "train.py", "--local_rank=2"]),
        (Command("train.py", ("x",), no_local_rank=True), ["python3", "-u", "train.py", "x"]),
        (Command("pkg.train", ("x",), module=True), ["python3", "-u", "-m", "pkg.train", "--local_rank=2", "x"]),
        (Command("pkg.train", module=True, no_local_rank=True), ["python3", "-u", "-m", "pkg.train"]),
        (Command("./run.sh", ("x",), no_python=True), ["./run.sh", "--local_rank=2", "x"]),
        (Command("./run.sh", ("x",), no_python=True, no_local_rank=True), ["./run.sh", "x"]),
    ],
)
def test_command_argv(command, argv):
    assert command.argv(2) == argv
    # What a node launcher runs for local rank 2 from the spec's one command.
    assert command_argv(command.node_command(), 2) == argv


def test_plan_is_the_dry_run_json_contract():
    world = World.from_slots({"a": [0, 2], "b": [1]})
    plan = world.plan()
    assert list(plan) == ["world_size", "master_addr", "master_port", "nodes", "ranks"]
    assert plan == {
        "world_size": 3,
        "master_addr": "a",
        "master_port": 29500,
        "nodes": [
            {"host": "a", "node_rank": 0, "slots": [0, 2]},
            {"host": "b", "node_rank": 1, "slots": [1]},
        ],
        "ranks": [
            {"rank": 0, "host": "a", "node_rank": 0, "local_rank": 0, "gpu": 0},
            {"rank": 1, "host": "a", "node_rank": 0, "local_rank": 1, "gpu": 2},
            {"rank": 2, "host": "b", "node_rank": 1, "local_rank": 0, "gpu": 1},
        ],
    }
    for rank in plan["ranks"]:
        assert list(rank) == ["rank", "host", "node_rank", "local_rank", "gpu"]
    assert json.loads(json.dumps(plan)) == plan

