"""The footer is re-mounted only when the keys it shows change (Textual's re-mounts every
key on each focus change and each closed dialog or picker: the largest part of closing the
picker at 512 ranks). A focused prompt does change them (its typing keys hide the app's)."""

from __future__ import annotations

import asyncio

from textual.widgets._footer import FooterKey

from flextui.ui.app import FlexApp, stop_job_of
from flextui.ui.testing import FakeJob


async def until(pilot, condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await pilot.pause(0.02)


async def test_the_footer_is_remounted_only_when_its_keys_change():
    job = FakeJob({"node-a": 4})
    job.start_all()
    app = FlexApp(job, theme_dirs=[], clock=lambda: job.t0 + 5)
    async with app.run_test(size=(160, 48)) as pilot:
        await until(pilot, lambda: bool(app.query(FooterKey)))
        keys = list(app.query(FooterKey))
        assert any(k.key == "question_mark" for k in keys)
        await pilot.press("t")  # focus: table -> log -> table
        await pilot.press("t")
        await pilot.press("colon")  # the picker, closed again
        await pilot.pause(0.3)
        await pilot.press("escape")
        await until(pilot, lambda: app.screen is app.screen_stack[0])
        await pilot.pause(0.3)
        assert list(app.query(FooterKey)) == keys  # the same widgets: not re-mounted
        # a key that goes away is gone from the footer
        app.check_action = lambda action, parameters: action != "help"
        app.refresh_bindings()
        await until(pilot, lambda: not any(k.key == "question_mark" for k in app.query(FooterKey)))
        job.finish()
        app.exit()
        await stop_job_of(app)
