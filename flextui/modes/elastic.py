"""Elastic mode (`--elastic`): torch's own elastic agent on every node, attempts in the model.

Each node launcher runs `python -m torch.distributed.run` with c10d rendezvous at
MASTER_ADDR:MASTER_PORT (the rendezvous store lives on that node) and rendezvous id = the
run id; the agents decide ranks, restarts and membership. flextui keeps its lifecycle
around them (abort, nothing left behind) and follows what they do:

- an *attempt* is one rendezvous round: the workers every participating agent started
  after it, with one world size and one rank -> host mapping. Launchers report their
  worker groups (node-local `seq`); ElasticJobModel groups them into global attempts by the
  round's identity (master addr:port, world size), which every node of a round shares.
- a lost node (its channel closed) does not abort the job: it is marked lost, and the
  surviving nodes' workers of any round it was part of are stopped (they would fail, or
  hang forever in init_process_group) so their agents re-rendezvous at once. The job is
  stopped only when fewer than --min_nodes nodes are left or the rendezvous host is gone.

The model and the decisions are pure logic; ElasticMode (at the end) is what the Job
consults: the spec, the follow (logs per attempt, torch's agent log) and the decisions.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from flextui.errors import UsageError
from flextui.model import Clock, JobModel, JobState, RankState, RankStatus
from flextui.modes import RunMode
from flextui.world import Command, Node, RankInfo, World

if TYPE_CHECKING:
    from flextui.job import Job
    from flextui.transport import NodeChannel

DEFAULT_MAX_RESTARTS = 3
AGENT_TAIL_LINES = 2000


@dataclass(frozen=True)
class ElasticConfig:
    min_nodes: int
    max_nodes: int
    max_restarts: int = DEFAULT_MAX_RESTARTS
    rdzv_conf: str = ""  # extra torchrun --rdzv-conf key=value,... (wins over ours)
    monitor_interval: float | None = None  # torchrun's --monitor-interval; None: its default
    local_rank_arg: bool = False  # pass --local_rank=N too (torchrun: LOCAL_RANK in the env only)

    def plan(self) -> dict:
        return dataclasses.asdict(self)


def check_world(world: World, config: ElasticConfig) -> None:
    """Raise ValueError (a one-line reason) if torch's agent cannot run this world."""
    slots = {len(node.slots) for node in world.nodes}
    if len(slots) > 1:
        raise ValueError(
            "--elastic runs the same number of workers on every node (torch's --nproc-per-node), "
            f"but the selected hosts have {', '.join(map(str, sorted(slots)))} slots: use --num_gpus N")
    if config.min_nodes > len(world.nodes):
        raise ValueError(f"--min_nodes {config.min_nodes} but the hostfile selects {len(world.nodes)} node(s)")
    if not 1 <= config.min_nodes <= config.max_nodes:
        raise ValueError(f"need 1 <= --min_nodes ({config.min_nodes}) <= --max_nodes ({config.max_nodes})")
    if config.max_restarts < 0:
        raise ValueError("--max_restarts must be >= 0")


def rendezvous_host(world: World) -> Node:
    """The node that hosts the c10d rendezvous store: the one named by MASTER_ADDR."""
    for node in world.nodes:
        if node.host == world.master_addr:
            return node
    return world.nodes[0]


def agent_argv(python: str, world: World, node: Node, run_id: str, config: ElasticConfig) -> list[str]:
    """torchrun for one node, without the entrypoint (the launcher adds its worker shim)."""
    is_host = node.node_rank == rendezvous_host(world).node_rank
    conf = ",".join(filter(None, [f"is_host={int(is_host)}", config.rdzv_conf]))
    argv = [
        python, "-m", "torch.distributed.run",
        f"--nnodes={config.min_nodes}:{config.max_nodes}",
        f"--nproc-per-node={len(node.slots)}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={world.master_addr}:{world.master_port}",
        f"--rdzv-id={run_id}",
        f"--rdzv-conf={conf}",
        f"--max-restarts={config.max_restarts}",
    ]
    if config.monitor_interval is not None:
        argv.append(f"--monitor-interval={config.monitor_interval:g}")
    return argv


def node_env(node: Node) -> dict[str, str]:
    """What a node's workers get from us; torch's agent sets RANK, WORLD_SIZE, MASTER_* etc.
    (and the shim CROSS_RANK, CROSS_SIZE, LOCAL_SIZE from them) per attempt."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(map(str, node.slots)), "PYTHONUNBUFFERED": "1"}


# -- the model -------------------------------------------------------------------------


@dataclass
class NodeGroup:
    """One node's part of an attempt (the launcher's `attempt` event)."""

    node_rank: int
    seq: int
    group_rank: int
    restart_count: int
    ranks: list[int]


@dataclass
class Attempt:
    number: int  # 0, 1, ...: the run dir's attempt-<number>/
    world_size: int
    master: str  # addr:port of the round's worker store (MASTER_ADDR:MASTER_PORT)
    group_world_size: int  # nodes in the round
    started_at: float
    ranks: list[RankState]  # by global rank; a rank no node reported yet stays PENDING
    groups: dict[int, NodeGroup] = field(default_factory=dict)  # by node rank
    doomed: str | None = None  # why the console stopped its workers

    @property
    def restart_count(self) -> int:
        """torch's TORCHELASTIC_RESTART_COUNT (the highest among the round's nodes)."""
        return max((g.restart_count for g in self.groups.values()), default=0)

    @property
    def node_ranks(self) -> list[int]:
        return sorted(self.groups)

    @property
    def finished(self) -> bool:
        return all(r.status.finished for r in self.ranks)

    @property
    def succeeded(self) -> bool:
        return all(r.status is RankStatus.EXITED for r in self.ranks)

    @property
    def first_failure(self) -> RankState | None:
        failed = [r for r in self.ranks if r.status.finished and r.status is not RankStatus.EXITED]
        return min(failed, key=lambda r: r.ended_at or 0.0, default=None)

    def claimed(self) -> set[int]:
        return {rank for group in self.groups.values() for rank in group.ranks}

    def summary(self, now: float) -> dict:
        return {
            "attempt": self.number,
            "world_size": self.world_size,
            "restart_count": self.restart_count,
            "master": self.master,
            "started_at": self.started_at,
            "nodes": [{"node_rank": g.node_rank, "group_rank": g.group_rank, "ranks": g.ranks}
                      for g in sorted(self.groups.values(), key=lambda g: g.group_rank)],
            "stopped_by_console": self.doomed,
            "ranks": [_rank_summary(r, now) for r in self.ranks],
        }


def _rank_summary(r: RankState, now: float) -> dict:
    return {
        "rank": r.rank, "host": r.info.host, "node_rank": r.info.node_rank,
        "local_rank": r.info.local_rank, "gpu": r.info.gpu, "pid": r.pid,
        "status": r.status.value, "code": r.code, "signal": r.signal,
        "stopped": r.stopped, "duration": round(r.runtime(now), 3), "lines": r.line_count,
    }


class ElasticJobModel(JobModel):
    """JobModel for --elastic. What differs for a reader (UI, headless):

    - `ranks[:world_size]` are the *current* attempt's ranks (their RankStates are
      replaced when a new attempt starts, and `info` says where each runs now). `ranks`
      keeps the planned length (every selected slot) so views sized at start stay
      valid: the slots past the current world size are idle placeholders (PENDING, no
      host). Before the first attempt it is the planned world, PENDING. `current_ranks`
      is the current attempt's list alone.
    - `attempts` keeps every attempt with its own RankStates (bounded tails), so old
      attempts stay readable; `current_attempt`, `world_size`, `restart_count`.
    - `lost_nodes`: nodes whose connection dropped (also NodeState.lost), in order.
    - `agent_logs[node_rank]`: a RankState holding torch's agent log of that node.
    - `combined` is cleared when a new attempt starts (its ranks are the new attempt's).
    """

    def __init__(self, world: World, run_id: str, elastic: ElasticConfig, *args, **kwargs) -> None:
        super().__init__(world, run_id, *args, **kwargs)
        self.elastic = elastic
        self.attempts: list[Attempt] = []
        self.lost_nodes: list[int] = []
        self.agent_pids: dict[int, int] = {}
        self.agent_exits: dict[int, dict] = {}
        self.agent_logs = {
            n.node_rank: RankState(RankInfo(-1, n.host, n.node_rank, -1, -1), AGENT_TAIL_LINES)
            for n in world.nodes
        }
        #: (node rank, its agent_exited event, the rank that failed) of the first agent that
        #: gave up on its own (its restarts ran out, say): that ends the job.
        self.gave_up: tuple[int, dict, RankState | None] | None = None
        self._by_group: dict[tuple[int, int], Attempt] = {}
        self._last_attempt: dict[int, int] = {}  # node rank -> its latest attempt number
        self._tail_lines = self.ranks[0].tail_lines if self.ranks else kwargs.get("tail_lines", 5000)
        self._host_node = rendezvous_host(world).node_rank
        self._idle = [RankState(RankInfo(i, "", -1, -1, -1), self._tail_lines) for i in range(len(self.ranks))]

    # -- reading -------------------------------------------------------------------------

    @property
    def current_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def current_ranks(self) -> list[RankState]:
        attempt = self.current_attempt
        return attempt.ranks if attempt else self.ranks

    @property
    def world_size(self) -> int:
        attempt = self.current_attempt
        return attempt.world_size if attempt else self.world.world_size

    @property
    def restart_count(self) -> int:
        attempt = self.current_attempt
        return attempt.restart_count if attempt else 0

    def counts(self) -> dict[str, int]:
        """Statuses of the current attempt's ranks (not the idle placeholders)."""
        counts = {status.value: 0 for status in RankStatus}
        for rank in self.current_ranks:
            counts[rank.status.value] += 1
        return counts

    def attempt_of(self, node_rank: int, seq: int | None) -> Attempt | None:
        return self._by_group.get((node_rank, seq))

    def active_nodes(self) -> list[int]:
        """Nodes still in the job: not lost, launcher not done."""
        return [n.node_rank for n in self.nodes if not n.done and not n.lost]

    # -- events ----------------------------------------------------------------------------

    def apply(self, node_rank: int, event: dict) -> list[str] | None:
        kind = event.get("ev")
        if kind == "out":
            attempt = self._by_group.get((node_rank, event.get("seq")))
            if attempt is None or not 0 <= event["rank"] < attempt.world_size:
                return None
            rank = attempt.ranks[event["rank"]]
            rank.last_heard = self.clock()
            lines = rank.add_output(event["data"])
            if attempt is not self.current_attempt:
                return None  # a late flush of an older attempt: kept there, not shown live
            if lines:
                self.combined.extend((event["rank"], line) for line in lines)
                self.combined_count += len(lines)
            return lines
        if kind == "agent_out":
            return self.agent_logs[node_rank].add_output(event["data"])
        if kind == "attempt":
            self._add_group(node_rank, event)
        elif kind == "exited":
            attempt = self._by_group.get((node_rank, event.get("seq")))
            if attempt is not None and 0 <= event["rank"] < attempt.world_size:
                return self._elastic_rank_exited(attempt, attempt.ranks[event["rank"]], event)
        elif kind == "sample":
            self.apply_sample(node_rank, event)
        elif kind == "agent":
            self.agent_pids[node_rank] = event.get("pid")
        elif kind == "agent_exited":
            self.agent_exits[node_rank] = event
            self.agent_logs[node_rank].finish_output()
            if event.get("code") and not event.get("stopped") and self.stop_started_at is None:
                self._agent_gave_up(node_rank, event)
        elif kind in ("hello", "stopping", "error", "done"):
            return super().apply(node_rank, event)
        return None

    def _add_group(self, node_rank: int, event: dict) -> Attempt:
        key = (node_rank, event["seq"])
        attempt = self._by_group.get(key)
        ranks = [r["rank"] for r in event["ranks"] if 0 <= r["rank"] < event["world_size"]]
        if attempt is None:
            attempt = self._match(node_rank, event, ranks) or self._new_attempt(event)
            self._by_group[key] = attempt
            self._last_attempt[node_rank] = max(attempt.number, self._last_attempt.get(node_rank, -1))
        attempt.groups[node_rank] = NodeGroup(node_rank, event["seq"], event.get("group_rank", -1),
                                              event.get("restart_count", 0), ranks)
        node = self.world.nodes[node_rank]
        for r in event["ranks"]:
            if not 0 <= r["rank"] < attempt.world_size:
                continue
            local = r["local_rank"]
            gpu = node.slots[local] if 0 <= local < len(node.slots) else local
            state = attempt.ranks[r["rank"]]
            state.info = RankInfo(r["rank"], node.host, node_rank, local, gpu)
            if state.status is RankStatus.PENDING:
                state.status, state.started_at = RankStatus.RUNNING, event.get("t")
                state.last_heard = self.clock()
            state.pid = r.get("pid") or state.pid
        if self.state is JobState.LAUNCHING:
            self.state = JobState.RUNNING
        return attempt

    def recheck_errors(self) -> None:
        """Error lines only: a failed rank is the agents' business, never a root cause here."""
        for attempt in self.attempts:
            for rank in attempt.ranks:
                rank.recheck_error()

    def _sampled_rank(self, node_rank: int, entry: dict) -> RankState | None:
        attempt = self._by_group.get((node_rank, entry.get("seq")))
        number = entry.get("rank")
        if attempt is None or not isinstance(number, int) or not 0 <= number < attempt.world_size:
            return None
        return attempt.ranks[number]

    def _match(self, node_rank: int, event: dict, ranks: list[int]) -> Attempt | None:
        """The earliest attempt this node's group belongs to: the same round identity, this
        node not in it yet, none of these ranks claimed, newer than the node's last one."""
        last = self._last_attempt.get(node_rank, -1)
        for attempt in self.attempts:
            if (attempt.number > last and attempt.master == event.get("master")
                    and attempt.world_size == event["world_size"] and node_rank not in attempt.groups
                    and not attempt.claimed() & set(ranks)):
                return attempt
        return None

    def _new_attempt(self, event: dict) -> Attempt:
        world_size = event["world_size"]
        attempt = Attempt(
            number=len(self.attempts), world_size=world_size, master=event.get("master", ""),
            group_world_size=event.get("group_world_size", 0), started_at=event.get("t") or self.clock(),
            ranks=[RankState(RankInfo(i, "", -1, -1, -1), self._tail_lines) for i in range(world_size)],
        )
        self.attempts.append(attempt)
        self.ranks = attempt.ranks + self._idle[world_size:]
        self.combined.clear()  # its (rank, line) pairs were about the previous attempt's ranks
        return attempt

    def _agent_gave_up(self, node_rank: int, event: dict) -> None:
        """torch's agent on the node ended with a failure while nobody stopped it: its
        restarts ran out (or it could not go on). The job has failed, and its first failure
        is the first rank to fail in that node's last attempt."""
        if self.gave_up is not None:
            return
        failed = self._failed_rank(node_rank)
        self.gave_up = (node_rank, event, failed)
        if self.first_failure is None:
            self.first_failure = failed

    def _failed_rank(self, node_rank: int) -> RankState | None:
        attempts = [a for a in self.attempts if node_rank in a.groups]
        if not attempts:
            return None
        ranks = attempts[-1].ranks
        failed = [r for r in ranks if r.status in (RankStatus.FAILED, RankStatus.KILLED) and not r.stopped]
        return min(failed, key=lambda r: r.ended_at or 0.0, default=None) or attempts[-1].first_failure

    def gave_up_reason(self) -> str | None:
        """Why the job failed when an agent gave up: the failing rank and its code."""
        if self.gave_up is None:
            return None
        node_rank, event, failed = self.gave_up
        host = self.nodes[node_rank].host
        restarts = self.restart_count
        agent = (f"torch's agent on {host} gave up after {restarts} restart(s) "
                 f"(--max_restarts {self.elastic.max_restarts})")
        if failed is None:
            return f"{agent}: exit code {event.get('code')}"
        how = (f"was killed by signal {failed.signal}" if failed.signal
               else f"exited with code {failed.code}")
        return f"rank {failed.rank} on {failed.info.host} {how}; {agent}"

    def _elastic_rank_exited(self, attempt: Attempt, rank: RankState, event: dict) -> list[str]:
        finished = self._finish_output(rank, shown=attempt is self.current_attempt)
        rank.record_exit(event)
        # A failed rank is the agents' business (restart); never the job's first failure.
        return finished

    def node_lost(self, node_rank: int, reason: str) -> None:
        node = self.nodes[node_rank]
        if node.done:
            return
        node.lost, node.done, node.error = True, True, reason
        self.lost_nodes.append(node_rank)
        now = self.clock()
        for attempt in self.attempts:
            group = attempt.groups.get(node_rank)
            for rank_no in group.ranks if group else ():
                rank = attempt.ranks[rank_no]
                if not rank.status.finished:
                    rank.finish_output()
                    rank.status, rank.ended_at = RankStatus.LOST, now
        self.agent_logs[node_rank].finish_output()

    # -- decisions ---------------------------------------------------------------------

    def _gone(self, node_rank: int) -> bool:
        """Lost, or its launcher ended without success while the job goes on."""
        node = self.nodes[node_rank]
        return node.lost or (node.done and node.code != 0)

    @property
    def must_stop(self) -> bool:
        return self.stop_cause() is not None

    def stop_cause(self) -> str | None:
        """Why the console must stop the whole job now, if it must."""
        if self.stop_started_at is not None or self.state.finished:
            return None
        active = self.active_nodes()
        if not active:
            return None
        if self.gave_up is not None:  # before "the host is gone": its agent gave up first
            return self.gave_up_reason()
        host = self.nodes[self._host_node]
        if self._gone(self._host_node):
            return f"node {host.host} hosts the rendezvous and is gone"
        if any(n.done and n.code == 0 for n in self.nodes):
            return None  # finishing: nodes end one by one
        if len(active) < self.elastic.min_nodes and any(self._gone(n.node_rank) for n in self.nodes):
            return f"only {len(active)} node(s) left, fewer than --min_nodes {self.elastic.min_nodes}"
        return None

    def take_doomed_attempts(self) -> list[Attempt]:
        """Attempts whose surviving workers must be stopped (once each): a node of theirs is
        gone, or they wait for more nodes than are left; they would fail or hang."""
        if self.stop_started_at is not None or self.state.finished:
            return []
        active = set(self.active_nodes())
        doomed = []
        for attempt in self.attempts:
            if attempt.doomed or attempt.finished:
                continue
            gone = [n for n in attempt.groups if self._gone(n)]
            if gone:
                attempt.doomed = f"node {', '.join(self.nodes[n].host for n in gone)} left the job"
            elif attempt.group_world_size > len(active):
                attempt.doomed = (f"its round has {attempt.group_world_size} nodes, "
                                  f"only {len(active)} are left")
            else:
                continue
            doomed.append(attempt)
        return doomed

    def finish(self) -> None:
        self.ended_at = self.clock()
        if self.gave_up is not None:  # ranks reported after the agent's exit
            node_rank, event, failed = self.gave_up
            failed = failed or self._failed_rank(node_rank)
            self.gave_up = (node_rank, event, failed)
            self.first_failure = self.first_failure or failed
            self.stop_reason = self.stop_reason or self.gave_up_reason()
        for attempt in self.attempts:
            for rank in attempt.ranks:
                if not rank.status.finished:  # never reported, or its node ended silently
                    rank.finish_output()
                    rank.status, rank.ended_at = RankStatus.LOST, rank.ended_at or self.ended_at
        last = self.current_attempt
        if self.error:
            self.state = JobState.FAILED
        elif self.aborted_by_user:
            self.state = JobState.ABORTED
        elif (last is not None and last.succeeded and self.stop_started_at is None
              and all(self.nodes[n].done and self.nodes[n].code == 0 for n in last.groups)):
            self.state = JobState.SUCCEEDED
        else:
            self.state = JobState.FAILED

    @property
    def exit_code(self) -> int:
        if self.state is JobState.SUCCEEDED:
            return 0
        if self.aborted_by_user or self.state is JobState.ABORTED:
            return 130
        codes = [n.code for n in self.nodes if not n.lost and n.code]
        if self.stop_reason is None and codes:
            return codes[0]  # torch's agent's verdict (e.g. 1: restarts exhausted)
        if self.lost_nodes:
            return 255
        return codes[0] if codes else 1

    def summary(self) -> dict:
        summary = super().summary()
        now = self.ended_at or self.clock()
        summary["world_size"] = self.world_size
        summary["ranks"] = [_rank_summary(r, now) for r in self.current_ranks]
        summary["elastic"] = {
            **self.elastic.plan(),
            "attempts": [a.summary(now) for a in self.attempts],
            "restart_count": self.restart_count,
            "world_size": self.world_size,
            "lost_nodes": [{"node_rank": n, "host": self.nodes[n].host, "reason": self.nodes[n].error}
                           for n in self.lost_nodes],
            "agents": {self.nodes[n].host: {"pid": self.agent_pids.get(n),
                                            "code": self.agent_exits.get(n, {}).get("code"),
                                            "signal": self.agent_exits.get(n, {}).get("signal")}
                       for n in range(len(self.nodes))},
        }
        return summary


# -- the mode ---------------------------------------------------------------------------


class ElasticMode(RunMode):
    name = "elastic"

    def __init__(self, config: ElasticConfig) -> None:
        self.config = config

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(
            "elastic (torch's elastic agent on every node: c10d rendezvous at MASTER_ADDR:MASTER_PORT)")
        group.add_argument("--elastic", action="store_true",
                           help="run torch.distributed.run on each node; a lost node does not end the job")
        group.add_argument("--min_nodes", "--min-nodes", type=int, help="fewest nodes to run with (default 1)")
        group.add_argument("--max_nodes", "--max-nodes", type=int, help="most nodes (default: all selected)")
        group.add_argument("--max_restarts", "--max-restarts", type=int, default=DEFAULT_MAX_RESTARTS,
                           help=f"worker group restarts before failing (default {DEFAULT_MAX_RESTARTS})")
        group.add_argument("--rdzv_conf", "--rdzv-conf", default="", metavar="K=V,...",
                           help="extra torchrun --rdzv-conf, e.g. last_call_timeout=5,keep_alive_interval=2")
        group.add_argument("--monitor_interval", "--monitor-interval", type=float,
                           help="torchrun --monitor-interval (seconds)")
        group.add_argument("--pass_local_rank", "--pass-local-rank", action="store_true",
                           help="also pass --local_rank=N to the script (torchrun, and so --elastic, "
                                "sets LOCAL_RANK in the environment only)")

    @classmethod
    def from_args(cls, args: argparse.Namespace, world: World) -> ElasticMode | None:
        given = [name for name in ("min_nodes", "max_nodes", "monitor_interval") if getattr(args, name) is not None]
        if not args.elastic:
            if given or args.rdzv_conf or args.pass_local_rank:
                raise UsageError(f"--{(given or ['rdzv_conf' if args.rdzv_conf else 'pass_local_rank'])[0]} "
                                 "needs --elastic")
            return None
        config = ElasticConfig(
            min_nodes=1 if args.min_nodes is None else args.min_nodes,
            max_nodes=len(world.nodes) if args.max_nodes is None else args.max_nodes,
            max_restarts=args.max_restarts, rdzv_conf=args.rdzv_conf, monitor_interval=args.monitor_interval,
            local_rank_arg=args.pass_local_rank and not args.no_local_rank,
        )
        try:
            check_world(world, config)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return cls(config)

    def plan(self) -> dict:
        return {"elastic": self.config.plan()}

    @classmethod
    def from_plan(cls, plan: dict) -> ElasticMode | None:
        config = plan.get("elastic")
        return cls(ElasticConfig(**config)) if isinstance(config, dict) else None

    def plan_lines(self, world: World) -> list[str]:
        config = self.config
        return [f"elastic: torch.distributed.run --nnodes {config.min_nodes}:{config.max_nodes} "
                f"--max-restarts {config.max_restarts} on every node, c10d rendezvous at "
                f"{world.master_addr}:{world.master_port}; ranks are assigned per attempt"]

    # -- starting -----------------------------------------------------------------------

    def new_model(self, world: World, run_id: str, tail_lines: int, clock: Clock) -> ElasticJobModel:
        return ElasticJobModel(world, run_id, self.config, tail_lines, clock=clock)

    def node_spec(self, world: World, node: Node, run_id: str, command: Command) -> dict:
        return {
            "env": node_env(node),
            # torchrun's convention: LOCAL_RANK in the environment, no --local_rank=N
            "command": {**command.node_command(), "local_rank_arg": self.config.local_rank_arg},
            "workers": [],
            "elastic": {
                "agent": agent_argv(command.python, world, node, run_id, self.config),
                "python": command.python,
                "nproc": len(node.slots),
            },
        }

    def preflight_request(self, world: World, node: Node) -> dict:
        host = rendezvous_host(world)
        return {"need_torch": True, "master_addr": world.master_addr,
                "master_port": world.master_port if node.node_rank == host.node_rank else None}

    # -- following: logs go to attempt-<k>/rank-<N>.log; a lost node or a failed rank does
    # not stop the job (torch's agents re-rendezvous) -----------------------------------------

    def on_event(self, job: Job, node_rank: int, event: dict) -> bool:
        model, run_dir = job.model, job.run_dir
        kind = event.get("ev")
        if kind == "out":
            attempt = model.attempt_of(node_rank, event.get("seq"))
            if attempt is not None:
                run_dir.write_attempt_log(attempt.number, event["rank"], event["data"])
            job.publish(event["rank"], model.apply(node_rank, event))
            return False
        if kind == "agent_out":
            run_dir.write_agent_log(model.nodes[node_rank].host, event["data"])
            model.apply(node_rank, event)
            return False
        current = model.current_attempt
        job.publish(event.get("rank"), model.apply(node_rank, event))
        record = {"node": node_rank, **event}
        if kind == "attempt":
            record["attempt"] = model.attempt_of(node_rank, event["seq"]).number
            if model.current_attempt is not current and current is not None:
                run_dir.close_attempt_logs(current.number)
        elif kind == "exited":
            run_dir.flush_logs()
        job.record(record)
        self.decide(job)
        return True

    def on_channel_end(self, job: Job, node_rank: int, channel: NodeChannel) -> None:
        job.node_ended(node_rank, channel)
        self.decide(job)
        job.notify()

    def decide(self, job: Job) -> None:
        """After a node left (or ended badly): stop the job if too few nodes are left, else
        stop the survivors' workers of its rounds so their agents re-rendezvous now."""
        model = job.model
        cause = model.stop_cause()
        if cause is not None:
            job.stop(cause)
            return
        for attempt in model.take_doomed_attempts():
            job.record({"ev": "stop_attempt", "attempt": attempt.number, "reason": attempt.doomed,
                        "t": job.clock()})
            job.send(model.active_nodes(), {"cmd": "stop_attempt", "master": attempt.master,
                                            "world_size": attempt.world_size, "reason": attempt.doomed})

    def log_files(self, model: ElasticJobModel) -> list[tuple[RankState, str]]:
        files = [(rank, f"attempt-{attempt.number}/rank-{rank.rank}.log")
                 for attempt in model.attempts for rank in attempt.ranks]
        return files + [(log, f"agent-{model.nodes[n].host}.log") for n, log in model.agent_logs.items()]

    # -- control ---------------------------------------------------------------------------

    def stop_node_commands(self, world: World, node_rank: int) -> list[dict]:
        # The node leaves the job: its agent stops; the others re-rendezvous without it if
        # --min_nodes allows.
        return [{"cmd": "stop", "reason": "node taken out of the job by the user"}]


__all__ = [
    "Attempt", "ElasticConfig", "ElasticJobModel", "ElasticMode", "NodeGroup", "agent_argv", "check_world",
    "node_env", "rendezvous_host",
]
