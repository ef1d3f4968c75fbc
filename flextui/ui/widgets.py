"""The rank table (a Line-API view drawn straight from the model) and the job bar."""

from __future__ import annotations

from collections.abc import Callable

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Region, Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Button, Static

from flextui.diagnosis import (
    cpu_text, elastic_bar_text, error_text, gpu_text, mem_text, silent_text, stall_text, status_text, verdict,
)
from flextui.model import JobModel, RankState
from flextui.modes.elastic import ElasticJobModel
from flextui.ui.format import fmt_duration, fmt_rate, status_key
from flextui.ui.logview import plain
from flextui.ui.rankview import (
    NODE, RANK, Column, Context, TableOrder, build_rows, columns_for, fit, fitting, node_summary, shown_rank,
)
from flextui.ui.theming import Palette


class RankHeader(Widget):
    """The table's column titles (click one to sort by it), the sort and the filter."""

    DEFAULT_CSS = """
    RankHeader { height: 1; background: $panel; }
    """

    class SortClicked(Message):
        def __init__(self, column: str) -> None:
            super().__init__()
            self.column = column

    def __init__(self, table: RankTable, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.table = table
        self.palette: Palette | None = None
        self._spans: list[tuple[int, int, str]] = []  # (x0, x1, column) for clicks

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.size.width
        palette = self.palette
        style = base + palette.header if palette else base
        table = self.table
        order = table.order
        # The first column shows where the keys go: "▌" while the table has the focus.
        focused = table.has_focus and palette is not None
        segments, x = [Segment("▌" if focused else " ", base + palette.accent if focused else style)], 1
        segments.append(Segment(" " * (2 if order.grouped else 0), style))
        x += 2 if order.grouped else 0
        self._spans = []
        for column in table.shown_columns():
            title = column.header
            if column.name == order.sort:  # the arrow on the side away from the values
                arrow = "▲" if not order.reverse else "▼"
                title = arrow + title if column.right else title + arrow
            cell = title.rjust(column.width) if column.right else title.ljust(column.width)
            sorted_here = column.name == order.sort and palette is not None
            segments.append(Segment(cell, style + palette.accent if sorted_here else style))
            segments.append(Segment(" ", style))
            if column.sort is not None:
                self._spans.append((x, x + len(cell), column.name))
            x += len(cell) + 1
        segments.append(Segment("LAST LINE", style))
        x += 9
        note = table.describe_filter()
        if note and palette is not None:
            room = width - x - 2
            if room > 8:
                note = note if len(note) <= room else note[: room - 1] + "…"
                segments.append(Segment(" " * (width - x - len(note)), style))
                segments.append(Segment(note, base + palette.accent))
        return Strip(segments).crop_extend(0, width, base)

    def on_click(self, event: Click) -> None:
        for x0, x1, name in self._spans:
            if x0 <= event.x < x1:
                self.post_message(self.SortClicked(name))
                return


class RankTable(ScrollView, can_focus=True):
    """One row per rank (or per node, grouped), drawn from the model (only visible rows).

    Which ranks and in which order comes from rankview.build_rows (sort, filter, group);
    the cursor sticks to the rank (or node) it is on when the order changes.
    """

    BINDINGS = [
        Binding("up", "cursor(-1)", "Previous rank", show=False),
        Binding("down", "cursor(1)", "Next rank", show=False),
        Binding("pageup", "cursor(-10)", "10 rows up", show=False),
        Binding("pagedown", "cursor(10)", "10 rows down", show=False),
        Binding("ctrl+home", "cursor(-1000000)", "First row", show=False),
        Binding("ctrl+end", "cursor(1000000)", "Last row", show=False),
        Binding("enter", "select", "Open the rank's log (on a node row: fold/unfold it)",
                show=False),
        Binding("left", "fold(True)", "Fold the node (grouped by node)", show=False),
        Binding("right", "fold(False)", "Unfold the node (grouped by node)", show=False),
        Binding("space", "fold(None)", "Fold/unfold the node (grouped by node)", show=False),
    ]

    DEFAULT_CSS = """
    RankTable { background: $surface; overflow-x: hidden; }
    """

    class Selected(Message):
        def __init__(self, rank: int) -> None:
            super().__init__()
            self.rank = rank

    class Moved(Message):
        """The cursor is on another rank or node (the detail panel follows it)."""

    def __init__(self, model: JobModel, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model
        self.columns = columns_for(model)
        self.order = TableOrder()
        self.ctx = Context(model, rates=[0.0] * len(model.ranks))
        self.palette: Palette | None = None
        self.rows: list[tuple[int, int]] = [(RANK, r.rank) for r in model.ranks]
        self.ranks_in_order: list[int] = [r.rank for r in model.ranks]
        self.cursor = 0
        self.virtual_size = Size(0, len(self.rows))

    @property
    def rates(self) -> list[float]:
        return self.ctx.rates

    @rates.setter
    def rates(self, rates: list[float]) -> None:
        self.ctx.rates = rates

    @property
    def now(self) -> float:
        return self.ctx.now

    @now.setter
    def now(self, now: float) -> None:
        self.ctx.now = now

    def on_mount(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.rows))

    # -- order ------------------------------------------------------------------------

    def rebuild(self) -> None:
        """Recompute the rows (sort/filter/group or the ranks' state changed)."""
        current = self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None
        self.rows, self.ranks_in_order = build_rows(self.model, self.ctx, self.order, self.columns)
        if self.cursor == 0:
            pass  # the cursor on the top row stays there: the first failure, sorted by status
        elif current is not None and current in self.rows:
            self.cursor = self.rows.index(current)
        elif current is not None and current[0] == RANK and self.order.grouped:
            node = (NODE, self.model.ranks[current[1]].info.node_rank)
            self.cursor = self.rows.index(node) if node in self.rows else 0
        self.cursor = max(0, min(self.cursor, len(self.rows) - 1))
        self._set_row_count(len(self.rows))
        if current is not None and self.cursor < (self.scrollable_content_region.height or 1):
            # the selected rank was re-sorted to within the first screenful: show the top too,
            # or a stop cascade in a status sort hides the first failure above the view
            self.scroll_to(y=0, animate=False, immediate=True)
        self._scroll_to_cursor()
        self.refresh()
        if self.rows[self.cursor:self.cursor + 1] != [current]:
            self.post_message(self.Moved())

    def _set_row_count(self, rows: int) -> None:
        """The virtual size; a re-layout of the screen only when the table's own height can
        change (it is capped by CSS: more rows than fit before and after leave it as is)."""
        size = Size(self.size.width, rows)
        if size == self.virtual_size:
            return
        height = self.size.height
        scroll_update = getattr(self, "_scroll_update", None)
        if scroll_update is not None and self.virtual_size.height > height and rows > height > 0:
            self.set_reactive(Widget.virtual_size, size)
            scroll_update(size)
        else:
            self.virtual_size = size

    def set_order(self, **changes) -> None:
        """The user changed the order: the table shows its top (the first failure, when
        sorted by status)."""
        for name, value in changes.items():
            setattr(self.order, name, value)
        self.rebuild()
        self.move_to_row(0)
        self.scroll_to(y=0, animate=False, immediate=True)

    def set_columns(self, columns: list[Column]) -> None:
        self.columns = columns
        self._fitted = (None, columns)
        self.refresh()

    def shown_columns(self) -> list[Column]:
        width = self.size.width or 200
        if getattr(self, "_fitted", (None,))[0] != width:
            self._fitted = (width, fitting(self.columns, width))
        return self._fitted[1]

    @property
    def matched(self) -> int:
        return len(self.ranks_in_order)

    def describe_filter(self) -> str:
        parts = []
        if self.order.query:
            parts.append(f"filter “{self.order.query.text}”: {self.matched} of {len(self.model.ranks)}")
        if self.order.grouped:
            parts.append("by node")
        return "  ".join(parts)

    # -- cursor -----------------------------------------------------------------------

    def selected(self) -> tuple[int, int] | None:
        return self.rows[self.cursor] if 0 <= self.cursor < len(self.rows) else None

    def selected_rank(self) -> RankState | None:
        row = self.selected()
        return self.model.ranks[row[1]] if row and row[0] == RANK else None

    def selected_node(self) -> int | None:
        row = self.selected()
        if row is None:
            return None
        return row[1] if row[0] == NODE else self.model.ranks[row[1]].info.node_rank

    def move_cursor(self, rank: int) -> None:
        """Put the cursor on a rank (unfolding its node; not if the filter hides it)."""
        if not 0 <= rank < len(self.model.ranks):
            return
        if self.order.grouped:
            node = self.model.ranks[rank].info.node_rank
            if node in self.order.collapsed:
                self.order.collapsed.discard(node)
                self.rebuild()
        if (RANK, rank) in self.rows:
            self.move_to_row(self.rows.index((RANK, rank)))

    def move_to_row(self, row: int) -> None:
        row = max(0, min(row, len(self.rows) - 1))
        moved = row != self.cursor
        self.cursor = row
        self._scroll_to_cursor()
        self.refresh()
        if moved:
            self.post_message(self.Moved())

    def _scroll_to_cursor(self) -> None:
        height = self.scrollable_content_region.height or 1
        if self.cursor < self.scroll_y:
            self.scroll_to(y=self.cursor, animate=False, immediate=True)
        elif self.cursor >= self.scroll_y + height:
            self.scroll_to(y=self.cursor - height + 1, animate=False, immediate=True)

    def action_cursor(self, delta: int) -> None:
        self.move_to_row(self.cursor + delta)

    def action_select(self) -> None:
        row = self.selected()
        if row is None:
            return
        if row[0] == NODE:
            self.action_fold(None)
        else:
            self.post_message(self.Selected(row[1]))

    def action_fold(self, fold: bool | None) -> None:
        node = self.selected_node()
        if not self.order.grouped or node is None:
            return
        collapsed = self.order.collapsed
        fold = node not in collapsed if fold is None else fold
        if fold == (node in collapsed):
            return
        if fold:
            collapsed.add(node)
            self.cursor = self.rows.index((NODE, node))  # the cursor moves up to the node row
        else:
            collapsed.discard(node)
        self.rebuild()

    def on_click(self, event: Click) -> None:
        row = int(self.scroll_y) + event.y
        if 0 <= row < len(self.rows):
            self.move_to_row(row)
            self.action_select()

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    # -- drawing ------------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.size.width
        index = int(self.scroll_y) + y
        palette = self.palette
        if palette is None or index >= len(self.rows):
            return Strip.blank(width, base)
        if index == self.cursor:
            row_style = base + (palette.row_cursor if self.has_focus else palette.row_cursor_blurred)
        else:
            row_style = base
        kind, ident = self.rows[index]
        if kind == NODE:
            segments = self._node_segments(ident, row_style, palette)
        else:
            segments = self._rank_segments(self.model.ranks[ident], row_style, palette, width)
        return Strip(segments).crop_extend(0, width, row_style)

    def _rank_segments(self, rank: RankState, row_style: Style, palette: Palette,
                       width: int) -> list[Segment]:
        model, ctx = self.model, self.ctx
        first = model.first_failure is rank
        stalled = model.is_stalled(rank, ctx.now)
        if stalled:
            status_style = palette.warning
        elif rank.collateral:  # took down by the root cause: not drawn as a failure of its own
            status_style = palette.status["stopped"]
        else:
            status_style = palette.status[status_key(rank)]
        indent = "  " if self.order.grouped else ""
        segments = [Segment(indent, row_style),
                    Segment("▶" if first else " ", row_style + palette.first_failure)]
        idle = rank.info.node_rank < 0  # --elastic: a planned slot outside the current world
        for column in self.shown_columns():
            if idle:
                text = {"rank": str(shown_rank(model, rank.rank)), "status": "idle"}.get(column.name, "-")
            else:
                text = column.cell(rank, ctx)
            style = row_style
            if column.name == "status":
                style = row_style + (palette.muted if idle else status_style)
                if first:
                    style += palette.bold
            elif column.name == "silent" and stalled:
                style = row_style + palette.warning
            segments.append(Segment(fit(text, column), style))
            segments.append(Segment(" ", row_style))
        used = sum(len(s.text) for s in segments)
        if width > used:
            error = error_text(rank) if rank.status.finished else None
            if error:  # what it died of, not whatever it printed last
                segments.append(Segment(error[: width - used], row_style + palette.error))
            else:
                segments.append(Segment(plain(rank.last_line)[: width - used], row_style + palette.muted))
        return segments

    def _node_segments(self, node_rank: int, row_style: Style, palette: Palette) -> list[Segment]:
        node = self.model.nodes[node_rank]
        folded = node_rank in self.order.collapsed
        segments = [
            Segment(("▸ " if folded else "▾ "), row_style + palette.accent),
            Segment(f"{node.host}", row_style + palette.bold),
            Segment(f"  node {_node_number(self.model, node_rank)} · ranks {shown_rank(self.model, node.ranks.start)}-"
                    f"{shown_rank(self.model, node.ranks.stop - 1)}  ",
                    row_style + palette.muted),
        ]
        for key, count in node_summary(self.model, node_rank):
            word = {"exited": "done"}.get(key, key)
            segments.append(Segment(f"{count} {word}  ", row_style + palette.status[key]))
        if node.lost and node.error:
            segments.append(Segment(node.error, row_style + palette.status["lost"]))
        return segments


class JobBar(Widget):
    """Two lines: who/what/how long/how many, then the state or what needs attention."""

    DEFAULT_CSS = """
    JobBar { height: 2; background: $panel; padding: 0 1; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.lines: tuple[Text, Text] = (Text(), Text())

    def set(self, lines: tuple[Text, Text]) -> None:
        key = [(t.plain, t.spans) for t in lines]
        if key != [(t.plain, t.spans) for t in self.lines]:
            self.lines = lines
            self.refresh()

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.size.width
        if y > 1:
            return Strip.blank(width, base)
        text = self.lines[y].copy()
        text.stylize_before(base)
        segments = list(text.render(self.app.console))
        return Strip(segments).crop_extend(0, width, base)


def job_bar_lines(model: JobModel, palette: Palette, now: float, run_dir: str | None,
                  total_rate: float, quitting: bool, launch_error: str | None,
                  stop_note: str | None = None) -> tuple[Text, Text]:
    # The same words as the table: ranks flextui stopped are "stopped", not "killed".
    counts = dict.fromkeys(("pending", "running", "exited", "failed", "killed", "lost", "stopped"), 0)
    for rank in (model.current_ranks if isinstance(model, ElasticJobModel) else model.ranks):
        counts[status_key(rank)] += 1
    end = model.ended_at or now
    # What matters first, so a narrow terminal cuts the run id, not the counts.
    head = Text()
    head.append("flextui ", palette.accent)
    nodes = len(model.nodes)
    if isinstance(model, ElasticJobModel):  # --elastic: the current attempt, world size, lost nodes
        head.append(elastic_bar_text(model) + "  ")
    else:
        head.append(f"{model.world.world_size} rank{'s' if model.world.world_size != 1 else ''} · "
                    f"{nodes} node{'s' if nodes != 1 else ''}  ")
    head.append(f"⏱ {fmt_duration(end - model.started_at)}  ")
    for key, glyph, word in (
        ("pending", "○", "pending"), ("running", "●", "running"), ("exited", "✓", "done"),
        ("failed", "✗", "failed"), ("killed", "☠", "killed"), ("lost", "?", "lost"),
        ("stopped", "■", "stopped"),
    ):
        n = counts[key]
        if n or key in ("running", "exited"):
            head.append(f"{glyph} {n} {word}  ", palette.status[key] if n else palette.muted)
    if total_rate >= 0.05:
        head.append(f"{fmt_rate(total_rate)} lines/s  ", palette.muted)
    head.append(f"run {model.run_id}", palette.muted)

    second = Text()
    v = verdict(model, now, launch_error)
    second.append(v.state.upper() if model.state.finished else v.state, palette.status[v.key] + palette.bold)
    if v.exit_code is not None:
        second.append(f" (exit code {v.exit_code})", palette.status[v.key])
    stalls = stall_text(model, now) if not model.state.finished else None
    if stalls:  # before the rest: it is what needs a look while the job runs
        second.append(f"  {stalls}", palette.warning)
    if v.kind == "first_failure":
        second.append(f"  ▶ {v.reason}", palette.first_failure)
        second.append("  (x: show it)", palette.muted)
    elif v.kind == "error":
        second.append(f"  error: {v.reason}", palette.status["failed"])
    elif v.kind == "stop" or stop_note:
        second.append(f"  {v.reason or stop_note}", palette.muted)
    if model.state.value == "stopping" and not quitting:
        second.append("  Ctrl+C again: kill now", palette.muted)
    elif quitting and not model.state.finished:
        second.append("  quitting when the job has stopped (q: kill now)", palette.warning)
    elif model.state.finished:
        second.append("  q: quit  s: summary", palette.muted)
    if run_dir:
        second.append(f"  logs: {run_dir}", palette.muted)
    return head, second


class TabStrip(Widget):
    """"all ranks" and one tab per rank in the table's order, as many as fit around the
    active one (a Line-API strip: 512 tabs cost one line). Beyond what fits: `:` picks."""

    DEFAULT_CSS = """
    TabStrip { height: 1; background: $panel; }
    """

    class Clicked(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.keys: list[str] = ["all"]
        self.active = "all"
        self.palette: Palette | None = None
        self._spans: list[tuple[int, int, str]] = []

    def set(self, keys: list[str], label: Callable[[str], Text], active: str,
            marked: str | None = None) -> None:
        """`label(key)` draws a tab (asked only for the tabs shown); `marked` (the first
        failure's key) is one cell wider."""
        self.keys, self.label, self.active, self.marked = keys, label, active, marked
        self.refresh()

    def _width(self, key: str) -> int:
        if key == "all":
            return len("all ranks") + 2
        return len(key) + 1 + (1 if key == self.marked else 0)  # "r12" -> " 12 "

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.size.width
        palette = self.palette
        keys = self.keys
        if palette is None or not keys or not hasattr(self, "label"):
            return Strip.blank(width, base)
        active = keys.index(self.active) if self.active in keys else 0
        # "all ranks" always shows; then a window of rank tabs around the active one.
        lo = hi = max(1, active)
        used = self._width(keys[0]) + (self._width(keys[lo]) if lo < len(keys) else 0)
        room = width - 22  # for the " ◂31 more " / " 20 more ▸ (:) " counts
        while True:
            grown = False
            if hi + 1 < len(keys) and used + self._width(keys[hi + 1]) <= room:
                hi += 1
                used += self._width(keys[hi])
                grown = True
            if lo - 1 >= 1 and used + self._width(keys[lo - 1]) <= room:
                lo -= 1
                used += self._width(keys[lo])
                grown = True
            if not grown:
                break
        shown = [0, *range(lo, min(hi, len(keys) - 1) + 1)] if len(keys) > 1 else [0]
        segments: list[Segment] = []
        self._spans = []
        x = 0
        for n, i in enumerate(shown):
            if n == 1 and lo > 1:
                more = f" ◂{lo - 1} more "
                segments.append(Segment(more, base + palette.muted))
                x += len(more)
            key = keys[i]
            label = self.label(key).copy()
            style = base + (palette.tab_active if i == active else Style())
            label.stylize_before(style)
            segments.append(Segment(" ", style))
            segments.extend(label.render(self.app.console))
            segments.append(Segment(" ", style))
            self._spans.append((x, x + self._width(key), key))
            x += self._width(key)
        if hi < len(keys) - 1:
            segments.append(Segment(f" {len(keys) - 1 - hi} more ▸ (:)", base + palette.muted))
        return Strip(segments).crop_extend(0, width, base)

    def on_click(self, event: Click) -> None:
        for x0, x1, key in self._spans:
            if x0 <= event.x < x1:
                self.post_message(self.Clicked(key))
                return


class RankPanel(Vertical):
    """The selected rank (or node): where it runs, how it is doing, its last error line,
    and buttons that stop or kill it, its node or the job (each asks first)."""

    BUTTONS = (  # id, label, app action, tooltip
        ("stop-rank", "Stop rank k", "stop_rank", "SIGTERM the rank's process tree, SIGKILL after the grace"),
        ("kill-rank", "Kill rank ^k", "kill_rank", "SIGKILL the rank's process tree now"),
        ("stop-node", "Stop node K", "stop_node", "SIGTERM every rank on the rank's node"),
        ("abort-job", "Abort job ^c", "confirm_abort", "SIGTERM every rank, SIGKILL after the grace"),
    )

    def compose(self):
        yield Static(id="rank-info")
        with Horizontal(id="rank-buttons"):
            for ident, label, _, tooltip in self.BUTTONS:
                button = Button(label, id=ident, compact=True,
                                variant="error" if ident in ("kill-rank", "abort-job") else "warning")
                button.tooltip = tooltip
                yield button

    async def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        action = {ident: action for ident, _, action, _ in self.BUTTONS}.get(event.button.id or "")
        if action:
            await self.app.run_action(action)

    def show(self, info: Text, enabled: dict[str, bool]) -> None:
        static = self.query_one("#rank-info", Static)
        if getattr(self, "_info_key", None) != (info.plain, info.spans):
            self._info_key = (info.plain, info.spans)
            static.update(info, layout=False)  # one line, fixed by CSS: no re-layout
        for ident, on in enabled.items():
            self.query_one(f"#{ident}", Button).disabled = not on


def _node_number(model: JobModel, node_rank: int) -> int:
    """The node's rank in the whole job (--no_ssh --node_rank N: this console's one node is N)."""
    share = model.world.share
    return share.node_rank if share else node_rank


def rank_detail(rank: RankState, ctx: Context, palette: Palette, last_error: str | None) -> Text:
    info = rank.info
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"rank {shown_rank(ctx.model, rank.rank)}", palette.bold)
    text.append(f"  {info.host}  local {info.local_rank}  gpu {info.gpu}  ")
    if rank.cpus:  # --bind_cores_to_rank
        text.append(f"cpus {rank.cpus}  ")
    text.append(f"pid {rank.pid or '-'}  ")
    text.append(status_text(rank), palette.status[status_key(rank)] + palette.bold)
    if rank.started_at is not None:
        text.append(f"  {fmt_duration(rank.runtime(ctx.now))}")
    if rank.status.value == "running":
        text.append(f"  {fmt_rate(ctx.rate(rank))} lines/s", palette.muted)
    text.append(f"  {rank.line_count:,} lines", palette.muted)
    model = ctx.model
    silent = silent_text(model, rank, ctx.now)
    if silent:
        stalled = model.is_stalled(rank, ctx.now)
        text.append(f"  silent {silent}{' (stalled?)' if stalled else ''}",
                    palette.warning if stalled else palette.muted)
    usage = rank.usage if rank.status.value == "running" else None
    if usage is not None:
        text.append(f"  cpu {cpu_text(usage)}  mem {mem_text(usage.rss)}  {usage.threads} threads"
                    f"{f'  {usage.procs} procs' if usage.procs > 1 else ''}", palette.muted)
        if usage.gpu is not None:
            text.append(f"  gpu {gpu_text(rank)}", palette.muted)
    error = error_text(rank) or last_error
    if error:
        text.append("  collateral of the root cause: " if rank.collateral else "  last error: ", palette.muted)
        text.append(plain(error).strip(), palette.error)
    return text


def node_detail(model: JobModel, node_rank: int, palette: Palette) -> Text:
    node = model.nodes[node_rank]
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(f"node {node.host}", palette.bold)
    text.append(f"  node rank {_node_number(model, node_rank)}  "
                f"ranks {shown_rank(model, node.ranks.start)}-{shown_rank(model, node.ranks.stop - 1)}  "
                f"launcher pid {node.launcher_pid or '-'}  ")
    for key, count in node_summary(model, node_rank):
        text.append(f"{count} {'done' if key == 'exited' else key}  ", palette.status[key])
    if node.error:
        text.append(node.error, palette.status["lost" if node.lost else "failed"])
    return text


class KeyBar(Widget, can_focus=False):
    """The footer: the keys of the focused widget and its screen, drawn as one line.

    Textual's Footer mounts a widget per key and mounts them all again whenever the
    bindings may have changed: each focus change, each prompt, dialog or picker opened or
    closed. At 512 ranks that was 20-50 ms of every such key. Here a change of keys is a
    repaint of one line. A click on a key presses it (app.simulate_key, as Textual's
    footer does); hovering one shows its tooltip."""

    ALLOW_SELECT = False
    COMPONENT_CLASSES = {"keybar--key", "keybar--description", "keybar--hover"}
    DEFAULT_CSS = """
    KeyBar {
        dock: bottom;
        height: 1;
        color: $footer-foreground;
        background: $footer-background;
        pointer: pointer;
        .keybar--key {
            color: $footer-key-foreground;
            background: $footer-key-background;
            text-style: bold;
        }
        .keybar--description {
            color: $footer-description-foreground;
            background: $footer-description-background;
        }
        .keybar--hover {
            background: $block-hover-background;
        }
    }
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        # (key, shown as, description, enabled, tooltip) in the order Textual's footer has them
        self.keys: tuple[tuple[str, str, str, bool, str], ...] = ()
        self._spans: list[tuple[int, int, int]] = []  # (start x, end x, index in keys)
        self._hover: str | None = None  # the key under the mouse

    def on_mount(self) -> None:
        self.screen.bindings_updated_signal.subscribe(self, self._bindings_changed)
        self._bindings_changed(self.screen)

    def on_unmount(self) -> None:
        self.screen.bindings_updated_signal.unsubscribe(self)

    def _bindings_changed(self, screen) -> None:
        if not self.is_attached or screen is not self.screen:
            return
        keys = self._shown(screen)
        if keys != self.keys:
            self.keys = keys
            self.refresh()

    def _shown(self, screen) -> tuple:
        seen: set[str] = set()
        keys = []
        palette_key = None
        app = self.app
        for key, (_node, binding, enabled, tooltip) in screen.active_bindings.items():
            if not binding.show or binding.action in seen:
                continue  # one entry per action, as Textual's footer
            seen.add(binding.action)
            entry = (binding.key, app.get_key_display(binding), binding.description, enabled,
                     tooltip or binding.tooltip or binding.description)
            if key == app.COMMAND_PALETTE_BINDING and app.ENABLE_COMMAND_PALETTE:
                palette_key = entry  # drawn at the right end
            else:
                keys.append(entry)
        if palette_key is not None:
            keys.append(palette_key)
        return tuple(keys)

    def render(self) -> Text:
        key_style = self.get_component_rich_style("keybar--key")
        description_style = self.get_component_rich_style("keybar--description")
        hover = self.get_component_rich_style("keybar--hover")
        dim = Style(dim=True)
        text = Text(no_wrap=True, overflow="crop", end="")
        spans = []
        palette = self.app.ENABLE_COMMAND_PALETTE and self.keys and \
            self.keys[-1][0] == self.app.COMMAND_PALETTE_BINDING
        body = self.keys[:-1] if palette else self.keys
        for index, (_key, shown, description, enabled, _tip) in enumerate(body):
            start = text.cell_len
            text.append(f" {shown} ", key_style + dim if not enabled else key_style)
            text.append(f"{description} " if description else "", description_style + dim if not enabled
                        else description_style)
            spans.append((start, text.cell_len, index))
        spans = [span for span in spans if span[0] < self.size.width]  # the rest is cut off
        if palette:
            _key, shown, description, enabled, _tip = self.keys[-1]
            tail = Text.assemble(("▏", description_style), (f" {shown} ", key_style),
                                 (f"{description} ", description_style))
            room = self.size.width - tail.cell_len
            if text.cell_len > room:
                text.truncate(max(0, room), overflow="crop")
                spans = [span for span in spans if span[1] <= room]
            start = max(room, text.cell_len)
            text.pad_right(start - text.cell_len)
            text.append_text(tail)
            spans.append((start, text.cell_len, len(self.keys) - 1))
        self._spans = spans
        for start, end, index in spans:
            if self.keys[index][0] == self._hover:
                text.stylize(hover, start, end)
        return text

    def key_at(self, x: int) -> tuple[str, str, str, bool, str] | None:
        for start, end, index in self._spans:
            if start <= x < end:
                return self.keys[index]
        return None

    def region_of(self, key: str):
        """Where a key is drawn (for tests and clicks), or None."""
        for start, end, index in self._spans:
            if self.keys[index][0] == key:
                return Region(self.region.x + start, self.region.y, end - start, 1)
        return None

    def on_click(self, event: Click) -> None:
        entry = self.key_at(event.x)
        if entry is None:
            return
        if entry[3]:
            self.app.simulate_key(entry[0])
        else:
            self.app.bell()

    def on_mouse_move(self, event) -> None:
        entry = self.key_at(event.x)
        tooltip = entry[4] if entry else None
        if tooltip != self.tooltip:
            self.tooltip = tooltip
        hover = entry[0] if entry else None
        if hover != self._hover:
            self._hover = hover
            self.refresh()

    def on_leave(self, event) -> None:
        if self._hover is not None:
            self._hover = None
            self.refresh()