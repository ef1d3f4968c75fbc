"""Rank maths: from selected slots per host to every rank's identity and environment.

Pure logic, no I/O. Global ranks follow hostfile order and are contiguous per node;
LOCAL_RANK is the index within its node, so nodes with different slot counts still
number correctly (RANK % LOCAL_SIZE would rotate).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

DEFAULT_MASTER_PORT = 29500


@dataclass(frozen=True)
class Node:
    host: str
    node_rank: int
    slots: tuple[int, ...]
    first_rank: int

    @property
    def ranks(self) -> range:
        return range(self.first_rank, self.first_rank + len(self.slots))


@dataclass(frozen=True)
class RankInfo:
    rank: int
    host: str
    node_rank: int
    local_rank: int
    gpu: int


@dataclass(frozen=True)
class Command:
    """What each worker runs, DeepSpeed style: `python -u script --local_rank=N args`."""

    script: str
    args: tuple[str, ...] = ()
    python: str = "python3"
    module: bool = False
    no_python: bool = False
    no_local_rank: bool = False

    def argv(self, local_rank: int) -> list[str]:
        command = self.node_command()
        flag = [f"--local_rank={local_rank}"] if command["local_rank_arg"] else []
        return command["head"] + flag + command["tail"]

    def node_command(self) -> dict:
        """The command as a node launcher takes it: every worker runs
        `head + [--local_rank=N] + tail`, so the arguments travel once per node."""
        if self.no_python:
            head = [self.script]
        elif self.module:
            head = [self.python, "-u", "-m", self.script]
        else:
            head = [self.python, "-u", self.script]
        return {"head": head, "tail": list(self.args), "local_rank_arg": not self.no_local_rank}


@dataclass(frozen=True)
class Share:
    """Where a world that is one node's share of a bigger job sits in it (DeepSpeed's
    --no_ssh --node_rank N: a scheduler starts one console per node)."""

    node_rank: int
    nodes: int
    first_rank: int
    world_size: int


@dataclass(frozen=True)
class World:
    nodes: tuple[Node, ...]
    master_addr: str
    master_port: int = DEFAULT_MASTER_PORT
    #: This world is one node of a bigger job: its ranks are numbered from 0 here, and
    #: their workers get the job's identity (RANK, WORLD_SIZE, CROSS_RANK, CROSS_SIZE).
    share: Share | None = None
    ranks: tuple[RankInfo, ...] = field(init=False)

    def __post_init__(self) -> None:
        ranks = tuple(
            RankInfo(node.first_rank + i, node.host, node.node_rank, i, gpu)
            for node in self.nodes
            for i, gpu in enumerate(node.slots)
        )
        object.__setattr__(self, "ranks", ranks)

    @classmethod
    def from_slots(
        cls,
        selected: dict[str, list[int]],
        master_addr: str | None = None,
        master_port: int = DEFAULT_MASTER_PORT,
    ) -> World:
        nodes = []
        next_rank = 0
        for node_rank, (host, slots) in enumerate(selected.items()):
            nodes.append(Node(host, node_rank, tuple(slots), next_rank))
            next_rank += len(slots)
        if not nodes:
            raise ValueError("a world needs at least one node")
        return cls(tuple(nodes), master_addr or nodes[0].host, master_port)

    @property
    def world_size(self) -> int:
        return len(self.ranks)

    def share_of(self, node_rank: int) -> World:
        """Node `node_rank` alone, as a world of its own that knows its place in this one."""
        node = self.nodes[node_rank]
        return World((Node(node.host, 0, node.slots, 0),), self.master_addr, self.master_port,
                     Share(node_rank, len(self.nodes), node.first_rank, self.world_size))

    def global_rank(self, rank: int) -> int:
        """RANK of this world's rank in the whole job (the same unless it is a share)."""
        return rank + (self.share.first_rank if self.share else 0)

    def node_env(self, node: Node) -> dict[str, str]:
        """Variables shared by every worker of a node (DeepSpeed's convention)."""
        share = self.share
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "WORLD_SIZE": str(share.world_size if share else self.world_size),
            "CROSS_RANK": str(share.node_rank if share else node.node_rank),
            "CROSS_SIZE": str(share.nodes if share else len(self.nodes)),
            "LOCAL_SIZE": str(len(node.slots)),
            "LOCAL_WORLD_SIZE": str(len(node.slots)),
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, node.slots)),
            "PYTHONUNBUFFERED": "1",
        }

    def plan(self) -> dict:
        """The stable `--dry-run --json` contract."""
        return {
            "world_size": self.world_size,
            "master_addr": self.master_addr,
            "master_port": self.master_port,
            "nodes": [
                {"host": n.host, "node_rank": n.node_rank, "slots": list(n.slots)}
                for n in self.nodes
            ],
            "ranks": [asdict(r) for r in self.ranks],
            **({"share": asdict(self.share)} if self.share else {}),
        }

