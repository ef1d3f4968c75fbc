"""What the rank table shows and in which order (Textual-free).

- Columns: one table of (header, width, cell, sort key); a new column (silent time, CPU)
  is one more entry in COLUMNS and can be sorted on at once.
- A rank query, shared by the table's filter and the all-ranks view's show/hide:
  space- or comma-separated terms, each a rank (`137`), a range (`0-63`), a status word
  (`failed`, `running`, `stopped`, `problem`, ...) or a host (`node12`: that host exactly
  if there is one, else every host containing it; `node1*` globs). Terms of the same kind
  are alternatives, kinds combine: `node12 node13 failed` = failed ranks on either host.
  `!term` excludes: `!7` = all but rank 7, `!stopped`.
- Rows: ranks in the chosen order, or grouped under one header row per node
  (collapsible), nodes ordered by their first rank in that order.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from flextui.diagnosis import attention, cpu_text, gpu_text, mem_text, rank_status_text, silent_text
from flextui.model import JobModel, RankState, RankStatus
from flextui.ui.format import fmt_duration, fmt_rate, status_key


@dataclass
class Context:
    """What cells and sort keys read besides the rank: the clock and the line rates."""

    model: JobModel
    now: float = 0.0
    rates: list[float] = field(default_factory=list)

    def rate(self, rank: RankState) -> float:
        return self.rates[rank.rank] if rank.rank < len(self.rates) else 0.0


@dataclass(frozen=True)
class Column:
    name: str  # also the sort key's name
    header: str
    width: int
    right: bool
    cell: Callable[[RankState, Context], str]
    sort: Callable[[RankState, Context], object] | None = None
    drop: int = 0  # on a narrow screen, columns with the highest `drop` go first (0: never)


def shown_rank(model: JobModel, rank: int) -> int:
    """The number a rank goes by on screen: its RANK in the whole job (with DeepSpeed's
    --no_ssh --node_rank N this console runs one node's share, numbered from 0 inside)."""
    return model.world.global_rank(rank)


def _status_order(rank: RankState, ctx: Context) -> tuple:
    """What needs a look first; failures in the order they happened, the rest by rank."""
    level = attention(rank, ctx.model)
    return level, (rank.ended_at or 0.0) if level in (1, 2, 3) else 0.0, rank.rank


def _runtime(rank: RankState, ctx: Context) -> str:
    return fmt_duration(rank.runtime(ctx.now)) if rank.started_at is not None else "-"


def _rate(rank: RankState, ctx: Context) -> str:
    return fmt_rate(ctx.rate(rank)) if rank.status is RankStatus.RUNNING else "-"


def _running_usage(rank: RankState):
    return rank.usage if rank.status is RankStatus.RUNNING else None


def _cpu(rank: RankState, ctx: Context) -> str:
    return cpu_text(_running_usage(rank))


def _mem(rank: RankState, ctx: Context) -> str:
    usage = _running_usage(rank)
    return mem_text(usage.rss) if usage is not None else "-"


def _usage_order(value: Callable[[object], float | None]):
    """Biggest first; ranks with no sample after those that have one."""
    def key(rank: RankState, ctx: Context) -> tuple:
        usage = _running_usage(rank)
        figure = value(usage) if usage is not None else None
        return (figure is None, -(figure or 0.0), rank.rank)
    return key


def _silent_order(rank: RankState, ctx: Context) -> tuple:
    """The longest silence first."""
    silent = ctx.model.silent_for(rank, ctx.now)
    return (silent is None, -(silent or 0.0), rank.rank)


def has_gpu_telemetry(model: JobModel) -> bool:
    """Some rank's launcher has reported its GPU (NVML): the GPU column shows its use."""
    return any(r.usage is not None and r.usage.gpu is not None for r in model.ranks)


#: The GPU column with telemetry: `3 87% 12G/80G` (binding, busy %, held / total).
GPU_TELEMETRY_WIDTH = 14


def columns_for(model: JobModel) -> list[Column]:
    """Each column is at least as wide as its title and the sort arrow. On a narrow screen
    what a rank uses (MEM, CPU, SILENT) goes first, then local rank, GPU and PID (the panel
    above the log shows them all for the selected rank)."""
    ranks = model.ranks
    host_width = min(24, max(5, *(len(r.info.host) for r in ranks)))
    gpu_width = max(3, *(len(str(r.info.gpu)) for r in ranks))
    if has_gpu_telemetry(model):
        gpu_width = max(gpu_width, GPU_TELEMETRY_WIDTH)
    columns = [
        Column("rank", "RANK", max(4, len(str(shown_rank(model, len(ranks) - 1)))), True,
               lambda r, c: str(shown_rank(c.model, r.rank)), lambda r, c: r.rank),
        Column("host", "HOST", host_width, False,
               lambda r, c: r.info.host, lambda r, c: (r.info.host, r.rank)),
        Column("local", "LOCAL", 5, True, lambda r, c: str(r.info.local_rank), drop=3),
        Column("gpu", "GPU", gpu_width, True, lambda r, c: gpu_text(r),
               _usage_order(lambda u: u.gpu.util if u.gpu is not None else None), drop=2),
        Column("pid", "PID", 7, True, lambda r, c: str(r.pid or "-"), drop=1),
        Column("status", "STATUS", 15, False, lambda r, c: rank_status_text(c.model, r, c.now), _status_order),
        Column("runtime", "RUNTIME", 8, True, _runtime,
               lambda r, c: (-r.runtime(c.now), r.rank)),
        Column("rate", "LINES/S", 7, True, _rate, lambda r, c: (-c.rate(r), r.rank)),
        Column("silent", "SILENT", 6, True, lambda r, c: silent_text(c.model, r, c.now), _silent_order, drop=4),
        Column("cpu", "CPU", 5, True, _cpu, _usage_order(lambda u: u.cpu), drop=5),
        Column("mem", "MEM", 5, True, _mem, _usage_order(lambda u: u.rss), drop=6),
    ]
    return [replace(c, width=max(c.width, len(c.header) + (1 if c.sort else 0))) for c in columns]


SORTS = ("rank", "status", "host", "rate", "runtime", "silent", "cpu", "mem", "gpu")  # the order `o` cycles through
LAST_LINE_MIN = 24  # columns kept for the rank's last line before dropping columns


def fitting(columns: list[Column], width: int) -> list[Column]:
    """The columns that leave the last line some room on a screen this wide (the panel
    above the log shows what is dropped: local rank, GPU, PID)."""
    shown = list(columns)
    for column in sorted((c for c in columns if c.drop), key=lambda c: -c.drop):
        if sum(c.width + 1 for c in shown) + 2 + LAST_LINE_MIN <= width:
            break
        shown.remove(column)
    return shown


def fit(text: str, column: Column) -> str:
    if len(text) > column.width:
        text = text[: column.width - 1] + "…"
    return text.rjust(column.width) if column.right else text.ljust(column.width)


# -- the rank query ----------------------------------------------------------------


def _is_failure(rank: RankState) -> bool:
    return rank.status in (RankStatus.FAILED, RankStatus.KILLED) and not rank.stopped


STATUS_WORDS: dict[str, Callable[[RankState, JobModel], bool]] = {
    "pending": lambda r, m: r.status is RankStatus.PENDING,
    "running": lambda r, m: r.status is RankStatus.RUNNING,
    "alive": lambda r, m: not r.status.finished,
    "exited": lambda r, m: r.status is RankStatus.EXITED,
    "done": lambda r, m: r.status is RankStatus.EXITED,
    "ok": lambda r, m: r.status is RankStatus.EXITED,
    "failed": lambda r, m: _is_failure(r),
    "killed": lambda r, m: r.status is RankStatus.KILLED and not r.stopped,
    "stopped": lambda r, m: r.stopped and r.status is not RankStatus.EXITED,
    "lost": lambda r, m: r.status is RankStatus.LOST,
    "finished": lambda r, m: r.status.finished,
    "ended": lambda r, m: r.status.finished,
    "problem": lambda r, m: _is_failure(r) or r.status is RankStatus.LOST or m.first_failure is r,
    "first": lambda r, m: m.first_failure is r,
}
STATUS_WORDS["problems"] = STATUS_WORDS["problem"]

_RANGE_RE = re.compile(r"(\d+)(?:-(\d+))?")


class RankQuery:
    """A parsed rank query (see the module docstring). Falsy when it selects everything."""

    def __init__(self, text: str, hosts: list[str] | None = None) -> None:
        self.text = text.strip()
        self._hosts = set(hosts or ())
        self.include: dict[str, list[Callable[[RankState, JobModel], bool]]] = {}
        self.exclude: list[Callable[[RankState, JobModel], bool]] = []
        for term in re.split(r"[\s,]+", self.text):
            negate = term.startswith("!")
            body = term[1:] if negate else term
            if not body:
                continue
            kind, test = self._term(body)
            if negate:
                self.exclude.append(test)
            else:
                self.include.setdefault(kind, []).append(test)

    def _term(self, body: str) -> tuple[str, Callable[[RankState, JobModel], bool]]:
        numbers = _RANGE_RE.fullmatch(body)
        if numbers:
            lo = int(numbers.group(1))
            hi = int(numbers.group(2)) if numbers.group(2) else lo
            return "rank", lambda r, m: lo <= shown_rank(m, r.rank) <= hi
        word = body.lower()
        if word in STATUS_WORDS:
            return "status", STATUS_WORDS[word]
        if body in self._hosts:
            return "host", lambda r, m: r.info.host == body
        if any(c in body for c in "*?["):
            return "host", lambda r, m: fnmatch.fnmatchcase(r.info.host, body)
        if word == body:  # smart case: lower-case matches any case
            return "host", lambda r, m: word in r.info.host.lower()
        return "host", lambda r, m: body in r.info.host

    def __bool__(self) -> bool:
        return bool(self.include or self.exclude)

    def __call__(self, rank: RankState, model: JobModel) -> bool:
        for tests in self.include.values():
            if not any(test(rank, model) for test in tests):
                return False
        return not any(test(rank, model) for test in self.exclude)

    def select(self, model: JobModel) -> list[int]:
        return [r.rank for r in model.ranks if self(r, model)]


# -- rows ---------------------------------------------------------------------------

NODE, RANK = 0, 1  # the kinds of row: a node's header row, a rank


@dataclass
class TableOrder:
    """How the user wants the table: sort, filter, grouping."""

    sort: str = "rank"
    reverse: bool = False
    query: RankQuery = field(default_factory=lambda: RankQuery(""))
    grouped: bool = False
    collapsed: set[int] = field(default_factory=set)  # node ranks folded away


def build_rows(model: JobModel, ctx: Context, order: TableOrder,
               columns: list[Column]) -> tuple[list[tuple[int, int]], list[int]]:
    """The table's rows, (NODE, node_rank) or (RANK, rank), and the matching ranks in
    order (folded nodes' ranks included)."""
    query = order.query
    ranks = [r for r in model.ranks if query(r, model)] if query else list(model.ranks)
    key = next((c.sort for c in columns if c.name == order.sort and c.sort), None)
    if key is not None and (order.sort != "rank" or order.reverse):
        ranks.sort(key=lambda r: key(r, ctx), reverse=order.reverse)
    if not order.grouped:
        return [(RANK, r.rank) for r in ranks], [r.rank for r in ranks]
    by_node: dict[int, list[int]] = {}
    for r in ranks:  # a dict keeps the nodes in the order of their first rank
        by_node.setdefault(r.info.node_rank, []).append(r.rank)
    rows: list[tuple[int, int]] = []
    in_order: list[int] = []
    for node_rank, members in by_node.items():
        rows.append((NODE, node_rank))
        in_order.extend(members)
        if node_rank not in order.collapsed:
            rows.extend((RANK, rank) for rank in members)
    return rows, in_order


def node_summary(model: JobModel, node_rank: int) -> list[tuple[str, int]]:
    """(status key, count) of a node's ranks, worst first: [("failed", 1), ("running", 7)]."""
    counts: dict[str, int] = {}
    node = model.nodes[node_rank] if 0 <= node_rank < len(model.nodes) else None
    members = [model.ranks[i] for i in node.ranks] if node else []
    for rank in sorted(members, key=lambda r: attention(r, model)):
        key = status_key(rank)
        counts[key] = counts.get(key, 0) + 1
    return list(counts.items())
