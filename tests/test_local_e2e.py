"""End to end: `flextui --headless` as a subprocess on localhost, real workers and signals.

Every process of a test carries its tmp_path (see tests/helpers.py): after each job the
test asserts that none is left, polling up to a deadline.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import (  # noqa: F401 - fixtures
    PY, TRAIN, free_port, logs_contain, marker, pids_alive, pids_running, read_events, read_summary,
    read_text, sigterms_received, start_flextui, survivors, the_run_dir, wait_for, wait_run_dir, worker,
    write_term_counter,
)


def write_hostfile(tmp_path: Path, text: str = "localhost slots=4\n") -> Path:
    path = tmp_path / "hostfile"
    path.write_text(text)
    return path


def flextui_args(tmp_path: Path, *args: str, port: int | None = None) -> list[str]:
    return ["--headless", "--log-dir", str(tmp_path / "runs"), "--master_port", str(port or free_port()),
            *args]


def finish(proc: subprocess.Popen, timeout: float = 30.0) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"flextui still running after {timeout}s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def env_reports(run_dir: Path, ranks) -> dict[int, dict]:
    reports = {}
    for rank in ranks:
        line = next(l for l in read_text(run_dir / f"rank-{rank}.log").splitlines() if l.startswith("ENV "))
        reports[rank] = json.loads(line[4:])
    return reports


def pids_in_logs(run_dir: Path, ranks, word: str) -> list[int]:
    return [int(line.split()[1]) for r in ranks for line in read_text(run_dir / f"rank-{r}.log").splitlines()
            if line.startswith(word + " ")]


def wait_ready(tmp_path: Path, ranks) -> Path:
    run_dir = wait_run_dir(tmp_path / "runs")
    wait_for(lambda: logs_contain(run_dir, ranks, "ready rank"), 15, "every rank ready")
    return run_dir


def assert_nothing_survives(marker: str, pids=()) -> None:
    assert survivors(marker, timeout=5) == []
    assert pids_alive(pids) == []


def test_env_per_rank_two_local_nodes_uneven_slots(tmp_path, marker, worker):
    # Two "nodes" that are both this machine (localhost and 127.0.0.1), each with its
    # own node launcher, and an uneven selection: localhost gets slots 0 and 2, 127.0.0.1
    # slot 1.
    hostfile = write_hostfile(tmp_path, "localhost slots=3\n127.0.0.1 slots=2\n")
    port = free_port()
    proc = start_flextui(*flextui_args(tmp_path, "--include", "localhost:0,2@127.0.0.1:1",
                                       "--env", "FLEXTUI_TEST_VAR=hello world", port=port),
                         str(hostfile), str(worker), "--env", "--run-for", "0", "extra arg", cwd=tmp_path)
    code, out, err = finish(proc)
    assert code == 0, out + err
    run_dir = the_run_dir(tmp_path / "runs")
    reports = env_reports(run_dir, range(3))
    common = {"WORLD_SIZE": "3", "CROSS_SIZE": "2", "MASTER_ADDR": "localhost", "MASTER_PORT": str(port),
              "PYTHONUNBUFFERED": "1", "FLEXTUI_TEST_VAR": "hello world"}
    expected = {
        0: {"RANK": "0", "LOCAL_RANK": "0", "LOCAL_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "CROSS_RANK": "0",
            "CUDA_VISIBLE_DEVICES": "0,2"},
        1: {"RANK": "1", "LOCAL_RANK": "1", "LOCAL_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "CROSS_RANK": "0",
            "CUDA_VISIBLE_DEVICES": "0,2"},
        2: {"RANK": "2", "LOCAL_RANK": "0", "LOCAL_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "CROSS_RANK": "1",
            "CUDA_VISIBLE_DEVICES": "1"},
    }
    for rank, report in reports.items():
        assert report["env"] == {**common, **expected[rank]}
        local_rank = expected[rank]["LOCAL_RANK"]
        assert report["argv"] == [f"--local_rank={local_rank}", "--env", "--run-for", "0", "extra arg"]
        assert report["cwd"] == str(tmp_path)

    # Headless output: every line prefixed with its rank and host, then the summary.
    hosts = {0: "localhost", 1: "localhost", 2: "127.0.0.1"}
    for rank, host in hosts.items():
        assert f"[{rank}|{host}] ENV " in out
    assert out.splitlines()[-1] == "job succeeded (exit code 0)"
    assert out.startswith(f"flextui: run {run_dir.name}: 3 ranks on 2 node(s), logs in ")

    # The run directory: <YYYYmmdd-HHMMSS>-<id>/
    assert run_dir.parent == tmp_path / "runs"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]+", run_dir.name)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "events.jsonl", "rank-0.log", "rank-1.log", "rank-2.log", "run.json", "summary.json"]
    assert run_dir.stat().st_mode & 0o777 == 0o700  # the run's user alone (issue 11)
    summary = read_summary(run_dir)
    assert (summary["state"], summary["exit_code"], summary["first_failure"]) == ("succeeded", 0, None)
    assert [(r["rank"], r["host"], r["node_rank"], r["local_rank"], r["gpu"], r["status"], r["code"])
            for r in summary["ranks"]] == [
        (0, "localhost", 0, 0, 0, "exited", 0), (1, "localhost", 0, 1, 2, "exited", 0),
        (2, "127.0.0.1", 1, 0, 1, "exited", 0)]
    assert [r["pid"] for r in summary["ranks"]] == [reports[r]["pid"] for r in range(3)]
    events = read_events(run_dir)
    assert events[0]["ev"] == "plan" and events[0]["run_id"] == run_dir.name
    assert events[0]["ranks"][2] == {"rank": 2, "host": "127.0.0.1", "node_rank": 1, "local_rank": 0, "gpu": 1}
    assert events[-1]["ev"] == "finished" and events[-1]["exit_code"] == 0
    assert sorted(e["node"] for e in events if e["ev"] == "hello") == [0, 1]
    assert sorted(e["node"] for e in events if e["ev"] == "done") == [0, 1]
    assert sorted(e["rank"] for e in events if e["ev"] == "started") == [0, 1, 2]
    assert not [e for e in events if e["ev"] == "out"], "log text lives in the rank logs only"
    assert_nothing_survives(marker)


@pytest.mark.slow
def test_one_rank_exits_3_stops_everything(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path)
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--children", "2", "--orphan",
                         "--fail", "2", "--code", "3", "--after", "1.0", cwd=tmp_path)
    run_dir = wait_ready(tmp_path, range(4))
    helpers = pids_in_logs(run_dir, range(4), "child") + pids_in_logs(run_dir, range(4), "orphan")
    assert len(helpers) == 12
    code, out, err = finish(proc)
    assert code == 3, out + err
    summary = read_summary(run_dir)
    assert (summary["state"], summary["exit_code"], summary["first_failure"]) == ("failed", 3, 2)
    for rank in summary["ranks"]:
        if rank["rank"] == 2:
            assert (rank["status"], rank["code"], rank["stopped"]) == ("failed", 3, False)
        else:
            assert (rank["status"], rank["signal"], rank["stopped"]) == ("killed", signal.SIGTERM, True)
    table = out.splitlines()[-6:]
    assert table[0].split() == ["RANK", "HOST", "GPU", "PID", "OUTCOME", "DURATION"]
    for rank, row in zip(summary["ranks"], table[1:5]):
        outcome = "exit 3" if rank["rank"] == 2 else "signal 15 (SIGTERM) (stopped)"
        assert row.split()[:4] == [str(rank["rank"]), "localhost", str(rank["gpu"]), str(rank["pid"])]
        assert f"  {outcome}  " in row and row.endswith("s")
    assert table[5] == "job failed (exit code 3); first failure: rank 2 on localhost, exit 3"
    assert "rank 2 failed" in [e.get("reason") for e in read_events(run_dir) if e["ev"] == "stopping"]
    assert_nothing_survives(marker, [r["pid"] for r in summary["ranks"]] + helpers)


@pytest.mark.parametrize("script", ["worker", pytest.param("train.py", marks=pytest.mark.slow)])
def test_sigint_stops_workers_and_their_children(tmp_path, marker, worker, script):
    hostfile = write_hostfile(tmp_path)
    if script == "worker":
        target = [str(worker), "--children", "2", "--orphan"]
    else:  # the example itself: a child per rank, like a dataloader worker
        link = tmp_path / "train.py"  # in tmp_path, so its argv carries the marker
        link.symlink_to(TRAIN)
        target = [str(link), "--spawn-child", "--no-dist", "--steps", "1000", "--step-time", "0.05"]
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), *target, cwd=tmp_path)
    run_dir = wait_run_dir(tmp_path / "runs")
    ready = "ready rank" if script == "worker" else "step 1/"
    wait_for(lambda: logs_contain(run_dir, range(4), ready), 60, "every rank running")
    children = pids_in_logs(run_dir, range(4), "child") + pids_in_logs(run_dir, range(4), "orphan")
    if script == "train.py":
        children = [int(l.split()[-1]) for r in range(4)
                    for l in read_text(run_dir / f"rank-{r}.log").splitlines() if "started child pid" in l]
    assert len(children) == (12 if script == "worker" else 4)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    elapsed = time.monotonic() - sent
    assert code == 130, out + err
    assert elapsed < 5, "SIGTERM was enough: no wait for the 10 s grace"
    assert "flextui: SIGINT: stopping all ranks" in out
    summary = read_summary(run_dir)
    assert (summary["state"], summary["exit_code"], summary["first_failure"]) == ("aborted", 130, None)
    assert all(r["stopped"] for r in summary["ranks"])
    assert out.splitlines()[-1] == "job aborted (exit code 130); aborted by user (SIGINT)"
    assert_nothing_survives(marker, [r["pid"] for r in summary["ranks"]] + children)


def test_kill_9_of_flextui_stops_everything(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path)
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--children", "1", "--orphan",
                         cwd=tmp_path)
    run_dir = wait_ready(tmp_path, range(4))
    launchers = [p.pid for p in psutil.Process(proc.pid).children()]
    assert len(launchers) == 1
    workers = [p.pid for p in psutil.Process(launchers[0]).children()]
    helpers = pids_in_logs(run_dir, range(4), "child") + pids_in_logs(run_dir, range(4), "orphan")
    assert len(workers) >= 4 and len(helpers) == 8
    proc.kill()
    proc.wait()
    # The launcher sees stdin EOF and stops everything by itself (no console left); it
    # reaps its workers and their children, and init reaps it.
    assert_nothing_survives(marker, workers + helpers)
    assert pids_running(launchers) == []
    assert all(f"ready rank {r}" in read_text(run_dir / f"rank-{r}.log") for r in range(4))


@pytest.mark.slow
def test_sigterm_ignoring_worker_is_sigkilled_after_the_grace(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path)
    proc = start_flextui(*flextui_args(tmp_path, "--grace", "1"), str(hostfile), str(worker),
                         "--ignore-term", "1,2,3", "--children", "1", "--fail", "0", "--code", "5",
                         "--after", "0.5", cwd=tmp_path)
    run_dir = wait_ready(tmp_path, range(4))
    code, out, err = finish(proc)
    ended = time.time()
    assert code == 5, out + err
    events = read_events(run_dir)
    failed_at = next(e["t"] for e in events if e["ev"] == "exited" and e["rank"] == 0)
    (killing,) = [e for e in events if e["ev"] == "killing"]
    assert 0.9 <= killing["t"] - failed_at <= 3.0, killing["t"] - failed_at
    assert 0.9 <= ended - failed_at <= 6.0
    summary = read_summary(run_dir)
    assert [r["signal"] for r in summary["ranks"][1:]] == [signal.SIGKILL] * 3
    assert summary["first_failure"] == 0 and summary["exit_code"] == 5
    assert all(f"rank {r} ignoring SIGTERM" in read_text(run_dir / f"rank-{r}.log") for r in (1, 2, 3))
    assert_nothing_survives(marker, [r["pid"] for r in summary["ranks"]] + pids_in_logs(run_dir, range(4), "child"))


def test_second_sigint_kills_at_once(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path)
    proc = start_flextui(*flextui_args(tmp_path, "--grace", "60"), str(hostfile), str(worker),
                         "--ignore-term", "0,1,2,3", cwd=tmp_path)
    run_dir = wait_ready(tmp_path, range(4))
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: logs_contain(run_dir, range(4), "ignoring SIGTERM"), 10, "SIGTERM delivered")
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, out + err
    assert time.monotonic() - began < 10, "not the 60 s grace"
    assert "SIGINT again: killing all ranks now" in out
    assert [r["signal"] for r in read_summary(run_dir)["ranks"]] == [signal.SIGKILL] * 4
    assert_nothing_survives(marker)


@pytest.mark.slow
def test_every_line_of_a_100k_line_rank_is_logged_and_printed(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path, "localhost slots=2\n")
    lines = 100_000
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--lines", str(lines),
                         "--lines-ranks", "1", "--run-for", "0.2", cwd=tmp_path)
    code, out, err = finish(proc, timeout=60)
    assert code == 0, out[-3000:] + err
    run_dir = the_run_dir(tmp_path / "runs")
    expected = [f"rank 1 line {i} of {lines}" for i in range(lines)]
    assert (run_dir / "rank-1.log").read_text() == "".join(line + "\n" for line in expected)
    prefix = "[1|localhost] "
    assert [l[len(prefix):] for l in out.splitlines() if l.startswith(prefix)] == expected
    assert read_summary(run_dir)["ranks"][1]["lines"] == lines
    assert_nothing_survives(marker)


def test_crashing_rank_keeps_its_last_partial_line(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path, "localhost slots=2\n")
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--fail", "0", "--code", "7",
                         "--partial", "half a line, then a crash", "--after", "0.2", cwd=tmp_path)
    code, out, err = finish(proc)
    assert code == 7, out + err
    run_dir = the_run_dir(tmp_path / "runs")
    log = (run_dir / "rank-0.log").read_text()
    pid = read_summary(run_dir)["ranks"][0]["pid"]
    assert log == f"ready rank 0 pid {pid}\nhalf a line, then a crash"
    assert "[0|localhost] half a line, then a crash\n" in out
    summary = read_summary(run_dir)
    assert summary["first_failure"] == 0 and summary["ranks"][0]["lines"] == 2
    assert_nothing_survives(marker)


def test_rank_killed_by_a_signal(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path, "localhost slots=2\n")
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--kill-self", "1",
                         "--after", "0.2", cwd=tmp_path)
    code, out, err = finish(proc)
    assert code == 128 + signal.SIGKILL, out + err
    assert "first failure: rank 1 on localhost, signal 9 (SIGKILL)" in out.splitlines()[-1]
    summary = read_summary(the_run_dir(tmp_path / "runs"))
    assert (summary["ranks"][1]["status"], summary["ranks"][1]["signal"]) == ("killed", 9)
    assert_nothing_survives(marker)


@pytest.mark.slow
def test_torch_gloo_job_completes_and_a_failing_rank_sets_the_exit_code(tmp_path, marker):
    hostfile = write_hostfile(tmp_path)
    link = tmp_path / "train.py"
    link.symlink_to(TRAIN)
    common = ["--steps", "3", "--step-time", "0.05"]
    ok = start_flextui(*flextui_args(tmp_path, "--log-dir", str(tmp_path / "ok")), str(hostfile), str(link),
                       *common, cwd=tmp_path)
    code, out, err = finish(ok, timeout=120)
    assert code == 0, out + err
    run_dir = the_run_dir(tmp_path / "ok")
    for rank in range(4):
        log = read_text(run_dir / f"rank-{rank}.log")
        assert f"rank {rank}/4 local_rank {rank} " in log
        assert f"rank {rank} step 3/3 value 1.000" in log and f"rank {rank}: done" in log
    assert read_summary(run_dir)["state"] == "succeeded"

    bad = start_flextui(*flextui_args(tmp_path, "--log-dir", str(tmp_path / "bad")), str(hostfile), str(link),
                        *common, "--steps", "50", "--fail-rank", "2", "--fail-step", "1", "--exit-code", "4",
                        cwd=tmp_path)
    code, out, err = finish(bad, timeout=120)
    assert code == 4, out + err
    summary = read_summary(the_run_dir(tmp_path / "bad"))
    assert (summary["first_failure"], summary["exit_code"], summary["state"]) == (2, 4, "failed")
    assert_nothing_survives(marker)


@pytest.mark.slow
def test_a_rank_flooding_its_log_does_not_break_the_console(tmp_path, marker):
    # A 70 MB line written at once: more than the console's 64 MiB event-line limit if
    # the launcher sent it as one event (it crashed the console, and so the job).
    hostfile = write_hostfile(tmp_path, "localhost slots=2\n")
    flood = tmp_path / "flood.py"
    flood.write_text("import os\nos.write(1, b'z' * 70_000_000 + b'\\n')\nprint('done')\n")
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(flood), cwd=tmp_path)
    code, out, err = finish(proc, timeout=60)
    assert code == 0, err[-3000:]
    run_dir = the_run_dir(tmp_path / "runs")
    assert (run_dir / "rank-0.log").stat().st_size == 70_000_006
    assert [r["lines"] for r in read_summary(run_dir)["ranks"]] == [2, 2]
    assert "[1|localhost] done\n" in out and out.count("z" * 1000) >= 69_000
    assert_nothing_survives(marker)


def test_sigint_while_the_launcher_is_starting_is_not_lost(tmp_path, marker, worker):
    # The run directory appears just before the node launchers start: a Ctrl+C then
    # used to be recorded but never sent to them, and the job ran on to its end.
    hostfile = write_hostfile(tmp_path, "localhost slots=2\n")
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--run-for", "30", cwd=tmp_path)
    deadline = time.monotonic() + 15
    while not (tmp_path / "runs").exists() and time.monotonic() < deadline:
        time.sleep(0.0005)  # the window is a few milliseconds wide
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, out + err
    assert time.monotonic() - began < 5, "the job was stopped, not run to its end"
    assert read_summary(the_run_dir(tmp_path / "runs"))["state"] == "aborted"
    assert_nothing_survives(marker)


@pytest.mark.parametrize("mode", ["--module", "--no_python", "--no_local_rank"])
def test_command_modes_end_to_end(tmp_path, marker, mode):
    hostfile = write_hostfile(tmp_path, "localhost slots=2\n")
    if mode == "--module":
        pkg = tmp_path / "fxjob"
        pkg.mkdir()
        (pkg / "__init__.py").write_text("")
        (pkg / "main.py").write_text("import os, sys\nprint('module', os.environ['RANK'], sys.argv[1:])\n")
        target, expect = ["fxjob.main", "a"], "module {rank} ['--local_rank={rank}', 'a']"
    elif mode == "--no_python":
        run = tmp_path / "run.sh"
        run.write_text('#!/bin/sh\necho "shell $RANK $*"\n')
        run.chmod(0o755)
        target, expect = ["./run.sh", "a"], "shell {rank} --local_rank={rank} a"
    else:
        (tmp_path / "plain.py").write_text("import os, sys\nprint('plain', os.environ['RANK'], sys.argv[1:])\n")
        target, expect = ["plain.py", "a"], "plain {rank} ['a']"
    proc = start_flextui(*flextui_args(tmp_path, mode), str(hostfile), *target, cwd=tmp_path)
    code, out, err = finish(proc)
    assert code == 0, out + err
    run_dir = the_run_dir(tmp_path / "runs")
    for rank in range(2):
        assert read_text(run_dir / f"rank-{rank}.log") == expect.format(rank=rank) + "\n"
        assert f"[{rank}|localhost] {expect.format(rank=rank)}\n" in out


@pytest.mark.slow
def test_a_failure_on_one_node_stops_the_other_node(tmp_path, marker, worker):
    # Two node launchers (localhost, 127.0.0.1): rank 3 on node 1 fails; node 0's ranks
    # are stopped by the console's stop command, not by their own launcher.
    hostfile = write_hostfile(tmp_path, "localhost slots=2\n127.0.0.1 slots=2\n")
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--children", "1",
                         "--fail", "3", "--code", "6", "--after", "0.8", cwd=tmp_path)
    run_dir = wait_ready(tmp_path, range(4))
    children = pids_in_logs(run_dir, range(4), "child")
    code, out, err = finish(proc)
    assert code == 6, out + err
    events = read_events(run_dir)
    stopping = {e["node"]: e["reason"] for e in events if e["ev"] == "stopping"}
    assert stopping == {0: "rank 3 failed", 1: "rank 3 failed"}
    summary = read_summary(run_dir)
    assert (summary["first_failure"], summary["exit_code"]) == (3, 6)
    assert [r["stopped"] for r in summary["ranks"]] == [True, True, True, False]
    assert_nothing_survives(marker, [r["pid"] for r in summary["ranks"]] + children)


def test_this_machines_name_is_a_local_host(tmp_path, marker, worker):
    hostfile = write_hostfile(tmp_path, f"{socket.gethostname()} slots=2\n")
    proc = start_flextui(*flextui_args(tmp_path), str(hostfile), str(worker), "--env", "--run-for", "0",
                         cwd=tmp_path)
    code, out, err = finish(proc)
    assert code == 0, out + err
    reports = env_reports(the_run_dir(tmp_path / "runs"), range(2))
    assert [r["env"]["MASTER_ADDR"] for r in reports.values()] == [socket.gethostname()] * 2
    assert_nothing_survives(marker)


def test_sigterm_to_the_console_stops_the_job_and_exits_143(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "flextui", "--headless", "--log-dir", str(tmp_path / "runs"),
         str(hostfile), str(Path(__file__).parent / "workers" / "worker.py"), str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        "ready rank" in p.read_text() for p in (tmp_path / "runs").glob("*/rank-*.log")
    ):
        time.sleep(0.05)
    proc.terminate()
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 143, out + err
    assert "aborted by user (SIGTERM)" in out
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


ARGS_WORKER = r'''
import hashlib, sys
args = sys.argv[1:]
print("ARGS %d %s" % (len(args), hashlib.sha256("\0".join(args).encode()).hexdigest()), flush=True)
'''


def args_digest(args: list[str]) -> str:
    import hashlib

    return f"ARGS {len(args)} {hashlib.sha256(chr(0).join(args).encode()).hexdigest()}"


@pytest.mark.slow
def test_a_megabyte_of_script_arguments_on_eight_slots(tmp_path, marker):
    """The node spec travels on the launcher's stdin with the script arguments once, not
    once per rank in one argv word (8 x 1 MB base64 was "Argument list too long")."""
    script = tmp_path / "args_worker.py"
    script.write_text(ARGS_WORKER)
    args = [f"a{i}-" + "x" * 1000 + " $HOME '\"`;" for i in range(1000)]  # ~1 MB
    assert sum(map(len, args)) > 1_000_000
    proc = start_flextui(*flextui_args(tmp_path), str(write_hostfile(tmp_path, "localhost slots=8\n")),
                         str(script), *args, cwd=tmp_path)
    code, out, err = finish(proc, timeout=60)
    assert code == 0, out[-2000:] + err
    run_dir = the_run_dir(tmp_path / "runs")
    for rank in range(8):
        assert read_text(run_dir / f"rank-{rank}.log") == args_digest([f"--local_rank={rank}", *args]) + "\n"
    assert_nothing_survives(marker)


@pytest.mark.parametrize("mode", ["fixed", pytest.param("elastic", marks=pytest.mark.slow)])
def test_ctrl_c_sends_each_process_exactly_one_sigterm(tmp_path, marker, mode):
    """Issue 13: one Ctrl+C must reach every rank and child once, so a script that
    checkpoints on the first SIGTERM finishes it. In --elastic, torch's agent signals its
    workers itself: the launcher must not add a second one."""
    counter = write_term_counter(tmp_path, checkpoint=1.5)
    extra = ["--elastic", "--monitor_interval", "0.2"] if mode == "elastic" else []
    proc = start_flextui(*flextui_args(tmp_path, *extra), str(write_hostfile(tmp_path, "localhost slots=2\n")),
                         str(counter), "--children", "2", cwd=tmp_path)
    wait_for(lambda: len(sigterms_received(tmp_path)) == 6, 60, "2 ranks and 4 children up")
    proc.send_signal(signal.SIGINT)
    code, out, err = finish(proc)
    assert code == 130, out + err
    assert sorted(sigterms_received(tmp_path).values()) == [1] * 6
    assert "killing" not in [e["ev"] for e in read_events(the_run_dir(tmp_path / "runs"))]
    assert_nothing_survives(marker)
