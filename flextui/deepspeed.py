"""DeepSpeed drop-in: `deepspeed ARGS` -> `flextui ARGS` runs the same job.

What `deepspeed` (deepspeed/launcher/runner.py, 0.19.x) decides before it starts anything,
done the same way here, pure apart from reading a file or /dev and /sys:

* which word is the HOSTFILE and which the SCRIPT (split_positionals): `flextui HOSTFILE
  SCRIPT` stays, `flextui SCRIPT` is DeepSpeed's form;
* the hosts when no hostfile is named (default_hosts): /job/hostfile if it exists, else this
  machine with its GPUs (CUDA_VISIBLE_DEVICES naming the ones to use), else what DeepSpeed's
  CPU accelerator counts;
* DeepSpeed's own options (add_arguments, check_options, apply_launcher_args): accepted,
  mapped onto flextui's, or refused with one line where flextui has no such thing
  (--autotuning); what they ask of every node (node_options: core binding, per-rank log
  copies, for flextui.launch), --no_ssh's share (node_share), --save_pid (PidFile), and
  whether a launch is multi-node for .deepspeed_env and PYTHONPATH (multi_node_launch);
* what to tell a user who meets a deliberate difference (local_rank_note, error_hint;
  cli prints them as `flextui: note: ...`).

OPTIONS pins every option of `deepspeed --help` and LAUNCHERS its --launcher values;
tests check the parser against them.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import time
from collections.abc import Mapping

from flextui.errors import UsageError
from flextui.hostfile import read_hostfile
from flextui.world import World

#: DeepSpeed's default hostfile (DLTS_HOSTFILE), used when none is named and it exists.
DLTS_HOSTFILE = "/job/hostfile"
#: Where DeepSpeed's --save_pid file goes: /tmp/<pid of the deepspeed command>.deepspeed.
PID_FILE_DIR = "/tmp"

#: Every option string of `deepspeed --help`, DeepSpeed 0.19.x (runner.py's parse_args).
#: The last three were dropped in 0.19.8 and are still accepted (mapped onto --elastic).
OPTIONS = (
    "-h", "--help", "-H", "--hostfile", "-i", "--include", "-e", "--exclude", "--num_nodes",
    "--num_gpus", "--num_accelerators", "--master_port", "--master_addr", "--node_rank",
    "--launcher", "--launcher_args", "--module", "--no_python", "--no_local_rank", "--no_ssh",
    "--no_ssh_check", "--force_multi", "--save_pid", "--enable_each_rank_log", "--autotuning",
    "--bind_cores_to_rank", "--bind_core_list", "--ssh_port", "--venv_script", "--log_level",
    "-q", "--quiet",
    "--elastic_training", "--min_elastic_nodes", "--max_elastic_nodes",
)
#: DeepSpeed's --launcher values (case-insensitive there too).
LAUNCHERS = ("pdsh", "openmpi", "mvapich", "slurm", "mpich", "impi")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

_HOSTFILE_LINE = re.compile(r"\S+\s+slots=")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """DeepSpeed's options that flextui has no other name for (--num_accelerators,
    --ssh_port, --launcher and the rest are flextui's own options too)."""
    group = parser.add_argument_group("DeepSpeed's runner options (see README: Coming from DeepSpeed)")
    add = group.add_argument
    add("--no_ssh", "--no-ssh", action="store_true",
        help="run only node --node_rank's share of the job, on this machine (a scheduler starts "
             "one flextui per node)")
    add("--node_rank", "--node-rank", type=int, help="with --no_ssh: which node of the hostfile this is")
    add("--no_ssh_check", "--no-ssh-check", action="store_true",
        help="accepted; flextui always checks every node before starting")
    add("--force_multi", "--force-multi", action="store_true",
        help="treat as a multi-node launch even on one node (.deepspeed_env, PYTHONPATH); flextui "
             "always runs on the selected hosts")
    add("--save_pid", "--save-pid", action="store_true",
        help=f"write {PID_FILE_DIR}/<flextui's pid>.deepspeed: the pid to SIGTERM to stop the job")
    add("--enable_each_rank_log", "--enable-each-rank-log", metavar="DIR",
        help="also write each rank's output to DIR/<YYYYmmddHHMMSS>_rank<N>.log on its node")
    add("--autotuning", choices=("tune", "run"), help="refused: DeepSpeed's autotuner is not part of flextui")
    add("--bind_cores_to_rank", "--bind-cores-to-rank", action="store_true",
        help="pin each rank to its share of the node's cores (OMP_NUM_THREADS = cores per rank)")
    add("--bind_core_list", "--bind-core-list", metavar="LIST",
        help="with --bind_cores_to_rank: the cores to share, e.g. 0-15,32-47 (default: all physical cores)")
    add("--venv_script", "--venv-script", metavar="SCRIPT",
        help="source this script on each node before its launcher starts (e.g. a venv's bin/activate)")
    add("--launcher_args", "--launcher-args", metavar="'ARGS'",
        help="extra options for the --launcher's program (mpirun/mpiexec: as --mpi_args)")
    add("--log_level", "--log-level", choices=LOG_LEVELS, type=str.lower,
        help="flextui's own messages: warning and above hide its notes")
    add("-q", "--quiet", action="store_true", help="as --log_level error")
    add("--elastic_training", "--elastic-training", action="store_true",
        help="DeepSpeed before 0.19.8: same as --elastic")
    add("--min_elastic_nodes", "--min-elastic-nodes", type=int, help="DeepSpeed before 0.19.8: --min_nodes")
    add("--max_elastic_nodes", "--max-elastic-nodes", type=int, help="DeepSpeed before 0.19.8: --max_nodes")


def check_options(args: argparse.Namespace) -> None:
    """Refuse what flextui does not do, map DeepSpeed's spellings onto flextui's; raises
    UsageError (one line)."""
    if args.autotuning:
        raise UsageError(f"--autotuning {args.autotuning}: DeepSpeed's autotuner is not part of flextui "
                         "(run `deepspeed --autotuning` to find a config, then run it with flextui)")
    if args.quiet:
        args.log_level = "error"
    if args.elastic_training:
        args.elastic = True
    for theirs, ours in (("min_elastic_nodes", "min_nodes"), ("max_elastic_nodes", "max_nodes")):
        value = getattr(args, theirs)
        if value is not None and value != -1:  # -1: DeepSpeed's "not given"
            if getattr(args, ours) is not None and getattr(args, ours) != value:
                raise UsageError(f"--{theirs} {value} contradicts --{ours} {getattr(args, ours)}")
            setattr(args, ours, value)
    if args.bind_core_list is not None:
        if not args.bind_cores_to_rank:
            raise UsageError("--bind_core_list needs --bind_cores_to_rank")
        parse_core_list(args.bind_core_list)
    if args.elastic:
        for flag, given in (("--bind_cores_to_rank", args.bind_cores_to_rank),
                            ("--enable_each_rank_log", args.enable_each_rank_log not in (None, "", "None"))):
            if given:
                raise UsageError(f"{flag} is not available with --elastic: torch's elastic agent starts the workers")
    if args.no_ssh:
        if args.node_rank is None:
            raise UsageError("--no_ssh needs --node_rank N (which node of the hostfile this machine is)")
        if args.elastic:
            raise UsageError("--no_ssh runs one node's fixed share of the job; it cannot be --elastic")
    elif args.node_rank is not None and args.node_rank != -1:
        raise UsageError("--node_rank needs --no_ssh (flextui starts every node itself otherwise)")
    if args.enable_each_rank_log is not None and args.enable_each_rank_log in ("", "None"):
        args.enable_each_rank_log = None  # DeepSpeed's own "not given"


#: Where DeepSpeed's --launcher_args go, by backend (what `deepspeed` hands them to: mpirun's
#: own options); the others refuse them, saying why.
LAUNCHER_ARGS = {"mpirun": "mpi_args"}
LAUNCHER_ARGS_REFUSED = {
    "ssh": "pdsh's options have no counterpart in flextui's SSH launcher (asyncssh reads "
           "~/.ssh/config; --ssh_port, --ssh_fanout)",
    "slurm": "flextui starts one srun step per node itself; salloc options go in --slurm_args",
}


def apply_launcher_args(args: argparse.Namespace, backend: str) -> None:
    """DeepSpeed's --launcher_args as the chosen backend's own option; UsageError if it has none."""
    given = (args.launcher_args or "").strip()
    if not given:
        return
    dest = LAUNCHER_ARGS.get(backend)
    if dest is None:
        reason = LAUNCHER_ARGS_REFUSED.get(backend, "this launcher takes none")
        raise UsageError(f"--launcher_args {given!r} with --launcher {args.launcher}: {reason}")
    setattr(args, dest, " ".join(filter(None, [getattr(args, dest, None), given])))


def node_options(args: argparse.Namespace, now: float) -> dict:
    """What DeepSpeed's options add to every node's launcher spec (flextui.launch)."""
    options: dict = {}
    if args.bind_cores_to_rank:
        cores = parse_core_list(args.bind_core_list) if args.bind_core_list else None
        options["bind_cores"] = {"cores": cores}
    if args.enable_each_rank_log:
        # DeepSpeed names the files after the launch time: <YYYYmmddHHMMSS>_rank<N>.log
        options["rank_log"] = {"dir": args.enable_each_rank_log,
                               "prefix": time.strftime("%Y%m%d%H%M%S", time.localtime(now))}
    return options


def node_share(world: World, node_rank: int) -> World:
    """--no_ssh --node_rank N: node N's part of the job, to run on this machine."""
    if not 0 <= node_rank < len(world.nodes):
        raise UsageError(f"--node_rank {node_rank}: the job has {len(world.nodes)} node(s), "
                         f"0..{len(world.nodes) - 1}")
    return world.share_of(node_rank)


def multi_node_launch(args: argparse.Namespace, world: World) -> bool:
    """Whether DeepSpeed would launch this job as multi-node (through pdsh & co.), where
    .deepspeed_env and PYTHONPATH apply: more than one node, a node that is not this
    machine (deepspeed needs --force_multi to run on one remote node at all), --force_multi;
    never with --no_ssh."""
    from flextui.transport.local import is_local_host

    if args.no_ssh:
        return False
    return args.force_multi or len(world.nodes) > 1 or not all(is_local_host(n.host) for n in world.nodes)


class PidFile:
    """DeepSpeed's --save_pid: /tmp/<pid of this command>.deepspeed holds the pid that, sent
    SIGTERM, stops the whole job (headless: this console's own, which stops every rank
    gracefully; the TUI or --detach: the job's supervisor); removed when the job ends."""

    def __init__(self, pid: int, directory: str | None = None, name_pid: int | None = None) -> None:
        # name_pid: the command's pid when the job's owner is another process (a supervisor)
        self.path = os.path.join(directory or PID_FILE_DIR, f"{name_pid or os.getpid()}.deepspeed")
        self.pid = pid

    def __enter__(self) -> PidFile:
        try:
            # O_EXCL: as DeepSpeed asserts, a file left by another run is never overwritten
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError as exc:
            raise UsageError(f"--save_pid: cannot create {self.path}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as f:
            f.write(str(self.pid))
        return self

    def __exit__(self, *exc) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def parse_core_list(text: str) -> list[int]:
    """'1,3-5,7' -> [1, 3, 4, 5, 7] (DeepSpeed's parse_range_list: ascending, no overlap)."""
    cores: list[int] = []
    for part in text.split(","):
        first, dash, last = part.partition("-")
        if not (first.isdigit() and (not dash or last.isdigit())):
            raise UsageError(f"--bind_core_list {text!r}: {part!r} is not N or N-M")
        low, high = int(first), int(last) if dash else int(first)
        if high < low:
            raise UsageError(f"--bind_core_list {text!r}: range {part} ends before it starts")
        if cores and low <= cores[-1]:
            raise UsageError(f"--bind_core_list {text!r}: ranges must ascend without overlap")
        cores.extend(range(low, high + 1))
    return cores


# -- which word is the hostfile --------------------------------------------------------


def looks_like_hostfile(path: str) -> bool:
    """Its first entry (blank lines and # comments aside) reads `HOST slots=N`."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 << 10).decode("utf-8-sig", "replace")
    except OSError:
        return False
    for line in head.splitlines():
        entry = line.split("#", 1)[0].strip()
        if entry:
            return bool(_HOSTFILE_LINE.match(entry))
    return False


def split_positionals(words: list[str]) -> tuple[str | None, list[str]]:
    """(HOSTFILE or None, [SCRIPT, ARGS...]) from the words after the options.

    The first word is the HOSTFILE when it is not a python file (*.py) and either names a
    file that reads like one (`HOST slots=N` first) or is followed by a *.py script (then a
    missing or malformed hostfile gets its own error instead of being run as the script).
    Otherwise it is the SCRIPT, as in `deepspeed train.py`."""
    if not words:
        return None, []
    first, rest = words[0], words[1:]
    if first.endswith(".py"):
        return None, words
    if (os.path.isfile(first) and looks_like_hostfile(first)) or (rest and rest[0].endswith(".py")):
        return first, rest
    return None, words


# -- hosts when no hostfile is named ---------------------------------------------------


def gpu_count(dev: str = "/dev") -> int:
    """NVIDIA GPUs this machine has (/dev/nvidiaN), as torch.cuda.device_count() would say."""
    return len([p for p in glob.glob(os.path.join(dev, "nvidia*")) if re.fullmatch(r"nvidia\d+", os.path.basename(p))])


def cpu_accelerators(environ: Mapping[str, str], sys_nodes: str = "/sys/devices/system/node") -> int:
    """DeepSpeed's CPU accelerator's device_count(): LOCAL_SIZE if set, else the NUMA nodes
    that have cores (one "accelerator" each), else 1."""
    try:
        local_size = int(environ.get("LOCAL_SIZE", "0"))
    except ValueError:
        local_size = 0
    if local_size > 0:
        return local_size
    lists = []
    for path in sorted(glob.glob(os.path.join(sys_nodes, "node[0-9]*", "cpulist")),
                       key=lambda p: int(re.search(r"node(\d+)", p).group(1))):
        try:
            with open(path) as f:
                lists.append(f.read().strip())
        except OSError:
            continue
    count, previous = 0, None
    for cores in lists:
        if cores and cores != previous:  # fake NUMA repeats a node's cores: counted once
            count += 1
        previous = cores
    return count or 1


def default_hosts(args: argparse.Namespace, environ: Mapping[str, str], *, gpus: int | None = None,
                  hostfile: str | None = None) -> tuple[dict[str, int], str]:
    """(hosts, note) when no hostfile is named: /job/hostfile, else this machine (its GPUs,
    else DeepSpeed's CPU count, --num_gpus extending that). May set args.include from
    CUDA_VISIBLE_DEVICES, as DeepSpeed does. Raises HostfileError/UsageError."""
    hostfile = hostfile or DLTS_HOSTFILE
    if os.path.isfile(hostfile):
        return read_hostfile(hostfile), f"no hostfile named: using {hostfile} (DeepSpeed's default)"
    gpus = gpu_count() if gpus is None else gpus
    visible = environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    filtered = args.include is not None or args.exclude is not None
    counted = args.num_nodes is not None or args.num_gpus is not None
    if args.num_nodes is not None and args.num_nodes > 1:
        raise UsageError(f"--num_nodes {args.num_nodes} but there is no hostfile (only this machine): "
                         f"name one, or put it at {hostfile}")
    if visible and not (filtered or counted):
        ids = visible.split(",")
        if not all(i.strip().isdigit() for i in ids):
            raise UsageError(f"CUDA_VISIBLE_DEVICES={visible}: not GPU ids; name the GPUs with --include "
                             "localhost:0,1 or give a hostfile")
        numbers = [int(i) for i in ids]
        slots = max(gpus, max(numbers) + 1)
        args.include = "localhost:" + ",".join(map(str, numbers))
        return {"localhost": slots}, (f"no hostfile: running on this machine, GPUs {visible} "
                                      "(CUDA_VISIBLE_DEVICES)")
    if gpus:
        return {"localhost": gpus}, f"no hostfile: running on this machine with its {gpus} GPU(s)"
    count = cpu_accelerators(environ)
    if args.num_gpus is not None and args.num_gpus > count:
        count = args.num_gpus  # CPU ranks are processes: DeepSpeed starts as many as asked
    return {"localhost": count}, (f"no hostfile and no GPU: running on this machine, {count} CPU rank(s) "
                                  "(DeepSpeed's CPU accelerator; --num_gpus N for N)")


# -- deliberate differences: one line when a user meets one ----------------------------


def local_rank_note(world: World) -> str | None:
    """DeepSpeed's LOCAL_RANK is RANK % LOCAL_SIZE; flextui's the index on the node. They
    differ when a node's first rank is not a multiple of its slot count."""
    for node in world.nodes:
        count = len(node.slots)
        theirs = [r % count for r in node.ranks]
        if theirs != list(range(count)):
            return (f"LOCAL_RANK is each rank's index on its node: {node.host} gets "
                    f"{','.join(map(str, range(count)))} (DeepSpeed's RANK % LOCAL_SIZE would give "
                    f"{','.join(map(str, theirs))}, pairing ranks with other GPUs)")
    return None


def error_hint(error: Exception) -> str:
    """What a DeepSpeed user should know about an error flextui raises where DeepSpeed
    would go on (appended to its one line)."""
    if str(error).startswith("--num_gpus") and " has only " in str(error):
        return " (flextui never starts a rank on a GPU id past a host's slots; DeepSpeed would)"
    return ""


__all__ = [
    "DLTS_HOSTFILE", "LAUNCHERS", "OPTIONS", "PID_FILE_DIR", "PidFile", "add_arguments", "apply_launcher_args", "check_options", "multi_node_launch", "node_options", "node_share",
    "cpu_accelerators", "default_hosts", "error_hint", "gpu_count", "local_rank_note", "looks_like_hostfile",
    "parse_core_list", "split_positionals",
]
