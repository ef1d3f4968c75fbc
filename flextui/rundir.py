"""The run directory: one folder per run with every rank's full log and the job's record.

    <log_root>/<YYYYmmdd-HHMMSS>-<id>/
        rank-<N>.log     everything rank N wrote, byte for byte
        events.jsonl     lifecycle events from every node launcher (not log text)
        summary.json     every rank's outcome, written when the job ends
    and with --elastic, instead of rank-<N>.log:
        attempt-<k>/rank-<N>.log   what global rank N wrote in attempt k (rendezvous round)
        agent-<host>.log           torch's elastic agent on that host
"""

from __future__ import annotations

import json
import os
from typing import IO


class RunDir:
    def __init__(self, log_root: str, run_id: str) -> None:
        self.path = os.path.join(log_root, run_id)
        self._events: IO[str] | None = None
        self._logs: dict[int, IO[str]] = {}

    def create(self) -> None:
        os.makedirs(self.path, exist_ok=True)
        self._events = open(os.path.join(self.path, "events.jsonl"), "a", encoding="utf-8")

    def rank_log(self, rank: int) -> str:
        return os.path.join(self.path, f"rank-{rank}.log")

    def record(self, event: dict) -> None:
        if self._events is not None:
            self._events.write(json.dumps(event) + "\n")
            self._events.flush()

    def write_log(self, rank: int, data: str) -> None:
        """Append streamed log text from a remote node (exact bytes, see launch.py)."""
        log = self._logs.get(rank)
        if log is None:
            log = self._logs[rank] = open(
                self.rank_log(rank), "a", encoding="utf-8", errors="surrogateescape", newline=""
            )
        log.write(data)
        log.flush()  # one write per launcher batch, so others can tail the run dir live

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
            self._logs.pop(key).close()

    def _append(self, key, path_of, data: str) -> None:
        log = self._logs.get(key)
        if log is None:
            path = path_of()
            os.makedirs(os.path.dirname(path), exist_ok=True)
            log = self._logs[key] = open(path, "a", encoding="utf-8", errors="surrogateescape", newline="")
        log.write(data)
        log.flush()

    def flush_logs(self) -> None:
        for log in self._logs.values():
            log.flush()

    def write_summary(self, summary: dict) -> None:
        if not os.path.isdir(self.path):
            return
        tmp = os.path.join(self.path, "summary.json.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        os.replace(tmp, os.path.join(self.path, "summary.json"))

    def close(self) -> None:
        for log in self._logs.values():
            log.close()
        self._logs.clear()
        if self._events is not None:
            self._events.close()
            self._events = None
