"""Localhost fast path: the node launcher as a subprocess of the console, no SSH."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import AsyncIterator

from flextui.transport import NodeChannel, Transport, decode_event, encode_command, spec_message
from flextui.world import Node

LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}
STREAM_LIMIT = 64 << 20  # one event can carry a whole read chunk of log text


def is_local_host(host: str) -> bool:
    return host in LOCAL_NAMES or host in {socket.gethostname(), socket.getfqdn()}


class LocalChannel(NodeChannel):
    def __init__(self, node: Node, process: asyncio.subprocess.Process) -> None:
        super().__init__(node)
        self.process = process
        self._stderr = b""
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())

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
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(encode_command(command))

    async def close(self) -> None:
        if self.process.stdin and not self.process.stdin.is_closing():
            self.process.stdin.close()

    def diagnostics(self) -> str:
        return self._stderr.decode(errors="replace").strip()


class LocalTransport(Transport):
    shares_run_dir = True

    async def start(self, node: Node, spec: dict) -> NodeChannel:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "flextui.launch",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=STREAM_LIMIT,
            # Its own session: a terminal's Ctrl+C reaches the console, which then stops
            # the job in order; the launcher stops by itself if the console dies.
            start_new_session=True,
        )
        process.stdin.write(spec_message(spec))
        return LocalChannel(node, process)

