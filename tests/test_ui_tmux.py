"""End to end as a user sees it: `flextui HOSTFILE worker.py` in a real terminal (tmux),
keys typed with send-keys, the screen read with capture-pane.

Each test uses its own tmux server socket and kills it afterwards; workers carry a
unique marker so nothing they start can outlive the test unnoticed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psutil
import pytest

# A real terminal, a real console and real jobs: end to end, so in the slow tier.
pytestmark = pytest.mark.slow

WORKER = r'''
import os, sys, time
rank = int(os.environ["RANK"])
mode = [a for a in sys.argv[1:] if not a.startswith("--local_rank")][0]
print(f"rank {rank} says hello", flush=True)
if mode == "quick":
    for i in range(3):
        print(f"rank {rank} step {i}", flush=True)
        time.sleep(0.2)
    sys.exit(0)
while True:
    print(f"rank {rank} tick", flush=True)
    time.sleep(0.2)
'''


class Terminal:
    def __init__(self, tmp_path, width: int = 160, height: int = 45) -> None:
        self.socket = f"flextui-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.tmp = tmp_path
        self.width, self.height = width, height
        self.exit_file = tmp_path / "exit-code"

    def tmux(self, *args: str) -> str:
        # The tmux server inherits this environment; pytest's COLUMNS=80 LINES=24 would win
        # over the pane's real size in Textual, so a 160x48 test would draw at 80x24.
        environ = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                                text=True, timeout=10, env=environ)
        if result.returncode != 0:
            raise RuntimeError(f"tmux {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def start(self, argv: list[str]) -> None:
        command = " ".join(_quote(a) for a in argv)
        shell = f"cd {_quote(str(self.tmp))} && {command}; echo $? > {_quote(str(self.exit_file))}"
        self.tmux("new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height),
                  "-e", "LANG=C.UTF-8", "-e", "LC_ALL=C.UTF-8", "sh", "-c", shell)

    def screen(self) -> str:
        try:
            return self.tmux("capture-pane", "-p", "-t", "t")
        except RuntimeError:
            return ""

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen was:\n{self.screen()}")

    def exit_code(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exit_file.exists() and self.exit_file.read_text().strip():
                return int(self.exit_file.read_text())
            time.sleep(0.1)
        raise AssertionError(f"flextui did not exit; the screen was:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=10)


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def marked(marker: str, workers_only: bool = True) -> list[psutil.Process]:
    """Processes with `marker` in their argv: the workers (python -u worker.py ... MARKER),
    or with workers_only=False also the console and a supervisor; never tmux."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            argv = proc.info["cmdline"] or []
            if marker in argv and (not workers_only or "-u" in argv):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@contextmanager
def marked_terminal(tmp_path, files: dict[str, str], wait: float = 0.0, workers_only: bool = True,
                    **size: int) -> Iterator[Terminal]:
    """A tmux terminal in tmp_path (with `files` written there) and a unique marker for the
    job's argv. Afterwards nothing marked may be left (within `wait` seconds)."""
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    term = Terminal(tmp_path, **size)
    term.marker = f"flextui-tmux-test-{uuid.uuid4().hex[:8]}"
    try:
        yield term
    finally:
        term.close()
    deadline = time.monotonic() + wait
    while (leftovers := marked(term.marker, workers_only)) and time.monotonic() < deadline:
        time.sleep(0.1)
    for proc in leftovers:
        proc.kill()
    assert not leftovers, f"processes left behind: {[p.pid for p in leftovers]}"


@pytest.fixture
def terminal(tmp_path):
    with marked_terminal(tmp_path, {"hostfile": "localhost slots=2\n", "worker.py": WORKER}) as term:
        yield term


def flextui(term: Terminal, mode: str) -> list[str]:
    return [sys.executable, "-m", "flextui", "--grace", "3", "hostfile", "worker.py", mode, term.marker]


def test_a_job_runs_to_the_end_and_q_quits_with_its_code(terminal):
    terminal.start(flextui(terminal, "quick"))
    terminal.wait_for("RANK HOST")
    screen = terminal.wait_for("SUCCEEDED (exit code 0)")
    assert "job succeeded (exit code 0)" in screen  # the summary
    terminal.keys("Escape")
    time.sleep(0.3)  # a lone ESC followed at once by "1" would read as Alt+1
    terminal.keys("1")
    screen = terminal.wait_for("rank 1 localhost gpu 1")
    assert "rank 1 step 2" in screen
    terminal.keys("q")
    assert terminal.exit_code() == 0


def test_ctrl_c_stops_the_job_and_the_app_stays_until_q(terminal):
    terminal.start(flextui(terminal, "forever"))
    terminal.wait_for("● 2 running")
    terminal.wait_for("rank 1 tick")
    assert len(marked(terminal.marker)) >= 2
    terminal.keys("C-c")
    terminal.wait_for("ABORTED (exit code 130)")
    assert marked(terminal.marker) == []
    assert not terminal.exit_file.exists()  # the logs stay readable
    terminal.keys("q")
    assert terminal.exit_code() == 130


def test_q_on_a_running_job_asks_then_stops_it(terminal):
    terminal.start(flextui(terminal, "forever"))
    terminal.wait_for("rank 0 tick")
    terminal.keys("q")
    terminal.wait_for("Stop every rank and quit?")
    terminal.keys("y")
    assert terminal.exit_code() == 130
    assert marked(terminal.marker) == []


def test_sigterm_to_the_console_stops_the_job_and_exits(terminal):
    terminal.start(flextui(terminal, "forever"))
    terminal.wait_for("rank 1 tick")
    consoles = [p for p in psutil.process_iter(["cmdline"])
                if terminal.marker in (p.info["cmdline"] or []) and "flextui" in (p.info["cmdline"] or [])]
    assert len(consoles) == 1
    consoles[0].terminate()
    assert terminal.exit_code() == 128 + 15  # as a shell reports a SIGTERMed command
    assert marked(terminal.marker) == []


@pytest.mark.slow
def test_64_ranks_at_80x24(tmp_path):
    """Issue 13 as a user sees it at 80×24: 64 ranks, the table sorted by status, the
    picker, stopping one rank from its dialog, Ctrl+C, a grouped summary that fits, the
    exit code, and nothing left behind."""
    (tmp_path / "hostfile").write_text("localhost slots=64\n")
    (tmp_path / "worker.py").write_text(WORKER)
    term = Terminal(tmp_path, width=80, height=24)
    term.marker = f"flextui-tmux-test-{uuid.uuid4().hex[:8]}"
    try:
        term.start(flextui(term, "forever"))
        screen = term.wait_for("● 64 running", timeout=120)
        header = next(line for line in screen.splitlines() if "RANK" in line and "STATUS" in line)
        first_row = screen.splitlines()[screen.splitlines().index(header) + 1]
        assert first_row[header.index("RANK") + 3] == "0"  # right-aligned under its title
        assert first_row[header.index("STATUS"):].startswith("running")
        assert "more ▸ (:)" in screen  # the tab strip says where the other 48 are
        term.keys(":")
        term.wait_for("Go to")
        time.sleep(1.0)  # the palette takes keys once it has settled, as a user would type
        term.keys("3", "7")
        term.wait_for("rank 37  localhost")
        term.keys("Enter")
        term.wait_for("rank 37 localhost gpu 37 running")
        term.keys("k")
        term.wait_for("Stop rank 37 on localhost")
        term.keys("y")
        screen = term.wait_for("■ 1 stopped", timeout=30)
        term.keys("o")  # sort by status: the stopped rank sinks to the bottom, running on top
        screen = term.wait_for("STATUS▲")
        rows = screen.splitlines()
        assert "running" in rows[[i for i, r in enumerate(rows) if "STATUS▲" in r][0] + 1]
        term.keys("C-c")
        screen = term.wait_for("ABORTED (exit code 130)", timeout=60)
        screen = term.wait_for("stopped by the user")
        summary = [line for line in screen.splitlines() if "│" in line]
        assert any("0-63" in line and "stopped by the user" in line for line in summary), screen  # one row
        verdict = next(line for line in summary if "job aborted" in line)
        assert "aborted by user (SIGINT)" in verdict  # the whole verdict inside the dialog
        assert marked(term.marker) == []
        term.keys("q")
        assert term.exit_code() == 130
    finally:
        term.close()  # if the test failed midway, the console stops the job on the hangup
        deadline = time.monotonic() + 30
        while marked(term.marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftovers = marked(term.marker)
        for proc in leftovers:
            proc.kill()
        assert not leftovers, f"processes left behind: {[p.pid for p in leftovers]}"
