"""`flextui HOSTFILE SCRIPT [ARGS]`: parse options, resolve the world, run the job.

Where the job runs: `--headless` (or no terminal) in this process; the TUI and
`--detach` in a supervisor process (supervisor.py) that this command starts and, for the
TUI, watches as its console (commands.start_supervised). `flextui attach|ls|open|stop`
are the commands of commands.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable

from flextui import deepspeed
from flextui.environment import EnvFileError, worker_environment
from flextui.errors import UsageError
from flextui.hostfile import HostfileError, select_slots
from flextui.job import DEFAULT_GRACE, DEFAULT_NODE_TIMEOUT, Job, JobConfig, LaunchError
from flextui.model import DEFAULT_STALL_AFTER
from flextui.modes import RunMode, mode_classes, mode_from_args
from flextui.transport import ALIASES, DEFAULT_BACKEND, Backend, backend_class, backend_names
from flextui.transport.local import LocalBackend, is_local_host
from flextui.world import DEFAULT_MASTER_PORT, Command, World

USAGE_ERROR = 2
LAUNCH_ERROR = 1
#: `flextui WORD ...` with these words runs a command of commands.py (a hostfile of that
#: name: ./ls).
SUBCOMMANDS = ("attach", "ls", "open", "stop", "stacks")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        # One line, like every other flextui error (argparse would print the usage first).
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flextui",
        description="Launch a multi-node PyTorch/DeepSpeed job from a hostfile and watch every rank.",
    )
    add = parser.add_argument
    add("hostfile", nargs="?", help="DeepSpeed-style hostfile: one 'HOST slots=N' per line; without one, "
                                    f"{deepspeed.DLTS_HOSTFILE} if it exists, else this machine (as deepspeed)")
    add("script", nargs="?", help="training script (or module with --module, program with --no_python)")
    add("script_args", nargs=argparse.REMAINDER, help="arguments passed to the script").required = False
    sel = parser.add_argument_group("rank selection (DeepSpeed grammar)")
    sel.add_argument("-i", "--include", help="e.g. 'node1@node2:0,2': all of node1, slots 0,2 of node2")
    sel.add_argument("-e", "--exclude", help="e.g. 'node1:1': drop slot 1 of node1")
    sel.add_argument("--num_nodes", "--num-nodes", type=int, help="use the first N hosts")
    sel.add_argument("--num_gpus", "--num-gpus", "--num_accelerators", "--num-accelerators", type=int,
                     help="use the first N slots of each host")
    sel.add_argument("--master_addr", "--master-addr", help="default: the first selected host")
    sel.add_argument("--master_port", "--master-port", type=int, default=DEFAULT_MASTER_PORT)
    run = parser.add_argument_group("how workers run")
    run.add_argument("--module", "-m", action="store_true", help="run SCRIPT as a python module")
    run.add_argument("--no_python", "--no-python", action="store_true", help="run SCRIPT directly")
    run.add_argument("--no_local_rank", "--no-local-rank", action="store_true",
                     help="do not pass --local_rank=N to the script")
    run.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                     help="export to every worker (repeatable)")
    run.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                     help=f"seconds from SIGTERM to SIGKILL (default {DEFAULT_GRACE:g})")
    run.add_argument("--log-dir", "--log_dir", default="flextui-runs", help="run directories go here")
    nodes = parser.add_argument_group("nodes")
    backends = {name: backend_class(name) for name in backend_names()}
    nodes.add_argument("--launcher", choices=list(backends), default=DEFAULT_BACKEND, type=str.lower,
                       help="how node launchers start: " + "; ".join(
                           f"{name}: {cls.summary}" for name, cls in backends.items() if cls.name == name)
                       + f" (default {DEFAULT_BACKEND}); DeepSpeed's names: " + ", ".join(
                           f"{alias} = {name}" for alias, name in ALIASES.items()))
    nodes.add_argument("-H", "--hostfile", dest="hostfile_option", metavar="HOSTFILE",
                       help="hostfile as an option (then no HOSTFILE argument); with a --launcher that "
                            "finds its hosts it names slots for (some of) them")
    nodes.add_argument("--remote_python", "--remote-python", help="python on the nodes (default: this one)")
    nodes.add_argument("--remote_cwd", "--remote-cwd", help="working directory on the nodes (default: this one)")
    nodes.add_argument("--connect_timeout", "--connect-timeout", type=float, default=15.0)
    nodes.add_argument("--node_timeout", "--node-timeout", type=float, default=DEFAULT_NODE_TIMEOUT,
                       help=f"a node cut off from the console this long stops its job "
                            f"(default {DEFAULT_NODE_TIMEOUT:g})")
    for cls in dict.fromkeys(backends.values()):
        cls.add_arguments(parser)
    for mode in mode_classes():
        mode.add_arguments(parser)
    deepspeed.add_arguments(parser)
    diag = parser.add_argument_group("finding hangs (stacks need py-spy on the nodes: pip install 'flextui[stacks]')")
    diag.add_argument("--stall_after", "--stall-after", type=float, default=DEFAULT_STALL_AFTER, metavar="S",
                      help="a running rank that writes nothing for S seconds is flagged 'stalled?' "
                           f"(it keeps running; 0: never) (default {DEFAULT_STALL_AFTER:g})")
    diag.add_argument("--stacks_on_stall", "--stacks-on-stall", action="store_true",
                      help="when a rank is first flagged, dump every rank's Python stack (py-spy) into "
                           "the run directory, once")
    out = parser.add_argument_group("console")
    out.add_argument("--headless", action="store_true", help="plain text (default when stdout is not a terminal)")
    out.add_argument("--detach", action="store_true",
                     help="check every node here, then run the job in the background: print its run id "
                          "and exit (flextui attach / stop / ls RUN)")
    out.add_argument("--dry-run", "--dry_run", action="store_true", help="print the resolved plan and exit")
    out.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    out.add_argument("--theme", help="TUI theme name (see themes/)")
    return parser


def check_durations(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.grace) and args.grace >= 0):
        raise UsageError(f"--grace {args.grace:g}: expected seconds >= 0")
    if not (math.isfinite(args.node_timeout) and args.node_timeout > 0):
        raise UsageError(f"--node_timeout {args.node_timeout:g}: expected seconds > 0")
    if not (math.isfinite(args.stall_after) and args.stall_after >= 0):
        raise UsageError(f"--stall_after {args.stall_after:g}: expected seconds >= 0")


def resolve_world(args: argparse.Namespace, hosts: dict[str, int]) -> World:
    selected = select_slots(
        hosts, include=args.include, exclude=args.exclude,
        num_nodes=args.num_nodes, num_gpus=args.num_gpus,
    )
    if not 0 < args.master_port < 65536:
        raise UsageError(f"--master_port {args.master_port} is not a valid port")
    return World.from_slots(selected, default_master_addr(args.master_addr, list(selected)), args.master_port)


def default_master_addr(given: str | None, hosts: list[str]) -> str | None:
    """Remote ranks cannot reach a master called "localhost": name this machine instead."""
    if given is None and is_local_host(hosts[0]) and not all(map(is_local_host, hosts)):
        return socket.gethostname()
    return given


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def format_plan(world: World, command: Command, mode: RunMode) -> str:
    lines = [f"world_size={world.world_size} master={world.master_addr}:{world.master_port}"]
    for node in world.nodes:
        ranks = f"{node.ranks.start}-{node.ranks.stop - 1}" if len(node.slots) > 1 else str(node.ranks.start)
        lines.append(f"node {node.node_rank}: {node.host} slots={list(node.slots)} ranks {ranks} "
                     f"CUDA_VISIBLE_DEVICES={','.join(map(str, node.slots))}")
    lines.append("command: " + " ".join(command.argv(0)).replace("--local_rank=0", "--local_rank=N"))
    return "\n".join(lines + mode.plan_lines(world))


def wants_tui(args: argparse.Namespace) -> bool:
    return not (args.headless or args.detach or args.dry_run) and sys.stdout.isatty()


def attach_dash_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """`--slurm_args -N2` as `--slurm_args=-N2` (argparse takes a lone '-N2' for an option),
    for every backend option whose value may start with "-"; only among flextui's own
    options, before the first positional word."""
    attach = {option for name in backend_names() for option in backend_class(name).dash_value_options}
    attach |= {"--launcher_args", "--launcher-args"}  # DeepSpeed's, for any launcher
    argv, i = list(argv), 0
    while i < len(argv) - 1 and argv[i].startswith("-") and argv[i] != "--":
        word = argv[i]
        if word in attach:
            argv[i:i + 2] = [f"{word}={argv[i + 1]}"]
        else:
            action = parser._option_string_actions.get(word)
            i += 1 if action is None or action.nargs == 0 else 2  # skip the option's value
            continue
        i += 1
    return argv


def parse_command_line(argv: list[str]) -> argparse.Namespace:
    """The parsed command line, HOSTFILE (None: not named) and SCRIPT in place (exits 2 on a
    usage error). A first word is the HOSTFILE only when it is one (deepspeed.split_positionals),
    never with -H/--hostfile or a --launcher that finds its hosts."""
    parser = build_parser()
    args = parser.parse_args(attach_dash_values(parser, argv))
    words = [w for w in (args.hostfile, args.script) if w is not None] + list(args.script_args)
    if not backend_class(args.launcher).hostfile_argument or args.hostfile_option is not None:
        args.hostfile, rest = args.hostfile_option, words
    else:
        args.hostfile, rest = deepspeed.split_positionals(words)
    if not rest:
        parser.error("the following arguments are required: script")
    args.script, args.script_args = rest[0], rest[1:]
    return args


def note(args: argparse.Namespace, text: str | None) -> None:
    """One line about something flextui decided for the user (hidden by -q / --log_level warning)."""
    if text and (args.log_level or "info") in ("debug", "info"):
        print(f"flextui: note: {text}", file=sys.stderr)


def main(argv: list[str] | None = None, run_job: Callable[[Job], int] | None = None,
         command_pid: int | None = None) -> int:
    """The flextui command. `run_job`: how to run the job once built (the supervisor
    process passes its own, and `command_pid`, the pid of the flextui command that started
    it); by default headless here, or the TUI/--detach through a supervisor process."""
    argv = sys.argv[1:] if argv is None else argv
    if run_job is None and argv and argv[0] in SUBCOMMANDS:
        from flextui.commands import run_subcommand

        return run_subcommand(argv)
    args = parse_command_line(argv)
    try:
        check_durations(args)
        deepspeed.check_options(args)
        deepspeed.apply_launcher_args(args, backend_class(args.launcher).name)
        env = parse_env(args.env)
    except UsageError as exc:  # before asking a backend for anything (an allocation)
        print(f"flextui: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    if run_job is None and (args.detach or wants_tui(args)):
        from flextui.commands import start_supervised

        return start_supervised(argv, args)
    try:
        # --no_ssh: this node's share runs here, whatever the --launcher (as deepspeed does)
        backend_type = LocalBackend if args.no_ssh else backend_class(args.launcher)
        with backend_type.from_args(args) as backend:  # released on exit
            if args.venv_script:  # the same path on every node, like the script's
                backend.venv_script = os.path.join(args.remote_cwd or os.getcwd(), args.venv_script)
            return _main(args, backend, env, run_job, command_pid)
    except UsageError as exc:
        print(f"flextui: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except LaunchError as exc:
        print(f"flextui: error: {exc}", file=sys.stderr)
        return LAUNCH_ERROR


def _main(args: argparse.Namespace, backend: Backend, env: dict[str, str],
          run_job: Callable[[Job], int] | None, command_pid: int | None) -> int:
    try:
        if args.hostfile is None and backend.hostfile_argument:
            hosts, found = deepspeed.default_hosts(args, os.environ)
            note(args, found)
        else:
            hosts = backend.hosts(args.hostfile)
        world = resolve_world(args, hosts)
        if args.no_ssh:
            world = deepspeed.node_share(world, args.node_rank)
            share = world.share
            last = share.first_rank + world.world_size - 1
            note(args, f"--no_ssh --node_rank {share.node_rank}: this machine runs ranks {share.first_rank}-{last} "
                       f"of {share.world_size} (RANK, WORLD_SIZE as in the whole job; the console numbers them "
                       f"from 0)")
        mode = mode_from_args(args, world)
        environment = worker_environment(os.environ, os.getcwd(), env, workdir=args.remote_cwd or os.getcwd(),
                                         multi_node=deepspeed.multi_node_launch(args, world))
    except (HostfileError, UsageError, EnvFileError) as exc:
        print(f"flextui: error: {exc}{deepspeed.error_hint(exc)}", file=sys.stderr)
        return USAGE_ERROR
    if mode.name == "fixed":
        note(args, deepspeed.local_rank_note(world))
    elif not (args.pass_local_rank or args.no_local_rank):
        note(args, "--elastic: the script gets LOCAL_RANK in its environment only, as with torchrun "
                   "(--pass_local_rank adds --local_rank=N)")
    for path in environment.skipped:
        note(args, f"{path} not applied: as with DeepSpeed, it is for multi-node launches only "
                   "(--force_multi applies it here; .flextui_env applies to every job)")
    command = Command(
        script=args.script, args=tuple(args.script_args),
        python=args.remote_python or sys.executable, module=args.module,
        no_python=args.no_python, no_local_rank=args.no_local_rank,
    )
    if args.dry_run:
        if args.json:
            print(json.dumps({**world.plan(), **mode.plan()}, indent=2))
        else:
            print(format_plan(world, command, mode))
        return 0
    cwd = args.remote_cwd or os.getcwd()
    config = JobConfig(
        world=world, command=command, log_root=args.log_dir, grace=args.grace,
        cwd=cwd, env=environment.env, node_timeout=args.node_timeout,
        mode=mode, node_options={**environment.spec(), **deepspeed.node_options(args, time.time())},
        stall_after=args.stall_after, stacks_on_stall=args.stacks_on_stall,
    )
    job = Job(config, backend)
    # --save_pid: named after the command the user ran; holds the pid of the process that
    # owns the job (this one: headless, or the supervisor), whose SIGTERM stops it
    with deepspeed.PidFile(os.getpid(), name_pid=command_pid) if args.save_pid else contextlib.nullcontext():
        if run_job is not None:
            return run_job(job)
        from flextui.headless import run_headless

        return asyncio.run(run_headless(job))
