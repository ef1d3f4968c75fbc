"""Modal screens: confirm, help (every binding), end-of-job summary."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Static

from flextui.diagnosis import collateral_text, gpu_telemetry_note, outcome_groups, verdict
from flextui.model import JobModel
from flextui.modes.elastic import ElasticJobModel
from flextui.ui.collapse import format_ranks
from flextui.ui.format import fmt_duration, status_key
from flextui.ui.theming import Palette


class ConfirmScreen(ModalScreen[bool]):
    """A question with two real buttons: click them, or Enter/←/→ on the focused one,
    or y / n / Esc from anywhere in the dialog."""

    AUTO_FOCUS = "#yes"
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
        Binding("left", "app.focus_previous", "Previous button", show=False),
        Binding("right", "app.focus_next", "Next button", show=False),
    ]

    def __init__(self, question: str, yes: str = "Yes", no: str = "Cancel") -> None:
        super().__init__()
        self.question, self.yes, self.no = question, yes, no

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question")
            with Horizontal(id="answers"):
                yield Button(self.yes, id="yes", variant="error")
                yield Button(self.no, id="no")
            yield Static("[b]y[/b] / Enter: yes    [b]n[/b] / Esc: no", id="keys")

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        self.dismiss(event.button.id == "yes")

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


def summary_renderable(model: JobModel, palette: Palette, now: float,
                       stopped_by_user: set[int] = frozenset()) -> Table:
    """Every rank's outcome, identical outcomes grouped ("0-63 stopped by flextui (SIGTERM)")."""
    table = Table(expand=False, box=None, padding=(0, 1), header_style=palette.header)
    for name, justify, wrap in (("", "left", False), ("RANKS", "right", True), ("OUTCOME", "left", True),
                                ("HOSTS", "left", True), ("DURATION", "right", False),
                                ("LINES", "right", False)):
        table.add_column(name, justify=justify, no_wrap=not wrap, overflow="fold")
    ranks = model.current_ranks if isinstance(model, ElasticJobModel) else model.ranks
    for group in outcome_groups(model, ranks, now, stopped_by_user):
        lo, hi = fmt_duration(group.shortest), fmt_duration(group.longest)
        hosts = group.hosts
        table.add_row(
            Text("▶", palette.first_failure) if group.first_failure else "",
            format_ranks([model.world.global_rank(r) for r in group.ranks]),  # --no_ssh: the job's RANK
            Text(group.outcome, palette.status[status_key(group.rank)]),
            ", ".join(hosts) if len(hosts) <= 3 else f"{len(hosts)} hosts",
            lo if lo == hi else f"{lo}–{hi}", f"{group.lines:,}",
        )
    return table


def verdict_text(model: JobModel, palette: Palette, now: float, launch_error: str | None,
                 stop_note: str | None = None) -> Text:
    """The verdict; `stop_note` says why when the model has no reason (the user stopped
    ranks or nodes one by one, so the job ended "aborted")."""
    v = verdict(model, now, launch_error)
    text = Text()
    text.append(f"job {v.state}", palette.status[v.key] + palette.bold)
    if v.exit_code is not None:
        text.append(f" (exit code {v.exit_code})", palette.status[v.key])
    reason = v.reason or stop_note
    if reason:
        style = {"first_failure": palette.first_failure, "error": palette.status["failed"]}.get(v.kind)
        text.append(f"; {reason}", style)
    if v.error_line:
        text.append(f": {v.error_line}", palette.error)
    return text


class SummaryScreen(ModalScreen[None]):
    BINDINGS = [
        Binding("escape,s,enter", "close", "Close"),
        Binding("x", "app_action('first_failure')", "First failure"),
        Binding("q", "app_action('quit')", "Quit"),
    ]

    def __init__(self, model: JobModel, palette: Palette, now: float,
                 launch_error: str | None, run_dir: str | None, reason: str | None = None,
                 stopped_by_user: set[int] = frozenset()) -> None:
        super().__init__()
        self.model, self.palette, self.now = model, palette, now
        self.launch_error, self.run_dir = launch_error, run_dir
        self.reason, self.stopped_by_user = reason, stopped_by_user

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="dialog"):
            yield Static(verdict_text(self.model, self.palette, self.now, self.launch_error,
                                      self.reason), id="verdict")
            yield Static(summary_renderable(self.model, self.palette, self.now,
                                            self.stopped_by_user), id="summary-table")
            notes = [n for n in (collateral_text(self.model), gpu_telemetry_note(self.model)) if n]
            if notes:
                static = Static(Text("\n".join(notes), style=self.palette.muted), id="notes")
                static.styles.width = "100%"  # wraps inside the dialog ("#dialog Static" is auto)
                yield static
            hint = "Esc: back to the logs"
            if self.model.first_failure is not None:
                hint += "   x: first failure"
            hint += "   q: quit"
            if self.run_dir:
                hint += f"\nfull logs and summary.json: {self.run_dir}"
            yield Static(Text(hint, style=self.palette.muted), id="hint")

    def action_close(self) -> None:
        self.dismiss(None)

    async def action_app_action(self, name: str) -> None:
        self.dismiss(None)
        await self.app.run_action(name)
