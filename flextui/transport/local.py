"""Localhost fast path: the node launcher as a subprocess of the console, no SSH.

Not a `--launcher` of its own: the SSH backend uses it for hosts that name this machine,
and tests use it for jobs that run here.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
from collections.abc import AsyncIterator

from flextui.transport import Backend, NodeChannel, decode_event, encode_command, spec_message
from flextui.world import Node

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
STREAM_LIMIT = 64 << 20  # one event can carry a whole read chunk of log text


def is_local_host(host: str) -> bool:
    return host in LOCAL_NAMES or host in {socket.gethostname(), socket.getfqdn()}


class LocalChannel(NodeChannel):
    def __init__(self, node: Node, process: asyncio.subprocess.Process, spec_line: bytes) -> None:
        super().__init__(node)
        self.process = process
        self._stderr = b""
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())
        self._write(spec_line)

    async def _collect_stderr(self) -> None:
        self._stderr = await self.process.stderr.read()

    async def events(self) -> AsyncIterator[dict]:
        while line := await self.process.stdout.readline():
            event = decode_event(line)
            if event is not None:
                yield event
        await self.process.wait()
        await self._stderr_task

    def send(self, command: dict) -> None:
        self._write(encode_command(command))

    def _write(self, data: bytes) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(data)

    async def close(self) -> None:
        if self.process.stdin and not self.process.stdin.is_closing():
            self.process.stdin.close()

    def diagnostics(self) -> str:
        return self._stderr.decode(errors="replace").strip()


class LocalBackend(Backend):
    """Every node's launcher as a subprocess of the console, on this machine."""

    name = "local"
    summary = "every node's launcher as a subprocess here"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LocalBackend:
        return cls()

    def shares_run_dir(self, node: Node) -> bool:
        return True

    async def open(self, node: Node, spec: dict) -> NodeChannel:
        process = await asyncio.create_subprocess_exec(
            *self.launcher_argv([sys.executable, "-m", "flextui.launch"]),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=STREAM_LIMIT,
            # Its own session: a terminal's Ctrl+C reaches the console, which then stops
            # the job in order; the launcher stops by itself if the console dies.
            start_new_session=True,
        )
        return LocalChannel(node, process, spec_message(spec))
