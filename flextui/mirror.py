"""A job model mirrored into another process: the supervisor publishes, a console replicates.

The supervisor owns the one true JobModel (it applies the launchers' events and takes every
decision). A console attached to it holds a *replica*: an object of the same class whose
state is copied from the supervisor's, never computed again. Nothing here interprets an
event, so the replica cannot disagree with the supervisor however the model or a run mode
changes; data still flows one way (launcher -> events -> model -> replica -> UI).

What crosses the socket, per console:

* the model's state without its log text, pickled (pickle copies any model class exactly,
  ElasticJobModel's attempts included, with no field list to keep in step with model.py).
  Every RankState travels by reference (a number), so the replica keeps one object per
  RankState for its whole life: the UI may hold on to it (a tab's source does). The fields
  of each RankState but its output travel next to it. Sent again whenever it changed.
* output, as a diff: for each RankState the lines completed since the console's last
  diff (at most a tail's worth: a console that fell behind gets the newest lines and the
  count of all), its line being written (`live`) and its counters; plus the new entries of
  the combined "all ranks" ring (the same str objects, which pickle sends once).
* on attach, a snapshot instead of the old output: for each RankState its log file (the
  mode's log_files) and the byte offset in it up to which the model has taken output in
  (RankState.log_bytes), taken in the same instant as the state. The console reads the
  tail from the file itself, up to that offset; diffs continue from that instant. So the
  history costs the supervisor nothing but a few numbers, a 64-rank attach does not move
  64 x 5,000 lines through it, and a console can read a rank's whole log from the file
  the same way (the offset says where the in-memory tail ends). The combined ring (at most
  DEFAULT_COMBINED_LINES lines) is sent whole: its order across ranks is nowhere on disk.

The supervisor keeps per console only what that console has been sent (a view), so a slow
console costs one diff's worth of memory, not a queue: it is skipped while its socket
buffer is full and gets a larger diff later.

Pickle is safe here because both ends are the same user, checked with SO_PEERCRED before
a byte is read (supervisor.py, client.py); consoles send the supervisor JSON only.
"""

from __future__ import annotations

import io
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice

from flextui.model import JobModel, RankState, _after_carriage_return

#: RankState fields that are output: never in a state message, only in diffs/snapshots.
#: (last_heard: when it last wrote, which changes with every output as the counters do.)
RANK_OUTPUT_FIELDS = frozenset({"tail", "_unfinished", "live", "line_count", "byte_count", "log_bytes",
                                "last_heard"})
#: JobModel attributes a replica keeps as its own: output, and what it was built with
#: (and the supervisor's own bookkeeping of which ranks its stall watch has flagged).
MODEL_LOCAL_FIELDS = frozenset({"combined", "combined_count", "clock", "world", "_flagged"})

PROTOCOL = pickle.HIGHEST_PROTOCOL


# -- the supervisor's side --------------------------------------------------------------


@dataclass
class ConsoleView:
    """What one console has been sent so far."""

    state_version: int = -1
    #: RankState key -> (line_count, byte_count, live, last_heard) as last sent
    output: dict[int, tuple[int, int, str, float | None]] = field(default_factory=dict)
    combined_count: int = 0
    combined_len: int = 0  # entries the console's ring holds


class _StatePickler(pickle.Pickler):
    def __init__(self, file, publisher: Publisher) -> None:
        super().__init__(file, PROTOCOL)
        self.publisher = publisher
        self.model = publisher.model

    def persistent_id(self, obj):
        if type(obj) is RankState:
            return ("rank", self.publisher.key(obj))
        if obj is self.model.world:
            return ("world",)
        return None


class Publisher:
    """The supervisor's model, as state messages and per-console output diffs."""

    def __init__(self, model: JobModel, log_files: Callable[[], Iterable[tuple[RankState, str]]]) -> None:
        self.model = model
        self.log_files = log_files
        self.states: list[RankState] = []  # key -> RankState (kept alive: keys are never reused)
        self._keys: dict[int, int] = {}  # id(RankState) -> key
        self.version = 0
        self._state: bytes | None = None

    def key(self, state: RankState) -> int:
        key = self._keys.get(id(state))
        if key is None:
            key = self._keys[id(state)] = len(self.states)
            self.states.append(state)
        return key

    # -- state --------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Pickle the state again; True (and a new version) if it changed."""
        out = io.BytesIO()
        attrs = {k: v for k, v in vars(self.model).items() if k not in MODEL_LOCAL_FIELDS}
        _StatePickler(out, self).dump(attrs)  # registers any new RankState
        ranks = [{k: v for k, v in vars(s).items() if k not in RANK_OUTPUT_FIELDS} for s in self.states]
        blob = pickle.dumps((type(self.model), ranks, out.getvalue()), PROTOCOL)
        if blob == self._state:
            return False
        self._state = blob
        self.version += 1
        return True

    def state(self) -> bytes:
        if self._state is None:
            self.refresh()
        return self._state

    # -- output -------------------------------------------------------------------------

    def snapshot(self, view: ConsoleView) -> dict:
        """Everything a new console needs, and `view` set to match: the state, each
        RankState's log file and offset, the combined ring."""
        files = {}
        for state, path in self.log_files():
            self.key(state)  # a log no state message has named yet
            files[id(state)] = path
        self.refresh()
        logs = {}
        for key, state in enumerate(self.states):
            logs[key] = {
                "file": files.get(id(state)), "offset": state.log_bytes, "tail": len(state.tail),
                "line_count": state.line_count, "byte_count": state.byte_count, "live": state.live,
                "unfinished": bool(state._unfinished), "last_heard": state.last_heard,
            }
            view.output[key] = (state.line_count, state.byte_count, state.live, state.last_heard)
        model = self.model
        view.state_version = self.version
        view.combined_count, view.combined_len = model.combined_count, len(model.combined)
        return {"state": self._state, "logs": logs, "combined": list(model.combined),
                "combined_count": model.combined_count, "combined_max": model.combined.maxlen}

    def diff(self, view: ConsoleView) -> dict | None:
        """What changed since `view` (which is updated), or None if nothing did."""
        message: dict = {}
        if view.state_version != self.version:
            message["state"] = self._state
            view.state_version = self.version
        outputs = []
        for key, state in enumerate(self.states):
            sent = view.output.get(key)
            now = (state.line_count, state.byte_count, state.live, state.last_heard)
            if sent == now:
                continue
            new = state.line_count - (sent[0] if sent else 0)
            lines = _last(state.tail, new) if new > 0 else []
            outputs.append((key, lines, *now[:3], state.log_bytes, state.last_heard))
            view.output[key] = now
        if outputs:
            message["output"] = outputs
        model = self.model
        new = model.combined_count - view.combined_count
        ring = model.combined
        expected = min(view.combined_len + max(new, 0), ring.maxlen or len(ring))
        if len(ring) < expected:  # the ring was cleared (a new elastic attempt): all of it again
            message["combined_reset"] = list(ring)
        elif new > 0:
            message["combined"] = _last(ring, new)
        if new or len(ring) != view.combined_len:
            message["combined_count"] = model.combined_count
            view.combined_count, view.combined_len = model.combined_count, len(ring)
        return message or None


def _last(items: deque, count: int) -> list:
    """The last `count` items of a deque (all if fewer), in order, without copying it all."""
    count = min(count, len(items))
    out = list(islice(reversed(items), count))
    out.reverse()
    return out


# -- the console's side -------------------------------------------------------------------


class _StateUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes, replica: Replica) -> None:
        super().__init__(io.BytesIO(data))
        self.replica = replica

    def persistent_load(self, pid):
        if pid[0] == "rank":
            return self.replica.states[pid[1]]
        if pid[0] == "world":
            return self.replica.world
        raise pickle.UnpicklingError(f"unknown reference {pid!r}")


class Replica:
    """The console's copy of the supervisor's model, built from a snapshot and kept by diffs.

    `output_listeners` hear (rank, lines) for lines of the current ranks (model.ranks), as
    a real Job's do; `log_file(state)` is the file (absolute) that holds a RankState's
    whole log: its first `state.log_bytes` bytes are what the replica holds.
    """

    def __init__(self, world, run_path: str, clock: Callable[[], float] = time.time,
                 read_logs: bool = True) -> None:
        self.world = world
        self.run_path = run_path
        self.clock = clock
        self.read_logs = read_logs
        self.model: JobModel | None = None
        self.states: list[RankState] = []
        self.files: dict[int, str] = {}  # id(RankState) -> absolute log path

    def log_file(self, state: RankState) -> str | None:
        return self.files.get(id(state))

    # -- state ----------------------------------------------------------------------------

    def _apply_state(self, blob: bytes) -> None:
        model_class, ranks, attrs_blob = pickle.loads(blob)
        for key, fields in enumerate(ranks):
            if key < len(self.states):
                vars(self.states[key]).update(fields)
            else:
                self.states.append(_new_rank_state(fields))
        attrs = _StateUnpickler(attrs_blob, self).load()
        if self.model is None:
            model = model_class.__new__(model_class)
            vars(model).update(attrs)
            model.clock, model.world = self.clock, self.world
            model.combined, model.combined_count = deque(), 0
            model._flagged = set()
            self.model = model
        else:
            vars(self.model).update(attrs)

    # -- snapshot ---------------------------------------------------------------------------

    def apply_snapshot(self, snapshot: dict) -> None:
        self._apply_state(snapshot["state"])
        model = self.model
        for key, log in snapshot["logs"].items():
            state = self.states[key]
            if log["file"]:
                self.files[id(state)] = os.path.join(self.run_path, log["file"])
            lines = []
            if self.read_logs and log["file"] and log["tail"]:
                lines = read_tail(self.files[id(state)], log["offset"], log["tail"], log["unfinished"])
            state.tail.clear()
            state.tail.extend(lines)
            state.line_count, state.byte_count, state.log_bytes = log["line_count"], log["byte_count"], log["offset"]
            state.last_heard = log.get("last_heard")
            _set_live(state, log["live"])
        model.combined = deque(snapshot["combined"], maxlen=snapshot["combined_max"])
        model.combined_count = snapshot["combined_count"]

    # -- diffs ------------------------------------------------------------------------------

    def apply_diff(self, diff: dict) -> list[tuple[int, list[str]]]:
        """Apply a diff; the (rank, lines) it completed for the current ranks."""
        if "state" in diff:
            self._apply_state(diff["state"])
        model = self.model
        published = []
        outputs = diff.get("output", ())
        if outputs:
            current = {id(state): rank for rank, state in enumerate(model.ranks)}
            for key, lines, line_count, byte_count, live, log_bytes, last_heard in outputs:
                state = self.states[key]
                if lines:
                    state.tail.extend(lines)
                    rank = current.get(id(state))
                    if rank is not None:
                        published.append((rank, lines))
                state.line_count, state.byte_count, state.log_bytes = line_count, byte_count, log_bytes
                state.last_heard = last_heard
                _set_live(state, live)
        if "combined_reset" in diff:
            model.combined.clear()
            model.combined.extend(diff["combined_reset"])
        elif "combined" in diff:
            model.combined.extend(diff["combined"])
        if "combined_count" in diff:
            model.combined_count = diff["combined_count"]
        return published


def _new_rank_state(fields: dict) -> RankState:
    state = RankState.__new__(RankState)
    vars(state).update(fields)
    state.tail = deque(maxlen=fields.get("tail_lines"))
    state._unfinished, state.live = [], ""
    state.line_count = state.byte_count = state.log_bytes = 0
    state.last_heard = None
    return state


def _set_live(state: RankState, live: str) -> None:
    state.live = live
    state._unfinished = [live] if live else []


# -- reading a log file backwards ----------------------------------------------------------

READ_BLOCK = 1 << 20


def read_tail(path: str, end: int, count: int, unfinished: bool) -> list[str]:
    """The last `count` display lines of the log file's first `end` bytes, as a RankState
    holds them: split at newlines, a progress bar's carriage returns applied, undecodable
    bytes replaced. With `unfinished`, the text after the last newline is the line still
    being written (not a line yet); without it, it is the last line (the rank finished).
    A file shorter than `end` (its disk filled up) gives what it has."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            end = min(end, size)
            chunks: list[bytes] = []
            newlines, pos = 0, end
            # count+1 newlines: the text before the count-th line from the end is cut off
            while pos > 0 and newlines <= count:
                start = max(0, pos - READ_BLOCK)
                f.seek(start)
                block = f.read(pos - start)
                chunks.append(block)
                newlines += block.count(b"\n")
                pos = start
    except OSError:
        return []
    data = b"".join(reversed(chunks))
    pieces = data.split(b"\n")
    last = pieces.pop()  # after the last newline
    if pos > 0 and pieces:
        pieces.pop(0)  # cut off in the middle
    if last and not unfinished:
        pieces.append(last)
    lines = [_display(p) for p in pieces[-count:]] if count else []
    return lines


def _display(raw: bytes) -> str:
    line = raw.decode("utf-8", "replace")
    return _after_carriage_return(line) if "\r" in line else line
