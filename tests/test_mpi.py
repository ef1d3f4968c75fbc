"""The MPI backend's parts that need no cluster: finding and telling the runtimes apart,
their command lines, and the guard the runtime starts on each node (run locally here).
The whole backend runs on the sshd cluster in test_mpi_e2e.py."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flextui.errors import LaunchError
from flextui.transport import mpi
from flextui.transport.mpi import GUARD_PROLOGUE, HYDRA, OPENMPI, OPENMPI5, detect_runtime, runtime_argv
from tests.helpers import marker, survivors  # noqa: F401 - fixtures

OPENMPI_VERSION = "mpirun (Open MPI) 4.1.4\n\nReport bugs to http://www.open-mpi.org/community/help/\n"
HYDRA_VERSION = "HYDRA build details:\n    Version:                                 4.0.2\n"


def fake_program(directory: Path, name: str, says: str, status: int = 0) -> Path:
    path = directory / name
    lines = " ".join(shlex.quote(line) for line in says.splitlines())
    path.write_text(f"#!/bin/sh\nprintf '%s\\n' {lines}\nexit {status}\n")  # builtins only: PATH may be empty
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("says, flavour", [
    (OPENMPI_VERSION, OPENMPI),
    ("mpirun.openmpi (OpenRTE) 4.1.4\n", OPENMPI),
    ("mpirun (Open MPI) 5.0.3\n\nReport bugs to https://www.open-mpi.org/community/help/\n", OPENMPI5),
    (HYDRA_VERSION, HYDRA),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.10\n", HYDRA),
])
def test_flavour_is_read_from_version(tmp_path, says, flavour):
    program = fake_program(tmp_path, "mpirun", says)
    assert detect_runtime(str(program)) == (str(program), flavour)


def test_mpirun_first_then_mpiexec_on_path(tmp_path, monkeypatch):
    fake_program(tmp_path, "mpiexec", HYDRA_VERSION)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert detect_runtime(None) == (str(tmp_path / "mpiexec"), HYDRA)
    fake_program(tmp_path, "mpirun", OPENMPI_VERSION)
    assert detect_runtime(None) == (str(tmp_path / "mpirun"), OPENMPI)


def test_no_runtime_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LaunchError, match=r"^--launcher mpirun: no mpirun or mpiexec on PATH \(install"):
        detect_runtime(None)
    with pytest.raises(LaunchError, match=r"^--launcher mpirun: /no/such/mpirun not found$"):
        detect_runtime("/no/such/mpirun")


def test_unknown_runtime_is_one_line(tmp_path):
    program = fake_program(tmp_path, "mpirun", "\nmpirun_rsh: some other MPI 2.3\nmore\n")
    with pytest.raises(LaunchError) as caught:
        detect_runtime(str(program))
    assert str(caught.value) == (f"--launcher mpirun: {program} is neither Open MPI nor MPICH/Hydra "
                                 "(--version says: mpirun_rsh: some other MPI 2.3)")


def test_command_lines_start_one_unbound_rank_on_the_host():
    program = ["python3", "-c", "code"]
    assert runtime_argv("/usr/bin/mpirun", OPENMPI, "node7", ["--mca", "btl", "tcp,self"], program, True) == [
        "/usr/bin/mpirun", "--np", "1", "--host", "node7", "--bind-to", "none", "--wdir", "/",
        "--mca", "orte_keep_fqdn_hostnames", "1", "--allow-run-as-root", "--mca", "btl", "tcp,self", "python3", "-c", "code",
    ]
    assert runtime_argv("/usr/bin/mpiexec", HYDRA, "node7", ["-iface", "ib0"], program, False) == [
        "/usr/bin/mpiexec", "-n", "1", "-hosts", "node7", "-genvnone", "-wdir", "/",
        "-iface", "ib0", "python3", "-c", "code",
    ]


def test_mpi_args_are_split_like_a_shell_line(tmp_path):
    program = fake_program(tmp_path, "mpirun", OPENMPI_VERSION)
    backend = mpi.MPIBackend(mpirun=str(program), mpi_args="--mca plm_rsh_args '-F /a b/config' -x 'V=$(id)'")
    assert backend.mpi_args == ["--mca", "plm_rsh_args", "-F /a b/config", "-x", "V=$(id)"]


def test_unbalanced_mpi_args_are_a_usage_error(tmp_path):
    from flextui.errors import UsageError

    program = fake_program(tmp_path, "mpirun", OPENMPI_VERSION)
    with pytest.raises(UsageError, match="--mpi_args: No closing quotation"):
        mpi.MPIBackend(mpirun=str(program), mpi_args="-x 'A=b")


# -- the guard: what the runtime starts on a node -----------------------------------------

GUARDED = GUARD_PROLOGUE + """import json, sys, time
print(json.dumps({"pid": os.getpid(), "sid": os.getsid(0), "ppid": os.getppid(),
                  "mpi": sorted(k for k in os.environ if k.startswith(('OMPI_', 'PMIX_', 'PMI_', 'MPI_LOCAL'))),
                  "kept": os.environ.get("KEEP_ME")}), flush=True)
signal.signal(signal.SIGTERM, lambda *_: (print("launcher got SIGTERM", flush=True), sys.exit(9)))
line = sys.stdin.readline()
print("launcher stdin EOF" if not line else "launcher read " + line.strip(), flush=True)
if line.strip() == "exit":
    sys.exit(5)
time.sleep(0.3)
print("launcher stopped", flush=True)
"""


def start_guarded(tmp_path) -> tuple[subprocess.Popen, dict]:
    env = {**os.environ, "OMPI_COMM_WORLD_RANK": "0", "PMIX_RANK": "0", "PMI_RANK": "0",
           "MPI_LOCALRANKID": "0", "KEEP_ME": "yes"}
    out = open(tmp_path / "out", "w+")
    guard = subprocess.Popen([sys.executable, "-c", GUARDED], stdin=subprocess.PIPE, stdout=out,
                             env=env, text=True, start_new_session=True)
    deadline = time.monotonic() + 10
    while not (text := Path(out.name).read_text()) and time.monotonic() < deadline:
        time.sleep(0.01)
    import json

    return guard, json.loads(text.splitlines()[0])


def output(tmp_path) -> list[str]:
    return (tmp_path / "out").read_text().splitlines()[1:]


def test_guard_runs_the_launcher_in_its_own_session_without_the_runtimes_env(tmp_path):
    guard, hello = start_guarded(tmp_path)
    try:
        assert hello["ppid"] == guard.pid and hello["pid"] != guard.pid
        assert hello["sid"] == hello["pid"] != os.getsid(guard.pid)
        assert hello["mpi"] == [] and hello["kept"] == "yes"
        guard.stdin.write("exit\n")
        guard.stdin.flush()
        assert guard.wait(10) == 5  # the launcher's exit status is the guard's
    finally:
        guard.kill()


def test_guard_forwards_sigterm_and_ends_like_the_launcher(tmp_path):
    guard, hello = start_guarded(tmp_path)
    try:
        guard.send_signal(signal.SIGTERM)
        assert guard.wait(10) == 9
        assert output(tmp_path) == ["launcher got SIGTERM"]
        assert not psutil.pid_exists(hello["pid"]) or psutil.Process(hello["pid"]).status() == psutil.STATUS_ZOMBIE
    finally:
        guard.kill()


@pytest.mark.slow
def test_launcher_outlives_a_sigkilled_guard_and_stops_on_stdin_eof(tmp_path):
    """The runtime's daemon SIGKILLs the guard (and its process group); the launcher goes on
    until the daemon closes its stdin, then stops in its own time."""
    guard, hello = start_guarded(tmp_path)
    launcher = psutil.Process(hello["pid"])
    try:
        os.killpg(guard.pid, signal.SIGKILL)
        guard.wait(10)
        time.sleep(0.2)
        assert launcher.is_running() and launcher.status() != psutil.STATUS_ZOMBIE
        guard.stdin.close()  # the daemon exits: the write end of the launcher's stdin closes
        launcher.wait(10)
        assert output(tmp_path) == ["launcher stdin EOF", "launcher stopped"]
    finally:
        if launcher.is_running():
            launcher.kill()


# -- the guard on a cut-off node: the runtime's daemon goes when the console is lost --------

# A runtime's daemon as the guard meets it: it starts the rank (guard + launcher) on its own
# stdin/stdout, writes down each signal it gets, and exits with the rank's status once the
# rank is gone. Like Open MPI's orted, it answers SIGTERM by stopping the rank (SIGCONT at
# once); like MPICH's hydra_pmi_proxy, it ignores SIGTERM ("hydra").
FAKE_DAEMON = """import signal, subprocess, sys
kind, record, argv = sys.argv[1], open(sys.argv[2], "a"), sys.argv[3:]
def on_term(sig, _frame):
    record.write("SIGTERM\\n")
    record.flush()
    if kind == "orted":
        rank.send_signal(signal.SIGCONT)
signal.signal(signal.SIGTERM, on_term)
rank = subprocess.Popen(argv)
code = rank.wait()
record.write("rank ended %d\\n" % code)
record.flush()
sys.exit(code & 255)
"""


@pytest.mark.parametrize("daemon", ["orted", "hydra"])
@pytest.mark.parametrize("console", ["lost", "alive"])
@pytest.mark.slow
def test_guard_ends_the_runtimes_daemon_only_when_the_console_is_lost(tmp_path, marker, daemon, console):
    """On a cut-off node the daemon can never report to its mpirun and would stay until the
    network returns: the launcher says "console-lost" and the guard SIGTERMs the daemon
    (SIGKILL after DAEMON_TERM_WAIT). On a normal end the daemon is left to report it."""
    from tests.helpers import node_spec, spec_line

    worker = [sys.executable, "-c", "import sys, time; time.sleep(float(sys.argv[1]))",
              "30" if console == "lost" else "0.2", marker]
    spec = {**node_spec(tmp_path / "logs", [worker]), "grace": 1.0,
            "console_timeout": 1.0 if console == "lost" else 30.0}
    record = tmp_path / "daemon.record"
    with open(tmp_path / "events", "wb") as events:
        fake = subprocess.Popen(
            [sys.executable, "-c", FAKE_DAEMON, daemon, str(record), sys.executable, "-c", mpi.LAUNCHER_PROGRAM],
            stdin=subprocess.PIPE, stdout=events, start_new_session=True)
    try:
        fake.stdin.write(spec_line(spec))
        fake.stdin.flush()  # then not a word, but the channel stays open: a cut network
        began = time.monotonic()
        code = fake.wait(timeout=20)
        took = time.monotonic() - began
        said = record.read_text().splitlines()
        if console == "alive":
            assert (code, said) == (0, ["rank ended 0"])
        elif daemon == "orted":  # it stopped the rank itself and ended when it was gone
            assert said[0] == "SIGTERM" and said[1].startswith("rank ended") and code == int(said[1].split()[-1])
            assert took < 1.0 + 1.0 + mpi.DAEMON_TERM_WAIT, "the guard waited for a daemon that handles SIGTERM"
        else:  # a daemon deaf to SIGTERM gets SIGKILL
            assert (code, said) == (-signal.SIGKILL, ["SIGTERM"])
            assert took >= 1.0 + mpi.DAEMON_TERM_WAIT
        assert json.loads((tmp_path / "events").read_text().splitlines()[-1])["ev"] == "done"
        assert survivors(marker) == []
    finally:
        fake.kill()
        fake.wait()
        fake.stdin.close()


# -- the launcher's side of the MPI channel's watchdog --------------------------------------


def test_launcher_answers_a_ping_only_when_asked(tmp_path):
    from tests.helpers import Launcher, node_spec

    launcher = Launcher(node_spec(tmp_path / "logs", [[sys.executable, "-c", "import time; time.sleep(30)"]]))
    try:
        launcher.wait_event(lambda e: e["ev"] == "started")
        launcher.send({"cmd": "ping"})
        launcher.send({"cmd": "ping", "reply": True})
        pong = launcher.wait_event(lambda e: e["ev"] == "pong")
        assert abs(pong["t"] - time.time()) < 10
        time.sleep(0.3)
        assert len(launcher.of("pong")) == 1  # the plain ping (SSH, Slurm, local) adds no event
    finally:
        launcher.close_stdin()
        launcher.finish()
