"""The footer (KeyBar) is one line: a change of keys repaints it, nothing is mounted
(Textual's Footer re-mounts a widget per key on each focus change and each closed prompt,
dialog or picker: the largest part of closing the picker at 512 ranks). A click on a key
presses it; a key that goes away is gone from it."""

from __future__ import annotations

import asyncio

from flextui.ui.app import FlexApp, stop_job_of
from flextui.ui.testing import FakeJob
from flextui.ui.widgets import KeyBar


async def until(pilot, condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await pilot.pause(0.02)


def shown(bar: KeyBar) -> str:
    return "".join(segment.text for segment in bar.render_line(0))


async def test_the_footer_is_one_line_that_follows_the_keys():
    job = FakeJob({"node-a": 4})
    job.start_all()
    app = FlexApp(job, theme_dirs=[], clock=lambda: job.t0 + 5)
    async with app.run_test(size=(160, 48)) as pilot:
        bar = app.query_one(KeyBar)
        await until(pilot, lambda: "? Help" in shown(bar))
        assert "^c Abort job" in shown(bar) and ": Go to" in shown(bar)
        assert not bar.children
        await pilot.press("F")  # a prompt: its typing keys hide the app's letters
        await until(pilot, lambda: app.focused is app.prompt)
        await until(pilot, lambda: "F Filter ranks" not in shown(bar))
        assert "^c Abort job" in shown(bar)
        await pilot.press("escape")
        await until(pilot, lambda: "F Filter ranks" in shown(bar))
        # hovering a key marks it and shows its tooltip
        region = bar.region_of("question_mark")
        await pilot.hover(KeyBar, offset=(region.x - bar.region.x + 1, 0))
        await until(pilot, lambda: bar._hover == "question_mark")
        assert bar.tooltip == "Help"
        # a click on a key presses it
        await pilot.click(KeyBar, offset=(region.x - bar.region.x + 1, 0))
        await until(pilot, lambda: app.screen is not app.screen_stack[0])
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0])
        # a key that goes away is gone from the footer
        app.check_action = lambda action, parameters: action != "help"
        app.refresh_bindings()
        await until(pilot, lambda: "? Help" not in shown(bar))
        assert not bar.children
        job.finish()
        app.exit()
        await stop_job_of(app)
