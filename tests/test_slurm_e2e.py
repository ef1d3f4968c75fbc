"""`--launcher slurm` end to end on a real Slurm (tests/slurmcluster.py): slurmctld, munged and
one slurmd per node in its own namespaces, jobs and steps made by real salloc/srun.

Every test uses the `slurm` fixture, which fails it if an allocation is still queued or any
process (slurmstepd, launcher, worker) is left on any node afterwards.
"""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from flextui.cli import parse_command_line
from flextui.launch import map_gpus
from flextui.transport.slurm import expand_counts, gpu_count, srun_environ

REPO = Path(__file__).resolve().parent.parent
WORKER = str(REPO / "tests" / "workers" / "worker.py")
FLEXTUI = [sys.executable, "-m", "flextui", "--headless", "--launcher", "slurm"]

# Reports what a rank sees, then prints numbered lines.
ENV_WORKER = r'''
import json, os, sys
keys = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "CROSS_RANK", "CROSS_SIZE", "MASTER_ADDR", "MASTER_PORT",
        "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID", "SLURM_NTASKS")
print("ENV " + json.dumps({"env": {k: os.environ.get(k) for k in keys}, "host": os.uname().nodename,
                           "argv": sys.argv[1:]}), flush=True)
for i in range(int(os.environ["LINES_TO_PRINT"])):
    print(f"rank {os.environ['RANK']} line {i}")
'''


def run_flextui(slurm, tmp_path, *args, timeout=60, prefix=()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *FLEXTUI, "--log-dir", str(tmp_path / "runs"), *args], cwd=tmp_path,
                          env=slurm.env(), capture_output=True, text=True, timeout=timeout)


def start_flextui(slurm, tmp_path, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen([*FLEXTUI, "--log-dir", str(tmp_path / "runs"), *args], cwd=tmp_path,
                            env=slurm.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def run_dir(tmp_path) -> Path:
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def wait_ready(tmp_path, world_size: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"flextui exited early ({proc.returncode}): {proc.stderr.read()}"
        ready = sum("ready rank" in log.read_text(errors="replace")
                    for log in (tmp_path / "runs").glob("*/rank-*.log"))
        if ready == world_size:
            return
        time.sleep(0.05)
    raise AssertionError(f"ranks not ready within {timeout}s")


def flextui_job(slurm) -> str:
    out = slurm.slurm("squeue", "-h", "-n", "flextui", "-o", "%i").stdout.split()
    assert len(out) == 1, out
    return out[0]


def job_processes(slurm, with_stepd: bool = True) -> list:
    return [p for n in slurm.nodes for p in slurm.job_processes(n) if with_stepd or "slurmstepd" not in p[2]]


def wait_nothing_left(slurm, timeout: float, with_stepd: bool = True) -> float:
    """Seconds until no job process is left on any node (and, with_stepd, no slurmstepd and
    no step in squeue either: slurmstepd outlives its tasks by 1-3 s, polling with backoff)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not job_processes(slurm, with_stepd) and not (with_stepd and slurm.steps()):
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"left after {timeout}s: steps {slurm.steps()}, processes {job_processes(slurm)}")


def wait_released(slurm, job: str, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while job in slurm.jobs():
        assert time.monotonic() < deadline, f"allocation {job} not released: {slurm.job_state(job)}"
        time.sleep(0.05)


# -- real Slurm ---------------------------------------------------------------------------


def test_new_allocation_two_nodes_env_logs_and_release(slurm, tmp_path):
    (tmp_path / "env_worker.py").write_text(ENV_WORKER)
    marker = tmp_path / "pwned"
    hostile = ["a b", f"$(touch {marker})", "'; touch x '", "*"]
    n2, n3 = slurm.nodes[1].name, slurm.nodes[2].name
    result = run_flextui(
        slurm, tmp_path, "--slurm_args", f"-N2 -w {n2},{n3} --comment '$(touch {marker})'", "--num_gpus", "2",
        "--env", "LINES_TO_PRINT=2000", "env_worker.py", "--", *hostile,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    path = run_dir(tmp_path)
    plan = json.loads((path / "events.jsonl").read_text().splitlines()[0])
    job = None
    for rank in range(4):
        text = (path / f"rank-{rank}.log").read_text()
        report = json.loads(text.splitlines()[0].removeprefix("ENV "))
        node = rank // 2
        job = job or report["env"]["SLURM_JOB_ID"]
        assert report["host"] == [n2, n3][node]
        assert report["env"] == {
            "RANK": str(rank), "LOCAL_RANK": str(rank % 2), "WORLD_SIZE": "4", "CROSS_RANK": str(node),
            "CROSS_SIZE": "2", "MASTER_ADDR": n2, "MASTER_PORT": "29500", "CUDA_VISIBLE_DEVICES": "0,1",
            "SLURM_JOB_ID": job, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank % 2),
            "SLURM_NODEID": str(node), "SLURM_NTASKS": "4",
        }
        assert report["argv"] == [f"--local_rank={rank % 2}", *hostile]
        assert text.splitlines()[1:] == [f"rank {rank} line {i}" for i in range(2000)]
    assert plan["master_addr"] == n2 and [n["host"] for n in plan["nodes"]] == [n2, n3]
    assert json.loads((path / "summary.json").read_text())["state"] == "succeeded"
    assert not marker.exists()
    wait_released(slurm, job)
    assert slurm.job_state(job) == "COMPLETED"
    assert "salloc: Granted job allocation" in result.stderr


def test_inside_a_batch_job_slots_from_its_tasks(slurm, tmp_path):
    """The console runs in an sbatch script on the job's first node, with the batch
    environment (SLURM_NTASKS=4, ... and input variables that must not reach its srun)."""
    (tmp_path / "env_worker.py").write_text(ENV_WORKER)
    command = shlex.join([*FLEXTUI, "--log-dir", str(tmp_path / "runs"), "--env", "LINES_TO_PRINT=1", "env_worker.py"])
    submitted = slurm.slurm("sbatch", "--parsable", "-N2", "--ntasks-per-node=2", "-o", str(tmp_path / "batch.out"),
                            "--wrap", f"export SLURM_LABELIO=1 SLURM_EXPORT_ENV=NONE; exec {command}", cwd=tmp_path)
    job = submitted.stdout.strip()
    deadline = time.monotonic() + 30
    while (state := slurm.job_state(job)) in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING"):
        assert time.monotonic() < deadline, f"batch job {job} still {state}"
        time.sleep(0.1)
    output = (tmp_path / "batch.out").read_text()
    assert state == "COMPLETED", output
    assert "job succeeded (exit code 0)" in output
    path = run_dir(tmp_path)
    names = [n.name for n in slurm.nodes[:2]]
    summary = json.loads((path / "summary.json").read_text())
    assert [(r["host"], r["gpu"]) for r in summary["ranks"]] == [(h, g) for h in names for g in (0, 1)]
    report = json.loads((path / "rank-3.log").read_text().splitlines()[0][4:])
    assert report["env"]["MASTER_ADDR"] == names[0] and report["env"]["SLURM_JOB_ID"] == job
    assert report["env"]["SLURM_PROCID"] == "3" and report["env"]["SLURM_NTASKS"] == "4"


def test_gpus_of_the_allocation_are_the_slots_and_the_devices(slurm, tmp_path):
    """The cluster's fake GPUs (2 per node): another job holds GPU 0 of the first node, so
    Slurm gives ours GPU 1 there and GPU 0 on the second; each rank must see exactly that."""
    (tmp_path / "env_worker.py").write_text(ENV_WORKER)
    n1, n2 = slurm.nodes[0].name, slurm.nodes[1].name
    other = slurm.slurm("salloc", "--no-shell", "-J", "other", "-w", n1, "--gres=gpu:1")
    other_job = other.stderr.split("Granted job allocation ")[1].split()[0]
    try:
        result = run_flextui(slurm, tmp_path, "--slurm_args", f"-N2 -w {n1},{n2} --gres=gpu:1",
                             "--env", "LINES_TO_PRINT=0", "env_worker.py")
    finally:
        slurm.slurm("scancel", other_job)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    path = run_dir(tmp_path)
    summary = json.loads((path / "summary.json").read_text())
    assert [(r["host"], r["gpu"]) for r in summary["ranks"]] == [(n1, 0), (n2, 0)]  # 1 slot per node
    devices = [json.loads((path / f"rank-{r}.log").read_text()[4:])["env"]["CUDA_VISIBLE_DEVICES"] for r in (0, 1)]
    assert devices == ["1", "0"]


def test_failing_rank_stops_the_others(slurm, tmp_path):
    start = time.monotonic()
    result = run_flextui(slurm, tmp_path, "--slurm_args", "-N3", "--num_gpus", "2", "--grace", "10",
                         WORKER, "--fail-rank", "4", "--fail-after", "1.0", "--code", "7")
    elapsed = time.monotonic() - start
    assert result.returncode == 7, result.stdout[-2000:] + result.stderr
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["first_failure"] == 4
    assert [r["status"] for r in summary["ranks"]] == ["killed"] * 4 + ["failed", "killed"]
    assert "first failure: rank 4" in result.stdout
    assert elapsed < 10, "the others were not stopped promptly (they would have run for 600 s)"


def test_sigint_stops_every_node_and_the_steps(slurm, tmp_path):
    proc = start_flextui(slurm, tmp_path, "--slurm_args", "-N2", "--num_gpus", "2", "--grace", "5",
                         WORKER, "--children", "2")
    wait_ready(tmp_path, 4, proc)
    job = flextui_job(slurm)
    assert len(slurm.steps(job)) == 2  # one launcher step per node
    for n in slurm.nodes[:2]:  # launcher + 2 workers with 2 children each (under a slurmstepd)
        procs = [args for _, _, args in slurm.job_processes(n)]
        assert sum("slurmstepd" not in args for args in procs) == 1 + 2 * 3, procs
    proc.send_signal(signal.SIGINT)
    gone = wait_nothing_left(slurm, timeout=5 + 2, with_stepd=False)
    assert gone < 2, f"cooperative workers took {gone:.2f}s to stop"
    wait_nothing_left(slurm, timeout=10)
    assert proc.wait(10) == 130
    wait_released(slurm, job)


def test_scancel_of_the_job_fails_it_and_leaves_nothing(slurm, tmp_path):
    proc = start_flextui(slurm, tmp_path, "--slurm_args", "-N2", "--grace", "5", WORKER, "--children", "1")
    wait_ready(tmp_path, 2, proc)
    job = flextui_job(slurm)
    slurm.slurm("scancel", job)
    wait_nothing_left(slurm, timeout=5 + 2)
    stdout, stderr = proc.communicate(timeout=15)
    assert proc.returncode == 1, stdout[-2000:] + stderr
    assert f"job failed (exit code 1); Slurm job {job} was cancelled" in stdout
    summary = json.loads((run_dir(tmp_path) / "summary.json").read_text())
    assert summary["error"] == f"Slurm job {job} was cancelled"
    assert {r["status"] for r in summary["ranks"]} == {"killed"}
    wait_released(slurm, job)


def test_kill_9_of_console_leaves_nothing_and_releases(slurm, tmp_path):
    proc = start_flextui(slurm, tmp_path, "--slurm_args", "-N2", "--grace", "5", WORKER, "--children", "1")
    wait_ready(tmp_path, 2, proc)
    job = flextui_job(slurm)
    helpers = psutil.Process(proc.pid).children(recursive=True)  # srun per node; salloc + holder
    assert {"srun", "salloc"} <= {p.name() for p in helpers}
    proc.kill()
    proc.wait(5)
    wait_nothing_left(slurm, timeout=5 + 2)
    wait_released(slurm, job)
    _, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, f"console-side helpers left: {alive}"


def test_ctrl_c_while_the_allocation_is_pending_withdraws_it(slurm, tmp_path):
    blocker = slurm.slurm("salloc", "--no-shell", "-J", "blocker", f"-N{len(slurm.nodes)}", "--exclusive")
    blocker_job = blocker.stderr.split("Granted job allocation ")[1].split()[0]
    try:
        # Started with SIGINT ignored, as `flextui ... &` in a script (or a CI runner) does:
        # Ctrl+C must withdraw the request all the same (it leaked a granted job before).
        proc = start_flextui(slurm, tmp_path, "--slurm_args", "-N2", WORKER,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        deadline = time.monotonic() + 15
        while not slurm.slurm("squeue", "-h", "-n", "flextui", "-t", "PD", "-o", "%i").stdout.strip():
            assert time.monotonic() < deadline and proc.poll() is None, "flextui's request never got queued"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=15)
    finally:
        slurm.slurm("scancel", blocker_job)
    assert proc.returncode == 1, stdout + stderr
    assert "salloc: " in stderr  # salloc's own messages are shown while waiting
    assert stderr.strip().splitlines()[-1] == "flextui: error: interrupted while waiting for the Slurm allocation"
    assert not slurm.slurm("squeue", "-h", "-n", "flextui", "-o", "%i").stdout.strip()
    assert not (tmp_path / "runs").exists()


def test_errors_before_anything_starts(slurm, tmp_path):
    result = run_flextui(slurm, tmp_path, WORKER)
    assert result.returncode == 1
    assert "not inside a Slurm allocation (SLURM_JOB_ID is not set)" in result.stderr

    result = run_flextui(slurm, tmp_path, "--slurm_args", "-N2", "no_such_train.py")
    assert result.returncode == 1, result.stderr
    assert f"flextui: error: {slurm.nodes[0].name}: script no_such_train.py not found in {tmp_path}" in result.stderr

    result = run_flextui(slurm, tmp_path, "--slurm_args", "-N1", "--remote_python", "/nonexistent/python3", WORKER)
    assert result.returncode == 1
    assert "python not found: /nonexistent/python3" in result.stderr

    hostfile = tmp_path / "hostfile"
    hostfile.write_text(f"{slurm.nodes[2].name} slots=2\n")
    result = run_flextui(slurm, tmp_path, "--slurm_args", "-N1 -w " + slurm.nodes[0].name,
                         "--hostfile", str(hostfile), WORKER)
    assert result.returncode == 2
    assert f"host '{slurm.nodes[2].name}' is not in Slurm job" in result.stderr

    result = run_flextui(slurm, tmp_path, "--slurm_args", "-N1 -p nosuchpartition", WORKER)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]  # salloc words it two ways, by timing
    assert last.startswith("flextui: error: salloc -N1 -p nosuchpartition failed: ") and "partition" in last
    assert not (tmp_path / "runs").exists()


# -- no cluster needed --------------------------------------------------------------------


def test_slurm_count_and_gres_parsing():
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("4") == [4]
    assert gpu_count("gpu:a100:2(IDX:0-1),nic:1") == 2
    assert gpu_count("gpu:4(IDX:0-3)") == 4
    assert gpu_count("") == 0
    assert map_gpus("0,1", "4,5,6,7") == "4,5"
    assert map_gpus("1", "") == "1"


def test_srun_environment_has_no_slurm_input_variables():
    env = srun_environ({"SLURM_NTASKS": "8", "SLURM_GPUS_PER_TASK": "1", "SLURM_LABELIO": "1",
                        "SLURM_EXPORT_ENV": "NONE", "SRUN_CPUS_PER_TASK": "4", "SLURM_CONF": "/etc/slurm.conf",
                        "SLURM_JOB_ID": "5", "CUDA_VISIBLE_DEVICES": "0", "SALLOC_PARTITION": "gpu", "PATH": "/bin"})
    assert env == {"SLURM_CONF": "/etc/slurm.conf", "SALLOC_PARTITION": "gpu", "PATH": "/bin"}


@pytest.mark.parametrize("argv, hostfile, script, rest", [
    (["--launcher", "slurm", "train.py", "--steps", "3"], None, "train.py", ["--steps", "3"]),
    (["--launcher", "slurm", "--slurm_args", "-N2", "train.py", "a", "b"], None, "train.py", ["a", "b"]),
    (["--launcher", "slurm", "-H", "hf", "train.py", "--slurm_args", "-x"], "hf", "train.py", ["--slurm_args", "-x"]),
    (["--launcher", "slurm", "-m", "pkg.train"], None, "pkg.train", []),
])
def test_slurm_command_line(argv, hostfile, script, rest):
    args = parse_command_line(argv)
    assert (args.hostfile, args.script, args.script_args) == (hostfile, script, rest)
    assert args.slurm_args == ("-N2" if "-N2" in argv else None)
