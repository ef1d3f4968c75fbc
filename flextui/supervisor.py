"""The supervisor: the one process that owns a job, and serves it to its consoles.

Why a process of its own: a job must outlive the terminal that started it (`--detach`,
the console's `D`), and any number of consoles may watch and steer it (`flextui attach`).
So the Job (its node channels, model and run directory) lives in the supervisor and
consoles are clients (client.py) on a Unix socket in the run directory:

    <run dir>/supervisor.sock   0600 in a 0700 directory; each peer's uid is checked
                                (SO_PEERCRED): only the job's user, no TCP
    <run dir>/run.json          the run's card (runs.py): who owns it, then its outcome
    <run dir>/supervisor.log    the supervisor's own stderr once it runs in the background

How a job gets one (cli.py decides):

* `flextui HOSTFILE s.py` (the TUI) and `flextui --detach ...` start `python -m
  flextui.supervisor ... -- ARGV` in a session of its own (no terminal, stdin /dev/null)
  with one end of a socketpair. It parses ARGV exactly as the command did, builds the
  Job and runs its preflight; until the job is under way its stderr is the command's,
  so a problem prints the same one line as ever and the command exits with the
  supervisor's code, nothing started. Then it reports "ready" on the socketpair and
  moves its output to supervisor.log. With --detach the command prints the run id and
  exits 0. The TUI instead stays on the socketpair as the job's *owner*: if that
  connection ends without a "detach" (the console was killed, its terminal closed) the
  supervisor stops the job on every node, which keeps the guarantee of a console that
  holds its job in-process. `D` sends "detach" first, then the job runs on unowned.
* `flextui --headless` keeps the job in its own process (nothing to detach from: it is
  for scripts and CI, and its exit code is the job's), with the same socket server in
  that process, so `flextui attach`, `stop` and `ls` work on it all the same.

Every console gets the model mirrored (mirror.py: state, output diffs every FLUSH
seconds, a snapshot plus its logs' offsets on attach) and sends requests (abort, kill,
stop, stop_rank, stop_node, kill_rank, detach) that act on the Job exactly as the
in-process console's keys do, so an action from any console is seen by all. When the job
ends each console gets the final state and "ended"; the card gets the outcome; the
socket goes; the supervisor exits. SIGTERM or SIGINT to the supervisor is an abort (as
Ctrl+C in a console; again: kill), so `--save_pid`'s file (/tmp/<pid of the flextui
command>.deepspeed, deepspeed.PidFile) names it.

If the supervisor is SIGKILLed its node channels close and every node stops its
processes (the launcher's own rule); its card still says running with a pid that is gone,
which `flextui ls` reports as "supervisor lost".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import traceback

from flextui import wire
from flextui.job import STACKS_TIMEOUT
from flextui.mirror import ConsoleView, Publisher
from flextui.runs import first_failure_of, process_start_time, write_card

FLUSH = 0.05  # seconds between output diffs to consoles
STATE_EVERY = 0.1  # at most this often the state is pickled again (~5 ms at 512 ranks)
RECHECK = 1.0  # seconds between state checks nobody asked for (a change without notify)
HIGH_WATER = 8 << 20  # bytes queued to a console before it is skipped (it catches up later)
END_DRAIN = 5.0  # seconds the last messages may take to reach the consoles
OWNER_HELLO = 60.0  # seconds a console told "ready" may take to say hello (Textual loading, a busy machine)
LOG_NAME = "supervisor.log"
SIGNALS = {int(s): s.name for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}


class Console:
    """One connected console (its socket, what it has been sent)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, owner: bool, pid: int) -> None:
        self.reader, self.writer = reader, writer
        self.owner = owner
        self.pid = pid
        self.view = ConsoleView()
        self.ready = False  # it has its snapshot
        self.detached = False
        self.ended = False  # it has "ended": nothing more goes out
        self.told_ready = False  # the owner: it was told "ready" and will say hello

    def send(self, data: bytes) -> None:
        if not self.ended and not self.writer.is_closing():
            self.writer.write(data)

    @property
    def backed_up(self) -> bool:
        transport = self.writer.transport
        return transport is None or transport.get_write_buffer_size() > HIGH_WATER


class Supervisor:
    """Serves one Job to consoles. Built in the job's event loop before job.run(); it
    starts listening once the run directory exists (the job's first notification after
    the preflight) and closes itself when the job ends (`await closed()`)."""

    def __init__(self, job, *, detached: bool = False) -> None:
        self.job = job
        self.detached = detached
        self.publisher = Publisher(job.model, lambda: job.mode.log_files(job.model))
        self.consoles: list[Console] = []
        self.socket_path = os.path.join(job.run_path, wire.SOCKET_NAME)
        self.started = False  # _start ran (listening, or start_error says why not)
        self.server: asyncio.AbstractServer | None = None
        self.listening = asyncio.Event()
        self.start_error: str | None = None
        self._dirty = True
        self._refreshed = 0.0  # time.monotonic() of the last state refresh
        self._ending = False
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Future] = set()
        job.state_listeners.append(self._job_changed)
        self._spawn(self._flush_loop())

    def _spawn(self, coro) -> asyncio.Future:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the job's side ----------------------------------------------------------------

    def _job_changed(self) -> None:
        self._dirty = True
        if not self.started and os.path.isdir(self.job.run_path):
            self._start()
        if getattr(self.job, "finished", False) and not self._ending:
            self._ending = True
            self._spawn(self._end())

    def _start(self) -> None:
        """Listen in the run directory and write the run's card (once it exists)."""
        self.started = True
        path = self.job.run_path
        try:  # the card first: whoever finds the socket finds the card
            os.chmod(path, 0o700)
            self._write_card()
        except OSError as exc:
            print(f"flextui: cannot write {path}/run.json: {exc.strerror or exc}", file=sys.stderr)
        try:
            sock = wire.listen(self.socket_path)
        except OSError as exc:
            self.start_error = f"cannot listen on {self.socket_path}: {exc.strerror or exc}"
            print(f"flextui: {self.start_error}; the job runs on, no console can attach", file=sys.stderr)
            self.listening.set()
            return
        self._spawn(self._serve(sock))

    async def _serve(self, sock: socket.socket) -> None:
        self.server = await asyncio.start_unix_server(self._accept, sock=sock, limit=wire.MAX_REQUEST)
        if self._ending:  # the job ended meanwhile
            self.server.close()
        self.listening.set()

    def _card(self) -> dict:
        job, model = self.job, self.job.model
        return {
            "run_id": job.run_id, "started_at": model.started_at, "world_size": job.world.world_size,
            "nodes": len(job.world.nodes), "hosts": [n.host for n in job.world.nodes[:8]],
            "mode": job.mode.name, "detached": self.detached, "socket": wire.SOCKET_NAME,
            "owner": {"pid": os.getpid(), "host": socket.gethostname(),
                      "start_time": process_start_time(os.getpid())},
            "state": "running",
        }

    def _write_card(self, **outcome) -> None:
        write_card(self.job.run_path, {**self._card(), **outcome})

    # -- consoles ----------------------------------------------------------------------

    async def add_owner(self, sock: socket.socket) -> Console:
        """The console that started the job (the TUI), on its socketpair."""
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=wire.MAX_REQUEST)
        console = Console(reader, writer, owner=True, pid=wire.peer_uid(sock)[0])
        self._spawn(self._talk(console))
        return console

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            pid, uid = wire.peer_uid(sock)
        except OSError:
            writer.close()
            return
        if uid != os.geteuid():
            writer.write(wire.json_frame({"op": "refused", "reason": "permission denied: this job belongs to "
                                          f"uid {os.geteuid()}"}))
            await _close_after_reading(reader, writer)
            return
        await self._talk(Console(reader, writer, owner=False, pid=pid))

    async def _talk(self, console: Console) -> None:
        """One console's requests until it goes; its hello gets the snapshot."""
        self.consoles.append(console)
        try:
            while True:
                try:
                    request = await wire.read_frame(console.reader, wire.MAX_REQUEST, allow_pickle=False)
                except (wire.ProtocolError, OSError):
                    break
                if request is None:
                    break
                if isinstance(request, dict):
                    try:
                        self._handle(console, request)
                    except Exception:  # a bug: say so in supervisor.log, keep the console and the job
                        traceback.print_exc()
        finally:
            self.consoles.remove(console)
            console.writer.close()
            if console.owner and not console.detached and not self._ending:
                self._owner_gone(console)

    def _handle(self, console: Console, request: dict) -> None:
        op = request.get("op")
        if op == "hello":
            console.send(wire.pickle_frame(("snapshot", self._snapshot(console))))
            console.ready = True
            if self._ending:
                self._finish_console(console)
            return
        if op == "detach":
            console.detached = True
            return
        if op == "stacks":
            self._spawn(self._stacks(console, request))
            return
        said = self._act(op, request)
        if said:
            self._dirty = True
            self._tell_others(console, said)

    def _act(self, op: str | None, request: dict) -> str | None:
        """Carry out a console's control request; what it did, in words (None: nothing)."""
        job = self.job
        try:
            if op == "abort":
                signum = int(request.get("signum") or signal.SIGINT)
                if signum not in SIGNALS:
                    return None
                stopping = job.model.stop_started_at is not None
                job.abort(signum)
                return "killed every rank" if stopping else f"aborted the job ({SIGNALS[signum]})"
            if op == "kill":
                job.kill()
                return "killed every rank"
            if op == "stop":
                job.stop(str(request.get("reason") or "stopped by user"), by_user=bool(request.get("by_user")))
                return "stopped the job"
            if op == "stop_rank":
                job.stop_rank(int(request["rank"]))
                return f"stopped rank {int(request['rank'])}"
            if op == "kill_rank" and hasattr(job, "kill_rank"):
                job.kill_rank(int(request["rank"]))
                return f"killed rank {int(request['rank'])}"
            if op == "stop_node":
                job.stop_node(int(request["node_rank"]))
                return f"stopped node {int(request['node_rank'])}"
        except (KeyError, TypeError, ValueError):
            return None
        return None

    async def _stacks(self, console: Console, request: dict) -> None:
        """`d` / `flextui stacks`: the job's dump of every rank's stack, to that console."""
        try:
            timeout = float(request.get("timeout") or STACKS_TIMEOUT)
        except (TypeError, ValueError):
            timeout = STACKS_TIMEOUT
        dump = await self.job.dump_stacks(min(max(timeout, 1.0), 120.0))
        console.send(wire.pickle_frame(("stacks", {"id": request.get("id"), "dump": dump})))

    def _tell_others(self, actor: Console, said: str) -> None:
        text = f"another console (pid {actor.pid}) {said}"
        for console in self.consoles:
            if console is not actor and console.ready:  # (send() skips an ended one)
                console.send(wire.pickle_frame(("notice", text)))

    def _owner_gone(self, console: Console) -> None:
        """The console that started the job went away without detaching: stop the job, as
        a console that held the job in-process would (its terminal hung up)."""
        model = self.job.model
        if model.state.finished or model.stop_started_at is not None:
            return
        model.abort_signal = signal.SIGHUP
        self.job.stop(f"console gone (pid {console.pid}) without detaching", by_user=True)

    def _snapshot(self, console: Console) -> dict:
        job = self.job
        return {
            "run_id": job.run_id, "run_path": os.path.abspath(job.run_path), "world": job.world,
            "grace": job.grace, "pid": os.getpid(), "detached": self.detached,
            **self.publisher.snapshot(console.view),
        }

    # -- sending -------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        last_check = time.monotonic()
        while True:
            await asyncio.sleep(FLUSH)
            if time.monotonic() - last_check >= RECHECK:
                last_check = time.monotonic()
                self._dirty = True
            self.flush()

    def flush(self) -> None:
        ready = [c for c in self.consoles if c.ready and not c.ended and not c.backed_up]
        if not ready:
            return
        now = time.monotonic()
        if self._dirty and now - self._refreshed >= STATE_EVERY:
            self._dirty, self._refreshed = False, now
            self.publisher.refresh()
        for console in ready:
            diff = self.publisher.diff(console.view)
            if diff is not None:
                console.send(wire.pickle_frame(("sync", diff)))

    def _ended(self) -> dict:
        model = self.job.model
        return {"exit_code": model.exit_code, "state": model.state.value}

    def _finish_console(self, console: Console) -> None:
        """The job ended: its last diff, "ended", and our side of the socket shut; the
        console closes its side once it read them (so nothing it sent stays unread)."""
        diff = self.publisher.diff(console.view)
        if diff is not None:
            console.send(wire.pickle_frame(("sync", diff)))
        console.send(wire.pickle_frame(("ended", self._ended())))
        console.ended = True
        with contextlib.suppress(OSError, RuntimeError):
            if not console.writer.is_closing():
                console.writer.write_eof()

    async def _end(self) -> None:
        """The job ended: final state to every console, the card's outcome, and close."""
        model = self.job.model
        self.publisher.refresh()
        for console in list(self.consoles):
            if console.ready:
                self._finish_console(console)
            elif not console.told_ready:  # the command waits for a "ready" that never comes
                console.writer.close()
        if self.started and self.start_error is None:
            try:
                self._write_card(state=model.state.value, exit_code=model.exit_code, ended_at=model.ended_at,
                                 first_failure=first_failure_of(model), error=model.error,
                                 stop_reason=model.stop_reason)
            except OSError as exc:
                print(f"flextui: cannot write run.json: {exc.strerror or exc}", file=sys.stderr)
            if self.server is not None:
                self.server.close()
            with contextlib.suppress(OSError):
                os.unlink(self.socket_path)
        # A console that is about to say hello (the TUI loading Textual after "ready") gets
        # its snapshot and "ended" then, so a job over before its console is up still shows.
        waiting_hello = any(c.told_ready and not c.ready for c in self.consoles)
        deadline = time.monotonic() + (OWNER_HELLO if waiting_hello else END_DRAIN)
        while self.consoles and time.monotonic() < deadline:  # each closes after "ended"
            await asyncio.sleep(0.02)
        for console in list(self.consoles):
            console.writer.close()
        self._closed.set()

    async def closed(self, timeout: float | None = None) -> None:
        """Until the last messages went out (after the job ended)."""
        if not self._ending:
            self._ending = True
            self._spawn(self._end())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._closed.wait(), timeout)
        for task in list(self._tasks):
            task.cancel()


async def _close_after_reading(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Close a connection once the other side has read what we sent: closing a Unix socket
    with unread input resets it, and the peer would see the reset, not our last words."""
    with contextlib.suppress(OSError, ConnectionError, asyncio.TimeoutError):
        await asyncio.wait_for(writer.drain(), 2)
        writer.write_eof()

        async def discard() -> None:
            while await reader.read(1 << 16):
                pass

        await asyncio.wait_for(discard(), 2)
    writer.close()


# -- the supervisor process ------------------------------------------------------------------


def _move_output(run_path: str) -> None:
    """Leave the command's terminal: stdout and stderr go to supervisor.log from now on."""
    try:
        fd = os.open(os.path.join(run_path, LOG_NAME), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    except OSError:
        fd = os.open(os.devnull, os.O_WRONLY)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


async def supervise(job, lifeline: socket.socket, detached: bool) -> int:
    """Run the job in this (supervisor) process; report "ready" to the command once the job
    is under way and its socket listens, or exit with the launch's error on stderr."""
    from flextui.job import LaunchError

    loop = asyncio.get_running_loop()
    supervisor = Supervisor(job, detached=detached)
    owner = None if detached else await supervisor.add_owner(lifeline)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, job.abort, sig)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # no terminal to hang up
    if detached:
        # the command waits on the socketpair: its end means "the command is gone" before ready
        lifeline.setblocking(False)
        loop.add_reader(lifeline.fileno(), _lifeline_closed, loop, lifeline, job, supervisor)
    run = asyncio.ensure_future(job.run())
    listening = asyncio.ensure_future(supervisor.listening.wait())
    await asyncio.wait([run, listening], return_when=asyncio.FIRST_COMPLETED)
    if supervisor.listening.is_set():  # (if it could not listen, the job runs all the same)
        ready = {"op": "ready", "run_id": job.run_id, "run_path": job.run_path, "pid": os.getpid(),
                 "world_size": job.world.world_size, "nodes": len(job.world.nodes),
                 "warning": supervisor.start_error}
        _move_output(job.run_path)
        if detached:
            loop.remove_reader(lifeline.fileno())
            with contextlib.suppress(OSError):
                lifeline.setblocking(True)
                lifeline.sendall(wire.json_frame(ready))
            lifeline.close()
        else:
            owner.send(wire.json_frame(ready))
            owner.told_ready = True
    try:
        code = await run
    except LaunchError as exc:
        if not supervisor.listening.is_set():
            listening.cancel()
        print(f"flextui: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        await supervisor.closed(OWNER_HELLO + END_DRAIN)
    return code


def _lifeline_closed(loop, lifeline: socket.socket, job, supervisor: Supervisor) -> None:
    """A detached job's command went away before the job was under way (Ctrl+C during the
    preflight): nothing may start."""
    try:
        data = lifeline.recv(1)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    if not data:
        loop.remove_reader(lifeline.fileno())
        if not supervisor.listening.is_set():
            job.abort(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    """`python -m flextui.supervisor --lifeline FD --command-pid PID [--detach] -- ARGV`
    (started by the flextui command, never by hand)."""
    parser = argparse.ArgumentParser(prog="flextui.supervisor")
    parser.add_argument("--lifeline", type=int, required=True)
    parser.add_argument("--command-pid", type=int, required=True)
    parser.add_argument("--detach", action="store_true")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    words = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    lifeline = socket.socket(fileno=args.lifeline)
    from flextui import cli

    def run_job(job) -> int:
        return asyncio.run(supervise(job, lifeline, args.detach))

    return cli.main(words, run_job=run_job, command_pid=args.command_pid)


if __name__ == "__main__":
    raise SystemExit(main())
