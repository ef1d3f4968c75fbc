"""How the console reaches a node's launcher: a local subprocess or an SSH channel.

A transport starts a node's launcher (which also preflights the node, see flextui.launch);
the returned channel carries launcher events (decoded JSON lines) one way and commands
the other.
Transports never interpret events: that is the job's work.
"""

from __future__ import annotations

import abc
import base64
import zlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from flextui.world import Node


class LaunchError(Exception):
    """A one-line, user-facing reason why a node cannot run the job."""


class NodeChannel(abc.ABC):
    def __init__(self, node: Node) -> None:
        self.node = node

    @abc.abstractmethod
    def events(self) -> AsyncIterator[dict]:
        """Launcher events until the channel closes."""

    @abc.abstractmethod
    def send(self, command: dict) -> None:
        """Send one command to the launcher; silently dropped once the channel is gone."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Close the channel: the launcher sees stdin EOF and stops everything."""

    def diagnostics(self) -> str:
        """Whatever the launcher said outside the protocol (its stderr, how it ended), for
        errors; once events() has ended."""
        return ""

    def interruption(self) -> str | None:
        """Why the launcher was ended from outside the job (say, its Slurm job was
        cancelled), once events() has ended; None when it was not."""
        return None


class Transport(abc.ABC):
    #: Whether the launcher's log dir is the console's run dir (no need to copy logs).
    shares_run_dir = False

    @abc.abstractmethod
    async def start(self, node: Node, spec: dict) -> NodeChannel:
        """Start the node launcher on the node and send it its spec (the first line on its
        stdin, spec_message); raise LaunchError naming the node and the reason if it cannot
        be reached."""

    async def close(self) -> None:
        """Release connections (after every channel is closed)."""


def inline_program(module, prologue: str = "") -> str:
    """`python -c` code that runs a self-contained module's source as __main__.

    Transports ship the node launcher this way, so a node never runs a stale version."""
    packed = base64.b64encode(zlib.compress(Path(module.__file__).read_bytes(), 9)).decode()
    return f"{prologue}import base64,zlib;exec(zlib.decompress(base64.b64decode('{packed}')))"


def decode_event(line: bytes) -> dict | None:
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


def encode_command(command: dict) -> bytes:
    return (json.dumps(command, separators=(",", ":")) + "\n").encode()


def spec_message(spec: dict) -> bytes:
    """A launcher's first line: its node spec (see flextui.launch)."""
    return encode_command({"cmd": "spec", "spec": spec})
