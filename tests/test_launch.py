"""The node launcher run directly (`python -m flextui.launch`, its spec the first line on
stdin): real workers, real signals, its JSON-lines protocol read the way the console reads it."""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

import flextui.launch
from tests.helpers import (  # noqa: F401 - fixtures
    PY, Launcher, SharedCommand, logs_contain, marker, node_spec, pids_alive, read_text, sigterms_received,
    spec_line, survivors, wait_for, worker, write_term_counter,
)


def argvs(worker: Path, count: int, *args: str) -> SharedCommand:
    """`count` workers running `PY worker --local_rank=N args` (the console's shape)."""
    return SharedCommand([PY, str(worker)], list(args), count)


def worker_pids(launcher: Launcher) -> list[int]:
    return [e["pid"] for e in launcher.of("started")]


def child_pids(log_dir: Path, ranks, word: str = "child") -> list[int]:
    pids = []
    for r in ranks:
        for line in read_text(log_dir / f"rank-{r}.log").splitlines():
            if line.startswith(word + " "):
                pids.append(int(line.split()[1]))
    return pids


def assert_all_gone(marker: str, pids=()) -> None:
    assert survivors(marker) == []
    assert pids_alive(pids) == [], "not reaped (zombie) or still running"


def test_protocol_events_in_order_and_logs(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    pid_file = tmp_path / "launcher.pid"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 3, "--run-for", "0.3")),
                        "--save_pid", str(pid_file))
    assert launcher.finish() == 0, launcher.stderr
    events = launcher.events
    kinds = [e["ev"] for e in events]

    hello = events[0]
    assert hello["ev"] == "hello" and hello["v"] == 1 and hello["node_rank"] == 0
    assert hello["pid"] == launcher.proc.pid and hello["host"] == socket.gethostname()
    assert pid_file.read_text() == f"{launcher.proc.pid}\n"
    assert kinds[-1] == "done" and events[-1]["code"] == 0
    assert "stopping" not in kinds and "error" not in kinds and "killing" not in kinds

    started = launcher.of("started")
    assert [e["rank"] for e in started] == [0, 1, 2]
    assert kinds.index("started") == 1, "workers start right after hello"
    for rank in range(3):
        start_at = events.index(launcher.of("started", rank)[0])
        (exited,) = launcher.of("exited", rank)
        exit_at = events.index(exited)
        outs = [events.index(e) for e in launcher.of("out", rank)]
        assert outs and all(start_at < i < exit_at for i in outs)
        assert exited["code"] == 0 and exited["signal"] is None and exited["stopped"] is False
        assert hello["t"] <= launcher.of("started", rank)[0]["t"] <= exited["t"] <= events[-1]["t"]
        # The worker's own pid is the one reported, and every byte it wrote is in both
        # its log file and the out events.
        log = (log_dir / f"rank-{rank}.log").read_text()
        assert f"ready rank {rank} pid {started[rank]['pid']}\n" in log
        assert launcher.output(rank) == log
    assert sorted(os.listdir(log_dir)) == ["rank-0.log", "rank-1.log", "rank-2.log"]
    assert pids_alive(worker_pids(launcher)) == []


@pytest.mark.parametrize("how", ["stdin EOF", "stop command"])
def test_console_gone_or_stop_stops_every_tree(tmp_path, marker, worker, how):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--children", "2")))
    launcher.started(2)
    wait_for(lambda: logs_contain(log_dir, range(2), "ready rank"), what="workers ready")
    children = child_pids(log_dir, range(2))
    assert len(children) == 4
    began = time.monotonic()
    if how == "stdin EOF":
        launcher.close_stdin()
    else:
        launcher.send({"cmd": "stop", "reason": "test says stop"})
    code = launcher.finish()
    assert time.monotonic() - began < 5, "stopped by SIGTERM, well inside the 10 s grace"
    (stopping,) = launcher.of("stopping")
    assert stopping["reason"] == ("console gone (stdin closed)" if how == "stdin EOF" else "test says stop")
    for rank in range(2):
        (exited,) = launcher.of("exited", rank)
        assert exited["stopped"] is True and exited["signal"] == signal.SIGTERM
    assert launcher.events[-1]["ev"] == "done" and code == launcher.events[-1]["code"] != 0
    assert_all_gone(marker, worker_pids(launcher) + children)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_signal_stops_every_tree(tmp_path, marker, worker, sig):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--children", "1")))
    launcher.started(2)
    wait_for(lambda: logs_contain(log_dir, range(2), "ready rank"), what="workers ready")
    launcher.proc.send_signal(sig)
    assert launcher.finish() == 128 + sig
    assert launcher.of("stopping")[0]["reason"] == f"launcher got {signal.Signals(sig).name}"
    assert all(e["stopped"] for e in launcher.of("exited")) and len(launcher.of("exited")) == 2
    assert launcher.events[-1] == {**launcher.events[-1], "ev": "done", "code": 128 + sig}
    assert_all_gone(marker, worker_pids(launcher) + child_pids(log_dir, range(2)))


def test_first_failure_stops_the_others_and_is_the_exit_code(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 3, "--children", "1", "--fail", "1",
                                                 "--code", "3", "--after", "0.5")))
    assert launcher.finish() == 3
    (failed,) = launcher.of("exited", 1)
    assert failed["code"] == 3 and failed["signal"] is None and failed["stopped"] is False
    (stopping,) = launcher.of("stopping")
    assert stopping["reason"] == "rank 1 failed"
    assert launcher.events.index(failed) < launcher.events.index(stopping)
    for rank in (0, 2):
        (exited,) = launcher.of("exited", rank)
        assert exited["stopped"] is True and exited["signal"] == signal.SIGTERM
    assert launcher.events[-1]["code"] == 3
    assert_all_gone(marker, worker_pids(launcher) + child_pids(log_dir, range(3)))


def test_a_rank_killed_by_a_signal_exits_128_plus_it(tmp_path, marker, worker):
    launcher = Launcher(node_spec(tmp_path / "logs", argvs(worker, 2, "--kill-self", "0", "--after", "0.2")))
    assert launcher.finish() == 128 + signal.SIGKILL
    (exited,) = launcher.of("exited", 0)
    assert exited["signal"] == signal.SIGKILL and exited["code"] is None and not exited["stopped"]
    assert launcher.of("exited", 1)[0]["stopped"] is True
    assert_all_gone(marker, worker_pids(launcher))


@pytest.mark.parametrize("problem", ["missing", "not executable"])
def test_a_worker_that_cannot_start(tmp_path, marker, worker, problem):
    program = tmp_path / "no-such-program"
    if problem == "not executable":
        program.write_text("#!/bin/sh\necho hi\n")
    log_dir = tmp_path / "logs"
    sleeper = [PY, str(worker), "--local_rank=0"]
    launcher = Launcher(node_spec(log_dir, [sleeper, [str(program)], sleeper]))
    assert launcher.finish(timeout=10) == 127
    (error,) = launcher.of("error")
    assert error["rank"] == 1 and str(program) in error["message"]
    assert error["message"].startswith("cannot start rank 1: ")
    assert launcher.of("exited", 1)[0]["code"] == 127
    assert "cannot start rank 1" in (log_dir / "rank-1.log").read_text()
    assert launcher.of("exited", 0)[0]["stopped"] is True
    # The rank after the one that could not start is never started (and not waited for).
    assert launcher.of("started", 2) == [] and launcher.of("exited", 2) == []
    assert launcher.events[-1]["ev"] == "done"
    assert_all_gone(marker, worker_pids(launcher))


@pytest.mark.parametrize("orphan_ignores_term", [False, True])
def test_orphaned_grandchild_is_adopted_and_stopped(tmp_path, marker, worker, orphan_ignores_term):
    """A worker's daemonised grandchild (double fork + setsid) is re-parented to the
    launcher (child subreaper), not init, so stopping the job stops it too."""
    log_dir = tmp_path / "logs"
    extra = ["--orphan-ignores-term"] if orphan_ignores_term else []
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--orphan", *extra)), grace=0.5)
    launcher.started(2)
    wait_for(lambda: logs_contain(log_dir, range(2), "ready rank"), what="workers ready")
    orphans = child_pids(log_dir, range(2), "orphan")
    assert len(orphans) == 2
    for pid in orphans:
        orphan = psutil.Process(pid)
        assert orphan.ppid() == launcher.proc.pid, "adopted by the launcher"
        assert os.getsid(pid) not in (os.getsid(launcher.proc.pid), *(os.getsid(w) for w in worker_pids(launcher)))
    launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.finish() == 128 + signal.SIGTERM
    assert bool(launcher.of("killing")) is orphan_ignores_term
    assert_all_gone(marker, worker_pids(launcher) + orphans)


def test_workers_done_but_orphans_left_are_stopped(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--orphan", "--run-for", "0.2")))
    assert launcher.finish() == 0
    assert [e["code"] for e in launcher.of("exited")] == [0, 0]
    assert "leftover children" in launcher.of("stopping")[0]["reason"]
    assert_all_gone(marker, worker_pids(launcher) + child_pids(log_dir, range(2), "orphan"))


def test_no_zombies_while_running_or_after(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    quick = [PY, str(worker), "--local_rank=0", "--run-for", "0.1"]
    slow = [PY, str(worker), "--local_rank=1", "--children", "2"]
    launcher = Launcher(node_spec(log_dir, [quick, slow]))
    launcher.wait_event(lambda e: e["ev"] == "exited" and e["rank"] == 0)
    quick_pid = launcher.of("started", 0)[0]["pid"]
    # Reaped at once: not even a zombie left while the job goes on.
    assert pids_alive([quick_pid], timeout=2) == []
    me = psutil.Process(launcher.proc.pid)
    assert not [c for c in me.children(recursive=True) if c.status() == psutil.STATUS_ZOMBIE]
    assert launcher.of("stopping") == [] and launcher.proc.poll() is None
    launcher.close_stdin()
    launcher.finish()
    assert_all_gone(marker, worker_pids(launcher) + child_pids(log_dir, [1]))


@pytest.mark.slow
def test_sigterm_ignoring_worker_is_killed_after_the_grace(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--ignore-term", "0", "--children", "1")),
                        grace=0.7)
    launcher.started(2)
    wait_for(lambda: logs_contain(log_dir, range(2), "ready rank"), what="workers ready")
    launcher.send({"cmd": "stop"})
    launcher.finish()
    (stopping,), (killing,) = launcher.of("stopping"), launcher.of("killing")
    assert stopping["grace"] == 0.7
    assert 0.6 <= killing["t"] - stopping["t"] <= 3.0
    assert killing["count"] >= 2  # rank 0 and its child (it ignores SIGTERM too)
    assert launcher.of("exited", 0)[0]["signal"] == signal.SIGKILL
    assert launcher.of("exited", 1)[0]["signal"] == signal.SIGTERM
    assert "rank 0 ignoring SIGTERM" in (log_dir / "rank-0.log").read_text()
    assert_all_gone(marker, worker_pids(launcher) + child_pids(log_dir, range(2)))


def test_kill_command_does_not_wait_for_the_grace(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--ignore-term", "0,1")), grace=60)
    launcher.started(2)
    wait_for(lambda: logs_contain(log_dir, range(2), "ready rank"), what="workers ready")
    began = time.monotonic()
    launcher.send({"cmd": "kill"})
    launcher.finish()
    assert time.monotonic() - began < 5
    assert [e["signal"] for e in launcher.of("exited")] == [signal.SIGKILL] * 2
    assert_all_gone(marker, worker_pids(launcher))


def test_stop_rank_stops_only_that_rank(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--children", "1")))
    launcher.started(2)
    wait_for(lambda: logs_contain(log_dir, range(2), "ready rank"), what="workers ready")
    rank1_tree = [launcher.of("started", 1)[0]["pid"], *child_pids(log_dir, [1])]
    launcher.send({"cmd": "stop_rank", "rank": 1})
    exited = launcher.wait_event(lambda e: e["ev"] == "exited")
    assert exited["rank"] == 1 and exited["stopped"] is True
    assert pids_alive(rank1_tree) == []
    time.sleep(0.3)
    assert launcher.of("exited", 0) == [] and launcher.of("stopping") == []
    assert launcher.proc.poll() is None
    launcher.close_stdin()
    launcher.finish()
    assert_all_gone(marker, worker_pids(launcher) + child_pids(log_dir, range(2)))


def test_partial_last_line_and_undecodable_bytes_reach_the_console(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, argvs(worker, 1, "--fail", "0", "--code", "4", "--bytes",
                                                 "--partial", "no newline here", "--after", "0")))
    assert launcher.finish() == 4
    raw = (log_dir / "rank-0.log").read_bytes()
    assert raw.endswith(b"bad bytes \xff\xfe end\nno newline here")
    assert launcher.output(0).encode("utf-8", "surrogateescape") == raw
    outs = launcher.of("out", 0)
    assert all(e["data"].endswith("\n") for e in outs[:-1]), "whole lines except the last"
    assert launcher.events.index(outs[-1]) < launcher.events.index(launcher.of("exited", 0)[0])


@pytest.mark.slow  # a flood
def test_every_line_of_a_flood_is_streamed_and_logged(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    lines = 200_000
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--lines", str(lines), "--lines-ranks", "0",
                                                 "--run-for", "0.5")))
    assert launcher.finish(timeout=60) == 0
    expected = "".join(f"rank 0 line {i} of {lines}\n" for i in range(lines))
    log = (log_dir / "rank-0.log").read_text()
    assert log == expected
    assert launcher.output(0) == expected
    assert all(e["data"].endswith("\n") for e in launcher.of("out", 0))


@pytest.mark.parametrize("stdin", ["file", "devnull"])
def test_stdin_that_is_no_console_is_not_watched(tmp_path, marker, worker, stdin):
    """No console to watch: stdin a regular file (its first line the spec) or /dev/null
    (the spec from --spec-file, by hand): the job just runs to its end."""
    launcher = Launcher(node_spec(tmp_path / "logs", argvs(worker, 2, "--run-for", "0.5")), stdin=stdin)
    assert launcher.finish() == 0
    assert launcher.of("stopping") == []
    assert b"Traceback" not in launcher.stderr
    assert [e["code"] for e in launcher.of("exited")] == [0, 0]


def test_worker_environment_cwd_and_logs_dir(tmp_path, marker, worker):
    log_dir = tmp_path / "deep" / "logs"  # created by the launcher
    work = tmp_path / "work"
    work.mkdir()
    launcher = Launcher(node_spec(log_dir, argvs(worker, 2, "--env", "--run-for", "0"),
                                  env={"FLEXTUI_TEST_VAR": "node-wide"}, cwd=str(work)))
    assert launcher.finish() == 0
    import json

    for rank in range(2):
        line = next(l for l in launcher.output(rank).splitlines() if l.startswith("ENV "))
        report = json.loads(line[4:])
        assert report["cwd"] == str(work)
        assert report["env"]["RANK"] == str(rank) and report["env"]["LOCAL_RANK"] == str(rank)
        assert report["env"]["FLEXTUI_TEST_VAR"] == "node-wide"
        assert report["pid"] == launcher.of("started", rank)[0]["pid"]


def test_launcher_is_self_contained():
    """The SSH transport ships launch.py alone: it may import only stdlib and psutil (and
    pynvml, nvidia-ml-py, where a node has it: imported guarded, only to read GPUs)."""
    tree = ast.parse(Path(flextui.launch.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    imported -= {"__future__"}
    import sys

    assert imported - set(sys.stdlib_module_names) == {"psutil", "pynvml"}
    out = subprocess.run([PY, "-c", "import sys, flextui.launch; print(sorted(m for m in sys.modules "
                          "if m.startswith(('torch', 'flextui.'))))"], capture_output=True, text=True)
    assert out.stdout.strip() == "['flextui.launch']"


@pytest.mark.slow  # a flood
def test_a_flood_and_a_huge_line_come_in_bounded_events(tmp_path, marker):
    """However fast a rank writes, one event carries at most ~2 MiB (the console reads
    events as lines); a line longer than that comes in pieces cut on UTF-8 boundaries."""
    code = ("import os, sys\n"
            "os.write(1, 'é'.encode() * 3_000_001 + b'\\n')\n"  # one 6 MB line of 2-byte chars
            "for i in range(40): os.write(1, b'y' * 999_999 + b'\\n')\n"  # 40 MB as fast as it can
            "os.write(1, b'x' * 5_000_000)\n")  # and a 5 MB last line without newline
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, [[PY, "-c", code, marker]]))
    assert launcher.finish(timeout=60) == 0
    raw = (log_dir / "rank-0.log").read_bytes()
    assert len(raw) == 6_000_003 + 40_000_000 + 5_000_000
    outs = launcher.of("out", 0)
    assert max(len(e["data"].encode("utf-8", "surrogateescape")) for e in outs) <= 2 << 20
    assert max(len(line) for line in launcher.raw) < 16 << 20
    assert "".join(e["data"] for e in outs).encode("utf-8", "surrogateescape") == raw
    assert all(e["data"].isascii() or "\udcc3" not in e["data"] for e in outs), "a split 'é'"


# -- preflight in the launcher's own session (the spec's "preflight") -----------------------


def with_preflight(spec: dict, request: dict) -> dict:
    return {**spec, "preflight": request}


def test_a_preflight_problem_is_reported_and_nothing_starts(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    request = {"cwd": str(tmp_path), "script": "no_such_train.py", "need_psutil": True}
    launcher = Launcher(with_preflight(node_spec(log_dir, argvs(worker, 2)), request))
    assert launcher.finish(timeout=10) == 1, launcher.stderr
    assert [e["ev"] for e in launcher.events] == ["hello", "preflight", "done"]
    assert launcher.of("preflight")[0]["problems"] == [f"script no_such_train.py not found in {tmp_path}"]
    assert launcher.events[-1]["code"] == 1
    assert not log_dir.exists()
    assert_all_gone(marker)


@pytest.mark.slow
def test_a_clean_preflight_starts_nothing_until_go(tmp_path, marker, worker):
    log_dir = tmp_path / "logs"
    request = {"cwd": str(tmp_path), "script": str(worker), "need_psutil": True}
    launcher = Launcher(with_preflight(node_spec(log_dir, argvs(worker, 2, "--run-for", "0.3")), request))
    report = launcher.wait_event(lambda e: e["ev"] == "preflight")
    assert report["problems"] == []
    time.sleep(0.5)
    assert [e["ev"] for e in launcher.events] == ["hello", "preflight"]
    assert psutil.Process(launcher.proc.pid).children(recursive=True) == []
    assert not log_dir.exists() and survivors(marker, timeout=0) == []
    launcher.send({"cmd": "ping"})  # pings keep it waiting
    time.sleep(0.2)
    assert launcher.of("started") == []
    launcher.send({"cmd": "go"})
    assert [e["rank"] for e in launcher.started(2)] == [0, 1]
    assert launcher.finish() == 0, launcher.stderr
    kinds = [e["ev"] for e in launcher.events]
    assert kinds[:3] == ["hello", "preflight", "started"] and kinds[-1] == "done"
    assert sorted(os.listdir(log_dir)) == ["rank-0.log", "rank-1.log"]
    assert_all_gone(marker, worker_pids(launcher))


@pytest.mark.parametrize("how, code", [("eof", 0), ("stop", 0), ("kill", 0), ("sigterm", 128 + signal.SIGTERM),
                                       ("console timeout", 0)])
def test_ended_while_waiting_for_go_starts_nothing(tmp_path, marker, worker, how, code):
    log_dir = tmp_path / "logs"
    request = {"cwd": str(tmp_path), "script": str(worker)}
    timeout = 0.5 if how == "console timeout" else 0.0
    launcher = Launcher(with_preflight(node_spec(log_dir, argvs(worker, 2)), request), console_timeout=timeout)
    assert launcher.wait_event(lambda e: e["ev"] == "preflight")["problems"] == []
    if how == "eof":
        launcher.close_stdin()
    elif how in ("stop", "kill"):
        launcher.send({"cmd": how})
    elif how == "sigterm":
        launcher.proc.send_signal(signal.SIGTERM)
    assert launcher.finish(timeout=10) == code, launcher.stderr
    assert [e["ev"] for e in launcher.events] == ["hello", "preflight", "done"]
    assert launcher.events[-1]["code"] == code
    assert not log_dir.exists()
    assert_all_gone(marker)


def test_psutil_missing_on_the_node_is_a_preflight_problem_not_a_traceback(tmp_path, worker):
    """`python -S`: no site-packages, so no psutil (the launcher runs as a plain file, as
    the SSH and Slurm transports ship it)."""
    source = Path(flextui.launch.__file__)
    spec = {**node_spec(tmp_path / "logs", argvs(worker, 1)), "grace": 10.0}
    request = {"cwd": str(tmp_path), "script": str(worker), "need_psutil": True}
    result = subprocess.run([PY, "-S", str(source)], input=spec_line(with_preflight(spec, request)),
                            capture_output=True, timeout=30)
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.returncode == 1 and b"Traceback" not in result.stderr, result.stderr
    assert [e["ev"] for e in events] == ["hello", "preflight", "done"]
    (problem,) = events[1]["problems"]
    assert problem.startswith("psutil is not installed for ")
    # Without a preflight in the spec: one clear line, still no traceback.
    result = subprocess.run([PY, "-S", str(source)], input=spec_line(spec), capture_output=True, timeout=30)
    assert result.returncode == 1 and result.stdout == b""
    assert "psutil is not installed for " in result.stderr.decode().strip().splitlines()[-1]
    assert b"Traceback" not in result.stderr


# -- the spec on stdin (issue 9 defect 7) ------------------------------------------------


def test_a_shared_channel_picks_this_nodes_spec_and_ignores_other_nodes_commands(tmp_path, marker, worker):
    """mpirun gives every node's launcher the same stdin: one message holds every node's
    spec, the launcher takes the one its environment points at, and commands addressed to
    another node are not for it."""
    specs = [{**node_spec(tmp_path / f"logs{n}", argvs(worker, 1)), "node_rank": n, "grace": 10.0}
             for n in range(3)]
    message = {"cmd": "spec", "specs": specs, "index_env": ["FLEXTUI_TEST_NO_SUCH_VAR", "PMI_RANK"]}
    launcher = Launcher(specs[0], env={"PMI_RANK": "2"}, first_line=(json.dumps(message) + "\n").encode())
    assert launcher.wait_event(lambda e: e["ev"] == "hello")["node_rank"] == 2
    launcher.started(1)
    wait_for(lambda: logs_contain(tmp_path / "logs2", [0], "ready rank"), what="the worker ready")
    assert not (tmp_path / "logs0").exists() and not (tmp_path / "logs1").exists()
    launcher.send({"cmd": "stop", "node": 0, "reason": "for node 0"})
    launcher.send({"cmd": "stop", "node": 1, "reason": "for node 1"})
    time.sleep(0.5)
    assert launcher.of("stopping") == [] and launcher.proc.poll() is None
    launcher.send({"cmd": "stop", "node": 2, "reason": "for node 2"})
    launcher.finish()
    assert [e["reason"] for e in launcher.of("stopping")] == ["for node 2"]
    assert_all_gone(marker, worker_pids(launcher))


def test_commands_right_behind_the_spec_are_not_lost(tmp_path, marker, worker):
    spec = {**node_spec(tmp_path / "logs", argvs(worker, 2)), "grace": 10.0}
    stop = (json.dumps({"cmd": "stop", "reason": "sent with the spec"}) + "\n").encode()
    launcher = Launcher(spec, first_line=spec_line(spec) + stop)  # one write: one read on the node
    launcher.finish(timeout=10)
    assert [e["reason"] for e in launcher.of("stopping")] == ["sent with the spec"]
    assert_all_gone(marker, worker_pids(launcher))


def assert_refused(launcher: Launcher, error: str, log_dir: Path, marker: str) -> None:
    """A bad spec: exit 2, one line saying `error`, no event, no log directory, no process."""
    launcher.close_stdin()
    assert launcher.finish(timeout=10) == 2
    assert launcher.events == []
    (line,) = launcher.stderr.decode().strip().splitlines()
    assert line.startswith("python -m flextui.launch: ") and error in line, line
    assert not log_dir.exists()
    assert_all_gone(marker)


@pytest.mark.parametrize("first_line, error", [
    (b"", "no spec on stdin"),
    (b"\n", "no spec on stdin"),
    (b"not json\n", "bad spec: "),
    (b'{"cmd": "go"}\n', 'the first line on stdin must be {"cmd": "spec", ..}'),
    (b'{"cmd": "spec", "specs": [{}, {}], "index_env": ["FLEXTUI_TEST_NO_SUCH_VAR"]}\n',
     "none of FLEXTUI_TEST_NO_SUCH_VAR is set: cannot tell which of 2 node specs is this node's"),
])
def test_no_or_a_bad_spec_is_one_line_and_starts_nothing(tmp_path, marker, worker, first_line, error):
    launcher = Launcher(node_spec(tmp_path / "logs", argvs(worker, 1)), first_line=first_line)
    assert_refused(launcher, error, tmp_path / "logs", marker)


@pytest.mark.parametrize("grace, error", [(None, 'bad spec: no "grace"'),
                                          ("soon", "bad spec: could not convert string to float"),
                                          ([1], 'bad spec: "grace" must be a number of seconds')])
def test_a_spec_without_a_grace_is_one_line_and_starts_nothing(tmp_path, marker, worker, grace, error):
    """The grace has one default, the console's (flextui.job.DEFAULT_GRACE): it always sends it."""
    spec = node_spec(tmp_path / "logs", argvs(worker, 1))
    if grace is not None:
        spec["grace"] = grace
    launcher = Launcher(spec, first_line=spec_line(spec))
    assert_refused(launcher, error, tmp_path / "logs", marker)


def test_a_megabyte_of_arguments_goes_to_every_worker_once_on_the_wire(tmp_path, marker):
    """The script's arguments are in the spec once (head + --local_rank=N + tail), not once
    per worker: 1 MB of them on 8 slots is a ~1 MB spec line."""
    script = tmp_path / "args.py"
    script.write_text("import hashlib, sys\n"
                      "print(len(sys.argv), hashlib.sha256('\\0'.join(sys.argv[1:]).encode()).hexdigest())\n")
    tail = [f"a{i}-" + "x" * 1000 + " $HOME '\"`;" for i in range(1000)]
    spec = node_spec(tmp_path / "logs", SharedCommand([PY, str(script)], tail, 8))
    assert len(spec_line(spec)) < 1.1 * sum(len(a) + 4 for a in tail)
    launcher = Launcher(spec)
    assert launcher.finish(timeout=30) == 0, launcher.stderr
    import hashlib

    for rank in range(8):
        expected = hashlib.sha256("\0".join([f"--local_rank={rank}", *tail]).encode()).hexdigest()
        assert launcher.output(rank) == f"{len(tail) + 2} {expected}\n"
    assert_all_gone(marker, worker_pids(launcher))


@pytest.mark.parametrize("mapped", [True, False])
def test_map_gpus_takes_slot_ids_as_indexes_into_the_launchers_own_gpus(tmp_path, marker, worker, mapped):
    """Slurm gives a step some GPUs (its CUDA_VISIBLE_DEVICES); the spec's slot ids index them."""
    spec = node_spec(tmp_path / "logs", argvs(worker, 1, "--env", "--run-for", "0"),
                     env={"CUDA_VISIBLE_DEVICES": "1,0"}, map_gpus=mapped)
    launcher = Launcher(spec, env={"CUDA_VISIBLE_DEVICES": "4,5,6"})
    assert launcher.finish() == 0, launcher.stderr
    report = json.loads(next(l for l in launcher.output(0).splitlines() if l.startswith("ENV "))[4:])
    assert report["env"]["CUDA_VISIBLE_DEVICES"] == ("5,4" if mapped else "1,0")
    assert flextui.launch.map_gpus("0,1", "4,5,6,7") == "4,5"
    assert flextui.launch.map_gpus("1", "") == "1"
    assert flextui.launch.map_gpus("0,3", "7,8") == "7,3"  # no such GPU: left as it is


# -- one SIGTERM per process (issue 13 defect 1) ------------------------------------------


@pytest.mark.parametrize("first", ["stop", "stop_rank, then stop"])
@pytest.mark.slow
def test_a_stop_sends_each_process_exactly_one_sigterm(tmp_path, marker, first):
    """A script that checkpoints on SIGTERM must not get a second one (begin_stop signalled
    the tree, then killpg'd each worker again); nor a process a stop_rank already asked."""
    counter = write_term_counter(tmp_path, checkpoint=1.5)
    log_dir = tmp_path / "logs"
    launcher = Launcher(node_spec(log_dir, SharedCommand([PY, str(counter)], ["--children", "3"], 2)))
    wait_for(lambda: len(sigterms_received(tmp_path)) == 8, 20, "2 workers and 6 children up")
    if first == "stop_rank, then stop":
        launcher.send({"cmd": "stop_rank", "rank": 1})
        wait_for(lambda: sum(sigterms_received(tmp_path).values()) >= 4, 10, "rank 1's tree asked to stop")
    launcher.send({"cmd": "stop", "reason": "test"})
    assert launcher.finish() == 0, launcher.stderr  # every rank finished its checkpoint
    assert sorted(sigterms_received(tmp_path).values()) == [1] * 8
    assert launcher.of("killing") == []
    assert [e["code"] for e in launcher.of("exited")] == [0, 0]
    for rank in range(2):  # the worker and its 3 children each finished their checkpoint
        assert launcher.output(rank).count("checkpoint written by") == 4
    assert_all_gone(marker, worker_pids(launcher))


# -- every event reaches the channel before the launcher exits (issue 9 defect 1) ------------


@pytest.mark.slow
def test_the_launcher_waits_until_a_slow_reader_has_every_event(tmp_path, marker):
    """The console (or its SSH session) may stall while the ranks finish: the launcher must
    not exit with events still in its buffer. ~100 KB: more than a pipe holds (64 KiB), less
    than makes the launcher wait for its reader while the ranks run (its buffer's 64 KiB)."""
    code = "import sys\nsys.stdout.write(''.join('line %05d %s\\n' % (i, 'x' * 90) for i in range(500)))\n"
    spec = node_spec(tmp_path / "logs", [[PY, "-c", code, marker]] * 2)
    proc = subprocess.Popen([PY, "-m", "flextui.launch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    proc.stdin.write(spec_line({**spec, "grace": 10.0}))
    proc.stdin.flush()
    expected = "".join("line %05d %s\n" % (i, "x" * 90) for i in range(500))
    wait_for(lambda: all(read_text(tmp_path / "logs" / f"rank-{r}.log") == expected for r in range(2)),
             20, "both ranks wrote their 51 KB")
    time.sleep(1.0)  # they exited; nobody has read a byte of the launcher's events
    assert proc.poll() is None, "the launcher exited with its events unsent"
    out, err = proc.communicate(timeout=20)
    proc.stdin.close()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert events[-1]["ev"] == "done"
    for rank in range(2):
        assert "".join(e["data"] for e in events if e["ev"] == "out" and e["rank"] == rank) == expected
        assert [e["code"] for e in events if e["ev"] == "exited" and e["rank"] == rank] == [0]


@pytest.mark.slow  # seconds of real waiting: out of the quick tier, still in ./dev test
def test_a_blocked_channel_and_a_silent_console_do_not_keep_the_launcher(tmp_path, marker):
    """Issue 9 defect 10: a dropped network blocks the launcher's stdout without closing it.
    Once the console has been silent for its timeout, the launcher stops its ranks and then
    exits too, after a bounded last try to send its events, instead of waiting forever."""
    flood = "import sys, time\nwhile True:\n    sys.stdout.write('y' * 200 + '\\n')\n    sys.stdout.flush()\n"
    spec = {**node_spec(tmp_path / "logs", [[PY, "-c", flood, marker]] * 2), "grace": 1.0, "console_timeout": 1.0}
    proc = subprocess.Popen([PY, "-m", "flextui.launch"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.stdin.write(spec_line(spec))
        proc.stdin.flush()  # and then not a word more, nor is a byte of its output read
        began = time.monotonic()
        try:
            proc.wait(timeout=1.0 + 1.0 + flextui.launch.LAST_WORDS + 5)
        except subprocess.TimeoutExpired:
            raise AssertionError("the launcher is still there, blocked on its channel") from None
        assert time.monotonic() - began >= 1.0
        assert_all_gone(marker)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stdin.close()


# -- the log directory in the preflight (issue 9 defect 4) ---------------------------------


def test_a_log_directory_the_user_cannot_create_is_a_preflight_problem(tmp_path, marker, worker):
    """A real other user's directory: the launcher runs as `nobody` under a root-owned one.
    The problem names the directory; nothing is created or left behind."""
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="flextui-test-", dir="/tmp"))  # tmp_path is root's 0700
    try:
        base.chmod(0o755)
        mine = base / "nobodys"
        mine.mkdir()
        os.chown(mine, nobody.pw_uid, nobody.pw_gid)
        for log_dir, problem in [
            (base / "roots" / "run", f"cannot create the log directory {base}/roots/run: Permission denied"),
            (mine / "deeper" / "run", None),
        ]:
            (base / "roots").mkdir(exist_ok=True)
            request = {"cwd": str(base), "log_dir": str(log_dir)}
            launcher = Launcher(with_preflight(node_spec(log_dir, argvs(worker, 1)), request), user="nobody")
            report = launcher.wait_event(lambda e: e["ev"] == "preflight")
            assert report["problems"] == ([problem] if problem else []), launcher.stderr
            launcher.close_stdin()
            assert launcher.finish(timeout=10) == (1 if problem else 0), launcher.stderr
            assert not log_dir.exists()
        assert sorted(p.name for p in base.rglob("*")) == ["nobodys", "roots"], "a probe was left"
    finally:
        shutil.rmtree(base)


def test_a_log_directory_below_a_file_is_a_preflight_problem(tmp_path, marker, worker):
    (tmp_path / "a-file").write_text("")
    log_dir = tmp_path / "a-file" / "run"
    request = {"cwd": str(tmp_path), "log_dir": str(log_dir)}
    launcher = Launcher(with_preflight(node_spec(log_dir, argvs(worker, 1)), request))
    assert launcher.finish(timeout=10) == 1, launcher.stderr
    assert launcher.of("preflight")[0]["problems"] == [
        f"cannot create the log directory {log_dir}: {tmp_path / 'a-file'} is not a directory"]


# -- --reason-fd: why the launcher ended, for the process that started it -----------------

TERM_DEAF = "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\ntime.sleep(float(sys.argv[1]))\n"


@pytest.mark.parametrize("case, expected", [
    ("finished", "done"),  # the workers ended by themselves; the console listens
    ("stdin EOF", "done"),  # whoever holds the channel closed it
    ("silent", "console-lost"),  # not a word for console_timeout, stdin still open: a cut network
    ("stopped", "done"),  # the console stopped the job
])
@pytest.mark.slow
def test_reason_fd_says_whether_the_console_was_lost(tmp_path, marker, case, expected):
    """The MPI guard ends the runtime's daemon on a cut-off node only after "console-lost";
    on anything else the runtime must be left to report the node's end itself."""
    run_for = "0.2" if case == "finished" else "3"
    spec = {**node_spec(tmp_path / "logs", [[PY, "-c", TERM_DEAF, run_for, marker]]),
            "grace": 2.0, "console_timeout": 1.0 if case == "silent" else 30.0}
    read_end, write_end = os.pipe()
    proc = subprocess.Popen([PY, "-m", "flextui.launch", "--reason-fd", str(write_end)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
                            pass_fds=[write_end])
    os.close(write_end)
    try:
        proc.stdin.write(spec_line(spec))
        proc.stdin.flush()
        if case == "stdin EOF":
            time.sleep(0.3)
            proc.stdin.close()
        elif case == "stopped":
            time.sleep(0.3)
            proc.stdin.write(b'{"cmd": "stop"}\n')
            proc.stdin.flush()
        proc.wait(timeout=15)
        with os.fdopen(read_end, "rb") as reason:
            assert reason.read() == (expected + "\n").encode(), proc.stderr.read()
        assert_all_gone(marker)
    finally:
        proc.kill()
        proc.wait()
        if not proc.stdin.closed:
            proc.stdin.close()
        proc.stderr.close()


def test_reason_fd_reaches_no_worker(tmp_path, marker):
    read_end, write_end = os.pipe()
    os.set_inheritable(write_end, True)  # even an inheritable one (a shell's 3>&1)
    probe = f"import os, sys\nprint(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n# {marker}"
    spec = {**node_spec(tmp_path / "logs", [[PY, "-c", probe]]), "grace": 1.0}
    proc = subprocess.Popen([PY, "-m", "flextui.launch", "--reason-fd", str(write_end)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=[write_end])
    os.close(write_end)
    proc.stdin.write(spec_line(spec))
    proc.stdin.flush()
    try:
        assert proc.wait(timeout=15) == 0  # the worker ended by itself
    finally:
        proc.kill()
        proc.stdin.close()
    with os.fdopen(read_end, "rb") as reason:
        assert reason.read() == b"done\n"
    assert read_text(tmp_path / "logs" / "rank-0.log").strip() == "[0, 1, 2, 3]"  # 3: listdir's own
