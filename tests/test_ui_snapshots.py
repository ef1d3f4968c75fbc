"""Snapshots of the main screens in both built-in themes (pytest-textual-snapshot).

The state is fixed (flextui.ui.testing.demo_job: no clocks, pids or run ids that vary)
and the job task is not started, so every run draws the same screen.
Update after an intended change: pytest tests/test_ui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from flextui.ui.app import FlexApp
from flextui.ui.testing import DEMO_NOW, demo_job, finished_demo_job

SIZE = (130, 42)


def app_for(theme: str, finished: bool = False) -> FlexApp:
    job = finished_demo_job() if finished else demo_job()
    return FlexApp(job, theme=theme, clock=lambda: DEMO_NOW, run_job=False, theme_dirs=[])


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_main_screen(snap_compare, theme):
    assert snap_compare(app_for(theme), terminal_size=SIZE)


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_first_failure_traceback(snap_compare, theme):
    assert snap_compare(app_for(theme), press=["x"], terminal_size=SIZE)


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_summary(snap_compare, theme):
    assert snap_compare(app_for(theme, finished=True), press=["s"], terminal_size=SIZE)


def test_filtered_all_ranks_view(snap_compare):
    async def filter_checkpoints(pilot):
        await pilot.press("ampersand")
        pilot.app.prompt.value = "checkpoint"
        await pilot.press("enter")

    assert snap_compare(app_for("light"), run_before=filter_checkpoints, terminal_size=SIZE)


def test_help(snap_compare):
    assert snap_compare(app_for("dark"), press=["question_mark"], terminal_size=SIZE)
