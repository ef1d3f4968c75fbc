"""Jobs that outlive the terminal (issue 11), end to end on localhost with real processes:
`--detach`, `attach`, `stop`, `ls`, `open`, the supervisor's lifecycle rules and who may
reach it. Multi-node versions are in test_supervisor_cluster.py; the TUI's own keys
(D, Ctrl+C, q) in test_supervisor_tmux.py.

Every worker carries the test's marker (tests/helpers.py), so "nothing left behind"
is a count over every process on the machine. The supervisor carries it too (its argv is
the command's), so a supervisor that outlived its job is caught the same way.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flextui.client import ClientJob
from flextui.model import JobState, RankStatus
from flextui.runs import RecordedJob, describe_run, list_runs
pytestmark = pytest.mark.slow  # real jobs of a few seconds each

from tests.helpers import (  # noqa: F401 - fixtures
    PY, flextui_argv, free_port, marker, read_events, read_summary, read_text, run_flextui, start_flextui,
    survivors, wait_for,
)

# Numbered lines, forever or --lines N; --fail R exits 3 on rank R after --after s.
WORKER = r'''
import argparse, os, sys, time
p = argparse.ArgumentParser()
p.add_argument("marker")
p.add_argument("--lines", type=int, default=-1)
p.add_argument("--every", type=float, default=0.02)
p.add_argument("--fail", type=int, default=-1)
p.add_argument("--after", type=float, default=0.5)
args = p.parse_args()
rank = int(os.environ["RANK"])
start, i = time.time(), 0
while args.lines < 0 or i < args.lines:
    print(f"rank {rank} line {i}", flush=True)
    i += 1
    if rank == args.fail and time.time() - start > args.after:
        print(f"rank {rank} fails", flush=True)
        sys.exit(3)
    time.sleep(args.every)
'''


@pytest.fixture
def job_dir(tmp_path, marker):
    (tmp_path / "hostfile").write_text("localhost slots=4\n")
    (tmp_path / "worker.py").write_text(WORKER)
    return tmp_path


def args_for(tmp_path: Path, *more: str) -> list[str]:
    return ["--log-dir", str(tmp_path / "runs"), "--master_port", str(free_port()), "--grace", "3",
            "--no_local_rank", *more]


def job_argv(tmp_path: Path, *worker_args: str) -> list[str]:
    return [str(tmp_path / "hostfile"), str(tmp_path / "worker.py"), str(tmp_path) + os.sep, *worker_args]


def detach(tmp_path: Path, *worker_args: str, extra: tuple[str, ...] = ()) -> Path:
    """`flextui --detach ...`: exit 0 at once, the run's path (from what it printed)."""
    result = run_flextui("--detach", *args_for(tmp_path, *extra), *job_argv(tmp_path, *worker_args),
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("flextui: run ") and "in the background" in first, result.stdout
    run_id = first.split()[2].rstrip(":")
    where = f"--log-dir {tmp_path / 'runs'}"
    assert f"flextui attach {where} {run_id}" in result.stdout and f"flextui stop {where} {run_id}" in result.stdout
    return tmp_path / "runs" / run_id


def flextui(tmp_path: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return run_flextui(*args, cwd=tmp_path, timeout=timeout)


def file_lines(path: Path) -> list[str]:
    return read_text(path).splitlines()


def supervisor_pid(run_dir: Path) -> int:
    return json.loads((run_dir / "run.json").read_text())["owner"]["pid"]


def wait_lines(run_dir: Path, ranks: int, count: int, timeout: float = 30.0) -> None:
    wait_for(lambda: all(len(file_lines(run_dir / f"rank-{r}.log")) >= count for r in range(ranks)),
             timeout, f"{count} lines from each rank")


async def attached(run_dir: Path, **kwargs) -> ClientJob:
    return await ClientJob.connect(str(run_dir), **kwargs)


def assert_ended_cleanly(run_dir: Path, marker: str, state: str) -> dict:
    """The run is over: nothing left, its record complete (summary, last event, card)."""
    assert survivors(marker, timeout=15) == []
    summary = read_summary(run_dir)
    assert summary["state"] == state
    events = read_events(run_dir)
    assert events[0]["ev"] == "plan" and events[-1]["ev"] == "finished" and events[-1]["state"] == state
    card = json.loads((run_dir / "run.json").read_text())
    assert (card["state"], card["exit_code"]) == (state, summary["exit_code"])
    assert not (run_dir / "supervisor.sock").exists()
    return summary


def test_detach_then_attach_shows_the_table_and_the_lines_written_while_detached(job_dir, marker):
    run_dir = detach(job_dir)
    assert (run_dir.stat().st_mode & 0o777, (run_dir / "supervisor.sock").stat().st_mode & 0o777) == (0o700, 0o600)
    wait_lines(run_dir, 4, 40)  # written while no console was attached

    async def check() -> None:
        job = await attached(run_dir)
        started = {e["rank"]: e["pid"] for e in read_events(run_dir) if e["ev"] == "started"}
        model = job.model
        assert model.state is JobState.RUNNING and len(model.ranks) == 4
        for rank in model.ranks:
            assert (rank.status, rank.pid, rank.info.host) == (RankStatus.RUNNING, started[rank.rank], "localhost")
            tail = list(rank.tail)
            # every line from the first one, contiguous, as many as the model counted
            assert tail == [f"rank {rank.rank} line {i}" for i in range(len(tail))]
            assert rank.line_count == len(tail) >= 20  # the launcher reads the file a moment behind
            assert job.log_file(rank) == os.path.abspath(run_dir / f"rank-{rank.rank}.log")
        counted = model.ranks[0].line_count
        follow = asyncio.ensure_future(job.run())
        await asyncio.sleep(1.0)  # live lines arrive after the history, none lost or doubled
        tail = list(model.ranks[0].tail)
        assert len(tail) > counted and tail == [f"rank 0 line {i}" for i in range(len(tail))]
        job.detach()
        await asyncio.wait_for(follow, 5)
        assert job.detached and not job.finished

    asyncio.run(check())
    assert describe_run(str(run_dir)).state == "running"  # the console left, the job did not
    stopped = flextui(job_dir, "stop", "--log-dir", str(job_dir / "runs"), run_dir.name[:12])
    assert stopped.returncode == 0, stopped.stderr
    assert "job aborted (exit code 130)" in stopped.stderr
    assert_ended_cleanly(run_dir, marker, "aborted")


def test_headless_attach_prints_live_lines_and_ctrl_c_detaches(job_dir, marker):
    run_dir = detach(job_dir)
    wait_lines(run_dir, 4, 5)
    proc = start_flextui("attach", "--log-dir", str(job_dir / "runs"), cwd=job_dir)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out.startswith(f"flextui: attached to run {run_dir.name}: 4 ranks on 1 node(s), running")
    assert "[3|localhost] rank 3 line " in out
    assert out.rstrip().endswith("it runs on")
    assert describe_run(str(run_dir)).running
    assert flextui(job_dir, "stop", "--kill", "--log-dir", str(job_dir / "runs"), run_dir.name).returncode == 0
    summary = assert_ended_cleanly(run_dir, marker, "aborted")
    assert summary["stop_reason"] == "killed by user"


def test_two_consoles_both_see_a_stop_from_either(job_dir, marker):
    run_dir = detach(job_dir)
    wait_lines(run_dir, 4, 2)

    async def two() -> tuple:
        first, second = await attached(run_dir), await attached(run_dir)
        runs = [asyncio.ensure_future(first.run()), asyncio.ensure_future(second.run())]
        await asyncio.sleep(0.3)
        second.abort(signal.SIGINT)
        codes = await asyncio.wait_for(asyncio.gather(*runs), 30)
        return first, second, codes

    first, second, codes = asyncio.run(two())
    assert codes == [130, 130]
    for job in (first, second):
        assert job.ended and job.model.state is JobState.ABORTED
        assert job.model.stop_reason == "aborted by user (SIGINT)"
        assert all(r.status is RankStatus.KILLED and r.stopped for r in job.model.ranks)
    assert first.notices == [f"another console (pid {os.getpid()}) aborted the job (SIGINT)"]
    assert second.notices == []
    assert_ended_cleanly(run_dir, marker, "aborted")


def test_one_console_detaching_leaves_the_others_attached(job_dir, marker):
    run_dir = detach(job_dir)

    async def scenario() -> ClientJob:
        leaving, staying = await attached(run_dir), await attached(run_dir)
        follow = asyncio.ensure_future(staying.run())
        leaving.detach()
        await asyncio.sleep(0.5)
        assert not follow.done() and staying.model.state is JobState.RUNNING
        before = staying.model.ranks[0].line_count
        await asyncio.sleep(0.5)
        assert staying.model.ranks[0].line_count > before  # still fed
        staying.kill()
        await asyncio.wait_for(follow, 30)
        return staying

    staying = asyncio.run(scenario())
    assert staying.model.state is JobState.ABORTED
    assert_ended_cleanly(run_dir, marker, "aborted")


def test_kill_9_of_the_supervisor_stops_every_process_and_ls_says_supervisor_lost(job_dir, marker):
    run_dir = detach(job_dir)
    wait_lines(run_dir, 4, 2)
    pid = supervisor_pid(run_dir)
    workers = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    assert len(workers) >= 5  # the supervisor, the launcher... and four ranks

    async def watch_it_die() -> ClientJob:
        console = await attached(run_dir)  # an attached console sees its supervisor go
        follow = asyncio.ensure_future(console.run())
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)
        await asyncio.wait_for(follow, 10)
        return console

    console = asyncio.run(watch_it_die())
    assert console.lost.startswith(f"supervisor lost (pid {pid})") and not console.ended
    assert console.model.state is JobState.FAILED and console.model.error == console.lost
    assert all(r.status is RankStatus.LOST for r in console.model.ranks)
    assert survivors(marker, timeout=15) == []
    entry = describe_run(str(run_dir))
    assert entry.state == "supervisor lost" and not entry.running
    listed = json.loads(flextui(job_dir, "ls", "--json", "--log-dir", str(job_dir / "runs")).stdout)
    assert [(r["id"], r["state"]) for r in listed] == [(run_dir.name, "supervisor lost")]
    refused = flextui(job_dir, "attach", "--log-dir", str(job_dir / "runs"), run_dir.name)
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "is not running: its supervisor" in refused.stderr and f"flextui open {run_dir.name}" in refused.stderr
    opened = RecordedJob(str(run_dir))  # what was recorded, every rank lost with the supervisor
    assert opened.model.state is JobState.FAILED and "supervisor lost" in opened.model.error
    assert all(r.status is RankStatus.LOST and r.line_count >= 2 for r in opened.model.ranks)


def test_sighup_to_the_terminal_a_detached_job_came_from_changes_nothing(job_dir, marker):
    """`flextui --detach` typed in a real terminal (tmux), which then closes: every
    process of its session gets SIGHUP; the job does not notice."""
    socket_name = f"flextui-detach-{os.getpid()}-{time.monotonic_ns()}"
    command = " ".join(flextui_argv("--detach", *args_for(job_dir), *job_argv(job_dir)))
    subprocess.run(["tmux", "-L", socket_name, "new-session", "-d", "-s", "t", "-x", "120", "-y", "30",
                    f"cd {job_dir} && {command}; echo done > {job_dir}/detached; exec sleep 600"], check=True)
    try:
        wait_for(lambda: (job_dir / "detached").exists(), 30, "the command to return")
        run_dir = next((job_dir / "runs").iterdir())
        wait_lines(run_dir, 4, 2)
    finally:
        subprocess.run(["tmux", "-L", socket_name, "kill-server"], capture_output=True)  # SIGHUP to the session
    counted = len(file_lines(run_dir / "rank-0.log"))
    time.sleep(1.5)
    assert describe_run(str(run_dir)).running
    assert len(file_lines(run_dir / "rank-0.log")) > counted  # still writing
    assert flextui(job_dir, "stop", "--log-dir", str(job_dir / "runs"), run_dir.name).returncode == 0
    assert_ended_cleanly(run_dir, marker, "aborted")


def test_a_detached_job_that_ends_completes_its_record(job_dir, marker):
    run_dir = detach(job_dir, "--lines", "50", "--fail", "2", "--after", "0.3")
    wait_for(lambda: (run_dir / "summary.json").exists(), 30, "the job to end")
    summary = assert_ended_cleanly(run_dir, marker, "failed")
    assert (summary["exit_code"], summary["first_failure"]) == (3, 2)
    card = json.loads((run_dir / "run.json").read_text())
    assert card["first_failure"] == {"rank": 2, "host": "localhost", "outcome": "exit 3", "exit_status": 3}
    refused = flextui(job_dir, "attach", "--log-dir", str(job_dir / "runs"))
    assert refused.returncode == 1 and "no running job under" in refused.stderr
    refused = flextui(job_dir, "attach", "--log-dir", str(job_dir / "runs"), run_dir.name)
    assert refused.returncode == 1 and "has finished (failed 3)" in refused.stderr
    assert f"flextui open {run_dir.name}" in refused.stderr


def test_a_detach_that_cannot_start_says_why_and_starts_nothing(job_dir, marker):
    result = run_flextui("--detach", *args_for(job_dir), str(job_dir / "hostfile"), str(job_dir / "missing.py"),
                         str(job_dir) + os.sep, cwd=job_dir)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "missing.py" in result.stderr, result.stderr
    assert result.stdout == ""
    assert not (job_dir / "runs").exists() or not any((job_dir / "runs").iterdir())
    assert survivors(marker, timeout=5) == []  # no supervisor either: it carries the marker too
    bad = run_flextui("--detach", *args_for(job_dir), str(job_dir / "nohostfile"), "x.py", cwd=job_dir)
    assert bad.returncode == 2 and bad.stderr.startswith("flextui: error: ") and bad.stderr.count("\n") == 1


def test_save_pid_names_the_supervisor_of_a_detached_job(job_dir, marker):
    """DeepSpeed's --save_pid: /tmp/<pid of the command>.deepspeed holds the pid that,
    sent SIGTERM, stops the whole job; it is removed at the end."""
    if "--save_pid" not in run_flextui("--help", cwd=job_dir).stdout:
        pytest.skip("--save_pid comes with issue 14's DeepSpeed options")
    proc = subprocess.Popen(flextui_argv("--detach", "--save_pid", *args_for(job_dir), *job_argv(job_dir)),
                            cwd=job_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    pid_file = Path(f"/tmp/{proc.pid}.deepspeed")
    run_dir = job_dir / "runs" / out.split()[2].rstrip(":")
    assert int(pid_file.read_text()) == supervisor_pid(run_dir)
    os.kill(int(pid_file.read_text()), signal.SIGTERM)
    wait_for(lambda: not pid_file.exists(), 30, "the pid file to go")
    summary = assert_ended_cleanly(run_dir, marker, "aborted")
    assert (summary["exit_code"], summary["stop_reason"]) == (143, "aborted by user (SIGTERM)")


def test_ls_states_and_open_of_a_finished_4_rank_run(job_dir, marker):
    logs = ["--log-dir", str(job_dir / "runs")]
    ok = flextui(job_dir, "--headless", *args_for(job_dir), *job_argv(job_dir, "--lines", "30", "--every", "0"))
    assert ok.returncode == 0, ok.stderr
    failed = flextui(job_dir, "--headless", *args_for(job_dir),
                     *job_argv(job_dir, "--lines", "500", "--fail", "1", "--after", "0.2"))
    assert failed.returncode == 3
    running = detach(job_dir)
    aborted = detach(job_dir)
    assert flextui(job_dir, "stop", *logs, aborted.name).returncode == 0
    lost = detach(job_dir)
    os.kill(supervisor_pid(lost), signal.SIGKILL)
    wait_for(lambda: not describe_run(str(lost)).running, 10)

    listed = json.loads(flextui(job_dir, "ls", "--json", *logs).stdout)
    states = {r["id"]: (r["state_text"], r["ranks"], r["nodes"]) for r in listed}
    finished_ok = next(r["id"] for r in listed if r["state"] == "succeeded")
    finished_failed = next(r["id"] for r in listed if r["state"] == "failed")
    assert states == {finished_ok: ("succeeded", 4, 1), finished_failed: ("failed 3", 4, 1),
                      running.name: ("running", 4, 1), aborted.name: ("aborted", 4, 1),
                      lost.name: ("supervisor lost", 4, 1)}
    failure = next(r for r in listed if r["id"] == finished_failed)["first_failure"]
    assert (failure["rank"], failure["host"], failure["outcome"]) == (1, "localhost", "exit 3")
    assert next(r for r in listed if r["id"] == running.name)["pid"] == supervisor_pid(running)
    table = flextui(job_dir, "ls", *logs).stdout.splitlines()
    assert table[0].split() == ["RUN", "STATE", "RANKS", "STARTED", "DURATION", "FIRST", "FAILURE"]
    assert any(line.startswith(finished_failed) and "failed 3" in line and "rank 1 on localhost: exit 3" in line
               for line in table)

    # open: every rank's outcome and its lines, from the run directory alone
    run_dir = job_dir / "runs" / finished_failed
    job = RecordedJob(str(run_dir))
    summary = read_summary(run_dir)
    assert [(r.status.value, r.code, r.signal, r.stopped, r.pid) for r in job.model.ranks] == [
        (r["status"], r["code"], r["signal"], r["stopped"], r["pid"]) for r in summary["ranks"]]
    assert (job.model.state.value, job.model.exit_code, job.model.first_failure.rank) == ("failed", 3, 1)
    for rank in job.model.ranks:
        assert list(rank.tail) == file_lines(run_dir / f"rank-{rank.rank}.log")[-len(rank.tail):]
        assert rank.line_count == summary["ranks"][rank.rank]["lines"]
    assert job.model.ranks[1].tail[-1] == "rank 1 fails"
    # open by a prefix of the id: the shortest past "date-time-" that names one run (runs
    # started in the same second share their first 16 characters, and may share more)
    others = [r["id"] for r in listed if r["id"] != finished_failed]
    prefix = next(finished_failed[:n] for n in range(17, len(finished_failed) + 1)
                  if not any(other.startswith(finished_failed[:n]) for other in others))
    opened = flextui(job_dir, "open", *logs, prefix)
    assert opened.returncode == 0 and opened.stdout.splitlines()[1:] == failed.stdout.splitlines()[-6:]
    still = flextui(job_dir, "open", *logs, running.name)
    assert still.returncode == 1 and f"still running: `flextui attach {running.name}`" in still.stderr
    ambiguous = flextui(job_dir, "open", *logs, "2")
    assert ambiguous.returncode == 1 and "names 5 runs" in ambiguous.stderr
    assert flextui(job_dir, "stop", *logs, running.name).returncode == 0
    assert survivors(marker, timeout=15) == []
    assert all(e.state != "running" for e in list_runs(str(job_dir / "runs")))


def test_headless_jobs_are_served_too(job_dir, marker):
    """A --headless job keeps its job in-process, and `attach`/`stop` reach it all the same."""
    proc = start_flextui("--headless", *args_for(job_dir), *job_argv(job_dir), cwd=job_dir)
    runs = job_dir / "runs"
    wait_for(lambda: runs.exists() and any((p / "supervisor.sock").exists() for p in runs.iterdir()), 30)
    run_dir = next(runs.iterdir())
    assert supervisor_pid(run_dir) == proc.pid

    async def look() -> ClientJob:
        job = await attached(run_dir)
        job.detach()
        return job

    assert len(asyncio.run(look()).model.ranks) == 4
    assert flextui(job_dir, "stop", "--log-dir", str(runs), run_dir.name).returncode == 0
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "job aborted (exit code 130)" in out
    assert_ended_cleanly(run_dir, marker, "aborted")


OTHER_USER = "flextui-other"


@pytest.fixture(scope="module")
def other_user():
    """A real second account (this machine runs the tests as root), and a python it can run
    flextui with: ours, unless it lives where that user cannot go (pyenv under /root),
    then the system's of the same version with our packages on its path."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create a user")
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER_USER], check=True)
    import sysconfig

    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (PY, f"/usr/bin/{version}"):
        if subprocess.run(["runuser", "-u", OTHER_USER, "--", python, "-c", "pass"], capture_output=True,
                          cwd="/tmp").returncode == 0:
            return OTHER_USER, python, sysconfig.get_paths()["purelib"]
    raise AssertionError(f"user {OTHER_USER} can run neither {PY} nor /usr/bin/{version}")


PROBE = r'''
import asyncio, sys
from flextui.client import AttachError, ClientJob
async def main():
    try:
        job = await ClientJob.connect(sys.argv[1], role="stop", read_logs=False)
    except AttachError as exc:
        print("REFUSED", exc)
        return
    job.kill()
    print("ATTACHED")
asyncio.run(main())
'''

# A console that skips its own check of the supervisor's uid: says hello and asks for a
# kill, prints what comes back.
RAW_PROBE = r'''
import socket, sys
from flextui import wire
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
sock.sendall(wire.json_frame({"op": "hello", "role": "stop"}) + wire.json_frame({"op": "kill"}))
print(wire.recv_frame_blocking(sock))
print(wire.recv_frame_blocking(sock))
'''


def test_another_uid_can_neither_attach_nor_stop(job_dir, marker, other_user):
    import tempfile

    logs = Path(tempfile.mkdtemp(prefix="flextui-uid-"))  # pytest's own tmp is root's alone
    os.chmod(logs, 0o755)  # the directories above the run: the other user may look in
    result = run_flextui("--detach", *args_for(job_dir), "--log-dir", str(logs), *job_argv(job_dir), cwd=job_dir)
    assert result.returncode == 0, result.stderr
    run_dir = next(logs.iterdir())
    user, python, site = other_user
    as_other = ["runuser", "-u", user, "--"]
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).resolve().parent.parent}:{site}", "HOME": "/tmp"}

    def probe() -> str:
        result = subprocess.run([*as_other, python, "-c", PROBE, str(run_dir)], capture_output=True, text=True,
                                env=env, timeout=60, cwd="/tmp")
        return result.stdout.strip() or result.stderr

    # the run directory (0700) keeps them out
    answer = probe()
    assert answer.startswith("REFUSED") and "permission denied" in answer, answer
    stop = subprocess.run([*as_other, python, "-m", "flextui", "stop", str(run_dir)], capture_output=True, text=True,
                          env=env, timeout=60, cwd="/tmp")
    assert stop.returncode == 1 and stop.stderr.count("\n") == 1 and "ermission denied" in stop.stderr
    # and were the directory and the socket opened to them, the supervisor checks who calls
    os.chmod(run_dir, 0o755)
    os.chmod(run_dir / "supervisor.sock", 0o777)
    answer = probe()  # the console's own check: the socket is not its user's
    assert answer == f"REFUSED the socket's owner is uid {os.geteuid()}, not you: refusing to talk to it"
    raw = subprocess.run([*as_other, python, "-c", RAW_PROBE, str(run_dir / "supervisor.sock")],
                         capture_output=True, text=True, env=env, timeout=60, cwd="/tmp")
    assert raw.stdout.splitlines() == [  # the supervisor's: refused, closed, nothing done
        f"{{'op': 'refused', 'reason': 'permission denied: this job belongs to uid {os.geteuid()}'}}", "None"]
    time.sleep(0.5)
    assert describe_run(str(run_dir)).running
    assert flextui(job_dir, "stop", str(run_dir)).returncode == 0
    assert_ended_cleanly(run_dir, marker, "aborted")
    subprocess.run(["rm", "-rf", str(logs)])


def test_a_job_over_before_its_console_is_up_still_shows_its_end(job_dir, marker):
    """The TUI loads Textual after the supervisor said "ready"; a short job may end before
    the console says hello: it still gets the whole run and "ended", not a closed socket."""
    import socket

    from flextui import wire

    ours, theirs = socket.socketpair()
    supervisor = subprocess.Popen(
        [PY, "-m", "flextui.supervisor", "--lifeline", str(theirs.fileno()), "--command-pid", str(os.getpid()),
         "--", *args_for(job_dir), *job_argv(job_dir, "--lines", "20", "--every", "0")],
        pass_fds=[theirs.fileno()], cwd=job_dir, stdin=subprocess.DEVNULL, start_new_session=True)
    theirs.close()
    ready = wire.recv_frame_blocking(ours)
    assert ready["op"] == "ready"
    run_dir = job_dir / ready["run_path"]
    wait_for(lambda: (run_dir / "summary.json").exists(), 30, "the job to end")
    time.sleep(1.0)  # a slow console

    async def late() -> ClientJob:
        job = await ClientJob.open(ours, owner=True)
        assert await job.run() == 0
        return job

    job = asyncio.run(late())
    assert job.ended and job.model.state is JobState.SUCCEEDED
    assert [list(r.tail)[-1] for r in job.model.ranks] == [f"rank {r} line 19" for r in range(4)]
    assert supervisor.wait(10) == 0
    assert_ended_cleanly(run_dir, marker, "succeeded")
