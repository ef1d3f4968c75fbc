"""Node launcher: owns process creation, GPU binding and local lifecycle on one node.

It is started once per node by the console (as a local subprocess, or over SSH, srun or
mpirun) and must stay a small, self-contained stdlib + psutil program: the remote
transports ship this very file to nodes, so it may not import anything from flextui. It
imports psutil guarded, so a node without it gets a preflight problem, not a traceback.

    python -m flextui.launch                     the spec is the first line on stdin
    python -m flextui.launch --spec-file PATH    the spec from a JSON file (by hand)
                             [--save_pid FILE] [--reason-fd FD]

It takes no per-node arguments: the first line on stdin is
    {"cmd": "spec", "spec": SPEC}
or, for one channel shared by several nodes (mpirun: every launcher reads the same stdin),
    {"cmd": "spec", "specs": [SPEC, ..], "index_env": ["OMPI_COMM_WORLD_RANK", "PMI_RANK"]}
where a launcher takes specs[int(the first of those variables set in its environment)].
A node spec (built by the console) is
    {"run_id": str, "node_rank": int, "log_dir": str, "cwd": str|null, "env": {..},
     "grace": float,                           seconds from SIGTERM to SIGKILL (required)
     "console_timeout": float,                 stop after this long without a command (0: never)
     "command": {"head": [..], "tail": [..], "local_rank_arg": bool},
     "workers": [{"rank": int, "local_rank": int, "env": {..}}, ..],
     "mode": "fixed"|"elastic",                optional: "elastic" if the spec has that key
     "map_gpus": bool,                         optional, see below
     "exports": {..}, "env_file": [[KEY, VALUE], ..],   optional, see below
     "bind_cores": {"cores": [int, ..]|null},  optional: pin each worker to its share of cores
     "rank_log": {"dir": str, "prefix": str},  optional: copy rank r's output to
                                               <dir>/<prefix>_rank<r>.log (dir relative to cwd)
     "sample_interval": float,                 optional: seconds between "sample" events
                                               (default SAMPLE_INTERVAL, 2; 0: none)
     "preflight": {..}}                        optional, see below
Worker i runs `head + ["--local_rank=<local rank>"] + tail` (the flag only with
local_rank_arg), so the script's arguments are in the spec once, however many slots the
node has; a worker with its own "argv" runs that instead. With "map_gpus", the slot ids in
env's CUDA_VISIBLE_DEVICES are indexes into the GPUs this launcher was given (its own
CUDA_VISIBLE_DEVICES, say by Slurm): slot i becomes the i-th of them.

A worker's environment is the launcher's, then "exports" (as given), then each "env_file"
entry in order with its VALUE expanded against the environment so far (expand_env_value:
$VAR and ${VAR}, one level of quotes; nothing is ever run), then "env", then the worker's
own "env". With "bind_cores", worker i of n is pinned (CPU affinity, inherited by all its
children) to the i-th of n equal shares of "cores" (null: one CPU per physical core the
launcher may use) and gets OMP_NUM_THREADS = the share's size; its "started" event names
them ("cpus": "0-3").

Preflight (all or nothing across nodes): with "preflight" in the spec, the launcher first
checks its node (check(): the working directory, the script/module/program, psutil, torch
for --elastic, the master port, that it can create and write the log directory; the
request is
    {"cwd": str, "script": str, "module": bool, "no_python": bool, "need_psutil": bool,
     "need_torch": bool, "master_port": int|null, "master_addr": str|null,
     "log_dir": str|null}),                    the spec's, unless it is the console's own
plus what the mode's own setup needs (setup_problems(): fixed mode's core shares and
rank_log directory),
reports {"ev": "preflight", ..} right after hello and starts nothing until the console
sends {"cmd": "go"}, which it does once every node passed. With a problem it exits at
once (done, code 1); a stop, kill, stdin EOF, signal or console timeout while it waits
ends it with nothing started (done, code 0, or 128 + the signal). So one remote command
(one login shell, one python) per node both checks and runs it.

Each worker runs in its own session with stdout+stderr going straight to
`<log_dir>/rank-<rank>.log`, so a worker never waits on the console and every byte it
wrote is on disk even if it, the launcher or the console crashes.

Protocol — the console is its only reader/writer.

Events, stdout, one JSON object per line, in this order per rank:
    {"ev": "hello", "v": 1, "host": str, "pid": int, "node_rank": int, "t": float}
    {"ev": "preflight", "problems": [str, ..], "t": float}   only with "preflight" in the
                                               spec; empty: waiting for "go"
    {"ev": "started", "rank": r, "pid": int, "t": float, "cpus": str}   cpus: with bind_cores
    {"ev": "out", "rank": r, "data": str}      log text, whole lines ("\\n"-terminated)
                                               except a final partial line at exit, a
                                               line with a carriage return (a progress
                                               bar: sent as it is drawn) and
                                               a line over 1 MiB (sent in pieces); at
                                               most ~2 MiB of text per event;
                                               undecodable bytes are surrogate-escaped
    {"ev": "exited", "rank": r, "code": int|null, "signal": int|null, "t": float,
     "stopped": bool}                          stopped: we signalled it while it ran (a
                                               stop_rank, or the node's stop); a worker
                                               that had ended on its own by then (died
                                               with the first failure) is not stopped
    {"ev": "sample", "t": float, "nvml": str|null,    every sample_interval s while ranks run
     "ranks": [{"rank": r, "cpu": float|null, "rss": int, "threads": int, "procs": int,
                "gpu": {"device": str, "util": int, "mem_used": int, "mem_total": int,
                        "proc_mem": int}}, ..]}
                                               each running rank's process tree (the worker,
                                               its children, orphans of its session), by
                                               psutil: cpu = % of one core since the last
                                               sample (null in the first), rss in bytes and
                                               threads summed. "gpu" only where NVML reads
                                               the rank's GPU (the local_rank-th entry of
                                               CUDA_VISIBLE_DEVICES, as NVML numbers them, or
                                               a UUID): utilisation %, device memory used /
                                               total, what the tree's pids hold on it
                                               (proc_mem, when NVML says). nvml: null when
                                               it reads GPUs, else why not ("nvidia-ml-py is
                                               not installed for ..", "NVML: Driver Not Loaded")
    {"ev": "stack", "id": n, "rank": r, "pid": int, "processes": [   answer to "stacks", one
        {"pid": int, "ppid": int, "cmdline": str,                    per running rank
         "threads": [{"name": str, "tid": int, "active": bool, "gil": bool,
                      "frames": [[function, short file, line, file], ..]}, ..]}   innermost
        | {"pid": int, "ppid": int, "cmdline": str, "error": str}, ..]}           frame first
                                               the worker first, then its descendants (their
                                               dataloader workers, ...)
    {"ev": "stacks", "id": n, "ranks": int, "error": str|null, "t": float}
                                               the dump is complete: "ranks" stack events
                                               came before it; error: why none could be
                                               taken (py-spy is not installed here)
    {"ev": "stopping", "reason": str, "grace": float, "t": float}
    {"ev": "killing", "count": int, "t": float}    grace over: SIGKILL to survivors
    {"ev": "error", "message": str, "rank": r|null}
    {"ev": "done", "code": int, "t": float}    last event; every process is gone
Commands, stdin after the spec, one JSON object per line; one with "node": N is for
node N only (a shared stdin), the others ignore it:
    {"cmd": "go"}                    preflight passed on every node: start the workers
    {"cmd": "stop", "reason": str}   SIGTERM every process tree, SIGKILL after the grace
    {"cmd": "kill"}                  SIGKILL everything now
    {"cmd": "stop_rank", "rank": r}  SIGTERM one worker's tree (SIGKILL after the grace)
    {"cmd": "kill_rank", "rank": r}  SIGKILL one worker's tree (and process group) now
    {"cmd": "stacks", "id": n, "timeout": s}   dump the Python stack of every process of
                                     every running rank with py-spy (`py-spy dump --pid P
                                     --json`, up to STACKS_PARALLEL at once, each given
                                     `timeout` s); py-spy is found as find_py_spy() says
    {"cmd": "ping"}                  the console is alive (sent every few seconds); with
                                     "reply": true the launcher answers {"ev": "pong", "t": float},
                                     for channels with no keepalive of their own (MPI)
stdin EOF (the console or its SSH channel is gone), SIGINT, SIGTERM and SIGHUP all act
as "stop"; so does hearing nothing on stdin for the spec's console_timeout seconds,
because a silently dropped network closes no channel. A stdin that is a regular file (its
first line the spec) or /dev/null (with --spec-file) is not watched (no console: the
launcher runs until its workers end, and does not wait for "go" after a preflight). The
first worker to exit non-zero stops the others; the launcher then exits with that
worker's code (128 + signal for a signal); workers not started yet by then are never
started.
The launcher exits only once every event it emitted ("done" last) is written to stdout,
or stdout is closed, or the console has been silent for console_timeout: a dropped
network blocks stdout without closing it, so from then on it does not wait for stdout
(log text beyond MAX_UNSENT unsent is dropped: the log files have it) and gives what is
left LAST_WORDS seconds before it exits.

Why it ended, for the process that started it (--reason-fd FD, an open file descriptor
it inherits): just before it exits, whatever ended the job, the launcher writes one line
    console-lost    the console is known dead: it fell silent for console_timeout while
                    stdin stayed open (a cut network; from then on stdin is not read).
                    Nobody will hear the exit status or the last events, and whatever
                    carries the channel may be stuck with them: a parent that owns such a
                    carrier may end it (the MPI guard ends the runtime's daemon)
    done            otherwise: the console is alive, or its channel closed (stdin EOF)
and nothing if it could not run (a bad spec) or was killed. The workers never get FD.

Elastic mode (the spec has "elastic" and no "workers"; "command" is each worker's):
    "elastic": {"agent": [python, "-m", "torch.distributed.run", ..options..],
                "python": str, "nproc": int}
The launcher's only child is torch's elastic agent (own session, stdout+stderr to
`<log_dir>/elastic-node<N>/agent.log`), which rendezvous with the other nodes and starts,
restarts and stops the workers itself. Each worker runs through a small shim (SHIM_SOURCE)
that writes the command's stdout+stderr to `elastic-node<N>/w<pid>.log` and records the
identity torch gave it (RANK, WORLD_SIZE, MASTER_ADDR:PORT, ...) and its outcome, so logs
are kept per attempt and global rank and exit codes are exact. The workers the agent
starts together after one rendezvous form a group; `seq` numbers this node's groups
0, 1, ..; the console maps (node, seq) to a global attempt by the round's identity
(master, world_size), which is the same on every node of a round. Events (besides hello,
stopping, killing, error and done as above; no "started"):
    {"ev": "agent", "pid": int, "argv": [..], "t": float}     the agent started
    {"ev": "agent_out", "data": str}           the agent's own log text (as "out")
    {"ev": "attempt", "seq": s, "restart_count": int, "world_size": W, "group_rank": g,
     "group_world_size": G, "master": "addr:port",
     "ranks": [{"rank": r, "local_rank": l, "pid": int|null}, ..], "t": float}
                                               a new worker group on this node; sent again
                                               (same seq) if a straggler joins it late
    {"ev": "out", "seq": s, "rank": r, "data": str}
    {"ev": "exited", "seq": s, "rank": r, "code": int|null, "signal": int|null,
     "t": float, "stopped": bool}              stopped: by us (stop, stop_attempt, stop_rank)
    {"ev": "stopping_attempt", "seq": s, "reason": str, "t": float}
    {"ev": "agent_exited", "code": int|null, "signal": int|null, "stopped": bool, "t": float}
    "sample" and "stack" as above, each rank entry with its "seq" (a rank's tree hangs
    from the user's command, the shim's child)
Commands (besides stop, kill, stacks and ping):
    {"cmd": "stop_attempt", "master": "addr:port", "world_size": W, "reason": str}
        stop (SIGTERM, SIGKILL after the grace) this node's workers of that round, now or
        when they appear: a peer node is gone, so they would fail or hang; the agent then
        restarts them and re-rendezvous with whoever is left
    {"cmd": "stop_rank", "rank": r}  stop a worker of the current group (the agent restarts)
    {"cmd": "kill_rank", "rank": r}  SIGKILL a worker of the current group (the agent restarts)
A worker that fails is the agent's business (restart up to --max-restarts), not a reason
to stop; the launcher ends when the agent has, exiting with the agent's status.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import errno
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections import ChainMap
from collections.abc import Callable, Iterator, Mapping

try:  # a node without psutil is reported by the preflight, not by a traceback
    import psutil
except ImportError:
    psutil = None

PROTOCOL_VERSION = 1
SPEC_TIMEOUT = 60.0  # seconds of silence on stdin before its first line (the spec) is given up
LAST_WORDS = 2.0  # seconds still given to unsent events once the console is known dead
MAX_UNSENT = 1 << 20  # log text beyond this much unsent is dropped once the console is known dead
POLL_INTERVAL = 0.05
ACTIVE_POLL_INTERVAL = 0.01  # while logs flow: less lag; when quiet: less idle CPU
SAMPLE_INTERVAL = 2.0  # seconds between "sample" events (the spec's "sample_interval")
READ_CHUNK = 1 << 20  # also about the most log text one "out" event carries
PR_SET_CHILD_SUBREAPER = 36


# -- preflight: checks a node must pass before anything starts on any node ---------------

_FIND_MODULE = (
    "import importlib.util, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "sys.exit(0 if importlib.util.find_spec(sys.argv[2]) else 1)"
)


def check(request: dict) -> list[str]:
    """Problems that would stop a job on this node; empty when it can start."""
    problems = []
    cwd = request.get("cwd") or os.getcwd()
    if not os.path.isdir(cwd):
        return [f"working directory {cwd} not found"]
    script = request.get("script")
    if script and request.get("no_python"):
        found = shutil.which(script, path=None if "/" not in script else "") or (
            "/" in script and os.access(os.path.join(cwd, script), os.X_OK)
        )
        if not found:
            problems.append(f"program {script} not found or not executable")
    elif script and request.get("module"):
        # In a child python: finding pkg.mod imports pkg, which must not run inside the
        # launcher or the console (nor leave the job's directory on sys.path, nor crash it).
        try:
            found = subprocess.run(
                [sys.executable, "-c", _FIND_MODULE, cwd, script], cwd=cwd, timeout=120,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            found = False
        if not found:
            problems.append(f"module {script} not found")
    elif script and not os.path.isfile(os.path.join(cwd, script)):
        problems.append(f"script {script} not found in {cwd}")
    if request.get("need_psutil") and psutil is None:
        problems.append(f"psutil is not installed for {sys.executable}")
    if request.get("need_torch"):  # --elastic runs torch's elastic agent on the node
        import importlib.util

        if importlib.util.find_spec("torch") is None:  # finds it without importing it
            problems.append(f"torch is not installed for {sys.executable} (--elastic needs it)")
    master = request.get("master_addr")
    if master and not _resolves(master):
        problems.append(f"MASTER_ADDR {master} does not resolve on this node (workers could not reach "
                        "it): pass --master_addr with an address they can")
    port = request.get("master_port")
    if port and not _port_free(int(port)):
        problems.append(f"master port {port} is already in use")
    log_problem = request.get("log_dir") and _log_dir_problem(request["log_dir"])
    if log_problem:
        problems.append(log_problem)
    return problems


def _log_dir_problem(path: str) -> str | None:
    """Why this user could not create (if missing) and write the log directory, if so.

    It writes a probe file into the directory, or into its deepest existing ancestor where
    the directory would be made, and removes it: nothing is left behind, and nodes that
    share the file system never see each other's probes."""
    path = os.path.abspath(path)
    where = path
    while not os.path.isdir(where):
        if os.path.lexists(where):
            return f"cannot create the log directory {path}: {where} is not a directory"
        where = os.path.dirname(where)
    verb = "write" if where == path else "create"
    try:
        fd, probe = tempfile.mkstemp(prefix=".flextui-probe-", dir=where)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return f"cannot {verb} the log directory {path}: {exc.strerror or exc}"
    return None


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return False
    return True


def _port_free(port: int) -> bool:
    """Whether torch's TCPStore could bind the port: on every IPv4 address, and on every
    IPv6 one where the node has IPv6 (it binds `::` first), so a listener on ::1 counts."""
    for family, address in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 here
        with probe:
            # As TCPStore binds it: a port in TIME_WAIT from a previous run is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind((address, port))
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE or family == socket.AF_INET:
                    return False
    return True


def exit_status(code: int | None, sig: int | None) -> int:
    return 128 + sig if sig else (code or 0)


class Emitter:
    """JSON lines to stdout without ever blocking the event loop.

    It waits for a full channel only while the console is alive (console_alive): a
    dropped network blocks the channel without closing it, and then nobody will read."""

    def __init__(self, console_alive: Callable[[], bool] = lambda: True) -> None:
        self.console_alive = console_alive
        self.transport: asyncio.WriteTransport | None = None
        self.emitted = 0  # events so far: the follow loop polls faster while they flow
        self.protocol: _DrainableProtocol | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.transport, self.protocol = await loop.connect_write_pipe(
                _DrainableProtocol, os.fdopen(os.dup(sys.stdout.fileno()), "wb")
            )
        except (ValueError, OSError):
            self.transport = None  # a regular file: plain blocking writes are fine

    def emit(self, event: dict) -> None:
        self.emitted += 1
        payload = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        if self.transport is None:
            sys.stdout.buffer.write(payload)
            sys.stdout.buffer.flush()
        elif not self.transport.is_closing():
            if (event["ev"] in ("out", "agent_out") and self.transport.get_write_buffer_size() > MAX_UNSENT
                    and not self.console_alive()):
                return  # nobody will read it (the rank's log file has it all)
            self.transport.write(payload)

    async def drain(self) -> None:
        """Until the channel takes more, or the console is known dead."""
        while self.transport is not None and not self.transport.is_closing() and self.protocol.paused:
            if not self.console_alive():
                return
            await self.protocol.resumed(timeout=0.25)

    async def close(self) -> None:
        """Return once every event is written to the channel (a launcher that exits sooner
        loses the rest: the console would see a node end without "done"), or the channel
        is dead, or the console is known dead (then after LAST_WORDS more seconds)."""
        if self.transport is None:
            return
        self.transport.close()  # writes out what is buffered, then connection_lost
        dead_since = None
        while not self.protocol.lost.done():
            if not self.console_alive():
                dead_since = dead_since or time.monotonic()
                if time.monotonic() - dead_since > LAST_WORDS:
                    self.transport.abort()
                    return
            await asyncio.wait([self.protocol.lost], timeout=0.1)


class _DrainableProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.paused = False
        self._resumed = asyncio.get_running_loop().create_future()
        self.lost = asyncio.get_running_loop().create_future()  # done: nothing more to write

    def pause_writing(self) -> None:
        self.paused = True
        if self._resumed.done():
            self._resumed = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self.paused = False
        if not self._resumed.done():
            self._resumed.set_result(None)

    def connection_lost(self, exc) -> None:
        self.resume_writing()
        if not self.lost.done():
            self.lost.set_result(exc)

    async def resumed(self, timeout: float) -> None:
        if self.paused:
            await asyncio.wait([self._resumed], timeout=timeout)


class SpecError(Exception):
    """The console's spec is missing or malformed: one line for stderr."""


def read_spec_line(fd: int = 0, timeout: float = SPEC_TIMEOUT) -> tuple[bytes, bytes]:
    """The first line on fd and whatever came after it (commands sent right behind it).

    Read before the event loop starts: nothing can happen on a node before its spec."""
    import select

    data = b""
    while b"\n" not in data:
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
        except (OSError, ValueError) as exc:
            raise SpecError(f"cannot read the spec from stdin: {exc}") from None
        if not ready:
            raise SpecError(f"no spec on stdin within {timeout:g}s")
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            break
        data += chunk
    line, _, rest = data.partition(b"\n")
    if not line.strip():
        raise SpecError("no spec on stdin (its first line must be {\"cmd\": \"spec\", ..})")
    return line, rest


def choose_spec(message, environ=os.environ) -> dict:
    """This node's spec from the first line's message (see the module docs)."""
    if not isinstance(message, dict) or message.get("cmd") != "spec":
        raise SpecError('the first line on stdin must be {"cmd": "spec", ..}')
    if isinstance(message.get("spec"), dict):
        return message["spec"]
    specs, names = message.get("specs"), message.get("index_env") or []
    if not isinstance(specs, list):
        raise SpecError('a spec message needs "spec" or "specs"')
    for name in names:
        if name in environ:
            try:
                return specs[int(environ[name])]
            except (ValueError, IndexError):
                raise SpecError(f"{name}={environ[name]} does not pick one of {len(specs)} node specs") from None
    raise SpecError(f"none of {', '.join(names) or '(no index_env)'} is set: cannot tell which of "
                    f"{len(specs)} node specs is this node's")


def spec_grace(spec: dict) -> float:
    """Seconds from SIGTERM to SIGKILL. No default here: the console always sends its own
    (flextui.job.DEFAULT_GRACE, the one default), so a missing one is a bad spec."""
    try:
        return float(spec["grace"])
    except KeyError:
        raise ValueError('no "grace" (seconds from SIGTERM to SIGKILL)') from None
    except TypeError:
        raise ValueError(f'"grace" must be a number of seconds, not {spec["grace"]!r}') from None


def map_gpus(slots: str, given: str) -> str:
    """Slot ids ('0,1') as indexes into the GPUs this launcher was given ('4,5,6,7' -> '4,5')."""
    gpus = [g for g in given.split(",") if g]
    if not gpus or not slots:
        return slots
    return ",".join(gpus[int(k)] if k.isdigit() and int(k) < len(gpus) else k for k in slots.split(","))


def node_env(spec: dict, environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What every process the launcher starts gets on top of the launcher's environment."""
    env = dict(spec.get("exports") or {})
    for key, template in spec.get("env_file") or ():
        env[key] = expand_env_value(template, ChainMap(env, environ))
    env.update(spec.get("env", {}))
    given = environ.get("CUDA_VISIBLE_DEVICES")
    if spec.get("map_gpus") and given and env.get("CUDA_VISIBLE_DEVICES"):
        env["CUDA_VISIBLE_DEVICES"] = map_gpus(env["CUDA_VISIBLE_DEVICES"], given)
    return env


_SHELL_VARIABLE = re.compile(r"\$(?:([A-Za-z_][A-Za-z0-9_]*)|\{([A-Za-z_][A-Za-z0-9_]*)\})")


def expand_env_value(template: str, environ: Mapping[str, str]) -> str:
    """An env file's VALUE as `export KEY=VALUE` in a POSIX shell would set it, without
    running anything: $NAME and ${NAME} become the variable's value (empty if unset);
    'single quotes' keep their text as it is; "double quotes" are dropped and expand
    inside; a backslash keeps the next character (in double quotes only before $ ` " and
    a backslash).
    $(...), backquotes and every other $ form stay as written: a value never runs a
    command. Raises ValueError for a quote that is never closed."""
    out: list[str] = []
    quote = None
    i, end = 0, len(template)
    while i < end:
        char = template[i]
        if quote == "'":
            if char == "'":
                quote = None
            else:
                out.append(char)
            i += 1
        elif char == "'" and quote is None or char == '"':
            quote = None if quote == char else char
            i += 1
        elif char == "\\" and i + 1 < end and (quote is None or template[i + 1] in '$`"\\'):
            out.append(template[i + 1])
            i += 2
        elif char == "$" and (match := _SHELL_VARIABLE.match(template, i)):
            out.append(environ.get(match.group(1) or match.group(2), ""))
            i = match.end()
        else:
            out.append(char)
            i += 1
    if quote:
        raise ValueError(f"the {'single' if quote == chr(39) else 'double'} quote is never closed")
    return "".join(out)


def usable_cores() -> list[int]:
    """One CPU per physical core among those this launcher may run on (DeepSpeed binds to
    cores 0..physical-1): the first physical/logical share of them."""
    allowed = sorted(os.sched_getaffinity(0))
    logical = (psutil.cpu_count() if psutil else None) or len(allowed)
    physical = (psutil.cpu_count(logical=False) if psutil else None) or logical
    return allowed[: max(1, len(allowed) * physical // logical)]


def core_shares(cores: list[int] | None, ranks: int) -> list[list[int]]:
    """Each of `ranks` workers' equal share of `cores` (None: usable_cores()), in order, as
    DeepSpeed's --bind_cores_to_rank splits them; ValueError when a share would be empty or
    a core is not one this launcher may use."""
    allowed = os.sched_getaffinity(0)
    if cores is None:
        cores = usable_cores()
    missing = [c for c in cores if c not in allowed]
    if missing:
        raise ValueError(f"core {missing[0]} is not usable on this node (usable: {cpu_list_text(sorted(allowed))})")
    per = len(cores) // max(ranks, 1)
    if per < 1:
        raise ValueError(f"{ranks} ranks but only {len(cores)} core(s) to share ({cpu_list_text(cores)})")
    return [cores[per * i: per * (i + 1)] for i in range(ranks)]


def cpu_list_text(cores: list[int]) -> str:
    """[0, 1, 2, 3, 8] -> '0-3,8' (the kernel's cpulist form)."""
    runs: list[list[int]] = []
    for core in cores:
        if runs and core == runs[-1][-1] + 1:
            runs[-1].append(core)
        else:
            runs.append([core])
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


def command_argv(command: dict, local_rank: int) -> list[str]:
    """head + --local_rank=N + tail: how each worker of a node runs the spec's one command."""
    flag = [f"--local_rank={local_rank}"] if command.get("local_rank_arg") else []
    return [*command["head"], *flag, *command["tail"]]


# -- a set of processes: start, poll, signal, reap ------------------------------------------


class LogTail:
    """A log file followed as it grows, emitted as {**tag, "data": text} events: whole lines,
    a line with a carriage return (a progress bar) as it is drawn, a line over READ_CHUNK
    in pieces, the unfinished last line at the end."""

    def __init__(self, path: str, tag: dict) -> None:
        self.path = path
        self.tag = tag
        self.fd: int | None = None
        self.copy: int | None = None  # a second file that gets every byte read (rank_log)
        self.partial = b""
        self.more = False

    def copy_to(self, path: str) -> None:
        """Also write everything read from now on to `path` (truncated first)."""
        self.copy = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)

    def open(self) -> None:
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                pass

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.copy is not None:
            os.close(self.copy)
            self.copy = None

    def _write_copy(self, data: bytes) -> None:
        try:
            while data:
                data = data[os.write(self.copy, data):]
        except OSError:  # its disk is full, say: the rank's own log still has everything
            os.close(self.copy)
            self.copy = None

    def read_new(self) -> bytes:
        """Up to READ_CHUNK more bytes of the log, cut after the last newline; a line
        longer than that goes out in pieces. Sets `more` when the read was capped."""
        if self.fd is None:
            self.more = False
            return b""
        chunk = os.read(self.fd, READ_CHUNK)
        self.more = len(chunk) == READ_CHUNK
        if self.copy is not None and chunk:
            self._write_copy(chunk)
        data = self.partial + chunk
        cut = data.rfind(b"\n") + 1
        if (cut == 0 and len(data) >= READ_CHUNK) or b"\r" in data[cut:]:
            cut = _utf8_boundary(data)  # too long, or a progress bar: show it now
        self.partial = data[cut:]
        return data[:cut]

    def read_rest(self) -> bytes:
        """Like read_new, and once nothing more is waiting also the last unfinished line."""
        data = self.read_new()
        if not self.more:
            data += self.partial
            self.partial = b""
        return data


class Child:
    """A process the launcher starts (a worker, torch's agent) and how it ended."""

    def __init__(self, argv: list[str], log: LogTail, env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.log = log
        self.env = env or {}
        self.cpus: list[int] | None = None  # the CPUs it is pinned to (None: not pinned)
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.code: int | None = None
        self.signal: int | None = None
        self.exited = False
        self.stopped = False  # we asked it (or the job) to stop before it ended


class ProcessGroup:
    """Every process of the job on this node, as torch's PContext keeps its workers: starts
    children (each in a session of its own, stdout+stderr straight into its log file, so it
    never waits on us), reaps them and every orphan they leave (the launcher is their child
    subreaper), and signals what is left: SIGTERM once per process, SIGKILL to survivors."""

    def __init__(self, on_exit: Callable[[Child], None]) -> None:
        self.on_exit = on_exit
        self.by_pid: dict[int, Child] = {}  # started and not reaped yet
        self.asked_to_stop: set[tuple[int, float]] = set()  # (pid, start time): had its SIGTERM
        self.helpers: dict[int, asyncio.Future] = {}  # our own short-lived tools (py-spy): pid -> status

    def start(self, child: Child, env: dict[str, str], cwd: str | None) -> None:
        """Start it (OSError if it cannot be) and follow its log."""
        child.proc = start_logged(child.argv, child.log.path, env, cwd, child.cpus)
        child.pid = child.proc.pid
        child.log.open()
        self.by_pid[child.pid] = child

    def live(self) -> list[Child]:
        return list(self.by_pid.values())

    def reap(self) -> None:
        """Collect every exited child: ours (on_exit tells the mode) and adopted orphans."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            helper = self.helpers.pop(pid, None)
            if helper is not None:
                if not helper.done():
                    helper.set_result(os.waitstatus_to_exitcode(status))
                continue
            child = self.by_pid.pop(pid, None)
            if child is not None:
                child.proc.returncode = os.waitstatus_to_exitcode(status)
                if os.WIFSIGNALED(status):
                    child.code, child.signal = None, os.WTERMSIG(status)
                else:
                    child.code, child.signal = os.WEXITSTATUS(status), None
                child.exited = True
                self.on_exit(child)

    @staticmethod
    def descendants() -> list[psutil.Process]:
        try:
            return psutil.Process().children(recursive=True)
        except psutil.Error:
            return []

    @staticmethod
    def tree(pid: int | None) -> list[psutil.Process]:
        if not pid:
            return []
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    async def run_helper(self, argv: list[str], timeout: float) -> tuple[int | None, bytes, bytes]:
        """Run one of our tools (py-spy) to its end: (exit status, stdout, stderr); status
        None when it took longer than `timeout` (then it is killed). The reaper collects it
        with the job's processes, so its status comes from there, not from a child watcher."""
        loop = asyncio.get_running_loop()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            return 127, b"", f"{argv[0]}: {exc.strerror}".encode()
        status = self.helpers[proc.pid] = loop.create_future()
        readers = [asyncio.ensure_future(_read_all(stream)) for stream in (proc.stdout, proc.stderr)]
        try:
            done, _ = await asyncio.wait([status, *readers], timeout=timeout)
            if len(done) < 3:
                _killpg(proc.pid, signal.SIGKILL)
                await asyncio.wait([status, *readers], timeout=2.0)
                code = None
            else:
                code = status.result()
        finally:
            for reader in readers:
                reader.cancel()
            for stream in (proc.stdout, proc.stderr):
                stream.close()
            proc.returncode = 0 if not status.done() else status.result()  # Popen must not wait on it again
        out = readers[0].result() if readers[0].done() and not readers[0].cancelled() else b""
        err = readers[1].result() if readers[1].done() and not readers[1].cancelled() else b""
        return code, out, err

    def kill_helpers(self) -> None:
        for pid in self.helpers:
            _killpg(pid, signal.SIGKILL)

    def terminate(self, processes: list[psutil.Process]) -> None:
        """SIGTERM each process once: a script that checkpoints on the first SIGTERM is cut
        short by a second one (also after a stop_rank, by the job's stop)."""
        for process in processes:
            try:
                key = (process.pid, process.create_time())
            except psutil.Error:
                continue
            if key not in self.asked_to_stop:
                self.asked_to_stop.add(key)
                signal_all([process], signal.SIGTERM)

    def terminate_children(self, found: list[psutil.Process]) -> None:
        """A child psutil did not find among `found` (the snapshot just signalled): its
        process group, once."""
        pids = {p.pid for p in found}
        for child in self.live():
            if child.pid not in pids:
                _killpg(child.pid, signal.SIGTERM)

    def kill(self) -> int:
        """SIGKILL every process left; how many there were."""
        survivors = self.descendants()
        for child in self.live():
            _killpg(child.pid, signal.SIGKILL)
        signal_all(survivors, signal.SIGKILL)
        return len(survivors)


async def _read_all(stream) -> bytes:
    """Everything a pipe of ours carries, read without blocking the loop."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), stream)
    try:
        return await reader.read()
    finally:
        transport.close()


def signal_all(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        try:
            process.send_signal(sig)  # psutil checks the pid was not reused
        except psutil.Error:
            pass


# -- what the ranks use and where they are: samples and stacks ----------------------------


class Target:
    """A rank as sampling and stack dumps see it: the process its tree hangs from (the
    worker), the tag its events carry ({"rank": r}, elastic adds "seq") and its GPU."""

    def __init__(self, tag: dict, pid: int, gpu: str | None) -> None:
        self.tag, self.pid, self.gpu = tag, pid, gpu


def bound_gpu(env: Mapping[str, str], local_rank: int) -> str | None:
    """The GPU a worker uses: the local_rank-th of its CUDA_VISIBLE_DEVICES (an index, as
    NVML and nvidia-smi number them, or a GPU-/MIG- UUID), or its only one."""
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if len(visible) == 1:
        return visible[0]
    return visible[local_rank] if 0 <= local_rank < len(visible) else None


def rank_owners(parents: dict[int, int], roots: set[int]) -> dict[int, int]:
    """pid -> the root (a rank's worker) it belongs to, for the descendants in `parents`
    (pid -> parent pid): the nearest root up its parents, else, for an orphan the launcher
    adopted, the root whose session it is in (when that root leads its session)."""
    leaders = {}
    for root in roots:
        try:
            if os.getsid(root) == root:
                leaders[root] = root
        except OSError:
            pass
    owners = {}
    for pid in parents:
        up, hops = pid, 0
        while up not in roots and up in parents and hops < 256:
            up, hops = parents[up], hops + 1
        if up not in roots:
            try:
                up = leaders.get(os.getsid(pid))
            except OSError:
                up = None
        if up is not None:
            owners[pid] = up
    return owners


class GpuTelemetry:
    """The node's GPUs through NVML (nvidia-ml-py's pynvml), where the node has it and a
    driver; else `unavailable` says why, and nothing is ever made up."""

    def __init__(self) -> None:
        self.nvml = None
        self.unavailable: str | None = None
        self.handles: dict[str, object] = {}
        try:
            import pynvml
        except ImportError:
            self.unavailable = f"nvidia-ml-py is not installed for {sys.executable}"
            return
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
            self.unavailable = f"NVML: {_nvml_text(exc)}"
            return
        self.nvml = pynvml

    def read(self, device: str, pids: set[int]) -> dict | None:
        """One device: utilisation %, memory used/total (bytes), and what `pids` hold on it;
        None if NVML cannot read it."""
        nvml = self.nvml
        if nvml is None:
            return None
        try:
            handle = self.handles.get(device)
            if handle is None:
                handle = (nvml.nvmlDeviceGetHandleByIndex(int(device)) if device.isdigit()
                          else nvml.nvmlDeviceGetHandleByUUID(device))
                self.handles[device] = handle
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            reading = {"device": device, "util": util.gpu, "mem_used": memory.used, "mem_total": memory.total}
        except Exception:  # noqa: BLE001 - an NVMLError of some kind: no reading, never a guess
            return None
        try:
            processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except Exception:  # noqa: BLE001
            return reading
        held = [p.usedGpuMemory for p in processes if p.pid in pids and p.usedGpuMemory is not None]
        if held:
            reading["proc_mem"] = sum(held)
        elif not any(p.pid in pids for p in processes):
            reading["proc_mem"] = 0
        return reading


def _nvml_text(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_BOOT_TIME: list[float] = []


def proc_descendants(root: int) -> tuple[dict[int, int], dict[int, tuple]] | None:
    """Linux: every descendant of `root` from one read of /proc/PID/stat per process on
    the node — pid -> parent pid, and pid -> (start time, CPU seconds, RSS bytes,
    threads), what psutil gives with ~4x the reads (64 ranks with a child each: ~12 ms
    instead of ~50). None where there is no such /proc (psutil then)."""
    if psutil is None:
        return None
    try:
        names = os.listdir("/proc")
        if not _BOOT_TIME:
            _BOOT_TIME.append(psutil.boot_time())
    except (OSError, psutil.Error):
        return None
    parents, stats = {}, {}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as stat_file:
                data = stat_file.read()
            fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) " (comm may hold spaces)
            pid, ppid = int(name), int(fields[1])
            stats[pid] = (_BOOT_TIME[0] + int(fields[19]) / _CLOCK_TICKS,
                          (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS,
                          int(fields[21]) * _PAGE_SIZE, int(fields[17]))
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not a process's stat
        parents[pid] = ppid
    if root not in parents:
        return None
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    below, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in below and child != root:
                below[child] = parents[child]
                todo.append(child)
    return below, {pid: stats[pid] for pid in below}


class Sampler:
    """What each rank's process tree uses, with psutil: CPU % (of one core, summed over
    the tree, since the previous sample), RSS and threads (summed) and how many processes;
    and its GPU through NVML. One walk over the launcher's descendants per sample."""

    def __init__(self) -> None:
        self.cpu_seconds: dict[tuple[int, float], float] = {}  # (pid, start time) -> user+system
        self.last: float | None = None  # time.time() of the previous sample
        self.gpus: GpuTelemetry | None = None

    def sample(self, targets: list[Target]) -> list[dict]:
        now = time.time()
        found = proc_descendants(os.getpid())
        if found is None:  # not Linux's /proc: psutil, a few reads per process
            found = {}, {}
            for process in ProcessGroup.descendants():
                try:
                    with process.oneshot():
                        found[0][process.pid] = process.ppid()
                        times = process.cpu_times()
                        found[1][process.pid] = (process.create_time(), times.user + times.system,
                                                 process.memory_info().rss, process.num_threads())
                except psutil.Error:
                    continue
        parents, stats = found
        by_root = {t.pid: t for t in targets if t.pid}
        owners = rank_owners(parents, set(by_root))
        totals = {root: [0.0, 0, 0, 0] for root in by_root}  # cpu seconds, rss, threads, procs
        seconds = {}
        for pid, root in owners.items():
            created, cpu, rss, threads = stats[pid]
            key = (pid, created)
            before = self.cpu_seconds.get(key)
            if before is None:  # new since the last sample: all it used was used since
                before = 0.0 if self.last is not None and created >= self.last else cpu
            seconds[key] = cpu
            total = totals[root]
            total[0] += max(0.0, cpu - before)
            total[1] += rss
            total[2] += threads
            total[3] += 1
        elapsed = now - self.last if self.last is not None else None
        self.cpu_seconds, self.last = seconds, now
        if self.gpus is None and any(t.gpu for t in targets):
            self.gpus = GpuTelemetry()
        samples = []
        for root, target in by_root.items():
            cpu, rss, threads, procs = totals[root]
            if not procs:
                continue  # gone meanwhile
            entry = {**target.tag, "cpu": round(100.0 * cpu / elapsed, 1) if elapsed else None,
                     "rss": rss, "threads": threads, "procs": procs}
            if target.gpu and self.gpus is not None and self.gpus.nvml is not None:
                reading = self.gpus.read(target.gpu, {p for p, r in owners.items() if r == root})
                if reading is not None:
                    entry["gpu"] = reading
            samples.append(entry)
        return samples

    def gpu_unavailable(self) -> str | None:
        return self.gpus.unavailable if self.gpus is not None else "no GPU bound to its ranks"


STACKS_INSTALL = "pip install 'flextui[stacks]' (or py-spy) for that python"


def find_py_spy() -> str | None:
    """py-spy for this node: $FLEXTUI_PY_SPY, else on PATH, else beside this python (a
    venv's bin/ is not on a login shell's PATH), else in the user's scripts directory."""
    given = os.environ.get("FLEXTUI_PY_SPY")
    if given is not None:
        return given if given and os.access(given, os.X_OK) else None
    found = shutil.which("py-spy")
    if found:
        return found
    import sysconfig

    places = [os.path.dirname(sys.executable), sysconfig.get_path("scripts")]
    try:
        places.append(sysconfig.get_path("scripts", f"{os.name}_user"))
    except KeyError:
        pass
    for place in places:
        path = os.path.join(place or "", "py-spy")
        if place and os.access(path, os.X_OK):
            return path
    return None


MAX_FRAMES = 200  # of one thread's stack (innermost kept): a deep recursion stays bounded
STACKS_TIMEOUT = 10.0  # seconds py-spy may take on one process
STACKS_PARALLEL = 8  # py-spy processes at once on a node


async def dump_process(group: ProcessGroup, py_spy: str, pid: int, timeout: float) -> dict:
    """py-spy's dump of one process: its threads, each with its frames innermost first as
    [function, short file, line, file]; or an error (one line)."""
    code, out, err = await group.run_helper([py_spy, "dump", "--pid", str(pid), "--json"], timeout)
    if code is None:
        return {"pid": pid, "error": f"py-spy took more than {timeout:g}s"}
    if code == 0:
        try:
            threads = json.loads(out)
        except ValueError:
            threads = None
        if isinstance(threads, list):
            return {"pid": pid, "threads": [_thread(t) for t in threads if isinstance(t, dict)]}
    message = err.decode("utf-8", "replace").strip().splitlines() or [f"py-spy exited with {code}"]
    text = message[0].removeprefix("Error: ")
    if "python version" in text.lower() or "python interpreter" in text.lower():
        text = "not a Python process"
    elif "permission" in text.lower():
        text = ("py-spy may not trace it (ptrace): run as root, or allow it "
                "(sysctl kernel.yama.ptrace_scope=0; in a container: CAP_SYS_PTRACE)")
    return {"pid": pid, "error": text}


def _thread(data: dict) -> dict:
    frames = [[f.get("name"), f.get("short_filename") or f.get("filename"), f.get("line"), f.get("filename")]
              for f in data.get("frames") or () if isinstance(f, dict)]
    return {"name": data.get("thread_name"), "tid": data.get("os_thread_id") or data.get("thread_id"),
            "active": bool(data.get("active")), "gil": bool(data.get("owns_gil")), "frames": frames[:MAX_FRAMES]}


# -- the launcher: what every mode shares -------------------------------------------------


class NodeLauncher:
    """The protocol, the preflight and "go", commands, signals and the console timeout,
    stopping (SIGTERM once per process, SIGKILL after the grace) and following logs until
    every process is gone. A mode (a subclass, in MODES) says what to start, which logs to
    follow, when its own processes are done and what the node's exit code is."""

    #: Why the job stops when the mode's processes are done but left others behind.
    leftover_reason = "stopping what the job left behind"

    def __init__(self, spec: dict, stdin_rest: bytes = b"", watch_stdin: bool = True) -> None:
        self.spec = spec
        self.node_rank = spec.get("node_rank", 0)
        self.grace = spec_grace(spec)
        self.console_timeout = float(spec.get("console_timeout") or 0.0)
        self.env = node_env(spec)
        self.stdin_rest = stdin_rest  # what followed the spec line on stdin
        self.stdin_watched = watch_stdin
        self.log_dir = spec["log_dir"]
        self.group = ProcessGroup(self.on_exit)
        self.emitter = Emitter(self.console_alive)
        self.stopping = False
        self.stop_signal: int | None = None
        self.escalation: asyncio.TimerHandle | None = None
        self.changed = asyncio.Event()
        self.waiting = False  # checked, holding until the console says "go"
        self.preflight_code = 0
        self.go = asyncio.Event()  # "go", or a stop while waiting
        self.last_word = time.monotonic()  # when the console last said anything (the spec)
        self.stdin_closed = False  # EOF: whoever holds the channel closed it
        self.sample_interval = float(spec.get("sample_interval", SAMPLE_INTERVAL) or 0.0)
        self.tasks: set[asyncio.Future] = set()  # sampling, stack dumps: cancelled at the end

    # -- what a mode provides ----------------------------------------------------------

    def start(self) -> None:
        """Start the mode's processes (the log directory exists)."""
        raise NotImplementedError

    def on_exit(self, child: Child) -> None:
        """A child the mode started has ended (reaped: code, signal and exited are set)."""
        raise NotImplementedError

    def poll(self) -> None:
        """Each round, before the logs are read: look for what no signal tells us."""

    def tails(self) -> list[LogTail]:
        """The logs still being written."""
        raise NotImplementedError

    def done(self) -> bool:
        """Whether the mode's own processes have all ended."""
        raise NotImplementedError

    def finish(self) -> None:
        """After the last process: report whatever is left (logs, exits)."""

    def stop_targets(self, processes: list[psutil.Process]) -> list[psutil.Process]:
        """Of every process left, those a stop SIGTERMs (the others stop by themselves)."""
        return processes

    def setup_problems(self) -> list[str]:
        """What in the spec this mode cannot do on this node (the preflight reports it)."""
        return []

    def targets(self) -> list[Target]:
        """The running ranks, for samples and stack dumps."""
        return []

    def before_stop(self) -> None:
        """The stop's SIGTERMs go out next: a mode marks what they stop."""

    def on_command(self, command: dict) -> None:
        kind = command.get("cmd")
        if kind == "go":
            self.go.set()
        elif kind == "stacks":
            self.tasks.add(asyncio.ensure_future(self.dump_stacks(command)))
        elif kind == "ping":
            if command.get("reply"):
                self.emitter.emit({"ev": "pong", "t": time.time()})
        elif kind == "stop":
            self.begin_stop(command.get("reason", "stopped by console"))
        elif kind == "kill":
            self.begin_stop(command.get("reason", "killed by console"))
            self.kill_all()

    def exit_code(self) -> int:
        raise NotImplementedError

    # -- lifecycle -------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        _become_subreaper()
        await self.emitter.open()
        self.emitter.emit(
            {"ev": "hello", "v": PROTOCOL_VERSION, "host": socket.gethostname(),
             "pid": os.getpid(), "node_rank": self.node_rank, "t": time.time()}
        )
        loop.add_signal_handler(signal.SIGCHLD, self.reap)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.on_signal, sig)
        stdin_task = asyncio.ensure_future(self.watch_stdin())
        if "preflight" in self.spec and not await self.preflight():
            code = 128 + self.stop_signal if self.stop_signal is not None else self.preflight_code
        else:
            os.makedirs(self.log_dir, exist_ok=True)
            self.start()
            self.reap()
            if self.sample_interval > 0:
                self.tasks.add(asyncio.ensure_future(self.sample_every(self.sample_interval)))
            await self.follow_until_done()
            code = self.exit_code()
        for task in self.tasks:
            task.cancel()
        self.group.kill_helpers()
        self.emitter.emit({"ev": "done", "code": code, "t": time.time()})
        await self.emitter.close()  # still hearing pings meanwhile
        stdin_task.cancel()
        return code

    def console_alive(self) -> bool:
        """False once the console has been silent for its timeout (a dropped network)."""
        if not (self.stdin_watched and self.console_timeout):
            return True
        return time.monotonic() - self.last_word < self.console_timeout

    def console_lost(self) -> bool:
        """The console is known dead while its channel stays open: a cut network (an EOF
        means something at the other end still works and closed it)."""
        return not self.stdin_closed and not self.console_alive()

    async def preflight(self) -> bool:
        """Check this node, report it, and hold until the console says "go" (every node
        passed); False when nothing may start here (a problem, or stopped while holding)."""
        problems = check({**self.spec["preflight"], "need_psutil": True}) + self.setup_problems()
        self.emitter.emit({"ev": "preflight", "problems": problems, "t": time.time()})
        if problems:
            self.preflight_code = 1
            return False
        self.waiting = True
        await self.go.wait()  # also set when stdin is no console (a file, /dev/null)
        self.waiting = False
        return not self.stopping

    def start_child(self, child: Child) -> OSError | None:
        """Start a child with the node's environment (and its own) in the job's directory;
        the error if it could not be."""
        try:
            self.group.start(child, {**os.environ, **self.env, **child.env}, self.spec.get("cwd"))
        except OSError as exc:
            return exc
        return None

    def reap(self) -> None:
        self.group.reap()
        self.changed.set()

    def on_signal(self, sig: int) -> None:
        if self.stop_signal is None:
            self.stop_signal = sig
        self.begin_stop(f"launcher got {signal.Signals(sig).name}")

    async def watch_stdin(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=1 << 20)
        if not self.stdin_watched:
            self.go.set()  # no console to say "go" either
            return
        reader.feed_data(self.stdin_rest)
        try:
            await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(os.dup(0), "rb")
            )
        except (ValueError, OSError):
            self.go.set()
            return  # stdin is a regular file: nothing to watch
        while True:
            try:
                line = await asyncio.wait_for(reader.readline(), self.console_timeout or None)
            except asyncio.TimeoutError:
                self.begin_stop(f"no word from the console for {self.console_timeout:g}s")
                return
            if not line:
                self.stdin_closed = True
                self.begin_stop("console gone (stdin closed)")
                return
            self.last_word = time.monotonic()
            try:
                command = json.loads(line)
            except ValueError:
                continue
            if isinstance(command, dict) and command.get("node", self.node_rank) == self.node_rank:
                self.on_command(command)

    # -- stopping ----------------------------------------------------------------------

    def stop_before_start(self) -> bool:
        """A stop while holding for "go": nothing was started, so there is nothing to stop
        but the wait itself."""
        if self.waiting:
            self.stopping = True
            self.go.set()
        return self.waiting

    def begin_stop(self, reason: str) -> None:
        """SIGTERM every process once (those the mode leaves to others excepted), SIGKILL
        every survivor after the grace."""
        if self.stopping or self.stop_before_start():
            return
        self.stopping = True
        self.emitter.emit({"ev": "stopping", "reason": reason, "grace": self.grace, "t": time.time()})
        self.before_stop()
        processes = self.group.descendants()
        self.group.terminate(self.stop_targets(processes))
        self.group.terminate_children(processes)
        self.escalation = asyncio.get_running_loop().call_later(self.grace, self.kill_all)
        self.changed.set()

    def stop_tree(self, tree: Callable[[], list[psutil.Process]]) -> None:
        """Stop one process tree (a rank): SIGTERM now, SIGKILL to what is left after the grace."""
        first = tree()
        self.group.terminate(first)
        asyncio.get_running_loop().call_later(
            self.grace, lambda: signal_all(first + tree(), signal.SIGKILL))

    def kill_all(self) -> None:
        if self.waiting:
            return  # nothing started yet
        count = self.group.kill()
        if count:
            self.emitter.emit({"ev": "killing", "count": count, "t": time.time()})

    # -- what the ranks use, where they are ----------------------------------------------

    async def sample_every(self, interval: float) -> None:
        """A "sample" event every `interval` seconds while the ranks run (see the docs)."""
        sampler = Sampler()
        sampler.sample(self.targets())  # the baseline for CPU %
        while not self.stopping:
            await asyncio.sleep(interval)
            if self.stopping:
                return
            ranks = sampler.sample(self.targets())
            if ranks:
                self.emitter.emit({"ev": "sample", "t": time.time(), "ranks": ranks,
                                   "nvml": sampler.gpu_unavailable()})

    async def dump_stacks(self, command: dict) -> None:
        """py-spy on every process of every running rank, all at once (bounded); one "stack"
        event per rank, then "stacks" (see the docs)."""
        request = command.get("id")
        timeout = float(command.get("timeout") or STACKS_TIMEOUT)
        targets = self.targets()
        py_spy = find_py_spy()
        if py_spy is None or psutil is None:
            self.emitter.emit({"ev": "stacks", "id": request, "ranks": 0, "t": time.time(),
                               "error": f"py-spy is not installed for {sys.executable}: {STACKS_INSTALL}"})
            return
        parents, names = {}, {}
        for process in self.group.descendants():
            try:
                with process.oneshot():
                    parents[process.pid] = process.ppid()
                    names[process.pid] = " ".join(process.cmdline())[:200] or process.name()
            except psutil.Error:
                continue
        by_root = {t.pid: t for t in targets if t.pid in parents}
        owners = rank_owners(parents, set(by_root))
        limit = asyncio.Semaphore(STACKS_PARALLEL)

        async def one(pid: int) -> dict:
            async with limit:
                dump = await dump_process(self.group, py_spy, pid, timeout)
            return {**dump, "ppid": parents.get(pid), "cmdline": names.get(pid, "")}

        async def rank(root: int, target: Target) -> None:
            pids = [root] + sorted(p for p, r in owners.items() if r == root and p != root)
            processes = await asyncio.gather(*(one(pid) for pid in pids))
            self.emitter.emit({"ev": "stack", "id": request, **target.tag, "pid": root,
                               "processes": list(processes)})

        await asyncio.gather(*(rank(root, target) for root, target in by_root.items()))
        self.emitter.emit({"ev": "stacks", "id": request, "ranks": len(by_root), "t": time.time(),
                           "error": None})

    # -- logs ------------------------------------------------------------------------

    def flush(self, tail: LogTail, final: bool = False) -> bool:
        """Emit the log's new text (final: all of it); True if more is waiting.

        One event carries at most about READ_CHUNK bytes, however fast a rank floods its
        log: the console reads events as lines and a giant one would overrun it."""
        while True:
            data = tail.read_rest() if final else tail.read_new()
            if data:
                self.emitter.emit({**tail.tag, "data": data.decode("utf-8", "surrogateescape")})
            if not (final and tail.more):
                return tail.more

    async def wait_for_change(self, found_output: bool) -> None:
        try:
            await asyncio.wait_for(
                self.changed.wait(), ACTIVE_POLL_INTERVAL if found_output else POLL_INTERVAL
            )
        except asyncio.TimeoutError:
            pass

    async def follow_until_done(self) -> None:
        """Stream logs until the mode's processes are done and no descendant is left."""
        while True:
            emitted_before = self.emitter.emitted
            self.poll()
            more = False
            for tail in self.tails():
                more = self.flush(tail) or more
            await self.emitter.drain()
            if self.done():
                left = [p for p in self.group.descendants() if p.pid not in self.group.helpers]
                if not left:
                    break
                if self.stopping:  # born since the stop began (or left to a mode's process
                    self.group.terminate(left)  # that is gone now): asked once, too
                self.begin_stop(self.leftover_reason)
            self.changed.clear()
            if more:  # a capped read: read on at once, letting signals and stdin in
                await asyncio.sleep(0)
                continue
            await self.wait_for_change(self.emitter.emitted != emitted_before)
        self.finish()
        if self.escalation:
            self.escalation.cancel()


# -- fixed mode: one worker per slot ---------------------------------------------------


class Worker(Child):
    """One rank: the spec's command for its local rank (or its own argv)."""

    def __init__(self, spec: dict, log_dir: str, command: dict | None) -> None:
        self.rank: int = spec["rank"]
        self.local_rank: int = spec.get("local_rank", 0)
        # DeepSpeed names a rank's own log by its RANK, which differs from this console's
        # index when the console runs one node's share (--no_ssh --node_rank N)
        self.job_rank = int(spec.get("env", {}).get("RANK", self.rank))
        argv = spec["argv"] if "argv" in spec else command_argv(command, spec["local_rank"])
        log = LogTail(os.path.join(log_dir, f"rank-{self.rank}.log"), {"ev": "out", "rank": self.rank})
        super().__init__(argv, log, spec.get("env", {}))


class FixedLauncher(NodeLauncher):
    """One worker per slot, started at once. The first that fails stops the others and
    its status is the node's exit code."""

    leftover_reason = "workers exited, stopping their leftover children"

    def __init__(self, spec: dict, stdin_rest: bytes = b"", watch_stdin: bool = True) -> None:
        super().__init__(spec, stdin_rest, watch_stdin)
        self.workers = [Worker(w, self.log_dir, spec.get("command")) for w in spec["workers"]]
        self.first_failure: Worker | None = None
        self.setup_error: str | None = None  # why no worker can start (checked by the preflight)
        if spec.get("bind_cores"):
            try:
                shares = core_shares(spec["bind_cores"].get("cores"), len(self.workers))
            except ValueError as exc:
                self.setup_error = f"--bind_cores_to_rank: {exc}"
            else:
                for worker, share in zip(self.workers, shares):
                    worker.cpus = share
                    worker.env = {**worker.env, "OMP_NUM_THREADS": str(len(share))}

    def setup_problems(self) -> list[str]:
        problems = [self.setup_error] if self.setup_error else []
        rank_log = self.spec.get("rank_log")
        if rank_log:
            where = _log_dir_problem(os.path.join(self.spec.get("cwd") or os.getcwd(), rank_log["dir"]))
            if where:
                problems.append("--enable_each_rank_log: " + where.replace("the log directory", "the directory"))
        return problems

    def copy_rank_logs(self) -> None:
        """--enable_each_rank_log: every rank's output also in DIR/<prefix>_rank<r>.log."""
        rank_log = self.spec.get("rank_log")
        if not rank_log or self.setup_error:
            return
        directory = os.path.join(self.spec.get("cwd") or os.getcwd(), rank_log["dir"])
        try:
            os.makedirs(directory, exist_ok=True)
            for worker in self.workers:
                worker.log.copy_to(os.path.join(directory, f"{rank_log['prefix']}_rank{worker.job_rank}.log"))
        except OSError as exc:
            self.setup_error = f"--enable_each_rank_log: {exc.filename}: {exc.strerror}"

    def start(self) -> None:
        self.copy_rank_logs()
        for worker in self.workers:
            if self.stopping:
                # A worker that could not start stopped the job: the rest never run (their
                # ranks stay without a "started" event) and must not be waited for.
                worker.exited = True
                continue
            error = self.setup_error or self.start_child(worker)
            if error is None:
                started = {"ev": "started", "rank": worker.rank, "pid": worker.pid, "t": time.time()}
                if worker.cpus:
                    started["cpus"] = cpu_list_text(worker.cpus)
                self.emitter.emit(started)
                continue
            reason = error if isinstance(error, str) else f"{worker.argv[0]}: {error.strerror}"
            message = f"cannot start rank {worker.rank}: {reason}\n"
            with open(worker.log.path, "ab") as log:
                log.write(message.encode())
            self.emitter.emit({"ev": "error", "rank": worker.rank, "message": message.strip()})
            worker.log.open()
            worker.code, worker.exited = 127, True
            self.on_exit(worker)

    def on_exit(self, worker: Worker) -> None:
        self.flush(worker.log, final=True)
        stopped = worker.stopped  # we signalled it while it ran (stop_rank, or the job's stop)
        self.emitter.emit(
            {"ev": "exited", "rank": worker.rank, "code": worker.code, "signal": worker.signal,
             "t": time.time(), "stopped": stopped}
        )
        if (exit_status(worker.code, worker.signal) != 0 and not stopped and not self.stopping
                and self.first_failure is None):
            self.first_failure = worker
            self.begin_stop(f"rank {worker.rank} failed")

    def before_stop(self) -> None:
        """Every worker still running is stopped by us from here on; one that has already
        ended (a zombie not reaped yet: it died with the first failure, say, of its lost
        peer) ended on its own, and its exit says so."""
        for worker in self.workers:
            if worker.pid and not worker.exited and not _is_zombie(worker.pid):
                worker.stopped = True

    def targets(self) -> list[Target]:
        visible = {**os.environ, **self.env}
        return [Target({"rank": w.rank}, w.pid, bound_gpu({**visible, **w.env}, w.local_rank))
                for w in self.workers if w.pid and not w.exited]

    def on_command(self, command: dict) -> None:
        kind = command.get("cmd")
        if kind not in ("stop_rank", "kill_rank"):
            return super().on_command(command)
        worker = next((w for w in self.workers if w.rank == command.get("rank") and not w.exited), None)
        if worker is not None:
            worker.stopped = True
            if kind == "kill_rank":
                signal_all(self.group.tree(worker.pid), signal.SIGKILL)
                _killpg(worker.pid, signal.SIGKILL)
            else:
                self.stop_tree(lambda: self.group.tree(worker.pid))

    def tails(self) -> list[LogTail]:
        return [w.log for w in self.workers if not w.exited]

    def done(self) -> bool:
        return all(w.exited for w in self.workers)

    def finish(self) -> None:
        for worker in self.workers:
            self.flush(worker.log, final=True)  # children may have written after their parent

    def exit_code(self) -> int:
        if self.first_failure is not None:
            return exit_status(self.first_failure.code, self.first_failure.signal)
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        return max((exit_status(w.code, w.signal) for w in self.workers), default=0)


# -- elastic mode: torch's elastic agent as the only child ----------------------------

#: Runs as each worker of torch's agent (`python -S -c SHIM_BOOT`, the source in the env):
#: starts the user's command with stdout+stderr in one file of its own, describes itself in
#: `w<pid>.json` (identity from the env torch gave it) and its outcome in `w<pid>.status`,
#: then ends the way the command did, so the agent sees the real exit code or signal.
#: It needs no signal forwarding: torch (killpg) and this launcher (every descendant)
#: signal the command directly. The command's argv comes from the env, not through
#: torchrun, which would rewrite `$$` and `${local_rank}` in arguments.
SHIM_SOURCE = r'''
import json, os, signal, subprocess, sys, time
env = os.environ
out_dir = env.pop("FLEXTUI_ELASTIC_DIR")
spec = json.loads(env.pop("FLEXTUI_WORKER"))
env.pop("FLEXTUI_SHIM", None)
for name in spec.get("unset", ()):
    env.pop(name, None)
for ours, theirs in (("CROSS_RANK", "GROUP_RANK"), ("CROSS_SIZE", "GROUP_WORLD_SIZE"),
                     ("LOCAL_SIZE", "LOCAL_WORLD_SIZE")):
    if theirs in env:
        env[ours] = env[theirs]
local_rank = env.get("LOCAL_RANK", "0")
argv = spec["head"] + (["--local_rank=" + local_rank] if spec.get("local_rank_arg") else []) + spec["tail"]
base = os.path.join(out_dir, "w%d" % os.getpid())


def write(path, record):
    with open(path + ".tmp", "w") as f:
        json.dump(record, f)
    os.replace(path + ".tmp", path)


def number(name, default=-1):
    try:
        return int(env.get(name, default))
    except ValueError:
        return default


for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2):
    signal.signal(sig, lambda *_: None)  # outlive the command to report it; exec resets these
meta = {"shim": os.getpid(), "rank": number("RANK"), "local_rank": number("LOCAL_RANK"),
        "local_world_size": number("LOCAL_WORLD_SIZE"), "world_size": number("WORLD_SIZE"),
        "group_rank": number("GROUP_RANK"), "group_world_size": number("GROUP_WORLD_SIZE"),
        "restart_count": number("TORCHELASTIC_RESTART_COUNT", 0),
        "master": "%s:%s" % (env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")), "t": time.time()}
log = os.open(base + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
try:
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
except OSError as exc:
    os.write(log, ("flextui: cannot start %s: %s\n" % (argv[0], exc.strerror)).encode())
    write(base + ".json", dict(meta, pid=None))
    write(base + ".status", {"code": 127, "signal": None, "t": time.time()})
    os._exit(127)
os.close(log)
write(base + ".json", dict(meta, pid=child.pid))
code = child.wait()
write(base + ".status", {"code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                         "t": time.time()})
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
    os._exit(128 - code)
os._exit(code)
'''
SHIM_BOOT = "import os;exec(os.environ['FLEXTUI_SHIM'])"
GROUP_WAIT = 2.0  # seconds to wait for all of a worker group's shims before announcing it


class ElasticWorker:
    """One worker of the agent, seen through the files its shim writes."""

    def __init__(self, meta: dict, base: str, seq: int) -> None:
        self.rank: int = meta["rank"]
        self.local_rank: int = meta["local_rank"]
        self.seq = seq
        self.pid = meta.get("pid")
        self.log = LogTail(base + ".log", {"ev": "out", "seq": seq, "rank": self.rank})
        self.status_path = base + ".status"
        self.code: int | None = None
        self.signal: int | None = None
        self.exited = False
        self.stopped = False
        try:
            self.shim: psutil.Process | None = psutil.Process(meta["shim"])
        except psutil.Error:
            self.shim = None

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.shim, *self.shim.children(recursive=True)] if self.shim else []
        except psutil.Error:
            return []

    def gone(self) -> bool:
        try:
            return self.shim is None or self.shim.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True


class WorkerGroup:
    """The workers one agent started together after one rendezvous (one attempt)."""

    def __init__(self, seq: int, meta: dict) -> None:
        self.seq = seq
        self.meta = meta
        self.key = (meta["master"], meta["world_size"], meta["restart_count"], meta["group_rank"])
        self.identity = (meta["master"], meta["world_size"])  # the same on every node of the round
        self.workers: dict[int, ElasticWorker] = {}
        self.first_seen = time.monotonic()
        self.announced = False
        self.stopped = False


class ElasticLauncher(NodeLauncher):
    """Runs torch's elastic agent and reports the workers it starts, attempt by attempt.

    The agent is the only child; a failed worker is its business (it restarts the group),
    not a reason to stop; the node ends when the agent has, with the agent's status."""

    leftover_reason = "torch's elastic agent exited, stopping what it left behind"

    def __init__(self, spec: dict, stdin_rest: bytes = b"", watch_stdin: bool = True) -> None:
        super().__init__(spec, stdin_rest, watch_stdin)
        self.elastic = spec["elastic"]
        self.dir = os.path.join(self.log_dir, f"elastic-node{self.node_rank}")
        self.agent = Child(self.agent_argv(), LogTail(os.path.join(self.dir, "agent.log"), {"ev": "agent_out"}))
        self.groups: list[WorkerGroup] = []
        self.seen: set[str] = set()
        self.doomed: dict[tuple, str] = {}  # attempt identity -> why its workers must stop

    def agent_argv(self) -> list[str]:
        return [*self.elastic["agent"], "--log-dir", os.path.join(self.dir, "torchelastic"),
                "--no-python", self.elastic["python"], "-S", "-c", SHIM_BOOT]

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        env = {**os.environ, **self.env}
        # Workers would find stale addresses in a rendezvous store shared across restarts
        # (pytorch#135712): every round gets a fresh one. INFO makes the agent's log say
        # what it does; the shim takes back from the workers whatever we added.
        added = [name for name in ("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "LOGLEVEL") if name not in env]
        agent = self.agent
        agent.env = {
            "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1"),
            "LOGLEVEL": env.get("LOGLEVEL", "INFO"),
            "FLEXTUI_ELASTIC_DIR": self.dir,
            "FLEXTUI_SHIM": SHIM_SOURCE,
            "FLEXTUI_WORKER": json.dumps({**self.spec["command"], "unset": added}),
        }
        error = self.start_child(agent)
        if error is not None:
            message = f"cannot start torch's elastic agent: {agent.argv[0]}: {error.strerror}"
            self.emitter.emit({"ev": "error", "rank": None, "message": message})
            agent.code, agent.exited = 127, True
            return
        self.emitter.emit({"ev": "agent", "pid": agent.pid, "argv": agent.argv, "t": time.time()})

    def on_exit(self, agent: Child) -> None:
        self.poll()  # its workers ended before it did: their exits come first
        self.flush(agent.log, final=True)
        self.emitter.emit({"ev": "agent_exited", "code": agent.code, "signal": agent.signal,
                           "stopped": self.stopping, "t": time.time()})

    def on_command(self, command: dict) -> None:
        kind = command.get("cmd")
        if kind == "stop_attempt":
            identity = (command.get("master"), command.get("world_size"))
            reason = command.get("reason", "stopped by console")
            self.doomed.setdefault(identity, reason)
            for group in self.groups:
                if group.identity == identity and group.announced:
                    self.stop_group(group, reason)
        elif kind in ("stop_rank", "kill_rank"):
            for group in self.groups[-1:]:
                for worker in group.workers.values():
                    if worker.rank == command.get("rank") and not worker.exited:
                        if kind == "kill_rank":
                            worker.stopped = True
                            signal_all(worker.tree(), signal.SIGKILL)
                        else:
                            self.stop_worker(worker)
        else:
            super().on_command(command)

    def stop_targets(self, processes: list[psutil.Process]) -> list[psutil.Process]:
        """torch's agent stops its own workers: it SIGTERMs each worker's process group
        (once) when it gets its SIGTERM, so those groups are left to it while it lives (a
        second SIGTERM would cut a checkpointing worker short)."""
        agents_groups = self.agents_worker_groups()
        return [p for p in processes if _pgid(p.pid) not in agents_groups]

    def agents_worker_groups(self) -> set[int]:
        """Process groups torch's agent signals itself: its children, each started in a
        session of its own (none once the agent is gone)."""
        if self.agent.exited or not self.agent.pid:
            return set()
        try:
            return {c.pid for c in psutil.Process(self.agent.pid).children() if _pgid(c.pid) == c.pid}
        except psutil.Error:
            return set()

    def stop_group(self, group: WorkerGroup, reason: str) -> None:
        if group.stopped:
            return
        group.stopped = True
        self.emitter.emit({"ev": "stopping_attempt", "seq": group.seq, "reason": reason, "t": time.time()})
        for worker in group.workers.values():
            self.stop_worker(worker)

    def stop_worker(self, worker: ElasticWorker) -> None:
        """The agent sees a failed worker and restarts its group (counted in --max-restarts)."""
        if not worker.exited:
            worker.stopped = True
            self.stop_tree(worker.tree)

    # -- following the agent and its workers ---------------------------------------------

    def poll(self) -> None:
        self.scan()
        for worker in list(self.live_workers()):
            self.check_exit(worker)

    def targets(self) -> list[Target]:
        visible = {**os.environ, **self.env}
        targets = []
        for worker in self.live_workers():
            pid = worker.pid or (worker.shim.pid if worker.shim else None)
            if pid:
                targets.append(Target({"rank": worker.rank, "seq": worker.seq}, pid,
                                      bound_gpu(visible, worker.local_rank)))
        return targets

    def tails(self) -> list[LogTail]:
        own = [] if self.agent.exited else [self.agent.log]
        return own + [w.log for w in self.live_workers()]

    def done(self) -> bool:
        return self.agent.exited

    def finish(self) -> None:
        self.scan()
        for group in self.groups:
            if not group.announced:
                self.announce(group)
        for worker in list(self.live_workers()):
            self.check_exit(worker, final=True)
        self.flush(self.agent.log, final=True)

    def scan(self) -> None:
        try:
            names = [n for n in os.listdir(self.dir) if n.endswith(".json") and n not in self.seen]
        except OSError:
            names = []
        found = []
        for name in names:
            try:
                with open(os.path.join(self.dir, name)) as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                continue  # not there yet (the shim renames it into place)
            self.seen.add(name)
            found.append((meta.get("t", 0.0), name, meta))
        for _, name, meta in sorted(found, key=lambda item: item[:2]):
            self.add_worker(meta, os.path.join(self.dir, name[: -len(".json")]))
        for group in self.groups:
            if not group.announced and (
                len(group.workers) >= self.elastic["nproc"] or self.agent.exited
                or time.monotonic() - group.first_seen > GROUP_WAIT
            ):
                self.announce(group)

    def add_worker(self, meta: dict, base: str) -> None:
        group = self.groups[-1] if self.groups else None
        key = (meta["master"], meta["world_size"], meta["restart_count"], meta["group_rank"])
        if group is None or group.key != key or meta["local_rank"] in group.workers:
            group = WorkerGroup(len(self.groups), meta)
            self.groups.append(group)
        worker = ElasticWorker(meta, base, group.seq)
        group.workers[worker.local_rank] = worker
        if group.announced:  # a straggler after GROUP_WAIT: announce the group again
            self.announce(group)

    def announce(self, group: WorkerGroup) -> None:
        group.announced = True
        meta = group.meta
        self.emitter.emit({
            "ev": "attempt", "seq": group.seq, "restart_count": meta["restart_count"],
            "world_size": meta["world_size"], "group_rank": meta["group_rank"],
            "group_world_size": meta["group_world_size"], "master": meta["master"],
            "ranks": [{"rank": w.rank, "local_rank": w.local_rank, "pid": w.pid}
                      for _, w in sorted(group.workers.items())],
            "t": meta.get("t"),
        })
        for worker in group.workers.values():
            if not worker.exited:
                worker.log.open()
        reason = self.doomed.get(group.identity)
        if reason is not None:
            self.stop_group(group, reason)

    def check_exit(self, worker: ElasticWorker, final: bool = False) -> None:
        status = _read_json(worker.status_path)
        if status is None:
            if not (final or worker.gone()):
                return
            status = _read_json(worker.status_path)  # it may have written it just now
        if status is None:  # gone without a word: only SIGKILL does that to the shim
            status = {"code": None, "signal": signal.SIGKILL, "t": time.time()}
        self.flush(worker.log, final=True)
        worker.log.close()
        worker.code, worker.signal, worker.exited = status.get("code"), status.get("signal"), True
        self.emitter.emit({"ev": "exited", "seq": worker.seq, "rank": worker.rank,
                           "code": worker.code, "signal": worker.signal, "t": status.get("t"),
                           "stopped": worker.stopped or self.stopping})

    def live_workers(self) -> Iterator[ElasticWorker]:
        for group in self.groups:
            if group.announced:
                for worker in group.workers.values():
                    if not worker.exited:
                        yield worker

    def exit_code(self) -> int:
        if self.stop_signal is not None:
            return 128 + self.stop_signal
        if self.agent.pid is None and self.agent.code is None:
            return 1
        return exit_status(self.agent.code, self.agent.signal)


#: How a spec's mode ("mode", else "elastic" when it has that key) is run on the node.
MODES: dict[str, type[NodeLauncher]] = {"fixed": FixedLauncher, "elastic": ElasticLauncher}


def mode_of(spec: dict) -> str:
    return spec.get("mode") or ("elastic" if spec.get("elastic") else "fixed")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _utf8_boundary(data: bytes) -> int:
    """len(data), less a UTF-8 sequence cut short at its end (so a piece decodes whole)."""
    end = len(data)
    for back in range(1, min(4, end) + 1):
        byte = data[end - back]
        if byte & 0xC0 != 0x80:  # ASCII or a lead byte
            need = 1 if byte < 0xC0 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return end - back if need > back else end
    return end


def start_logged(argv: list[str], log_path: str, env: dict, cwd: str | None,
                 cpus: list[int] | None = None) -> subprocess.Popen:
    """A child in its own session (signalled as a group, deaf to the terminal) whose
    stdout+stderr go straight to its log file: it never waits on us. With `cpus`, it is
    pinned to them from its first instruction: the launcher pins itself while it forks
    (the child inherits it, and so do all the child's threads and children)."""
    with open(log_path, "ab", buffering=0) as log:
        own = os.sched_getaffinity(0) if cpus else None
        if cpus:
            os.sched_setaffinity(0, cpus)
        try:
            return subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=cwd or None, env=env, start_new_session=True,
            )
        finally:
            if own is not None:
                os.sched_setaffinity(0, own)


def _become_subreaper() -> None:
    """Orphaned grandchildren get re-parented to us, not to init, so we can stop them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _is_zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True  # gone: it ended before we got to it


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stdin_is_a_console() -> bool:
    """A pipe, socket or terminal: someone who can send commands (and whose EOF means
    gone). A regular file or /dev/null is nobody (and epoll refuses them)."""
    try:
        mode = os.fstat(0).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flextui.launch", description=__doc__.splitlines()[0])
    parser.add_argument("--spec-file", metavar="PATH",
                        help="the node spec (JSON, see the module docs) for running by hand; "
                             "default: the first line on stdin")
    parser.add_argument("--save_pid", "--save-pid", metavar="FILE", help="write the launcher's pid here")
    parser.add_argument("--reason-fd", type=int, metavar="FD",
                        help="on exit, write why the launcher ended to this inherited file descriptor: "
                             "'console-lost' or 'done' (see the module docs)")
    args = parser.parse_args(argv)
    rest = b""
    try:
        if args.spec_file:
            with open(args.spec_file, "rb") as f:
                message = json.load(f)
            if not (isinstance(message, dict) and message.get("cmd") == "spec"):
                message = {"cmd": "spec", "spec": message}
        else:
            line, rest = read_spec_line()
            message = json.loads(line)
        spec = choose_spec(message)
        spec_grace(spec)
    except SpecError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    except (OSError, ValueError) as exc:
        parser.exit(2, f"{parser.prog}: bad spec: {exc}\n")
    if psutil is None and "preflight" not in spec:  # with one, the preflight reports it
        parser.exit(1, f"{parser.prog}: psutil is not installed for {sys.executable}\n")
    if args.save_pid:
        with open(args.save_pid, "w") as f:
            f.write(f"{os.getpid()}\n")
    launcher = MODES.get(mode_of(spec))
    if launcher is None:
        parser.exit(2, f"{parser.prog}: unknown mode {mode_of(spec)!r} (known: {', '.join(MODES)})\n")
    node = launcher(spec, rest, watch_stdin=stdin_is_a_console())
    code = asyncio.run(node.run())
    if args.reason_fd is not None:
        try:
            os.write(args.reason_fd, b"console-lost\n" if node.console_lost() else b"done\n")
        except OSError:
            pass  # nobody is listening
    return code


if __name__ == "__main__":
    sys.exit(main())
