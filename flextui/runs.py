"""The runs under a log directory, read from their run directories alone.

Each run directory (rundir.py) gets one more file from the process that owns the job (its
supervisor, or the headless console, see supervisor.py):

    run.json    the run's index card: id, size, start, who owns it (pid, host, the
                process's start time), its socket; rewritten at the end with the outcome
                (state, exit code, first failure). Small, so `flextui ls` reads 1,000
                runs in a few milliseconds each without touching their logs.

A run is *running* while its card names a live owner (the same pid with the same start
time on this host); a card that says running with no such process is *supervisor lost*:
its nodes stopped when the supervisor's channels closed, and nobody wrote the end. Runs
without a card (written by an older flextui, or by a Job run directly) are described
from summary.json and events.jsonl.

`RecordedJob` is a finished (or lost) run rebuilt from its directory for `flextui open`:
the plan record gives the world and the run mode, events.jsonl replayed through the
mode's own model gives every rank's lifecycle, summary.json the verdict, and each rank's
log file the lines it shows (read from the end, as an attached console does).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from dataclasses import dataclass

from flextui.diagnosis import outcome_text
from flextui.errors import UsageError
from flextui.job import STACKS_TIMEOUT
from flextui.mirror import read_tail
from flextui.model import DEFAULT_TAIL_LINES, JobModel, JobState, RankState
from flextui.modes import RunMode, mode_from_plan
from flextui.stacks import StackDump, build_dump
from flextui.world import Node, World

CARD = "run.json"
SUMMARY = "summary.json"
EVENTS = "events.jsonl"


class RunError(UsageError):
    """A RUN that names no run, or more than one; a run that cannot be read. One line."""


# -- the card -------------------------------------------------------------------------------


def write_card(run_path: str, card: dict) -> None:
    """Atomically (a reader never sees half a card)."""
    tmp = os.path.join(run_path, CARD + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(card, f)
    os.replace(tmp, os.path.join(run_path, CARD))


def read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def process_start_time(pid: int) -> float | None:
    """When the process started (psutil's create_time), None if there is no such process
    (or only its zombie: dead, its parent has not reaped it yet)."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process.create_time()
    except (psutil.Error, ValueError):
        return None


def owner_alive(owner: dict | None) -> bool:
    """Whether the process a card names is still the one that wrote it."""
    if not owner or owner.get("host") != socket.gethostname():
        return False
    started = process_start_time(int(owner.get("pid") or 0))
    return started is not None and abs(started - float(owner.get("start_time") or 0)) < 1.0


def first_failure_of(model: JobModel) -> dict | None:
    rank = model.first_failure
    if rank is None:
        return None
    return {"rank": rank.rank, "host": rank.info.host, "outcome": outcome_text(rank),
            "exit_status": rank.exit_status}


# -- ls ---------------------------------------------------------------------------------------


@dataclass
class RunEntry:
    run_id: str
    path: str
    state: str  # running | succeeded | failed | aborted | supervisor lost | unknown
    exit_code: int | None
    world_size: int | None
    nodes: int | None
    started_at: float | None
    ended_at: float | None
    first_failure: dict | None
    error: str | None
    owner: dict | None  # pid, host, start_time of the process that owns the job

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def state_text(self) -> str:
        if self.state == "failed" and self.exit_code is not None:
            return f"failed {self.exit_code}"
        return self.state

    def duration(self, now: float) -> float | None:
        if self.started_at is None:
            return None
        end = self.ended_at if self.ended_at is not None else (now if self.running else None)
        return None if end is None else max(0.0, end - self.started_at)

    def as_json(self, now: float) -> dict:
        return {
            "id": self.run_id, "path": self.path, "state": self.state, "state_text": self.state_text,
            "exit_code": self.exit_code, "ranks": self.world_size, "nodes": self.nodes,
            "started_at": self.started_at, "ended_at": self.ended_at, "duration": self.duration(now),
            "first_failure": self.first_failure, "error": self.error,
            "pid": (self.owner or {}).get("pid") if self.running else None,
        }


def describe_run(path: str) -> RunEntry:
    """What a run directory says about its run (its card, else its summary and events)."""
    run_id = os.path.basename(os.path.normpath(path))
    card = read_json(os.path.join(path, CARD))
    if card is not None and card.get("state") not in (None, "running"):
        return _entry(run_id, path, card, card["state"])
    summary = read_json(os.path.join(path, SUMMARY))
    if summary is not None:  # finished, whatever the card still says
        return _from_summary(run_id, path, summary, card)
    if card is not None:
        state = "running" if owner_alive(card.get("owner")) else "supervisor lost"
        return _entry(run_id, path, card, state)
    return _from_events(run_id, path)


def _entry(run_id: str, path: str, card: dict, state: str) -> RunEntry:
    return RunEntry(
        run_id=card.get("run_id", run_id), path=path, state=state, exit_code=card.get("exit_code"),
        world_size=card.get("world_size"), nodes=card.get("nodes"), started_at=card.get("started_at"),
        ended_at=card.get("ended_at"), first_failure=card.get("first_failure"), error=card.get("error"),
        owner=card.get("owner"),
    )


def _from_summary(run_id: str, path: str, summary: dict, card: dict | None) -> RunEntry:
    first = summary.get("first_failure")
    failure = None
    ranks = summary.get("ranks") or []
    if isinstance(first, int) and 0 <= first < len(ranks):
        r = ranks[first]
        outcome = (f"signal {r['signal']}" if r.get("signal") else f"exit {r.get('code')}")
        failure = {"rank": first, "host": r.get("host"), "outcome": outcome,
                   "exit_status": 128 + r["signal"] if r.get("signal") else r.get("code")}
    nodes = len({r.get("node_rank") for r in ranks}) if ranks else None
    return RunEntry(
        run_id=summary.get("run_id", run_id), path=path, state=summary.get("state", "unknown"),
        exit_code=summary.get("exit_code"), world_size=summary.get("world_size"),
        nodes=(card or {}).get("nodes", nodes), started_at=summary.get("started_at"),
        ended_at=summary.get("ended_at"), first_failure=failure, error=summary.get("error"),
        owner=(card or {}).get("owner"),
    )


def _from_events(run_id: str, path: str) -> RunEntry:
    plan, last = None, None
    try:
        with open(os.path.join(path, EVENTS), "rb") as f:
            first_line = f.readline()
            plan = json.loads(first_line) if first_line else None
            last = _last_line(f)
    except (OSError, ValueError):
        pass
    finished = last if isinstance(last, dict) and last.get("ev") == "finished" else None
    return RunEntry(
        run_id=run_id, path=path, state=finished["state"] if finished else "unknown",
        exit_code=finished.get("exit_code") if finished else None,
        world_size=(plan or {}).get("world_size"), nodes=len((plan or {}).get("nodes") or []) or None,
        started_at=None, ended_at=finished.get("t") if finished else None, first_failure=None,
        error=None, owner=None,
    )


def _last_line(f) -> dict | None:
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - 4096))
    lines = f.read().splitlines()
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None


def run_dirs(log_root: str) -> list[str]:
    """The run directories under log_root, oldest first (run ids start with the time)."""
    try:
        entries = [e for e in os.scandir(log_root) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise RunError(f"cannot read {log_root}: {exc.strerror or exc}") from None
    return [e.path for e in sorted(entries, key=lambda e: e.name)]


def list_runs(log_root: str) -> list[RunEntry]:
    return [describe_run(path) for path in run_dirs(log_root)]


def resolve_run(log_root: str, spec: str | None, running_only: bool = False) -> str:
    """The run directory RUN names: a run directory path, a run id or a unique prefix of
    one under log_root; with no RUN, the newest running job there."""
    if spec is None:
        running = [e for e in list_runs(log_root) if e.running]
        if not running:
            raise RunError(f"no running job under {log_root} (flextui ls lists the runs there)")
        return running[-1].path
    if os.sep in spec or spec in (".", ".."):
        if os.path.isdir(spec) and not os.access(spec, os.R_OK | os.X_OK):
            raise RunError(f"{spec}: permission denied (the run belongs to another user)")
        if os.path.isdir(spec) and (os.path.exists(os.path.join(spec, EVENTS))
                                    or os.path.exists(os.path.join(spec, CARD))):
            return spec
        raise RunError(f"{spec}: not a run directory")
    exact = os.path.join(log_root, spec)
    if os.path.isdir(exact):
        return exact
    matches = [p for p in run_dirs(log_root) if os.path.basename(p).startswith(spec)]
    if running_only and len(matches) > 1:
        live = [p for p in matches if describe_run(p).running]
        matches = live or matches
    if not matches:
        raise RunError(f"no run {spec!r} under {log_root} (flextui ls lists the runs there)")
    if len(matches) > 1:
        names = ", ".join(os.path.basename(p) for p in matches[:4])
        raise RunError(f"{spec!r} names {len(matches)} runs under {log_root} ({names}"
                       f"{', ...' if len(matches) > 4 else ''}): give more of the id")
    return matches[0]


def format_table(entries: list[RunEntry], now: float) -> str:
    header = ("RUN", "STATE", "RANKS", "STARTED", "DURATION", "FIRST FAILURE")
    rows = []
    for e in entries:
        size = f"{e.world_size if e.world_size is not None else '?'}x{e.nodes if e.nodes is not None else '?'}"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.started_at)) if e.started_at else "-"
        duration = e.duration(now)
        failure = e.first_failure
        failure_text = (f"rank {failure['rank']} on {failure.get('host')}: {failure.get('outcome')}"
                        if failure else "-")
        rows.append((e.run_id, e.state_text, size, started, _duration_text(duration), failure_text))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in (header, *rows))


def _duration_text(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


# -- open: a finished run from its directory ------------------------------------------------------


class RecordedJob:
    """A run rebuilt from its run directory: JobProtocol with nothing left to control."""

    def __init__(self, run_path: str, tail_lines: int = DEFAULT_TAIL_LINES) -> None:
        self._run_path = run_path
        events = _read_events(run_path)
        if not events or events[0].get("ev") != "plan":
            raise RunError(f"{run_path}: no plan record in {EVENTS}: not a flextui run directory")
        plan = events[0]
        self.world = world_from_plan(plan)
        self.run_id = plan.get("run_id") or os.path.basename(os.path.normpath(run_path))
        self.mode: RunMode = mode_from_plan(plan)
        self.summary = read_json(os.path.join(run_path, SUMMARY))
        self.card = read_json(os.path.join(run_path, CARD)) or {}
        self.output_listeners: list = []
        self.state_listeners: list = []
        self.finished = True
        now = [time.time()]
        self.model = self.mode.new_model(self.world, self.run_id, tail_lines, lambda: now[0])
        self.model.started_at = (self.summary or self.card).get("started_at") or _first_time(events)
        _replay(self.model, events[1:], now, self.summary)
        self.files = dict(self._read_logs())
        self.model.recheck_errors()  # events.jsonl has no log text: the error lines come from the logs
        self.model.clock = time.time

    def _read_logs(self):
        """Each RankState's lines from its log (the newest `tail_lines`, as a console holds
        them); its log file, for a view that reads further back."""
        counts = _line_counts(self.summary)
        for state, relative in self.mode.log_files(self.model):
            path = os.path.join(self.run_path, relative)
            try:
                size = os.path.getsize(path)
            except OSError:
                continue
            state.tail.clear()
            state.tail.extend(read_tail(path, size, state.tail.maxlen or DEFAULT_TAIL_LINES, unfinished=False))
            state.log_bytes = state.byte_count = size
            state.line_count = max(counts.get((relative, state.rank), 0), len(state.tail))
            yield id(state), path
        # "all ranks": the newest lines of every rank, interleaved from the end (their order
        # across ranks is not on disk)
        combined = self.model.combined
        columns = [list(r.tail)[-(combined.maxlen or 0) // max(1, len(self.model.ranks)):]
                   for r in self.model.ranks]
        depth = max((len(c) for c in columns), default=0)
        for row in range(depth):
            for rank, column in enumerate(columns):
                offset = row - (depth - len(column))
                if offset >= 0:
                    combined.append((rank, column[offset]))
        self.model.combined_count = len(combined)

    @property
    def grace(self) -> float:
        return 0.0  # nothing left to stop

    @property
    def run_path(self) -> str:
        return self._run_path

    def log_file(self, state: RankState) -> str | None:
        return self.files.get(id(state))

    async def run(self) -> int:
        return self.model.exit_code

    def stop(self, reason: str, by_user: bool = False) -> None:
        pass

    def abort(self, signum: int = signal.SIGINT) -> None:
        pass

    def kill(self) -> None:
        pass

    def stop_rank(self, rank: int) -> None:
        pass

    def stop_node(self, node_rank: int) -> None:
        pass

    def kill_rank(self, rank: int) -> None:
        pass

    async def dump_stacks(self, timeout: float = STACKS_TIMEOUT) -> StackDump:
        return build_dump(time.time(), [], {"run": "the job has ended: no process to look at"}, [])


def world_from_plan(plan: dict) -> World:
    nodes, first = [], 0
    for n in plan["nodes"]:
        nodes.append(Node(n["host"], n["node_rank"], tuple(n["slots"]), first))
        first += len(n["slots"])
    return World(tuple(nodes), plan["master_addr"], plan["master_port"])


def _read_events(run_path: str) -> list[dict]:
    events = []
    try:
        with open(os.path.join(run_path, EVENTS), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    break  # a line cut short by a crash: the record ends there
    except OSError as exc:
        raise RunError(f"{run_path}: cannot read {EVENTS}: {exc.strerror or exc}") from None
    return events


def _first_time(events: list[dict]) -> float:
    return next((e["t"] for e in events if isinstance(e.get("t"), (int, float))), time.time())


def _replay(model: JobModel, events: list[dict], now: list[float], summary: dict | None) -> None:
    """events.jsonl through the model, as the job applied them; the model's clock reads each
    record's time. Then what only summary.json says (the error, how it was aborted)."""
    for event in events:
        kind = event.get("ev")
        if isinstance(event.get("t"), (int, float)):
            now[0] = event["t"]
        if kind == "stop":
            model.begin_stop(event.get("reason") or "stopped", model.grace or 0.0, bool(event.get("by_user")))
        elif kind == "node_lost":
            model.node_lost(event["node"], event.get("reason") or "lost")
        elif kind == "interrupted":
            model.interrupted(event.get("reason") or "interrupted")
        elif kind == "finished":
            _finish(model, summary)
        elif kind == "stop_attempt" and hasattr(model, "attempts"):
            attempt = next((a for a in model.attempts if a.number == event.get("attempt")), None)
            if attempt is not None:
                attempt.doomed = event.get("reason")
        elif "node" in event and kind not in ("preflight",):
            model.apply(event["node"], event)
    if not model.state.finished:  # the record stops short: its supervisor was lost
        for node in model.nodes:
            if not node.done:
                model.node_lost(node.node_rank, "supervisor lost: the run was not followed to its end")
        model.error = model.error or "supervisor lost: the run was not followed to its end"
        _finish(model, summary)


def _finish(model: JobModel, summary: dict | None) -> None:
    if summary is not None:
        model.error = summary.get("error")
        model.stop_reason = summary.get("stop_reason") or model.stop_reason
    model.finish()
    if summary is not None:
        if summary.get("ended_at"):
            model.ended_at = summary["ended_at"]
        try:
            model.state = JobState(summary.get("state"))
        except ValueError:
            pass
        code = summary.get("exit_code")
        if isinstance(code, int) and code > 128 and model.state is JobState.ABORTED:
            model.abort_signal = code - 128


def _line_counts(summary: dict | None) -> dict[tuple[str, int], int]:
    """(log file, rank) -> lines the rank wrote, as summary.json counted them."""
    counts: dict[tuple[str, int], int] = {}
    if not summary:
        return counts
    elastic = summary.get("elastic")
    if isinstance(elastic, dict):
        for attempt in elastic.get("attempts") or []:
            for r in attempt.get("ranks") or []:
                counts[(f"attempt-{attempt['attempt']}/rank-{r['rank']}.log", r["rank"])] = r.get("lines") or 0
    else:
        for r in summary.get("ranks") or []:
            counts[(f"rank-{r['rank']}.log", r["rank"])] = r.get("lines") or 0
    return counts


__all__ = [
    "CARD", "RecordedJob", "RunEntry", "RunError", "describe_run", "first_failure_of", "format_table",
    "list_runs", "owner_alive", "process_start_time", "read_json", "resolve_run", "run_dirs",
    "world_from_plan", "write_card",
]
