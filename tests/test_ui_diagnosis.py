"""Pilot tests of issue 12 in the console (FakeJob; no processes): the CPU/MEM/SILENT/GPU
columns and their sorts, "stalled?" and the job bar's count, `d`'s grouped stacks, `x`
with the exception line on screen, collateral ranks and each failure's error line.

Real jobs: tests/test_diagnosis_e2e.py (headless, the job), tests/test_ui_tmux.py (the TUI).
"""

from __future__ import annotations

import pytest

from flextui.stacks import rank_stack  # noqa: F401 - FakeJob turns events into stacks with it
from flextui.ui.app import FlexApp, stop_job_of
from flextui.ui.screens import SummaryScreen
from flextui.ui.stacksview import StacksScreen
from flextui.ui.testing import FakeJob

from tests.test_stacks import IN_LOADER, IN_SYNC, IN_TRAIN_STEP, event
from tests.test_ui_app import bar_text, rendered, screen_text, settle, until

GIB = 1 << 30


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def running_job(ranks: int = 4, hosts: int = 1, stall_after: float = 3.0) -> tuple[FakeJob, Clock]:
    job = FakeJob({f"n{h}": ranks // hosts for h in range(hosts)})
    clock = Clock(job.t0 + 1)
    job.model.clock = clock
    job.model.stall_after = stall_after
    job.start_all()
    return job, clock


def app_for(job: FakeJob, clock: Clock) -> FlexApp:
    return FlexApp(job, theme_dirs=[], clock=clock)


def table_rows(app) -> list[str]:
    table = app.table
    return [table.render_line(y).text.rstrip() for y in range(table.size.height)]


def header(app) -> str:
    return app.rank_header.render_line(0).text


def sample(job: FakeJob, node: int, entries: list[dict], nvml: str | None = "nvidia-ml-py is not installed") -> None:
    job.model.apply(node, {"ev": "sample", "t": job.model.clock(), "nvml": nvml, "ranks": entries})


async def finish(app, pilot) -> None:
    app.job.finish()
    await settle(pilot)
    app.exit()
    await stop_job_of(app)


@pytest.mark.slow
async def test_cpu_mem_silent_columns_stall_flags_and_sorts():
    job, clock = running_job()
    sample(job, 0, [{"rank": r, "cpu": [97.0, 3.0, 50.0, 12.0][r], "rss": (r + 1) * 700 << 20,
                     "threads": 4, "procs": 2} for r in range(4)])
    app = app_for(job, clock)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        assert all(word in header(app) for word in ("SILENT", "CPU", "MEM", "GPU"))
        rows = table_rows(app)
        assert "97%" in rows[0] and "700M" in rows[0] and "2.7G" in rows[3]
        assert "stalled?" not in "\n".join(rows) and "silent" not in bar_text(app)

        clock.t += 2  # rank 0 wrote 2 s ago: not news, SILENT stays empty
        job.out(0, "step 1\n")
        clock.t += 2.5
        await until(pilot, lambda: "stalled?" in "\n".join(table_rows(app)))
        rows = table_rows(app)
        assert "running" in rows[0] and all("stalled?" in row and "4s" in row for row in rows[1:4]), rows
        assert "⚠ 3 silent > 3s (d: stacks)" in bar_text(app)

        clock.t += 2  # now rank 0 is silent too: every rank — a collective hang
        await until(pilot, lambda: "collective hang" in bar_text(app))
        assert "⚠ all 4 ranks silent > 3s: a collective hang? (d: stacks)" in bar_text(app)
        app.table.move_cursor(0)
        await settle(pilot)
        assert "silent 4s (stalled?)" in rendered(app.panel.query_one("#rank-info").render(), 300)

        for name, first in (("cpu", 0), ("mem", 3), ("silent", 1)):
            app.table.set_order(sort=name)
            await settle(pilot, 0.1)
            assert app.table.ranks_in_order[0] == first, (name, app.table.ranks_in_order)
        job.out(1, "back\n")  # a rank that writes again is not stalled
        await until(pilot, lambda: "stalled?" not in table_rows(app)[app.table.ranks_in_order.index(1)])
        await finish(app, pilot)


async def test_gpu_figures_reach_the_table_and_no_telemetry_is_said_once():
    job, clock = running_job(ranks=4, hosts=2)
    sample(job, 0, [{"rank": r, "cpu": 90.0, "rss": 1 << 30, "threads": 8, "procs": 1,
                     "gpu": {"device": str(r), "util": 50.0 + r, "mem_used": 20 * GIB, "mem_total": 80 * GIB,
                             "proc_mem": (10 + r) * GIB}} for r in (0, 1)], nvml=None)
    sample(job, 1, [{"rank": r, "cpu": 1.0, "rss": 1 << 30, "threads": 8, "procs": 1} for r in (2, 3)],
           nvml="nvidia-ml-py is not installed for /usr/bin/python3")
    app = app_for(job, clock)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: "50% 10G/80G" in "\n".join(table_rows(app)))
        rows = table_rows(app)
        end = header(app).index("GPU") + 3
        gpu = [row[end - 14:end].strip() for row in rows[:4]]
        assert gpu == ["0 50% 10G/80G", "1 51% 11G/80G", "0", "1"]  # n1: the binding only, never invented
        await pilot.press("question_mark")
        await settle(pilot)
        help_text = rendered(app.screen.query_one("#help-table").content, 150)
        assert help_text.count("no GPU telemetry on n1 (nvidia-ml-py is not installed for /usr/bin/python3)") == 1
        await pilot.press("escape")
        await finish(app, pilot)


def hung_job(ranks: int = 8) -> tuple[FakeJob, Clock]:
    job, clock = running_job(ranks, hosts=2)
    for rank in range(ranks):
        frames = IN_LOADER if rank == 5 else IN_SYNC if rank == 2 else IN_TRAIN_STEP
        job.stack_events.append((rank // (ranks // 2), event(rank, frames, children=[[["work", "w.py", 10 + rank,
                                                                                        "/w.py"]]])))
    return job, clock


async def test_d_shows_every_rank_grouped_the_odd_ones_first():
    job, clock = hung_job()
    app = app_for(job, clock)
    async with app.run_test(size=(160, 48)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, StacksScreen) and app.screen.dump is not None)
        text = rendered(app.screen.query_one("#stacks").content, 150)
        lines = text.splitlines()
        assert lines[0].startswith("stacks of 8 ranks: 3 groups")
        groups = [line for line in lines if line.startswith(("rank ", "ranks "))]
        assert groups == [
            "rank 2 (1): all_reduce ← sync_metrics (train.py:83) ← main (train.py:113) ← …",
            "rank 5 (1): FakeLoader.__next__ (train.py:71) ← main (train.py:105) ← <module> (train.py:136)",
            "ranks 0-1,3-4,6-7 (6): all_reduce ← train_step (train.py:78) ← main (train.py:115) ← …",
        ]
        # The frames that set a group apart are marked: rank 2's call site, rank 5's loader.
        assert ">> sync_metrics (train.py:83)" in text and ">> FakeLoader.__next__ (train.py:71)" in text
        assert "   all_reduce" in text and ">> all_reduce" not in text.split("── rank 5")[0].split("── rank 2")[1]
        assert "+ 1 child process of rank 5 (dataloader workers)" in text
        assert "stacks-120020.txt" in text and "Traceback" not in text
        await pilot.press("escape")
        await settle(pilot)
        assert not isinstance(app.screen, StacksScreen) and ("dump_stacks",) in job.calls
        await finish(app, pilot)


async def test_d_names_the_nodes_without_py_spy_never_a_traceback():
    job, clock = hung_job()
    job.stack_events = [e for e in job.stack_events if e[0] == 0]
    job.stack_errors = {"n1": "py-spy is not installed for /usr/bin/python3"}
    app = app_for(job, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, StacksScreen) and app.screen.dump is not None)
        text = rendered(app.screen.query_one("#stacks").content, 76)
        assert text.startswith("stacks of 4 ranks: 2 groups; no stack from ranks 4-7")
        assert "py-spy is missing on n1: pip install 'flextui[stacks]' (or pip install py-spy)" in " ".join(
            text.split())
        assert "Traceback" not in text
        await pilot.press("escape")
        await finish(app, pilot)


TRACEBACK = ["Traceback (most recent call last):"] + [
    f'  File "train.py", line {n}, in step{n}\n    step{n + 1}()' for n in range(40)
] + ["RuntimeError: rank 3 hit a simulated fault at step 2"]


@pytest.mark.slow
async def test_x_puts_the_exception_line_on_screen_and_names_collateral_ranks():
    job, clock = running_job(ranks=4)
    for rank in range(4):
        job.out(rank, "".join(f"rank {rank} step {i}\n" for i in range(100)))
    job.out(3, "\n".join(TRACEBACK) + "\n")
    clock.t += 1
    job.exit(3, code=1, t=job.t0 + 5)
    for rank in range(3):
        job.out(rank, f"RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer "
                      f"[127.0.0.1]:{30000 + rank}\n")
        job.exit(rank, code=1, t=job.t0 + 6)
    app = app_for(job, clock)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert "root cause: rank 3" in bar_text(app)
        await pilot.press("x")
        await until(pilot, lambda: "RuntimeError: rank 3 hit a simulated fault at step 2" in screen_text(app))
        await settle(pilot)
        assert "RuntimeError: rank 3 hit a simulated fault at step 2" in screen_text(app)
        await pilot.press("t")  # to the table: each failed rank's error line, collateral named
        await settle(pilot)
        await finish(app, pilot)
    app = app_for(job, clock)
    async with app.run_test(size=(160, 40)) as pilot:
        await settle(pilot)
        rows = table_rows(app)
        assert "collateral 1" in rows[0] and "Connection closed by peer" in rows[0]
        assert "failed 1" in rows[3] and "RuntimeError: rank 3 hit a simulated fault at step 2" in rows[3]
        job.finish()
        await settle(pilot)
        if not isinstance(app.screen, SummaryScreen):  # (the app may show it by itself at the end)
            app.action_summary()
        await until(pilot, lambda: isinstance(app.screen, SummaryScreen))
        await settle(pilot)
        verdict = rendered(app.screen.query_one("#verdict").content, 150)
        assert ("root cause: rank 3 on n0, exit 1: RuntimeError: rank 3 hit a simulated fault at step 2"
                in " ".join(verdict.split()))
        notes = rendered(app.screen.query_one("#notes").content, 150)
        assert "collateral: ranks 0-2 failed after rank 3 with a peer-connection error" in notes
        table = rendered(app.screen.query_one("#summary-table").content, 150)
        assert "collateral: exit 1 after a lost peer's error" in table
        app.exit()
        await stop_job_of(app)
