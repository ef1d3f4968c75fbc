"""Fixed mode (the default): one worker per slot, ranks fixed by the hostfile.

Every rank's RANK, LOCAL_RANK, WORLD_SIZE, MASTER_* come from the world (world.py); the
node launcher starts them all and reports each one's output and exit. The first rank to
fail (by time, across nodes), a lost node, or a launcher ended from outside (a cancelled
Slurm job) stops the whole job; its exit code is the first failure's (model.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flextui.model import Clock, JobModel
from flextui.modes import RunMode
from flextui.world import Command, Node, World

if TYPE_CHECKING:
    from flextui.job import Job
    from flextui.transport import NodeChannel


class FixedMode(RunMode):
    name = "fixed"

    @classmethod
    def from_args(cls, args, world: World) -> FixedMode:
        return cls()

    def new_model(self, world: World, run_id: str, tail_lines: int, clock: Clock) -> JobModel:
        return JobModel(world, run_id, tail_lines, clock=clock)

    def node_spec(self, world: World, node: Node, run_id: str, command: Command) -> dict:
        return {
            "env": world.node_env(node),
            "workers": [
                {
                    "rank": info.rank,
                    "local_rank": info.local_rank,
                    "env": {"RANK": str(world.global_rank(info.rank)), "LOCAL_RANK": str(info.local_rank)},
                }
                for info in world.ranks[node.first_rank : node.first_rank + len(node.slots)]
            ],
        }

    def on_event(self, job: Job, node_rank: int, event: dict) -> bool:
        model = job.model
        if event.get("ev") == "out":
            if job.copy_logs[node_rank]:
                job.run_dir.write_log(event["rank"], event["data"])
            job.publish(event["rank"], model.apply(node_rank, event))
            return False
        job.publish(event.get("rank"), model.apply(node_rank, event))
        job.record({"node": node_rank, **event})
        if job.copy_logs[node_rank] and event.get("ev") == "exited":
            job.run_dir.flush_logs()
        if model.must_stop:
            first = model.first_failure
            job.stop(f"rank {first.rank} failed" if first else model.node_stop_reason() or "a node was lost")
        return True

    def on_channel_end(self, job: Job, node_rank: int, channel: NodeChannel) -> None:
        interrupted = channel.interruption()
        if interrupted:  # e.g. the Slurm job was cancelled: the job fails with that reason
            job.model.interrupted(interrupted)
            job.record({"ev": "interrupted", "node": node_rank, "reason": interrupted, "t": job.clock()})
            job.stop(interrupted)
            job.notify()
        reason = job.node_ended(node_rank, channel)
        if reason is not None:
            if job.model.must_stop:
                job.stop(reason)
            job.notify()

    def stop_node_commands(self, world: World, node_rank: int) -> list[dict]:
        return [{"cmd": "stop_rank", "rank": rank} for rank in world.nodes[node_rank].ranks]
