"""Headless console: the same job semantics as the TUI, in plain text for scripts and CI."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Callable
from typing import TextIO

from flextui.diagnosis import (
    attempt_text, collateral_text, elastic_summary_lines, error_text, gpu_telemetry_note, outcome_text, stall_warning,
    verdict_line,
)
from flextui.job import Job
from flextui.model import JobModel, RankState
from flextui.modes.elastic import ElasticJobModel
from flextui.stacks import StackDump

ERROR_CELL = 120  # characters of a failed rank's error line in the summary table


def summary_table(model: JobModel) -> str:
    now = model.ended_at or model.clock()
    header = ("RANK", "HOST", "GPU", "PID", "OUTCOME", "DURATION")
    rows = [
        (str(model.world.global_rank(r.rank)), r.info.host, str(r.info.gpu), str(r.pid or "-"), outcome_text(r),
         f"{r.runtime(now):.1f}s")
        for r in model.current_ranks
    ]
    if any(r.cpus for r in model.current_ranks):  # --bind_cores_to_rank
        header = (*header[:3], "CPUS", *header[3:])
        rows = [(*row[:3], r.cpus or "-", *row[3:]) for row, r in zip(rows, model.current_ranks)]
    errors = [error_text(r) or "" for r in model.current_ranks]
    if any(errors):  # what each failed rank died of
        header = (*header, "LAST ERROR")
        rows = [(*row, _cell(error)) for row, error in zip(rows, errors)]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    # What explains the table comes before it: the verdict stays the last line.
    notes = [f"flextui: {n}" for n in (gpu_telemetry_note(model), collateral_text(model)) if n]
    return "\n".join([*notes, *lines, verdict_line(model, now)])


def _cell(text: str) -> str:
    return text if len(text) <= ERROR_CELL else text[: ERROR_CELL - 1] + "…"


def stacks_lines(dump: StackDump) -> list[str]:
    """A stack dump for a text console: the groups, smallest first, what was missing, where
    the whole dump is."""
    lines = [dump.headline()] + [f"  {group.line()}" for group in dump.groups] + dump.problem_lines()
    if dump.path:
        lines.append(f"every stack: {dump.path}")
    return lines


class ConsoleOutput:
    """The headless console's stdout. Once a write fails — the reader of a pipe is gone
    (`| head -n 30`), the terminal closed, the disk of a redirect is full — it prints
    nothing more: the output is a view of the job, never a reason to touch it. The job
    runs on and flextui exits with the job's code, unlike `yes | head`, whose producer
    SIGPIPE ends (128 + 13): a finished training run is no failure because nobody read
    its tail. As Python's docs advise for SIGPIPE, the stream's file descriptor is then
    pointed at /dev/null, so neither a late write nor the interpreter's final flush fails
    again."""

    def __init__(self, stream: TextIO, on_failure: Callable[[OSError], None]) -> None:
        self.stream = stream
        self.on_failure = on_failure
        self.failed: OSError | None = None

    def write(self, text: str) -> None:
        if self.failed is None:
            try:
                self.stream.write(text)
            except OSError as exc:
                self._fail(exc)

    def flush(self) -> None:
        if self.failed is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.failed = exc
        silence(self.stream)
        self.on_failure(exc)


def silence(stream: TextIO) -> None:
    """Point the stream's file descriptor at /dev/null (whatever it still buffers goes there)."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError):  # not a real file (a test's StringIO)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


async def run_headless(job: Job) -> int:
    """The job in this process, printed; its socket served (attach, stop, ls work on it)."""
    from flextui.supervisor import END_DRAIN, Supervisor

    supervisor = Supervisor(job)
    try:
        return await HeadlessConsole(job).run()
    finally:
        await supervisor.closed(END_DRAIN + 1)


class LiveStatus:
    """On a terminal, the latest unfinished line (a `\\r` progress bar) drawn live as one
    status line under the output, as pip and tqdm do; lines print above it. Off a
    terminal nothing changes: a progress bar reaches the output when its line ends."""

    INTERVAL = 0.1  # seconds between looks at the ranks' unfinished lines
    CLEAR = "\r\x1b[K"

    def __init__(self, model: JobModel, prefix: Callable[[int], str]) -> None:
        self.model, self.prefix = model, prefix
        self.text = ""  # what the status line shows now ("" = nothing drawn)
        self._seen: dict[int, str] = {}
        self._latest: int | None = None

    def update(self) -> bool:
        """Look for changed unfinished lines; True if the status line must be redrawn."""
        for rank in self.model.ranks:
            live = rank.live
            if live != self._seen.get(rank.rank, ""):
                self._seen[rank.rank] = live
                if live:
                    self._latest = rank.rank
        live_ranks = [r for r, text in self._seen.items() if text]
        if self._latest is None or not self._seen.get(self._latest):
            self._latest = live_ranks[-1] if live_ranks else None
        text = ""
        if self._latest is not None:
            text = self.prefix(self._latest) + _printable(self._seen[self._latest])
            if len(live_ranks) > 1:
                text += f"  (+{len(live_ranks) - 1} more ranks)"
        width = shutil.get_terminal_size((80, 24)).columns - 1
        text = text[:width]
        changed = text != self.text
        self.text = text
        return changed


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else " " for c in text.rsplit("\r", 1)[-1])


class HeadlessConsole:
    def __init__(self, job: Job, out: TextIO = sys.stdout) -> None:
        self.job = job
        self.out = ConsoleOutput(out, self._output_failed)
        # the job's RANK: under --no_ssh --node_rank N this console runs a share of the job
        self.prefixes = [f"[{job.world.global_rank(r.rank)}|{r.host}] " for r in job.world.ranks]
        self.elastic = isinstance(job.model, ElasticJobModel)
        self._attempts_told = self._lost_told = 0
        try:
            tty = out.isatty()
        except (AttributeError, ValueError, OSError):
            tty = False
        self.status = LiveStatus(job.model, self._prefix) if tty else None
        self._hang_told = False
        job.output_listeners.append(self.print_lines)

    def _prefix(self, rank: int) -> str:
        if self.elastic:  # the current attempt's mapping
            return f"[{rank}|{self.job.model.ranks[rank].info.host}] "
        return self.prefixes[rank]

    def print_lines(self, rank: int, lines: list[str]) -> None:
        prefix = self._prefix(rank)
        self._above(prefix + ("\n" + prefix).join(lines) + "\n")

    def _above(self, text: str) -> None:
        """Print whole lines; a live status line stays under them."""
        if self.status is not None and self.status.text:
            self.status.update()
            text = LiveStatus.CLEAR + text + self.status.text
        self.out.write(text)

    async def _draw_status(self) -> None:
        while True:
            await asyncio.sleep(LiveStatus.INTERVAL)
            if self.status.update():
                self.out.write(LiveStatus.CLEAR + self.status.text)
                self.out.flush()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._on_signal, sig)
        model = self.job.model
        self.job.state_listeners.append(self._announce_once)
        self.job.stall_listeners.append(self._tell_stalls)
        self.job.stacks_listeners.append(self._tell_stacks)
        if self.elastic:
            self.job.state_listeners.append(self._tell_elastic)
        drawing = asyncio.ensure_future(self._draw_status()) if self.status is not None else None
        try:
            code = await self.job.run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if drawing is not None:
                drawing.cancel()
                if self.status.text:
                    self.out.write(LiveStatus.CLEAR)
                    self.status.text = ""
        self.out.write(summary_table(model) + "\n")
        if self.elastic:
            self.out.write("".join(f"flextui: {line}\n" for line in elastic_summary_lines(model)))
        self.out.flush()
        return code

    def _tell_stalls(self, ranks: list[RankState]) -> None:
        """One line per rank when it is first flagged, and once that it is every rank."""
        model = self.job.model
        now = model.clock()
        for rank in ranks:
            self._above(f"flextui: ⚠ {stall_warning(model, rank, now)}\n")
        if model.collective_hang(now) and not self._hang_told:
            self._hang_told = True
            self._above("flextui: ⚠ every running rank is silent: a collective hang? "
                        "(their stacks: --stacks_on_stall, or `d` in the console)\n")

    def _tell_stacks(self, dump: StackDump) -> None:
        self._above("".join(f"flextui: {line}\n" for line in stacks_lines(dump)))

    def _announce_once(self) -> None:
        self.job.state_listeners.remove(self._announce_once)
        if self.job.model.error is None:
            world = self.job.world
            self._above(
                f"flextui: run {self.job.run_id}: {world.world_size} ranks on "
                f"{len(world.nodes)} node(s), logs in {self.job.run_path}\n"
            )

    def _tell_elastic(self) -> None:
        """One line per new attempt and per lost node (--elastic)."""
        model = self.job.model
        for node_rank in model.lost_nodes[self._lost_told:]:
            self._above(f"flextui: {model.nodes[node_rank].error}; the others go on "
                        f"(--min_nodes {model.elastic.min_nodes})\n")
        self._lost_told = len(model.lost_nodes)
        # An attempt is told once it is the current one and settled (all its ranks placed).
        for attempt in model.attempts[self._attempts_told:]:
            if attempt is model.current_attempt and len(attempt.claimed()) < attempt.world_size:
                break
            self._above(f"flextui: {attempt_text(model, attempt)}\n")
            self._attempts_told += 1

    def _output_failed(self, exc: OSError) -> None:
        try:
            print(f"flextui: cannot write the output ({exc.strerror or exc}): printing stops, the job "
                  f"goes on; its logs are in {self.job.run_path}", file=sys.stderr, flush=True)
        except OSError:
            silence(sys.stderr)  # gone too (`2>&1 | head`)

    def _on_signal(self, sig: int) -> None:
        deadline = self.job.model.stop_deadline()
        if deadline is None:
            self._above(
                f"flextui: {signal.Signals(sig).name}: stopping all ranks "
                f"(SIGKILL in {self.job.grace:g}s; again to kill now)\n"
            )
        else:
            self._above(f"flextui: {signal.Signals(sig).name} again: killing all ranks now\n")
        self.job.abort(sig)

