"""Run modes, console side: how a job's ranks are started, followed and stopped.

A mode is one object the Job consults wherever modes differ, so job.py never asks which
mode it runs:

- its command-line options, and whether they select it (add_arguments, from_args);
- the job model that applies its launchers' events (new_model);
- each node's part of the launcher spec and of its preflight request (node_spec,
  preflight_request); the node side of a mode lives in flextui/launch.py;
- what an event means for the run directory and the job (on_event), what a node's
  channel ending means (on_channel_end), and so when the job must stop;
- how "stop this node" is said to its launcher (stop_node_commands);
- what --dry-run and the run's plan record say about it (plan, plan_lines), and the mode
  again from that record (from_plan: `flextui open` reads a finished run);
- which log file of the run directory holds each RankState of its model (log_files).

Fixed (modes/fixed.py, the default): one worker per slot, ranks fixed by the hostfile; a
failed rank or a lost node stops the job. Elastic (modes/elastic.py, `--elastic`):
torch's elastic agent on every node decides ranks and restarts.

Adding a mode: one module here with a RunMode subclass, one line in MODES, and its node
side in flextui/launch.py.

What a mode may use of the Job (flextui.job.Job) in on_event / on_channel_end: `model`,
`run_dir`, `copy_logs[node_rank]` (the console keeps that node's logs from events),
`publish(rank, lines)`, `record(event)`, `stop(reason)`, `send(node_ranks, command)`,
`node_ended(node_rank, channel)`, `notify()` and `clock()` (the time, for records).
"""

from __future__ import annotations

import abc
import argparse
import importlib
from typing import TYPE_CHECKING, ClassVar

from flextui.world import Command, Node, World

if TYPE_CHECKING:
    from flextui.job import Job
    from flextui.model import Clock, JobModel, RankState
    from flextui.transport import NodeChannel

#: Mode name -> "module:Class" of its RunMode. The default is chosen when no other mode's
#: options select one.
MODES: dict[str, str] = {
    "fixed": "flextui.modes.fixed:FixedMode",
    "elastic": "flextui.modes.elastic:ElasticMode",
}
DEFAULT_MODE = "fixed"


def mode_class(name: str) -> type[RunMode]:
    module_name, _, class_name = MODES[name].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def mode_classes() -> list[type[RunMode]]:
    return [mode_class(name) for name in MODES]


def mode_from_args(args: argparse.Namespace, world: World) -> RunMode:
    """The mode the command line asks for (the default if none does); raises UsageError
    when a mode's options are wrong for this world."""
    chosen = None
    for name in MODES:
        if name != DEFAULT_MODE:
            mode = mode_class(name).from_args(args, world)  # each checks its own options
            chosen = chosen or mode
    return chosen or mode_class(DEFAULT_MODE)()


def mode_from_plan(plan: dict) -> RunMode:
    """The mode a run's plan record (events.jsonl's first line) names."""
    for name in MODES:
        if name != DEFAULT_MODE:
            mode = mode_class(name).from_plan(plan)
            if mode is not None:
                return mode
    return mode_class(DEFAULT_MODE)()


class RunMode(abc.ABC):
    """One way to run a job's ranks (see the module docstring)."""

    #: Its name (the key in MODES).
    name: ClassVar[str] = ""

    # -- the command line -----------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this mode's own options (their group titled after it) to the parser."""

    @classmethod
    def from_args(cls, args: argparse.Namespace, world: World) -> RunMode | None:
        """This mode, if the command line selects it, else None; raises UsageError when
        its options are used wrongly (also when it is not selected)."""
        return None

    def plan(self) -> dict:
        """What --dry-run --json and the run's plan record add about this mode."""
        return {}

    @classmethod
    def from_plan(cls, plan: dict) -> RunMode | None:
        """This mode, if a run's plan record (what plan() added to it) names it, else None."""
        return None

    def plan_lines(self, world: World) -> list[str]:
        """What the --dry-run text adds about this mode."""
        return []

    # -- starting -----------------------------------------------------------------------

    @abc.abstractmethod
    def new_model(self, world: World, run_id: str, tail_lines: int, clock: Clock) -> JobModel:
        """The job model that applies this mode's launcher events, on the job's clock."""

    @abc.abstractmethod
    def node_spec(self, world: World, node: Node, run_id: str, command: Command) -> dict:
        """This mode's part of a node's launcher spec: its "env" (the job's own exports are
        added to it), its "workers", and what else its node side reads."""

    def preflight_request(self, world: World, node: Node) -> dict:
        """This mode's part of a node's preflight request: by default, the first node
        checks that MASTER_PORT is free."""
        first = node.node_rank == 0 and not (world.share and world.share.node_rank)  # --no_ssh: node 0's console
        return {"master_port": world.master_port if first else None, "master_addr": world.master_addr}

    # -- following ----------------------------------------------------------------------

    @abc.abstractmethod
    def on_event(self, job: Job, node_rank: int, event: dict) -> bool:
        """Apply one event of the node's launcher (model, run directory, decisions);
        True when the job's state listeners should hear of it (not for log output)."""

    @abc.abstractmethod
    def on_channel_end(self, job: Job, node_rank: int, channel: NodeChannel) -> None:
        """The node's channel ended (its launcher is gone): what that means for the job."""

    def log_files(self, model: JobModel) -> list[tuple[RankState, str]]:
        """Each RankState of the model that has a log, with its file's path relative to the
        run directory (flextui.rundir names them). Default: rank-N.log for model.ranks[N]."""
        return [(rank, f"rank-{rank.rank}.log") for rank in model.ranks]

    # -- control ---------------------------------------------------------------------------

    @abc.abstractmethod
    def stop_node_commands(self, world: World, node_rank: int) -> list[dict]:
        """The launcher commands that stop a node's part of the job (the user's "stop node")."""
