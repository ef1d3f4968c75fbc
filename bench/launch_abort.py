"""Launch and abort benchmarks: flextui beside pdsh -R ssh and DeepSpeed on the same nodes.

Launch: command start (Popen) -> every rank's first log line seen on the launcher's stdout
(what the user sees), N nodes x 2 slots, a trivial worker and examples/train.py.

Abort: a "Ctrl+C" (SIGINT to the launcher's process group, as a terminal sends it) -> the
last job process gone on every node, counted inside each node's PID namespace
(SSHCluster.job_process_count: everything but sshd). Workers each start one child
process (like a dataloader worker); in the "ignores SIGTERM" case the last rank ignores
SIGTERM, so flextui needs its --grace before SIGKILL.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import statistics
import time

from harness import REPO, WORKERS, Bench, Watched, log

WORKLOADS = {
    # name: (script, args, first-line pattern: group 1 = rank)
    "hello": (WORKERS / "hello.py", [], rb"rank (\d+) up"),
    "train": (REPO / "examples" / "train.py", ["--steps", "1", "--step-time", "0"],
              rb"rank (\d+)/\d+ local_rank"),
}
LABEL = {"hello": "trivial worker", "train": "examples/train.py (torch, gloo)"}
SLOTS = 2


def _argv(bench: Bench, launcher: str, nodes: int, slots: int, script, args, grace=None):
    if launcher == "flextui":
        return bench.flextui_argv(nodes, slots, script, args, grace=grace), bench.flextui_env()
    if launcher.startswith("mpirun:"):  # flextui --launcher mpirun with that runtime
        options = bench.mpi_options(launcher.partition(":")[2])
        return bench.flextui_argv(nodes, slots, script, args, grace=grace, options=options), bench.flextui_env()
    if launcher == "pdsh":
        return bench.pdsh_argv(nodes, slots, script, args), bench.wrapped_env()
    return bench.deepspeed_argv(nodes, slots, script, args), bench.deepspeed_env()


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def launch_once(bench: Bench, launcher: str, nodes: int, workload: str) -> dict:
    script, args, pattern = WORKLOADS[workload]
    argv, env = _argv(bench, launcher, nodes, SLOTS, script, args)
    timeout = 60 if workload == "hello" else 240
    bench.wait_sessions_closed()
    nodes0, console0 = bench.node_cpu(), children_cpu()
    w = Watched(argv, env=env, cwd=bench.work, pattern=re.compile(pattern), world=nodes * SLOTS)
    t_all = w.wait_all(timeout)
    code, wall = w.finish(timeout)
    # the launcher's own process tree on the console machine (waited for, so in RUSAGE_CHILDREN)
    console_cpu = children_cpu() - console0
    left = bench.clean_nodes()
    bench.wait_sessions_closed()
    node_cpu = bench.node_cpu() - nodes0
    bench.clean_runs()
    result = {"first_lines": t_all, "exit": code, "wall": wall, "seen": len(w.first), "left": left,
              "console_cpu": round(console_cpu, 3), "node_cpu": round(node_cpu, 3)}
    if t_all is None or code not in (0,):
        result["tail"] = w.tail.decode(errors="replace")[-1500:]
        log(f"launch {launcher} {workload} {nodes}n: exit {code}, {len(w.first)}/{nodes * SLOTS} ranks seen\n"
            + result["tail"][-600:])
    return result


def run_launch(bench: Bench, launchers: list[str], node_counts: list[int], workloads: list[str],
               reps: dict[str, int], ds_reps: int | None = None) -> dict:
    raw: dict = {}
    for launcher in launchers:  # warm-up (page cache, fresh sshds): not recorded
        if launcher != "deepspeed":  # its venv was just imported by the availability check
            launch_once(bench, launcher, 1, "hello")
    for workload in workloads:
        for rep in range(reps[workload]):
            for nodes in node_counts:
                for launcher in launchers:
                    if launcher == "deepspeed" and ds_reps is not None and rep >= ds_reps:
                        continue  # the slowest by far: fewer repetitions keep the full run ~10 min
                    r = launch_once(bench, launcher, nodes, workload)
                    raw.setdefault(workload, {}).setdefault(str(nodes), {}).setdefault(launcher, []).append(r)
                    shown = f"{r['first_lines']:.2f}s" if r["first_lines"] is not None else "FAILED"
                    log(f"launch {workload:5} {nodes}n x{SLOTS} {launcher:9} rep {rep + 1}: first lines {shown}, "
                        f"exit {r['exit']} after {r['wall']:.2f}s")
    return raw


def median_first(results: list[dict], key: str = "first_lines") -> float | None:
    values = [r[key] for r in results if r["first_lines"] is not None and r["exit"] == 0]
    return statistics.median(values) if values else None


# --------------------------------------------------------------------------------------
def abort_once(bench: Bench, launcher: str, nodes: int, ignore: bool, grace: float,
               observe: float) -> dict:
    world = nodes * SLOTS
    args = ["--children", "1"] + (["--ignore-term-rank", str(world - 1)] if ignore else [])
    argv, env = _argv(bench, launcher, nodes, SLOTS, WORKERS / "sleeper.py", args,
                      grace=grace if launcher == "flextui" else None)
    w = Watched(argv, env=env, cwd=bench.work, pattern=re.compile(rb"ready rank (\d+)"), world=world)
    result: dict = {"launcher": launcher, "nodes": nodes, "ignore": ignore, "grace": grace}
    if w.wait_all(120) is None:
        w.kill()
        result.update(error=f"not all ranks ready ({len(w.first)}/{world})",
                      tail=w.tail.decode(errors="replace")[-1500:], left=bench.clean_nodes())
        bench.clean_runs()
        log(f"abort {launcher}: {result['error']}\n{result['tail'][-600:]}")
        return result
    time.sleep(0.5)  # every child started; counts settle
    before, gone, counts, code, t_exit = ctrl_c(bench, w, launcher, nodes, observe, poll=0.005)
    left = bench.clean_nodes()
    bench.clean_runs()
    result.update(before=before, gone=gone, left_after_observe=counts if gone is None else [0] * nodes,
                  observed=observe, exit=code, launcher_exit_after=t_exit, killed_leftovers=left)
    return result


def ctrl_c(bench: Bench, w: Watched, launcher: str, nodes: int, observe: float,
           poll: float) -> tuple[list[int], float | None, list[int], int | None, float]:
    """A terminal's Ctrl+C to the launcher's process group, then every node's job processes
    counted until none is left or `observe` s pass: (counts before, seconds until none
    left or None, the last counts, the launcher's exit code, seconds until it exited)."""
    before = bench.job_counts(nodes)
    t0 = time.monotonic()
    w.signal_group(signal.SIGINT)
    if launcher == "pdsh":
        time.sleep(0.3)  # pdsh: a second Ctrl+C within 1 s aborts (the first prints status)
        w.signal_group(signal.SIGINT)
    gone, counts = None, before
    while time.monotonic() - t0 < observe:
        counts = bench.job_counts(nodes)
        if not any(counts):
            gone = time.monotonic() - t0
            break
        time.sleep(poll)
    code, _ = w.finish(30)
    return before, gone, counts, code, time.monotonic() - t0


def run_abort(bench: Bench, launchers: list[str], nodes: int, reps: int, grace: float,
              quick: bool) -> list[dict]:
    plan = [("flextui", False)] * reps + [("flextui", True)]
    if "deepspeed" in launchers:
        plan.append(("deepspeed", False))
        if not quick:
            plan.append(("deepspeed", True))
    if "pdsh" in launchers and not quick:
        plan.append(("pdsh", False))
    out = []
    for launcher, ignore in plan:
        # DeepSpeed's node launcher waits 30 s for SIGTERM-ignoring processes before SIGKILL
        observe = (36.0 if ignore else 10.0) if launcher == "deepspeed" else (grace + 5 if ignore else 8.0)
        r = abort_once(bench, launcher, nodes, ignore, grace, observe)
        out.append(r)
        what = "ignores SIGTERM" if ignore else "cooperative"
        if r.get("gone") is not None:
            log(f"abort {launcher:9} {what}: all gone after {r['gone']:.3f}s (before: {r['before']})")
        else:
            log(f"abort {launcher:9} {what}: left after {r.get('observed')}s: {r.get('left_after_observe')} "
                f"{r.get('error', '')}")
    return out
