"""Job orchestration across nodes: preflight, launch, follow events, stop. UI-free.

One remote command per node: its launcher checks the node (the spec's "preflight"),
reports, and starts nothing until every node passed and the job sends "go" (launch.py).

The Job owns one channel per node and feeds their events into the JobModel; the UI and
the headless printer read the model and call the Job's control methods (abort, kill,
stop_rank, stop_node). Nothing here knows how it is displayed.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from flextui import elastic
from flextui.elastic import ElasticConfig, ElasticJobModel
from flextui.errors import LaunchError  # the job layer's error: `from flextui.job import LaunchError`
from flextui.model import DEFAULT_TAIL_LINES, JobModel, JobState, RankStatus
from flextui.rundir import RunDir
from flextui.transport import Backend, NodeChannel
from flextui.world import Command, Node, World

#: Called with (rank, completed display lines) for every chunk of output.
OutputListener = Callable[[int, list[str]], None]

#: How long a started launcher may take to report its preflight (its checks include a
#: module lookup bounded at 120 s on the node).
PREFLIGHT_TIMEOUT = 150.0


@dataclass
class JobConfig:
    world: World
    command: Command
    log_root: str = "flextui-runs"
    grace: float = 10.0
    cwd: str | None = None  # working directory on the nodes; default: the console's
    env: dict[str, str] = field(default_factory=dict)  # exported to every worker
    tail_lines: int = DEFAULT_TAIL_LINES
    remote_log_root: str = "/tmp/flextui-runs"
    # A node that hears nothing from the console for this long stops its job: a silently
    # dropped network closes no channel. The console pings three times per period.
    node_timeout: float = 30.0
    elastic: ElasticConfig | None = None  # --elastic: torch's elastic agent on every node


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Job:
    def __init__(self, config: JobConfig, backend: Backend, run_id: str | None = None) -> None:
        self.config = config
        self.world = config.world
        self.run_id = run_id or new_run_id()
        if config.elastic is not None:
            self.model: JobModel = ElasticJobModel(self.world, self.run_id, config.elastic, config.tail_lines)
        else:
            self.model = JobModel(self.world, self.run_id, config.tail_lines)
        self.run_dir = RunDir(config.log_root, self.run_id)
        self.backend = backend
        self.channels: dict[int, NodeChannel] = {}
        # Each channel's one event iterator: read up to "preflight" first, then followed.
        self._events: dict[int, AsyncIterator[dict]] = {}
        self._early_events: list[dict] = []  # hello/preflight, recorded once the run dir exists
        self._heartbeat_task: asyncio.Future | None = None
        self.output_listeners: list[OutputListener] = []
        self.state_listeners: list[Callable[[], None]] = []
        self._finished = asyncio.Event()
        self._preflighted = False
        self._kill_requested = False

    # -- running --------------------------------------------------------------------

    async def preflight(self) -> None:
        """Start every node's launcher, which checks its node and then waits for "go";
        raises LaunchError (one line) if any node cannot run the job, after ending every
        launcher it started (none of them started anything).

        Separate from run() so a UI can fail cleanly before it takes over the screen.
        """
        if self._preflighted:
            return
        try:
            await self._preflight_all()
        except LaunchError as exc:
            self.model.error = str(exc)
            await self._abandon_started()
            self.model.finish()
            self._finished.set()
            raise
        self._preflighted = True

    async def run(self) -> int:
        """Preflight every node, then let every launcher go, follow until every node is done."""
        await self.preflight()
        try:
            try:
                self.run_dir.create()
            except OSError as exc:
                raise LaunchError(f"cannot create the run directory {self.run_dir.path}: "
                                  f"{exc.strerror or exc}") from None
            plan = {"ev": "plan", **self.world.plan(), "run_id": self.run_id}
            if self.config.elastic is not None:
                plan["elastic"] = self.config.elastic.plan()
            self.run_dir.record(plan)
            for event in self._early_events:
                self.run_dir.record(event)
        except LaunchError as exc:
            self.model.error = str(exc)
            await self._abandon_started()
            self.model.finish()
            self._finished.set()
            self._notify()
            raise
        if self.model.stop_started_at is not None:
            # Stopped (Ctrl+C) during the preflight: nothing starts anywhere.
            for channel in self.channels.values():
                channel.send({"cmd": "kill"} if self._kill_requested
                             else {"cmd": "stop", "reason": self.model.stop_reason})
        else:
            for channel in self.channels.values():
                channel.send({"cmd": "go"})
        self.model.state = JobState.LAUNCHING
        self._notify()
        try:
            follow = self._follow_elastic if self.config.elastic is not None else self._follow
            await asyncio.gather(*(follow(n, ch) for n, ch in self.channels.items()))
        finally:
            self._stop_heartbeat()
            await self._close_channels()
            self.model.finish()
            self.run_dir.record({"ev": "finished", "state": self.model.state.value,
                                 "exit_code": self.model.exit_code, "t": time.time()})
            self.run_dir.write_summary(self.model.summary())
            self.run_dir.close()
            self._finished.set()
            self._notify()
        return self.model.exit_code

    async def wait(self) -> int:
        await self._finished.wait()
        return self.model.exit_code

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def _preflight_request(self, node: Node) -> dict:
        cmd = self.config.command
        request = {
            "cwd": self.config.cwd or os.getcwd(),
            "script": cmd.script,
            "module": cmd.module,
            "no_python": cmd.no_python,
            "need_psutil": True,
            "master_port": self.world.master_port if node.node_rank == 0 else None,
        }
        if self.config.elastic is not None:
            request["need_torch"] = True
            host = elastic.rendezvous_host(self.world)
            request["master_port"] = self.world.master_port if node.node_rank == host.node_rank else None
        return request

    async def _preflight_all(self) -> None:
        """Start every launcher (the backend bounds its fan-out) and read each one's
        events up to its preflight report; the first node (in node order) that cannot run
        the job is the error."""
        self._heartbeat_task = asyncio.ensure_future(self._heartbeat())  # pings from the first channel on
        specs = [(node, self._launch_spec(node)) for node in self.world.nodes]
        errors: dict[int, BaseException] = {}
        checks: dict[int, asyncio.Future] = {}
        async for node, opened in self.backend.open_nodes(specs):
            if isinstance(opened, BaseException):
                errors[node.node_rank] = opened
            else:
                self.channels[node.node_rank] = opened
                checks[node.node_rank] = asyncio.ensure_future(self._preflight_report(node, opened))
        for node_rank, result in zip(checks, await asyncio.gather(*checks.values(), return_exceptions=True)):
            if isinstance(result, BaseException):
                errors[node_rank] = result
        for node_rank in sorted(errors):
            error = errors[node_rank]
            raise error if isinstance(error, LaunchError) else LaunchError(str(error))

    def _launch_spec(self, node: Node) -> dict:
        """What the node's launcher gets (flextui.launch documents it)."""
        return {**self._node_spec(node), "preflight": self._preflight_request(node)}

    async def _preflight_report(self, node: Node, channel: NodeChannel) -> None:
        """Read the node's events up to its preflight report; raise LaunchError unless it passed."""
        events = self._events[node.node_rank] = aiter(channel.events())
        try:
            report = await asyncio.wait_for(self._until_preflight(node, events), PREFLIGHT_TIMEOUT)
        except asyncio.TimeoutError:
            raise LaunchError(f"{node.host}: no preflight report within {PREFLIGHT_TIMEOUT:g}s") from None
        except (OSError, ConnectionError) as exc:
            raise LaunchError(f"{node.host}: {exc}") from None
        if report is None:  # the launcher ended without a word: it never ran
            detail = channel.diagnostics() or "launcher ended before its preflight"
            raise LaunchError(f"{node.host}: {detail.splitlines()[-1]}")
        if report.get("problems"):
            raise LaunchError(f"{node.host}: {report['problems'][0]}")

    async def _until_preflight(self, node: Node, events: AsyncIterator[dict]) -> dict | None:
        async for event in events:
            kind = event.get("ev")
            if kind == "preflight":
                self._early_events.append({"node": node.node_rank, **event})
                return event
            if kind == "hello":
                self.model.apply(node.node_rank, event)
                self._early_events.append({"node": node.node_rank, **event})
        return None

    def _node_spec(self, node: Node) -> dict:
        if self.backend.shares_run_dir(node):
            log_dir = os.path.abspath(self.run_dir.path)
        else:
            log_dir = f"{self.config.remote_log_root}/{self.run_id}"
        cmd = self.config.command
        spec = {
            "run_id": self.run_id,
            "node_rank": node.node_rank,
            "log_dir": log_dir,
            "cwd": self.config.cwd or os.getcwd(),
            "grace": self.config.grace,
            "console_timeout": self.config.node_timeout,
            "command": cmd.node_command(),  # the script's arguments once, not once per rank
        }
        if self.config.elastic is not None:
            return {
                **spec,
                "env": {**self.config.env, **elastic.node_env(node)},
                "workers": [],
                "elastic": {
                    "agent": elastic.agent_argv(cmd.python, self.world, node, self.run_id, self.config.elastic),
                    "python": cmd.python,
                    "nproc": len(node.slots),
                },
            }
        return {
            **spec,
            "env": {**self.config.env, **self.world.node_env(node)},
            "workers": [
                {
                    "rank": info.rank,
                    "local_rank": info.local_rank,
                    "env": {"RANK": str(info.rank), "LOCAL_RANK": str(info.local_rank)},
                }
                for info in self.world.ranks[node.first_rank : node.first_rank + len(node.slots)]
            ],
        }

    async def _follow(self, node_rank: int, channel: NodeChannel) -> None:
        copy_logs = not self.backend.shares_run_dir(self.world.nodes[node_rank])
        model, run_dir = self.model, self.run_dir
        async for event in self._node_events(node_rank):
            if event.get("ev") == "out":
                if copy_logs:
                    run_dir.write_log(event["rank"], event["data"])
                self._publish(event["rank"], model.apply(node_rank, event))
                continue
            self._publish(event.get("rank"), model.apply(node_rank, event))
            run_dir.record({"node": node_rank, **event})
            if copy_logs and event.get("ev") == "exited":
                run_dir.flush_logs()
            if model.must_stop:
                first = model.first_failure
                reason = f"rank {first.rank} failed" if first else "a node was lost"
                self.stop(reason)
            self._notify()
        interrupted = channel.interruption()
        if interrupted:  # e.g. the Slurm job was cancelled: the job fails with that reason
            self._interrupted(node_rank, interrupted)
        reason = self._lost_unless_done(node_rank, channel)
        if reason is not None:
            if model.must_stop:
                self.stop(reason)
            self._notify()

    async def _node_events(self, node_rank: int) -> AsyncIterator[dict]:
        """The node's events until its channel ends. Only an error reading the channel is
        the node's (kept as why it ended); one while handling an event is the console's own
        (its output, its run directory) and must never be blamed on a node."""
        events = self._events[node_rank]
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            except (OSError, ConnectionError) as exc:
                self.model.nodes[node_rank].error = str(exc)
                return
            yield event

    def _lost_unless_done(self, node_rank: int, channel: NodeChannel) -> str | None:
        """The channel ended: a node that never said "done" is lost. Returns why, if so."""
        node = self.model.nodes[node_rank]
        if node.done:
            return None
        detail = node.error or channel.diagnostics() or "connection closed"
        reason = f"node {node.host} lost: {detail.splitlines()[-1]}"
        self.model.node_lost(node_rank, reason)
        self.run_dir.record({"ev": "node_lost", "node": node_rank, "reason": reason, "t": time.time()})
        return reason

    def _publish(self, rank: int, lines: list[str] | None) -> None:
        if lines:
            for listener in self.output_listeners:
                listener(rank, lines)

    def _interrupted(self, node_rank: int, reason: str) -> None:
        """The node's launcher was ended from outside (scancel, a time limit). Whoever ends a
        step signals every process in it at once, so a rank that died of SIGTERM or SIGKILL
        may have died before its launcher began stopping: it was stopped, not a failure."""
        model = self.model
        model.error = model.error or reason
        for rank in model.ranks:
            if rank.status is RankStatus.KILLED and rank.signal in (signal.SIGTERM, signal.SIGKILL):
                rank.stopped = True
        failures = [r for r in model.ranks if r.status in (RankStatus.FAILED, RankStatus.KILLED) and not r.stopped]
        model.first_failure = min(failures, key=lambda r: r.ended_at or 0, default=None)
        self.run_dir.record({"ev": "interrupted", "node": node_rank, "reason": reason, "t": time.time()})
        self.stop(reason)
        self._notify()

    async def _follow_elastic(self, node_rank: int, channel: NodeChannel) -> None:
        """Like _follow for --elastic: logs go to attempt-<k>/rank-<N>.log; a lost node or
        a failed rank does not stop the job (torch's agents re-rendezvous), see elastic.py."""
        model, run_dir = self.model, self.run_dir
        host = self.world.nodes[node_rank].host
        async for event in self._node_events(node_rank):
            kind = event.get("ev")
            if kind == "out":
                attempt = model.attempt_of(node_rank, event.get("seq"))
                if attempt is not None:
                    run_dir.write_attempt_log(attempt.number, event["rank"], event["data"])
                self._publish(event["rank"], model.apply(node_rank, event))
                continue
            if kind == "agent_out":
                run_dir.write_agent_log(host, event["data"])
                model.apply(node_rank, event)
                continue
            current = model.current_attempt
            self._publish(event.get("rank"), model.apply(node_rank, event))
            record = {"node": node_rank, **event}
            if kind == "attempt":
                record["attempt"] = model.attempt_of(node_rank, event["seq"]).number
                if model.current_attempt is not current and current is not None:
                    run_dir.close_attempt_logs(current.number)
            elif kind == "exited":
                run_dir.flush_logs()
            run_dir.record(record)
            self._elastic_decide()
            self._notify()
        self._lost_unless_done(node_rank, channel)
        self._elastic_decide()
        self._notify()

    def _elastic_decide(self) -> None:
        """After a node left (or ended badly): stop the job if too few nodes are left, else
        stop the survivors' workers of its rounds so their agents re-rendezvous now."""
        model = self.model
        cause = model.stop_cause()
        if cause is not None:
            self.stop(cause)
            return
        for attempt in model.take_doomed_attempts():
            self.run_dir.record({"ev": "stop_attempt", "attempt": attempt.number,
                                 "reason": attempt.doomed, "t": time.time()})
            command = {"cmd": "stop_attempt", "master": attempt.master,
                       "world_size": attempt.world_size, "reason": attempt.doomed}
            for node_rank in model.active_nodes():
                channel = self.channels.get(node_rank)
                if channel is not None:
                    channel.send(command)

    async def _heartbeat(self) -> None:
        if self.config.node_timeout <= 0:
            return
        while True:
            await asyncio.sleep(self.config.node_timeout / 3)
            for channel in self.channels.values():
                channel.send({"cmd": "ping"})

    def _stop_heartbeat(self) -> None:
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            self._heartbeat_task = None

    async def _abandon_started(self) -> None:
        """The job cannot run: end every launcher started (those waiting for "go" end with
        nothing started) and wait, bounded, until they are gone."""
        self._stop_heartbeat()
        for channel in self.channels.values():
            channel.send({"cmd": "kill", "reason": "another node failed to start"})

        async def drain(node_rank: int, channel: NodeChannel) -> None:
            events = self._events.get(node_rank)
            if events is None:
                events = self._events[node_rank] = aiter(channel.events())
            async for _ in events:
                pass

        try:
            await asyncio.wait_for(
                asyncio.gather(*(drain(n, c) for n, c in self.channels.items()), return_exceptions=True),
                timeout=self.config.grace + 5,
            )
        except asyncio.TimeoutError:
            pass
        await self._close_channels()

    async def _close_channels(self) -> None:
        for channel in self.channels.values():
            await channel.close()
        await self.backend.close()

    # -- control (called by UI / signal handlers) -----------------------------------------

    def stop(self, reason: str, by_user: bool = False) -> None:
        """Graceful stop of every node at once: SIGTERM trees, SIGKILL after the grace."""
        if self.model.begin_stop(reason, self.config.grace, by_user):
            self.run_dir.record({"ev": "stop", "reason": reason, "by_user": by_user, "t": time.time()})
            for channel in self.channels.values():
                channel.send({"cmd": "stop", "reason": reason})
            self._notify()

    def abort(self, signum: int = signal.SIGINT) -> None:
        """The user's Ctrl+C (or SIGTERM/SIGHUP to the console): the first one stops
        gracefully, the next one kills. The job then exits 128 + signum, as a shell expects."""
        if self.model.stop_started_at is None:
            self.model.abort_signal = signum
            self.stop(f"aborted by user ({signal.Signals(signum).name})", by_user=True)
        else:
            self.kill()

    def kill(self) -> None:
        self._kill_requested = True
        self.model.begin_stop("killed by user", 0.0, by_user=True)
        for channel in self.channels.values():
            channel.send({"cmd": "kill"})
        self._notify()

    def stop_rank(self, rank: int) -> None:
        """Stop one rank (in --elastic: of the current attempt; its agent then restarts)."""
        if self.config.elastic is not None:
            node_rank = self.model.ranks[rank].info.node_rank if rank < len(self.model.ranks) else -1
        else:
            node_rank = self.world.ranks[rank].node_rank
        channel = self.channels.get(node_rank)
        if channel is not None:
            channel.send({"cmd": "stop_rank", "rank": rank})

    def stop_node(self, node_rank: int) -> None:
        """Stop a node's ranks. In --elastic: take the node out of the job (its agent
        stops; the others re-rendezvous without it if --min_nodes allows)."""
        channel = self.channels.get(node_rank)
        if channel is not None and self.config.elastic is not None:
            channel.send({"cmd": "stop", "reason": "node taken out of the job by the user"})
        elif channel is not None:
            for rank in self.world.nodes[node_rank].ranks:
                channel.send({"cmd": "stop_rank", "rank": rank})

    def _notify(self) -> None:
        for listener in self.state_listeners:
            listener()

