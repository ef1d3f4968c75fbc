"""The node launcher's diagnosis side, run directly: samples of each rank's process tree
(psutil; GPUs through a stand-in pynvml), py-spy stack dumps of every rank and its
children, and which exits were the node's stop and which were the rank's own."""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import PY, Launcher, marker, node_spec, survivors, wait_for  # noqa: F401 - fixtures

STANDINS = Path(__file__).resolve().parent / "standins"
GIB = 1 << 30

#: Rank 0 spins (with a spinning child); rank 1 sleeps in wait_here(); with argv[1] ==
#: "children", rank 1 also has a Python child in loader() and a shell child (with its
#: `sleep` child).
WORKER = r'''
import os, subprocess, sys, time
marker = os.path.dirname(os.path.abspath(__file__)) + os.sep
rank = int(os.environ["RANK"])
SPIN = "import time\nt = time.time()\nwhile time.time() - t < 600:\n    pass"
LOADER = "import time\ndef loader():\n    time.sleep(600)\nloader()"
def wait_here():
    time.sleep(600)
if rank == 0 and sys.argv[1] == "spin":
    subprocess.Popen([sys.executable, "-c", SPIN, marker])
    print("spinning", flush=True)
    t = time.time()
    while time.time() - t < 600:
        pass
if rank == 1 and sys.argv[1] == "children":
    subprocess.Popen([sys.executable, "-c", LOADER, marker])
    subprocess.Popen(["sh", "-c", "sleep 600; :", marker])
print("waiting", flush=True)
wait_here()
'''


def start(tmp_path: Path, mode: str, ranks: int = 2, env: dict | None = None,
          launcher_env: dict | None = None, interval: float = 0.3) -> Launcher:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    spec = node_spec(tmp_path / "logs", [[PY, str(script), mode] for _ in range(ranks)],
                     env={"CUDA_VISIBLE_DEVICES": ",".join(map(str, range(ranks))), **(env or {})},
                     sample_interval=interval)
    launcher = Launcher(spec, grace=2.0, env=launcher_env)
    launcher.started(ranks)
    return launcher


def stop(launcher: Launcher, marker: str) -> None:
    launcher.send({"cmd": "stop"})
    launcher.finish()
    assert survivors(marker) == []


def samples(launcher: Launcher, count: int, timeout: float = 20.0) -> list[dict]:
    wait_for(lambda: len(launcher.of("sample")) >= count, timeout, f"{count} samples")
    return launcher.of("sample")


def by_rank(sample: dict) -> dict[int, dict]:
    return {entry["rank"]: entry for entry in sample["ranks"]}


@pytest.mark.slow
def test_samples_measure_each_ranks_process_tree(tmp_path, marker):
    launcher = start(tmp_path, "spin")
    wait_for(lambda: "spinning" in launcher.output(0), 20, "rank 0 spinning")
    first = len(launcher.of("sample"))
    latest = by_rank(samples(launcher, first + 3)[-1])
    spinning, sleeping = latest[0], latest[1]
    # Two processes spinning (the rank and its child) share 2 loaded cores: well above one
    # sleeper's, whatever else the machine runs (seen as low as 20% with 5 test suites on
    # the 2 cores).
    assert spinning["procs"] == 2 and sleeping["procs"] == 1
    assert spinning["cpu"] > 10 and sleeping["cpu"] < 5, latest
    assert spinning["cpu"] > 3 * sleeping["cpu"]
    for entry in latest.values():
        assert entry["rss"] > 5 << 20 and entry["threads"] >= 1
        assert "gpu" not in entry  # no NVML here: no figures, never made-up ones
    assert launcher.of("sample")[-1]["nvml"].startswith("nvidia-ml-py is not installed for ")
    stop(launcher, marker)
    assert not [e for e in launcher.events if e["ev"] == "sample" and e["t"] > launcher.of("stopping")[0]["t"]]


def test_gpu_figures_come_from_nvml(tmp_path, marker):
    """A stand-in pynvml on the launcher's path (the nodes here have no GPU): each rank's
    bound GPU (the local_rank-th of CUDA_VISIBLE_DEVICES) with the figures NVML gives."""
    job = f"fake-{os.getpid()}-{time.monotonic_ns()}"
    launcher = start(tmp_path, "-", env={"FAKE_NVML_JOB": job},
                     launcher_env={"PYTHONPATH": str(STANDINS), "FAKE_NVML_JOB": job})
    latest = samples(launcher, 2)[-1]
    assert latest["nvml"] is None
    for rank, entry in by_rank(latest).items():
        assert entry["gpu"] == {"device": str(rank), "util": 50 + rank, "mem_used": (10 + rank) * GIB,
                                "mem_total": 80 * GIB, "proc_mem": (1 + rank) * GIB}
    stop(launcher, marker)


@pytest.mark.slow
def test_nvml_without_a_driver_says_so(tmp_path, marker):
    launcher = start(tmp_path, "-", launcher_env={"PYTHONPATH": str(STANDINS), "FAKE_NVML_NO_DRIVER": "1"})
    latest = samples(launcher, 1)[-1]
    assert latest["nvml"] == "NVML: Driver Not Loaded"
    assert all("gpu" not in entry for entry in latest["ranks"])
    stop(launcher, marker)


def test_stacks_of_every_rank_with_its_children(tmp_path, marker):
    launcher = start(tmp_path, "children", interval=0)
    wait_for(lambda: all("waiting" in launcher.output(r) for r in (0, 1)), 20, "both ranks waiting")
    wait_for(lambda: len(psutil.Process(launcher.of("started", 1)[0]["pid"]).children(recursive=True)) == 3, 10)
    time.sleep(0.5)  # the python child reaches loader()
    started = time.monotonic()
    launcher.send({"cmd": "stacks", "id": 7, "timeout": 10})
    done = launcher.wait_event(lambda e: e["ev"] == "stacks", 30)
    took = time.monotonic() - started
    assert done == {"ev": "stacks", "id": 7, "ranks": 2, "error": None, "t": done["t"]}
    stacks = {e["rank"]: e for e in launcher.of("stack")}
    assert set(stacks) == {0, 1} and all(e["id"] == 7 for e in stacks.values())

    own = stacks[0]["processes"]
    assert [p["pid"] for p in own] == [launcher.of("started", 0)[0]["pid"]]
    main = own[0]["threads"][0]
    assert main["tid"] == own[0]["pid"]
    assert [f[0] for f in main["frames"]] == ["wait_here", "<module>"]  # innermost first
    assert main["frames"][0][1] == "worker.py" and main["frames"][0][3] == str(tmp_path / "worker.py")

    rank1 = stacks[1]["processes"]
    assert rank1[0]["pid"] == stacks[1]["pid"] == launcher.of("started", 1)[0]["pid"]
    children = {p["cmdline"].split()[0].rsplit("/", 1)[-1]: p for p in rank1[1:]}
    assert set(children) == {os.path.basename(sys.executable), "sh", "sleep"}, rank1
    python_child = children[os.path.basename(sys.executable)]
    assert python_child["ppid"] == rank1[0]["pid"] == children["sh"]["ppid"]
    assert children["sleep"]["ppid"] == children["sh"]["pid"]  # a grandchild is the rank's too
    assert [f[0] for f in python_child["threads"][0]["frames"]] == ["loader", "<module>"]
    assert children["sh"]["error"] == children["sleep"]["error"] == "not a Python process"
    assert took < 10, took
    stop(launcher, marker)


def test_stacks_without_py_spy_say_how_to_install_it(tmp_path, marker):
    launcher = start(tmp_path, "-", interval=0, launcher_env={"FLEXTUI_PY_SPY": ""})
    launcher.send({"cmd": "stacks", "id": 1})
    done = launcher.wait_event(lambda e: e["ev"] == "stacks", 20)
    assert done["error"] == (f"py-spy is not installed for {PY}: pip install 'flextui[stacks]' "
                             "(or py-spy) for that python")
    assert done["ranks"] == 0 and not launcher.of("stack")
    stop(launcher, marker)
    assert b"Traceback" not in launcher.stderr


GO_WORKER = r'''
import os, sys, time
go = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go")
while not os.path.exists(go):
    time.sleep(0.01)
print("ending on my own", flush=True)
sys.exit(int(sys.argv[1]))
'''


def test_a_rank_that_ended_on_its_own_as_the_stop_began_is_not_stopped(tmp_path, marker):
    """Rank 0 fails and rank 1 dies on its own at the same moment (as ranks die of their
    lost peer): the launcher, paused meanwhile, reaps one of them first and stops the
    node; the other has already ended, so its exit is its own, not "stopped". Rank 2,
    running when the stop comes, is stopped."""
    script = tmp_path / "go_worker.py"
    script.write_text(GO_WORKER)
    sleeper = tmp_path / "sleeper.py"
    sleeper.write_text("import time\nprint('up', flush=True)\ntime.sleep(600)\n")
    spec = node_spec(tmp_path / "logs", [[PY, str(script), "3"], [PY, str(script), "1"], [PY, str(sleeper)]],
                     sample_interval=0)
    launcher = Launcher(spec, grace=2.0)
    pids = [e["pid"] for e in launcher.started(3)]
    wait_for(lambda: "up" in launcher.output(2), 20, "rank 2 up")
    os.kill(launcher.proc.pid, signal.SIGSTOP)
    try:
        (tmp_path / "go").touch()
        wait_for(lambda: all(psutil.Process(p).status() == psutil.STATUS_ZOMBIE for p in pids[:2]), 20,
                 "ranks 0 and 1 ended")
    finally:
        os.kill(launcher.proc.pid, signal.SIGCONT)
    launcher.finish()
    exits = {e["rank"]: e for e in launcher.of("exited")}
    assert (exits[0]["code"], exits[0]["stopped"]) == (3, False)
    assert (exits[1]["code"], exits[1]["stopped"]) == (1, False)
    assert (exits[2]["signal"], exits[2]["stopped"]) == (signal.SIGTERM, True)
    assert len(launcher.of("stopping")) == 1
    assert survivors(marker) == []


def test_the_protocol_documents_the_diagnosis_events():
    import flextui.launch

    doc = flextui.launch.__doc__
    for text in ('{"ev": "sample"', '{"ev": "stack"', '{"ev": "stacks"', '{"cmd": "stacks"', '"sample_interval"'):
        assert text in doc, text
