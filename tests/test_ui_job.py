"""The console driving REAL local jobs (node launcher + worker processes, no torch).

Every worker carries a unique marker in its argv, so "no process left behind" is a
check over every process on the machine, not just our children.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid

import psutil
import pytest

from flextui.job import Job, JobConfig
from flextui.model import JobState, RankStatus
from flextui.transport.local import LocalBackend
from flextui.ui.app import FlexApp, stop_job_of
from flextui.ui.screens import ConfirmScreen, SummaryScreen
from flextui.world import Command, World

SIZE = (120, 40)

WORKER = r'''
import os, signal, sys, time
rank = int(os.environ["RANK"])
mode, fail_rank = sys.argv[1], int(sys.argv[2])
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, lambda *_: print(f"rank {rank} ignores SIGTERM", flush=True))
print(f"rank {rank} of {os.environ['WORLD_SIZE']} up", flush=True)
if mode == "quick":
    for i in range(5):
        print(f"rank {rank} line {i}", flush=True)
    sys.exit(0)
if mode == "progress":
    for pct in range(0, 60, 10):
        sys.stderr.write(f"\rtraining {pct}%")
        sys.stderr.flush()
        time.sleep(0.05)
    time.sleep(30)
if mode == "fail":
    time.sleep(0.3)
    if rank == fail_rank:
        try:
            raise RuntimeError(f"rank {rank} hit a simulated fault")
        except RuntimeError:
            import traceback
            traceback.print_exc()
        sys.exit(3)
if mode == "long":  # a long log, then live lines
    print(f"rank {rank} needle early", flush=True)
    sys.stdout.write("".join(f"rank {rank} step {i}\n" for i in range(30000)))
    sys.stdout.flush()
while True:  # run until stopped
    print(f"rank {rank} tick", flush=True)
    time.sleep(0.1)
'''


def marked(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or ()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.fixture
def local_job(tmp_path):
    """make(mode, ranks=4, fail_rank=-1, grace=3.0) -> a preflighted Job on localhost."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    marker = f"flextui-ui-test-{uuid.uuid4().hex[:10]}"
    jobs = []

    async def make(mode: str, ranks: int = 4, fail_rank: int = -1, grace: float = 3.0) -> Job:
        world = World.from_slots({"localhost": list(range(ranks))})
        command = Command(script=str(script), args=(mode, str(fail_rank), marker),
                          python=sys.executable, no_local_rank=True)
        config = JobConfig(world=world, command=command, log_root=str(tmp_path / "runs"),
                           grace=grace, cwd=str(tmp_path))
        job = Job(config, LocalBackend())
        await job.preflight()
        jobs.append(job)
        return job

    make.marker = marker
    yield make
    leftovers = marked(marker)
    for proc in leftovers:
        proc.kill()
    assert not leftovers, f"processes left behind: {[p.pid for p in leftovers]}"


async def wait_until(pilot, condition, timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)


def bar(app) -> str:
    return "\n".join(t.plain for t in app.job_bar.lines)


def table_rows(app) -> list[str]:
    return [app.table.render_line(y).text for y in range(len(app.model.ranks))]


@pytest.mark.slow
async def test_tabs_statuses_and_exit_codes_of_a_real_job(local_job):
    job = await local_job("quick", ranks=4)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause(0.05)
        assert app.tabs.keys == ["all", "r0", "r1", "r2", "r3"]
        await wait_until(pilot, lambda: app.job_done, what="the job to end")
        await pilot.pause(0.2)
        assert job.model.state is JobState.SUCCEEDED
        assert all("exited 0" in row for row in table_rows(app))
        assert "SUCCEEDED (exit code 0)" in bar(app)
        assert isinstance(app.screen, SummaryScreen)
        await pilot.press("escape", "2")
        assert "rank 2 line 4" in "\n".join(app.log_view.visible_text())
        await pilot.press("q")
        await pilot.pause(0.1)
    assert app.return_value == 0
    await stop_job_of(app)


@pytest.mark.slow
async def test_failing_rank_is_flagged_first_and_x_jumps_to_its_traceback(local_job):
    job = await local_job("fail", ranks=4, fail_rank=2)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.job_done, what="the job to end")
        await pilot.pause(0.2)
        model = job.model
        assert model.first_failure is model.ranks[2] and model.exit_code == 3
        assert "first failure: rank 2 on localhost, exit 3" in bar(app)
        assert table_rows(app)[2].startswith("▶") and "failed 3" in table_rows(app)[2]
        assert all(r.status is not RankStatus.RUNNING for r in model.ranks)
        await pilot.press("x")  # works from the summary screen too
        view = app.log_view
        assert app.current_tab == "r2" and view.current_line() == "Traceback (most recent call last):"
        assert any("RuntimeError: rank 2 hit a simulated fault" in line for line in view.visible_text())
        await pilot.press("q")
        await pilot.pause(0.1)
    assert app.return_value == 3
    await stop_job_of(app)


async def test_ctrl_c_stops_everything_and_leaves_no_process(local_job):
    job = await local_job("forever", ranks=4)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: job.model.state is JobState.RUNNING
                         and all(r.line_count for r in job.model.ranks), what="every rank running")
        assert len(marked(local_job.marker)) >= 4
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: app.job_done, timeout=10, what="the job to stop")
        assert job.model.state is JobState.ABORTED and job.model.exit_code == 130
        assert marked(local_job.marker) == []
        await pilot.pause(0.2)
        assert "ABORTED (exit code 130)" in bar(app)
    await stop_job_of(app)


async def test_second_ctrl_c_kills_ranks_that_ignore_sigterm(local_job):
    job = await local_job("ignore-term", ranks=2, grace=30.0)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: all(r.line_count for r in job.model.ranks), what="ranks up")
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: "SIGKILL in" in bar(app), what="the countdown")
        await wait_until(pilot, lambda: all(any("ignores SIGTERM" in line for line in r.tail)
                                            for r in job.model.ranks),
                         what="SIGTERM to reach the workers")
        assert not app.job_done
        started = time.monotonic()
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: app.job_done, timeout=10, what="the kill")
        assert time.monotonic() - started < 5, "the second Ctrl+C must not wait for the grace"
        assert marked(local_job.marker) == []
    await stop_job_of(app)


async def test_q_on_a_running_job_stops_it_and_waits(local_job):
    job = await local_job("forever", ranks=3)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: all(r.line_count for r in job.model.ranks), what="ranks up")
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await wait_until(pilot, lambda: not app.is_running, timeout=10, what="the app to quit")
    assert job.finished and app.return_value == 130
    assert marked(local_job.marker) == []
    await asyncio.wait_for(stop_job_of(app), 5)
    await asyncio.sleep(0.1)  # let the closed pipes' callbacks run before the loop closes


@pytest.mark.slow
async def test_stop_one_rank_from_the_table(local_job):
    job = await local_job("forever", ranks=2)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: all(r.line_count for r in job.model.ranks), what="ranks up")
        await pilot.press("down", "k", "y")
        await wait_until(pilot, lambda: job.model.ranks[1].status.finished, timeout=10,
                         what="rank 1 to stop")
        assert job.model.ranks[1].stopped
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: app.job_done, timeout=10, what="the job to stop")
    await stop_job_of(app)


@pytest.mark.slow
async def test_a_progress_bar_shows_as_one_live_line_while_it_is_drawn(local_job):
    job = await local_job("progress", ranks=2)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: all(r.live == "training 50%" for r in job.model.ranks),
                         what="the bars to reach 50%")
        await pilot.pause(0.2)
        assert all(row.rstrip().endswith("training 50%") for row in table_rows(app))
        await pilot.press("1")
        await pilot.pause(0.1)
        rows = [line for line in app.log_view.visible_text() if line]
        assert rows == ["rank 1 of 2 up", "training 50%"]
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: app.job_done, timeout=10, what="the job to stop")
    await stop_job_of(app)


@pytest.mark.slow
async def test_kill_rank_button_sigkills_one_rank_now(local_job):
    """Kill rank (issue 13): SIGKILL at once, even for a rank that ignores SIGTERM; the
    other ranks go on, and it counts as stopped by the user, not as a failure."""
    job = await local_job("ignore-term", ranks=2, grace=60.0)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: all(r.line_count for r in job.model.ranks), what="ranks up")
        await pilot.press("down")
        await wait_until(pilot, lambda: not app.panel.query_one("#kill-rank").disabled, what="the button")
        await pilot.click("#kill-rank")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen.query("#yes"),
                         what="the question")
        started = time.monotonic()
        await pilot.click("#yes")
        await wait_until(pilot, lambda: job.model.ranks[1].status.finished, timeout=30,
                         what="rank 1 to die")
        assert time.monotonic() - started < 30, "no grace (60 s) for a kill"
        rank = job.model.ranks[1]
        assert rank.status is RankStatus.KILLED and rank.signal == 9 and rank.stopped
        assert job.model.first_failure is None and job.model.ranks[0].status is RankStatus.RUNNING
        assert not any("ignores SIGTERM" in line for line in rank.tail)  # never asked nicely
        await pilot.press("ctrl+c", "ctrl+c")
        await wait_until(pilot, lambda: app.job_done, timeout=30, what="the job to stop")
    await stop_job_of(app)


@pytest.mark.slow
async def test_a_live_ranks_whole_log_file_is_shown_and_searched(local_job):
    """Beyond the 5,000 lines kept in memory: `g` shows the rank's first line and search
    finds an early one, read from its log file in the run directory, while it runs."""
    job = await local_job("long", ranks=2)
    app = FlexApp(job, theme_dirs=[])
    async with app.run_test(size=SIZE) as pilot:
        rank = job.model.ranks[1]
        await wait_until(pilot, lambda: rank.line_count > 30003, timeout=60, what="30,000 lines")
        assert job.log_file(rank).endswith("/rank-1.log")
        await pilot.press("1")
        view = app.log_view
        view.focus()
        await pilot.press("g")
        await wait_until(pilot, lambda: view.visible_text()[0] == "rank 1 of 2 up", what="line 1 on top")
        await pilot.press("G", "slash")
        app.prompt.value = "needle"
        await pilot.press("enter")
        await wait_until(pilot, lambda: view.cursor == 1, what="the early line found")
        assert view.current_line() == "rank 1 needle early" and not view.follow
        ticks = rank.line_count
        await wait_until(pilot, lambda: rank.line_count > ticks + 3, what="live lines")
        await pilot.pause(0.2)
        assert view.visible_text()[0] == "rank 1 of 2 up"  # paused: stays where it was
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: app.job_done, what="the job to stop")
        await pilot.press("q")
    await stop_job_of(app)
