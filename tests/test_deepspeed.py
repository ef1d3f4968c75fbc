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
from tests.helpers import flextui_argv, free_port, run_flextui, start_flextui

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
    from flextui.transport import backend_names

    known = set(build_parser()._option_string_actions)
    assert set(OPTIONS) - known == set()
    assert set(VALUES) <= set(OPTIONS)
    assert set(deepspeed.LAUNCHERS) <= set(backend_names())


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


# -- .deepspeed_env values, expanded on each node (flextui.launch.expand_env_value) ----------


@pytest.mark.parametrize("value, expected", [
    ("/opt/x/bin:$PATH", "/opt/x/bin:/usr/bin"),
    ("$HOME/data", "/home/me/data"),
    ("${HOME}data", "/home/medata"),
    ('"$HOME/my data"', "/home/me/my data"),  # one level of quotes stripped, expanded inside
    ("'$HOME'", "$HOME"),  # single quotes: as written
    ("$UNSET:x", ":x"),  # unset: empty, as a shell says
    ("$(touch /tmp/pwned)", "$(touch /tmp/pwned)"),  # never run
    ("`touch /tmp/pwned`", "`touch /tmp/pwned`"),
    ('"$(id) `id` $HOME"', "$(id) `id` /home/me"),
    ("${HOME:-x} $1 $$", "${HOME:-x} $1 $$"),  # other $ forms stay as written
    ("a\\$HOME", "a$HOME"),
    ("", ""),
])
def test_env_file_values_expand_like_a_shell_that_runs_nothing(value, expected):
    from flextui.launch import expand_env_value

    assert expand_env_value(value, {"HOME": "/home/me", "PATH": "/usr/bin"}) == expected


def test_env_file_entries_see_the_ones_before_them():
    from flextui.launch import node_env

    spec = {"exports": {"PYTHONPATH": "/work"}, "env_file": [["A", "/a"], ["B", "$A/b:$PYTHONPATH:$HOME"]],
            "env": {"RANK": "0"}}
    assert node_env(spec, {"HOME": "/h"}) == {"PYTHONPATH": "/work", "A": "/a", "B": "/a/b:/work:/h", "RANK": "0"}


def test_env_file_with_an_open_quote_is_refused(tmp_path):
    from flextui.environment import EnvFileError, read_env_file

    (tmp_path / ".deepspeed_env").write_text('A=1\nB="unclosed\n')
    with pytest.raises(EnvFileError, match=r":2: in the value of B, the double quote is never closed"):
        read_env_file(str(tmp_path / ".deepspeed_env"))


ENV_SCRIPT = "import os\nfor k in ('A', 'B', 'PYTHONPATH'): print(k, os.environ.get(k), flush=True)\n"


@pytest.mark.parametrize("force_multi", [False, True])
def test_deepspeed_env_applies_to_multi_node_launches_only(tmp_path, force_multi):
    """As DeepSpeed: a job on this machine alone keeps the user's shell (a note says the
    file was skipped); a multi-node launch (here forced) applies it, expanded, with
    PYTHONPATH led by the working directory. DS_ENV_FILE names the file; .flextui_env
    applies to every job."""
    (tmp_path / "show.py").write_text(ENV_SCRIPT)
    (tmp_path / "my_env").write_text("A=$HOME/data\n")
    (tmp_path / ".flextui_env").write_text("B='$HOME'\n")
    argv = [*(["--force_multi"] if force_multi else []), "--headless", "--log-dir", "runs",
            "--master_port", str(free_port()), "show.py"]
    result = subprocess.run(flextui_argv(*argv),
                            cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "DS_ENV_FILE": "my_env", "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "B $HOME" in out
    if force_multi:
        assert f"A {tmp_path}/data" in out
        assert f"PYTHONPATH {tmp_path}" in out
        assert "not applied" not in result.stderr
    else:
        assert "A None" in out
        assert f"flextui: note: {tmp_path}/my_env not applied" in result.stderr


# -- --bind_cores_to_rank, --enable_each_rank_log (node launcher) ---------------------------


BIND_SCRIPT = ("import os\nprint('cpus', sorted(os.sched_getaffinity(0)), 'omp', os.environ['OMP_NUM_THREADS'],"
               " 'rank', os.environ['RANK'], flush=True)\n")


def test_bind_cores_and_each_rank_log(tmp_path):
    (tmp_path / "bind.py").write_text(BIND_SCRIPT)
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip("needs 2 usable CPUs")
    result = run_flextui("--headless", "--log-dir", "runs", "--master_port", str(free_port()), "--num_gpus", "2",
                         "--bind_cores_to_rank", "--bind_core_list", f"{usable[0]},{usable[1]}",
                         "--enable_each_rank_log", "rank-logs", "bind.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"cpus [{usable[rank]}] omp 1 rank {rank}" in result.stdout
    header = next(line for line in result.stdout.splitlines() if line.startswith("RANK"))
    assert header.split()[:4] == ["RANK", "HOST", "GPU", "CPUS"]
    logs = sorted((tmp_path / "rank-logs").iterdir())
    assert [p.name.split("_", 1)[1] for p in logs] == ["rank0.log", "rank1.log"]
    assert all(len(p.name.split("_")[0]) == 14 for p in logs)  # DeepSpeed's %Y%m%d%H%M%S prefix
    assert logs[1].read_text() == f"cpus [{usable[1]}] omp 1 rank 1\n"
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert [r["cpus"] for r in summary["ranks"]] == [str(usable[0]), str(usable[1])]


def test_bind_cores_too_few_is_a_preflight_error(tmp_path):
    (tmp_path / "bind.py").write_text(BIND_SCRIPT)
    usable = sorted(os.sched_getaffinity(0))
    result = run_flextui("--headless", "--log-dir", "runs", "--master_port", str(free_port()),
                         "--num_gpus", str(len(usable) + 1),
                         "--bind_cores_to_rank", "bind.py", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith(
        f"flextui: error: localhost: --bind_cores_to_rank: {len(usable) + 1} ranks but only ")


def test_each_rank_log_that_cannot_be_made_is_a_preflight_error(tmp_path):
    (tmp_path / "bind.py").write_text(BIND_SCRIPT)
    (tmp_path / "a-file").write_text("")
    result = run_flextui("--headless", "--log-dir", "runs", "--master_port", str(free_port()),
                         "--enable_each_rank_log", "a-file/logs", "bind.py", cwd=tmp_path)
    assert result.returncode == 1
    assert "flextui: error: localhost: --enable_each_rank_log: cannot create the directory" in result.stderr


@pytest.mark.parametrize("flag", [["--bind_cores_to_rank"], ["--enable_each_rank_log", "x"]])
def test_elastic_refuses_what_torchs_agent_does(flag, hostfile):
    args = parse_command_line(["--elastic", *flag, str(hostfile), "train.py"])
    with pytest.raises(UsageError, match="not available with --elastic"):
        deepspeed.check_options(args)


# -- multi-node: the sshd cluster ---------------------------------------------------------------


def cluster_hostfile(cluster, tmp_path, slots=1) -> str:
    path = tmp_path / "hostfile"
    path.write_text("".join(f"{n.name} slots={slots}\n" for n in cluster.nodes))
    return str(path)


def run_on_cluster(cluster, tmp_path, *args, env=None, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run(flextui_argv("--headless", "--log-dir", str(tmp_path / "runs"), *args),
                          cwd=tmp_path, env={**cluster.env(), **(env or {})}, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_multi_node_env_file_and_pythonpath(cluster, tmp_path):
    """.deepspeed_env values are expanded by each NODE against its own environment (sshd
    sets SSH_CONNECTION there, with the node's own address; the console has none), quotes
    stripped, commands never run; PYTHONPATH starts with the working directory, so a
    script in a subdirectory imports a package that sits beside it in the working directory."""
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("WHERE = 'the working directory'\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "train.py").write_text(
        "import os, pkg\n"
        "print('rank', os.environ['RANK'], 'pkg from', pkg.WHERE, flush=True)\n"
        "for k in ('NODE_SSH', 'RAN', 'QUOTED'): print(k, repr(os.environ.get(k)), flush=True)\n")
    (tmp_path / ".deepspeed_env").write_text(
        "export NODE_SSH=${SSH_CONNECTION}\nRAN=$(touch ran-a-command)`touch ran-too`\nQUOTED=\"two words\"\n")
    home_env = Path(cluster.env()["HOME"]) / ".deepspeed_env"
    assert not home_env.exists()
    result = run_on_cluster(cluster, tmp_path, cluster_hostfile(cluster, tmp_path), "sub/train.py",
                            env={"SSH_CONNECTION": ""})
    assert result.returncode == 0, result.stderr + result.stdout
    for node_rank, node in enumerate(cluster.nodes):
        out = (next((tmp_path / "runs").glob(f"*/rank-{node_rank}.log"))).read_text()
        assert "pkg from the working directory" in out
        ssh_connection = next(line for line in out.splitlines() if line.startswith("NODE_SSH")).split(" ", 1)[1]
        assert f" {node.ip} " in ssh_connection, ssh_connection  # client ip, port, server (node) ip, port
        assert "RAN '$(touch ran-a-command)`touch ran-too`'" in out
        assert "QUOTED 'two words'" in out
    assert not (tmp_path / "ran-a-command").exists() and not (tmp_path / "ran-too").exists()


# -- --save_pid, --venv_script ------------------------------------------------------------------


def test_save_pid_names_the_pid_that_stops_the_job(tmp_path):
    """/tmp/<pid of the flextui command>.deepspeed holds the pid whose SIGTERM stops every
    rank (attached: the console itself); the file is gone once the job has ended."""
    import psutil

    (tmp_path / "sleep.py").write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    proc = start_flextui("--headless", "--log-dir", "runs", "--master_port", str(free_port()), "--num_gpus", "2",
                         "--save_pid", "sleep.py", cwd=tmp_path)
    pid_file = Path(f"/tmp/{proc.pid}.deepspeed")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list((tmp_path / "runs").glob("*/rank-*.log"))) < 2:
            time.sleep(0.05)
        while time.monotonic() < deadline and not all(
                "up" in p.read_text() for p in (tmp_path / "runs").glob("*/rank-*.log")):
            time.sleep(0.05)
        saved = int(pid_file.read_text())
        workers = [p for p in psutil.process_iter(["cmdline"]) if "sleep.py" in " ".join(p.info["cmdline"] or [])
                   and p.pid != proc.pid]
        assert len(workers) == 2
        os.kill(saved, signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not pid_file.exists()
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert alive == []


def test_save_pid_never_overwrites_another_runs_file(tmp_path):
    from flextui.deepspeed import PidFile

    with PidFile(123, str(tmp_path)) as first:
        assert Path(first.path).read_text() == "123"
        with pytest.raises(UsageError, match="cannot create"):
            PidFile(456, str(tmp_path)).__enter__()
    assert not Path(first.path).exists()


def test_venv_script_is_sourced_before_the_launcher(tmp_path):
    (tmp_path / "venv.sh").write_text("export FROM_VENV=sourced\n")
    (tmp_path / "show.py").write_text("import os\nprint('FROM_VENV', os.environ.get('FROM_VENV'), flush=True)\n")
    result = run_flextui("--headless", "--log-dir", "runs", "--master_port", str(free_port()), "--venv_script",
                         "venv.sh", "show.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "FROM_VENV sourced" in result.stdout
    missing = run_flextui("--headless", "--log-dir", "runs2", "--venv_script", "nowhere.sh", "show.py", cwd=tmp_path)
    assert missing.returncode == 1
    [line] = missing.stderr.splitlines()[-1:]
    assert line.startswith("flextui: error: localhost: ") and "nowhere.sh" in line, missing.stderr


def test_venv_script_on_remote_nodes(cluster, tmp_path):
    (tmp_path / "venv.sh").write_text('export FROM_VENV="sourced on $(hostname)"\n')
    (tmp_path / "show.py").write_text("import os\nprint('FROM_VENV', os.environ.get('FROM_VENV'), flush=True)\n")
    result = run_on_cluster(cluster, tmp_path, "--venv_script", "venv.sh", cluster_hostfile(cluster, tmp_path),
                            "show.py")
    assert result.returncode == 0, result.stderr
    for node in cluster.nodes:
        assert f"FROM_VENV sourced on {node.name}" in result.stdout


# -- --no_ssh --node_rank N: one console per node, started by a scheduler ----------------------


def test_no_ssh_runs_one_nodes_share_with_the_jobs_identity(tmp_path):
    (tmp_path / "hosts").write_text("localhost slots=2\n127.0.0.1 slots=3\n")
    (tmp_path / "env.py").write_text(
        "import os\nprint(' '.join(f'{k}={os.environ[k]}' for k in ('RANK', 'LOCAL_RANK', 'WORLD_SIZE', "
        "'CROSS_RANK', 'CROSS_SIZE', 'LOCAL_SIZE')), flush=True)\n")
    result = run_flextui("--headless", "--log-dir", "runs", "--no_ssh", "--node_rank", "1",
                         "--enable_each_rank_log", "each", "hosts", "env.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = sorted(line for line in result.stdout.splitlines() if "RANK=" in line)
    # every rank number shown is the job's RANK, not this console's index (0-2)
    assert lines == [f"[{2 + i}|127.0.0.1] RANK={2 + i} LOCAL_RANK={i} WORLD_SIZE=5 CROSS_RANK=1 CROSS_SIZE=2 "
                     "LOCAL_SIZE=3" for i in range(3)]
    assert "this machine runs ranks 2-4 of 5" in result.stderr
    table = result.stdout.splitlines()
    header = next(i for i, line in enumerate(table) if line.startswith("RANK "))
    assert [row.split()[0] for row in table[header + 1: header + 4]] == ["2", "3", "4"]
    assert sorted(p.name.split("_", 1)[1] for p in (tmp_path / "each").iterdir()) == [
        "rank2.log", "rank3.log", "rank4.log"]  # DeepSpeed's names: by RANK
    summary = json.loads(next((tmp_path / "runs").glob("*/summary.json")).read_text())
    assert [(r["rank"], r["job_rank"]) for r in summary["ranks"]] == [(0, 2), (1, 3), (2, 4)]


@pytest.mark.parametrize("argv, fragment", [
    (["--no_ssh"], "--no_ssh needs --node_rank N"),
    (["--node_rank", "1"], "--node_rank needs --no_ssh"),
    (["--no_ssh", "--node_rank", "2"], "--node_rank 2: the job has 2 node(s), 0..1"),
    (["--no_ssh", "--node_rank", "0", "--elastic"], "cannot be --elastic"),
])
def test_no_ssh_bad_input(tmp_path, argv, fragment):
    (tmp_path / "hosts").write_text("localhost slots=1\n127.0.0.1 slots=1\n")
    (tmp_path / "env.py").write_text("print('never runs')\n")
    result = run_flextui("--headless", "--log-dir", "runs", *argv, "hosts", "env.py", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1].startswith("flextui: error: ") and fragment in result.stderr


def test_no_ssh_consoles_on_each_node_form_one_job(cluster, tmp_path):
    """As a scheduler that starts one process per node would: `flextui --no_ssh --node_rank N`
    on each node of the sshd cluster; the ranks of both consoles all-reduce together."""
    from tests.helpers import PY, REPO, TRAIN

    hosts = cluster_hostfile(cluster, tmp_path, slots=2)
    port = free_port()
    consoles = [
        subprocess.Popen(cluster.ssh_argv(node, "cd", str(tmp_path), "&&", "PYTHONPATH=" + str(REPO), PY, "-m",
                                          "flextui", "--headless", "--log-dir", f"runs-{i}", "--master_port",
                                          str(port), "--no_ssh", "--node_rank", str(i), hosts, str(TRAIN),
                                          "--steps", "3", "--step-time", "0.05"),
                         env=cluster.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for i, node in enumerate(cluster.nodes)
    ]
    outputs = [console.communicate(timeout=180) for console in consoles]
    for console, (out, err) in zip(consoles, outputs):
        assert console.returncode == 0, err + out
    size = 2 * len(cluster.nodes)
    for i, (out, _) in enumerate(outputs):
        assert f"rank {2 * i}/{size}" in out and f"rank {2 * i + 1}/{size}" in out
        assert "step 3/3" in out  # every all-reduce completed across all the consoles


def test_master_addr_that_does_not_resolve_on_a_node_is_one_line(tmp_path):
    """DeepSpeed asks the first node for its IP (`hostname -I`); flextui passes the host name,
    so every node checks that it resolves before anything starts."""
    (tmp_path / "env.py").write_text("print('never runs')\n")
    result = run_flextui("--headless", "--log-dir", "runs", "--master_port", str(free_port()),
                         "--master_addr", "no-such-host.invalid", "env.py", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "flextui: error: localhost: MASTER_ADDR no-such-host.invalid does not resolve on this node (workers "
        "could not reach it): pass --master_addr with an address they can")
    assert not (tmp_path / "runs").exists()
