"""The rank table (a Line-API view drawn straight from the model) and the job bar."""

from __future__ import annotations

from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.events import Click
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget

from flextui.diagnosis import elastic_bar_text, status_text, verdict
from flextui.model import JobModel, RankStatus
from flextui.modes.elastic import ElasticJobModel
from flextui.ui.format import fmt_duration, fmt_rate
from flextui.ui.logview import plain
from flextui.ui.theming import Palette


class Columns:
    """Column widths shared by the header and the rows."""

    def __init__(self, model: JobModel) -> None:
        ranks = model.ranks
        self.rank = max(4, len(str(len(ranks) - 1)))
        self.host = min(24, max(4, *(len(r.info.host) for r in ranks)))
        self.local = 5
        self.gpu = max(3, *(len(str(r.info.gpu)) for r in ranks))
        self.pid = 7
        self.status = 15
        self.runtime = 8
        self.rate = 7

    def cells(self, mark: str, rank: str, host: str, local: str, gpu: str, pid: str,
              status: str, runtime: str, rate: str) -> list[str]:
        host = host if len(host) <= self.host else host[: self.host - 1] + "…"
        return [
            mark, rank.rjust(self.rank), host.ljust(self.host), local.rjust(self.local),
            gpu.rjust(self.gpu), pid.rjust(self.pid), status.ljust(self.status)[: self.status],
            runtime.rjust(self.runtime), rate.rjust(self.rate),
        ]


HEADER = ("", "RANK", "HOST", "LOCAL", "GPU", "PID", "STATUS", "RUNTIME", "LINES/S")


class RankHeader(Widget):
    DEFAULT_CSS = """
    RankHeader { height: 1; background: $panel; }
    """

    def __init__(self, columns: Columns, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.columns = columns
        self.palette: Palette | None = None

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        style = base + self.palette.header if self.palette else base
        text = " ".join(self.columns.cells(*HEADER)) + " LAST LINE"
        return Strip([Segment(text, style)]).crop_extend(0, self.size.width, base)


class RankTable(ScrollView, can_focus=True):
    """One row per rank, re-drawn from the model on every tick (only visible rows)."""

    BINDINGS = [
        Binding("up", "cursor(-1)", "Previous rank", show=False),
        Binding("down", "cursor(1)", "Next rank", show=False),
        Binding("pageup", "cursor(-10)", "10 ranks up", show=False),
        Binding("pagedown", "cursor(10)", "10 ranks down", show=False),
        Binding("home", "cursor(-1000000)", "First rank", show=False),
        Binding("end", "cursor(1000000)", "Last rank", show=False),
        Binding("enter", "select", "Open the rank's tab (or click the row)", show=False),
    ]

    DEFAULT_CSS = """
    RankTable { background: $surface; overflow-x: hidden; }
    """

    class Selected(Message):
        def __init__(self, rank: int) -> None:
            super().__init__()
            self.rank = rank

    def __init__(self, model: JobModel, columns: Columns, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.model = model
        self.columns = columns
        self.palette: Palette | None = None
        self.rates: list[float] = [0.0] * len(model.ranks)
        self.now = 0.0
        self.cursor = 0
        self.virtual_size = Size(0, len(model.ranks))

    def on_mount(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.model.ranks))

    def move_cursor(self, rank: int) -> None:
        rank = max(0, min(rank, len(self.model.ranks) - 1))
        self.cursor = rank
        height = self.scrollable_content_region.height or 1
        if rank < self.scroll_y:
            self.scroll_to(y=rank, animate=False, immediate=True)
        elif rank >= self.scroll_y + height:
            self.scroll_to(y=rank - height + 1, animate=False, immediate=True)
        self.refresh()

    def action_cursor(self, delta: int) -> None:
        self.move_cursor(self.cursor + delta)

    def action_select(self) -> None:
        self.post_message(self.Selected(self.cursor))

    def on_click(self, event: Click) -> None:
        rank = int(self.scroll_y) + event.y
        if 0 <= rank < len(self.model.ranks):
            self.move_cursor(rank)
            self.post_message(self.Selected(rank))

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def render_line(self, y: int) -> Strip:
        base = self.rich_style
        width = self.size.width
        index = int(self.scroll_y) + y
        palette = self.palette
        if palette is None or index >= len(self.model.ranks):
            return Strip.blank(width, base)
        model = self.model
        rank = model.ranks[index]
        info = rank.info
        first = model.first_failure is rank
        status_style = palette.status[rank.status.value]
        if index == self.cursor:
            row_style = base + (palette.row_cursor if self.has_focus else palette.row_cursor_blurred)
        else:
            row_style = base
        runtime = fmt_duration(rank.runtime(self.now)) if rank.started_at is not None else "-"
        rate = fmt_rate(self.rates[index]) if rank.status is RankStatus.RUNNING else "-"
        if info.node_rank < 0:  # --elastic: a planned slot outside the current world
            cells = self.columns.cells(" ", str(info.rank), "-", "-", "-", "-", "idle", "-", "-")
            status_style = palette.muted
        else:
            cells = self.columns.cells(
                "▶" if first else " ", str(info.rank), info.host, str(info.local_rank),
                str(info.gpu), str(rank.pid or "-"), status_text(rank), runtime, rate,
            )
        segments = [
            Segment(cells[0], row_style + palette.first_failure),
            Segment(" " + " ".join(cells[1:6]) + " ", row_style),
            Segment(cells[6], row_style + status_style + (palette.bold if first else Style())),
            Segment(" " + " ".join(cells[7:9]) + " ", row_style),
        ]
        used = sum(len(s.text) for s in segments)
        last = plain(rank.last_line)
        if width > used:
            segments.append(Segment(last[: width - used], row_style + palette.muted))
        return Strip(segments).crop_extend(0, width, row_style)


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
                  total_rate: float, quitting: bool, launch_error: str | None) -> tuple[Text, Text]:
    counts = model.counts()
    end = model.ended_at or now
    head = Text()
    head.append("flextui ", palette.accent)
    head.append(f"run {model.run_id}  ")
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
    ):
        n = counts[key]
        if n or key in ("running", "exited"):
            head.append(f"{glyph} {n} {word}  ", palette.status[key] if n else palette.muted)
    if total_rate >= 0.05:
        head.append(f"{fmt_rate(total_rate)} lines/s", palette.muted)

    second = Text()
    v = verdict(model, now, launch_error)
    second.append(v.state.upper() if model.state.finished else v.state, palette.status[v.key] + palette.bold)
    if v.exit_code is not None:
        second.append(f" (exit code {v.exit_code})", palette.status[v.key])
    if v.kind == "first_failure":
        second.append(f"  ▶ {v.reason}", palette.first_failure)
        second.append("  (x: show it)", palette.muted)
    elif v.kind == "error":
        second.append(f"  error: {v.reason}", palette.status["failed"])
    elif v.kind == "stop":
        second.append(f"  {v.reason}", palette.muted)
    if model.state.value == "stopping" and not quitting:
        second.append("  Ctrl+C again: kill now", palette.muted)
    elif quitting and not model.state.finished:
        second.append("  quitting when the job has stopped (q: kill now)", palette.warning)
    elif model.state.finished:
        second.append("  q: quit  s: summary", palette.muted)
    if run_dir:
        second.append(f"  logs: {run_dir}", palette.muted)
    return head, second
