"""64 nodes x 8 ranks (issue 13): flextui beside pdsh -R ssh in the same run, on the same
real-sshd cluster, trivial workers (bench/workers/sleeper.py: print "ready rank R", sleep).

Launch: command start -> every rank's first line on the launcher's stdout.
Ctrl+C: SIGINT to the launcher's process group (a terminal's Ctrl+C; pdsh gets its own
abort gesture, two within a second) -> no job process left in any node's PID namespace
(everything but sshd), polled; what is still there after the observation window is
counted, then killed by the benchmark.

    sudo .venv/bin/python bench/run.py --only scale            # 64 x 8, flextui and pdsh
    sudo .venv/bin/python bench/run.py --only scale --scale 16x8 --no-pdsh
"""

from __future__ import annotations

import re
import time

from harness import WORKERS, Bench, Watched, log

import launch_abort


def scale_once(bench: Bench, launcher: str, nodes: int, slots: int, observe: float = 20.0) -> dict:
    world = nodes * slots
    argv, env = launch_abort._argv(bench, launcher, nodes, slots, WORKERS / "sleeper.py", [])
    bench.wait_sessions_closed()
    result: dict = {"launcher": launcher, "nodes": nodes, "slots": slots}
    w = Watched(argv, env=env, cwd=bench.work, pattern=re.compile(rb"ready rank (\d+)"), world=world)
    t_all = w.wait_all(60 + 2 * nodes)
    result.update(first_lines=t_all, seen=len(w.first))
    if t_all is None:
        w.kill()
        result.update(error=f"{len(w.first)}/{world} ranks seen", tail=w.tail.decode(errors="replace")[-1500:],
                      left=bench.clean_nodes())
        bench.clean_runs()
        log(f"scale {launcher} {nodes}x{slots}: {result['error']}\n{result['tail'][-600:]}")
        return result
    time.sleep(1.0)  # let every worker settle: counts before the Ctrl+C
    before, gone, counts, code, exit_after = launch_abort.ctrl_c(bench, w, launcher, nodes, observe, poll=0.02)
    left = bench.clean_nodes()
    bench.clean_runs()
    result.update(processes_before=sum(before), gone=gone, observed=observe,
                  left_after_observe=0 if gone is not None else sum(counts),
                  nodes_with_leftovers=0 if gone is not None else sum(1 for c in counts if c),
                  exit=code, launcher_exit_after=round(exit_after, 3), killed_by_bench=left)
    shown = f"{t_all:.2f}s" if t_all is not None else "FAILED"
    stop = f"0 processes after {gone:.2f}s" if gone is not None else \
        f"{result['left_after_observe']} processes left on {result['nodes_with_leftovers']} nodes after {observe:g}s"
    log(f"scale {launcher:8} {nodes}x{slots}: every first line {shown}; Ctrl+C -> {stop}")
    return result


def run_scale(bench: Bench, launchers: list[str], nodes: int, slots: int, reps: int) -> list[dict]:
    out = []
    for _ in range(reps):
        for launcher in launchers:
            if launcher in ("flextui", "pdsh"):
                out.append(scale_once(bench, launcher, nodes, slots))
    return out
