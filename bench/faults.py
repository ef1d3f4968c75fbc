"""The fault matrix as a table: every case of tests/faultkit.py, on real clusters.

    python bench/faults.py [--backend ssh|slurm] [--case NAME ...] [--runs N]

For each backend it brings up its own test cluster (tests/sshcluster.py: 2 sshd nodes in
namespaces; tests/slurmcluster.py: slurmctld + a slurmd per node), then runs each case
--runs times (default 3): `flextui --headless` on 2 nodes x 2 slots, every rank
(tests/workers/fault_worker.py) with a child process, one fault once every rank is
ready. Per case it prints

    exit      the console's exit code, as a shell shows it (each run's, if they differ)
    clean     seconds from the fault until no job process was left on any node, counted
              inside each node's PID namespace: median and max over the runs
    logs      every rank's log in the console's run directory against the worker's own
              copy: "exact" (byte for byte); "exact prefix" for cases where the console or
              a node died (each log a byte-exact prefix of the copy); otherwise what differed

A case that fails (wrong exit code, processes left, logs differ) is marked "FAIL" and the
script exits 1. Needs root (namespaces, sshd, slurmd), like the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import faultkit  # noqa: E402
import slurmcluster  # noqa: E402
import sshcluster  # noqa: E402


def start_cluster(backend: faultkit.Backend, base: Path, stack: ExitStack):
    if backend.fixture == "make_cluster":
        return stack.enter_context(sshcluster.SSHCluster(2, base / "ssh", prefix="ftx", auto_prefix=True))
    if backend.fixture == "slurm":
        return stack.enter_context(slurmcluster.SlurmCluster(2, base / "slurm", prefix="fty"))
    raise SystemExit(f"bench/faults.py: no cluster for backend {backend.name} (fixture {backend.fixture})")


def prepare(backend: faultkit.Backend, cluster) -> None:
    """Every node up, nothing left from the previous run."""
    net = backend.net(cluster)
    for node in net.ensure_up():
        if hasattr(cluster, "restart_slurmd"):
            cluster.restart_slurmd(node)
    for node in net.nodes:
        left = [pid for pid, _, _ in cluster.job_processes(node)]
        if left:
            cluster.kill_node_processes(node, left)
    if hasattr(cluster, "wait_idle"):
        cluster.wait_idle()


def row(backend: faultkit.Backend, case: faultkit.Case, outcomes: list[faultkit.Outcome]) -> tuple[list[str], bool]:
    codes = sorted({o.exit_code for o in outcomes})
    cleans = [o.clean_after for o in outcomes if o.clean_after is not None]
    ok = all(o.exit_code == case.expected_exit and o.clean_after is not None and o.logs_ok for o in outcomes)
    clean = f"{statistics.median(cleans):.2f} / {max(cleans):.2f}" if cleans else "-"
    if len(cleans) < len(outcomes):
        clean += f" ({len(outcomes) - len(cleans)} run(s) left processes)"
    problems = [p for o in outcomes for p in o.log_problems]
    logs = ("exact prefix" if case.partial_ranks else "exact") if not problems else problems[0]
    pending = backend.pending.get(case.name)
    verdict = "" if ok else f"FAIL (open: {pending})" if pending else "FAIL"
    return [backend.name, case.name, "/".join(map(str, codes)), str(case.expected_exit), clean, logs, verdict], ok


def print_table(rows: list[list[str]]) -> None:
    header = ["backend", "case", "exit", "expected", "clean after s (median / max)", "logs", ""]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", choices=[b.name for b in faultkit.BACKENDS])
    parser.add_argument("--case", action="append", choices=faultkit.CASE_NAMES)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    backends = [b for b in faultkit.BACKENDS if args.backend is None or b.name in args.backend]
    cases = [c for c in faultkit.CASES if args.case is None or c.name in args.case]
    rows, all_ok = [], True
    with tempfile.TemporaryDirectory(prefix="flextui-faults-") as tmp, ExitStack() as stack:
        base = Path(tmp)
        for backend in backends:
            chosen = [c for c in cases if backend.applies(c)]
            if not chosen:
                continue
            cluster = start_cluster(backend, base, stack)
            for case in chosen:
                outcomes = []
                for run in range(args.runs):
                    prepare(backend, cluster)
                    started = time.monotonic()
                    outcome = faultkit.run_case(backend, cluster, case, base / backend.name / case.name / str(run))
                    outcomes.append(outcome)
                    print(f"# {backend.name} {case.name} run {run + 1}: exit {outcome.exit_code}, clean after "
                          f"{outcome.clean_after if outcome.clean_after is None else round(outcome.clean_after, 2)}"
                          f" s{f' LEFT {outcome.left}' if outcome.left else ''}, "
                          f"logs {'ok' if outcome.logs_ok else outcome.log_problems}, "
                          f"{time.monotonic() - started:.1f} s in all", file=sys.stderr, flush=True)
                cells, ok = row(backend, case, outcomes)
                rows.append(cells)
                all_ok &= ok
    print(f"fault matrix: 2 nodes x 2 slots, every rank with a child, {args.runs} run(s) per case, "
          f"--grace {faultkit.GRACE:g}")
    for case in cases:
        print(f"  {case.name:<14} {case.what}")
    print()
    print_table(rows)
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
