"""Snapshots of the main screens in both built-in themes (pytest-textual-snapshot).

The state is fixed (flextui.ui.testing.demo_job: no clocks, pids or run ids that vary)
and the job task is not started, so every run draws the same screen.
Update after an intended change: pytest tests/test_ui_snapshots.py --snapshot-update
"""

from __future__ import annotations

import pytest

from flextui.ui.app import FlexApp
from flextui.ui.testing import DEMO_NOW, FakeJob, demo_job, finished_demo_job

SIZE = (130, 42)


async def toasts_settled(pilot) -> None:
    """No toasts in snapshots: they come a moment after notify() and go after their timeout
    (sooner than a busy machine takes a screenshot), so a screenshot would catch either."""
    from textual.widgets._toast import Toast

    app = pilot.app
    for _ in range(200):  # those notified so far are on screen (or expired)
        await pilot.pause(0.02)
        if len(app.screen.query(Toast)) == len(app._notifications):
            break
    app.clear_notifications()
    for _ in range(200):
        await pilot.pause(0.02)
        if not app.screen.query(Toast):
            return


def steps(*keys: str, then=None):
    """run_before for snap_compare: settle, press `keys`, run `then`, settle again."""
    async def run(pilot) -> None:
        await toasts_settled(pilot)
        if keys:
            await pilot.press(*keys)
        if then is not None:
            await then(pilot)
        await toasts_settled(pilot)

    return run


def app_for(theme: str, finished: bool = False) -> FlexApp:
    job = finished_demo_job() if finished else demo_job()
    return FlexApp(job, theme=theme, clock=lambda: DEMO_NOW, run_job=False, theme_dirs=[])


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_main_screen(snap_compare, theme):
    assert snap_compare(app_for(theme), run_before=steps(), terminal_size=SIZE)


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_first_failure_traceback(snap_compare, theme):
    assert snap_compare(app_for(theme), run_before=steps("x"), terminal_size=SIZE)


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_summary(snap_compare, theme):
    assert snap_compare(app_for(theme, finished=True), run_before=steps("s"), terminal_size=SIZE)


def test_filtered_all_ranks_view(snap_compare):
    async def filter_checkpoints(pilot):
        await pilot.press("ampersand")
        pilot.app.prompt.value = "checkpoint"
        await pilot.press("enter")

    assert snap_compare(app_for("light"), run_before=steps(then=filter_checkpoints), terminal_size=SIZE)


def test_help(snap_compare):
    assert snap_compare(app_for("dark"), run_before=steps("question_mark"), terminal_size=SIZE)


def big_app(nodes: int = 64, per_node: int = 8) -> FlexApp:
    """64 nodes x 8 (issue 13): rank 137 failed first, 200 killed, every 7th stopped
    (8 nodes: ranks 21 and 40)."""
    job = FakeJob({f"node{i:02d}": per_node for i in range(nodes)}, run_forever=False)
    failed, killed = (137, 200) if nodes * per_node > 200 else (21, 40)
    job.start_all()
    for r in range(nodes * per_node):
        job.out(r, f"2025-01-01 12:00:00,{r % 1000:03d} [rank{r}] INFO trainer: config lr=0.1\n"
                   f"[rank{r}] step 1 loss {r / 1000:.3f}\n")
    job.out(failed, "Traceback (most recent call last):\nRuntimeError: CUDA error: out of memory\n")
    job.exit(failed, code=1, t=job.t0 + 5)
    job.exit(killed, code=None, signal=9, t=job.t0 + 6)
    for r in range(0, nodes * per_node, 7):
        if r not in (failed, killed):
            job.exit(r, code=None, signal=15, t=job.t0 + 7, stopped=True)
    return FlexApp(job, theme="dark", clock=lambda: job.t0 + 11, run_job=False, theme_dirs=[])


def test_512_ranks_sorted_by_status(snap_compare):
    assert snap_compare(big_app(), run_before=steps("o"), terminal_size=(160, 48))


def test_64_ranks_grouped_by_node_at_80x24(snap_compare):
    assert snap_compare(big_app(8), run_before=steps("o", "b", "down", "down"),
                        terminal_size=(80, 24))


def test_kill_rank_asks_in_a_dialog_with_buttons(snap_compare):
    assert snap_compare(app_for("dark"), run_before=steps("down", "ctrl+k"), terminal_size=SIZE)


@pytest.mark.slow
def test_picker_lists_matching_ranks_and_hosts(snap_compare):
    async def pick(pilot):
        await pilot.press("colon")
        await pilot.pause(0.3)
        await pilot.press(*"node01")
        await pilot.pause(0.5)
        from textual.widgets import Input

        for field in pilot.app.screen.query(Input):  # a blinking cursor draws differently each time
            field.cursor_blink = False
            field._cursor_visible = True
        await pilot.pause(0.1)

    assert snap_compare(big_app(8), run_before=steps(then=pick), terminal_size=SIZE)
