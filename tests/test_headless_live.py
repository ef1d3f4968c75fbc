"""Headless on a terminal (issue 13 defect 7): a `\\r` progress bar shows live as one status
line under the output, as pip and tqdm do; off a terminal the output is unchanged."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.helpers import free_port

WORKER = r'''
import sys, time
print("starting", flush=True)
for pct in range(0, 101, 10):
    sys.stdout.write(f"\rtraining {pct}%")
    sys.stdout.flush()
    time.sleep(0.3)
print(" done", flush=True)
'''


def command(tmp_path) -> list[str]:
    (tmp_path / "hostfile").write_text("localhost slots=1\n")
    (tmp_path / "progress.py").write_text(WORKER)
    return [sys.executable, "-m", "flextui", "--headless", "--no_local_rank", "--log-dir",
            str(tmp_path / "runs"), "--master_port", str(free_port()), "hostfile", "progress.py"]


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
def test_progress_shows_live_on_a_terminal(tmp_path):
    master, slave = pty.openpty()
    proc = subprocess.Popen(command(tmp_path), cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    seen, live_before_end = b"", False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the pty closed: flextui exited
                break
            if not chunk:
                break
            seen += chunk
            # the status line is drawn while the rank is still at work (no "done" yet)
            if b"\r\x1b[K[0|localhost] training" in seen and b"done" not in seen:
                live_before_end = True
    os.close(master)
    assert proc.wait(30) == 0
    text = seen.decode(errors="replace")
    assert live_before_end, text
    assert "[0|localhost] training 100% done" in text  # the finished line, printed once
    statuses = [part for part in text.split("\r\x1b[K") if part.startswith("[0|localhost] training")]
    assert len(statuses) >= 3  # it moved as the bar did


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
def test_progress_is_not_drawn_into_a_pipe(tmp_path):
    result = subprocess.run(command(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "\x1b[K" not in result.stdout and "\r" not in result.stdout
    assert "[0|localhost] training 100% done" in result.stdout
