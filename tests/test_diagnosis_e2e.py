"""Finding hangs and root causes with real jobs: torch (gloo, CPU) ranks hung in all_reduce
and a data loader, their stacks dumped by py-spy on every node and grouped; stall flags;
CPU/memory samples; a cascade of gloo errors named for its root cause; GPU figures from a
stand-in pynvml (these machines have no GPU). Locally and over the sshd test cluster."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from flextui.cli import parse_command_line, resolve_world
from flextui.modes import mode_from_args
from flextui.job import Job, JobConfig
from flextui.model import JobModel, RankStatus
from flextui.stacks import StackDump, rank_spans
from flextui.transport import backend_class
from flextui.transport.local import LocalBackend
from flextui.world import Command, World
from flextui.ui.rankview import Context, columns_for
from tests.helpers import PY, TRAIN as TRAIN_PATH, free_port, marker, read_summary, survivors, the_run_dir  # noqa: F401

TRAIN = str(TRAIN_PATH)
STANDINS = Path(__file__).resolve().parent / "standins"
GIB = 1 << 30
def hang_args(world: int) -> tuple[str, ...]:
    """The last rank's data loader never delivers from step 2 on; the third-last reaches
    its all_reduce from sync_metrics; the others wait for the last one in train_step's
    all_reduce. Each rank has a loader worker process (a child to find in its dump)."""
    return ("--steps", "1000", "--step-time", "0.2", "--hang-rank", str(world - 1), "--stray-rank",
            str(world - 3), "--hang-step", "2", "--loader-workers", "1")


def train_lines() -> dict[str, int]:
    """Where train.py's frames are, so the expected groups follow edits of the example."""
    source = Path(TRAIN).read_text().splitlines()

    def line_of(pattern: str, after: str | None = None) -> int:
        start = next(i for i, text in enumerate(source) if after in text) if after else 0
        return next(i + 1 for i, text in enumerate(source) if i >= start and re.search(pattern, text))

    return {
        "sync": line_of(r"dist\.all_reduce", "def sync_metrics"), "step": line_of(r"dist\.all_reduce", "def train_step"),
        "next": line_of(r"time\.sleep\(3600\)", "def __next__"), "main_next": line_of(r"next\(loader\)"),
        "main_sync": line_of(r"= sync_metrics\("), "main_step": line_of(r"= train_step\("),
        "module": line_of(r"^    main\(\)"),
    }


def expected_groups(world: int) -> list[str]:
    rest = rank_spans([r for r in range(world) if r not in (world - 1, world - 3)])
    lines = train_lines()
    return [
        f"rank {world - 3} (1): all_reduce ← sync_metrics (train.py:{lines['sync']}) ← "
        f"main (train.py:{lines['main_sync']}) ← …",
        f"rank {world - 1} (1): FakeLoader.__next__ (train.py:{lines['next']}) ← main (train.py:{lines['main_next']}) "
        f"← <module> (train.py:{lines['module']})",
        f"ranks {rest} ({world - 2}): all_reduce ← train_step (train.py:{lines['step']}) ← "
        f"main (train.py:{lines['main_step']}) ← …",
    ]


async def hang_dump(job: Job, sampled: Callable[[Job], bool] = lambda job: True) -> StackDump:
    """Run the job until every rank is stuck at step 2 (the last in its loader, the others
    in all_reduce) and `sampled(job)` holds (≤ 10 s more: the launcher samples every 2 s),
    then take `d`'s dump; stop the job and return the dump."""
    task = asyncio.ensure_future(job.run())
    try:
        deadline = time.monotonic() + 300
        while not (job.model.current_ranks
                   and all(any("step 2/" in line for line in r.tail) for r in job.model.current_ranks)):
            assert time.monotonic() < deadline, [r.last_line for r in job.model.ranks]
            assert not task.done(), task
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # from their last line into the wait
        deadline = time.monotonic() + 10
        while not sampled(job) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        return await job.dump_stacks()
    finally:
        job.stop("test over")
        await asyncio.wait_for(task, 60)


def assert_hang_groups(dump: StackDump, hosts: list[str], world: int = 8) -> None:
    assert [g.line() for g in dump.groups] == expected_groups(world)
    assert dump.missing == [] and dump.node_errors == {}
    by_rank = {s.rank: s for s in dump.ranks}
    assert sorted(by_rank) == list(range(world)) and {s.host for s in by_rank.values()} == set(hosts)
    # The loader worker of each rank is in its dump, under its rank.
    for stack in by_rank.values():
        (child,) = stack.children
        assert child.ppid == stack.pid and child.main.frames[0].function == "loader_worker"
    # The differing frames: what sets each odd rank apart from the others.
    stray, loader, rest = dump.groups
    assert {stray.stack.frames[i].function for i in stray.differs} == {"sync_metrics", "main"}
    assert {loader.stack.frames[i].function for i in loader.differs} == {"FakeLoader.__next__", "main"}
    text = Path(dump.path).read_text()
    assert re.fullmatch(r"stacks-\d{6}(-\d+)?\.txt", Path(dump.path).name)
    assert all(g.line() in text for g in dump.groups) and f"child of rank {world - 1}" in text


def local_job(tmp_path: Path, args: tuple[str, ...], ranks: int = 8, mode=None, **config) -> Job:
    world = World.from_slots({"localhost": list(range(ranks))}, master_port=free_port())
    command = Command(script=TRAIN, args=args, python=PY)
    if mode is not None:
        config["mode"] = mode
    return Job(JobConfig(world=world, command=command, log_root=str(tmp_path / "runs"), grace=5.0,
                         cwd=str(tmp_path), **config), LocalBackend())


@pytest.mark.slow
async def test_d_groups_the_stacks_of_a_hung_job(tmp_path):
    job = local_job(tmp_path, hang_args(8))

    def sampled_with_loader(job: Job) -> bool:  # a sample taken since each loader worker started
        return all(r.usage is not None and r.usage.procs == 2 for r in job.model.ranks)

    dump = await hang_dump(job, sampled_with_loader)
    assert_hang_groups(dump, ["localhost"])
    assert dump.headline() == "stacks of 8 ranks: 3 groups"
    # While it hung: every rank was sampled; the hung ranks idle in their waits.
    for rank in job.model.ranks:
        assert rank.usage is not None and rank.usage.rss > 50 << 20 and rank.usage.procs == 2


def cli_job(tmp_path: Path, monkeypatch, env: dict[str, str], options: list[str], args: tuple[str, ...]) -> Job:
    """A job built as the command line builds it (its backend from `options`), in this
    process, with `env` as the environment its backend and launchers see."""
    for name in [n for n in os.environ if n not in env]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if os.environ.get(name) != value:
            monkeypatch.setenv(name, value)
    parsed = parse_command_line(["--master_port", str(free_port()), *options, TRAIN, *args])
    backend = backend_class(parsed.launcher).from_args(parsed)
    world = resolve_world(parsed, backend.hosts(parsed.hostfile))
    command = Command(script=TRAIN, args=args, python=PY)
    config = JobConfig(world=world, command=command, log_root=str(tmp_path / "runs"), grace=5.0, cwd=str(tmp_path),
                       mode=mode_from_args(parsed, world))
    return Job(config, backend)


def two_nodes(cluster, tmp_path: Path, slots: int) -> str:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("".join(f"{n.name} slots={slots}\n" for n in cluster.nodes[:2]))
    return str(hostfile)


async def test_d_groups_the_stacks_of_a_job_hung_on_two_nodes(cluster, tmp_path, monkeypatch):
    job = cli_job(tmp_path, monkeypatch, cluster.env(), [two_nodes(cluster, tmp_path, 4)], hang_args(8))
    dump = await hang_dump(job)
    assert_hang_groups(dump, [n.name for n in cluster.nodes[:2]])
    assert {s.host for s in dump.ranks if s.rank in (5, 7)} == {cluster.nodes[1].name}


async def test_d_over_slurm(slurm, tmp_path, monkeypatch):
    job = cli_job(tmp_path, monkeypatch, slurm.env(), ["--launcher", "slurm", "--slurm_args", "-N2", "--num_gpus", "2"],
                  hang_args(4))
    with job.backend:
        dump = await hang_dump(job)
    assert_hang_groups(dump, sorted({r.info.host for r in job.model.ranks}), world=4)
    assert len({r.info.host for r in job.model.ranks}) == 2


@pytest.mark.slow
async def test_d_in_an_elastic_job(tmp_path, monkeypatch):
    """--elastic: torch's agent starts the ranks (through flextui's shim); the dump finds
    each rank's process under them all the same."""
    (tmp_path / "hostfile").write_text("localhost slots=4\n")
    job = cli_job(tmp_path, monkeypatch, dict(os.environ), ["--elastic", str(tmp_path / "hostfile")], hang_args(4))
    dump = await hang_dump(job)
    assert_hang_groups(dump, ["localhost"], world=4)


SILENT_WORKER = r'''
import os, sys, time
print("ready", flush=True)
time.sleep(float(sys.argv[1]))
print("done", flush=True)
'''


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
def test_silent_ranks_are_flagged_once_and_the_job_goes_on(tmp_path, marker):
    """--stall_after 3: one warning line per rank when it is first flagged, one for the
    collective hang; nothing stops; the run records it."""
    script = tmp_path / "silent.py"
    script.write_text(SILENT_WORKER)
    (tmp_path / "hostfile").write_text("localhost slots=3\n")
    result = subprocess.run(
        [PY, "-m", "flextui", "--headless", "--log-dir", str(tmp_path / "runs"), "--stall_after", "3",
         "--no_local_rank", "--master_port", str(free_port()), str(tmp_path / "hostfile"), str(script), "7"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("flextui: ⚠")]
    assert sorted(warnings[:3]) == [
        f"flextui: ⚠ rank {r} on localhost: silent for 3s (--stall_after 3): stalled? (it keeps running)"
        for r in range(3)]
    assert warnings[3:] == ["flextui: ⚠ every running rank is silent: a collective hang? "
                            "(their stacks: --stacks_on_stall, or `d` in the console)"]
    assert all(f"[{r}|localhost] done" in result.stdout for r in range(3))
    events = (the_run_dir(tmp_path / "runs") / "events.jsonl").read_text()
    assert '"ev": "stalled"' in events
    assert survivors(marker) == []


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
def test_stacks_on_stall_dumps_once(tmp_path, marker):
    script = tmp_path / "silent.py"
    script.write_text(SILENT_WORKER)
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    result = subprocess.run(
        [PY, "-m", "flextui", "--headless", "--log-dir", str(tmp_path / "runs"), "--stall_after", "2",
         "--stacks_on_stall", "--no_local_rank", "--master_port", str(free_port()), str(tmp_path / "hostfile"),
         str(script), "6"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("flextui: stacks of 2 ranks: 1 group") == 1, out
    assert "flextui:   ranks 0-1 (2): <module> (silent.py:4)" in out
    dumps = list(the_run_dir(tmp_path / "runs").glob("stacks-*.txt"))
    assert len(dumps) == 1 and f"flextui: every stack: {dumps[0]}" in out


def cascade_summary(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("RANK "))
    return lines[start - 1:]


def assert_cascade(result: subprocess.CompletedProcess, host_of_3: str) -> None:
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr
    collateral, *table = cascade_summary(result.stdout)
    assert collateral == "flextui: collateral: ranks 0-2 failed after rank 3 with a peer-connection error"
    rows = {int(line.split()[0]): line for line in table[1:5]}
    assert "  exit 1  " in rows[3] and "RuntimeError: rank 3 hit a simulated fault at step 2" in rows[3]
    for rank in (0, 1, 2):  # exit 1, or the stop's SIGTERM as Python shut down after the error
        assert "(collateral)" in rows[rank] and "RuntimeError: Connection closed by peer" in rows[rank], rows[rank]
    assert table[5:] == [f"job failed (exit code 1); root cause: rank 3 on {host_of_3}, exit 1: "
                         "RuntimeError: rank 3 hit a simulated fault at step 2"]


CASCADE = ("--steps", "50", "--step-time", "0.2", "--fail-rank", "3", "--fail-step", "2", "--ignore-sigterm")


def test_a_cascade_over_two_nodes_names_its_root_cause(cluster, tmp_path):
    """Rank 3 raises; the others die of gloo's "Connection closed by peer" (they ignore
    SIGTERM, so the node's stop does not beat gloo to them): collateral, rank 3 the cause
    (by exit time across the nodes; one torch job for the suite's time, on 2 nodes)."""
    hostfile = two_nodes(cluster, tmp_path, 2)
    result = subprocess.run(
        [PY, "-m", "flextui", "--headless", "--log-dir", str(tmp_path / "runs"), "--grace", "20",
         "--master_port", str(free_port()), str(hostfile), TRAIN, *CASCADE],
        cwd=tmp_path, env=cluster.env(), capture_output=True, text=True, timeout=240,
    )
    assert_cascade(result, cluster.nodes[1].name)
    summary = read_summary(the_run_dir(tmp_path / "runs"))
    assert summary["first_failure"] == 3 and [r.get("collateral", False) for r in summary["ranks"]] == [True] * 3 + [False]


SPIN_WORKER = r'''
import os, sys, time
print("up", flush=True)
end = time.time() + float(sys.argv[1])
while time.time() < end:
    pass
print("idle", flush=True)
time.sleep(600)
'''


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
async def test_cpu_memory_and_gpu_figures_reach_the_model(tmp_path, monkeypatch, marker):
    """Real ranks sampled by their launcher: CPU moves with what they do, memory is there,
    and the stand-in pynvml's figures come through for each rank's GPU."""
    job_tag = f"fake-{os.getpid()}-{time.monotonic_ns()}"
    monkeypatch.setenv("PYTHONPATH", str(STANDINS))
    monkeypatch.setenv("FAKE_NVML_JOB", job_tag)
    script = tmp_path / "spin.py"
    script.write_text(SPIN_WORKER)
    world = World.from_slots({"localhost": [0, 1]}, master_port=free_port())
    command = Command(script=str(script), args=("4",), python=PY, no_local_rank=True)
    job = Job(JobConfig(world=world, command=command, log_root=str(tmp_path / "runs"), grace=2.0,
                        cwd=str(tmp_path), sample_interval=0.5), LocalBackend())
    model: JobModel = job.model
    task = asyncio.ensure_future(job.run())
    busy, idle = [], []
    idle_since = None
    try:
        deadline = time.monotonic() + 60
        while len(idle) < 2:
            assert time.monotonic() < deadline and not task.done()
            usages = [r.usage for r in model.ranks]
            if idle_since is None and all("idle" in r.last_line for r in model.ranks):
                idle_since = model.clock()
            if not all(usages):
                pass
            elif idle_since is None:
                busy.append(usages)
            elif min(u.t for u in usages) > idle_since + 0.6:  # a sample of the idle time only
                idle.append(usages)
            await asyncio.sleep(0.25)
        # What the rank table shows (its columns' own cells, Textual-free): the stand-in's figures.
        ctx = Context(model, now=model.clock())
        cells = {c.name: [c.cell(r, ctx) for r in model.ranks] for c in columns_for(model)}
    finally:
        job.stop("test over")
        await asyncio.wait_for(task, 30)
    assert cells["gpu"] == ["0 50% 1.0G/80G", "1 51% 2.0G/80G"], cells
    assert all(text.endswith("%") for text in cells["cpu"]) and all(text[-1] in "MG" for text in cells["mem"]), cells
    # Spinning vs sleeping, on 2 cores other work shares: the spin shows, the sleep does not.
    spinning, sleeping = max(u.cpu or 0 for sample in busy for u in sample), max(u.cpu or 0 for u in idle[-1])
    assert spinning > 15 and sleeping < 5 and spinning > 5 * sleeping, (spinning, sleeping)
    for rank, usage in enumerate(idle[-1]):
        assert usage.rss > 5 << 20 and usage.procs == 1
        gpu = usage.gpu
        assert (gpu.device, gpu.util, gpu.mem_used, gpu.mem_total, gpu.proc_mem) == (
            str(rank), 50 + rank, (10 + rank) * GIB, 80 * GIB, (1 + rank) * GIB)
    assert model.nodes[0].no_gpu_telemetry is None
    assert all(r.status is not RankStatus.RUNNING for r in model.ranks)


def start_silent_job(tmp_path: Path, seconds: float, env: dict | None = None) -> subprocess.Popen:
    script = tmp_path / "silent.py"
    script.write_text(SILENT_WORKER)
    (tmp_path / "hostfile").write_text("localhost slots=2\n")
    proc = subprocess.Popen(
        [PY, "-m", "flextui", "--headless", "--log-dir", str(tmp_path / "runs"), "--no_local_rank",
         "--master_port", str(free_port()), str(tmp_path / "hostfile"), str(script), str(seconds)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})},
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "runs").is_dir() or not any(
            "ready" in log.read_text() for log in (tmp_path / "runs").glob("*/rank-1.log")):
        assert time.monotonic() < deadline and proc.poll() is None, "the job did not start"
        time.sleep(0.1)
    return proc


def flextui_command(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "flextui", *args, "--log-dir", str(tmp_path / "runs")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
def test_flextui_stacks_run_from_another_shell(tmp_path, marker):
    proc = start_silent_job(tmp_path, 60)
    try:
        result = flextui_command(tmp_path, "stacks")
        assert result.returncode == 0, result.stderr
        dump = next((tmp_path / "runs").glob("*/stacks-*.txt"))
        assert result.stdout.splitlines() == [
            "stacks of 2 ranks: 1 group", "  ranks 0-1 (2): <module> (silent.py:4)",
            f"every stack: {dump.relative_to(tmp_path)}"]
        full = flextui_command(tmp_path, "stacks", "--all")
        assert full.returncode == 0 and "rank 1 on localhost: pid" in full.stdout and "silent.py:4)" in full.stdout
    finally:
        stop = flextui_command(tmp_path, "stop", the_run_dir(tmp_path / "runs").name)
        proc.communicate(timeout=60)
    assert stop.returncode == 0 and proc.returncode == 130


@pytest.mark.slow
def test_flextui_stacks_says_where_py_spy_is_missing(tmp_path, marker):
    proc = start_silent_job(tmp_path, 60, env={"FLEXTUI_PY_SPY": ""})
    try:
        result = flextui_command(tmp_path, "stacks")
    finally:
        flextui_command(tmp_path, "stop", the_run_dir(tmp_path / "runs").name)
        proc.communicate(timeout=60)
    assert result.returncode == 1
    assert result.stdout.splitlines()[:2] == [
        "stacks of 0 ranks: 0 groups; no stack from ranks 0-1",
        "py-spy is missing on localhost: pip install 'flextui[stacks]' (or pip install py-spy) for the nodes' python",
    ]
    assert "Traceback" not in result.stdout + result.stderr
