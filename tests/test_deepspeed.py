"""DeepSpeed drop-in (issue 14): `deepspeed ARGS` -> `flextui ARGS`.

DeepSpeed itself is not installed by the project (it builds from source and pulls a
dozen packages); its option list is pinned in flextui.deepspeed.OPTIONS from
deepspeed/launcher/runner.py (0.19.x) and checked here against flextui's parser.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flextui import deepspeed
from flextui.cli import build_parser, main, parse_command_line
from flextui.deepspeed import (
    OPTIONS, cpu_accelerators, default_hosts, local_rank_note, parse_core_list, split_positionals,
)
from flextui.errors import UsageError
from flextui.world import World
from tests.helpers import free_port, run_flextui, start_flextui

#: A value for each DeepSpeed option that takes one (the rest are flags).
VALUES = {
    "-H": "HOSTFILE", "--hostfile": "HOSTFILE", "-i": "localhost:0", "--include": "localhost:0",
    "-e": "localhost:1", "--exclude": "localhost:1", "--num_nodes": "1", "--num_gpus": "1",
    "--num_accelerators": "1", "--master_port": "29600", "--master_addr": "127.0.0.1",
    "--node_rank": "0", "--launcher": "pdsh", "--launcher_args": "", "--enable_each_rank_log": "logs",
    "--autotuning": "tune", "--bind_core_list": "0", "--ssh_port": "22", "--venv_script": "venv.sh",
    "--log_level": "warning", "--min_elastic_nodes": "1", "--max_elastic_nodes": "1",
}


@pytest.fixture
def hostfile(tmp_path) -> Path:
    path = tmp_path / "HOSTFILE"
    path.write_text("localhost slots=2\n")
    return path


def test_every_deepspeed_option_is_known_to_the_parser():
    """The pinned `deepspeed --help` list (DeepSpeed 0.19.x runner.py) is all flextui's too."""
    known = set(build_parser()._option_string_actions)
    assert set(OPTIONS) - known == set()
    assert set(VALUES) <= set(OPTIONS)


@pytest.mark.parametrize("option", [o for o in OPTIONS if o not in ("-h", "--help")])
def test_every_deepspeed_option_parses(option, hostfile, monkeypatch):
    monkeypatch.chdir(hostfile.parent)
    argv = [option] + ([VALUES[option]] if option in VALUES else [])
    args = parse_command_line([*argv, "train.py", "--deepspeed"])
    assert (args.script, args.script_args) == ("train.py", ["--deepspeed"])
    if option == "--autotuning":
        with pytest.raises(UsageError, match="autotuner is not part of flextui"):
            deepspeed.check_options(args)


def test_help_lists_deepspeed_options(capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for option in ("--num_accelerators", "--bind_cores_to_rank", "--save_pid", "--no_ssh", "--venv_script"):
        assert option in out


# -- which word is the hostfile -----------------------------------------------------------


@pytest.mark.parametrize("words, expected", [
    (["train.py"], (None, ["train.py"])),
    (["train.py", "--deepspeed", "x.json"], (None, ["train.py", "--deepspeed", "x.json"])),
    (["hosts", "train.py", "-x"], ("hosts", ["train.py", "-x"])),
    (["hosts", "pkg.train"], ("hosts", ["pkg.train"])),  # reads like a hostfile: --module
    (["hosts"], ("hosts", [])),  # then "script required"
    (["notes.txt", "run.sh"], (None, ["notes.txt", "run.sh"])),  # a file, not a hostfile
    (["missing", "train.py"], ("missing", ["train.py"])),  # a hostfile that is not there
    (["broken", "train.py"], ("broken", ["train.py"])),  # a malformed one: its own error
    (["pkg.train", "--x"], (None, ["pkg.train", "--x"])),  # --module, DeepSpeed style
    (["hosts.py", "train.py"], (None, ["hosts.py", "train.py"])),  # *.py is always a script
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_split_positionals(tmp_path, monkeypatch, words, expected):
    monkeypatch.chdir(tmp_path)
    Path("hosts").write_text("# cluster\n\nnode1 slots=8  # big one\n")
    Path("hosts.py").write_text("node1 slots=8\n")
    Path("notes.txt").write_text("not hosts\n")
    Path("broken").write_text("node1 slot=8\n")
    assert split_positionals(words) == expected


# -- hosts without a hostfile ---------------------------------------------------------------


def namespace(**given) -> argparse.Namespace:
    return argparse.Namespace(**{"include": None, "exclude": None, "num_nodes": None, "num_gpus": None, **given})


def test_default_hosts_prefer_job_hostfile(tmp_path):
    job = tmp_path / "hostfile"
    job.write_text("node1 slots=4\nnode2 slots=4\n")
    hosts, note = default_hosts(namespace(), {}, gpus=8, hostfile=str(job))
    assert hosts == {"node1": 4, "node2": 4}
    assert str(job) in note


@pytest.mark.parametrize("given, environ, gpus, hosts, include", [
    ({}, {}, 4, {"localhost": 4}, None),  # every GPU
    ({"num_gpus": 2}, {}, 4, {"localhost": 4}, None),  # --num_gpus limits (select_slots)
    ({}, {"CUDA_VISIBLE_DEVICES": "2,3"}, 4, {"localhost": 4}, "localhost:2,3"),  # as DeepSpeed
    ({"num_gpus": 1}, {"CUDA_VISIBLE_DEVICES": "2,3"}, 4, {"localhost": 4}, None),  # DeepSpeed ignores it then
    ({}, {}, 0, {"localhost": 1}, None),  # no GPU, one NUMA node: DeepSpeed's CPU accelerator
    ({"num_gpus": 3}, {}, 0, {"localhost": 3}, None),  # CPU ranks are processes: as many as asked
    ({}, {"LOCAL_SIZE": "5"}, 0, {"localhost": 5}, None),  # CPU accelerator's LOCAL_SIZE
])
def test_default_hosts_on_this_machine(tmp_path, monkeypatch, given, environ, gpus, hosts, include):
    monkeypatch.setattr(deepspeed, "cpu_accelerators", lambda env: cpu_accelerators(env, str(tmp_path)))
    (tmp_path / "node0").mkdir()
    (tmp_path / "node0" / "cpulist").write_text("0-3\n")
    args = namespace(**given)
    found, note = default_hosts(args, environ, gpus=gpus, hostfile=str(tmp_path / "no-hostfile"))
    assert (found, args.include) == (hosts, include)
    assert note.startswith("no hostfile")


def test_cpu_accelerators_count_numa_nodes_with_cores(tmp_path):
    for node, cores in (("node0", "0-3"), ("node1", "4-7"), ("node2", ""), ("node10", "8-9")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "cpulist").write_text(cores + "\n")
    assert cpu_accelerators({}, str(tmp_path)) == 3  # the empty one is HBM memory, not cores
    assert cpu_accelerators({}, str(tmp_path / "none")) == 1


def test_no_hostfile_and_more_than_one_node_is_an_error():
    with pytest.raises(UsageError, match="--num_nodes 2 but there is no hostfile"):
        default_hosts(namespace(num_nodes=2), {}, gpus=0, hostfile="/nonexistent/hostfile")


def test_no_hostfile_plan(tmp_path, monkeypatch, capsys):
    """`flextui --num_gpus 2 train.py`: this machine, 2 ranks (no GPU here: CPU ranks)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(deepspeed, "DLTS_HOSTFILE", str(tmp_path / "job-hostfile"))
    monkeypatch.setattr(deepspeed, "gpu_count", lambda: 0)
    assert main(["--dry-run", "--json", "--num_gpus", "2", "train.py", "--x"]) == 0
    captured = capsys.readouterr()
    plan = json.loads(captured.out)
    assert [(n["host"], n["slots"]) for n in plan["nodes"]] == [("localhost", [0, 1])]
    assert "flextui: note: no hostfile and no GPU" in captured.err
    (tmp_path / "job-hostfile").write_text("localhost slots=3\n")
    assert main(["-q", "--dry-run", "--json", "train.py"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["world_size"] == 3
    assert captured.err == ""  # -q: no notes


def test_no_hostfile_runs_here(tmp_path):
    """The issue's command, real processes: `flextui --num_gpus 2 train.py` on this machine."""
    (tmp_path / "train.py").write_text(
        "import os\nprint('I am', os.environ['RANK'], 'of', os.environ['WORLD_SIZE'], flush=True)\n")
    result = run_flextui("--headless", "--log-dir", "runs", "--master_port", str(free_port()),
                         "--num_gpus", "2", "train.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "I am 0 of 2" in result.stdout and "I am 1 of 2" in result.stdout


# -- deliberate differences -----------------------------------------------------------------


def test_local_rank_note_only_where_deepspeed_differs():
    assert local_rank_note(World.from_slots({"a": [0, 1], "b": [0, 1]})) is None
    note = local_rank_note(World.from_slots({"a": [0, 1, 2], "b": [0, 1]}))
    assert "b gets 0,1" in note and "would give 1,0" in note


def test_num_gpus_over_request_is_refused_with_the_reason(tmp_path, hostfile):
    (tmp_path / "train.py").write_text("print('never runs')\n")
    result = run_flextui("--headless", "--log-dir", "runs", "--num_gpus", "3", str(hostfile), "train.py",
                         cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "flextui: error: --num_gpus 3 but host 'localhost' has only 2 slots "
        "(flextui never starts a rank on a GPU id past a host's slots; DeepSpeed would)"]


@pytest.mark.parametrize("text, cores", [("0", [0]), ("1,3-5,7", [1, 3, 4, 5, 7]), ("0-3,8-11", [0, 1, 2, 3, 8, 9, 10, 11])])
def test_core_list(text, cores):
    assert parse_core_list(text) == cores


@pytest.mark.parametrize("text", ["", "a", "3-1", "1,1", "4,2", "1-", "-1"])
def test_bad_core_list(text):
    with pytest.raises(UsageError, match="--bind_core_list"):
        parse_core_list(text)


# -- --launcher with DeepSpeed's names ------------------------------------------------------


def backend_for(*argv: str):
    from flextui.transport import backend_class

    args = parse_command_line([*argv, "hosts", "train.py"])
    deepspeed.check_options(args)
    deepspeed.apply_launcher_args(args, backend_class(args.launcher).name)
    return backend_class(args.launcher).from_args(args)


@pytest.mark.parametrize("name, backend, runtime", [
    ("pdsh", "ssh", None), ("PDSH", "ssh", None), ("slurm", "slurm", None),
    ("openmpi", "mpirun", "/usr/bin/mpirun.openmpi"), ("MPICH", "mpirun", "/usr/bin/mpiexec.hydra"),
])
def test_deepspeed_launcher_names_map_onto_backends(name, backend, runtime):
    from flextui.transport import backend_class

    args = parse_command_line(["--launcher", name, "hosts", "train.py"])
    assert backend_class(args.launcher).name == backend
    if runtime:  # ./dev installs both runtimes; each name picks its own
        assert backend_for("--launcher", name).runtime == runtime


@pytest.mark.parametrize("name, what", [("impi", "Intel MPI"), ("mvapich", "MVAPICH")])
def test_unavailable_mpi_is_one_line(tmp_path, name, what):
    (tmp_path / "hosts").write_text("localhost slots=1\n")
    (tmp_path / "train.py").write_text("print('never runs')\n")
    result = run_flextui("--headless", "--log-dir", "runs", "--launcher", name, "hosts", "train.py", cwd=tmp_path)
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(f"flextui: error: --launcher {name}: no {what} runtime found (")
    assert not (tmp_path / "runs").exists()


def test_launcher_args_go_to_mpirun():
    backend = backend_for("--launcher", "openmpi", "--mpi_args", "-x A=1", "--launcher_args", "--mca btl ^openib")
    assert backend.mpi_args == ["-x", "A=1", "--mca", "btl", "^openib"]


@pytest.mark.parametrize("name, fragment", [("pdsh", "pdsh's options have no counterpart"),
                                            ("slurm", "salloc options go in --slurm_args")])
def test_launcher_args_refused_where_they_mean_nothing(name, fragment):
    args = parse_command_line(["--launcher", name, "--launcher_args", "-f 64", "hosts", "train.py"])
    with pytest.raises(UsageError, match=fragment):
        deepspeed.apply_launcher_args(args, {"pdsh": "ssh"}.get(name, name))
