"""Issue 12 as a user sees it in a real terminal (tmux): a hung job is flagged "stalled?",
the job bar says every rank is silent, `d` shows every rank's stack grouped with the odd
one out first; Ctrl+C still stops everything.

The hang is plain Python (no torch: the tmux test is about the screen; the gloo hang is
grouped in tests/test_diagnosis_e2e.py), py-spy runs for real on every rank.
"""

from __future__ import annotations

import sys

import pytest

from tests.test_ui_tmux import marked_terminal

pytestmark = pytest.mark.slow

HUNG = r'''
import os, sys, time
rank = int(os.environ["RANK"])

def load_batch():  # the odd one out: its loader never delivers
    while True:
        time.sleep(1)

def wait_for_peers():  # the others: waiting for it in a collective
    while True:
        time.sleep(1)

print(f"rank {rank} step 1", flush=True)
load_batch() if rank == 2 else wait_for_peers()
'''


@pytest.fixture
def terminal(tmp_path):
    with marked_terminal(tmp_path, {"hostfile": "localhost slots=4\n", "hung.py": HUNG},
                         width=160, height=48) as term:
        yield term


def test_a_hung_job_is_flagged_and_d_shows_its_ranks_grouped(terminal):
    terminal.start([sys.executable, "-m", "flextui", "--grace", "3", "--stall_after", "3", "--no_local_rank",
                    "hostfile", "hung.py", terminal.marker])
    terminal.wait_for("SILENT", timeout=60)  # the table at 160 columns
    screen = terminal.wait_for("a collective hang?", timeout=60)
    assert "⚠ all 4 ranks silent > 3s: a collective hang? (d: stacks)" in screen
    assert screen.count("stalled?") >= 4 and "SILENT" in screen and "CPU" in screen and "MEM" in screen
    terminal.keys("d")
    screen = terminal.wait_for("stacks of 4 ranks: 2 groups", timeout=60)
    lines = [line.strip(" │") for line in screen.splitlines()]
    assert "rank 2 (1): load_batch (hung.py:7) ← <module> (hung.py:14)" in lines, screen
    assert "ranks 0-1,3 (3): wait_for_peers (hung.py:11) ← <module> (hung.py:14)" in lines, screen
    assert lines.index("rank 2 (1): load_batch (hung.py:7) ← <module> (hung.py:14)") < lines.index(
        "ranks 0-1,3 (3): wait_for_peers (hung.py:11) ← <module> (hung.py:14)")  # the odd one first
    assert ">> load_batch (hung.py:7)" in lines and "Traceback" not in screen
    dumps = list(terminal.tmp.glob("flextui-runs/*/stacks-*.txt"))
    assert len(dumps) == 1 and "rank 2 (1): load_batch" in dumps[0].read_text()
    terminal.keys("Escape")
    terminal.keys("C-c")
    terminal.wait_for("ABORTED (exit code 130)", timeout=30)
    terminal.keys("q")
    assert terminal.exit_code() == 130
