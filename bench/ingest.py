"""Log-ingest and idle benchmarks.

Ingest: W ranks each write R lines/s of 100-byte lines stamped with time.time()
(bench/workers/flood.py); all ranks start writing together (ready files + a go file on
the shared filesystem), so the offered load is exactly W x R from the go moment.

* flextui (local fast path and over SSH): the console is bench/ingest_console.py, i.e.
  flextui.job.Job with an output listener. Measured: lines/s reaching the job model
  (lines / (last line visible - go)), lines/s reaching the run directory (the parent polls
  the rank-*.log sizes until every byte is there), lag p50/p99 (worker write -> visible
  in the model), console CPU (cores, first to last line) and peak RSS (ru_maxrss).
* pdsh -R ssh: the same workers, output through pdsh's "host: " prefixing into this
  process (which counts lines and samples lag like the listener does); CPU and peak RSS of
  pdsh plus its ssh clients (psutil). Lines that are not intact (ranks of a node share one
  pipe, so long writes interleave) are counted as garbled.

Idle: 64 quiet ranks (sleeper.py) under the real `flextui --headless` for N seconds; console
CPU% (psutil), and the node launchers' CPU% beside it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import psutil

from harness import BENCH, PYTHON, WORKERS, Bench, Watched, free_port, log, sshcluster

WIDTH = 100
SAMPLE_EVERY = 8


def loads(quick: bool) -> list[dict]:
    secs = 2.0 if quick else 5.0
    return [
        {"name": "8 x 10k/s", "world": 8, "rate": 10000, "lines": int(10000 * secs), "nodes": 4},
        {"name": "64 x 1k/s", "world": 64, "rate": 1000, "lines": int(1000 * secs), "nodes": 8},
        {"name": "1 rank flat out", "world": 1, "rate": 0, "lines": 300_000 if quick else 1_000_000, "nodes": 1},
        {"name": "8 ranks flat out", "world": 8, "rate": 0, "lines": 60_000 if quick else 250_000, "nodes": 4},
        # integrity: lines whose JSON is > 2x their bytes (an "out" event over SSH then exceeds
        # asyncssh's 2 MiB receive window, where readline() hands back a partial line)
        {"name": "1 rank flat out, emoji-heavy lines", "world": 1, "rate": 0,
         "lines": 100_000 if quick else 300_000, "nodes": 1, "fill": "emoji"},
    ] + ([] if quick else [
        # issue 5's memory figure: the console after 10M lines across 64 ranks (local: 1 GB of logs)
        {"name": "10M lines, 64 ranks flat out", "world": 64, "rate": 0, "lines": 156_250, "nodes": 8,
         "modes": ["local"]},
    ])


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def _sync_dirs(bench: Bench) -> tuple[Path, Path]:
    sync = bench.work / "sync"
    shutil.rmtree(sync, ignore_errors=True)
    (sync / "ready").mkdir(parents=True)
    return sync / "ready", sync / "go"


def _flood_args(load: dict, ready: Path, go: Path) -> list[str]:
    return ["--rate", str(load["rate"]), "--lines", str(load["lines"]), "--width", str(WIDTH),
            "--fill", load.get("fill", "x"), "--ready-dir", str(ready), "--go-file", str(go)]


def _tree_cpu_rss(procs: dict[int, psutil.Process], root: psutil.Process) -> tuple[float, int]:
    """CPU seconds and RSS of root + descendants (remembering exited ones' last CPU)."""
    try:
        for child in root.children(recursive=True):
            procs.setdefault(child.pid, child)
    except psutil.Error:
        pass
    cpu, rss = 0.0, 0
    for pid, p in list(procs.items()):
        try:
            t = p.cpu_times()
            p._bench_cpu = t.user + t.system  # type: ignore[attr-defined]
            rss += p.memory_info().rss
        except psutil.Error:
            pass
        cpu += getattr(p, "_bench_cpu", 0.0)
    return cpu, rss


def _launcher_cpu(known: dict[int, psutil.Process], console: psutil.Process) -> float:
    """CPU seconds of the console's direct children: the local node launcher (not its workers)."""
    try:
        for child in console.children():
            known.setdefault(child.pid, child)
    except psutil.Error:
        pass
    total = 0.0
    for p in known.values():
        try:
            t = p.cpu_times()
            p._bench_cpu = t.user + t.system  # type: ignore[attr-defined]
        except psutil.Error:
            pass
        total += getattr(p, "_bench_cpu", 0.0)
    return total


def ingest_flextui(bench: Bench, load: dict, mode: str) -> dict:
    world = load["world"]
    ready, go = _sync_dirs(bench)
    stats_path = bench.work / "ingest-stats.json"
    stats_path.unlink(missing_ok=True)
    port = []
    if mode == "local":
        hf = bench.local_hostfile(world)
        port = ["--master_port", str(free_port())]
    else:
        hf = bench.hostfile(load["nodes"], world // load["nodes"])
    expect = world * load["lines"]
    argv = [PYTHON, str(BENCH / "ingest_console.py"), "--expect", str(expect), "--out", str(stats_path), "--",
            "--log-dir", str(bench.runs), *port, str(hf), str(WORKERS / "flood.py"), *_flood_args(load, ready, go)]
    proc = subprocess.Popen(argv, cwd=bench.work, env=bench.flextui_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    console = psutil.Process(proc.pid)
    launchers: dict[int, psutil.Process] = {}
    t_go = t_rundir = None
    peak_rss = 0
    expected_bytes = expect * WIDTH
    deadline = time.monotonic() + 240
    run_dir = None
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            peak_rss = max(peak_rss, console.memory_info().rss)
        except psutil.Error:
            pass
        if t_go is None:
            if len(os.listdir(ready)) >= world:
                go.touch()
                t_go = time.time()
                launcher_cpu0 = _launcher_cpu(launchers, console)
        elif t_rundir is None:
            if run_dir is None and bench.runs.is_dir():
                dirs = list(bench.runs.iterdir())
                run_dir = dirs[0] if dirs else None
            if run_dir is not None:
                size = 0
                for name in os.listdir(run_dir):
                    if name.startswith("rank-"):
                        try:
                            size += os.stat(run_dir / name).st_size
                        except OSError:
                            pass
                if size >= expected_bytes:
                    t_rundir = time.time()
                    launcher_cpu1 = _launcher_cpu(launchers, console)
        time.sleep(0.01 if t_go is None else 0.02)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
    output = proc.stdout.read().decode(errors="replace")
    bench.clean_nodes()
    result = {"mode": mode, "load": load["name"], "offered": world * load["rate"] or None, "expect": expect}
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, ValueError):
        stats = {"error": "console wrote no stats: " + " | ".join(output.strip().splitlines()[-3:])}
    if stats.get("error"):
        result["error"] = stats["error"]
        bench.clean_runs()
        return result
    bench.clean_runs()
    result.update(stats)
    if t_go is not None and stats.get("t_last_seen"):
        result["model_rate"] = stats["lines_model"] / (stats["t_last_seen"] - t_go)
    if t_go is not None and t_rundir is not None:
        result["rundir_rate"] = expect / (t_rundir - t_go)
        if mode == "local":
            # the local launcher (a child of the console, on the console's machine)
            result["launcher_cpu"] = (launcher_cpu1 - launcher_cpu0) / (t_rundir - t_go)
    result["psutil_peak_rss_mb"] = peak_rss / 2**20
    result["complete"] = stats["lines_model"] == expect
    return result


def ingest_pdsh(bench: Bench, load: dict) -> dict:
    world, nodes = load["world"], load["nodes"]
    ready, go = _sync_dirs(bench)
    expect = world * load["lines"]
    argv = bench.pdsh_argv(nodes, world // nodes, WORKERS / "flood.py", _flood_args(load, ready, go))
    proc = subprocess.Popen(argv, cwd=bench.work, env=bench.wrapped_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    state = {"lines": 0, "garbled": 0, "t_last": None, "lags": []}

    def sink() -> None:
        fd = proc.stdout.fileno()
        buf = b""
        lags = state["lags"]
        while True:
            data = os.read(fd, 1 << 20)
            if not data:
                break
            now = time.time()
            buf += data
            cut = buf.rfind(b"\n") + 1
            lines = buf[:cut].split(b"\n")
            lines.pop()
            buf = buf[cut:]
            state["lines"] += len(lines)
            for k, line in enumerate(lines):
                i = line.find(b": ") + 2
                if len(line) - i != WIDTH - 1:
                    state["garbled"] += 1  # cut up or merged by interleaved writes
                elif k % SAMPLE_EVERY == 0:
                    try:
                        lags.append(now - float(line[i:i + 17]))
                    except ValueError:
                        state["garbled"] += 1
            if state["lines"] >= expect and state["t_last"] is None:
                state["t_last"] = now

    thread = threading.Thread(target=sink, daemon=True)
    thread.start()
    root = psutil.Process(proc.pid)
    tree: dict[int, psutil.Process] = {proc.pid: root}
    t_go = cpu_go = cpu_end = None
    peak_rss = 0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        cpu, rss = _tree_cpu_rss(tree, root)
        peak_rss = max(peak_rss, rss)
        if t_go is None and len(os.listdir(ready)) >= world:
            go.touch()
            t_go, cpu_go = time.time(), cpu
        if state["t_last"] is not None and cpu_end is None:
            cpu_end = cpu
        time.sleep(0.02)
    if cpu_end is None and state["t_last"] is not None:
        cpu_end = cpu  # pdsh exited right after the last line: its last sample
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    thread.join(10)
    bench.clean_nodes()
    result = {"mode": "pdsh", "load": load["name"], "offered": world * load["rate"] or None, "expect": expect,
              "lines_model": state["lines"], "garbled": state["garbled"], "complete": state["lines"] == expect,
              "peak_rss_mb": peak_rss / 2**20}
    if t_go and state["t_last"]:
        span = state["t_last"] - t_go
        result["model_rate"] = state["lines"] / span
        if cpu_end is not None:
            result["stream_cpu"] = (cpu_end - cpu_go) / span
    result["lag_p50"] = _percentile(state["lags"], 0.5)
    result["lag_p99"] = _percentile(state["lags"], 0.99)
    result["lag_max"] = max(state["lags"]) if state["lags"] else None
    return result


def run_ingest(bench: Bench, quick: bool, with_pdsh: bool, only: list[str] | None = None) -> list[dict]:
    out = []
    for load in loads(quick):
        if only and not any(o in load["name"] for o in only):
            continue
        modes = load.get("modes", ["local", "ssh"])
        modes = modes + (["pdsh"] if with_pdsh and "ssh" in modes else [])
        for mode in modes:
            r = ingest_pdsh(bench, load) if mode == "pdsh" else ingest_flextui(bench, load, mode)
            out.append(r)
            rate = r.get("model_rate")
            log(f"ingest {load['name']:16} {mode:5}: "
                + (f"{rate / 1000:.1f}k lines/s, lag p99 {1000 * (r.get('lag_p99') or 0):.0f} ms, "
                   f"cpu {r.get('stream_cpu') or 0:.2f}, rss {r.get('peak_rss_mb') or 0:.0f} MB, "
                   f"complete {r.get('complete')}" if rate else f"FAILED {r.get('error', '')[:300]}"))
    return out


# --------------------------------------------------------------------------------------
LAUNCHER_MARK = "import base64,zlib;exec("


def _node_launchers(bench: Bench) -> list[psutil.Process]:
    procs = []
    for node in bench.cluster.nodes:
        for pid in sshcluster._pids_in_netns(node.netns):
            try:
                p = psutil.Process(pid)
                if any(arg.startswith(LAUNCHER_MARK) for arg in p.cmdline()):
                    procs.append(p)
            except psutil.Error:
                pass
    return procs


def _cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def idle_once(bench: Bench, mode: str, seconds: float, world: int = 64, nodes: int = 8) -> dict:
    local = mode == "local"
    if local:
        nodes = 1
    argv = bench.flextui_argv(nodes, world // nodes, WORKERS / "sleeper.py", [], local=local)
    w = Watched(argv, env=bench.flextui_env(), cwd=bench.work, pattern=re.compile(rb"ready rank (\d+)"),
                world=world)
    result: dict = {"mode": mode, "world": world, "seconds": seconds}
    if w.wait_all(120) is None:
        w.kill()
        bench.clean_nodes()
        bench.clean_runs()
        result["error"] = f"ranks not ready ({len(w.first)}/{world}): " + w.tail.decode(errors="replace")[-500:]
        return result
    time.sleep(1.0)
    console = psutil.Process(w.proc.pid)
    launchers = console.children(recursive=True) if local else _node_launchers(bench)
    launchers = [p for p in launchers if any(a.startswith(LAUNCHER_MARK) or a == "flextui.launch"
                                             for a in p.cmdline())]
    c0, l0, t0 = _cpu([console]), _cpu(launchers), time.monotonic()
    time.sleep(seconds)
    c1, l1, t1 = _cpu([console]), _cpu(launchers), time.monotonic()
    rss = console.memory_info().rss / 2**20
    w.signal_group(signal.SIGINT)
    code, _ = w.finish(30)
    bench.clean_nodes()
    bench.clean_runs()
    result.update(console_cpu_pct=100 * (c1 - c0) / (t1 - t0), launcher_cpu_pct=100 * (l1 - l0) / (t1 - t0),
                  launchers=len(launchers), console_rss_mb=rss, exit=code)
    log(f"idle {mode}: console {result['console_cpu_pct']:.2f}% of a core, "
        f"{len(launchers)} launcher(s) {result['launcher_cpu_pct']:.2f}% together, rss {rss:.0f} MB")
    return result


def run_idle(bench: Bench, quick: bool) -> list[dict]:
    seconds = 5.0 if quick else 10.0
    return [idle_once(bench, "local", seconds), idle_once(bench, "ssh", seconds)]
