"""A console's side of a supervised job: ClientJob, a JobProtocol over the supervisor's socket.

The Textual app and the headless printer take a ClientJob as they take a Job: its model
(a replica, mirror.py) holds the same state as the supervisor's, updated by the
supervisor's messages, and its controls are requests the supervisor carries out on the
real Job. It never decides anything about the job itself.

How a console leaves:

* `detach()`: the job runs on (the console's `D`; an attached console whose terminal
  closes or that gets SIGTERM, see `signals_detach`). A detached ClientJob's run()
  returns at once, and `detached` says so, so nobody stops or kills the job after it.
* the job ends: the supervisor sends the final state and "ended"; run() returns the
  job's exit code.
* the supervisor is gone without "ended" (SIGKILLed): the job's nodes stop by themselves
  (their channels closed); the replica says so — every node not done is lost, the error
  is "supervisor lost" — and run() returns.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from collections.abc import Callable

from flextui import wire
from flextui.job import STACKS_SLACK, STACKS_TIMEOUT
from flextui.mirror import Replica
from flextui.model import JobModel, RankState, RankStatus
from flextui.stacks import StackDump, build_dump


class AttachError(Exception):
    """A console cannot attach (refused, no supervisor there); one line."""


class ClientJob:
    """A job whose supervisor is another process (see the module docstring)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, snapshot: dict, *,
                 owner: bool, read_logs: bool, signals_detach: frozenset[int]) -> None:
        self.reader, self.writer = reader, writer
        self.owner = owner
        self.signals_detach = signals_detach
        self.run_id: str = snapshot["run_id"]
        self.supervisor_pid: int = snapshot["pid"]
        self.was_detached: bool = snapshot["detached"]  # started with --detach
        self._run_path: str = snapshot["run_path"]
        self._grace: float = snapshot["grace"]
        self.replica = Replica(snapshot["world"], self._run_path, read_logs=read_logs)
        self.replica.apply_snapshot(snapshot)
        self.world = self.replica.world
        self.model: JobModel = self.replica.model
        self.output_listeners: list[Callable[[int, list[str]], None]] = []
        self.state_listeners: list[Callable[[], None]] = []
        #: what other consoles did ("another console (pid N) aborted the job (SIGINT)")
        self.notices: list[str] = []
        self.detached = False
        self.ended = False
        self.lost: str | None = None  # why the supervisor is gone, if it went without "ended"
        self._stack_dumps: dict[int, asyncio.Future] = {}  # dump_stacks requests awaiting their answer

    # -- connecting ----------------------------------------------------------------------

    @classmethod
    async def open(cls, sock: socket.socket, *, owner: bool = False, role: str = "attach",
                   read_logs: bool = True, signals_detach: frozenset[int] = frozenset()) -> ClientJob:
        """Say hello on a connected socket and build the replica from the snapshot."""
        pid, uid = wire.peer_uid(sock)
        if uid != os.geteuid():
            sock.close()
            raise AttachError(f"the socket's owner is uid {uid}, not you: refusing to talk to it")
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=wire.MAX_REQUEST)
        writer.write(wire.json_frame({"op": "hello", "role": role, "pid": os.getpid()}))
        try:
            message = await wire.read_frame(reader, wire.MAX_MESSAGE, allow_pickle=True)
        except (wire.ProtocolError, OSError) as exc:
            writer.close()
            raise AttachError(f"the supervisor (pid {pid}) did not answer: {exc}") from None
        if isinstance(message, dict) and message.get("op") == "refused":
            writer.close()
            raise AttachError(message.get("reason") or "refused")
        if not (isinstance(message, tuple) and message[0] == "snapshot"):
            writer.close()
            raise AttachError(f"the supervisor (pid {pid}) closed the connection")
        return cls(reader, writer, message[1], owner=owner, read_logs=read_logs, signals_detach=signals_detach)

    @classmethod
    async def connect(cls, run_path: str, **kwargs) -> ClientJob:
        """Attach to the supervisor of the job in run_path."""
        path = os.path.join(run_path, wire.SOCKET_NAME)
        try:
            sock = wire.connect(path)
        except PermissionError:
            raise AttachError(f"{run_path}: permission denied (the run belongs to another user)") from None
        except OSError as exc:
            raise AttachError(f"{path}: {exc.strerror or exc}") from None
        return await cls.open(sock, **kwargs)

    # -- JobProtocol -------------------------------------------------------------------------

    @property
    def grace(self) -> float:
        return self._grace

    @property
    def run_path(self) -> str:
        """The run directory, relative to here when it is below the working directory."""
        relative = os.path.relpath(self._run_path)
        return relative if not relative.startswith("..") else self._run_path

    @property
    def finished(self) -> bool:
        return self.ended or self.lost is not None

    def log_file(self, state: RankState) -> str | None:
        """The file holding a RankState's whole log (its first state.log_bytes bytes are
        what the model holds)."""
        return self.replica.log_file(state)

    async def run(self) -> int:
        """Follow the supervisor until the job ends (its exit code), the console detaches,
        or the supervisor is gone."""
        try:
            while not self.detached:
                try:
                    message = await wire.read_frame(self.reader, wire.MAX_MESSAGE, allow_pickle=True)
                except (wire.ProtocolError, OSError) as exc:
                    if not self.detached:
                        self._lost(str(exc))
                    break
                if message is None:
                    if not self.detached:
                        self._lost("its connection closed")
                    break
                if self._received(message):
                    break
        finally:
            self.writer.close()
        return self.model.exit_code

    def _received(self, message) -> bool:
        """Apply one message; True when it was the last."""
        if not isinstance(message, tuple):
            return False
        kind, body = message
        if kind == "sync":
            published = self.replica.apply_diff(body)
            for rank, lines in published:
                for listener in self.output_listeners:
                    listener(rank, lines)
            if "state" in body:
                self._notify()
        elif kind == "notice":
            self.notices.append(str(body))
            self._notify()
        elif kind == "stacks" and isinstance(body, dict):
            waiting = self._stack_dumps.pop(body.get("id"), None)
            if waiting is not None and not waiting.done():
                waiting.set_result(body.get("dump"))
        elif kind == "ended":
            self.ended = True
            self._notify()
            return True
        return False

    def _lost(self, detail: str) -> None:
        """The supervisor went without a word: its nodes stopped when their channels closed."""
        model = self.model
        self.lost = f"supervisor lost (pid {self.supervisor_pid}): {detail}"
        if not model.state.finished:
            for node in model.nodes:
                if not node.done:
                    model.node_lost(node.node_rank, self.lost)
            model.error = model.error or self.lost
            model.finish()
        self._notify()

    def _notify(self) -> None:
        for listener in self.state_listeners:
            listener()

    def _request(self, request: dict) -> None:
        if not self.finished and not self.detached and not self.writer.is_closing():
            self.writer.write(wire.json_frame(request))

    def stop(self, reason: str, by_user: bool = False) -> None:
        self._request({"op": "stop", "reason": reason, "by_user": by_user})

    def abort(self, signum: int = signal.SIGINT) -> None:
        """Ctrl+C (or a signal to this console). A signal in `signals_detach` (an attached
        console's hangup or SIGTERM) detaches instead: the console goes, the job does not."""
        if signum in self.signals_detach:
            self.detach()
        else:
            self._request({"op": "abort", "signum": int(signum)})

    def kill(self) -> None:
        self._request({"op": "kill"})

    def stop_rank(self, rank: int) -> None:
        self._request({"op": "stop_rank", "rank": rank})

    def kill_rank(self, rank: int) -> None:
        self._request({"op": "kill_rank", "rank": rank})

    def stop_node(self, node_rank: int) -> None:
        self._request({"op": "stop_node", "node_rank": node_rank})

    async def dump_stacks(self, timeout: float = STACKS_TIMEOUT) -> StackDump:
        """The supervisor's job takes the dump (its nodes run py-spy) and sends it here."""
        running = [r.rank for r in self.model.current_ranks if r.status is RankStatus.RUNNING]
        if self.finished or self.detached or self.writer.is_closing():
            return build_dump(self.model.clock(), [], {"console": "not attached to a running job"}, running)
        request = len(self._stack_dumps) + 1
        while request in self._stack_dumps:
            request += 1
        answer = self._stack_dumps[request] = asyncio.get_running_loop().create_future()
        self._request({"op": "stacks", "id": request, "timeout": timeout})
        try:
            dump = await asyncio.wait_for(asyncio.shield(answer), timeout + 2 * STACKS_SLACK)
            if dump.path:  # where this console finds it
                dump.path = os.path.join(self.run_path, os.path.basename(dump.path))
            return dump
        except asyncio.TimeoutError:
            return build_dump(self.model.clock(), [], {"supervisor": "no stacks within "
                                                       f"{timeout + 2 * STACKS_SLACK:g}s"}, running)
        finally:
            self._stack_dumps.pop(request, None)

    def detach(self) -> None:
        """Leave the job running; this console's run() returns."""
        if self.detached or self.finished:
            return
        self._request({"op": "detach"})
        self.detached = True
        self.writer.close()  # the pending read ends
