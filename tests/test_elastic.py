"""--elastic: torch's elastic agent on every node of the real-OpenSSH test cluster.

End to end (the `cluster` fixture also fails a test that leaves any process on a node):
a failing rank is restarted and the job completes; a node crashed mid-run is replaced by
a re-rendezvous of the others with the smaller world; too few nodes left stops the job;
Ctrl+C leaves nothing anywhere. The grouping of node reports into attempts is tested as
pure logic below.

Timing on 2 cores: every agent and worker imports torch (~2 s each, all at once), so a
3-node job takes ~10 s to its first step. The rendezvous timeouts are shortened with
--rdzv_conf: a dead node's heartbeat expires after 3 s, and a round waits 4 s for late
nodes once --min_nodes are in (all 3 start together, so round 0 never waits).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flextui.cli import main
from flextui.modes.elastic import ElasticConfig, ElasticJobModel
from flextui.model import JobState, RankStatus
from flextui.world import World

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "examples" / "elastic_train.py")
FLEXTUI = [sys.executable, "-m", "flextui", "--headless"]
FAST = ["--monitor_interval", "0.2",
        "--rdzv_conf", "last_call_timeout=4,keep_alive_interval=1,keep_alive_max_attempt=3"]


def hostfile(cluster, tmp_path, slots: int, nodes: int = 3) -> str:
    path = tmp_path / "hostfile"
    path.write_text("".join(f"{n.name} slots={slots}\n" for n in cluster.nodes[:nodes]))
    return str(path)


def flextui_argv(tmp_path, *args) -> list[str]:
    return [*FLEXTUI, "--log-dir", str(tmp_path / "runs"), "--grace", "5", "--elastic", *FAST, *args]


def train(tmp_path, *args) -> list[str]:
    return [TRAIN, "--ckpt-dir", str(tmp_path / "ckpt"), *args]  # tmp_path: shared by the nodes


def start(cluster, tmp_path, *args) -> subprocess.Popen:
    with open(tmp_path / "console.txt", "w") as out:  # a file: a full pipe would stall the console
        proc = subprocess.Popen(flextui_argv(tmp_path, *args), cwd=tmp_path, env=cluster.env(),
                                stdout=out, stderr=subprocess.STDOUT)
    proc.out = tmp_path / "console.txt"
    return proc


@pytest.fixture
def launch(cluster, tmp_path):
    """start(), and a console a failed test left running is killed (its nodes then stop)."""
    procs = []

    def go(*args) -> subprocess.Popen:
        procs.append(start(cluster, tmp_path, *args))
        return procs[-1]

    yield go
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen, timeout: float) -> tuple[int, str]:
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"flextui still running after {timeout}s:\n{proc.out.read_text()[-4000:]}") from None
    return proc.returncode, proc.out.read_text()


def run_dir(tmp_path) -> Path:
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def summary(tmp_path) -> dict:
    return json.loads((run_dir(tmp_path) / "summary.json").read_text())


def wait_running(tmp_path, world_size: int, proc: subprocess.Popen, timeout: float = 60) -> Path:
    """Until every rank of an attempt with this world size has done a step (all of them
    past init_process_group); returns that attempt's directory."""
    deadline = time.monotonic() + timeout
    pattern = re.compile(rf"^rank \d+/{world_size} step \d+/", re.M)
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flextui ended early ({proc.returncode}):\n{proc.out.read_text()[-4000:]}"
        for attempt in sorted((tmp_path / "runs").glob("*/attempt-*")):
            logs = list(attempt.glob("rank-*.log"))
            if len(logs) == world_size and all(pattern.search(p.read_text(errors="replace")) for p in logs):
                return attempt
        time.sleep(0.05)
    raise AssertionError(f"no attempt of {world_size} ranks got going within {timeout}s")


def wait_no_job_processes(cluster, timeout: float) -> float:
    start_ = time.monotonic()
    while time.monotonic() - start_ < timeout:
        if all(cluster.job_process_count(n) == 0 for n in cluster.nodes):
            return time.monotonic() - start_
        time.sleep(0.05)
    left = {n.name: cluster.job_processes(n) for n in cluster.nodes}
    raise AssertionError(f"job processes left after {timeout}s: {left}")


# -- on the cluster ---------------------------------------------------------------------


def test_failed_rank_is_restarted_and_the_job_completes(cluster, tmp_path, launch):
    names = [n.name for n in cluster.nodes[:2]]
    proc = launch("--min_nodes", "2", "--max_restarts", "2",
                 hostfile(cluster, tmp_path, 1, nodes=2),
                 *train(tmp_path, "--steps", "4", "--step-time", "0.05", "--fail-rank", "1", "--fail-step", "1"))
    code, out = finish(proc, 90)
    assert code == 0, out[-4000:]
    path = run_dir(tmp_path)
    result = summary(tmp_path)
    assert result["state"] == "succeeded"
    attempts = result["elastic"]["attempts"]
    # The failed rank's agent counts a restart; the other may see a membership change
    # first (torch does not count those): the attempt reports the highest count.
    assert [(a["attempt"], a["world_size"], a["restart_count"]) for a in attempts] == [(0, 2, 0), (1, 2, 1)]
    first = {r["rank"]: r for r in attempts[0]["ranks"]}
    assert (first[1]["status"], first[1]["code"]) == ("failed", 1)
    assert first[0]["status"] in ("failed", "killed")  # gloo error, or the agent's SIGTERM
    assert "rank 1: failing at step 1" in (path / "attempt-0" / "rank-1.log").read_text()
    for rank in range(2):
        text = (path / "attempt-1" / f"rank-{rank}.log").read_text()
        assert f"rank {rank}/2" in text and "resumed from step 1" in text
        assert f"rank {rank}: done" in text
    assert sorted(r["host"] for r in result["ranks"]) == sorted(names)
    assert [r["status"] for r in result["ranks"]] == ["exited"] * 2
    assert result["elastic"]["restart_count"] == 1 and result["elastic"]["lost_nodes"] == []
    assert {f"agent-{name}.log" for name in names} <= {p.name for p in path.iterdir()}


def test_lost_node_others_rerendezvous_with_smaller_world(cluster, tmp_path, launch):
    names = [n.name for n in cluster.nodes]
    lost = cluster.nodes[2]  # not the rendezvous host (the first node)
    proc = launch("--min_nodes", "2", "--max_restarts", "3", hostfile(cluster, tmp_path, 2),
                 *train(tmp_path, "--steps", "25", "--step-time", "0.2"))
    first = wait_running(tmp_path, 6, proc)
    crashed_at = time.monotonic()
    cluster.crash_node(lost)
    code, out = finish(proc, 90)
    recovered = time.monotonic() - crashed_at
    assert code == 0, out[-4000:]
    result = summary(tmp_path)
    elastic = result["elastic"]
    assert result["state"] == "succeeded" and result["world_size"] == 4
    assert [n["host"] for n in elastic["lost_nodes"]] == [lost.name]
    before = next(a for a in elastic["attempts"] if a["attempt"] == int(first.name.split("-")[1]))
    after = elastic["attempts"][-1]
    assert before["world_size"] == 6 and after["world_size"] == 4
    assert after["attempt"] > before["attempt"] and after["restart_count"] >= 1
    assert [r["status"] for r in before["ranks"] if r["host"] == lost.name] == ["lost", "lost"]
    assert sorted(r["host"] for r in after["ranks"]) == sorted(names[:2] * 2)
    assert [r["status"] for r in result["ranks"]] == ["exited"] * 4
    path = run_dir(tmp_path)
    assert (path / "attempt-0").is_dir() and (path / "attempt-1").is_dir()
    assert len(list(first.glob("rank-*.log"))) == 6
    for rank in range(4):
        text = (path / f"attempt-{after['attempt']}" / f"rank-{rank}.log").read_text()
        resumed = re.search(rf"rank {rank}/4 .* resumed from step (\d+)", text)
        assert resumed and int(resumed.group(1)) >= 1, text[-2000:]
        assert f"rank {rank}/4 step 25/25" in text and f"rank {rank}: done" in text
    assert f"node {lost.name} lost" in out and "world size 4" in out
    print(f"lost node to job end: {recovered:.1f}s")


def test_too_few_nodes_left_stops_the_job(cluster, tmp_path, launch):
    proc = launch("--min_nodes", "2", hostfile(cluster, tmp_path, 1, nodes=2),
                 *train(tmp_path, "--steps", "1000", "--step-time", "0.2"))
    wait_running(tmp_path, 2, proc)
    cluster.crash_node(cluster.nodes[1])
    code, out = finish(proc, 20)
    assert code == 255, out[-4000:]
    result = summary(tmp_path)
    assert result["state"] == "failed"
    assert "only 1 node(s) left, fewer than --min_nodes 2" in result["stop_reason"]
    wait_no_job_processes(cluster, 5)


def test_sigint_stops_every_node_and_leaves_nothing(cluster, tmp_path, launch):
    proc = launch(hostfile(cluster, tmp_path, 1),
                 *train(tmp_path, "--steps", "1000", "--step-time", "0.2"))
    wait_running(tmp_path, 3, proc)
    # launcher + agent + shim + worker on each node
    assert all(cluster.job_process_count(n) >= 4 for n in cluster.nodes)
    proc.send_signal(signal.SIGINT)
    gone = wait_no_job_processes(cluster, 5 + 3)
    code, out = finish(proc, 10)
    assert code == 130, out[-4000:]
    assert summary(tmp_path)["state"] == "aborted"
    print(f"every process gone {gone:.2f}s after Ctrl+C")


# -- attempts from node reports (pure) --------------------------------------------------


def model(nodes: int = 3, slots: int = 2, min_nodes: int = 2) -> ElasticJobModel:
    world = World.from_slots({f"n{i}": list(range(slots)) for i in range(nodes)})
    return ElasticJobModel(world, "run", ElasticConfig(min_nodes=min_nodes, max_nodes=nodes))


def group(seq, master, world_size, group_rank, ranks, restart=0, nodes=3) -> dict:
    return {"ev": "attempt", "seq": seq, "master": master, "world_size": world_size,
            "group_rank": group_rank, "group_world_size": nodes, "restart_count": restart, "t": 1.0,
            "ranks": [{"rank": r, "local_rank": i, "pid": 100 + r} for i, r in enumerate(ranks)]}


def test_reports_group_into_attempts_whatever_their_order():
    m = model()
    m.apply(0, group(0, "n0:1", 6, 0, [0, 1]))
    m.apply(0, group(1, "n0:2", 4, 0, [0, 1], restart=1, nodes=2))  # node 0 is a round ahead
    m.apply(1, group(0, "n0:1", 6, 1, [2, 3]))
    m.apply(2, group(0, "n0:1", 6, 2, [4, 5]))
    m.apply(1, group(1, "n0:2", 4, 1, [2, 3], restart=1, nodes=2))
    assert [(a.number, a.world_size, a.node_ranks) for a in m.attempts] == [(0, 6, [0, 1, 2]), (1, 4, [0, 1])]
    assert m.current_attempt.number == 1 and m.world_size == 4 and m.restart_count == 1
    assert [(r.info.host, r.info.local_rank, r.info.gpu) for r in m.current_ranks] == [
        ("n0", 0, 0), ("n0", 1, 1), ("n1", 0, 0), ("n1", 1, 1)]
    # views sized at start stay valid: the slots past the world size are idle placeholders
    assert m.ranks[:4] == m.current_ranks and len(m.ranks) == 6
    assert [(r.status, r.info.host) for r in m.ranks[4:]] == [(RankStatus.PENDING, "")] * 2
    # the same round identity again (a shared store keeps its port) is still a new attempt
    m.apply(0, group(2, "n0:2", 4, 0, [0, 1], restart=2, nodes=2))
    assert m.attempt_of(0, 2).number == 2


def test_output_goes_to_its_attempt_and_only_the_current_one_is_live():
    m = model()
    for node in range(3):
        m.apply(node, group(0, "a", 6, node, [2 * node, 2 * node + 1]))
    m.apply(0, group(1, "b", 4, 0, [0, 1], restart=1, nodes=2))
    assert m.apply(0, {"ev": "out", "seq": 1, "rank": 0, "data": "new\n"}) == ["new"]
    assert m.apply(1, {"ev": "out", "seq": 0, "rank": 3, "data": "late\n"}) is None  # attempt 0's
    assert list(m.attempts[0].ranks[3].tail) == ["late"] and list(m.combined) == [(0, "new")]


def test_lost_node_dooms_its_rounds_and_too_few_nodes_stop_the_job():
    m = model()
    for node in range(3):
        m.apply(node, group(0, "a", 6, node, [2 * node, 2 * node + 1]))
    m.node_lost(2, "node n2 lost: connection closed")
    assert [r.status for r in m.attempts[0].ranks[4:]] == [RankStatus.LOST] * 2
    assert m.stop_cause() is None  # 2 nodes left, --min_nodes 2
    doomed = m.take_doomed_attempts()
    assert [a.number for a in doomed] == [0] and "n2" in doomed[0].doomed
    assert m.take_doomed_attempts() == []  # once
    # a round formed with 3 nodes when only 2 are left would wait for the dead one forever
    m.apply(0, group(1, "b", 6, 0, [0, 1], restart=1))
    assert [a.number for a in m.take_doomed_attempts()] == [1]
    m.node_lost(1, "node n1 lost")
    assert m.stop_cause() == "only 1 node(s) left, fewer than --min_nodes 2"


def test_rendezvous_host_gone_stops_the_job_and_success_needs_the_last_attempt():
    m = model()
    m.node_lost(0, "node n0 lost")
    assert m.stop_cause() == "node n0 hosts the rendezvous and is gone"
    m = model(nodes=2, min_nodes=1)
    for node in range(2):
        m.apply(node, group(0, "a", 4, node, [2 * node, 2 * node + 1], nodes=2))
    m.node_lost(1, "node n1 lost")
    m.apply(0, group(1, "b", 2, 0, [0, 1], restart=1, nodes=1))
    for rank in range(2):
        m.apply(0, {"ev": "exited", "seq": 1, "rank": rank, "code": 0, "signal": None, "t": 2.0})
    m.apply(0, {"ev": "done", "code": 0, "t": 3.0})
    m.finish()
    assert m.state is JobState.SUCCEEDED and m.exit_code == 0
    assert m.summary()["elastic"]["lost_nodes"][0]["host"] == "n1"


def test_cli_plan_and_usage_errors(tmp_path, capsys):
    hosts = tmp_path / "hostfile"
    hosts.write_text("a slots=2\nb slots=2\nc slots=4\n")

    def cli(*args):
        code = main(list(args))
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    plan = cli("--dry-run", "--json", "--elastic", "--num_gpus", "2", "--min_nodes", "2", str(hosts), "t.py")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["elastic"] == {"min_nodes": 2, "max_nodes": 3, "max_restarts": 3,
                                                  "rdzv_conf": "", "monitor_interval": None,
                                                  "local_rank_arg": False}
    uneven = cli("--dry-run", "--elastic", str(hosts), "t.py")
    assert uneven.returncode == 2 and "same number of workers on every node" in uneven.stderr
    assert "--min_nodes needs --elastic" in cli("--dry-run", "--min_nodes", "2", str(hosts), "t.py").stderr
    too_many = cli("--dry-run", "--elastic", "--num_gpus", "1", "--min_nodes", "4", str(hosts), "t.py")
    assert "--min_nodes 4 but the hostfile selects 3 node(s)" in too_many.stderr


# -- DeepSpeed drop-in (issue 14): torchrun's conventions, and why a job that keeps failing ends


STRICT = ("import argparse, os, sys\n"
          "argparse.ArgumentParser().parse_args()  # no --local_rank: an unknown one exits 2\n"
          "print('argv', sys.argv[1:], 'LOCAL_RANK', os.environ['LOCAL_RANK'], flush=True)\n")


def test_elastic_passes_local_rank_in_the_environment_only(cluster, tmp_path, launch):
    """A torchrun-style script (argparse, no --local_rank option) runs unmodified."""
    (tmp_path / "strict.py").write_text(STRICT)
    proc = launch("--max_restarts", "0", hostfile(cluster, tmp_path, 2, nodes=2), str(tmp_path / "strict.py"))
    code, out = finish(proc, 90)
    assert code == 0, out[-4000:]
    assert out.count("argv [] LOCAL_RANK 0") == 2 and out.count("argv [] LOCAL_RANK 1") == 2
    assert "note: --elastic: the script gets LOCAL_RANK in its environment only" in out


@pytest.mark.parametrize("restarts", [0, 1])
def test_restarts_run_out_names_the_failing_rank(cluster, tmp_path, launch, restarts):
    """Ranks that exit 2 on every attempt: the job fails saying which rank failed with what
    code (not that the rendezvous host is gone), and the summary's first failure is set."""
    (tmp_path / "fail.py").write_text("import os, sys, time\ntime.sleep(0.2 * int(os.environ['RANK']))\nsys.exit(2)\n")
    proc = launch("--min_nodes", "1", "--max_nodes", "2", "--max_restarts", str(restarts),
                  hostfile(cluster, tmp_path, 1, nodes=2), str(tmp_path / "fail.py"))
    code, out = finish(proc, 120)
    result = summary(tmp_path)
    assert code == 1, out[-4000:]
    assert result["state"] == "failed"
    assert "hosts the rendezvous" not in (result["stop_reason"] or "")
    assert re.fullmatch(rf"rank \d on \S+ exited with code 2; torch's agent on \S+ gave up after "
                        rf"{restarts} restart\(s\) \(--max_restarts {restarts}\)", result["stop_reason"]), result
    assert result["first_failure"] is not None
    first = next(r for r in result["ranks"] if r["rank"] == result["first_failure"])
    assert (first["status"], first["code"]) == ("failed", 2)
    assert "first failure: rank" in out


def test_an_agent_that_gives_up_fails_the_job_with_its_rank():
    m = model(nodes=2, min_nodes=1)
    for node in range(2):
        m.apply(node, group(0, "a", 4, node, [2 * node, 2 * node + 1], nodes=2))
    m.apply(1, {"ev": "exited", "seq": 0, "rank": 3, "code": 2, "signal": None, "t": 1.5, "stopped": False})
    m.apply(0, {"ev": "exited", "seq": 0, "rank": 0, "code": 2, "signal": None, "t": 2.0, "stopped": False})
    assert m.first_failure is None and m.stop_cause() is None  # the agents' business: they restart
    m.apply(0, {"ev": "agent_exited", "code": 1, "signal": None, "stopped": False, "t": 2.5})
    m.apply(0, {"ev": "done", "code": 1, "t": 2.6})  # the rendezvous host's launcher ends too
    assert m.first_failure.rank == 3  # first by time in that attempt, on whichever node
    assert m.stop_cause() == ("rank 3 on n1 exited with code 2; torch's agent on n0 gave up after 0 restart(s) "
                              "(--max_restarts 3)")


def test_agents_that_all_gave_up_at_once_still_leave_a_reason():
    """--max_restarts 0: every agent ends at once, so the console never stopped anything."""
    m = model(nodes=1, min_nodes=1)
    m.apply(0, group(0, "a", 2, 0, [0, 1], nodes=1))
    m.apply(0, {"ev": "agent_exited", "code": 1, "signal": None, "stopped": False, "t": 2.5})
    m.apply(0, {"ev": "exited", "seq": 0, "rank": 1, "code": 2, "signal": None, "t": 2.0, "stopped": False})
    m.apply(0, {"ev": "done", "code": 1, "t": 2.6})
    m.finish()
    assert m.state is JobState.FAILED and m.exit_code == 1
    summary = m.summary()
    assert summary["first_failure"] == 1
    assert summary["stop_reason"].startswith("rank 1 on n0 exited with code 2; torch's agent on n0 gave up")
