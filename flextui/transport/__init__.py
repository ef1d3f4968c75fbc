"""Backends: how the console finds its nodes and reaches each node's launcher.

A backend (`--launcher NAME`) answers three questions and nothing else:

* which hosts, with how many slots each (a hostfile for SSH; the allocation for Slurm);
* how to start one node launcher on a host and talk to it: `open(node, spec)` returns a
  NodeChannel carrying launcher events (decoded JSON lines) one way and commands the
  other. The spec is a dict (flextui.launch documents it); the backend hands it to the
  launcher as the first line on its stdin (spec_message) and never interprets events:
  that is the job's work;
* which options it takes, and what to release at the end (connections, an allocation).

Every backend is a subclass of Backend, registered by name in BACKENDS, so the command
line (cli.py) lists and builds them without naming any. To add one: write a module in
this package with a Backend subclass and add one line to BACKENDS. A backend module is
imported to build the parser (for its options), so it must stay light at import time:
heavy libraries (asyncssh) are imported when a channel is opened.

Life cycle, as cli.py and flextui.job.Job drive it:

    BackendClass.add_arguments(parser)     # building the parser: its own options
    backend = BackendClass.from_args(args) # the only place argparse's namespace is read
    with backend:                          # release() on exit, whatever happened
        hosts = backend.hosts(hostfile)    # host -> slots, before the world is resolved
        Job(config, backend).run()         # in the job's event loop:
            backend.shares_run_dir(node)   #   where the node writes its logs
            await backend.open(node, spec) #   one channel per node (spec on the wire)
            await backend.close()          #   after every channel is closed
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import base64
import importlib
import json
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import ClassVar

from flextui.errors import LaunchError
from flextui.hostfile import read_hostfile
from flextui.world import Node

#: --launcher NAME -> "module:Class" of its Backend (this package's modules).
BACKENDS: dict[str, str] = {
    "ssh": "flextui.transport.ssh:SSHBackend",
    "slurm": "flextui.transport.slurm:SlurmBackend",
    "mpirun": "flextui.transport.mpi:MPIBackend",
}
#: Other names users know a backend by (DeepSpeed's `--launcher` values): alias -> name. A
#: backend sees the name it was chosen by in args.launcher (mpirun: which MPI runtime).
ALIASES: dict[str, str] = {
    "pdsh": "ssh",
    "openmpi": "mpirun",
    "mpich": "mpirun",
    "impi": "mpirun",
    "mvapich": "mpirun",
}
DEFAULT_BACKEND = "ssh"


def backend_names() -> list[str]:
    """Every name `--launcher` accepts: the backends, then their aliases."""
    return [*BACKENDS, *ALIASES]


def backend_class(name: str) -> type[Backend]:
    """The Backend registered as `name` (or an alias of it)."""
    module_name, _, class_name = BACKENDS[ALIASES.get(name, name)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


class NodeChannel(abc.ABC):
    """One node launcher's stdin/stdout, as the job sees it."""

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


class Backend(abc.ABC):
    """How the console reaches nodes: where they are, and a channel to each launcher.

    Subclasses set `name` and `summary`, implement `open`, and override what differs.
    """

    #: Its --launcher name (the key in BACKENDS).
    name: ClassVar[str] = ""
    #: One phrase for `--launcher` help: what it starts, where.
    summary: ClassVar[str] = ""
    #: Whether the command line starts with a HOSTFILE (else hosts come from elsewhere,
    #: and a hostfile, if any, is given with -H/--hostfile).
    hostfile_argument: ClassVar[bool] = True
    #: Options whose value may start with "-" (say `--slurm_args -N2`): argparse would
    #: take such a value for an option of its own, so the CLI attaches it with "=".
    dash_value_options: ClassVar[tuple[str, ...]] = ()

    # -- the command line ---------------------------------------------------------

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Add this backend's own options (their group titled after it) to the parser."""

    @classmethod
    @abc.abstractmethod
    def from_args(cls, args: argparse.Namespace) -> Backend:
        """Build it from the parsed command line; may raise LaunchError (say, no allocation
        could be made) or UsageError. Nothing else in a backend reads `args`."""

    #: A shell script sourced before each node's launcher starts (DeepSpeed's
    #: --venv_script): the launcher and its workers inherit what it sets. Set by the CLI.
    venv_script: str | None = None

    def launcher_argv(self, argv: list[str]) -> list[str]:
        """The node launcher's command line, behind `. venv_script` when there is one (a
        script that cannot be sourced ends the shell: the node fails with its message)."""
        if not self.venv_script:
            return argv
        return ["/bin/sh", "-c", '. "$0" && exec "$@"', self.venv_script, *argv]

    # -- discovery ------------------------------------------------------------------

    def hosts(self, hostfile: str | None) -> dict[str, int]:
        """Host -> slots, in order (rank selection, --include/--exclude/--num_*, applies
        after). By default the hostfile's; raises HostfileError."""
        if hostfile is None:
            raise LaunchError(f"--launcher {self.name} needs a hostfile")
        return read_hostfile(hostfile)

    # -- channels -------------------------------------------------------------------

    def shares_run_dir(self, node: Node) -> bool:
        """Whether the node's launcher writes its logs straight into the console's run
        directory (same machine): then the console need not copy them from events."""
        return False

    async def open(self, node: Node, spec: dict) -> NodeChannel:
        """Start the node's launcher, send it `spec` (spec_message) and return its channel;
        raise LaunchError naming the node and the reason if it cannot be reached.

        A backend that starts one launcher per node implements this; one that starts
        several nodes' launchers with one process (mpirun) overrides open_nodes instead."""
        raise NotImplementedError(f"{type(self).__name__} opens nodes together (open_nodes)")

    async def open_nodes(
        self, specs: list[tuple[Node, dict]],
    ) -> AsyncIterator[tuple[Node, NodeChannel | LaunchError]]:
        """Start every node's launcher; yield each node with its channel, or the LaunchError
        why it cannot run, as soon as it is known (the job pings and reads a channel from
        then on, so launchers that start early are not left waiting on slow ones).

        By default every node's open() at once; the backend bounds its own fan-out. A
        channel several nodes share (one stdin for all, as with mpirun) is one NodeChannel
        per node over it: the specs then travel once for all of them (shared_spec_message),
        and a node's commands carry "node": its node rank."""

        async def open_one(node: Node, spec: dict) -> tuple[Node, NodeChannel | LaunchError]:
            try:
                return node, await self.open(node, spec)
            except LaunchError as exc:
                return node, exc
            except Exception as exc:  # noqa: BLE001 - a node that cannot start is a one-line error
                return node, LaunchError(f"{node.host}: {exc}")

        for opened in asyncio.as_completed([open_one(node, spec) for node, spec in specs]):
            yield await opened

    async def close(self) -> None:
        """Release connections, in the job's event loop, after every channel is closed."""

    def release(self) -> None:
        """Give back what outlives the event loop (an allocation it made); idempotent."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def inline_program(module, prologue: str = "") -> str:
    """`python -c` code that runs a self-contained module's source as __main__.

    Backends ship the node launcher this way, so a node never runs a stale version."""
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
    """A launcher's first line on its stdin: its node spec (see flextui.launch).

    Every backend hands a spec to its launcher this way (the wire contract lives here and
    in flextui.launch, nowhere else); the spec holds the launcher's grace and console
    timeout too, so a launcher takes no per-node arguments."""
    return encode_command({"cmd": "spec", "spec": spec})


def shared_spec_message(specs: list[dict], index_env: list[str]) -> bytes:
    """The first line for one stdin that several nodes' launchers share (say, under
    mpirun): each launcher takes specs[int(the first of index_env set in its environment)]."""
    return encode_command({"cmd": "spec", "specs": specs, "index_env": index_env})


__all__ = [
    "ALIASES", "BACKENDS", "Backend", "DEFAULT_BACKEND", "NodeChannel", "backend_class",
    "backend_names", "decode_event", "encode_command", "inline_program", "shared_spec_message", "spec_message",
]
