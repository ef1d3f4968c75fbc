"""Slurm backend (`--launcher slurm`): node launchers as srun job steps in an allocation.

The allocation is the current one (SLURM_JOB_ID set: inside sbatch/salloc) or a new one
made from `--slurm_args`; its nodes come from `scontrol show hostnames`, in Slurm's order,
so MASTER_ADDR is the first allocated node. Slots per node: `--num_gpus`, else the
allocation's GPUs on that node, else its tasks per node when tasks were asked for, else 1;
a `--hostfile` may still name slots and a subset of the allocated nodes.

One srun step per node, not one step for all nodes:

    srun --jobid=J --nodes=1 --ntasks=1 --ntasks-per-node=1 --nodelist=HOST
         --kill-on-bad-exit=1 --overlap --mpi=none --export=ALL
         --job-name=flextui-<token>-<node rank>
         PYTHON -c <launcher source> (every word its own argv entry, no shell)

and the node's spec as the first line on the step's stdin.

No --chdir: the launcher's own preflight (the spec's "preflight") checks that the working
directory exists on the node and reports it in one line, where srun would fail the step
first; the workers get the directory from the spec. The step is the only one per node:
the launcher checks the node, then waits for the console's "go".

* It is the per-node Backend interface as it stands: a step's stdin/stdout *is* that
  node's channel, so commands reach one node, a node's spec travels on its own stdin,
  and nothing needs demultiplexing (`srun --label` prefixes every line of every task).
* Failure stays the console's business, as with SSH: a rank failing on one node makes
  the console stop the others gracefully, within --grace. In one multi-node step,
  `--kill-on-bad-exit` would instead have Slurm kill the other nodes' launchers the moment
  one exits non-zero, cutting their grace and losing their last events. Per step (one
  task) it only ever applies to that node's own launcher.
* A lost node ends only its own step; the console sees the channel close and stops the rest.
* Cost: one srun process per node on the console's machine and one step creation each,
  fine for the tens to hundreds of nodes this console shows.

`--overlap` lets the launcher's step share the allocation with other steps (a batch
script's own), so it never waits for "busy" resources. A step gets all of the job's CPUs, memory and GRES on its node by default, so
the workers have all of them; their CUDA_VISIBLE_DEVICES (slot ids) are mapped onto the
GPUs Slurm gave the step (slot i -> the i-th entry of the step's CUDA_VISIBLE_DEVICES).

srun runs with the console's environment minus every SLURM_*/SRUN_* variable but SLURM_CONF
and SLURM_CLUSTERS: srun takes options from them, and an sbatch script or salloc shell
exports the job's own (SLURM_NTASKS, SLURM_GPUS_PER_TASK, SLURM_EXPORT_ENV, ...) that would
reshape the one-task step. With `--export=ALL` the launcher and workers start from that
environment. Each worker gets SLURM_PROCID/LOCALID/NODEID/NTASKS that agree with its
flextui rank, so frameworks that read them do not all see task 0 of 1.

Lifecycle: closing a step's stdin (console gone, even by SIGKILL: the pipe closes) is the
launcher's stdin EOF, so it stops every process tree. On `scancel` (or a time limit)
slurmstepd sends SIGTERM to the launcher and its workers, then SIGKILL after KillWait; the
launcher stops its trees as on any stop, srun reports the cancellation, and the channel
tells the job (NodeChannel.interruption), which then fails with that reason and a non-zero
exit. At the end the backend scancels any step of its own still listed (a hung srun),
and an allocation it created is released: salloc holds it only as long as a small holder
process whose stdin is a pipe from the console, so it is released at the end, on Ctrl+C,
and also if the console is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator

from flextui import launch
from flextui.errors import LaunchError
from flextui.hostfile import HostfileError, read_hostfile
from flextui.transport import (
    Backend, NodeChannel, decode_event, encode_command, inline_program, spec_message,
)
from flextui.world import Node

STREAM_LIMIT = 64 << 20  # one event can carry a whole read chunk of log text
RELEASE_TIMEOUT = 15.0

# srun reads its options from SLURM_* variables too, and an sbatch script or salloc shell
# exports the job's own (SLURM_NTASKS, SLURM_GPUS_PER_TASK, SLURM_EXPORT_ENV, ...; a user's
# SLURM_LABELIO would even prefix our protocol lines): none of them reach our srun, but these.
SRUN_KEEP = frozenset({"SLURM_CONF", "SLURM_CLUSTERS"})
CANCELLED = re.compile(r"\*\*\* (JOB|STEP) (\S+) ON (\S+) CANCELLED AT \S+(?: DUE TO ([A-Z_ ]+?))? \*\*\*")
ENDED_STATES = {
    "CANCELLED": "was cancelled", "TIMEOUT": "reached its time limit", "PREEMPTED": "was preempted",
    "NODE_FAIL": "lost a node", "DEADLINE": "reached its deadline", "BOOT_FAIL": "failed to boot",
    "OUT_OF_MEMORY": "ran out of memory", "FAILED": "failed",
}


LAUNCHER_PROGRAM = inline_program(launch)
# Holds a salloc allocation: says which job it is, then lives until its stdin closes.
HOLDER_PROGRAM = (
    "import json,os,sys;"
    "print(json.dumps({k:v for k,v in os.environ.items() if k.startswith('SLURM_')}),flush=True);"
    "sys.stdin.read()"
)


def srun_environ(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The console's environment for srun/salloc/scontrol: no SLURM_*/SRUN_* input variables
    (but SRUN_KEEP) and no CUDA_VISIBLE_DEVICES, so the only one on a node is Slurm's."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items()
            if not (k.startswith(("SLURM_", "SRUN_")) and k not in SRUN_KEEP) and k != "CUDA_VISIBLE_DEVICES"}


def expand_counts(spec: str) -> list[int]:
    """Slurm's compressed per-node counts: '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for part in filter(None, spec.split(",")):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ValueError(f"bad Slurm count list {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def gpu_count(gres: str) -> int:
    """GPUs in a `scontrol show job -d` GRES field: 'gpu:a100:2(IDX:0-1),nic:1' -> 2."""
    total = 0
    for item in re.split(r",(?![^(]*\))", gres):
        fields = item.split("(")[0].split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def _run(argv: list[str], timeout: float = 30.0, env: dict | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env=env if env is not None else srun_environ(), stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise LaunchError(f"{argv[0]} not found: is Slurm installed on this machine?") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"{' '.join(argv[:3])} did not answer within {timeout:g}s") from None


def _last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    line = (errors or lines or [""])[-1]
    return re.sub(r"^(srun|salloc|scontrol|slurmstepd(-\S+)?): (error: )?", "", line)


class Allocation:
    """A Slurm job whose nodes the flextui job runs on; `owned` if flextui made it."""

    def __init__(self, job_id: str, slurm_env: dict[str, str], holder: subprocess.Popen | None = None,
                 salloc_log: deque | None = None) -> None:
        self.job_id = job_id
        self.slurm_env = slurm_env
        self.holder = holder
        self.salloc_log = salloc_log if salloc_log is not None else deque(maxlen=50)
        self.pump: threading.Thread | None = None  # shows/keeps salloc's messages
        self.info = ""
        self.nodes: list[str] = []
        self.gpus: dict[str, int] = {}

    @classmethod
    def current(cls, environ=os.environ) -> Allocation:
        job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
        if not job_id:
            raise LaunchError("--launcher slurm: not inside a Slurm allocation (SLURM_JOB_ID is not set); "
                              "run inside sbatch/salloc or pass --slurm_args to request one")
        alloc = cls(job_id, {k: v for k, v in environ.items() if k.startswith("SLURM_")})
        alloc.describe()
        return alloc

    @classmethod
    def create(cls, slurm_args: list[str], python: str = sys.executable) -> Allocation:
        """salloc SLURM_ARGS with a holder process; waits (as salloc does) until granted."""
        if shutil.which("salloc") is None:
            raise LaunchError("salloc not found: is Slurm installed on this machine?")
        argv = ["salloc", "--job-name=flextui", *slurm_args, python, "-c", HOLDER_PROGRAM]
        holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=srun_environ(), start_new_session=True, text=True)
        log: deque = deque(maxlen=50)
        # A thread, not asyncio: this runs before the job's event loop exists (the nodes
        # decide the world), and the holder must outlive any loop made here, which would
        # kill its subprocesses on close.
        granted = threading.Event()

        def pump() -> None:  # salloc's messages: shown until granted, kept afterwards
            showing = True
            for line in holder.stderr:
                log.append(line.rstrip("\n"))
                if showing:
                    sys.stderr.write(line)
                    sys.stderr.flush()
                    showing = not granted.is_set() and "Granted job allocation" not in line

        alloc = cls("", {}, holder, log)
        alloc.pump = threading.Thread(target=pump, daemon=True)
        alloc.pump.start()
        # Ctrl+C withdraws the request (KeyboardInterrupt, below), also when flextui was
        # started with SIGINT ignored (`cmd &` in a script, some CI runners): Python then
        # never installs its own handler and the request would be granted and run.
        interruptible = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.default_int_handler) if interruptible else None
        try:
            line = holder.stdout.readline()
            granted.set()
            if not line:
                holder.wait(10)
                alloc.pump.join(5)
                raise LaunchError(f"salloc {shlex.join(slurm_args)} failed: {_last_error(chr(10).join(log))}")
            alloc.slurm_env = json.loads(line)
            alloc.job_id = alloc.slurm_env.get("SLURM_JOB_ID", "")
            alloc.describe()
        except BaseException:
            alloc.release()
            raise
        finally:
            if interruptible:
                signal.signal(signal.SIGINT, previous)
        return alloc

    def describe(self) -> None:
        result = _run(["scontrol", "show", "job", "-d", "-o", self.job_id])
        if result.returncode != 0:
            raise LaunchError(f"Slurm job {self.job_id}: {_last_error(result.stderr)}")
        self.info = result.stdout
        state = self.field("JobState")
        if state != "RUNNING":
            raise LaunchError(f"Slurm job {self.job_id} is not running (state {state})")
        self.nodes = hostnames(self.field("NodeList"))
        for group, gres in re.findall(r"\bNodes=(\S+) CPU_IDs=\S+ Mem=\S+ GRES=(\S*)", self.info):
            for host in hostnames(group):
                self.gpus[host] = gpu_count(gres)

    def field(self, name: str) -> str:
        match = re.search(rf"(?:^|\s){re.escape(name)}=(\S*)", self.info)
        return match.group(1) if match else ""

    def default_slots(self) -> dict[str, int]:
        """GPUs per node if the job has any, else its tasks per node if tasks were asked for, else 1."""
        tasks = [1] * len(self.nodes)
        if self.slurm_env.get("SLURM_NTASKS") and self.slurm_env.get("SLURM_TASKS_PER_NODE"):
            counts = expand_counts(self.slurm_env["SLURM_TASKS_PER_NODE"])
            if len(counts) == len(self.nodes):
                tasks = counts
        return {host: self.gpus.get(host) or max(1, n) for host, n in zip(self.nodes, tasks)}

    def release(self) -> None:
        """Give back an allocation flextui made (no-op for the one it runs in)."""
        holder, self.holder = self.holder, None
        if holder is None:
            return
        if holder.stdin:
            try:
                holder.stdin.close()  # the holder exits, salloc relinquishes the allocation
            except OSError:
                pass
        if self.job_id:  # granted: salloc gives it back once the holder is gone
            try:
                holder.wait(RELEASE_TIMEOUT)
                return
            except subprocess.TimeoutExpired:
                subprocess.run(["scancel", self.job_id], capture_output=True, timeout=30, env=srun_environ())
        holder.terminate()  # still pending (or stuck): salloc withdraws the request
        try:
            holder.wait(RELEASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()
        if self.pump is not None:
            self.pump.join(5)  # salloc's last words are out before ours


def with_slurm_task_env(spec: dict) -> dict:
    """The spec with Slurm task variables for each worker that match its flextui rank, so
    frameworks that read them do not all see task 0 of 1."""
    world_size = spec.get("env", {}).get("WORLD_SIZE")
    workers = []
    for worker in spec.get("workers", []):
        extra = {"SLURM_PROCID": str(worker["rank"]), "SLURM_LOCALID": str(worker["local_rank"]),
                 "SLURM_NODEID": str(spec.get("node_rank", 0))}
        if world_size:
            extra.update(SLURM_NTASKS=world_size, SLURM_NPROCS=world_size)
        workers.append({**worker, "env": {**extra, **worker.get("env", {})}})
    return {**spec, "workers": workers}


def hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames`: 'n[1-3],gpu7' -> ['n1', 'n2', 'n3', 'gpu7']."""
    if not nodelist or nodelist == "(null)":
        return []
    result = _run(["scontrol", "show", "hostnames", nodelist])
    if result.returncode != 0:
        raise LaunchError(f"scontrol show hostnames {nodelist}: {_last_error(result.stderr)}")
    return result.stdout.split()


class SlurmChannel(NodeChannel):
    def __init__(self, node: Node, process: asyncio.subprocess.Process, backend: SlurmBackend) -> None:
        super().__init__(node)
        self.process = process
        self.backend = backend
        self._stderr = b""
        self._stderr_task = asyncio.ensure_future(self._collect_stderr())
        self._interruption: str | None = None

    async def _collect_stderr(self) -> None:
        self._stderr = await self.process.stderr.read()

    async def events(self) -> AsyncIterator[dict]:
        while True:
            try:
                line = await self.process.stdout.readline()
            except (ValueError, OSError):  # an over-long line: the stream is unusable
                break
            if not line:
                break
            event = decode_event(line)
            if event is not None:
                yield event
        await self.process.wait()
        await self._stderr_task
        self._interruption = await self.backend.interruption(self.stderr_text())

    def stderr_text(self) -> str:
        return self._stderr.decode(errors="replace")

    def send(self, command: dict) -> None:
        self.write(encode_command(command))

    def write(self, data: bytes) -> None:
        stdin = self.process.stdin
        if stdin is not None and not stdin.is_closing():
            try:
                stdin.write(data)
            except (OSError, RuntimeError):
                pass

    async def close(self) -> None:
        if self.process.stdin and not self.process.stdin.is_closing():
            self.process.stdin.close()
        if self.process.returncode is None:
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except asyncio.TimeoutError:
                self.process.terminate()  # srun forwards SIGTERM to the launcher, then exits
                try:
                    await asyncio.wait_for(self.process.wait(), 10)
                except asyncio.TimeoutError:
                    self.process.kill()  # its step is scancelled by the backend's close()
                    await self.process.wait()

    def interruption(self) -> str | None:
        return self._interruption

    def diagnostics(self) -> str:
        text = self.stderr_text()
        if "execve(): " in text and "No such file or directory" in text:
            return f"python not found: {self.backend.python}"
        code = self.process.returncode
        if code is not None and code < 0:
            return f"srun killed by signal {-code}"
        return _last_error(text) or (f"srun exited with status {code}" if code else "")


class SlurmBackend(Backend):
    """The allocation (made here from --slurm_args, or the current one), its hosts, and one
    srun step per node. An allocation it made is released by release() (`with backend:`)."""

    name = "slurm"
    summary = ("one srun step per node of the current allocation (SLURM_JOB_ID) or of a new one "
               "(--slurm_args); no HOSTFILE argument")
    hostfile_argument = False
    dash_value_options = ("--slurm_args", "--slurm-args")

    def __init__(self, allocation: Allocation, *, python: str | None = None, fanout: int = 32,
                 num_gpus: int | None = None) -> None:
        self.allocation = allocation
        self.job_id = allocation.job_id
        self.python = python or sys.executable
        self.num_gpus = num_gpus
        self.token = secrets.token_hex(4)
        self._fanout_limit = max(1, fanout)  # concurrent srun starts
        self._fanout: asyncio.Semaphore | None = None  # made in the job's event loop
        self._closed = False

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("Slurm (--launcher slurm: the nodes of an allocation)")
        group.add_argument("--slurm_args", "--slurm-args", metavar="'SALLOC OPTIONS'",
                           help="request a new allocation with these salloc options, e.g. '-N2 -p gpu "
                                "--gpus-per-node=8 -t 60'; released when the job ends")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SlurmBackend:
        if args.slurm_args is not None:
            try:
                slurm_args = shlex.split(args.slurm_args)
            except ValueError as exc:
                raise LaunchError(f"--slurm_args {args.slurm_args!r}: {exc}") from None
            try:
                allocation = Allocation.create(slurm_args, python=sys.executable)
            except KeyboardInterrupt:
                raise LaunchError("interrupted while waiting for the Slurm allocation") from None
        else:
            allocation = Allocation.current()
        return cls(allocation, python=args.remote_python, num_gpus=args.num_gpus)

    def release(self) -> None:
        self.allocation.release()

    def hosts(self, hostfile: str | None) -> dict[str, int]:
        """The allocation's nodes: slots from --num_gpus, else its GPUs or tasks per node; a
        hostfile may name slots for some of them (--include/--exclude/--num_* apply after)."""
        alloc = self.allocation
        if hostfile:
            hosts = read_hostfile(hostfile)
            outside = [h for h in hosts if h not in alloc.nodes]
            if outside:
                raise HostfileError(f"{hostfile}: host {outside[0]!r} is not in Slurm job {alloc.job_id} "
                                    f"(its nodes: {','.join(alloc.nodes)})")
            return hosts
        if self.num_gpus is not None and self.num_gpus >= 1:
            return {host: self.num_gpus for host in alloc.nodes}
        return alloc.default_slots()

    def srun_argv(self, node: Node, name: str, program: list[str]) -> list[str]:
        return [
            "srun", f"--jobid={self.job_id}", "--nodes=1", "--ntasks=1", "--ntasks-per-node=1",
            f"--nodelist={node.host}", "--kill-on-bad-exit=1", "--overlap", "--mpi=none", "--export=ALL",
            f"--job-name=flextui-{self.token}-{name}", *program,
        ]

    async def open(self, node: Node, spec: dict) -> NodeChannel:
        # The workers' CUDA_VISIBLE_DEVICES (slot ids) become the GPUs Slurm gave the step.
        spec = {**with_slurm_task_env(spec), "map_gpus": True}
        argv = self.srun_argv(node, str(node.node_rank), self.launcher_argv([self.python, "-c", LAUNCHER_PROGRAM]))
        if self._fanout is None:
            self._fanout = asyncio.Semaphore(self._fanout_limit)
        async with self._fanout:
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE, limit=STREAM_LIMIT, env=srun_environ(),
                    # Its own session: a terminal's Ctrl+C reaches only the console, which
                    # stops the job in order (srun would otherwise act on SIGINT itself).
                    start_new_session=True,
                )
            except FileNotFoundError:
                raise LaunchError("srun not found: is Slurm installed on this machine?") from None
        channel = SlurmChannel(node, process, self)
        channel.write(spec_message(spec))
        return channel

    async def interruption(self, srun_stderr: str) -> str | None:
        """Why a step ended from outside the job (scancel, time limit, ...), else None."""
        match = CANCELLED.search(srun_stderr)
        revoked = "has been revoked" in srun_stderr
        if not match and not revoked:
            return None
        state = await asyncio.get_running_loop().run_in_executor(None, self._final_job_state)
        if state in ENDED_STATES:
            return f"Slurm job {self.job_id} {ENDED_STATES[state]}"
        if match:
            what, ident, _, due = match.groups()
            # COMPLETING: the whole job is ending (not just our step), its final state not known yet
            subject = f"Slurm job {self.job_id}" if state == "COMPLETING" else f"Slurm {what.lower()} {ident}"
            return f"{subject} was cancelled" + (f" due to {due.lower()}" if due else "")
        return f"Slurm job {self.job_id} allocation was revoked"

    def _final_job_state(self, patience: float = 2.0) -> str:
        """The job's state; while it is COMPLETING (its steps being killed), wait a little
        for the state it ends in (CANCELLED, TIMEOUT, ...)."""
        deadline = time.monotonic() + patience
        while True:
            try:
                result = _run(["scontrol", "show", "job", "-o", self.job_id], timeout=10)
            except LaunchError:
                return "UNKNOWN"
            match = re.search(r"\bJobState=(\S+)", result.stdout)
            state = match.group(1) if match else "UNKNOWN"
            if state != "COMPLETING" or time.monotonic() > deadline:
                return state
            time.sleep(0.1)

    def leftover_steps(self) -> list[str]:
        result = _run(["squeue", "-h", "-s", "-j", self.job_id, "-o", "%i %j"], timeout=15)
        prefix = f"flextui-{self.token}-"
        return [step for step, _, name in (ln.partition(" ") for ln in result.stdout.splitlines())
                if name.startswith(prefix)]

    async def close(self) -> None:
        """After every channel: scancel any step of ours Slurm still lists (a hung srun)."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()

        def sweep() -> None:
            try:
                steps = self.leftover_steps()
                if steps:
                    _run(["scancel", *steps], timeout=15)
            except LaunchError:
                pass

        await loop.run_in_executor(None, sweep)
