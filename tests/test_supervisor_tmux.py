"""The console's side of issue 11 in a real terminal (tmux): start a job, `D` to detach,
`flextui attach` to come back with its history, Ctrl+C, `q`; a console killed with -9
stops its job; an attached console's terminal closing leaves the job running."""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import psutil
import pytest

from tests.test_ui_tmux import Terminal, _quote, marked, marked_terminal

pytestmark = pytest.mark.slow

WORKER = r'''
import os, sys, time
rank = int(os.environ["RANK"])
i = 0
while True:
    print(f"rank {rank} tick {i}", flush=True)
    i += 1
    time.sleep(0.1)
'''


@pytest.fixture
def term(tmp_path):
    # the console and a supervisor too; a supervisor may take a moment to finish its record
    with marked_terminal(tmp_path, {"hostfile": "localhost slots=4\n", "worker.py": WORKER}, wait=15,
                         workers_only=False, width=160, height=48) as terminal:
        yield terminal


def flextui(*args: str) -> str:
    return " ".join(_quote(a) for a in [sys.executable, "-m", "flextui", *args])


def job(term: Terminal) -> str:
    return flextui("--grace", "3", "--no_local_rank", "hostfile", "worker.py", term.marker)


def run_shell(term: Terminal, script: str) -> None:
    term.tmux("new-session", "-d", "-s", "t", "-x", str(term.width), "-y", str(term.height),
              "-e", "LANG=C.UTF-8", "-e", "LC_ALL=C.UTF-8", "sh", "-c", f"cd {_quote(str(term.tmp))} && {script}")


def run_dir(term: Terminal):
    runs = term.tmp / "flextui-runs"
    return next(runs.iterdir())


def test_start_detach_attach_ctrl_c_quit(term):
    first, second = term.tmp / "exit-1", term.tmp / "exit-2"
    run_shell(term, f"{job(term)}; echo $? > {first}; {flextui('attach')}; echo $? > {second}; sleep 600")
    term.wait_for("● 4 running")
    term.wait_for("rank 3 tick 5")
    term.keys("D")
    term.wait_for("Detach? The job keeps running without this console.")
    term.keys("y")
    # the first console is gone (exit 0), the job is not; attach comes up in the same terminal
    deadline = time.monotonic() + 30
    while not (first.exists() and first.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.read_text().strip() == "0"
    screen = term.wait_for("● 4 running")
    assert run_dir(term).name in screen
    ticks = len(marked(term.marker))
    assert ticks == 4  # the four ranks, still running under the supervisor
    term.keys("3")  # rank 3's tab: its history from the start, lines written while detached
    term.wait_for("rank 3 localhost gpu 3")
    term.wait_for("rank 3 tick 60")  # more history than a 160x48 screen shows: g must scroll
    term.keys("t")  # the log has the keys
    time.sleep(0.3)
    term.keys("g")  # its top
    screen = term.wait_for("rank 3 tick 0\n")
    assert "PAUSED" in screen, screen
    term.keys("C-c")
    term.wait_for("ABORTED (exit code 130)")
    assert marked(term.marker) == []
    term.keys("q")
    deadline = time.monotonic() + 30
    while not (second.exists() and second.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert second.read_text().strip() == "130"
    summary = json.loads((run_dir(term) / "summary.json").read_text())
    assert (summary["state"], summary["stop_reason"]) == ("aborted", "aborted by user (SIGINT)")


def test_kill_9_of_the_console_that_started_the_job_stops_it(term):
    run_shell(term, f"{job(term)}; sleep 600")
    term.wait_for("● 4 running")
    consoles = [p for p in psutil.process_iter(["cmdline"])
                if term.marker in (p.info["cmdline"] or []) and "flextui" in (p.info["cmdline"] or [])]
    assert len(consoles) == 1  # the console; the supervisor is `-m flextui.supervisor`
    os.kill(consoles[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while marked(term.marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marked(term.marker) == []
    path = run_dir(term)
    deadline = time.monotonic() + 10
    while not (path / "summary.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["state"] == "aborted" and summary["exit_code"] == 129
    assert summary["stop_reason"] == f"console gone (pid {consoles[0].pid}) without detaching"


def test_an_attached_consoles_terminal_closing_leaves_the_job_running(term):
    detached = term.tmp / "detached"
    run_shell(term, f"{flextui('--detach', '--grace', '3', '--no_local_rank', 'hostfile', 'worker.py', term.marker)}"
                    f" > {detached}; {flextui('attach')}; sleep 600")
    term.wait_for("● 4 running")
    term.close()  # the terminal goes: SIGHUP to the attached console
    time.sleep(2)
    assert len(marked(term.marker)) == 4
    from tests.helpers import run_flextui

    assert run_flextui("stop", run_dir(term).name, cwd=term.tmp).returncode == 0
    assert marked(term.marker) == []
