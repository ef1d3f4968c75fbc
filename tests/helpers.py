"""Helpers for the lifecycle tests: real processes, found again by a per-test marker.

Every process a test starts carries the test's tmp_path in its argv (the worker script
lives there, and every child or orphan a worker makes gets it as an argument), so
`marked(marker)` finds exactly that test's processes and nothing else on the machine.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import queue
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil

PY = sys.executable
REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "examples" / "train.py"

# The test worker. Rank comes from RANK; every behaviour is opt-in, per rank.
WORKER_SOURCE = r'''
import argparse, json, os, signal, subprocess, sys, time

MARKER = os.path.dirname(os.path.abspath(__file__)) + os.sep
# A child: sets its SIGTERM disposition, says so with a file, sleeps.
SLEEPER = "import os, signal, sys, time\n" \
          "if sys.argv[1] == 'ignore': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
          "open(os.path.join(sys.argv[2], f'up-{os.getpid()}'), 'w').close()\n" \
          "time.sleep(600)"
# Double fork: the middle process starts a new session, starts the sleeper and exits at
# once, so the sleeper is an orphan in its own session (a daemonised dataloader, say).
DAEMONIZE = "import os, subprocess, sys\n" \
            "os.setsid()\n" \
            "p = subprocess.Popen([sys.executable, '-c', sys.argv[1], sys.argv[2], sys.argv[3]], stdout=subprocess.DEVNULL, start_new_session=True)\n" \
            "print(p.pid, flush=True)\n" \
            "os._exit(0)"

def wait_up(pid):
    """Until the child has set up its signals (else a quick SIGTERM races its start)."""
    deadline = time.time() + 30
    while not os.path.exists(os.path.join(MARKER, f"up-{pid}")) and time.time() < deadline:
        time.sleep(0.005)

def ranks(text):
    return {int(r) for r in text.split(",")} if text else set()

p = argparse.ArgumentParser()
p.add_argument("--local_rank", type=int)
p.add_argument("--env", action="store_true", help="print ENV <json> first")
p.add_argument("--children", type=int, default=0)
p.add_argument("--orphan", action="store_true", help="leave a daemonised grandchild")
p.add_argument("--orphan-ignores-term", action="store_true")
p.add_argument("--ignore-term", default="", help="ranks that ignore SIGTERM (e.g. 1,2)")
p.add_argument("--fail", default="", help="ranks that exit with --code after --after s")
p.add_argument("--code", type=int, default=3)
p.add_argument("--after", type=float, default=0.3)
p.add_argument("--kill-self", default="", help="ranks that SIGKILL themselves after --after s")
p.add_argument("--partial", default=None, help="failing ranks write this with no newline first")
p.add_argument("--lines", type=int, default=0)
p.add_argument("--lines-ranks", default="", help="ranks that print --lines lines and exit 0")
p.add_argument("--run-for", type=float, default=600.0)
p.add_argument("--bytes", action="store_true", help="failing ranks write non-UTF-8 bytes first")
args, rest = p.parse_known_args()
rank = int(os.environ["RANK"])

if rank in ranks(args.ignore_term):
    signal.signal(signal.SIGTERM, lambda *_: print(f"rank {rank} ignoring SIGTERM", flush=True))
if args.env:
    keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "CROSS_RANK",
            "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED",
            "FLEXTUI_TEST_VAR")
    print("ENV " + json.dumps({"env": {k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:],
                               "pid": os.getpid(), "cwd": os.getcwd()}), flush=True)
if rank in ranks(args.lines_ranks):
    out = sys.stdout
    for i in range(args.lines):
        out.write(f"rank {rank} line {i} of {args.lines}\n")
    out.flush()
    sys.exit(0)
for _ in range(args.children):
    child = subprocess.Popen([sys.executable, "-c", SLEEPER, "ignore" if rank in ranks(args.ignore_term) else "-", MARKER])
    wait_up(child.pid)
    print(f"child {child.pid}", flush=True)
if args.orphan:
    mid = subprocess.run([sys.executable, "-c", DAEMONIZE, SLEEPER,
                          "ignore" if args.orphan_ignores_term else "-", MARKER],
                         stdout=subprocess.PIPE, text=True, check=True)
    wait_up(int(mid.stdout))
    print(f"orphan {int(mid.stdout)}", flush=True)
print(f"ready rank {rank} pid {os.getpid()}", flush=True)
start = time.time()
while time.time() - start < args.run_for:
    if time.time() - start >= args.after:
        if rank in ranks(args.kill_self):
            os.kill(os.getpid(), signal.SIGKILL)
        if rank in ranks(args.fail):
            if args.bytes:
                sys.stdout.buffer.write(b"bad bytes \xff\xfe end\n")
                sys.stdout.flush()
            if args.partial is not None:
                sys.stdout.write(args.partial)
                sys.stdout.flush()
            os._exit(args.code)
    time.sleep(0.02)
'''


# A worker that checkpoints on SIGTERM: it counts every SIGTERM delivered to it (through
# Python's wakeup fd, one byte per delivery, which its handler alone would merge) in
# term-<pid>, finishes its "checkpoint" CHECKPOINT s after the first one and exits 0. It
# starts --children copies of itself (same process group, like dataloader workers).
TERM_COUNTER_SOURCE = r"""
import os, select, signal, subprocess, sys, time
here = os.path.dirname(os.path.abspath(__file__))
r, w = os.pipe()
os.set_blocking(w, False)
signal.set_wakeup_fd(w, warn_on_full_buffer=False)
signal.signal(signal.SIGTERM, lambda *_: None)
children = int(sys.argv[sys.argv.index("--children") + 1]) if "--children" in sys.argv else 0
for _ in range(children):
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child"])
open(os.path.join(here, "up-%d" % os.getpid()), "w").close()
print("ready rank %s pid %d" % (os.environ.get("RANK", "?"), os.getpid()), flush=True)
deadline = None
while deadline is None or time.time() < deadline:
    if select.select([r], [], [], 0.05)[0]:
        for byte in os.read(r, 100):
            if byte == signal.SIGTERM:
                with open(os.path.join(here, "term-%d" % os.getpid()), "a") as f:
                    f.write("TERM\n")
                if deadline is None:
                    deadline = time.time() + CHECKPOINT
print("checkpoint written by %d" % os.getpid(), flush=True)
"""


def write_term_counter(directory: Path, checkpoint: float = 1.5) -> Path:
    path = Path(directory) / "term_counter.py"
    path.write_text(f"CHECKPOINT = {checkpoint}\n" + TERM_COUNTER_SOURCE)
    return path


def sigterms_received(directory: Path) -> dict[int, int]:
    """pid -> SIGTERMs delivered, for every process the term counter started in directory."""
    ups = [int(p.name[3:]) for p in Path(directory).glob("up-*")]
    return {pid: len(read_text(Path(directory) / f"term-{pid}").splitlines()) for pid in ups}


def write_worker(directory: Path) -> Path:
    path = Path(directory) / "worker.py"
    path.write_text(WORKER_SOURCE)
    return path


def marker_of(tmp_path: Path) -> str:
    return str(tmp_path) + os.sep


def marked(marker: str) -> list[psutil.Process]:
    """Live processes (not this one) whose argv mentions marker."""
    found = []
    me = os.getpid()
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            if process.pid == me or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if any(marker in arg for arg in process.info["cmdline"] or ()):
                found.append(process)
        except (psutil.Error, TypeError):
            continue
    return found


def describe(processes: Iterable[psutil.Process]) -> list[str]:
    out = []
    for process in processes:
        try:
            out.append(f"{process.pid} ({process.status()}): {' '.join(process.cmdline())[:160]}")
        except psutil.Error:
            pass
    return out


def survivors(marker: str, timeout: float = 5.0) -> list[str]:
    """Poll until no process carries the marker; the ones still there at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        left = marked(marker)
        if not left or time.monotonic() >= deadline:
            return describe(left)
        time.sleep(0.05)


def pids_alive(pids: Iterable[int], timeout: float = 5.0) -> list[int]:
    """Poll until none of these pids exists at all (a zombie still counts as alive)."""
    pids = [p for p in pids if p]
    deadline = time.monotonic() + timeout
    while True:
        alive = [p for p in pids if psutil.pid_exists(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def pids_running(pids: Iterable[int], timeout: float = 5.0) -> list[int]:
    """Like pids_alive, but a zombie counts as gone: for a process whose parent died
    (then reaping it is init's business, and this machine's init takes its time)."""
    def running(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    pids = [p for p in pids if p]
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in pids if running(p)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.05)


def kill_marked(marker: str) -> None:
    """Test clean-up: SIGKILL this test's own leftovers (so one failure cannot leak)."""
    for process in marked(marker):
        try:
            process.kill()
        except psutil.Error:
            pass


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def _bindable(family: int, address: str, port: int) -> bool:
    try:
        sock = socket.socket(family)
    except OSError:
        return True  # no such family here (no IPv6)
    with sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port for --master_port, free now and below the kernel's ephemeral range, so an
    outgoing connection (another test's, a benchmark's SSH) cannot take it meanwhile."""
    low = 32768
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(max(1024, low - 12000), low)
        if _bindable(socket.AF_INET, "0.0.0.0", port) and _bindable(socket.AF_INET6, "::", port):
            return port
    raise RuntimeError("no free port found")


def read_text(path: Path) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def logs_contain(log_dir: Path, ranks: Iterable[int], needle: str) -> bool:
    return all(needle in read_text(Path(log_dir) / f"rank-{r}.log") for r in ranks)


# -- the node launcher, run directly ----------------------------------------------------


def node_spec(log_dir: Path, argvs, env: dict | None = None, cwd: str | None = None, **more) -> dict:
    """A node spec (see flextui.launch). `argvs`: a SharedCommand (every worker runs it,
    as the console's specs do), or one argv per worker."""
    if isinstance(argvs, SharedCommand):
        workers = [{"rank": r, "local_rank": r} for r in range(argvs.count)]
        command = {"head": argvs.head, "tail": argvs.tail, "local_rank_arg": True}
    else:
        workers = [{"rank": r, "local_rank": r, "argv": argv} for r, argv in enumerate(argvs)]
        command = {"head": [], "tail": [], "local_rank_arg": False}
    for worker in workers:
        worker["env"] = {"RANK": str(worker["rank"]), "LOCAL_RANK": str(worker["local_rank"])}
    return {
        "run_id": "test", "node_rank": 0, "log_dir": str(log_dir), "cwd": cwd,
        "env": {"WORLD_SIZE": str(len(workers)), **(env or {})},
        "command": command, "workers": workers, **more,
    }


class SharedCommand:
    """`head --local_rank=N tail` for `count` workers: the script's arguments once."""

    def __init__(self, head: list[str], tail: list[str], count: int) -> None:
        self.head, self.tail, self.count = head, tail, count


def spec_line(spec: dict) -> bytes:
    return (json.dumps({"cmd": "spec", "spec": spec}) + "\n").encode()


class Launcher:
    """`python -m flextui.launch` as a subprocess, its events read on a thread.

    The spec goes where the console puts it, the first line on a pipe stdin, or
    (`stdin="file"`) a regular file holding it, or (`stdin="devnull"`) --spec-file with
    /dev/null for stdin; grace and console_timeout go into the spec."""

    def __init__(self, spec: dict, *extra: str, grace: float = 10.0, console_timeout: float = 0.0,
                 stdin: str = "pipe", cwd: Path | None = None, env: dict | None = None,
                 first_line: bytes | None = None, user: str | None = None) -> None:
        self.started_at = time.time()
        spec = {**spec, "grace": grace, "console_timeout": console_timeout}
        argv = [PY, "-m", "flextui.launch", *extra]
        if user is not None:  # as that user (the tests run as root)
            argv = ["setpriv", f"--reuid={user}", f"--regid={grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name}",
                    "--clear-groups", *argv]
        self._spec_file = None
        if stdin != "pipe":
            import tempfile

            self._spec_file = tempfile.NamedTemporaryFile(suffix=".spec")
            self._spec_file.write(spec_line(spec) if stdin == "file" else json.dumps(spec).encode())
            self._spec_file.flush()
            if stdin == "devnull":
                argv += ["--spec-file", self._spec_file.name]
        stdin_file = {"pipe": subprocess.PIPE, "devnull": subprocess.DEVNULL}.get(stdin)
        if stdin == "file":
            stdin_file = open(self._spec_file.name, "rb")
        self.proc = subprocess.Popen(
            argv, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
            start_new_session=True, env={**os.environ, **(env or {})},
        )
        if stdin == "file":
            stdin_file.close()
        if stdin == "pipe":  # first_line: a test's own (say, a shared channel's spec message)
            self.proc.stdin.write(spec_line(spec) if first_line is None else first_line)
            self.proc.stdin.flush()
        self.events: list[dict] = []
        self.raw: list[bytes] = []
        self._queue: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.stderr = b""

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.raw.append(line)
            event = json.loads(line)
            self.events.append(event)
            self._queue.put(event)
        self._queue.put(None)

    def wait_event(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        """The first event (seen so far or coming) that matches."""
        for event in list(self.events):
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s; got {self.events}")
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(f"launcher ended without the event; got {self.events}")
            if predicate(event):
                return event

    def started(self, count: int, timeout: float = 10.0) -> list[dict]:
        wait_for(lambda: sum(e["ev"] == "started" for e in self.events) >= count, timeout,
                 f"{count} started events")
        return [e for e in self.events if e["ev"] == "started"]

    def send(self, command: dict) -> None:
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def close_stdin(self) -> None:
        self.proc.stdin.close()

    def finish(self, timeout: float = 20.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"launcher still running after {timeout}s; events {self.events}")
        self._reader.join(5)
        if self._spec_file is not None:
            self._spec_file.close()
        self.stderr = self.proc.stderr.read()
        self.proc.stderr.close()
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        return code

    def of(self, kind: str, rank: int | None = None) -> list[dict]:
        return [e for e in self.events if e["ev"] == kind and (rank is None or e.get("rank") == rank)]

    def output(self, rank: int) -> str:
        return "".join(e["data"] for e in self.of("out", rank))


# -- flextui itself ---------------------------------------------------------------------


def flextui_argv(*args: str) -> list[str]:
    return [PY, "-m", "flextui", *args]


def start_flextui(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        flextui_argv(*args), cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True, **kwargs,
    )


def run_flextui(*args: str, cwd: Path, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        flextui_argv(*args), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
        timeout=timeout, start_new_session=True,
    )


def the_run_dir(log_root: Path) -> Path:
    runs = [p for p in Path(log_root).iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def wait_run_dir(log_root: Path, timeout: float = 10.0) -> Path:
    return wait_for(lambda: Path(log_root).is_dir() and next(Path(log_root).iterdir(), None),
                    timeout, "the run directory")


def read_events(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "events.jsonl").read_text().splitlines()]


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


# -- fixtures (import them into a test module) -------------------------------------------

import pytest  # noqa: E402


@pytest.fixture
def marker(tmp_path):
    """This test's marker; whatever still carries it afterwards is killed (and fails)."""
    mark = marker_of(tmp_path)
    yield mark
    kill_marked(mark)


@pytest.fixture
def worker(tmp_path) -> Path:
    return write_worker(tmp_path)
