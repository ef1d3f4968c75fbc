"""The log view reads a rank's whole log file, not only the lines the console keeps in
memory: scrolling to the top, `g`, search and `x`/`e` reach a line written millions of
lines before the end, for a live job as for `flextui open`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from flextui.runs import RecordedJob
from flextui.ui.testing import FakeJob
from flextui.world import World
from tests.test_ui_app import SIZE, finish, make_app, prompt, screen_text, settle, until

LINES = 2_100_000
TRACEBACK_AT = 100_000  # 2 million lines before the end
NEEDLE_AT = 7


def write_log(path, lines: int) -> bytes:
    """A long rank log (one write): numbered steps, an early needle, and a traceback 2
    million lines before the end that is the rank's last one."""
    def steps(a: int, b: int) -> bytes:
        return b"".join(b"step %07d loss 0.5\n" % i for i in range(a, b))

    traceback = (b"Traceback (most recent call last):\n  File \"train.py\", line 9, in main\n"
                 b"ValueError: bad batch\n")
    data = b"".join([steps(0, NEEDLE_AT), b"found the needle early\n", steps(NEEDLE_AT + 1, TRACEBACK_AT),
                     traceback, steps(TRACEBACK_AT + 3, lines)])
    path.write_bytes(data)
    return data


def live_rank_with_log(tmp_path, lines: int) -> tuple[FakeJob, Path]:
    """A running job whose rank 0 wrote a `lines`-line log (write_log); the model keeps
    its last 5,000 lines, as a console does."""
    path = tmp_path / "rank-0.log"
    data = write_log(path, lines)
    job = FakeJob()
    job.log_files[0] = str(path)
    job.start_all()
    job.out(0, data.decode())
    return job, path


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
async def test_a_live_rank_log_is_whole_search_g_and_x_reach_its_start(tmp_path):
    path = tmp_path / "rank-1.log"
    data = write_log(path, LINES)
    job = FakeJob()
    job.log_files[1] = str(path)
    job.start_all()
    job.out(1, data.decode())  # the model keeps the last 5,000 lines, as a console does
    job.exit(1, code=1)
    assert job.model.ranks[1].line_count == LINES and len(job.model.ranks[1].tail) == 5000
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        view = app.log_view
        # x: the first failure's tab, at its traceback, 2 million lines before the end
        await pilot.press("x")
        await until(pilot, lambda: view.cursor is not None, timeout=30)
        assert app.current_tab == "r1" and view.cursor == TRACEBACK_AT
        assert view.current_line() == "Traceback (most recent call last):"
        assert "Traceback (most recent call last):" in screen_text(app)
        # e: the next error from there, also in the file
        await pilot.press("e")
        await until(pilot, lambda: view.cursor == TRACEBACK_AT + 2, timeout=30)
        assert view.current_line() == "ValueError: bad batch"
        # search backward and forward through the whole file
        await prompt(pilot, "slash", "needle")
        await until(pilot, lambda: view.cursor == NEEDLE_AT, timeout=30)
        await pilot.press("n")  # the only match: around the end and back to it
        await settle(pilot, 0.5)
        await until(pilot, lambda: not view.searching, timeout=30)
        assert view.cursor == NEEDLE_AT
        await prompt(pilot, "slash", "step 1999999 ")
        await until(pilot, lambda: view.cursor == 1_999_999, timeout=30)
        await pilot.press("N")
        await until(pilot, lambda: not view.searching, timeout=30)
        assert view.cursor == 1_999_999
        await prompt(pilot, "slash", "STEP 0000003")  # capitals: case-sensitive, no such line
        await until(pilot, lambda: not view.searching, timeout=30)
        assert view.cursor == 1_999_999
        # g: line 1 at the top; G: the end
        await pilot.press("g")
        await settle(pilot)
        assert screen_text(app).splitlines()[0].startswith("step 0000000 ")
        assert view.layout_.height == LINES
        await pilot.press("G")
        await settle(pilot)
        assert screen_text(app).rstrip().splitlines()[-1].startswith(f"step {LINES - 1:07d}")
        await finish(app, pilot)


@pytest.mark.slow
async def test_lines_keep_coming_while_a_paused_view_stays_at_the_start(tmp_path):
    job, path = live_rank_with_log(tmp_path, 300_000)
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        view = app.log_view
        await pilot.press("0")
        await settle(pilot)
        await pilot.press("g")
        await until(pilot, lambda: screen_text(app).startswith("step 0000000"), timeout=30)
        with open(path, "ab") as f:  # the rank goes on writing: file first, then the model
            more = "".join(f"later {i}\n" for i in range(20_000))
            f.write(more.encode())
        job.out(0, more)
        await settle(pilot, 0.5)
        assert screen_text(app).startswith("step 0000000") and not view.follow
        assert view.layout_.height == 320_000
        await pilot.press("G")
        await settle(pilot)
        assert screen_text(app).rstrip().splitlines()[-1] == "later 19999"
        await finish(app, pilot)


def write_run(run_dir, lines: int, summary: bool) -> None:
    """A finished 2-rank run directory, as a console leaves it (rank 1: a long log)."""
    world = World.from_slots({"localhost": [0, 1]})
    run_dir.mkdir()
    events = [{"ev": "plan", **world.plan(), "run_id": run_dir.name, "mode": "fixed"}]
    for rank in (0, 1):
        events.append({"ev": "started", "node": 0, "rank": rank, "pid": 100 + rank, "t": 1.0})
        events.append({"ev": "exited", "node": 0, "rank": rank, "code": rank, "signal": None, "t": 9.0})
    events.append({"ev": "finished", "t": 10.0})
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / "rank-0.log").write_text("hello\n")
    write_log(run_dir / "rank-1.log", lines)
    if summary:
        (run_dir / "summary.json").write_text(json.dumps({"ranks": [
            {"rank": 0, "lines": 1}, {"rank": 1, "lines": lines}]}))


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
async def test_open_of_a_finished_run_shows_and_searches_the_whole_log(tmp_path):
    for summary in (True, False):  # without summary.json (supervisor lost): counted from the file
        run_dir = tmp_path / f"20260101-000000-{int(summary)}"
        write_run(run_dir, 2_050_000, summary)
        job = RecordedJob(str(run_dir))
        app = make_app(job, clock=time.time)
        async with app.run_test(size=SIZE) as pilot:
            view = app.log_view
            await pilot.press("x")
            await until(pilot, lambda: view.cursor is not None, timeout=30)
            assert app.current_tab == "r1" and view.cursor == TRACEBACK_AT
            assert view.current_line() == "Traceback (most recent call last):"
            await prompt(pilot, "slash", "NEEDLE|needle")
            await until(pilot, lambda: view.cursor == NEEDLE_AT, timeout=30)
            await pilot.press("g")
            await settle(pilot)
            assert screen_text(app).startswith("step 0000000")
            await pilot.press("G")
            await settle(pilot)
            assert screen_text(app).rstrip().splitlines()[-1].startswith("step 2049999")
            app.exit()


async def filter_rank_0(pilot, pattern: str) -> None:
    """Rank 0's tab, once its log file is indexed, filtered with `pattern` (`&`)."""
    view = pilot.app.log_view
    await pilot.press("0")
    await until(pilot, lambda: view.source.ready, timeout=30)
    await prompt(pilot, "ampersand", pattern)


async def test_the_line_filter_covers_the_whole_log_file_and_lines_still_coming(tmp_path):
    """`&` on a rank whose first lines are only in its log file: the matches from the file
    come first, then those in memory, then new ones; a wrapped view filters memory only."""
    job, path = live_rank_with_log(tmp_path, 60_000)  # "found the needle early" is line 7
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        view = app.log_view
        await filter_rank_0(pilot, "needle|step 0059999|step 001000[0-2] ")
        await until(pilot, lambda: not view.filtering and view.layout_.count == 5, timeout=30)
        assert [view.source.text(i) for i in view.layout_.items] == [
            "found the needle early", "step 0010000 loss 0.5", "step 0010001 loss 0.5",
            "step 0010002 loss 0.5", "step 0059999 loss 0.5"]
        assert "filter “needle|step 0059999|step 001000[0-2] ” (5 lines)" in app.status_line.lines[0].plain
        # a search among them reads the file's lines in a worker, and finds one
        await prompt(pilot, "slash", "step 0010001")
        await until(pilot, lambda: view.cursor == 10_001 and not view.searching, timeout=30)
        # the rank goes on: a new match joins at the end, and the file's stay
        more = "".join(f"later {i}\n" for i in range(6_000)) + "another needle\n"
        with open(path, "a") as f:
            f.write(more)
        job.out(0, more)
        await until(pilot, lambda: view.layout_.count == 6, timeout=30)
        assert view.source.text(view.layout_.items[0]) == "found the needle early"
        assert view.source.text(view.layout_.items[-1]) == "another needle"
        # g: the first match, from the file, at the top
        await pilot.press("g")
        await until(pilot, lambda: screen_text(app).startswith("found the needle early"))
        # !negation over the file: every line but the steps
        await prompt(pilot, "ampersand", "!^step ")
        await until(pilot, lambda: not view.filtering and view.layout_.count == 6_000 + 5, timeout=30)
        assert view.source.text(view.layout_.items[0]) == "found the needle early"
        # wrapped, the filter covers the lines in memory only (as the README says)
        await prompt(pilot, "ampersand", "needle")
        await until(pilot, lambda: not view.filtering and view.layout_.count == 2, timeout=30)
        await pilot.press("w")
        await until(pilot, lambda: view.wrap and view.layout_.count == 1)
        assert view.source.text(view.layout_.items[0]) == "another needle"
        await finish(app, pilot)


async def test_a_broad_filter_keeps_the_newest_matches_of_the_file(tmp_path, monkeypatch):
    """A filter matching most of a huge log would hold a line number per line: the file's
    matches are taken newest first, at most FILE_MATCHES_MAX, and the status line says so."""
    from flextui.ui.logview import LogView

    monkeypatch.setattr(LogView, "FILE_MATCHES_MAX", 3)
    job, _path = live_rank_with_log(tmp_path, 60_000)  # 100,003 lines (to the traceback); 5,000 in memory
    app = make_app(job)
    async with app.run_test(size=SIZE) as pilot:
        view = app.log_view
        await filter_rank_0(pilot, "step 00(0100|5499)[0-9] ")
        await until(pilot, lambda: not view.filtering and view.filter_capped, timeout=30)
        # the file's 3 newest matches (of 20), then every match in memory
        assert list(view.layout_.items) == [54997, 54998, 54999]
        assert "older matches in the file not shown" in app.status_line.lines[0].plain
        await prompt(pilot, "ampersand", "needle")  # a narrow one: all of it
        await until(pilot, lambda: not view.filtering and view.layout_.count == 1, timeout=30)
        assert not view.filter_capped
        await finish(app, pilot)
