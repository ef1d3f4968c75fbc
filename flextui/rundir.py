"""The run directory: one folder per run with every rank's full log and the job's record.

    <log_root>/<YYYYmmdd-HHMMSS>-<id>/
        rank-<N>.log      everything rank N wrote, byte for byte
        events.jsonl      lifecycle events from every node launcher (not log text)
        summary.json      every rank's outcome, written when the job ends
        stacks-<HHMMSS>.txt   every stack dump (`d`, --stacks_on_stall): grouped, then whole
        summary.json.tmp  while the job runs: space kept for summary.json (below)
    and with --elastic, instead of rank-<N>.log:
        attempt-<k>/rank-<N>.log   what global rank N wrote in attempt k (rendezvous round)
        agent-<host>.log           torch's elastic agent on that host

The run directory is the console's own disk, not a node's: a write that fails (the disk
is full, a quota, an I/O error) is reported once to `on_failure` with a one-line reason
(the job stops the run, saying why) and every later log or event write is dropped. The
summary is written into space reserved when the directory was created, so it is there
even when the logs filled the disk.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable
from typing import IO

#: Space kept for summary.json: a rank's entry is ~330 bytes (indented JSON).
SUMMARY_RESERVE_BASE = 16 * 1024
SUMMARY_RESERVE_PER_RANK = 1024


class RunDir:
    def __init__(self, log_root: str, run_id: str, on_failure: Callable[[str], None] | None = None) -> None:
        self.path = os.path.join(log_root, run_id)
        self.on_failure = on_failure
        self.failure: str | None = None  # why writing stopped, once it did
        self._events: IO[str] | None = None
        self._logs: dict[object, IO[str]] = {}

    def create(self, ranks: int = 0) -> None:
        """Raises OSError if the directory cannot be made (or has no room for the summary)."""
        os.makedirs(self.path, exist_ok=True)
        with open(self._summary_tmp, "wb") as reserve:
            reserve.write(b" " * (SUMMARY_RESERVE_BASE + SUMMARY_RESERVE_PER_RANK * ranks))
        self._events = open(os.path.join(self.path, "events.jsonl"), "a", encoding="utf-8")

    @property
    def _summary_tmp(self) -> str:
        return os.path.join(self.path, "summary.json.tmp")

    def rank_log(self, rank: int) -> str:
        return os.path.join(self.path, f"rank-{rank}.log")

    def record(self, event: dict) -> None:
        if self._events is not None and self.failure is None:
            try:
                self._events.write(json.dumps(event) + "\n")
                self._events.flush()
            except OSError as exc:
                self._failed(exc)

    def write_log(self, rank: int, data: str) -> None:
        """Append streamed log text from a remote node (exact bytes, see launch.py)."""
        self._append(rank, lambda: self.rank_log(rank), data)

    def attempt_log(self, attempt: int, rank: int) -> str:
        return os.path.join(self.path, f"attempt-{attempt}", f"rank-{rank}.log")

    def write_attempt_log(self, attempt: int, rank: int, data: str) -> None:
        """Append streamed log text of rank N in attempt k (--elastic)."""
        self._append(("attempt", attempt, rank), lambda: self.attempt_log(attempt, rank), data)

    def write_agent_log(self, host: str, data: str) -> None:
        self._append(("agent", host), lambda: os.path.join(self.path, f"agent-{host}.log"), data)

    def close_attempt_logs(self, attempt: int) -> None:
        """Close an old attempt's files (a late write reopens them)."""
        for key in [k for k in self._logs if isinstance(k, tuple) and k[:2] == ("attempt", attempt)]:
            self._close(self._logs.pop(key))

    def _append(self, key, path_of, data: str) -> None:
        if self.failure is not None:
            return
        try:
            log = self._logs.get(key)
            if log is None:
                path = path_of()
                os.makedirs(os.path.dirname(path), exist_ok=True)
                log = self._logs[key] = open(path, "a", encoding="utf-8", errors="surrogateescape", newline="")
            log.write(data)
            log.flush()  # one write per launcher batch, so others can tail the run dir live
        except OSError as exc:
            self._failed(exc)

    def flush_logs(self) -> None:
        if self.failure is None:
            try:
                for log in self._logs.values():
                    log.flush()
            except OSError as exc:
                self._failed(exc)

    def write_text(self, stem: str, suffix: str, text: str) -> str | None:
        """A file of its own in the run directory (`stem` + `suffix`, or `stem-2` + `suffix`
        if taken): its path, or None if it could not be written (a failure is reported)."""
        if self.failure is not None or not os.path.isdir(self.path):
            return None
        for n in range(1, 1000):
            path = os.path.join(self.path, f"{stem}{'' if n == 1 else f'-{n}'}{suffix}")
            try:
                with open(path, "x", encoding="utf-8", errors="surrogateescape") as f:
                    f.write(text)
                return path
            except FileExistsError:
                continue
            except OSError as exc:
                self._failed(exc)
                return None
        return None

    def write_summary(self, summary: dict) -> None:
        """Into the reserved space, then renamed: also on a full disk (a failure is reported)."""
        if not os.path.isdir(self.path):
            return
        data = json.dumps(summary, indent=2).encode()
        tmp = self._summary_tmp
        try:
            with open(tmp, "r+b" if os.path.exists(tmp) else "wb") as f:
                f.write(data)  # over the reserved blocks: needs no new ones
                f.truncate()
            os.replace(tmp, os.path.join(self.path, "summary.json"))
        except OSError as exc:
            self._failed(exc, "summary.json not written")

    def close(self) -> None:
        for log in self._logs.values():
            self._close(log)
        self._logs.clear()
        if self._events is not None:
            self._close(self._events)
            self._events = None

    @staticmethod
    def _close(file: IO[str]) -> None:
        try:
            file.close()
        except OSError:
            pass  # what it still buffered cannot be written: the failure was reported

    def _failed(self, exc: OSError, what: str | None = None) -> None:
        where = f"{exc.filename}: " if exc.filename else f"{self.path}: "
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason = f"{what or 'run directory full'}: {where}{exc.strerror}"
        else:
            reason = f"{what or 'cannot write the run directory'}: {where}{exc.strerror or exc}"
        first = self.failure is None
        if first:
            self.failure = reason
        if (first or what) and self.on_failure is not None:
            self.on_failure(reason)
