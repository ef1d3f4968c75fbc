"""Stacks of every rank, grouped: where a hung job's ranks are, in a few lines. Pure: no
I/O, no Textual (the job asks the nodes, flextui.launch runs py-spy, the UI draws).

A dump is what every node's launcher answered to one "stacks" command: one "stack" event
per running rank (its process and its children, each thread's frames innermost first),
then "stacks" (complete, or why none: py-spy missing). build_dump() turns the answers into
a StackDump; ranks whose rank process has the same main-thread stack form a group, the
smallest group first, because the odd one out is usually the culprit:

    rank 7 (1): Loader.__next__ (train.py:31) ← main (train.py:64) ← …
    rank 5 (1): all_reduce ← sync_metrics (train.py:44) ← …
    ranks 0-4,6 (6): all_reduce ← train_step (train.py:40) ← …

Children (dataloader workers) and the other threads are kept with their rank (shown in the
detail and written to the run directory, see dump_text) but do not split groups: a busy
worker is at a different line every time.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

#: A frame that is not the user's own code: a library or the standard library.
_LIBRARY_RE = re.compile(r"[/\\](?:site|dist)-packages[/\\]|[/\\]lib[/\\]python\d+(?:\.\d+)?[/\\]|^<frozen ")
STACKS_INSTALL = "pip install 'flextui[stacks]'"


@dataclass(frozen=True)
class Frame:
    function: str
    file: str  # as py-spy shortens it: "train.py", "torch/distributed/distributed_c10d.py"
    line: int | None
    path: str  # the full file name

    @property
    def library(self) -> bool:
        """Not the user's code: site-packages, the standard library, frozen importlib."""
        return bool(_LIBRARY_RE.search(self.path or self.file or ""))

    def text(self, location: bool = True) -> str:
        if not location or self.line is None:
            return self.function
        return f"{self.function} ({self.file}:{self.line})"

    @property
    def key(self) -> tuple:
        return (self.function, self.path or self.file, self.line)


@dataclass(frozen=True)
class ThreadStack:
    name: str
    tid: int | None
    active: bool
    frames: tuple[Frame, ...]  # innermost first


@dataclass(frozen=True)
class ProcessStack:
    pid: int
    ppid: int | None
    cmdline: str
    threads: tuple[ThreadStack, ...] = ()
    error: str | None = None  # py-spy could not read it (one line)

    @property
    def main(self) -> ThreadStack | None:
        """The main thread: the one whose id is the pid, else "MainThread", else the first."""
        for thread in self.threads:
            if thread.tid == self.pid:
                return thread
        for thread in self.threads:
            if thread.name == "MainThread":
                return thread
        return self.threads[0] if self.threads else None


@dataclass(frozen=True)
class RankStack:
    rank: int
    host: str
    pid: int
    processes: tuple[ProcessStack, ...]  # the rank's own process first, then its children

    @property
    def own(self) -> ProcessStack | None:
        return self.processes[0] if self.processes else None

    @property
    def frames(self) -> tuple[Frame, ...]:
        """The rank process's main-thread stack, innermost first (empty if unread)."""
        own = self.own
        main = own.main if own else None
        return main.frames if main else ()

    @property
    def error(self) -> str | None:
        own = self.own
        if own is None:
            return "no stack"
        if own.error:
            return own.error
        return None if own.threads else "no Python thread"

    @property
    def key(self) -> tuple:
        error = self.error
        return ("error", error) if error else tuple(f.key for f in self.frames)

    @property
    def children(self) -> tuple[ProcessStack, ...]:
        return self.processes[1:]


@dataclass
class StackGroup:
    ranks: list[int]
    stack: RankStack  # the lowest rank's, standing for all of them
    #: indexes into stack.frames that are not in the closest other group's stack (the
    #: frames to look at); empty when there is one group
    differs: set[int] = field(default_factory=set)

    @property
    def error(self) -> str | None:
        return self.stack.error

    def label(self) -> str:
        """`ranks 0-6,8-15 (15)` / `rank 7 (1)`."""
        word = "rank" if len(self.ranks) == 1 else "ranks"
        return f"{word} {rank_spans(self.ranks)} ({len(self.ranks)})"

    def line(self) -> str:
        """One line: `ranks 0-6,8-15 (15): all_reduce ← train_step (train.py:42) ← …`."""
        return f"{self.label()}: {self.summary()}"

    def summary(self) -> str:
        if self.error:
            return f"({self.error})"
        return stack_summary(self.stack.frames)


@dataclass
class StackDump:
    """One "d": every running rank's stack, grouped, and what could not be had."""

    t: float  # when it was asked (the job's clock)
    ranks: list[RankStack]
    groups: list[StackGroup]
    #: host -> why that node gave no stacks ("py-spy is not installed for ...", "no answer
    #: within 15s"); nodes without running ranks are not asked
    node_errors: dict[str, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # running ranks with no stack
    path: str | None = None  # the stacks-HHMMSS.txt it was written to

    @property
    def lacking_py_spy(self) -> list[str]:
        return [host for host, error in self.node_errors.items() if "py-spy is not installed" in error]

    def headline(self) -> str:
        """`stacks of 16 ranks: 3 groups` (+ what is missing)."""
        n = len(self.ranks)
        text = f"stacks of {n} rank{'s' if n != 1 else ''}: {len(self.groups)} group{'s' if len(self.groups) != 1 else ''}"
        if self.missing:
            text += f"; no stack from {'rank' if len(self.missing) == 1 else 'ranks'} {rank_spans(self.missing)}"
        return text

    def problem_lines(self) -> list[str]:
        """What kept stacks away, one line per cause; how to install py-spy where missing."""
        lines = []
        lacking = self.lacking_py_spy
        if lacking:
            lines.append(f"py-spy is missing on {', '.join(lacking)}: {STACKS_INSTALL} "
                         f"(or pip install py-spy) for the nodes' python")
        lines += [f"{host}: {error}" for host, error in self.node_errors.items() if host not in lacking]
        return lines


def rank_spans(ranks: list[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] -> '0-3,5,7-8'."""
    spans: list[list[int]] = []
    for rank in sorted(set(ranks)):
        if spans and rank == spans[-1][-1] + 1:
            spans[-1].append(rank)
        else:
            spans.append([rank])
    return ",".join(str(s[0]) if len(s) == 1 else f"{s[0]}-{s[-1]}" for s in spans)


def stack_summary(frames: tuple[Frame, ...] | list[Frame]) -> str:
    """Where a stack is, in one line: its innermost frame, then the user's own frames that
    lead there (with file:line), then … for the rest: `all_reduce ← train_step
    (train.py:42) ← main (train.py:60) ← …`."""
    if not frames:
        return "(no frames)"
    parts = [frames[0].text(location=not frames[0].library)]
    shown_user = 0
    for frame in frames[1:]:
        if not frame.library and shown_user < 2:
            parts.append(frame.text())
            shown_user += 1
        elif shown_user >= 2:
            break
    if len(parts) < len(frames):
        parts.append("…")
    return " ← ".join(parts)


def group_stacks(ranks: list[RankStack]) -> list[StackGroup]:
    """Ranks with the same main-thread stack of their own process, one group each; the
    smallest group first (ties: the lowest rank first), errors last."""
    by_key: dict[tuple, list[RankStack]] = {}
    for stack in sorted(ranks, key=lambda s: s.rank):
        by_key.setdefault(stack.key, []).append(stack)
    groups = [StackGroup([s.rank for s in members], members[0]) for members in by_key.values()]
    groups.sort(key=lambda g: (g.error is not None, len(g.ranks), g.ranks[0]))
    stacked = [g for g in groups if g.error is None]
    for group in stacked:
        others = [g for g in stacked if g is not group]
        if not others:
            continue
        # The closest other group: the one sharing the most frames (ties: the largest).
        mine = [f.key for f in group.stack.frames]
        closest = max(others, key=lambda g: (len(set(mine) & {f.key for f in g.stack.frames}), len(g.ranks)))
        theirs = {f.key for f in closest.stack.frames}
        group.differs = {i for i, key in enumerate(mine) if key not in theirs}
    return groups


# -- from the launchers' events ---------------------------------------------------------


def _frames(raw) -> tuple[Frame, ...]:
    frames = []
    for item in raw or ():
        if isinstance(item, (list, tuple)) and item:
            name, short, line, path = (list(item) + [None, None, None])[:4]
            frames.append(Frame(str(name), str(short or path or "?"), line if isinstance(line, int) else None,
                                str(path or short or "")))
    return tuple(frames)


def _process(raw: dict) -> ProcessStack:
    threads = tuple(
        ThreadStack(str(t.get("name") or ""), t.get("tid"), bool(t.get("active")), _frames(t.get("frames")))
        for t in raw.get("threads") or () if isinstance(t, dict)
    )
    return ProcessStack(int(raw.get("pid") or 0), raw.get("ppid"), str(raw.get("cmdline") or ""),
                        threads, raw.get("error"))


def rank_stack(event: dict, host: str) -> RankStack:
    """A launcher's "stack" event (flextui.launch documents it)."""
    return RankStack(int(event["rank"]), host, int(event.get("pid") or 0),
                     tuple(_process(p) for p in event.get("processes") or () if isinstance(p, dict)))


def build_dump(t: float, stacks: list[RankStack], node_errors: dict[str, str],
               expected: list[int]) -> StackDump:
    """The dump from every answer: `expected` are the ranks that were running when it
    was asked (those without a stack are `missing`)."""
    have = {s.rank for s in stacks}
    return StackDump(t, sorted(stacks, key=lambda s: s.rank), group_stacks(stacks), dict(node_errors),
                     sorted(r for r in expected if r not in have))


# -- the run directory's copy -----------------------------------------------------------


def dump_text(dump: StackDump, run_id: str = "") -> str:
    """The whole dump as text (stacks-HHMMSS.txt): the groups, then every rank with every
    process and thread, innermost frame first as py-spy prints them."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dump.t))
    out = [f"flextui stacks{' of run ' + run_id if run_id else ''} at {when}: {dump.headline()}"]
    out += dump.problem_lines()
    out.append("")
    for group in dump.groups:
        out.append(group.line())
    for group in dump.groups:
        out.append("")
        out.append(f"== {group.label()} on {', '.join(_hosts(dump, group.ranks))}")
        if group.error:
            out.append(f"   {group.error}")
        for i, frame in enumerate(group.stack.frames):
            out.append(f"{'>>' if i in group.differs else '  '} {frame.text()}")
    out.append("")
    out.append("-- every rank, every process and thread " + "-" * 40)
    for stack in dump.ranks:
        for index, process in enumerate(stack.processes):
            role = f"rank {stack.rank} on {stack.host}" if index == 0 else f"  child of rank {stack.rank}"
            out.append("")
            out.append(f"{role}: pid {process.pid}: {process.cmdline}")
            if process.error:
                out.append(f"    ({process.error})")
            for thread in process.threads:
                state = "active" if thread.active else "idle"
                out.append(f"    thread {thread.tid} ({state}): \"{thread.name}\"")
                out += [f"        {frame.function} ({frame.path or frame.file}:{frame.line})" for frame in thread.frames]
    return "\n".join(out) + "\n"


def _hosts(dump: StackDump, ranks: list[int]) -> list[str]:
    wanted = set(ranks)
    return list(dict.fromkeys(s.host for s in dump.ranks if s.rank in wanted))
