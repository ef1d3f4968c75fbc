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
from typing import Protocol, runtime_checkable

from flextui.errors import LaunchError  # the job layer's error: `from flextui.job import LaunchError`
from flextui.model import DEFAULT_STALL_AFTER, DEFAULT_TAIL_LINES, Clock, JobModel, JobState, RankState, RankStatus
from flextui.modes import RunMode
from flextui.modes.fixed import FixedMode
from flextui.rundir import RunDir
from flextui.stacks import StackDump, build_dump, dump_text, rank_stack
from flextui.transport import Backend, NodeChannel
from flextui.world import Command, Node, World

#: Called with (rank, completed display lines) for every chunk of output.
OutputListener = Callable[[int, list[str]], None]


#: Seconds between a node launcher's samples of what its ranks use (CPU, memory, GPU).
SAMPLE_INTERVAL = 2.0
#: Seconds py-spy may take on one process; the job waits this much longer for a node.
STACKS_TIMEOUT = 10.0
STACKS_SLACK = 5.0


@runtime_checkable
class JobProtocol(Protocol):
    """What a console (the Textual UI) needs of a job: the state it draws and the controls
    it calls. Job is the real one; flextui.ui.testing.FakeJob, the UI's test double, is the
    other (tests/test_job_protocol.py holds both to these signatures)."""

    world: World
    run_id: str
    model: JobModel

    @property
    def grace(self) -> float:
        """Seconds from SIGTERM to SIGKILL when the job stops."""

    @property
    def run_path(self) -> str:
        """The run directory: rank logs, events.jsonl, summary.json."""

    async def run(self) -> int:
        """Run the job to its end; its exit code. Raises LaunchError if it cannot start."""

    def stop(self, reason: str, by_user: bool = False) -> None:
        """Stop every rank: SIGTERM, SIGKILL after the grace."""

    def abort(self, signum: int = signal.SIGINT) -> None:
        """The user's Ctrl+C (or this signal to the console): stop; again: kill."""

    def kill(self) -> None:
        """SIGKILL every rank now."""

    def stop_rank(self, rank: int) -> None:
        """Stop one rank."""

    def kill_rank(self, rank: int) -> None:
        """SIGKILL one rank now."""

    def stop_node(self, node_rank: int) -> None:
        """Stop a node's ranks."""

    async def dump_stacks(self, timeout: float = STACKS_TIMEOUT) -> StackDump:
        """The Python stack of every running rank, grouped (flextui.stacks); also written
        to the run directory."""

    def log_file(self, state: RankState) -> str | None:
        """The file (absolute path) holding a RankState's whole log, or None: its first
        state.log_bytes bytes are what the model holds (the log view reads the rest)."""

#: Seconds from SIGTERM to SIGKILL when the job stops (--grace). Launchers get it in their spec.
DEFAULT_GRACE = 10.0
#: A node that hears nothing from the console for this long stops its job (--node_timeout).
DEFAULT_NODE_TIMEOUT = 30.0

#: How long a started launcher may take to report its preflight (its checks include a
#: module lookup bounded at 120 s on the node).
PREFLIGHT_TIMEOUT = 150.0


@dataclass
class JobConfig:
    world: World
    command: Command
    log_root: str = "flextui-runs"
    grace: float = DEFAULT_GRACE
    cwd: str | None = None  # working directory on the nodes; default: the console's
    env: dict[str, str] = field(default_factory=dict)  # exported to every worker
    tail_lines: int = DEFAULT_TAIL_LINES
    remote_log_root: str = "/tmp/flextui-runs"
    # A node that hears nothing from the console for this long stops its job: a silently
    # dropped network closes no channel. The console pings three times per period.
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    mode: RunMode = field(default_factory=FixedMode)  # how ranks run: fixed, elastic (modes/)
    # More of every node's spec, as flextui.launch documents it: the env files' "exports"
    # and "env_file", DeepSpeed's "bind_cores" and "rank_log".
    node_options: dict = field(default_factory=dict)
    stall_after: float = DEFAULT_STALL_AFTER  # a running rank silent this long is "stalled?"
    stacks_on_stall: bool = False  # dump every rank's stack once, when a stall is first flagged
    sample_interval: float = SAMPLE_INTERVAL  # seconds between node launchers' samples


def new_run_id(now: float) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3)


class Job:
    def __init__(self, config: JobConfig, backend: Backend, run_id: str | None = None,
                 clock: Clock = time.time) -> None:
        self.clock = clock  # the job's only source of time (its model's too)
        self.config = config
        self.world = config.world
        self.run_id = run_id or new_run_id(clock())
        self.mode = config.mode
        self.model: JobModel = self.mode.new_model(self.world, self.run_id, config.tail_lines, clock)
        self.model.stall_after = config.stall_after
        self.run_dir = RunDir(config.log_root, self.run_id, on_failure=self._run_dir_failed)
        self.backend = backend
        #: Whether the console keeps a node's rank logs from its events (the node writes
        #: them elsewhere); else they are already in the run directory.
        self.copy_logs = {node.node_rank: not backend.shares_run_dir(node) for node in self.world.nodes}
        self.channels: dict[int, NodeChannel] = {}
        # Each channel's one event iterator: read up to "preflight" first, then followed.
        self._events: dict[int, AsyncIterator[dict]] = {}
        self._early_events: list[dict] = []  # hello/preflight, recorded once the run dir exists
        self._heartbeat_task: asyncio.Future | None = None
        self.output_listeners: list[OutputListener] = []
        self.state_listeners: list[Callable[[], None]] = []
        self.stall_listeners: list[Callable[[list[RankState]], None]] = []  # ranks flagged just now
        self.stacks_listeners: list[Callable[[StackDump], None]] = []  # every dump, once taken
        self._stack_requests: dict[int, _StackRequest] = {}
        self._stacks_asked = 0
        self._stall_dumped = False
        self._tasks: set[asyncio.Future] = set()  # the stall watch, dumps: cancelled at the end
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
                self.run_dir.create(self.world.world_size)
            except OSError as exc:
                raise LaunchError(f"cannot create the run directory {self.run_dir.path}: "
                                  f"{exc.strerror or exc}") from None
            self.run_dir.record({"ev": "plan", **self.world.plan(), "run_id": self.run_id, **self.mode.plan()})
            for event in self._early_events:
                self.run_dir.record(event)
        except LaunchError as exc:
            self.model.error = str(exc)
            await self._abandon_started()
            self.model.finish()
            self._finished.set()
            self.notify()
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
        self.notify()
        self._tasks.add(asyncio.ensure_future(self._watch_stalls()))
        try:
            await asyncio.gather(*(self._follow(n, ch) for n, ch in self.channels.items()))
        finally:
            for task in self._tasks:
                task.cancel()
            self._stop_heartbeat()
            await self._close_channels()
            self.model.finish()
            self.run_dir.record({"ev": "finished", "state": self.model.state.value,
                                 "exit_code": self.model.exit_code, "t": self.clock()})
            self.run_dir.write_summary(self.model.summary())
            self.run_dir.close()
            self._finished.set()
            self.notify()
        return self.model.exit_code

    @property
    def grace(self) -> float:
        return self.config.grace

    @property
    def run_path(self) -> str:
        return self.run_dir.path

    def log_file(self, state: RankState) -> str | None:
        for owner, relative in self.mode.log_files(self.model):
            if owner is state:
                return os.path.abspath(os.path.join(self.run_path, relative))
        return None

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
            **self.mode.preflight_request(self.world, node),
        }
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
        spec = self._node_spec(node)
        request = self._preflight_request(node)
        if self.copy_logs[node.node_rank]:  # not our run directory, which we check ourselves
            request["log_dir"] = spec["log_dir"]
        return {**spec, "preflight": request}

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
        if not self.copy_logs[node.node_rank]:
            log_dir = os.path.abspath(self.run_dir.path)
        else:
            log_dir = f"{self.config.remote_log_root}/{self.run_id}"
        cmd = self.config.command
        mode_spec = self.mode.node_spec(self.world, node, self.run_id, cmd)
        return {
            "run_id": self.run_id,
            "mode": self.mode.name,  # the same mode runs the node side (flextui.launch.MODES)
            "node_rank": node.node_rank,
            "log_dir": log_dir,
            "cwd": self.config.cwd or os.getcwd(),
            "grace": self.config.grace,
            "console_timeout": self.config.node_timeout,
            "command": cmd.node_command(),  # the script's arguments once, not once per rank
            "sample_interval": self.config.sample_interval,
            **self.config.node_options,
            **mode_spec,
            "env": {**self.config.env, **mode_spec["env"]},
        }

    async def _follow(self, node_rank: int, channel: NodeChannel) -> None:
        """Feed the node's events to the mode until its channel ends (see flextui.modes)."""
        on_event = self.mode.on_event
        async for event in self._node_events(node_rank):
            kind = event.get("ev")
            if kind == "sample":  # every few seconds: the model only (not events.jsonl)
                self.model.apply(node_rank, event)
            elif kind in ("stack", "stacks"):
                self._stack_answer(node_rank, event)
            elif on_event(self, node_rank, event):
                self.notify()
        self.mode.on_channel_end(self, node_rank, channel)
        for request in self._stack_requests.values():
            request.answered(node_rank)

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

    # -- what run modes use (flextui.modes) ---------------------------------------------

    def node_ended(self, node_rank: int, channel: NodeChannel) -> str | None:
        """The channel ended: a node that never said "done" is lost. Returns why, if so."""
        node = self.model.nodes[node_rank]
        if node.done:
            return None
        detail = node.error or channel.diagnostics() or "connection closed"
        reason = f"node {node.host} lost: {detail.splitlines()[-1]}"
        self.model.node_lost(node_rank, reason)
        self.record({"ev": "node_lost", "node": node_rank, "reason": reason, "t": self.clock()})
        return reason

    def publish(self, rank: int, lines: list[str] | None) -> None:
        """Completed display lines of a rank, to the output listeners."""
        if lines:
            for listener in self.output_listeners:
                listener(rank, lines)

    def record(self, event: dict) -> None:
        """One line of the run directory's events.jsonl."""
        self.run_dir.record(event)

    def send(self, node_ranks: list[int], command: dict) -> None:
        """A command to the launchers of these nodes (those with a channel)."""
        for node_rank in node_ranks:
            channel = self.channels.get(node_rank)
            if channel is not None:
                channel.send(command)

    def notify(self) -> None:
        """Tell the state listeners (UI, headless printer) that the model changed."""
        for listener in self.state_listeners:
            listener()

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
            self.record({"ev": "stop", "reason": reason, "by_user": by_user, "t": self.clock()})
            for channel in self.channels.values():
                channel.send({"cmd": "stop", "reason": reason})
            self.notify()

    def _run_dir_failed(self, reason: str) -> None:
        """The console cannot record the run (its disk is full, say): stop it, saying why.
        Remote nodes keep their own copy of every log."""
        self.model.error = self.model.error or reason
        self.stop(reason)

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
        self.notify()

    def stop_rank(self, rank: int) -> None:
        """Stop one rank (in --elastic: of the current attempt; its agent then restarts)."""
        ranks = self.model.ranks
        if 0 <= rank < len(ranks):
            self.send([ranks[rank].info.node_rank], {"cmd": "stop_rank", "rank": rank})

    def kill_rank(self, rank: int) -> None:
        """SIGKILL one rank's process tree now, no grace (the Kill rank button)."""
        ranks = self.model.ranks
        if 0 <= rank < len(ranks):
            self.send([ranks[rank].info.node_rank], {"cmd": "kill_rank", "rank": rank})

    def stop_node(self, node_rank: int) -> None:
        """Stop a node's ranks (in --elastic: take the node out of the job)."""
        for command in self.mode.stop_node_commands(self.world, node_rank):
            self.send([node_rank], command)

    # -- diagnosis: stalls and stacks ------------------------------------------------------

    async def _watch_stalls(self) -> None:
        """Flag ranks silent for --stall_after (model.update_stalls) as it happens: tell the
        stall listeners (headless prints a line per rank), record it, and with
        --stacks_on_stall dump every rank's stack, once."""
        stall_after = self.model.stall_after
        if not stall_after or stall_after <= 0:
            return
        period = min(1.0, max(0.1, stall_after / 5))
        while True:
            await asyncio.sleep(period)
            now = self.clock()
            flagged = self.model.update_stalls(now)
            if not flagged:
                continue
            self.record({"ev": "stalled", "ranks": [r.rank for r in flagged],
                         "collective": self.model.collective_hang(now), "t": now})
            for listener in self.stall_listeners:
                listener(flagged)
            if self.config.stacks_on_stall and not self._stall_dumped:
                self._stall_dumped = True
                self._tasks.add(asyncio.ensure_future(self.dump_stacks()))
            self.notify()

    async def dump_stacks(self, timeout: float = STACKS_TIMEOUT) -> StackDump:
        """Every running rank's Python stack: each node's launcher runs py-spy on its own
        workers and their children (all nodes at once, `timeout` s per process); grouped
        by stack (flextui.stacks), written to the run directory as stacks-HHMMSS.txt and
        handed to the stacks listeners. Never raises for a node that cannot: the dump says
        which nodes gave nothing and why (py-spy missing, no answer in time)."""
        model = self.model
        asked_at = self.clock()
        running = [r for r in model.current_ranks if r.status is RankStatus.RUNNING and r.info.node_rank >= 0]
        nodes = sorted({r.info.node_rank for r in running
                        if r.info.node_rank in self.channels and not model.nodes[r.info.node_rank].done})
        self._stacks_asked += 1
        request_id = self._stacks_asked
        request = self._stack_requests[request_id] = _StackRequest(nodes)
        self.send(nodes, {"cmd": "stacks", "id": request_id, "timeout": timeout})
        waited = timeout + STACKS_SLACK
        try:
            await asyncio.wait_for(request.complete.wait(), waited)
        except asyncio.TimeoutError:
            pass
        finally:
            del self._stack_requests[request_id]
        errors = dict(request.errors)
        for node_rank in nodes:
            host = model.nodes[node_rank].host
            if node_rank not in request.done and host not in errors:
                errors[host] = f"no answer within {waited:g}s"
        stacks = [rank_stack(event, model.nodes[node_rank].host) for node_rank, event in request.stacks]
        dump = build_dump(asked_at, stacks, errors, [r.rank for r in running])
        name = time.strftime("stacks-%H%M%S", time.localtime(asked_at))
        dump.path = self.run_dir.write_text(name, ".txt", dump_text(dump, self.run_id))
        self.record({"ev": "stacks", "file": os.path.basename(dump.path) if dump.path else None,
                     "groups": [g.ranks for g in dump.groups], "errors": errors, "t": self.clock()})
        for listener in self.stacks_listeners:
            listener(dump)
        return dump

    def _stack_answer(self, node_rank: int, event: dict) -> None:
        request = self._stack_requests.get(event.get("id"))
        if request is None:
            return  # a late answer to a dump already taken
        if event["ev"] == "stack":
            request.stacks.append((node_rank, event))
            return
        if event.get("error"):
            request.errors[self.model.nodes[node_rank].host] = event["error"]
        request.answered(node_rank)


class _StackRequest:
    """One dump_stacks: the nodes asked, what came back."""

    def __init__(self, nodes: list[int]) -> None:
        self.asked = set(nodes)
        self.done: set[int] = set()
        self.stacks: list[tuple[int, dict]] = []
        self.errors: dict[str, str] = {}
        self.complete = asyncio.Event()
        if not nodes:
            self.complete.set()

    def answered(self, node_rank: int) -> None:
        """That node is finished with it (it answered, or its channel ended)."""
        if node_rank in self.asked:
            self.done.add(node_rank)
            if self.done >= self.asked:
                self.complete.set()
