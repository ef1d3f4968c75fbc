#!/usr/bin/env python3
"""flextui benchmarks, side by side with pdsh -R ssh and the DeepSpeed launcher.

    ./dev bench [--quick] [--only launch,abort,local,ingest,idle,ui,mpi] [--reps N] [--train-reps N]
                [--nodes 1,2,4,8] [--no-deepspeed] [--no-pdsh] [--no-results]
                [--flextui-path DIR | --flextui-rev REV]

One command: brings up an 8-node real-OpenSSH cluster on this machine (tests/sshcluster.py,
prefix "ftb"; network + PID namespaces), sets up the DeepSpeed venv (bench/.ds-venv,
git-ignored) if needed, runs every benchmark, prints one table and writes it into
bench/RESULTS.md (and the raw numbers into bench/results.json). Running a subset (--only)
replaces just those sections there; each section keeps the command that produced it.
Needs root (namespaces). Full run ~10 min, --quick ~2 min.

--flextui-path DIR runs the console and node launcher from another checkout (PYTHONPATH),
e.g. a scratch copy with a candidate fix, against the same cluster and baselines;
--flextui-rev REV measures a commit (a clean export) rather than the working tree, which
is what the committed RESULTS.md uses, so others' unfinished edits cannot leak into it.
Targets come from issue 5; they are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    BENCH, MPI_RUNTIMES, PYTHON, REPO, Bench, ensure_deepspeed, log, machine_info, sshcluster,
)

import ingest  # noqa: E402
import launch_abort  # noqa: E402
import scale  # noqa: E402

SECTIONS = ["launch", "abort", "local", "ingest", "idle", "ui", "mpi", "scale"]
RESULTS_JSON = BENCH / "results.json"
RESULTS_MD = BENCH / "RESULTS.md"
LAUNCHER_NAMES = {"flextui": "flextui", "pdsh": "pdsh -R ssh", "deepspeed": "DeepSpeed"}


# --------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------
def s(x: float | None, digits: int = 2) -> str:
    return "—" if x is None else f"{x:.{digits}f} s"


def ms(x: float | None) -> str:
    return "—" if x is None else f"{1000 * x:.0f} ms"


def krate(x: float | None) -> str:
    return "—" if x is None else f"{x / 1000:.0f}k lines/s"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def row(section: str, case: str, flextui: str, pdsh: str = "—", ds: str = "—", target: str = "",
        result: str = "n/a") -> dict:
    return {"section": section, "case": case, "flextui": flextui, "pdsh": pdsh, "deepspeed": ds,
            "target": target, "verdict": result}


# --------------------------------------------------------------------------------------
# rows per section
# --------------------------------------------------------------------------------------
def launch_rows(raw: dict, node_counts: list[int]) -> list[dict]:
    rows = []
    for workload, by_nodes in raw.items():
        label = launch_abort.LABEL[workload]
        med = {n: {l: launch_abort.median_first(rs) for l, rs in by_nodes.get(str(n), {}).items()}
               for n in node_counts}
        reps = max((len(rs) for b in by_nodes.values() for rs in b.values()), default=0)
        ds_reps = max((len(b.get("deepspeed", [])) for b in by_nodes.values()), default=0)
        for n in node_counts:
            m = med[n]
            f, p, d = m.get("flextui"), m.get("pdsh"), m.get("deepspeed")
            ratio = f / d if f and d else None
            target = "≤ 0.5× DeepSpeed"
            rows.append(row(
                "launch", f"{label}: {n} node{'s' if n > 1 else ''} × 2 slots → every rank's first line"
                + (f" (median of {reps}" + (f"; DeepSpeed {ds_reps}" if 0 < ds_reps < reps else "") + ")"
                   if reps > 1 else ""),
                s(f), s(p), s(d) + (f" (flextui = {ratio:.2f}×)" if ratio else ""),
                target, verdict(ratio <= 0.5 if ratio else None)))
        if 1 in med and max(node_counts) in med and max(node_counts) > 1:
            hi = max(node_counts)
            def flat(l):
                a, b = med[1].get(l), med[hi].get(l)
                return b / a if a and b else None
            ff, fp, fd = flat("flextui"), flat("pdsh"), flat("deepspeed")
            fmt = lambda x: "—" if x is None else f"{x:.2f}×"  # noqa: E731
            rows.append(row("launch", f"{label}: flatness, {hi} nodes / 1 node", fmt(ff), fmt(fp), fmt(fd),
                            "≤ 1.3×", verdict(ff <= 1.3 if ff else None)))

            def cpu(l):
                vals = [by_nodes.get(str(n), {}).get(l) for n in (1, hi)]
                if not all(vals):
                    return "—"
                c = [launch_abort.median_first(v, "console_cpu") for v in vals]
                m = [launch_abort.median_first(v, "node_cpu") for v in vals]
                if None in c or None in m:
                    return "—"
                return f"{c[0]:.2f} + {m[0]:.2f} → {c[1]:.2f} + {m[1]:.2f}"
            rows.append(row("launch", f"{label}: CPU-seconds per launch, console side + inside the nodes "
                            f"(sshd, login shell, launcher, workers), 1 → {hi} nodes",
                            cpu("flextui"), cpu("pdsh"), cpu("deepspeed"), "(context: 2 cores)", "n/a"))
    return rows


# --------------------------------------------------------------------------------------
# MPI: flextui --launcher mpirun beside --launcher ssh, interleaved in the same run
# --------------------------------------------------------------------------------------
MPI_NODES = 2
MPI_LABEL = {"flextui": "--launcher ssh", "mpirun:openmpi": "--launcher mpirun (Open MPI)",
             "mpirun:mpich": "--launcher mpirun (MPICH/Hydra)"}


def mpi_launchers() -> tuple[list[str], list[str]]:
    """flextui's launchers to compare (ssh first), and notes on runtimes not installed."""
    present = [f"mpirun:{name}" for name, path in MPI_RUNTIMES.items() if os.access(path, os.X_OK)]
    missing = [f"[mpi] {path} not installed: not measured" for path in MPI_RUNTIMES.values()
               if not os.access(path, os.X_OK)]
    return ["flextui", *present], missing


def run_mpi(bench: Bench, reps: int, train_reps: int) -> dict:
    launchers, _ = mpi_launchers()
    workloads = ["hello"] + (["train"] if train_reps else [])
    return launch_abort.run_launch(bench, launchers, [MPI_NODES], workloads, {"hello": reps, "train": train_reps})


def mpi_rows(raw: dict) -> list[dict]:
    rows = []
    for workload, by_nodes in raw.items():
        results = by_nodes.get(str(MPI_NODES), {})
        ssh = launch_abort.median_first(results.get("flextui", []))
        for launcher, runs in results.items():
            med = launch_abort.median_first(runs)
            failed = sum(1 for r in runs if r["first_lines"] is None or r["exit"] != 0)
            text = s(med) + (f" ({med / ssh:.2f}× ssh)" if med and ssh and launcher != "flextui" else "")
            text += f"; {failed}/{len(runs)} failed" if failed else ""
            console = launch_abort.median_first(runs, "console_cpu")
            nodes = launch_abort.median_first(runs, "node_cpu")
            if console is not None and nodes is not None:
                text += f"; CPU {console:.2f} + {nodes:.2f} s"
            rows.append(row("mpi", f"{launch_abort.LABEL[workload]}: {MPI_NODES} nodes × 2 slots → every rank's "
                            f"first line, flextui {MPI_LABEL[launcher]}"
                            + (f" (median of {len(runs)})" if len(runs) > 1 else ""),
                            text, target="beside --launcher ssh, same run", result="n/a"))
    return rows


def scale_rows(results: list[dict]) -> list[dict]:
    """64 nodes × 8 (issue 13): every rank's first line, then Ctrl+C → 0 processes."""
    rows = []
    for nodes, slots in sorted({(r["nodes"], r["slots"]) for r in results}):
        mine = [r for r in results if (r["nodes"], r["slots"]) == (nodes, slots)]

        def cell(launcher: str, what: str) -> str:
            runs = [r for r in mine if r["launcher"] == launcher]
            if not runs:
                return "—"
            if what == "launch":
                ok = [r["first_lines"] for r in runs if r.get("first_lines") is not None]
                bad = [r for r in runs if r.get("first_lines") is None]
                text = s(statistics.median(ok)) if ok else "**failed**"
                return text + (f" ({len(bad)} of {len(runs)} failed: {bad[0].get('error')})" if bad else "")
            gone = [r["gone"] for r in runs if r.get("gone") is not None]
            left = [r for r in runs if r.get("first_lines") is not None and r.get("gone") is None]
            if left:
                r = left[0]
                return (f"**{r['left_after_observe']} processes left** on {r['nodes_with_leftovers']}/{nodes} "
                        f"nodes after {r['observed']:g} s (of {r['processes_before']})")
            return f"{s(max(gone))}, nothing left (of {runs[0]['processes_before']} processes)" if gone else "—"

        reps = max(sum(1 for r in mine if r["launcher"] == l) for l in ("flextui", "pdsh"))
        label = f"{nodes} nodes × {slots} ranks ({nodes * slots}), trivial worker"
        rows.append(row("scale", f"{label}: command → every rank's first line"
                        + (f" (median of {reps})" if reps > 1 else ""),
                        cell("flextui", "launch"), cell("pdsh", "launch"), target="(issue 13: measured)"))
        ok = all(r.get("gone") is not None for r in mine if r["launcher"] == "flextui")
        rows.append(row("scale", f"{label}: Ctrl+C → 0 processes on every node",
                        cell("flextui", "stop"), cell("pdsh", "stop"), target="0 processes left",
                        result=verdict(ok if any(r["launcher"] == "flextui" for r in mine) else None)))
    return rows


def abort_rows(results: list[dict], nodes: int, grace: float) -> list[dict]:
    def describe(r: dict | None) -> str:
        if r is None:
            return "—"
        if r.get("error"):
            return "error: " + r["error"][:80]
        if r.get("gone") is not None:
            return f"{r['gone']:.2f} s, nothing left"
        left = r.get("left_after_observe") or []
        return (f"**{sum(left)} processes left** on {sum(1 for c in left if c)}/{len(left)} nodes "
                f"after {r['observed']:.0f} s (of {sum(r['before'])})")

    rows = []
    for ignore in (False, True):
        fl = [r for r in results if r["launcher"] == "flextui" and r["ignore"] == ignore]
        gones = [r["gone"] for r in fl if r.get("gone") is not None]
        med = statistics.median(gones) if len(gones) == len(fl) and gones else None
        if med is not None:
            ftext = f"{med:.2f} s" + (f" (median of {len(gones)}; max {max(gones):.2f})" if len(gones) > 1 else "")
        else:
            ftext = describe(fl[0]) if fl else "—"
        ds = next((r for r in results if r["launcher"] == "deepspeed" and r["ignore"] == ignore), None)
        pd = next((r for r in results if r["launcher"] == "pdsh" and r["ignore"] == ignore), None)
        if ignore:
            case = (f"Ctrl+C → last process gone, {nodes} nodes × 2, one child each; last rank ignores SIGTERM "
                    f"(flextui --grace {grace:g})")
            target = f"≈ grace ({grace:g} s)"
            ok = med is not None and grace - 0.05 <= med <= grace + 0.5
        else:
            case = f"Ctrl+C → last process gone, {nodes} nodes × 2 cooperative workers, one child each"
            target = "≤ 0.5 s"
            ok = med is not None and med <= 0.5
        rows.append(row("abort", case, ftext, describe(pd) + (" (^C^C)" if pd else ""), describe(ds), target,
                        verdict(ok if fl else None)))
    return rows


def ingest_rows(results: list[dict]) -> list[dict]:
    def cell(r: dict | None, pdsh: bool = False) -> str:
        if r is None:
            return "—"
        if r.get("error") or not r.get("model_rate"):
            got = r.get("lines_model")
            return f"**FAILED**: {got if got is not None else '?'}/{r.get('expect')} lines arrived" + (
                f" ({r['error'][:60]})" if r.get("error") else "")
        parts = [krate(r["model_rate"])]
        if r.get("rundir_rate") and not pdsh:
            parts[0] += f" (run dir {r['rundir_rate'] / 1000:.0f}k)"
        parts.append(f"lag p50/p99 {ms(r.get('lag_p50'))}/{ms(r.get('lag_p99'))}")
        if r.get("stream_cpu") is not None:
            parts.append(f"CPU {r['stream_cpu']:.2f} core" + (" (pdsh+ssh)" if pdsh else ""))
        if r.get("launcher_cpu") is not None:
            parts.append(f"launcher {r['launcher_cpu']:.2f}")
        parts.append(f"RSS {r.get('peak_rss_mb', 0):.0f} MB")
        if pdsh and r.get("garbled"):
            parts.append(f"{r['garbled']} garbled lines")
        if not r.get("complete"):
            parts.append(f"**{r.get('lines_model')}/{r.get('expect')} lines**")
        return ", ".join(parts)

    rows = []
    names = list(dict.fromkeys(r["load"] for r in results))
    for name in names:
        by = {r["mode"]: r for r in results if r["load"] == name}
        flat = "flat out" in name
        for mode in ("local", "ssh"):
            r = by.get(mode)
            if r is None:
                continue
            load = next((l for l in ingest.loads(False) if l["name"] == name), {"nodes": 1})
            where = "local fast path" if mode == "local" else (
                f"SSH, {load['nodes']} node{'s' if load['nodes'] > 1 else ''}")
            ok = None
            if r.get("model_rate"):
                cpu_ok = (r.get("stream_cpu") or 0) <= 1.0
                if "emoji" in name:
                    ok = bool(r.get("complete"))
                    target = "every line arrives (their JSON is 2.3× their bytes)"
                elif "10M" in name:
                    ok = (r.get("peak_rss_mb") or 1e9) <= 200 and bool(r.get("complete"))
                    target = "console RSS ≤ 200 MB after 10M lines × 64 ranks"
                elif flat:
                    ok = r["model_rate"] >= 200_000 and cpu_ok and r.get("complete")
                    target = "≥ 200k lines/s, console ≤ 1 core"
                else:
                    keeps_up = r["model_rate"] >= 0.9 * (r.get("offered") or 0)
                    ok = keeps_up and cpu_ok and (r.get("lag_p99") or 9) <= 0.25 and r.get("complete")
                    target = "keeps up, lag p99 ≤ 250 ms, console ≤ 1 core"
            else:
                ok = False
                target = ("every line arrives (their JSON is 2.3× their bytes)" if "emoji" in name else
                          "≥ 200k lines/s, console ≤ 1 core" if flat else "keeps up, lag p99 ≤ 250 ms, console ≤ 1 core")
            case = f"ingest {name}" + (f" (offered {r['offered'] / 1000:.0f}k/s)" if r.get("offered") else "") + f", {where}"
            rows.append(row("ingest", case, cell(r), cell(by.get("pdsh"), True) if mode == "ssh" else "—", "—",
                            target, verdict(ok)))
    return rows


def idle_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r in results:
        where = "local fast path" if r["mode"] == "local" else "SSH, 8 nodes × 8"
        if r.get("error"):
            rows.append(row("idle", f"console CPU, {r['world']} quiet ranks, {where}", "error: " + r["error"][:80],
                            target="≤ 2% of a core", result=verdict(False)))
            continue
        text = (f"{r['console_cpu_pct']:.2f}% of a core (RSS {r['console_rss_mb']:.0f} MB); "
                f"{r['launchers']} node launcher{'s' if r['launchers'] > 1 else ''}: "
                f"{r['launcher_cpu_pct']:.2f}% together")
        rows.append(row("idle", f"console CPU, {r['world']} quiet ranks for {r['seconds']:.0f} s, {where}", text,
                        target="≤ 2% of a core", result=verdict(r["console_cpu_pct"] <= 2.0)))
    return rows


# --------------------------------------------------------------------------------------
# UI (bench/ui_load.py, written by another engineer)
# --------------------------------------------------------------------------------------
def _tool(root: Path, name: str) -> tuple[Path, Path]:
    """bench/<name> from the flextui being measured (it imports flextui from its own root),
    else from this checkout."""
    script = root / "bench" / name
    return (script, root) if script.exists() else (BENCH / name, REPO)


UI_512_KEYS = "tab,table,sort,group,fold,filter,picker,search"


def run_ui(quick: bool, env: dict, root: Path = REPO) -> tuple[list[dict], dict]:
    """bench/ui_load.py: the Textual app with its real driver on a pseudo-terminal, fed
    synthetic launcher events in-process; one JSON object per configuration."""
    script, cwd = _tool(root, "ui_load.py")
    if not script.exists():
        return [row("ui", "TUI key latency / frames under load; RSS after 10M lines × 64 ranks",
                    "not measured: bench/ui_load.py does not exist yet")], {"missing": True}
    configs = [(64, 1000, 4 if quick else 10)] + ([] if quick else [(8, 10000, 10), (64, 16000, 18)])
    configs.append((512, 10, 10 if quick else 30))  # issue 13: 64 nodes x 8, a live training's rate
    rows, raw = [], []
    for ranks, rate, seconds in configs:
        argv = [PYTHON, str(script), "--ranks", str(ranks), "--rate", str(rate), "--seconds", str(seconds), "--json"]
        if ranks == 512:  # the keys of a 512-rank console (issue 13), on a 160x48 terminal
            argv += ["--keys", UI_512_KEYS, "--size", "160x48"]
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=seconds + 90)
            code, out, err = cp.returncode, cp.stdout, cp.stderr
        except subprocess.TimeoutExpired as exc:
            code, out, err = "timeout", exc.stdout or "", f"no result after {seconds + 90} s"
            out = out.decode() if isinstance(out, bytes) else out
        data = None
        for line in reversed((out or "").strip().splitlines()):
            try:
                data = json.loads(line)
                break
            except ValueError:
                continue
        raw.append({"argv": argv[1:], "code": code, "result": data, "stderr": (err or "")[-2000:]})
        ten_m = ranks * rate * seconds >= 5_000_000
        case = (f"TUI attached, {ranks} ranks × {rate / 1000:g}k lines/s fed for {seconds} s"
                + (" (toward 10M lines)" if ten_m else ""))
        if ranks == 512:
            case = (f"TUI attached, 512 ranks (64 nodes × 8) × {rate:g} lines/s fed for {seconds} s, 160×48; "
                    "keys: next rank, table cursor, sort, group by node, fold a node, filter the table, "
                    "picker, search")
        if code != 0 or not isinstance(data, dict):
            why = (err or "").strip().splitlines()[-1:] or ["?"]
            rows.append(row("ui", case, f"**failed** ({code}): {why[0][:150]}"))
            continue
        d = data
        text = (f"key → screen p50/p95 {d.get('key_p50_ms')}/{d.get('key_p95_ms')} ms ({d.get('keys')} keys"
                + (f", unanswered in 5 s: {d['keys_unanswered']}" if d.get("keys_unanswered") else "") + "), "
                f"{d.get('ticks_per_s')} refreshes/s (interval p95 {d.get('tick_p95_ms')} ms), "
                f"{d.get('log_rows_rendered_per_s')} log rows rendered/s, "
                f"{d.get('lines_per_s', 0) / 1000:.0f}k lines/s ingested, CPU {d.get('cpu_percent_of_core')}%, "
                f"RSS {d.get('rss_mb')} MB after {d.get('lines_fed', 0) / 1e6:.1f}M lines"
                + (f", load {d['machine_load_1min']}" if d.get("machine_load_1min") is not None else ""))
        if ranks == 512:
            by_key = ", ".join(f"{k} {v}" for k, v in (d.get("by_key_p95_ms") or {}).items())
            text += f"; p95 by key (ms): {by_key}; CPU of which the synthetic feed {d.get('feed_cpu_percent_of_core')}%"
            if d.get("gc_full_collections") is not None:
                text += (f"; {d['gc_full_collections']} full garbage collections (longest "
                         f"{d.get('gc_full_pause_max_ms')} ms), {d.get('gc_tracked_objects')} objects tracked")
            if d.get("key_loop_cpu_p95_ms") is not None:  # what the loop itself spent, key to frame
                loop = ", ".join(f"{k} {v}" for k, v in (d.get("by_key_loop_cpu_p95_ms") or {}).items())
                text += (f"; event-loop CPU key → frame p50/p95 {d.get('key_loop_cpu_p50_ms')}/"
                         f"{d.get('key_loop_cpu_p95_ms')} ms (p95 by key: {loop})")
            target = "key → screen p95 ≤ 100 ms, RSS ≤ 300 MB, CPU ≤ 1 core"
            ok = ((d.get("key_p95_ms") or 1e9) <= 100 and (d.get("rss_mb") or 1e9) <= 300
                  and (d.get("cpu_percent_of_core") or 1e9) <= 100)
        elif ten_m:
            target, ok = "RSS ≤ 200 MB after 10M lines × 64 ranks", (d.get("rss_mb") or 1e9) <= 200
            if (d.get("lines_fed") or 0) < 10_000_000:
                target += f" (reached {d.get('lines_fed', 0) / 1e6:.1f}M)"
        else:
            target, ok = "(no issue target) keys stay responsive", None
        rows.append(row("ui", case, text, target=target, result=verdict(ok)))
    return rows, {"runs": raw}


def run_local(quick: bool, reps: int, env: dict, root: Path = REPO) -> tuple[list[dict], dict]:
    """bench/local_lifecycle.py (another engineer's): 4 local ranks, no SSH."""
    script, cwd = _tool(root, "local_lifecycle.py")
    if not script.exists():
        return [row("local", "local lifecycle", "not measured: bench/local_lifecycle.py does not exist")], {}
    argv = [PYTHON, str(script), "--ranks", "4", "--reps", str(reps), "--train-reps", "0" if quick else "1", "--json"]
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)
        code, out, err = cp.returncode, cp.stdout, cp.stderr
    except subprocess.TimeoutExpired:
        code, out, err = "timeout", "", "no result after 600 s"
    data = None
    if "\n{" in out:
        try:
            data = json.loads(out[out.index("\n{") + 1:])
        except ValueError:
            data = None
    raw = {"argv": argv[1:], "code": code, "stdout": out[-4000:], "stderr": err[-2000:]}
    if code != 0 or not isinstance(data, dict):
        return [row("local", "local lifecycle (bench/local_lifecycle.py)",
                    f"**failed** ({code}): {(err.strip().splitlines() or ['?'])[-1][:150]}")], raw
    rows = []
    for name, samples in data.items():
        med = {k: statistics.median(smp[k] for smp in samples) for k in samples[0] if k != "processes"}
        n = len(samples)
        rows.append(row("local", f"{name}, 4 local ranks (localhost fast path, no SSH): command → every rank's "
                        f"first line" + (f" (median of {n})" if n > 1 else ""),
                        f"{med['cmd_to_first_line']:.2f} s (launcher hello {med['cmd_to_hello']:.2f} s, "
                        f"all spawned {med['cmd_to_spawned']:.2f} s)"))
        gone = med["sigint_to_gone"]
        rows.append(row("local", f"{name}, 4 local ranks: Ctrl+C → last process gone (flextui, launcher, "
                        f"workers, their children)", f"{gone:.2f} s (flextui exit {med['sigint_to_exit']:.2f} s)",
                        target="≤ 0.5 s", result=verdict(gone <= 0.5)))
    return rows, raw


# --------------------------------------------------------------------------------------
# table and RESULTS.md
# --------------------------------------------------------------------------------------
HEADER = ["", "case", "flextui", "pdsh -R ssh", "DeepSpeed", "target", "verdict"]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = [r["section"], r["case"], r["flextui"], r["pdsh"], r["deepspeed"], r["target"], r["verdict"]]
        lines.append("| " + " | ".join(" ".join(c.split("\n")).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def write_results(sections: dict, machine: dict, notes: list[str]) -> None:
    store = {"sections": {}, "machine": machine, "notes": []}
    if RESULTS_JSON.exists():
        try:
            store = json.loads(RESULTS_JSON.read_text())
        except ValueError:
            pass
    store["sections"].update(sections)
    store["machine"] = machine
    store.setdefault("notes_by_section", {})
    for name in sections:
        store["notes_by_section"][name] = [n for n in notes if n.startswith(f"[{name}]") or n.startswith("[all]")]
    RESULTS_JSON.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")

    ordered = [store["sections"][n] for n in SECTIONS if n in store["sections"]]
    rows = [r for sec in ordered for r in sec["rows"]]
    commands = list(dict.fromkeys(sec["command"] for sec in ordered))
    md = [
        "# flextui benchmarks",
        "",
        "Made by `bench/run.py` (`./dev bench`); do not edit by hand — rerun it. Targets are issue 5's,",
        "reported, never asserted. Raw numbers: `bench/results.json`. Profiles of the missed targets and",
        "the fixes they point to: `bench/FINDINGS.md`.",
        "",
        "Command" + ("s" if len(commands) > 1 else "") + " (run from the repository root, as root):",
        "",
    ]
    for sec_name in SECTIONS:
        sec = store["sections"].get(sec_name)
        if sec:
            md.append(f"- {sec_name}: `{sec['command']}` — {sec['date']}"
                      + (f", load average before {sec['loadavg_before']}" if sec.get("loadavg_before") else "")
                      + (f", flextui {sec['flextui'].split()[0]}" if sec.get("flextui") else ""))
    m = store["machine"]
    md += [
        "",
        f"flextui as measured by the latest run: {m.get('flextui', '?')} (each section above names its own).",
        "",
        f"Machine: {m.get('cpus')} cores, {m.get('mem_gb')} GB, Linux {m.get('kernel')}, Python {m.get('python')}, "
        f"torch {m.get('torch')}, DeepSpeed {str(m.get('deepspeed')).split()[0]}, {m.get('pdsh')}, {m.get('openssh')}; "
        f"load average at start {m.get('loadavg_at_start')} (the machine is shared: see each section's "
        f"`loadavg_before` in results.json; other sessions' tests running at the same time inflate times).",
        "",
        "Every \"node\" is a real sshd in its own network + PID namespace on this one 2-core machine",
        "(tests/sshcluster.py), so the console, every node's sshd, launcher and workers share 2 cores:",
        "per-node CPU work adds up here, where on a real cluster it would run in parallel.",
        "",
        table(rows),
        "",
        "## Notes",
        "",
    ]
    all_notes = [n for name in SECTIONS for n in store.get("notes_by_section", {}).get(name, [])]
    md += [f"- {n}" for n in dict.fromkeys(all_notes)] or ["- (none)"]
    md += ["", "## How each figure is measured", "", METHODS]
    RESULTS_MD.write_text("\n".join(md) + "\n")


METHODS = """\
- **launch**: `Popen` of the launcher → the first stdout line of every rank (`rank N up` /
  train.py's first line), as the user sees it. 2 slots per node. flextui: `python -m flextui
  --headless HOSTFILE SCRIPT`. pdsh: `pdsh -R ssh -w HOSTS` running one remote shell per node
  that exports WORLD_SIZE/MASTER_ADDR/MASTER_PORT/... and starts that node's ranks with RANK and
  LOCAL_RANK. DeepSpeed: `deepspeed --hostfile H --master_addr FIRST SCRIPT` (its default
  ssh check included; `--force_multi` for 1 node, else DeepSpeed runs a one-host hostfile on the
  console machine instead of the node), DS_ACCELERATOR=cpu via `.deepspeed_env`. OpenSSH's ssh
  ignores $HOME, so pdsh/DeepSpeed get a PATH `ssh` wrapper adding `-F <cluster ssh_config>`.
  train.py is `--steps 1 --step-time 0`; its first line comes after `import torch`.
- **abort**: workers print `ready rank N` and start one child each; once all are ready,
  SIGINT to the launcher's process group (a terminal's Ctrl+C) → the moment no job process
  (anything but sshd) is left in any node's PID namespace, polled every ~5 ms. For pdsh, two
  Ctrl+C 0.3 s apart (its own abort gesture). Processes still there after the observation
  window are counted, then killed by the benchmark.
- **ingest**: bench/workers/flood.py writes 100-byte lines stamped with `time.time()`;
  all ranks start writing at one moment (ready files + go file), so load = W × R lines/s
  exactly. flextui's console is bench/ingest_console.py = `flextui.job.Job` + an output
  listener: lines/s into the job model = lines / (last line visible − go); the run dir rate
  comes from polling rank-*.log sizes; lag = visible − stamp (every 8th line); CPU = the
  console process's CPU time between first and last line / wall; RSS = ru_maxrss. "launcher"
  = the local node launcher's CPU (it runs on the console machine on the fast path). pdsh:
  the same workers through `pdsh -R ssh`, read by the benchmark; CPU/RSS of pdsh + its ssh
  clients. "garbled" = lines not intact because ranks of a node share pdsh's pipe.
- **idle**: 64 ranks printing one line then sleeping, under `flextui --headless`; console
  CPU% over the window by psutil (10 ms tick resolution), node launchers' CPU% summed.
- **local**: bench/local_lifecycle.py (another engineer's): 4 ranks on the localhost fast
  path, times from the run directory's events; Ctrl+C → every process of the job gone.
- **mpi**: the launch measurement above (Popen → every rank's first line; 2 nodes × 2 slots)
  for flextui `--launcher ssh` and `--launcher mpirun` with each MPI runtime installed
  (Debian's Open MPI `mpirun.openmpi`, MPICH's `mpiexec.hydra`), the three interleaved in
  every repetition. mpirun reaches the nodes with OpenSSH's client: Open MPI gets
  `--mpi_args "--mca plm_rsh_args '-F <cluster ssh_config>'"`, Hydra the PATH ssh wrapper as
  `-launcher-exec` and `-iface <cluster bridge>`. CPU = console side (flextui, mpirun/mpiexec,
  ssh clients) + inside the nodes (sshd, orted/hydra_pmi_proxy, launcher, workers).
- **ui**: bench/ui_load.py: the real FlexApp with its real terminal driver on a pseudo-terminal
  (200×50; the 512-rank case 160×48), fed synthetic launcher events on its own event loop
  (the job model as the console holds it; no processes). Keys are bytes written into the
  terminal, one every 0.25 s; each is timed until the terminal (a reader in its own process,
  as a terminal emulator is: a thread would wait for the console's GIL) has read the end of the first
  frame composed after the app's state showed the key's result and in which the widget that
  shows it was drawn (key → screen, including Textual's input parsing, the compositor and
  the frame's encoding and write). Refreshes/s and their interval; CPU (of which the
  synthetic feed) and RSS of that process. The 512-rank case (issue 13: 64 nodes × 8 at 10
  lines/s each) sends, in turn: Tab (the next rank's log), ↓/↑ (table cursor), o (sort),
  b (group by node / ungroup), ←/→ on a node row (fold / unfold), F node12 ⏎ / F ^U ⏎ (filter
  the table / clear it; timed from ⏎), : 137 ⏎ / : 150 ⏎ in turn (picker; timed from ⏎ once it lists the rank)
  and / loss 0.1 ⏎ then n (search; the match shown). "Event-loop CPU key → frame" is the CPU
  time of the app's thread between the key and its frame (the key's own work plus the refresh
  ticks and feed that ran meanwhile): the part of the latency that is not waiting for a core.
- **scale**: bench/scale.py — 64 nodes × 8 ranks on the sshd cluster (`--scale NxS`),
  bench/workers/sleeper.py as the worker (prints `ready rank R`, sleeps): command → every
  rank's first line on the launcher's stdout, then SIGINT to its process group (pdsh: two,
  0.3 s apart) → no job process (anything but sshd) in any node's PID namespace, polled;
  processes still there after 20 s are counted, then killed by the benchmark.
"""


# --------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions, shorter loads (~2 min)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--reps", type=int, help="repetitions of each trivial-worker launch and flextui abort "
                    "(default 3; --quick 1)")
    ap.add_argument("--ds-reps", type=int, help="repetitions of each DeepSpeed launch (default: min(reps, 2))")
    ap.add_argument("--train-reps", type=int, help="repetitions of each examples/train.py launch "
                    "(default 1; --quick 0 = skip)")
    ap.add_argument("--nodes", default="1,2,4,8", help="node counts for the launch benchmark")
    ap.add_argument("--abort-nodes", type=int, default=8)
    ap.add_argument("--scale", default="64x8", help="NODESxSLOTS of the scale section (issue 13)")
    ap.add_argument("--grace", type=float, default=2.0, help="flextui --grace in the SIGTERM-ignoring abort")
    ap.add_argument("--no-deepspeed", action="store_true", help="skip the DeepSpeed launcher")
    ap.add_argument("--no-install", action="store_true", help="do not create bench/.ds-venv if missing")
    ap.add_argument("--no-pdsh", action="store_true", help="skip pdsh baselines")
    ap.add_argument("--no-results", action="store_true", help="print only; leave RESULTS.md alone")
    ap.add_argument("--flextui-path", help="run flextui from this checkout (PYTHONPATH) instead of the repo")
    ap.add_argument("--flextui-rev", help="run flextui as committed at this git revision (e.g. HEAD), not the "
                    "working tree: a clean `git archive` export, also for ui_load.py / local_lifecycle.py")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (for debugging)")
    args = ap.parse_args(argv)
    only = args.only.split(",") if args.only else list(SECTIONS)
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    reps = args.reps or (1 if args.quick else 3)
    train_reps = args.train_reps if args.train_reps is not None else (0 if args.quick else 1)
    node_counts = [int(n) for n in args.nodes.split(",")]
    command = "./dev bench" + ("" if argv is None and len(sys.argv) == 1 else " " + shlex.join(
        argv if argv is not None else sys.argv[1:]))
    if os.geteuid() != 0:
        print("bench: needs root (network and PID namespaces for the SSH cluster)", file=sys.stderr)
        return 2

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    notes: list[str] = []
    started = time.monotonic()
    import shutil
    if shutil.which("pdsh") is None and not (args.no_pdsh and args.no_deepspeed):
        notes.append("[all] pdsh not installed (apt-get install pdsh): no pdsh or DeepSpeed baselines")
        log("pdsh not found: skipping the pdsh and DeepSpeed baselines (apt-get install pdsh)")
        args.no_pdsh = args.no_deepspeed = True
    launchers = ["flextui"] + ([] if args.no_pdsh else ["pdsh"])
    ds_python = ds_version = None
    if not args.no_deepspeed and ({"launch", "abort"} & set(only)):
        ds_python, ds_version = ensure_deepspeed(install=not args.no_install)
        if ds_python:
            launchers.append("deepspeed")
        else:
            notes.append(f"[all] DeepSpeed not measured: {ds_version}")
            log(f"DeepSpeed unavailable: {ds_version}")
            ds_version = None
    machine = machine_info(ds_version)
    work = Path(tempfile.mkdtemp(prefix="flextui-bench-"))
    if args.flextui_rev:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.flextui_rev],
                             capture_output=True, text=True, check=True).stdout.strip()
        src = work / "flextui-src"
        src.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", sha], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        args.flextui_path = str(src)
        machine["flextui"] = f"{sha} (clean `git archive` of {args.flextui_rev}; the working tree not used)"
    elif args.flextui_path:
        machine["flextui"] = f"{args.flextui_path} (--flextui-path)"
        notes.append(f"[all] flextui run from {args.flextui_path} (--flextui-path), not the repository")
    tools_root = Path(args.flextui_path) if args.flextui_path else REPO
    sections: dict[str, dict] = {}
    all_rows: list[dict] = []
    scale_nodes, scale_slots = (int(x) for x in args.scale.split("x"))
    need_nodes = max([*node_counts, args.abort_nodes, 8] + ([scale_nodes] if "scale" in only else []))
    try:
        with sshcluster.SSHCluster(need_nodes, work / "cluster", prefix="ftb", auto_prefix=True) as cluster:
            log(f"cluster up: {need_nodes} nodes ({cluster.nodes[0].name}..), work dir {work}")
            bench = Bench(cluster, work / "w", ds_python)
            if args.flextui_path:
                base = bench.flextui_env

                def flextui_env() -> dict:
                    env = base()
                    env["PYTHONPATH"] = os.path.abspath(args.flextui_path) + os.pathsep + env.get("PYTHONPATH", "")
                    return env
                bench.flextui_env = flextui_env  # type: ignore[method-assign]
            for name in only:
                t0 = time.monotonic()
                load_before = [round(x, 2) for x in os.getloadavg()]
                log(f"--- {name} --- (load average {load_before})")
                try:
                    if name == "launch":
                        workloads = ["hello"] + (["train"] if train_reps else [])
                        raw = launch_abort.run_launch(bench, launchers, node_counts, workloads,
                                                      {"hello": reps, "train": train_reps},
                                                      args.ds_reps or min(reps, 2))
                        rows = launch_rows(raw, node_counts)
                    elif name == "abort":
                        raw = launch_abort.run_abort(bench, launchers, args.abort_nodes, reps, args.grace, args.quick)
                        rows = abort_rows(raw, args.abort_nodes, args.grace)
                    elif name == "local":
                        rows, raw = run_local(args.quick, reps, bench.flextui_env(), tools_root)
                    elif name == "ingest":
                        raw = ingest.run_ingest(bench, args.quick, not args.no_pdsh)
                        rows = ingest_rows(raw)
                    elif name == "idle":
                        raw = ingest.run_idle(bench, args.quick)
                        rows = idle_rows(raw)
                    elif name == "scale":
                        raw = scale.run_scale(bench, launchers, scale_nodes, scale_slots, 1 if args.quick else reps)
                        rows = scale_rows(raw)
                    elif name == "mpi":
                        notes.extend(mpi_launchers()[1])
                        raw = run_mpi(bench, reps, max(train_reps, 1))
                        rows = mpi_rows(raw)
                    else:
                        rows, raw = run_ui(args.quick, bench.flextui_env(), tools_root)
                        if raw.get("missing"):
                            notes.append("[ui] bench/ui_load.py does not exist yet: no UI figures")
                except Exception as exc:  # keep going: one broken section must not lose the others
                    traceback.print_exc()
                    rows = [row(name, "benchmark crashed", f"**error**: {type(exc).__name__}: {exc}"[:200])]
                    raw = {"error": traceback.format_exc()}
                    notes.append(f"[{name}] crashed: {type(exc).__name__}: {exc}")
                    bench.clean_nodes()
                sections[name] = {"rows": rows, "raw": raw, "command": command, "quick": args.quick,
                                  "loadavg_before": load_before,
                                  "date": time.strftime("%Y-%m-%d %H:%M"), "seconds": round(time.monotonic() - t0, 1),
                                  "flextui": machine.get("flextui")}
                all_rows += rows
                log(f"{name} took {time.monotonic() - t0:.0f}s")
    finally:
        if not args.keep:
            import shutil
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(all_rows))
    print(f"\n{len(all_rows)} rows in {time.monotonic() - started:.0f}s")
    for n in notes:
        print("note:", n)
    if not args.no_results:
        write_results(sections, machine, notes)
        print(f"wrote {RESULTS_MD.relative_to(REPO)} and {RESULTS_JSON.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
