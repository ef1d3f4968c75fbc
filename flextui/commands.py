"""The commands around a job that outlives its terminal, and the command side of starting one.

    flextui --detach HOSTFILE s.py   start_supervised: preflight here, then in the background
    flextui HOSTFILE s.py            start_supervised: the TUI, as the job's owner console
    flextui attach [RUN]             the console on a running job (default: the newest)
    flextui ls [--json]              the runs under --log-dir and their states
    flextui open RUN                 the console on a finished run, from its directory
    flextui stop RUN [--kill]        stop a running job as Ctrl+C would; wait until it has
    flextui stacks RUN [--all]       every rank's Python stack (py-spy on the nodes), grouped

RUN is a run id, a unique prefix of one, or a run directory's path (runs.resolve_run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from flextui import wire
from flextui.client import AttachError, ClientJob
from flextui.errors import UsageError
from flextui.job import STACKS_TIMEOUT
from flextui.runs import RecordedJob, RunError, describe_run, format_table, list_runs, resolve_run

USAGE_ERROR = 2
FAILED = 1
#: Seconds the command waits for its supervisor to exit after the console ended.
REAP_TIMEOUT = 10.0
#: Seconds `attach` waits for a run's socket that its card says is coming.
SOCKET_WAIT = 5.0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="flextui", description="Jobs that outlive the terminal.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--log-dir", "--log_dir", default="flextui-runs", help="where the runs are (default flextui-runs)")
        return sub

    attach = command("attach", "the console on a running job (every control; D or closing it detaches)")
    attach.add_argument("run", nargs="?", metavar="RUN", help="run id, unique prefix or run directory "
                                                              "(default: the newest running job)")
    attach.add_argument("--headless", action="store_true", help="print its lines (Ctrl+C detaches)")
    attach.add_argument("--theme", help="TUI theme name")
    ls = command("ls", "the runs under --log-dir: id, state, ranks x nodes, start, duration, first failure")
    ls.add_argument("--json", action="store_true", help="one JSON list")
    opened = command("open", "the console on a finished run, from its run directory alone")
    opened.add_argument("run", metavar="RUN", help="run id, unique prefix or run directory")
    opened.add_argument("--headless", action="store_true", help="print every rank's outcome")
    opened.add_argument("--theme", help="TUI theme name")
    stop = command("stop", "stop a running job as Ctrl+C in its console would; wait until every node stopped")
    stop.add_argument("run", metavar="RUN", help="run id, unique prefix or run directory")
    stop.add_argument("--kill", action="store_true", help="SIGKILL every rank now (no grace)")
    stacks = command("stacks", "every running rank's Python stack, grouped (py-spy on each node; also written "
                               "to the run directory as stacks-HHMMSS.txt)")
    stacks.add_argument("run", nargs="?", metavar="RUN", help="run id, unique prefix or run directory "
                                                              "(default: the newest running job)")
    stacks.add_argument("--all", action="store_true", help="every rank's every process and thread, not only the groups")
    stacks.add_argument("--timeout", type=float, default=STACKS_TIMEOUT, metavar="S",
                        help=f"seconds py-spy may take on one process (default {STACKS_TIMEOUT:g})")
    return parser


def run_subcommand(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"attach": attach, "ls": ls, "open": open_run, "stop": stop, "stacks": stacks}[args.command](args)
    except (RunError, AttachError, UsageError) as exc:
        print(f"flextui {args.command}: {exc}", file=sys.stderr)
        return FAILED


def _tty() -> bool:
    return sys.stdout.isatty()


# -- ls ----------------------------------------------------------------------------------------


def ls(args: argparse.Namespace) -> int:
    now = time.time()
    entries = list_runs(args.log_dir)
    if args.json:
        print(json.dumps([e.as_json(now) for e in entries], indent=1))
    elif entries:
        print(format_table(entries, now))
    else:
        print(f"no runs under {args.log_dir}", file=sys.stderr)
    return 0


# -- attach / stop ---------------------------------------------------------------------------------


def _running(args: argparse.Namespace) -> str:
    """The run directory of a running job RUN names; one line if it is not running."""
    path = resolve_run(args.log_dir, args.run, running_only=True)
    entry = describe_run(path)
    if entry.running:
        return path
    if entry.state == "supervisor lost":
        why = f"its supervisor (pid {(entry.owner or {}).get('pid')}) is gone"
    else:
        why = f"it has finished ({entry.state_text})"
    raise RunError(f"run {entry.run_id} is not running: {why}; `flextui open {entry.run_id}` shows it")


async def _connect(path: str, **kwargs) -> ClientJob:
    deadline = time.monotonic() + SOCKET_WAIT
    while True:
        try:
            return await ClientJob.connect(path, **kwargs)
        except AttachError:
            # a job just started (card written, server coming up) or just ended
            if time.monotonic() >= deadline or not describe_run(path).running:
                entry = describe_run(path)
                if not entry.running:
                    raise RunError(f"run {entry.run_id} is not running ({entry.state_text}); "
                                   f"`flextui open {entry.run_id}` shows it") from None
                raise
            await asyncio.sleep(0.1)


def attach(args: argparse.Namespace) -> int:
    path = _running(args)
    if args.headless or not _tty():
        return asyncio.run(_attach_headless(path))
    from flextui.ui.app import run_app
    from flextui.ui.theming import ThemeError

    async def console() -> int:
        job = await _connect(path, signals_detach=frozenset({signal.SIGHUP, signal.SIGTERM}))
        try:
            code = await run_app(job, theme=args.theme)
        except ThemeError as exc:
            job.detach()
            raise UsageError(str(exc)) from None
        return _after_console(job, code, args.log_dir)

    return asyncio.run(console())


def reach(run_id: str, log_dir: str) -> str:
    """How to reach a job running in the background, one command a line."""
    where = "" if log_dir == "flextui-runs" else f" --log-dir {shlex.quote(log_dir)}"
    hints = [(f"flextui attach{where} {run_id}", "the console (D or closing it detaches again)"),
             (f"flextui stop{where} {run_id}", "stop it as Ctrl+C would"),
             (f"flextui ls{where}", "every run's state")]
    width = max(len(command) for command, _ in hints)
    return "\n".join(f"  {command.ljust(width)}  {what}" for command, what in hints)


def _after_console(job: ClientJob, code: int, log_dir: str) -> int:
    if job.detached:
        print(f"flextui: detached from run {job.run_id}; it runs on.\n{reach(job.run_id, log_dir)}")
        return 0
    if job.lost:
        print(f"flextui: {job.lost}; its nodes stopped their processes", file=sys.stderr)
    return code


async def _attach_headless(path: str) -> int:
    from flextui.headless import HeadlessConsole, summary_table

    job = await _connect(path, signals_detach=frozenset({signal.SIGINT, signal.SIGHUP, signal.SIGTERM}))
    console = HeadlessConsole(job)
    console.out.write(f"flextui: attached to run {job.run_id}: {job.world.world_size} ranks on "
                      f"{len(job.world.nodes)} node(s), {job.model.state.value}, logs in {job.run_path} "
                      "(Ctrl+C detaches; flextui stop stops it)\n")
    console.out.flush()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, job.detach)
    code = await job.run()
    if job.detached:
        console.out.write(f"flextui: detached from run {job.run_id}; it runs on\n")
        console.out.flush()
        return 0
    console.out.write(summary_table(job.model) + "\n")
    console.out.flush()
    if job.lost:
        print(f"flextui: {job.lost}; its nodes stopped their processes", file=sys.stderr)
    return code


def stacks(args: argparse.Namespace) -> int:
    path = _running(args)
    return asyncio.run(_stacks(path, args.timeout, args.all))


async def _stacks(path: str, timeout: float, everything: bool) -> int:
    from flextui.headless import stacks_lines
    from flextui.stacks import dump_text

    job = await _connect(path, role="stacks", read_logs=False)
    following = asyncio.ensure_future(job.run())  # the supervisor's answer comes in there
    try:
        dump = await job.dump_stacks(timeout)
    finally:
        job.detach()
        await following
    if everything:
        print(dump_text(dump, job.run_id), end="")
    else:
        print("\n".join(stacks_lines(dump)))
    return 0 if dump.ranks else FAILED


def stop(args: argparse.Namespace) -> int:
    path = _running(args)
    return asyncio.run(_stop(path, args.kill))


async def _stop(path: str, kill: bool) -> int:
    from flextui.diagnosis import verdict_line

    job = await _connect(path, role="stop", read_logs=False)
    model = job.model
    running = sum(1 for r in model.current_ranks if not r.status.finished)
    if kill:
        print(f"flextui: run {job.run_id}: SIGKILL to {running} running rank(s)", file=sys.stderr)
        job.kill()
    else:
        print(f"flextui: run {job.run_id}: stopping {running} running rank(s) (SIGTERM; SIGKILL after "
              f"{job.grace:g}s)", file=sys.stderr)
        job.abort(signal.SIGINT)
    await job.run()
    if job.lost:
        print(f"flextui: run {job.run_id}: {job.lost}; its nodes stop by themselves", file=sys.stderr)
        return FAILED
    print(f"flextui: run {job.run_id}: {verdict_line(model, model.ended_at or time.time())}", file=sys.stderr)
    return 0


# -- open ----------------------------------------------------------------------------------------------


def open_run(args: argparse.Namespace) -> int:
    path = resolve_run(args.log_dir, args.run)
    entry = describe_run(path)
    if entry.running:
        raise RunError(f"run {entry.run_id} is still running: `flextui attach {entry.run_id}`")
    job = RecordedJob(path)
    if args.headless or not _tty():
        from flextui.headless import summary_table

        print(f"flextui: run {job.run_id}: {job.world.world_size} ranks on {len(job.world.nodes)} node(s), "
              f"logs in {path}")
        print(summary_table(job.model))
        return 0
    from flextui.ui.app import run_app

    asyncio.run(run_app(job, theme=args.theme))
    return 0


# -- starting a supervised job (the command's side; supervisor.py is the other) -------------------


def start_supervised(argv: list[str], args: argparse.Namespace) -> int:
    """Start the job's supervisor, wait for its preflight; then (--detach) say how to reach
    the job and exit, or be its console. A problem before the job is under way: the
    supervisor printed it on our stderr and its exit code is ours."""
    ours, theirs = socket.socketpair()
    command = [sys.executable, "-m", "flextui.supervisor", "--lifeline", str(theirs.fileno()),
               "--command-pid", str(os.getpid())]
    if args.detach:
        command.append("--detach")
    supervisor = subprocess.Popen([*command, "--", *argv], pass_fds=[theirs.fileno()],
                                  stdin=subprocess.DEVNULL, start_new_session=True)
    theirs.close()
    run_app = None
    try:
        if not args.detach:
            # Textual loads while the supervisor checks the nodes
            from flextui.ui.app import run_app
            from flextui.ui.theming import ThemeError, load_themes, resolve_theme

            try:
                resolve_theme(args.theme, load_themes()[0])
            except ThemeError as exc:
                print(f"flextui: error: {exc}", file=sys.stderr)
                ours.close()  # nothing may start
                _reap(supervisor)
                return USAGE_ERROR
        report = wire.recv_frame_blocking(ours)
    except KeyboardInterrupt:
        print("flextui: interrupted: nothing starts", file=sys.stderr)
        ours.close()  # the supervisor ends every launcher it started
        code = _reap(supervisor)
        return code if code is not None else 128 + signal.SIGINT
    if not isinstance(report, dict) or report.get("op") != "ready":
        ours.close()
        code = _reap(supervisor)
        return code if code is not None else FAILED
    run_id = report["run_id"]
    if report.get("warning"):
        print(f"flextui: {report['warning']}", file=sys.stderr)
    if args.detach:
        ours.close()
        print(f"flextui: run {run_id}: {report['world_size']} ranks on {report['nodes']} node(s) in the "
              f"background (supervisor pid {report['pid']}), logs in {report['run_path']}")
        print(reach(run_id, args.log_dir))
        return 0

    async def console() -> tuple[int, bool]:
        job = await ClientJob.open(ours, owner=True)
        code = await run_app(job, theme=args.theme)
        return _after_console(job, code, args.log_dir), job.detached

    try:
        code, detached = asyncio.run(console())
    except AttachError as exc:
        print(f"flextui: error: {exc}", file=sys.stderr)
        code, detached = FAILED, False
    if not detached:
        _reap(supervisor)  # it ends with the job (or saw us go, and stops it)
    return code


def _reap(supervisor: subprocess.Popen) -> int | None:
    try:
        return supervisor.wait(REAP_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None
