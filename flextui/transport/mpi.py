"""MPI backend (`--launcher mpirun`): node launchers started by the MPI runtime.

The hosts come from the hostfile as with SSH; the MPI runtime the user already runs
(Open MPI's `mpirun`, or MPICH's Hydra `mpiexec`; which one is read from
`PROGRAM --version`) starts one node launcher per host, reaching the nodes its own way
(ssh with ~/.ssh/config, or a batch system's launcher) and with the user's own options
(`--mpi_args`, split like a shell line). It is one new file beside ssh.py and slurm.py:
the launcher, the job and the UI do not know MPI is there.

One runtime invocation per node, not one for all hosts:

    Open MPI:  mpirun --np 1 --host HOST --bind-to none --wdir /
                      --mca orte_keep_fqdn_hostnames 1 [--allow-run-as-root]
                      MPI_ARGS.. PYTHON -c <guard + launcher source>
    Hydra:     mpiexec -n 1 -hosts HOST -genvnone -wdir / MPI_ARGS.. PYTHON -c <same>

and the node's spec as the first line on the runtime's stdin, which it forwards to the
launcher (rank 0).

What was measured on Debian's Open MPI 4.1.4 and MPICH 4.0.2 decides it:

* Hydra forwards the console's stdin to rank 0 only; every other rank gets a pipe that
  never closes. One mpiexec for all hosts could neither command nor free the other nodes.
* Open MPI's `--tag-output` tags ~4 KiB pieces, and the pieces of different ranks
  interleave in the middle of lines (a 2 MiB event arrives in ~500 pieces mixed with the
  other node's); the tag text can also appear inside log text, so one shared stdout
  cannot be split back into nodes safely. With one rank per runtime, the launcher's
  stdout is its node's alone and a 2 MiB line arrives whole (both runtimes).
* The runtime ends a whole job at once when one rank exits non-zero or a node is lost,
  killing the other ranks within 1-2 s (Open MPI) or at once (Hydra). Per node, that
  never crosses nodes: a lost node ends only its own runtime, its channel closes, and
  the console stops the others gracefully, exactly as with SSH (and as Slurm's one srun
  step per node does). Failure stays the console's business.
* Each node costs one runtime process and its ssh client on the console's machine
  (~13 MB, ~0.05 s CPU to start); the starts run in parallel, bounded like SSH's.

Lifecycle. The runtime starts a small guard (GUARD_PROLOGUE, before the launcher's
source in the same `python -c`), which forks the launcher into its own session with the
same stdin/stdout, forwards SIGTERM/SIGINT/SIGHUP to it and exits with its status. The
runtime's daemon (orted, hydra_pmi_proxy) SIGKILLs what it started: Open MPI 1 s after
its SIGTERM (odls_base_sigkill_timeout), Hydra at once when mpiexec dies (also by SIGPIPE
when it writes to a console that is gone). That SIGKILL hits the guard only; the
launcher sees its stdin close when the daemon goes and stops its workers with the full
--grace, as it does when an SSH channel drops. So:
* Ctrl+C / a failing rank: the console stops every node through its channel (stdin
  commands), as with SSH;
* console killed (even -9): each runtime's stdin closes; the runtime passes the EOF on
  to its launcher, which stops everything;
* a node lost: its runtime exits, the console sees that channel close and stops the
  others;
* the runtime killed: the daemon closes the launcher's stdin (and maybe kills the
  guard); the launcher stops everything;
* a node cut off without a word (no FIN, no RST): the launcher stops itself after
  --node_timeout without pings, and this channel ends the node's runtime after as long
  without a word (the launcher answers pings here: MPIChannel._watch_silence); on the
  node, the guard then ends the runtime's daemon (below).
The guard also removes the runtime's own variables (OMPI_*, PMIX_*, PMI_*, ...) from the
launcher's environment: the workers are not ranks of this one-process MPI job, and an
MPI or DeepSpeed program among them must not take itself for rank 0 of 1.

A node cut off. Once the launcher and its workers are gone, the runtime's daemon on the
node cannot report that to its mpirun/mpiexec, and neither gives up before the network
returns (measured with the node's link down):
* Open MPI's orted reaps the rank and waits for mpirun (its TCP keepalive starts after
  300 s). On SIGTERM it SIGCONTs its ranks at once, SIGTERMs them 1 s later
  (odls_base_sigkill_timeout), SIGKILLs them 1 s after that, and exits once they are
  gone (about 1 s after its SIGTERM even when they left at once), removing its session
  directory (/tmp/ompi.HOST.UID/jf.N; a SIGKILL would leave it behind).
* MPICH's hydra_pmi_proxy forwards the rank's output to mpiexec with blocking writes: with
  the ranks logging, it hangs in a write on the dead connection and never reaps what it
  started (the guard stays `[python] <defunct>`). A quiet rank's end fits in the socket's
  buffer and the proxy exits by itself. It catches SIGTERM and SIGINT and ignores them
  (its handler acts on SIGPIPE and SIGTSTP only): only SIGKILL ends it; its dead child
  then goes to the node's init, which reaps it.
So the guard learns why its launcher ended (`--reason-fd`, a pipe: see flextui.launch).
Only on "console-lost" (the console fell silent for console_timeout while the launcher's
stdin stayed open), after the launcher and every worker are gone, it SIGTERMs its parent,
if that is still the process that started it, leaves as soon as the parent signals it
(orted's SIGCONT: it is stopping what it started and ends by itself), and SIGKILLs a
parent still there after DAEMON_TERM_WAIT (Hydra's proxy). On any other end (the job
ended, the console stopped it, stdin closed, a signal) it exits with the launcher's status
and the runtime reports to mpirun/mpiexec as it should. The parent is the daemon the
runtime started for this one-rank invocation alone (orted, hydra_pmi_proxy; for a host
that is the console's own machine, Open MPI's mpirun itself), so nothing else is hit; a
console that was only stopped (SIGSTOP) past the timeout is treated as lost, as the
launcher already did when it stopped the job.
Compared with SSH: on a cut-off node the `sshd: USER@notty` session stays under both
until TCP gives up or the network returns (the runtime reaches nodes with ssh too). That
process is sshd's own: the system's service made it for a connection and ends it with that
connection, and flextui started nothing there but the launcher. The MPI daemon is not a
service: it is a process of this job, made for our one invocation and serving nothing
else, so with the node's job over and the console known dead it is the job's own leftover,
and the guard ends it.

Open MPI binds a rank to one core by default, and the workers would inherit it:
`--bind-to none`. Hydra passes the console's whole environment by default: `-genvnone`,
so the launcher starts from the node's login environment as with SSH (the spec carries
what the workers get). Both start the rank in the console's working directory and fail if
it is missing on the node: `/` instead; the launcher's preflight checks the job's real
working directory and reports it in one line. Open MPI shortens a host name to its
first label before it runs ssh ("node1.example.org" -> "node1"), so a hostfile of full
names would reach other hosts or none: `orte_keep_fqdn_hostnames` (Open MPI 5, untested
here: `prte_keep_fqdn_hostnames`). As root, Open MPI needs `--allow-run-as-root`, added
when the console runs as root.

Bad input gets one line and nothing left: no runtime found or an unknown one fails before
anything starts; a node whose runtime cannot start the launcher (unknown or unreachable
host, refused key; Hydra's mpiexec would wait forever) fails with the ssh client's own
line, and the job ends the launchers already started.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import psutil

from flextui import launch
from flextui.errors import LaunchError, UsageError
from flextui.transport import (
    Backend, NodeChannel, decode_event, encode_command, inline_program, spec_message,
)
from flextui.world import Node

READ_SIZE = 1 << 18
STDERR_KEEP = 16 << 10  # the tail of the runtime's stderr kept for error messages
FANOUT = 32  # runtimes starting at once (each opens one ssh connection)
VERSION_TIMEOUT = 10.0
EXIT_WAIT = 5.0  # how long close() waits for a runtime whose stdin closed, before SIGTERM
DAEMON_TERM_WAIT = 1.0  # on a cut-off node: from the guard's SIGTERM to its SIGKILL of the runtime's daemon

# Runs first on the node: see the module docstring. The parent is what the runtime knows.
GUARD_PROLOGUE = """import os, signal, sys, time
for _k in [k for k in os.environ if k.startswith(('OMPI_', 'PMIX_', 'PMI_', 'OPAL_', 'PRTE_'))
           or k in ('MPI_LOCALNRANKS', 'MPI_LOCALRANKID', 'HFI_NO_BACKTRACE', 'IPATH_NO_BACKTRACE')]:
    del os.environ[_k]
_daemon = os.getppid()
_reason, _reason_w = os.pipe()
_launcher = os.fork()
if _launcher:
    os.close(_reason_w)
    def _forward(sig, _frame):
        try:
            os.kill(_launcher, sig)
        except ProcessLookupError:
            pass
    def _exit(*_):
        if _code < 0:
            signal.signal(-_code, signal.SIG_DFL)
            os.kill(os.getpid(), -_code)
        os._exit(_code & 255)
    for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(_sig, _forward)
    _null = os.open(os.devnull, os.O_RDWR)
    os.dup2(_null, 0)
    os.dup2(_null, 1)
    _code = os.waitstatus_to_exitcode(os.waitpid(_launcher, 0)[1])
    for _sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(_sig, _exit)
    os.set_blocking(_reason, False)
    try:
        _why = os.read(_reason, 64)
    except BlockingIOError:
        _why = b""
    if _why == b"console-lost\\n":
        signal.signal(signal.SIGCONT, _exit)
        for _sig, _wait in ((signal.SIGTERM, %(term_wait)r), (signal.SIGKILL, 0)):
            try:
                if os.getppid() != _daemon:
                    break
                os.kill(_daemon, _sig)
            except ProcessLookupError:
                break
            _until = time.monotonic() + _wait
            while os.getppid() == _daemon and time.monotonic() < _until:
                time.sleep(0.02)
    _exit()
os.close(_reason)
os.setsid()
sys.argv[1:] = ["--reason-fd", str(_reason_w)]
""" % {"term_wait": DAEMON_TERM_WAIT}
LAUNCHER_PROGRAM = inline_program(launch, GUARD_PROLOGUE)

OPENMPI, OPENMPI5, HYDRA = "Open MPI", "Open MPI 5", "MPICH/Hydra"  # Open MPI 5: PRRTE, not ORTE

# Lines of the ssh client (run by the runtime) or of the runtime when it cannot start the
# launcher on a node. Hydra's mpiexec then waits forever, so the first of them ends it.
START_FAILURE = re.compile(
    r"ssh: .*|Host key verification failed\.|.*Permission denied \(.*|"
    r"kex_exchange_identification: .*|Connection (closed|reset) by .*|"
    r".*execvp error on file .*|.*unable to connect from .*|"
    r".*ORTE was unable to reliably start one or more daemons.*|"
    r".*was unable to find the specified executable file.*|"
    r".*unable to launch the specified application.*"
)
# After the start: the ssh client's word when it lost the node.
CONNECTION_LOST = re.compile(
    r"Connection to \S+ closed.*|.*Broken pipe.*|Timeout, server \S+ not responding.*|"
    r"client_loop: .*|Connection reset by .*"
)


def detect_runtime(program: str | None) -> tuple[str, str]:
    """(absolute path, flavour) of the MPI runtime's launcher program: `program`, else
    mpirun, else mpiexec on PATH. Raises LaunchError (one line) when there is none or it
    is neither Open MPI nor MPICH's Hydra."""
    candidates = [program] if program else ["mpirun", "mpiexec"]
    path = next((found for name in candidates if (found := shutil.which(name))), None)
    if path is None:
        if program:
            raise LaunchError(f"--launcher mpirun: {program} not found")
        raise LaunchError("--launcher mpirun: no mpirun or mpiexec on PATH "
                          "(install Open MPI or MPICH, e.g. apt-get install openmpi-bin)")
    flavour, text = identify_runtime(path)
    if flavour is None:
        first = next((line.strip() for line in text.splitlines() if line.strip()), "nothing")
        raise LaunchError(f"--launcher mpirun: {path} is neither Open MPI nor MPICH/Hydra "
                          f"(--version says: {first})")
    return path, flavour


def identify_runtime(path: str) -> tuple[str | None, str]:
    """(flavour or None, what its --version said)."""
    try:
        said = subprocess.run(
            [path, "--version"], stdin=subprocess.DEVNULL, capture_output=True,
            text=True, errors="replace", timeout=VERSION_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LaunchError(f"--launcher mpirun: {path} --version failed ({exc})") from None
    text = said.stdout + said.stderr
    if match := re.search(r"\((?:Open MPI|OpenRTE)\) (\d+)", text):
        return OPENMPI5 if int(match.group(1)) >= 5 else OPENMPI, text
    if "HYDRA" in text or "Intel(R) MPI" in text:
        return HYDRA, text
    return None, text


#: DeepSpeed's --launcher names for MPI runtimes (ALIASES of "mpirun"): the runtime each
#: wants, the programs tried for it in order, and how its --version tells it.
DEEPSPEED_RUNTIMES: dict[str, tuple[str, tuple[str, ...], Callable[[str, str], bool]]] = {
    "openmpi": ("Open MPI", ("mpirun.openmpi", "mpirun", "mpiexec", "orterun"),
                lambda flavour, text: flavour in (OPENMPI, OPENMPI5)),
    "mpich": ("MPICH", ("mpiexec.hydra", "mpirun.mpich", "mpiexec.mpich", "mpirun", "mpiexec"),
              lambda flavour, text: flavour == HYDRA and "Intel(R) MPI" not in text),
    "impi": ("Intel MPI", ("mpiexec.hydra", "mpirun", "mpiexec"),
             lambda flavour, text: "Intel(R) MPI" in text),
    "mvapich": ("MVAPICH", ("mpiexec.hydra", "mpiexec", "mpirun"),
                lambda flavour, text: flavour == HYDRA and "MVAPICH" in text.upper()),
}


def runtime_for(launcher: str) -> tuple[str, str]:
    """(path, flavour) of the runtime DeepSpeed's `--launcher openmpi|mpich|impi|mvapich`
    names, found on PATH; LaunchError (one line, saying what there is) when it is not."""
    what, programs, fits = DEEPSPEED_RUNTIMES[launcher]
    seen: dict[str, str] = {}
    for name in programs:
        path = shutil.which(name)
        if path is None or os.path.realpath(path) in seen:
            continue
        flavour, text = identify_runtime(path)
        seen[os.path.realpath(path)] = f"{path} is {flavour or 'neither Open MPI nor MPICH'}"
        if flavour is not None and fits(flavour, text):
            return path, flavour
    found = "; ".join(seen.values()) or f"none of {', '.join(programs)} is on PATH"
    raise LaunchError(f"--launcher {launcher}: no {what} runtime found ({found}); "
                      "flextui starts nodes with Open MPI or MPICH: --launcher openmpi|mpich, or --mpirun PROGRAM")


def runtime_argv(path: str, flavour: str, host: str, mpi_args: list[str],
                 program: list[str], as_root: bool) -> list[str]:
    """The runtime's command line that starts `program` once on `host`."""
    if flavour in (OPENMPI, OPENMPI5):
        head = [path, "--np", "1", "--host", host, "--bind-to", "none", "--wdir", "/"]
        # Open MPI cuts "node1.example.org" to "node1" before its ssh unless told not to
        if flavour == OPENMPI:
            head += ["--mca", "orte_keep_fqdn_hostnames", "1"]
        else:
            head += ["--prtemca", "prte_keep_fqdn_hostnames", "1"]
        if as_root:
            head.append("--allow-run-as-root")
    else:
        head = [path, "-n", "1", "-hosts", host, "-genvnone", "-wdir", "/"]
    return [*head, *mpi_args, *program]


class MPIChannel(NodeChannel):
    """One node's launcher under its own runtime process: its stdin/stdout are the node's."""

    def __init__(self, node: Node, process: asyncio.subprocess.Process, runtime: str, python: str,
                 node_timeout: float = 0.0) -> None:
        super().__init__(node)
        self.process = process
        self.runtime = runtime
        self.python = python
        self.node_timeout = node_timeout
        self._last_word = asyncio.get_running_loop().time()
        self._silent = False  # ended for saying nothing for node_timeout
        self._watchdog: asyncio.Future | None = None
        self._stderr = b""
        self._start_failure: str | None = None  # the line that says the start failed
        self._started = False  # the launcher said its first word
        self._failed = asyncio.Event()
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())
        self._reader = self._read_events()
        self._first: dict | None = None
        self._signalled = False

    async def _collect_stderr(self) -> None:
        stderr, pending = self.process.stderr, b""
        while chunk := await stderr.read(READ_SIZE):
            self._stderr = (self._stderr + chunk)[-STDERR_KEEP:]
            if self._start_failure is None and not self._started:
                *lines, pending = (pending + chunk).split(b"\n")
                pending = pending[-4096:]
                for line in lines:
                    text = line.decode(errors="replace").strip()
                    if START_FAILURE.fullmatch(text):
                        self._start_failure = text
                        self._failed.set()
                        break

    async def _read_events(self) -> AsyncIterator[dict]:
        stdout, pending, loop = self.process.stdout, b"", asyncio.get_running_loop()
        while chunk := await stdout.read(READ_SIZE):
            self._last_word = loop.time()
            if b"\n" not in chunk:
                pending += chunk
                continue
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            for line in lines:
                event = decode_event(line)
                if event is not None and event.get("ev") != "pong":  # pongs only feed the watchdog
                    yield event
        # stdout closed: the exit status and the rest of stderr follow (for diagnostics())
        try:
            await asyncio.wait_for(self.process.wait(), EXIT_WAIT)
            await asyncio.wait_for(self._stderr_task, 1)
        except asyncio.TimeoutError:
            pass

    async def wait_started(self, timeout: float) -> None:
        """Until the launcher's first event; LaunchError (the runtime ended) if the runtime
        could not start it: the ssh client failed, the runtime exited, or nothing came
        within `timeout`."""
        first = asyncio.ensure_future(self._reader.__anext__())
        failed = asyncio.ensure_future(self._failed.wait())
        try:
            await asyncio.wait({first, failed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            failed.cancel()
        if first.done() and not first.cancelled() and first.exception() is None:
            self._first = first.result()
            self._started = True
            if self.node_timeout > 0:
                self._watchdog = asyncio.ensure_future(self._watch_silence())
            return
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
        if not self._failed.is_set() and first.done() and not first.cancelled():
            reason = self.diagnostics() or "launcher ended before its first word"  # the runtime exited
        else:
            await self.end_runtime()
            reason = self.diagnostics() or f"no word from the launcher within {timeout:g}s"
        raise LaunchError(f"{self.node.host}: {reason}")

    async def _watch_silence(self) -> None:
        """A node cut off without FIN or RST: the runtime's connections may hang for many
        minutes (Open MPI's TCP keepalive starts after 300 s; Hydra has none), so the
        launcher answers the job's pings (sent every node_timeout/3) and silence for
        node_timeout ends this node's runtime: the job sees the channel close, marks the
        node lost and stops the others. The node stops itself after the same time."""
        loop = asyncio.get_running_loop()
        while self.process.returncode is None:
            await asyncio.sleep(min(1.0, self.node_timeout / 4))
            if loop.time() - self._last_word > self.node_timeout:
                self._silent = True
                await self.end_runtime()
                return

    async def events(self) -> AsyncIterator[dict]:
        if self._first is not None:
            first, self._first = self._first, None
            yield first
        async for event in self._reader:
            yield event

    def send(self, command: dict) -> None:
        if command.get("cmd") == "ping":
            command = {**command, "reply": True}  # feeds the watchdog
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            stdin.write(encode_command(command))

    async def close(self) -> None:
        """Close the launcher's stdin (it stops everything), then wait for the runtime;
        one that lingers is ended (the launcher outlives its guard)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), EXIT_WAIT)
        except asyncio.TimeoutError:
            await self.end_runtime()

    async def end_runtime(self) -> None:
        """SIGTERM the runtime and what it started here (its ssh clients: Open MPI puts each
        in a process group of its own, so all of the session it leads), SIGKILL what is
        still there after a few seconds; reaps it. An ssh client left to a cut-off node
        would hold the runtime's stdout open, and this channel would never end."""
        if self.process.returncode is not None and not self._session():
            return
        self._signalled = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for process in self._session():
                try:
                    process.send_signal(sig)
                except psutil.Error:
                    pass
            try:
                await asyncio.wait_for(self.process.wait(), 3)
            except asyncio.TimeoutError:
                continue
            if sig == signal.SIGTERM and self._session():
                await asyncio.sleep(0.5)  # its ssh clients end with it, or get the SIGKILL
                continue
            break
        try:
            await asyncio.wait_for(self._stderr_task, 1)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - only for diagnostics
            pass

    def _session(self) -> list[psutil.Process]:
        """The runtime and every process of the session it leads (started with its own)."""
        found = []
        for process in psutil.process_iter(["pid"]):
            try:
                if os.getsid(process.pid) == self.process.pid:
                    found.append(process)
            except (OSError, psutil.Error):
                continue
        return found

    def diagnostics(self) -> str:
        """One line: why the launcher could not start (the ssh client's or the runtime's
        word), or why its channel ended (the runtime killed, the node lost)."""
        runtime = os.path.basename(self.runtime)
        said = self._stderr.decode(errors="replace")
        lines = [line.strip() for line in said.splitlines()
                 if line.strip() and not line.startswith("-----")]
        code = self.process.returncode
        if not self._started:
            failure = self._start_failure or next(
                (line for line in lines if START_FAILURE.fullmatch(line)), None)
            if failure is not None:
                # Open MPI: "... could not access or execute an executable: Executable: PATH"
                if f"Executable: {self.python}" in said or "find the specified executable" in failure or (
                        "execvp error" in failure and self.python in failure):
                    return f"python not found: {self.python}"
                return f"{runtime} could not start the launcher: {failure}"
        elif self._silent:
            return f"no word from its launcher for {self.node_timeout:g}s (network down?)"
        elif lost := next((line for line in lines if CONNECTION_LOST.fullmatch(line)), None):
            return lost
        if code is not None and code < 0:
            return f"{runtime} killed by {signal.Signals(-code).name}"
        if code:
            return f"launcher exited with status {code}" + (f": {lines[-1]}" if lines else "")
        return ""

    def interruption(self) -> str | None:
        """The runtime was killed by someone else (its launcher then stopped everything)."""
        code = self.process.returncode
        if code is not None and code < 0 and not self._signalled:
            return f"{os.path.basename(self.runtime)} was killed by {signal.Signals(-code).name}"
        return None


class MPIBackend(Backend):
    name = "mpirun"
    summary = ("one MPI runtime process per host of the hostfile (Open MPI's mpirun or "
               "MPICH's mpiexec, found on PATH) starts its node launcher")
    dash_value_options = ("--mpi_args", "--mpi-args")

    def __init__(self, *, mpirun: str | None = None, mpi_args: str | None = None, launcher: str = "mpirun",
                 python: str | None = None, connect_timeout: float = 15.0, node_timeout: float = 30.0) -> None:
        try:
            self.mpi_args = shlex.split(mpi_args or "")
        except ValueError as exc:
            raise UsageError(f"--mpi_args: {exc}") from None
        if launcher in DEEPSPEED_RUNTIMES and mpirun is None:
            self.runtime, self.flavour = runtime_for(launcher)
        else:
            self.runtime, self.flavour = detect_runtime(mpirun)
        self.python = python or sys.executable
        self.connect_timeout = connect_timeout
        self.node_timeout = node_timeout
        self._fanout: asyncio.Semaphore | None = None  # made in the job's event loop
        self._channels: list[MPIChannel] = []

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("MPI (--launcher mpirun)")
        group.add_argument("--mpi_args", "--mpi-args", metavar="'MPIRUN OPTIONS'",
                           help="extra options for the MPI runtime, split like a shell line, e.g. "
                                "\"--mca plm_rsh_args '-p 2222'\" (Open MPI) or \"-iface ib0\" (Hydra)")
        group.add_argument("--mpirun", metavar="PROGRAM",
                           help="the MPI runtime's launcher (default: mpirun, else mpiexec, on PATH); "
                                "Open MPI or MPICH/Hydra, told apart by its --version")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> MPIBackend:
        return cls(mpirun=args.mpirun, mpi_args=args.mpi_args, launcher=args.launcher, python=args.remote_python,
                   connect_timeout=args.connect_timeout, node_timeout=args.node_timeout)

    async def open(self, node: Node, spec: dict) -> NodeChannel:
        if self._fanout is None:
            self._fanout = asyncio.Semaphore(FANOUT)
        argv = runtime_argv(self.runtime, self.flavour, node.host, self.mpi_args,
                            self.launcher_argv([self.python, "-c", LAUNCHER_PROGRAM]), os.geteuid() == 0)
        async with self._fanout:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    # Its own session: a terminal's Ctrl+C reaches the console only, which
                    # stops the job in order through the launchers' stdin.
                    start_new_session=True,
                )
            except OSError as exc:
                raise LaunchError(f"{node.host}: cannot run {self.runtime}: {exc.strerror}") from None
            channel = MPIChannel(node, process, self.runtime, self.python, self.node_timeout)
            self._channels.append(channel)
            channel.process.stdin.write(spec_message(spec))  # the runtime forwards stdin to it
            await channel.wait_started(self.connect_timeout)
        return channel

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
