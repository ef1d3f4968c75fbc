"""The console of one node's share of a bigger job (DeepSpeed's --no_ssh --node_rank N)
numbers ranks as the job does; the rank panel shows a rank's CPU binding; the table keeps
the first failure in view through a stop cascade."""

from __future__ import annotations

import pytest

import asyncio
import io

from rich.console import Console

from flextui.model import JobModel
from flextui.ui.app import FlexApp, RankPicker, stop_job_of
from flextui.ui.screens import SummaryScreen, summary_renderable
from flextui.ui.testing import FakeJob
from flextui.world import World


def share_job(node_rank: int = 2) -> FakeJob:
    """Node `node_rank` of a 4 nodes × 8 job, as `--no_ssh --node_rank N` runs it."""
    job = FakeJob()
    world = World.from_slots({f"node{i}": list(range(8)) for i in range(4)}).share_of(node_rank)
    job.world = world
    job.model = JobModel(world, job.run_id, 5000)
    job.model.started_at = job.t0
    return job


async def until(pilot, condition, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await pilot.pause(0.02)


def panel_text(app) -> str:
    return str(app.panel.query_one("#rank-info").render())


@pytest.mark.slow
async def test_a_share_of_the_job_shows_the_jobs_rank_numbers():
    job = share_job(2)  # ranks 16-23 of 32
    job.start_all()
    for rank in range(8):
        job.out(rank, f"hello from local rank {rank}\n")
    app = FlexApp(job, theme_dirs=[], clock=lambda: job.t0 + 5)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.2)
        table = app.table
        ctx = table.ctx
        assert [table.columns[0].cell(job.model.ranks[i], ctx) for i in range(8)] == [str(16 + i) for i in range(8)]
        assert [app._tab_label(f"r{i}").plain for i in range(8)] == [str(16 + i) for i in range(8)]
        assert "rank 16  node2" in panel_text(app) and "node rank 2" not in panel_text(app)
        # the all-ranks view's prefix names the job's rank
        assert any("[16|node2]" in line or "[16-23]" in line for line in app.log_view.visible_text())
        # digits name the job's rank: 1 9 opens this console's rank 3
        await pilot.press("1", "9")
        await until(pilot, lambda: app.current_tab == "r3")
        assert "rank 19" in app.status_line.lines[0].plain
        # the table's filter takes the job's numbers
        await pilot.press("F")
        await until(pilot, lambda: app.focused is app.prompt)
        app.prompt.value = "20-21"
        await pilot.press("enter")
        await until(pilot, lambda: table.ranks_in_order == [4, 5])
        # the picker too
        await pilot.press("colon")
        await pilot.pause(0.2)
        await pilot.press(*"22")
        await pilot.pause(0.4)
        await pilot.press("enter")
        await until(pilot, lambda: app.current_tab == "r6")
        # a node row: the job's node rank and rank range
        await pilot.press("F")
        await until(pilot, lambda: app.focused is app.prompt)
        app.prompt.value = ""
        await pilot.press("enter")
        await pilot.press("b")
        await until(pilot, lambda: table.order.grouped)
        table.focus()
        table.move_to_row(0)
        await pilot.pause(0.1)
        assert "node rank 2  ranks 16-23" in panel_text(app)
        header = "".join(segment.text for segment in table.render_line(0))
        assert "node2  node 2 · ranks 16-23" in header
        hits = RankPicker(app.screen)._hits("node2")
        assert hits[0][1] == "host node2  ranks 16-23" and hits[1][1].startswith("rank 16  node2")
        job.exit(5, code=1, t=job.t0 + 6)
        job.end_all(signal=15, stopped=True)
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        console = Console(width=140, file=io.StringIO(), record=True)
        console.print(summary_renderable(job.model, app.palette, job.t0 + 20))
        summary = console.export_text()
        assert "▶           21  failed: exit 1" in summary and "16-20,22-23  stopped" in summary
        assert "first failure: rank 21 on node2" in "\n".join(t.plain for t in app.job_bar.lines)
        app.exit()
        await stop_job_of(app)


async def test_the_rank_panel_shows_the_cpus_a_rank_is_bound_to():
    job = FakeJob({"node-a": 2})
    for r in job.model.ranks:  # --bind_cores_to_rank: the launcher says which cores it pinned
        job.model.apply(0, {"ev": "started", "rank": r.rank, "pid": 4000 + r.rank, "t": job.t0 + 1,
                            "cpus": f"{2 * r.rank}-{2 * r.rank + 1}"})
    app = FlexApp(job, theme_dirs=[], clock=lambda: job.t0 + 5)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        assert "cpus 0-1" in panel_text(app)
        app.table.focus()
        await pilot.press("down")
        await until(pilot, lambda: "cpus 2-3" in panel_text(app))
        job.finish()
        app.exit()
        await stop_job_of(app)


async def stop_cascade(pilot, app, job, down: int) -> None:
    """Sort by status, `down` rows down, then rank 37 fails and 500 ranks stop in waves
    (stopped ranks sort after the 11 still checkpointing ones)."""
    await pilot.press("o")  # sort by status
    await until(pilot, lambda: app.table.order.sort == "status")
    app.table.focus()
    for _ in range(down):
        await pilot.press("down")
    job.exit(37, code=1, t=job.t0 + 3)
    await until(pilot, lambda: app.table.ranks_in_order[0] == 37)
    job.model.begin_stop("rank 37 failed", 10)
    for wave in range(0, 512, 64):
        for r in range(wave, wave + 64):
            if r != 37 and r % 50 != 3:
                job.exit(r, code=None, signal=15, t=job.t0 + 4, stopped=True)
        await pilot.pause(0.15)


@pytest.mark.slow
async def test_a_status_sort_keeps_the_first_failure_on_top_through_a_stop_cascade():
    """The cursor on the top row stays there: the first failure is selected and shown."""
    job = FakeJob({f"node{i:02d}": 8 for i in range(64)})
    job.start_all()
    app = FlexApp(job, theme_dirs=[], clock=lambda: job.t0 + 5)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await stop_cascade(pilot, app, job, down=0)
        await until(pilot, lambda: app.table.ranks_in_order[12] == 0)
        assert app.table.cursor == 0 and app.table.selected_rank().rank == 37 and app.table.scroll_y == 0
        await until(pilot, lambda: "rank 37" in panel_text(app))
        job.finish()
        app.exit()
        await stop_job_of(app)


@pytest.mark.slow
async def test_a_selected_rank_resorted_into_the_first_screenful_shows_the_top_too():
    """The cursor follows its rank down and back up while 512 ranks stop; once that rank is
    back within the first screenful the table shows its top (the first failure) again."""
    job = FakeJob({f"node{i:02d}": 8 for i in range(64)})
    job.start_all()
    app = FlexApp(job, theme_dirs=[], clock=lambda: job.t0 + 5)
    async with app.run_test(size=(160, 48)) as pilot:
        await pilot.pause(0.2)
        await stop_cascade(pilot, app, job, down=1)  # rank 1
        await until(pilot, lambda: app.table.selected_rank().rank == 1 and app.table.cursor == 13)
        assert app.table.scroll_y == 0  # rank 37 (row 0) and the 11 checkpointing ranks in view
        job.finish()
        app.exit()
        await stop_job_of(app)
