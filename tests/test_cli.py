"""The command line: `--dry-run [--json]` and every bad input (one line, non-zero, no run dir)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from flextui.cli import main
from tests.helpers import PY, free_port, run_flextui

HOSTFILE = "# test cluster\nnode1 slots=4\nnode2 slots=2\nnode3 slots=3\n"


@pytest.fixture
def hostfile(tmp_path) -> Path:
    path = tmp_path / "hostfile"
    path.write_text(HOSTFILE)
    return path


def dry_run_json(capsys, *args: str) -> dict:
    assert main(["--dry-run", "--json", *args]) == 0
    out = capsys.readouterr().out
    return json.loads(out)


def test_dry_run_json_contract(capsys, hostfile):
    plan = dry_run_json(capsys, "--include", "node1:0,2@node3:1", str(hostfile), "train.py", "--x")
    assert list(plan) == ["world_size", "master_addr", "master_port", "nodes", "ranks"]
    assert plan == {
        "world_size": 3,
        "master_addr": "node1",
        "master_port": 29500,
        "nodes": [
            {"host": "node1", "node_rank": 0, "slots": [0, 2]},
            {"host": "node3", "node_rank": 1, "slots": [1]},
        ],
        "ranks": [
            {"rank": 0, "host": "node1", "node_rank": 0, "local_rank": 0, "gpu": 0},
            {"rank": 1, "host": "node1", "node_rank": 0, "local_rank": 1, "gpu": 2},
            {"rank": 2, "host": "node3", "node_rank": 1, "local_rank": 0, "gpu": 1},
        ],
    }


@pytest.mark.parametrize(
    "args, nodes",
    [
        ([], {"node1": [0, 1, 2, 3], "node2": [0, 1], "node3": [0, 1, 2]}),
        (["--exclude", "node1:1@node2"], {"node1": [0, 2, 3], "node3": [0, 1, 2]}),
        (["-e", "node3:0,2"], {"node1": [0, 1, 2, 3], "node2": [0, 1], "node3": [1]}),
        (["-i", "node3@node1:3"], {"node1": [3], "node3": [0, 1, 2]}),
        (["--num_nodes", "2"], {"node1": [0, 1, 2, 3], "node2": [0, 1]}),
        (["--num-nodes", "1", "--num-gpus", "2"], {"node1": [0, 1]}),
        (["--num_gpus", "2"], {"node1": [0, 1], "node2": [0, 1], "node3": [0, 1]}),
    ],
)
def test_dry_run_selection(capsys, hostfile, args, nodes):
    plan = dry_run_json(capsys, *args, str(hostfile), "train.py")
    assert {n["host"]: n["slots"] for n in plan["nodes"]} == nodes
    assert [n["host"] for n in plan["nodes"]] == [h for h in ("node1", "node2", "node3") if h in nodes]
    assert [r["rank"] for r in plan["ranks"]] == list(range(plan["world_size"]))
    assert plan["world_size"] == sum(map(len, nodes.values()))
    assert [r["gpu"] for r in plan["ranks"]] == [g for slots in nodes.values() for g in slots]


@pytest.mark.parametrize("spelling", [["--master_addr", "10.1.2.3", "--master_port", "1234"],
                                      ["--master-addr", "10.1.2.3", "--master-port", "1234"]])
def test_dry_run_master_override(capsys, hostfile, spelling):
    plan = dry_run_json(capsys, *spelling, str(hostfile), "train.py")
    assert (plan["master_addr"], plan["master_port"]) == ("10.1.2.3", 1234)


def test_dry_run_text(capsys, hostfile):
    assert main(["--dry-run", "--no_local_rank", "-i", "node2@node3:0,2", str(hostfile), "t.py", "a"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "world_size=4 master=node2:29500"
    assert out[1] == "node 0: node2 slots=[0, 1] ranks 0-1 CUDA_VISIBLE_DEVICES=0,1"
    assert out[2] == "node 1: node3 slots=[0, 2] ranks 2-3 CUDA_VISIBLE_DEVICES=0,2"
    assert out[3].endswith(" -u t.py a") and "--local_rank" not in out[3]


def test_dry_run_through_the_console_script(tmp_path, hostfile):
    flextui = Path(PY).parent / "flextui"
    result = subprocess.run([str(flextui), "--dry-run", "--json", "--num_gpus", "1", str(hostfile), "x.py"],
                            capture_output=True, text=True, cwd=tmp_path, timeout=30)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [(r["host"], r["gpu"]) for r in plan["ranks"]] == [("node1", 0), ("node2", 0), ("node3", 0)]
    assert list(tmp_path.iterdir()) == [hostfile], "a dry run creates nothing"


# -- bad input: one line `flextui: error: ...`, non-zero exit, no run directory --------------


def bad_cases(tmp_path: Path, busy_port: int):
    (tmp_path / "ok.py").write_text("print('never runs')\n")
    (tmp_path / "local").write_text("localhost slots=2\n")
    (tmp_path / "malformed").write_text("localhost slots=2\nnode2 slot=2\n")
    (tmp_path / "empty").write_text("# nothing\n")
    (tmp_path / "dup").write_text("a slots=1\na slots=2\n")
    (tmp_path / "huge").write_text("localhost slots=99999999999999999999999\n")
    return {
        "malformed hostfile": (["malformed", "ok.py"], "malformed:2: malformed line 'node2 slot=2'"),
        "missing hostfile": (["nowhere", "ok.py"], "hostfile not found: nowhere"),
        "empty hostfile": (["empty", "ok.py"], "no hosts"),
        "duplicate host": (["dup", "ok.py"], "duplicate host 'a'"),
        "huge slot count": (["huge", "ok.py"], "huge:1: slots must be at most 4096"),
        "unknown include host": (["--include", "elsewhere", "local", "ok.py"], "unknown host 'elsewhere'"),
        "unknown exclude host": (["--exclude", "elsewhere:0", "local", "ok.py"], "unknown host 'elsewhere'"),
        "slot out of range": (["--include", "localhost:2", "local", "ok.py"], "slot 2 out of range"),
        "malformed include": (["--include", "localhost:", "local", "ok.py"], "empty slot list"),
        "include and exclude": (["-i", "localhost", "-e", "localhost:0", "local", "ok.py"], "mutually exclusive"),
        "include with num_gpus": (["-i", "localhost", "--num_gpus", "1", "local", "ok.py"], "cannot be combined"),
        "too many gpus": (["--num_gpus", "3", "local", "ok.py"], "has only 2 slots"),
        "everything excluded": (["--exclude", "localhost", "local", "ok.py"], "no slots left"),
        "missing script": (["local", "missing.py"], "localhost: script missing.py not found in"),
        "missing module": (["--module", "local", "no_such_module_xyz"], "module no_such_module_xyz not found"),
        "missing program": (["--no_python", "local", "no-such-program-xyz"], "program no-such-program-xyz not found"),
        "missing working dir": (["--remote_cwd", str(tmp_path / "nope"), "local", "ok.py"], "working directory"),
        "bad env": (["--env", "NOEQUALS", "local", "ok.py"], "--env 'NOEQUALS': expected KEY=VALUE"),
        "env without key": (["--env", "=v", "local", "ok.py"], "expected KEY=VALUE"),
        "master port in use": (["--master_port", str(busy_port), "local", "ok.py"],
                               f"master port {busy_port} is already in use"),
        "invalid master port": (["--master_port", "70000", "local", "ok.py"], "not a valid port"),
        "non-numeric port": (["--master_port", "x", "local", "ok.py"], "invalid int value: 'x'"),
        "negative grace": (["--grace", "-1", "local", "ok.py"], "--grace -1"),
        "no script": (["local"], "required: script"),
        "unusable log dir": (["--log-dir", str(tmp_path / "ok.py" / "runs"), "local", "ok.py"],
                             "cannot create the run directory"),
    }


@pytest.mark.parametrize("case", [
    "malformed hostfile", "missing hostfile", "empty hostfile", "duplicate host", "huge slot count",
    "unknown include host", "unknown exclude host", "slot out of range", "malformed include",
    "include and exclude", "include with num_gpus", "too many gpus", "everything excluded",
    "missing script", "missing module", "missing program", "missing working dir", "bad env",
    "env without key", "master port in use", "invalid master port", "non-numeric port",
    "negative grace", "no script", "unusable log dir",
])
@pytest.mark.slow
def test_bad_input(tmp_path, case):
    with socket.socket() as busy:  # a master port someone else listens on
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args, fragment = bad_cases(tmp_path, port)[case]
        if case != "master port in use":
            args = ["--master_port", str(free_port()), *args]
        result = run_flextui("--headless", "--log-dir", str(tmp_path / "runs"), *args, cwd=tmp_path)
    assert result.returncode != 0
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("flextui: error: ") and fragment in lines[0], lines[0]
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists(), "no run directory for a job that never started"


@pytest.mark.parametrize("name", [".flextui_env", ".deepspeed_env"])
@pytest.mark.parametrize("content, fragment", [
    (b"A=1\nB=caf\xe9\n", ":2: not UTF-8 text (byte 0xe9)"),
    (b"A=1\nB=x\0y\n", ":2: the value of B holds a NUL byte, which no environment can carry"),
    (b"# x\nexport A\n", ":2: expected KEY=VALUE, got 'export A'"),
], ids=["latin-1", "NUL", "export without value"])
def test_bad_env_file(tmp_path, name, content, fragment):
    (tmp_path / "ok.py").write_text("print('never runs')\n")
    (tmp_path / "local").write_text("localhost slots=1\n")
    (tmp_path / name).write_bytes(content)
    # --force_multi: .deepspeed_env applies to multi-node launches only, as with DeepSpeed
    result = run_flextui("--headless", "--force_multi", "--log-dir", str(tmp_path / "runs"), "local", "ok.py",
                         cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"flextui: error: {tmp_path / name}{fragment}"], result.stderr
    assert result.stdout == ""
    assert not (tmp_path / "runs").exists(), "no run directory for a job that never started"


def test_default_master_is_this_machine_when_a_local_first_host_has_remote_peers(capsys, tmp_path):
    mixed = tmp_path / "mixed"
    mixed.write_text("localhost slots=1\nnode2 slots=1\n")
    assert dry_run_json(capsys, str(mixed), "train.py")["master_addr"] == socket.gethostname()
    only_local = tmp_path / "local"
    only_local.write_text("localhost slots=2\n")
    assert dry_run_json(capsys, str(only_local), "train.py")["master_addr"] == "localhost"
