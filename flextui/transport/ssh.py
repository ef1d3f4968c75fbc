"""SSH backend (`--launcher ssh`, the default): the hosts of a hostfile, one asyncssh
connection per node, the node launcher on a session channel.

asyncssh reads ~/.ssh/config (HostName, Port, User, IdentityFile, ProxyJump, ...),
known_hosts (also UserKnownHostsFile) and the ssh agent, and checks host keys strictly:
an unknown or changed key is an error, never silently accepted. A host that names this
machine (localhost, its hostname) gets a local subprocess instead (transport/local.py).

The launcher's source is shipped with the command (it is stdlib + psutil only), so nodes
need a python with psutil but not flextui itself, and can never run a stale version. The
node's spec is the first line on the channel's stdin, never in the command: any number of
ranks and any size of script arguments fit. It is the only remote command per node: the
launcher also runs the preflight checks, so a node costs one login shell and one python
start.
Its life is tied to the channel: when the channel closes (console killed, network
dropped, sshd gone) its stdin reaches EOF and it stops every process it started.

asyncssh is imported when the first remote node is opened: the parser imports every
backend for its options, and a job on this machine alone never needs it.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import socket
import sys
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from flextui import launch
from flextui.errors import LaunchError
from flextui.transport import (
    Backend, NodeChannel, decode_event, encode_command, inline_program, spec_message,
)
from flextui.transport.local import LocalBackend, is_local_host
from flextui.world import Node

if TYPE_CHECKING:
    import asyncssh
else:
    asyncssh = None  # the module, once _load_asyncssh() ran (before any connection)


def _load_asyncssh() -> None:
    global asyncssh
    if asyncssh is None:
        import asyncssh as module  # noqa: PLC0415 - see the module docstring

        asyncssh = module

KEEPALIVE_COUNT_MAX = 3
READ_SIZE = 1 << 18


LAUNCHER_PROGRAM = inline_program(launch)
STDERR_KEEP = 16 << 10  # the tail of the launcher's stderr kept for error messages


def remote_command(cwd: str | None, argv: list[str]) -> str:
    """One shell line for the remote login shell; every argument quoted, nothing expands."""
    line = "exec " + " ".join(shlex.quote(arg) for arg in argv)
    return f"cd {shlex.quote(cwd)} && {line}" if cwd else line


def describe_error(host: str, exc: BaseException, timeout: float) -> str:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return f"{host}: host key verification failed ({exc.reason}); check known_hosts"
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"{host}: authentication refused ({exc.reason})"
    if isinstance(exc, socket.gaierror):
        return f"{host}: unknown host ({exc.strerror})"
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return f"{host}: unreachable (connection timed out after {timeout:g}s)"
    if isinstance(exc, ConnectionRefusedError):
        return f"{host}: unreachable (connection refused)"
    if isinstance(exc, OSError):
        return f"{host}: unreachable ({exc.strerror or exc})"
    if isinstance(exc, asyncssh.Error):
        return f"{host}: ssh error ({exc.reason})"
    return f"{host}: {exc}"


class SSHChannel(NodeChannel):
    def __init__(self, node: Node, process: asyncssh.SSHClientProcess, python: str) -> None:
        super().__init__(node)
        self.process = process
        self.python = python
        self._stderr = b""
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

    async def _collect_stderr(self) -> None:
        try:
            while chunk := await self.process.stderr.read(READ_SIZE):
                self._stderr = (self._stderr + chunk)[-STDERR_KEEP:]
        except (asyncssh.Error, OSError):
            pass

    async def events(self) -> AsyncIterator[dict]:
        # Our own framing: asyncssh's readline() hands back a partial line once a line
        # outgrows the channel's receive window (2 MiB), and an event would be lost.
        stdout = self.process.stdout
        pending = b""
        while True:
            try:
                chunk = await stdout.read(READ_SIZE)
            except (asyncssh.Error, OSError):
                return
            if not chunk:
                break
            if b"\n" not in chunk:
                pending += chunk
                continue
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                event = decode_event(line)
                if event is not None:
                    yield event
        # EOF: the exit status (and stderr) follow it, and diagnostics() needs them.
        try:
            await asyncio.wait_for(self.process.wait_closed(), 5)
            await asyncio.wait_for(self._stderr_task, 1)
        except (asyncio.TimeoutError, asyncssh.Error, OSError):
            pass

    def send(self, command: dict) -> None:
        if self.process.channel.is_closing():
            return
        try:
            self.process.stdin.write(encode_command(command))
        except (asyncssh.Error, OSError, BrokenPipeError):
            pass

    async def close(self) -> None:
        self.process.close()
        try:
            await asyncio.wait_for(self.process.wait_closed(), 5)
        except (asyncio.TimeoutError, asyncssh.Error, OSError):
            pass

    def diagnostics(self) -> str:
        status = self.process.exit_status
        signal = self.process.exit_signal
        if signal:
            return f"launcher killed by {signal[0]}"
        if status == 127:  # the login shell's `exec PYTHON` found no such program
            return f"python not found: {self.python}"
        if status is not None and status != 0 and status != -1:
            said = self._stderr.decode(errors="replace").strip().splitlines()
            return f"launcher exited with status {status}" + (f": {said[-1]}" if said else "")
        return ""


class SSHBackend(Backend):
    name = "ssh"
    summary = "one SSH session per host of the hostfile (a local subprocess for this machine)"

    def __init__(
        self,
        *,
        port: int | None = None,
        python: str | None = None,
        fanout: int = 32,
        connect_timeout: float = 15.0,
        node_timeout: float = 30.0,
    ) -> None:
        self.port = port
        self.python = python or sys.executable
        self.connect_timeout = connect_timeout
        # The console gives up on a silent node about when the node gives up on it.
        self.keepalive_interval = max(1.0, node_timeout / KEEPALIVE_COUNT_MAX)
        self._fanout_limit = max(1, fanout)
        self._fanout: asyncio.Semaphore | None = None  # made in the job's event loop
        self._connections: dict[str, asyncssh.SSHClientConnection] = {}
        self._connecting: dict[str, asyncio.Task] = {}
        self.local = LocalBackend()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("SSH (--launcher ssh, the default)")
        group.add_argument("--ssh_port", "--ssh-port", type=int,
                           help="SSH port for every host (default: ~/.ssh/config)")
        group.add_argument("--ssh_fanout", "--ssh-fanout", type=int, default=32, help="concurrent SSH connects")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SSHBackend:
        return cls(
            port=args.ssh_port, python=args.remote_python, fanout=args.ssh_fanout,
            connect_timeout=args.connect_timeout, node_timeout=args.node_timeout,
        )

    def shares_run_dir(self, node: Node) -> bool:
        return is_local_host(node.host)

    async def open(self, node: Node, spec: dict) -> NodeChannel:
        if is_local_host(node.host):
            self.local.venv_script = self.venv_script
            return await self.local.open(node, spec)
        conn = await self._connection(node.host)
        command = remote_command(None, self.launcher_argv([self.python, "-c", LAUNCHER_PROGRAM]))
        try:
            process = await conn.create_process(command, encoding=None)
            process.stdin.write(spec_message(spec))  # any size: the channel carries it
        except (asyncssh.Error, OSError) as exc:
            raise LaunchError(describe_error(node.host, exc, self.connect_timeout)) from None
        return SSHChannel(node, process, self.python)

    async def _connection(self, host: str) -> asyncssh.SSHClientConnection:
        if host in self._connections:
            return self._connections[host]
        task = self._connecting.get(host)
        if task is None:
            task = self._connecting[host] = asyncio.ensure_future(self._connect(host))
        return await task

    async def _connect(self, host: str) -> asyncssh.SSHClientConnection:
        _load_asyncssh()
        if self._fanout is None:
            self._fanout = asyncio.Semaphore(self._fanout_limit)
        options = {"port": self.port} if self.port else {}
        async with self._fanout:
            try:
                conn = await asyncio.wait_for(
                    asyncssh.connect(
                        host, **options,
                        keepalive_interval=self.keepalive_interval,
                        keepalive_count_max=KEEPALIVE_COUNT_MAX,
                    ),
                    self.connect_timeout,
                )
            except (OSError, asyncssh.Error, asyncio.TimeoutError, ValueError) as exc:
                raise LaunchError(describe_error(host, exc, self.connect_timeout)) from None
        self._connections[host] = conn
        return conn

    async def close(self) -> None:
        self._connecting.clear()
        connections, self._connections = list(self._connections.values()), {}
        for conn in connections:
            conn.close()
        for conn in connections:
            try:
                await asyncio.wait_for(conn.wait_closed(), 5)
            except (asyncio.TimeoutError, asyncssh.Error, OSError):
                pass
