"""Modal screens: confirm, help (every binding), end-of-job summary."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from flextui.diagnosis import outcome_text, verdict
from flextui.model import JobModel
from flextui.ui.format import fmt_duration
from flextui.ui.theming import Palette


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question")
            yield Static("[b]y[/b] / Enter: yes    [b]n[/b] / Esc: no", id="answers")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,f1,q", "close", "Close")]

    def __init__(self, sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
        super().__init__()
        self.sections = sections

    def compose(self) -> ComposeResult:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for title, rows in self.sections:
            table.add_row(Text(title, style="bold underline"), "")
            for keys, description in rows:
                table.add_row(keys, description)
            table.add_row("", "")
        with VerticalScroll(id="dialog"):
            yield Static("flextui keys  [dim](Esc closes)[/dim]", id="title")
            yield Static(table, id="help-table")

    def action_close(self) -> None:
        self.dismiss(None)

    async def action_app_action(self, name: str) -> None:
        self.dismiss(None)
        await self.app.run_action(name)


def summary_renderable(model: JobModel, palette: Palette, now: float) -> Table:
    """Every rank's outcome, coloured by status, first failure marked."""
    table = Table(expand=False, box=None, padding=(0, 1), header_style=palette.header)
    for name, justify in (("", "left"), ("RANK", "right"), ("HOST", "left"), ("GPU", "right"),
                          ("PID", "right"), ("OUTCOME", "left"), ("DURATION", "right"),
                          ("LINES", "right")):
        table.add_column(name, justify=justify, no_wrap=True)
    first = model.first_failure
    end = model.ended_at or now
    for r in model.ranks:
        style = palette.status[r.status.value]
        table.add_row(
            Text("▶", palette.first_failure) if r is first else "",
            str(r.rank), r.info.host, str(r.info.gpu), str(r.pid or "-"),
            Text(outcome_text(r), style), fmt_duration(r.runtime(end)), str(r.line_count),
        )
    return table


def verdict_text(model: JobModel, palette: Palette, now: float, launch_error: str | None) -> Text:
    v = verdict(model, now, launch_error)
    text = Text()
    text.append(f"job {v.state}", palette.status[v.key] + palette.bold)
    if v.exit_code is not None:
        text.append(f" (exit code {v.exit_code})", palette.status[v.key])
    if v.reason:
        style = {"first_failure": palette.first_failure, "error": palette.status["failed"]}.get(v.kind)
        text.append(f"; {v.reason}", style)
    return text


class SummaryScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,s,enter", "close", "Close"),
        Binding("x", "app_action('first_failure')", "First failure"),
        Binding("q", "app_action('quit')", "Quit"),
    ]

    def __init__(self, model: JobModel, palette: Palette, now: float,
                 launch_error: str | None, run_dir: str | None) -> None:
        super().__init__()
        self.model, self.palette, self.now = model, palette, now
        self.launch_error, self.run_dir = launch_error, run_dir

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Static(verdict_text(self.model, self.palette, self.now, self.launch_error),
                         id="verdict")
            yield Static(summary_renderable(self.model, self.palette, self.now), id="summary-table")
            hint = "Esc: back to the logs   x: first failure   q: quit"
            if self.run_dir:
                hint += f"\nfull logs and summary.json: {self.run_dir}"
            yield Static(Text(hint, style=self.palette.muted), id="hint")

    def action_close(self) -> None:
        self.dismiss(None)

    async def action_app_action(self, name: str) -> None:
        self.dismiss(None)
        await self.app.run_action(name)
