"""Pilot tests of the console's behaviour on a FakeJob (no processes; fast).

The same app against real local jobs is in test_ui_job.py.
"""

from __future__ import annotations

import asyncio

import pytest

from flextui.ui.app import FlexApp, stop_job_of
from flextui.ui.logview import RankSource
from flextui.ui.screens import ConfirmScreen, HelpScreen, SummaryScreen
from flextui.ui.testing import DEMO_NOW, FakeJob, demo_job

SIZE = (120, 40)


def make_app(job, **kw) -> FlexApp:
    kw.setdefault("theme_dirs", [])
    kw.setdefault("clock", lambda: job.t0 + 5)
    return FlexApp(job, **kw)


async def settle(pilot, seconds: float = 0.15) -> None:
    await pilot.pause(seconds)


async def until(pilot, condition, timeout: float = 10.0) -> None:
    """Wait for what the app does after a message (slow when the machine is busy)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await pilot.pause(0.02)


def rendered(renderable, width: int = 76) -> str:
    """A Rich renderable (a Static's content) as plain text."""
    import io

    from rich.console import Console

    console = Console(width=width, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


def asking(app) -> bool:
    return isinstance(app.screen, ConfirmScreen) and bool(app.screen.query("#yes"))


async def prompt(pilot, key: str, text: str) -> None:
    """Open the search (slash) or filter (ampersand) prompt and submit `text`."""
    await pilot.press(key)
    pilot.app.prompt.value = text
    await pilot.press("enter")


def screen_text(app) -> str:
    return "\n".join(app.log_view.visible_text())


def bar_text(app) -> str:
    return "\n".join(t.plain for t in app.job_bar.lines)


async def finish(app, pilot) -> None:
    app.job.finish()
    await settle(pilot)
    app.exit()
    await stop_job_of(app)


@pytest.mark.slow
async def test_tabs_for_every_rank_and_number_keys():
    job = FakeJob({"a": 8, "b": 8})
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert len(app.tabs.keys) == 17 and app.current_tab == "all"
        await pilot.press("3")
        assert app.current_tab == "r3" and isinstance(app.log_view.source, RankSource)
        await pilot.press("1", "2")  # quickly: rank 12
        assert app.current_tab == "r12" and app.table.selected_rank().rank == 12
        await pilot.press("tab")
        assert app.current_tab == "r13"
        await pilot.press("shift+tab", "shift+tab")
        assert app.current_tab == "r11"
        await pilot.press("a")
        assert app.current_tab == "all"
        await pilot.press("left_square_bracket")
        assert app.current_tab == "r15"
        await finish(app, pilot)


@pytest.mark.slow
async def test_selecting_a_row_opens_its_tab():
    job = FakeJob()
    job.start_all()
    job.out(2, "hello from two\n")
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "enter")
        assert app.current_tab == "r2" and app.focused is app.log_view
        assert "hello from two" in screen_text(app)
        await pilot.press("t")
        assert app.focused is app.table
        await pilot.click("#ranks", offset=(5, 1))
        assert app.current_tab == "r1"
        await finish(app, pilot)


@pytest.mark.slow
async def test_follow_pauses_on_scroll_up_and_keeps_its_place():
    job = FakeJob(tail_lines=300)
    job.start_all()
    job.out(0, "".join(f"line {i}\n" for i in range(200)))
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        await settle(pilot)
        view = app.log_view
        assert view.follow and "line 199" in screen_text(app)
        await pilot.press("t")  # focus the log
        assert app.focused is view
        await pilot.press("up", "up", "up")
        assert not view.follow
        top = view.visible_text()[0]
        job.out(0, "".join(f"line {i}\n" for i in range(200, 400)))  # the ring drops 100
        await settle(pilot)
        assert view.visible_text()[0] == top, "a paused view stays on the same text"
        assert "PAUSED" in app.status_line.lines[0].plain
        await pilot.press("f")
        assert view.follow and "line 399" in screen_text(app)
        assert "FOLLOWING" in app.status_line.lines[0].plain
        await pilot.press("home")
        assert not view.follow and view.visible_text()[0] == "line 100"  # oldest kept
        await pilot.press("end")
        assert view.follow
        await finish(app, pilot)


@pytest.mark.slow
async def test_search_next_previous_and_highlight():
    job = FakeJob()
    job.start_all()
    job.out(1, "".join(f"step {i} {'needle' if i % 50 == 7 else 'hay'}\n" for i in range(300)))
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("1")
        await settle(pilot)
        view = app.log_view
        await prompt(pilot, "slash", "needle")
        assert view.search is not None and view.current_line() is not None
        first = view.cursor
        assert "needle" in view.current_line() and not view.follow
        await pilot.press("n")
        assert view.cursor > first and "needle" in view.current_line()
        await pilot.press("N")
        assert view.cursor == first
        # the match is drawn with the theme's match style
        y = view.layout_.item_row(view.layout_.abs_to_item(first)) - int(view.scroll_y)
        strip = view.render_line(y)
        styles = [seg.style for seg in strip if "needle" in seg.text]
        assert styles and styles[0].bgcolor == app.palette.match.bgcolor
        await prompt(pilot, "slash", "nothing-like-this")
        assert view.cursor == first  # not found: stays
        await finish(app, pilot)


@pytest.mark.slow
async def test_filter_shows_only_matching_lines_and_keeps_up():
    job = FakeJob()
    job.start_all()
    job.out(0, "".join(f"step {i} {'loss' if i % 3 == 0 else 'other'}\n" for i in range(90)))
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        await prompt(pilot, "ampersand", "loss")
        await settle(pilot)
        view = app.log_view
        shown = [line for line in view.visible_text() if line]
        assert view.layout_.count == 30 and shown and all("loss" in line for line in shown)
        job.out(0, "new loss line\nnew other line\n")
        await settle(pilot)
        assert view.layout_.count == 31 and "new loss line" in screen_text(app)
        assert "filter “loss” (31 lines)" in app.status_line.lines[0].plain
        await prompt(pilot, "ampersand", "")  # empty: filter off
        assert view.filter is None and view.layout_.count == 92
        await finish(app, pilot)


async def test_wrap_toggle():
    job = FakeJob()
    job.start_all()
    long = "".join(f"{i:04d}" for i in range(70))  # 280 characters, every one accounted for
    job.out(0, "".join(f"filler {i}\n" for i in range(100)))  # a scrollbar takes 2 columns
    job.out(0, "short\n" + long + "END\nafter\n")
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        await settle(pilot)
        view = app.log_view
        assert view.layout_.height == 103 and view.virtual_size.width >= 283
        await pilot.press("w")
        assert view.wrap and view.layout_.height == 105  # the long line takes 3 rows
        text = screen_text(app)
        assert "END" in text and "after" in text
        rows = view.visible_text()
        start = next(i for i, row in enumerate(rows) if row.startswith("0000"))
        assert "".join(rows[start:start + 3]) == long + "END"
        await pilot.press("w")
        assert not view.wrap and view.layout_.height == 103
        await finish(app, pilot)


async def test_error_jump_and_first_failure_jump():
    job = demo_job()
    app = make_app(job, clock=lambda: DEMO_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert "first failure: rank 5 on node-b, exit 1" in bar_text(app)
        assert "SIGKILL in 8s" in bar_text(app)
        assert app._tab_label("r5").plain == "▶5"
        await pilot.press("x")
        view = app.log_view
        assert app.current_tab == "r5" and view.current_line() == "Traceback (most recent call last):"
        await pilot.press("3", "e")
        assert app.current_tab == "r3" and "NCCL watchdog" not in (view.current_line() or "")
        await pilot.press("a", "e")
        assert "Traceback" in view.current_line()
        await pilot.press("e")
        assert "RuntimeError" in view.current_line()
        await finish(app, pilot)


async def test_progress_bars_show_as_one_live_line_and_odd_bytes_are_drawn_safely():
    job = FakeJob()
    job.start_all()
    job.out(0, "start\n\x1b[31mred\x1b[0m\tand \x07bell \udcff\n")
    for pct in range(0, 101, 10):
        job.out(0, f"\rtraining {pct}%")
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        await settle(pilot)
        rows = [line for line in app.log_view.visible_text() if line]
        assert rows == ["start", "red     and \ufffdbell \ufffd", "training 100%"]
        assert "training 100%" in app.table.render_line(0).text
        await finish(app, pilot)


async def test_all_ranks_view_collapses_identical_lines():
    job = FakeJob({"localhost": 8})
    job.start_all()
    for rank in range(8):
        job.out(rank, "loss 1.0\n")
    job.out(3, "only three\n")
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        rows = [line for line in app.log_view.visible_text() if line]
        assert rows == ["[0-7] loss 1.0", "[3|localhost] only three"]
        await finish(app, pilot)


@pytest.mark.slow
async def test_stop_rank_node_and_kill_ask_first():
    job = FakeJob({"a": 2, "b": 2})
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "down", "k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert job.calls == []
        await pilot.press("k", "y")
        assert job.calls == [("stop_rank", 3)]
        await pilot.press("K", "y")
        assert job.calls[-1] == ("stop_node", 1)
        await pilot.press("exclamation_mark", "y")
        assert job.calls[-1] == ("kill",)
        await settle(pilot)
        assert app.job_done and isinstance(app.screen, SummaryScreen)
        await pilot.press("escape")
        await pilot.press("k")
        assert not isinstance(app.screen, ConfirmScreen)  # nothing runs any more
        app.exit()
        await stop_job_of(app)


@pytest.mark.slow
async def test_ctrl_c_aborts_then_kills_then_quits():
    job = FakeJob(finish_on_stop=False)
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+c")
        assert job.calls[:2] == [("abort", 2), ("stop", "aborted by user (SIGINT)")]
        assert "stopping — SIGKILL in" in bar_text(app)
        await pilot.press("ctrl+c")
        assert ("kill",) in job.calls
        await settle(pilot)
        assert app.job_done and job.model.exit_code == 130
        await pilot.press("ctrl+c")
        await settle(pilot)
    assert app.return_value == 130
    await stop_job_of(app)


@pytest.mark.slow
async def test_quit_asks_while_running_and_stops_the_job_first():
    job = FakeJob(finish_on_stop=False)
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("q")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert app.is_running and job.calls == []
        await pilot.press("q", "y")
        assert job.calls == [("stop", "quit by user")] and app.is_running
        assert "quitting when the job has stopped" in bar_text(app)
        job.end_all(signal=15, stopped=True)  # the ranks go
        await settle(pilot, 0.3)
        assert not app.is_running
    assert app.return_value == 130
    await stop_job_of(app)


async def test_quit_when_finished_needs_no_confirmation():
    job = FakeJob(run_forever=False)
    job.start_all()
    job.end_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert isinstance(app.screen, SummaryScreen)
        assert "job succeeded (exit code 0)" in app.screen.query_one("#verdict").render().plain
        await pilot.press("q")
        await settle(pilot)
    assert app.return_value == 0


async def test_launch_error_is_shown_and_raised_after_exit():
    job = FakeJob(launch_error="node-b: ssh: connect refused")
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.launch_error == "node-b: ssh: connect refused"
        assert "error: node-b: ssh: connect refused" in bar_text(app)
        await pilot.press("escape", "q")
        await settle(pilot)
    assert app.job_exception is not None and job.model.exit_code != 0


async def test_help_lists_every_binding():
    job = FakeJob()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        listed = " ".join(keys for _, rows in app.help_sections() for keys, _ in rows)
        from flextui.ui.app import _key_display
        from flextui.ui.logview import LogView
        from flextui.ui.widgets import RankTable
        for binding in [*FlexApp.BINDINGS, *RankTable.BINDINGS, *LogView.BINDINGS]:
            if binding.action == "detach":
                continue  # FakeJob runs in the console's process: nothing to detach from (below)
            for key in binding.key.split(","):
                if not key.isdigit():
                    assert _key_display(key) in listed.split(), key
        assert "0-9" in listed
        assert "D" not in listed.split()
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)
        await finish(app, pilot)


async def test_detach_is_offered_only_for_a_job_that_can_detach():
    class DetachableJob(FakeJob):
        detached = False

        def detach(self) -> None:
            self.detached = True

    for job, offered in ((FakeJob(), False), (DetachableJob(), True)):
        app = make_app(job)
        async with app.run_test(size=SIZE) as pilot:
            footer_actions = {b.binding.action for b in app.screen.active_bindings.values()
                              if b.binding.show and b.enabled}
            assert ("detach" in footer_actions) is offered
            listed = " ".join(keys for _, rows in app.help_sections() for keys, _ in rows)
            assert ("D" in listed.split()) is offered
            await finish(app, pilot)


@pytest.mark.slow
async def test_theme_cycles_and_status_colours_follow(tmp_path):
    job = demo_job()
    (tmp_path / "zz-mine.toml").write_text('primary = "#ff00ff"\n[variables]\nstatus-failed = "#00ff00"\n')
    app = make_app(job, theme_dirs=[tmp_path], clock=lambda: DEMO_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        assert app.theme == "dark"
        dark_failed = app.palette.status["failed"]
        await pilot.press("T")
        await settle(pilot)
        assert app.theme == "light" and app.palette.status["failed"] != dark_failed
        await pilot.press("T")
        await settle(pilot)
        assert app.theme == "zz-mine"
        assert app.palette.status["failed"].color.triplet.hex == "#00ff00"
        await pilot.press("T")
        assert app.theme == "dark"
        await finish(app, pilot)


async def test_unknown_theme_is_an_error_before_the_screen():
    from flextui.ui.theming import ThemeError

    with pytest.raises(ThemeError):
        FlexApp(FakeJob(), theme="nope", theme_dirs=[])


@pytest.mark.slow
async def test_command_palette_opens_a_rank():
    job = FakeJob({"localhost": 8})
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("ctrl+p")
        await settle(pilot)
        await pilot.press(*"rank 6")
        await settle(pilot, 0.3)
        await pilot.press("enter")
        await settle(pilot)
        assert app.current_tab == "r6"
        await finish(app, pilot)


async def test_app_crash_path_never_leaves_the_job_running():
    job = FakeJob(finish_on_stop=False)
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        app.exit()  # as if the app ended without the user quitting
    await asyncio.wait_for(stop_job_of(app), 5)
    assert ("kill",) in job.calls and app.job_task.done()


async def test_elastic_slots_outside_the_current_world_show_as_idle():
    from flextui.modes.elastic import ElasticConfig, ElasticJobModel

    job = FakeJob(hosts={"n0": 2, "n1": 2, "n2": 2})
    job.model = ElasticJobModel(job.world, job.run_id, ElasticConfig(min_nodes=2, max_nodes=3))
    job.model.started_at = job.t0
    for node in range(2):  # the round after n2 was lost: two nodes, world size 4
        job.model.apply(node, {
            "ev": "attempt", "seq": 0, "master": "n0:29500", "world_size": 4, "group_rank": node,
            "group_world_size": 2, "restart_count": 1, "t": job.t0,
            "ranks": [{"rank": 2 * node + i, "local_rank": i, "pid": 100 + 2 * node + i} for i in range(2)]})
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        rows = [app.table.render_line(y).text.split() for y in range(6)]
        assert [row[0:2] for row in rows[:4]] == [["0", "n0"], ["1", "n0"], ["2", "n1"], ["3", "n1"]]
        assert [row[0:3] for row in rows[4:]] == [["4", "-", "-"], ["5", "-", "-"]]
        assert all("idle" in row for row in rows[4:])
        await finish(app, pilot)


# -- issue 13: kill buttons, the 512-rank table, the picker, the defects ---------------


def big_job(nodes: int = 64, per_node: int = 8) -> FakeJob:
    """64 nodes x 8: rank 137 failed first, 200 was killed by a signal, 201 was stopped."""
    job = FakeJob({f"node{i}": per_node for i in range(nodes)})
    job.start_all()
    for r in range(nodes * per_node):
        job.out(r, f"[rank{r}] INFO trainer: config lr=0.1\n[rank{r}] step 1 loss {r / 1000:.3f}\n")
    if nodes * per_node > 201:
        job.exit(137, code=3, t=job.t0 + 5)
        job.exit(200, code=None, signal=9, t=job.t0 + 6)
        job.exit(201, code=None, signal=15, t=job.t0 + 7, stopped=True)
    return job


async def click_footer(pilot, key: str) -> None:
    """Click a key in the footer once it is drawn there."""
    from flextui.ui.widgets import KeyBar

    bar = pilot.app.query_one(KeyBar)
    await until(pilot, lambda: bar.region_of(key) is not None)
    region = bar.region_of(key)
    await pilot.click(KeyBar, offset=(region.x - bar.region.x + 1, 0))


@pytest.mark.slow
async def test_confirm_dialog_buttons_are_clickable_and_keyboard_usable():
    job = FakeJob({"a": 2, "b": 2})
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#no")
        await settle(pilot, 0.05)
        assert not isinstance(app.screen, ConfirmScreen) and job.calls == []
        await pilot.press("k")
        await pilot.click("#yes")
        await settle(pilot, 0.05)
        assert job.calls == [("stop_rank", 1)]
        await pilot.press("k", "right", "enter")  # Enter on the focused "Cancel" button
        await settle(pilot, 0.05)
        assert not isinstance(app.screen, ConfirmScreen) and job.calls == [("stop_rank", 1)]
        await pilot.press("k", "enter")  # the confirming button has the focus at first
        await settle(pilot, 0.05)
        assert job.calls[-1] == ("stop_rank", 1)
        await finish(app, pilot)


@pytest.mark.slow
async def test_rank_panel_shows_the_selected_rank_and_its_buttons_act_after_asking():
    job = demo_job()
    app = make_app(job, clock=lambda: DEMO_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for _ in range(5):
            await pilot.press("down")
        info = app.panel.query_one("#rank-info").render()
        text = str(info)
        assert "rank 5" in text and "node-b" in text and "gpu 1" in text and "pid 4005" in text
        assert "failed 1" in text and "last error: RuntimeError: CUDA error" in text
        assert app.panel.query_one("#stop-rank").disabled  # rank 5 is not running
        await pilot.press("up")
        await settle(pilot, 0.05)
        assert not app.panel.query_one("#kill-rank").disabled
        await pilot.click("#kill-rank")
        await settle(pilot, 0.05)
        assert isinstance(app.screen, ConfirmScreen) and "Kill rank 4" in str(
            app.screen.query_one("#yes").label)
        await pilot.click("#yes")
        await pilot.click("#stop-node")
        await settle(pilot, 0.05)
        await pilot.press("y")
        await pilot.click("#stop-rank")
        await settle(pilot, 0.05)
        await pilot.press("escape")
        assert job.calls == [("kill_rank", 4), ("stop_node", 1)]
        await pilot.click("#abort-job")
        await settle(pilot, 0.05)
        assert isinstance(app.screen, ConfirmScreen) and job.calls[-1] == ("stop_node", 1)
        await pilot.press("y")
        await until(pilot, lambda: any(call[0] == "abort" for call in job.calls))
        await finish(app, pilot)


@pytest.mark.slow
async def test_a_click_on_the_footers_abort_asks_but_ctrl_c_does_not():
    job = FakeJob(finish_on_stop=False)
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await click_footer(pilot, "ctrl+c")
        await until(pilot, lambda: asking(app))
        assert job.calls == []
        await pilot.press("n")
        await until(pilot, lambda: not asking(app))
        assert job.calls == [] and app.model.stop_started_at is None
        await click_footer(pilot, "ctrl+c")
        await until(pilot, lambda: asking(app))
        await pilot.click("#yes")
        await until(pilot, lambda: any(call[0] == "abort" for call in job.calls))
        assert app.model.stop_started_at is not None
        await pilot.press("ctrl+c")  # the key: at once, no question (now: kill)
        assert ("kill",) in job.calls and not isinstance(app.screen, ConfirmScreen)
        await finish(app, pilot)


def first_rows(app, n: int) -> list[list[str]]:
    return [app.table.render_line(y).text.split() for y in range(n)]


@pytest.mark.slow
async def test_512_ranks_sort_filter_and_problem_key():
    job = big_job()
    app = make_app(job)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        assert len(app.table.rows) == 512 and first_rows(app, 1)[0][0] == "0"
        await pilot.press("o")  # by status: the first failure, the killed rank, then running ones
        assert app.table.order.sort == "status"
        assert [row[0] for row in first_rows(app, 3)] == ["▶", "200", "0"]
        assert first_rows(app, 1)[0][1] == "137" and app.table.selected_rank().rank == 137
        header = app.rank_header.render_line(0).text
        assert "STATUS▲" in header
        await pilot.press("O")
        assert app.table.ranks_in_order[0] == 511 or app.table.ranks_in_order[-1] == 137
        await pilot.press("o")  # host
        assert app.table.order.sort == "host"
        # a click on a column title sorts by it
        x = app.rank_header.render_line(0).text.index("RANK")
        await pilot.click("#rank-header", offset=(x + 1, 0))
        assert app.table.order.sort == "rank"
        await pilot.press("p")  # problem ranks only
        assert app.table.ranks_in_order == [137, 200]
        assert "filter “problem”: 2 of 512" in app.rank_header.render_line(0).text
        await pilot.press("p")
        assert len(app.table.ranks_in_order) == 512
        await prompt(pilot, "F", "node12 node13 !101")
        assert app.table.ranks_in_order == [96, 97, 98, 99, 100, *range(102, 112)]
        assert app.tabs.keys[1:4] == ["r96", "r97", "r98"]  # the tabs follow the table
        await prompt(pilot, "F", "")
        assert len(app.table.ranks_in_order) == 512
        await finish(app, pilot)


@pytest.mark.slow
async def test_group_by_node_folds_and_unfolds():
    job = big_job(nodes=4, per_node=8)
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("p")  # nothing failed: the table stays as it is
        assert len(app.table.ranks_in_order) == 32 and not app.table.order.query
        await pilot.press("b")
        assert app.table.rows[:2] == [(0, 0), (1, 0)] and len(app.table.rows) == 36
        assert "node0" in app.table.render_line(0).text and "8 running" in app.table.render_line(0).text
        await pilot.press("left")  # fold node0 (the cursor is on it)
        assert len(app.table.rows) == 28 and app.table.selected_node() == 0
        await pilot.press("enter")  # Enter on a node row unfolds it
        assert len(app.table.rows) == 36
        await pilot.press("left", "down")
        assert app.table.rows[app.table.cursor] == (0, 1)
        await pilot.press("space")
        assert len(app.table.rows) == 20  # two nodes folded
        await pilot.press("3")  # opening a rank of a folded node unfolds it
        assert app.current_tab == "r3" and app.table.selected_rank().rank == 3
        assert (1, 3) in app.table.rows
        await finish(app, pilot)


@pytest.mark.slow
async def test_picker_goes_to_a_rank_or_a_host():
    job = big_job()
    app = make_app(job)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await pilot.press("colon")
        await settle(pilot, 0.2)
        await pilot.press(*"137")
        await settle(pilot, 0.4)
        await pilot.press("enter")
        await settle(pilot)
        assert app.current_tab == "r137" and app.table.selected_rank().rank == 137
        assert "r137" in app.tabs.keys
        await pilot.press("colon")
        await settle(pilot, 0.2)
        await pilot.press(*"node12")
        await settle(pilot, 0.4)
        await pilot.press("enter")
        await settle(pilot)
        assert app.table.ranks_in_order == list(range(96, 104)) and app.current_tab == "r96"
        # a rank the filter hides: the filter goes
        await pilot.press("colon")
        await settle(pilot, 0.2)
        await pilot.press(*"rank 5")
        await settle(pilot, 0.4)
        await pilot.press("enter")
        await settle(pilot)
        assert app.current_tab == "r5" and len(app.table.ranks_in_order) == 512
        await finish(app, pilot)


@pytest.mark.slow
async def test_picker_arrows_a_click_and_nothing_found():
    job = big_job(nodes=8, per_node=8)
    app = make_app(job)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await pilot.press("colon")
        await until(pilot, lambda: app.focused is app.prompt and app.pick_list.display)
        # nothing typed: the combined log (and the first failure, once there is one)
        assert str(app.pick_list.get_option_at_index(0).prompt).startswith("all ranks")
        await pilot.press("5")
        await until(pilot, lambda: app.pick_list.option_count == 12)  # rank 5, ranks 50-59, host node5
        assert str(app.pick_list.get_option_at_index(1).prompt).startswith("rank 50  ")
        await pilot.press("down", "enter")
        await until(pilot, lambda: app.current_tab == "r50")
        assert not app.pick_list.display and app._prompt_mode is None
        # a click on a hit goes there
        await pilot.press("colon")
        await until(pilot, lambda: app.pick_list.display)
        await pilot.press(*"node3")
        await until(pilot, lambda: app.pick_list.option_count > 1)
        listed = [str(app.pick_list.get_option_at_index(i).prompt) for i in range(app.pick_list.option_count)]
        assert listed[0].startswith("host node3  ranks 24-31") and listed[1].startswith("rank 24  node3")
        await pilot.click("#picklist", offset=(3, 2))  # the third line: rank 25
        await until(pilot, lambda: app.current_tab == "r25")
        assert not app.pick_list.display
        # nothing matches: said, and Esc closes the picker
        await pilot.press("colon")
        await until(pilot, lambda: app.pick_list.display)
        await pilot.press(*"zzz")
        await until(pilot, lambda: "nothing matches" in str(app.pick_list.get_option_at_index(0).prompt))
        await pilot.press("escape")
        await until(pilot, lambda: not app.pick_list.display and app.focused is not app.prompt)
        assert app.current_tab == "r25"
        await finish(app, pilot)


@pytest.mark.slow
async def test_digit_buffer_is_cleared_by_other_keys():
    job = big_job(nodes=8, per_node=8)
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("3", "a", "7")
        assert app.current_tab == "r7"
        await pilot.press("3", "7")
        assert app.current_tab == "r37"
        await finish(app, pilot)


async def test_table_values_sit_under_their_headers():
    job = demo_job()
    app = make_app(job, clock=lambda: DEMO_NOW)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        header = app.rank_header.render_line(0).text
        row = app.table.render_line(5).text  # rank 5, the first failure
        for title, value in (("RANK", "5"), ("PID", "4005"), ("RUNTIME", "7.0s")):
            end = header.index(title) + len(title)  # right-aligned columns
            assert row[end - len(value):end] == value, (title, header, row)
        for title, value in (("HOST", "node-b"), ("STATUS", "failed 1"), ("LAST LINE", "RuntimeError")):
            start = header.index(title)  # left-aligned columns
            assert row[start:start + len(value)] == value, (title, header, row)
        await finish(app, pilot)


@pytest.mark.slow
async def test_log_keys_act_on_the_log_whatever_has_the_focus():
    job = FakeJob(tail_lines=500)
    job.start_all()
    job.out(0, "".join(f"line {i}\n" for i in range(300)))
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        app.table.focus()
        await settle(pilot)
        view = app.log_view
        assert app.focused is app.table and "▌" in app.rank_header.render_line(0).text[:1]
        await pilot.press("g")
        assert not view.follow and view.visible_text()[0] == "line 0"
        await pilot.press("G")
        assert view.follow and "line 299" in screen_text(app)
        await pilot.press("home")
        assert not view.follow and view.visible_text()[0] == "line 0"
        await pilot.press("end")
        assert view.follow
        assert app.focused is app.table  # the table kept the focus all along
        await pilot.press("t")
        assert app.status_line.lines[0].plain.startswith("▌")  # the log has the keys now
        await finish(app, pilot)


@pytest.mark.slow
async def test_search_scrolls_to_a_match_beyond_the_right_edge_and_on_a_wrapped_row():
    job = FakeJob()
    job.start_all()
    job.out(0, "".join(f"filler {i}\n" for i in range(200)))
    job.out(0, "x" * 400 + " needle-far-right\n" + "".join(f"after {i}\n" for i in range(50)))
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("0")
        await settle(pilot)
        view = app.log_view
        await prompt(pilot, "slash", "needle")
        assert "needle" in (view.current_line() or "")
        assert view.scroll_x > 250  # as far right as the widest line allows
        assert any("needle-far-right" in row for row in view.visible_text())
        await pilot.press("w")  # wrapped: the row holding the match is on screen
        await prompt(pilot, "slash", "needle")
        await settle(pilot)
        assert any("needle-far-right" in row for row in view.visible_text())
        await finish(app, pilot)


async def test_summary_at_80x24_has_its_verdict_whole_and_uncovered():
    job = FakeJob({"node-a": 4, "node-b": 4}, run_forever=False)
    job.start_all()
    job.exit(5, code=3)  # a long verdict: "job failed (exit code 3); first failure: rank 5 on ..."
    job.end_all(signal=15, stopped=True)
    app = make_app(job)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        await settle(pilot, 0.3)
        dialog = app.screen.query_one("#dialog")
        for part in ("#verdict", "#summary-table"):  # wrapped inside the dialog, not cut
            widget = app.screen.query_one(part)
            assert widget.size.width <= dialog.content_size.width, part
        verdict = app.screen.query_one("#verdict").render()
        assert "first failure: rank 5 on node-b, exit 3" in str(verdict).replace("\n", " ")
        assert not app._notifications  # no toast over it
        assert "x: first failure" in str(app.screen.query_one("#hint").render())
        assert "■ 7 stopped" in bar_text(app) and "killed" not in bar_text(app)
        await pilot.press("q")
        await settle(pilot)


async def test_summary_offers_no_first_failure_when_nothing_failed():
    job = FakeJob({"node-a": 4, "node-b": 4}, run_forever=False)
    job.start_all()
    job.end_all(signal=15, stopped=True)
    job.model.aborted_by_user = True
    app = make_app(job)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        assert "x: first failure" not in str(app.screen.query_one("#hint").render())
        table = rendered(app.screen.query_one("#summary-table").content)
        assert "0-7  stopped by the user (SIGTERM)" in table  # one row for eight ranks
        assert "■ 8 stopped" in bar_text(app) and "killed" not in bar_text(app)
        await pilot.press("q")
        await settle(pilot)


@pytest.mark.slow
async def test_stopping_a_node_says_why_the_job_ended_aborted():
    job = FakeJob({"a": 2, "b": 2})
    job.start_all()
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("down", "down", "K", "y")
        for r in (2, 3):
            job.exit(r, code=None, signal=15, stopped=True)
        for r in (0, 1):
            job.exit(r, code=0)
        job.finish()
        await settle(pilot, 0.3)
        assert job.model.state.value == "aborted"
        assert "node b (ranks 2-3) stopped by the user" in bar_text(app)
        verdict = app.screen.query_one("#verdict").render().plain
        assert "node b (ranks 2-3) stopped by the user" in verdict
        await pilot.press("q")
        await settle(pilot)


@pytest.mark.slow
async def test_all_ranks_view_shows_or_hides_ranks():
    job = FakeJob({"localhost": 8})
    job.start_all()
    for rank in range(8):
        job.out(rank, f"loss 1.0\nrank {rank} only\n")
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await prompt(pilot, "v", "!7")
        rows = [line for line in app.log_view.visible_text() if line]
        assert rows[0] == "[0-6] loss 1.0" and not any(row.startswith("[7|") for row in rows)
        assert "[0-6] rank {rank} only" in rows
        await prompt(pilot, "v", "7")
        rows = [line for line in app.log_view.visible_text() if line]
        assert rows == ["[7|localhost] loss 1.0", "[7|localhost] rank 7 only"]
        await prompt(pilot, "ampersand", "!loss")  # a negated regex filter on top
        rows = [line for line in app.log_view.visible_text() if line]
        assert rows == ["[7|localhost] rank 7 only"]
        await prompt(pilot, "v", "")
        await prompt(pilot, "ampersand", "")
        assert len([line for line in app.log_view.visible_text() if line]) == 2
        await finish(app, pilot)


@pytest.mark.slow
async def test_a_paused_view_stays_put_while_a_rank_floods():
    job = FakeJob({"localhost": 4}, tail_lines=1000)
    job.start_all()
    for i in range(300):
        job.out(i % 4, f"early {i}\n")
    app = make_app(job)
    app.sources["all"].rows.max_rows = 2000
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("t", "pageup", "pageup")
        view = app.log_view
        assert not view.follow
        before = view.visible_text()
        for burst in range(10):  # rank 0 floods: 5000 lines, twice the view's memory
            job.out(0, "".join(f"flood {burst} {i}\n" for i in range(500)))
            job.out(2, f"quiet {burst}\n")
            await settle(pilot, 0.12)
        assert view.visible_text() == before
        await pilot.press("1")  # a rank tab: its ring drops lines under a paused view too
        job.out(1, "".join(f"r1 {i}\n" for i in range(1000)))
        await settle(pilot)
        assert app.focused is view
        await pilot.press("pageup")
        before = view.visible_text()
        job.out(1, "".join(f"r1 more {i}\n" for i in range(3000)))
        await settle(pilot)
        assert view.visible_text() == before
        await pilot.press("a", "f")  # every quiet rank's lines are still in "all ranks"
        texts = [view._text(i) for i in view.layout_.items]
        assert all(f"quiet {b}" in texts for b in range(10)) and "early 3" in texts  # never flooded
        await finish(app, pilot)
