"""The Textual console: `await run_app(job)` runs the job and shows it until the user quits.

Layout, top to bottom: job bar, rank table, tabs (all ranks + one per rank), one status
line, ONE log view (Line API, see logview.py) and the footer. Everything is drawn from
the Textual-free JobModel on a 10 Hz timer that compares counters, so the cost of the
UI does not grow with the log rate, and hidden tabs cost nothing.

The app never leaves the job behind: quitting a running job stops it (SIGTERM, SIGKILL
after the grace) and waits; if the app itself fails, run_app kills the job and waits.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from functools import partial

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.widgets import Footer, Input, Tab, Tabs

from flextui.job import JobProtocol, LaunchError
from flextui.ui.driver import ConsoleDriver
from flextui.diagnosis import ERROR_RE, RateMeter, status_text
from flextui.ui.format import fmt_duration
from flextui.ui.logview import CombinedSource, LogView, RankSource
from flextui.ui.screens import ConfirmScreen, HelpScreen, SummaryScreen
from flextui.ui.theming import STATUS_VARIABLES, Palette, ThemeError, load_themes, resolve_theme
from flextui.ui.widgets import Columns, JobBar, RankHeader, RankTable, job_bar_lines

TICK = 0.1  # seconds between UI refreshes from the model
DIGIT_TIMEOUT = 0.8  # typing "1" then "2" within this opens rank 12


class StatusLine(JobBar):
    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; padding: 0 1; }
    """


class FlexCommands(Provider):
    """flextui's actions in the command palette (Ctrl+P)."""

    def _commands(self) -> list[tuple[str, Callable, str]]:
        app: FlexApp = self.app  # type: ignore[assignment]
        commands = [
            ("All ranks", app.action_show_all, "the combined log of every rank"),
            ("Jump to first failure", app.action_first_failure, "its tab, at its traceback"),
            ("Abort job (Ctrl+C)", app.action_abort, "SIGTERM every rank; again: SIGKILL"),
            ("Kill job now", app.action_kill_job, "SIGKILL every rank at once"),
            ("Stop selected rank", app.action_stop_rank, "SIGTERM the rank under the table cursor"),
            ("Stop selected rank's node", app.action_stop_node, "SIGTERM every rank on its node"),
            ("Job summary", app.action_summary, "every rank's outcome"),
            ("Cycle theme", app.action_cycle_theme, "next flextui theme"),
            ("Toggle wrap", app.action_wrap, "wrap long log lines"),
            ("Follow log", app.action_follow, "scroll with new lines"),
            ("Search log", app.action_search, "/ then n / N"),
            ("Filter log", app.action_filter, "show only matching lines"),
            ("Keys", app.action_help, "every key binding"),
        ]
        for rank in app.job.model.ranks:
            commands.append((f"Open rank {rank.rank} ({rank.info.host})",
                             partial(app.open_rank, rank.rank), status_text(rank)))
        return commands

    async def discover(self) -> Hits:
        for name, callback, help_text in self._commands()[:13]:
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


class FlexApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "flextui"
    COMMANDS = App.COMMANDS | {FlexCommands}

    BINDINGS = [
        Binding("ctrl+c", "abort", "Abort job", priority=True,
                tooltip="SIGTERM every rank, SIGKILL after the grace; again: SIGKILL now"),
        Binding("q", "quit", "Quit", tooltip="Quit (asks first, then stops the job, if it runs)"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("question_mark,f1", "help", "Help"),
        Binding("tab", "next_tab", "Next tab", show=False, priority=True),
        Binding("shift+tab", "prev_tab", "Previous tab", show=False, priority=True),
        Binding("right_square_bracket", "next_tab", "Next tab", show=False),
        Binding("left_square_bracket", "prev_tab", "Previous tab", show=False),
        Binding("a", "show_all", "All ranks", show=False),
        *[Binding(str(d), f"digit({d})", f"Rank {d}…", show=False) for d in range(10)],
        Binding("x", "first_failure", "First failure"),
        Binding("slash", "search", "Search"),
        Binding("n", "search_next", "Next match", show=False),
        Binding("N", "search_prev", "Previous match", show=False),
        Binding("ampersand", "filter", "Filter"),
        Binding("w", "wrap", "Wrap", show=False),
        Binding("f", "follow", "Follow"),
        Binding("e", "next_error", "Next error", show=False),
        Binding("t", "toggle_focus", "Table/log focus", show=False),
        Binding("z", "zoom", "Hide/show table", show=False),
        Binding("k", "stop_rank", "Stop rank"),
        Binding("K", "stop_node", "Stop node", show=False),
        Binding("exclamation_mark", "kill_job", "Kill job now", show=False),
        Binding("s", "summary", "Summary", show=False),
        Binding("T", "cycle_theme", "Theme"),
    ]

    def __init__(self, job: JobProtocol, theme: str | None = None, *, clock: Callable[[], float] = time.time,
                 run_job: bool = True, theme_dirs=None) -> None:
        self.themes, theme_errors = load_themes(theme_dirs)
        theme_name = resolve_theme(theme, self.themes)  # ThemeError before the screen is taken
        super().__init__(driver_class=ConsoleDriver)
        self.animation_level = "none"  # a log console: instant scrolling, no tweening
        for t in self.themes.values():
            self.register_theme(t)
        self.theme = theme_name
        self.theme_errors = theme_errors
        self.job = job
        self.model = job.model
        self.clock = clock
        self.run_job = run_job
        self.job_task: asyncio.Task | None = None
        self.launch_error: str | None = None
        self.job_exception: BaseException | None = None
        self.quitting = False
        self.job_done = False
        self.palette = Palette(STATUS_VARIABLES)
        self.rates = RateMeter(self.model)
        window = max(256, 4 * len(self.model.ranks))  # how far back "all ranks" merges
        self.sources = {"all": CombinedSource(self.model, window=window)}
        for rank in self.model.ranks:
            self.sources[f"r{rank.rank}"] = RankSource(rank)
        self.tab_ids = list(self.sources)
        self.current_tab = "all"
        self.columns = Columns(self.model)
        self._digits = ""
        self._digit_at = 0.0
        self._tab_signature: tuple = ()
        self._table_signature: tuple = ()
        self._announced_failure = False
        self._summary_shown = False
        self._prompt_mode: str | None = None
        self._signals: list[int] = []

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        self.job_bar = JobBar(id="jobbar")
        self.rank_header = RankHeader(self.columns, id="rank-header")
        self.table = RankTable(self.model, self.columns, id="ranks")
        self.tabs = Tabs(*[Tab(self._tab_label(key), id=f"tab-{key}") for key in self.tab_ids],
                         id="tabs")
        self.status_line = StatusLine(id="logstatus")
        self.log_view = LogView(id="log")
        self.prompt = Input(id="prompt")
        yield self.job_bar
        yield self.rank_header
        yield self.table
        yield self.tabs
        yield self.status_line
        yield self.log_view
        yield self.prompt
        yield Footer()

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        self._apply_palette()
        self.log_view.show(self.sources["all"])
        self.table.focus()
        for error in self.theme_errors:
            self.notify(error, title="theme file skipped", severity="warning")
        if self.run_job:
            self.job_task = asyncio.get_running_loop().create_task(self._run_job())
        self.set_interval(TICK, self._tick)
        loop = asyncio.get_running_loop()
        # The terminal's Ctrl+C is a key here; these come from `kill` or a closed terminal.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                self._signals.append(sig)
            except (ValueError, RuntimeError, NotImplementedError):
                pass  # not the main thread
        self._tick()

    def on_unmount(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals:
            loop.remove_signal_handler(sig)
        self._signals.clear()

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(STATUS_VARIABLES)

    def _theme_changed(self, _theme) -> None:
        self._apply_palette()

    def _apply_palette(self) -> None:
        self.palette = Palette(self.get_css_variables())
        for widget in (self.rank_header, self.table, self.log_view):
            widget.palette = self.palette
            widget.refresh()
        self._tab_signature = ()
        self._table_signature = ()
        self._tick()

    # -- the job ------------------------------------------------------------------------

    async def _run_job(self) -> None:
        try:
            await self.job.run()
        except LaunchError as exc:
            self.launch_error = str(exc)
            self.job_exception = exc
            self.notify(str(exc), title="launch failed", severity="error", timeout=30)
        except Exception as exc:  # a bug: show it, stop, and let run_app re-raise it
            self.job_exception = exc
            self.launch_error = f"{type(exc).__name__}: {exc}"
            self.notify(self.launch_error, title="console error", severity="error", timeout=30)
        finally:
            self.job_done = True
            if self.is_running:
                self.call_later(self._job_finished)

    def _job_finished(self) -> None:
        self._tick()
        if self.quitting:
            self.exit(self.model.exit_code)
        elif not self._summary_shown:
            self._summary_shown = True
            self.action_summary()

    def _on_signal(self, sig: int) -> None:
        """SIGTERM / SIGHUP / SIGINT to the console: stop the job, quit when it has stopped."""
        if sig == signal.SIGHUP and isinstance(self._driver, ConsoleDriver):
            self._driver.check_terminal()  # a closed terminal: draw nothing more
        if self.job_done:
            self.exit(self.model.exit_code)
        elif self.quitting:  # a second signal: no more grace
            self.job.kill()
        else:
            self.quitting = True
            self.job.abort(sig)
            self._tick()

    def on_console_driver_terminal_lost(self, _message: ConsoleDriver.TerminalLost) -> None:
        """The terminal is gone (also without a SIGHUP): as SIGHUP, stop the job and quit."""
        if self.job_done:
            self.exit(self.model.exit_code)
        elif not self.quitting:
            self._on_signal(signal.SIGHUP)

    # -- the refresh timer ------------------------------------------------------------

    def _tick(self) -> None:
        now = self.clock()
        model = self.model
        self.rates.sample(now)
        self.table.rates = self.rates.rates
        self.table.now = now
        # Redraw the table only when something in it changed (idle jobs cost ~nothing).
        table_sig = (self.rates.rates, model.first_failure, [
            (r.status, r.line_count, r.live, fmt_duration(r.runtime(now)) if r.started_at else "")
            for r in model.ranks])
        if table_sig != self._table_signature:
            self._table_signature = table_sig
            self.table.refresh()
        run_dir = self.job.run_path
        self.job_bar.set(job_bar_lines(model, self.palette, now, run_dir, self.rates.total,
                                       self.quitting, self.launch_error))
        self.log_view.sync()
        signature = (tuple(r.status for r in model.ranks), model.first_failure)
        if signature != self._tab_signature:
            self._tab_signature = signature
            for key in self.tab_ids:
                tab = self.tabs.get_tab(f"tab-{key}")
                if tab is not None:
                    tab.label = self._tab_label(key)
        if model.first_failure is not None and not self._announced_failure:
            self._announced_failure = True
            first = model.first_failure
            self.notify(f"rank {first.rank} on {first.info.host}: {status_text(first)}. "
                        "Press x to see it.", title="first failure", severity="error", timeout=8)
        self._update_status_line()

    def _tab_label(self, key: str) -> Text:
        if key == "all":
            return Text("all ranks")
        rank = self.model.ranks[int(key[1:])]
        label = Text(key[1:], style=self.palette.status[rank.status.value])
        if self.model.first_failure is rank:
            label = Text("▶" + key[1:], style=self.palette.first_failure)
        return label

    def _update_status_line(self) -> None:
        view, palette = self.log_view, self.palette
        source = view.source
        text = Text()
        if source is None:
            self.status_line.set((text, Text()))
            return
        if isinstance(source, RankSource):
            rank = source.state
            text.append(f"rank {rank.rank}", palette.bold)
            text.append(f" {rank.info.host} gpu {rank.info.gpu} ")
            if rank.cpus:  # --bind_cores_to_rank
                text.append(f"cpus {rank.cpus} ")
            text.append(status_text(rank), palette.status[rank.status.value])
            text.append(f"  {rank.line_count:,} lines")
            kept = len(rank.tail)
            if kept < rank.line_count:
                text.append(f" (last {kept:,} here)", palette.muted)
        else:
            text.append("all ranks", palette.bold)
            text.append(f"  {source.total:,} lines", palette.muted)
        text.append("  ")
        if view.follow:
            text.append("FOLLOWING", palette.success)
        else:
            text.append("PAUSED", palette.warning)
            text.append(" (f: follow)", palette.muted)
        if view.wrap:
            text.append("  wrap", palette.accent)
        if view.filter is not None:
            shown = view.layout_.count
            text.append(f"  filter “{view.filter.pattern}” ({shown:,} lines)", palette.accent)
        if view.search is not None:
            text.append(f"  search “{view.search.pattern}” (n/N)", palette.accent)
        self.status_line.set((text, Text()))

    # -- tabs -----------------------------------------------------------------------------

    def open_tab(self, key: str) -> None:
        if key not in self.sources:
            return
        self._close_overlays()
        if key != self.current_tab or self.log_view.source is not self.sources[key]:
            self.current_tab = key
            self.log_view.show(self.sources[key])
            self.tabs.active = f"tab-{key}"
            if key != "all":
                self.table.move_cursor(int(key[1:]))
        self._update_status_line()

    def open_rank(self, rank: int) -> None:
        self.open_tab(f"r{rank}")

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        # Only a tab the user clicked: a message from an earlier programmatic switch
        # arrives late and must not switch back.
        if event.tab is not None and event.tab.id and event.tab.id == self.tabs.active:
            key = event.tab.id.removeprefix("tab-")
            if key != self.current_tab:
                self.open_tab(key)

    def on_rank_table_selected(self, event: RankTable.Selected) -> None:
        self.open_rank(event.rank)
        self.log_view.focus()

    def on_log_view_changed(self, _event: LogView.Changed) -> None:
        self._update_status_line()

    def action_next_tab(self) -> None:
        self._step_tab(1)

    def action_prev_tab(self) -> None:
        self._step_tab(-1)

    def _step_tab(self, step: int) -> None:
        index = self.tab_ids.index(self.current_tab)
        self.open_tab(self.tab_ids[(index + step) % len(self.tab_ids)])

    def action_show_all(self) -> None:
        self.open_tab("all")

    def action_digit(self, digit: int) -> None:
        now = time.monotonic()
        if now - self._digit_at > DIGIT_TIMEOUT:
            self._digits = ""
        self._digit_at = now
        world = len(self.model.ranks)
        self._digits += str(digit)
        if int(self._digits) >= world:
            self._digits = str(digit)
        if int(self._digits) < world:
            self.open_rank(int(self._digits))

    def action_first_failure(self) -> None:
        first = self.model.first_failure
        if first is None:
            self.notify("No rank has failed.", timeout=3)
            return
        self.clear_notifications()  # a toast must not cover the traceback
        self.open_rank(first.rank)
        self.log_view.focus()
        if not self.log_view.jump_to_traceback():
            self.log_view.set_follow(True)

    # -- log view -------------------------------------------------------------------------

    def action_search(self) -> None:
        self._open_prompt("search", "search: text, Enter; then n / N (Esc: cancel)",
                          self.log_view.search.pattern if self.log_view.search else "")

    def action_filter(self) -> None:
        self._open_prompt("filter", "filter: show only lines with this text (empty: all)",
                          self.log_view.filter.pattern if self.log_view.filter else "")

    def _open_prompt(self, mode: str, placeholder: str, value: str) -> None:
        self._close_overlays()
        self._prompt_mode = mode
        self._prompt_return = self.focused
        self.prompt.placeholder = placeholder
        self.prompt.value = value
        self.prompt.add_class("-visible")
        self.prompt.focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        mode, value = self._prompt_mode, event.value
        self._hide_prompt()
        if mode == "search":
            self.log_view.set_search(value or None)
            if value:
                self._search_step(True)
        elif mode == "filter":
            self.log_view.set_filter(value or None)

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self._prompt_mode is not None:
            self._hide_prompt()
            event.stop()

    def _hide_prompt(self) -> None:
        self._prompt_mode = None
        self.prompt.remove_class("-visible")
        target = getattr(self, "_prompt_return", None)
        (target if target is not None and target.is_attached else self.log_view).focus()

    def action_search_next(self) -> None:
        self._search_step(True)

    def action_search_prev(self) -> None:
        self._search_step(False)

    def _search_step(self, forward: bool) -> None:
        view = self.log_view
        if view.search is None:
            self.action_search()
            return
        index = view.find(view.search, forward=forward)
        if index is None:
            self.notify(f"“{view.search.pattern}” not found", timeout=3)
        else:
            view.jump_to(index)

    def action_next_error(self) -> None:
        """The first error/traceback of the tab; pressed again, the next one."""
        view = self.log_view
        start = view.cursor if view.cursor is not None else view.layout_.first - 1
        index = view.find(lambda t: bool(ERROR_RE.search(t)), forward=True, start=start)
        if index is None:
            self.notify("No error or traceback in this tab.", timeout=3)
            return
        view.jump_to(index)

    def action_wrap(self) -> None:
        self.log_view.set_wrap(not self.log_view.wrap)

    def action_follow(self) -> None:
        self.log_view.set_follow(True)

    def action_toggle_focus(self) -> None:
        (self.table if self.focused is self.log_view else self.log_view).focus()

    def action_zoom(self) -> None:
        hidden = self.table.display
        self.table.display = not hidden
        self.rank_header.display = not hidden
        if hidden:
            self.log_view.focus()

    # -- control --------------------------------------------------------------------------

    def action_abort(self) -> None:
        if self.job_done:
            self.exit(self.model.exit_code)
            return
        first_press = self.model.stop_started_at is None
        self.job.abort()
        if first_press:
            self.notify(f"SIGTERM to every rank; SIGKILL in {self.job.grace:g}s. Ctrl+C again: kill now.",
                        title="aborting", timeout=5)
        else:
            self.notify("SIGKILL to every rank.", title="killing", severity="warning", timeout=5)
        self._tick()

    async def action_quit(self) -> None:
        if self.job_done:
            self.exit(self.model.exit_code)
            return
        if self.quitting:
            self.job.kill()
            self.notify("SIGKILL to every rank; quitting when they are gone.", timeout=5)
            return
        if isinstance(self.screen, ConfirmScreen):
            return

        def answer(yes: bool | None) -> None:
            if yes and not self.job_done:
                self.quitting = True
                self.job.stop("quit by user", by_user=True)
                self.notify("Stopping the job; quitting when every rank is gone (q: kill now).",
                            timeout=5)
                self._tick()
            elif yes:
                self.exit(self.model.exit_code)

        self.push_screen(ConfirmScreen("The job is still running.\n"
                                       "Stop every rank and quit?"), answer)

    def _selected_rank(self):
        return self.model.ranks[self.table.cursor]

    def action_stop_rank(self) -> None:
        rank = self._selected_rank()
        if rank.status.finished or self.job_done:
            self.notify(f"Rank {rank.rank} is not running ({status_text(rank)}).", timeout=3)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.job.stop_rank(rank.rank)
                self.notify(f"SIGTERM to rank {rank.rank} (pid {rank.pid}).", timeout=4)

        self.push_screen(ConfirmScreen(
            f"Stop rank {rank.rank} on {rank.info.host} (pid {rank.pid})?\n"
            "SIGTERM to its process tree, SIGKILL after the grace."), answer)

    def action_stop_node(self) -> None:
        rank = self._selected_rank()
        node = self.model.nodes[rank.info.node_rank]
        if self.job_done or all(self.model.ranks[r].status.finished for r in node.ranks):
            self.notify(f"Nothing runs on node {node.host}.", timeout=3)
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.job.stop_node(node.node_rank)
                self.notify(f"SIGTERM to ranks {node.ranks.start}-{node.ranks.stop - 1} "
                            f"on {node.host}.", timeout=4)

        self.push_screen(ConfirmScreen(
            f"Stop node {node.node_rank} ({node.host}): ranks "
            f"{node.ranks.start}-{node.ranks.stop - 1}?"), answer)

    def action_kill_job(self) -> None:
        if self.job_done:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.job.kill()
                self.notify("SIGKILL to every rank.", title="killing", severity="warning")

        self.push_screen(ConfirmScreen("Kill every rank now (SIGKILL, no grace)?"), answer)

    # -- screens and themes ---------------------------------------------------------------

    def _close_overlays(self) -> None:
        while isinstance(self.screen, (SummaryScreen, HelpScreen)):
            self.pop_screen()

    def action_summary(self) -> None:
        if isinstance(self.screen, SummaryScreen):
            self.pop_screen()
            return
        self._close_overlays()
        run_dir = self.job.run_path
        self.push_screen(SummaryScreen(self.model, self.palette, self.clock(),
                                       self.launch_error, run_dir))

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self._close_overlays()
        self.push_screen(HelpScreen(self.help_sections()))

    def help_sections(self) -> list[tuple[str, list[tuple[str, str]]]]:
        def rows(bindings) -> list[tuple[str, str]]:
            out, seen = [], set()
            for b in bindings:
                if b.action in seen or b.action.startswith("digit("):
                    continue
                seen.add(b.action)
                keys = [k for other in bindings if other.action == b.action
                        for k in other.key.split(",")]
                out.append((" ".join(_key_display(k) for k in keys), b.tooltip or b.description))
            return out

        app_rows = rows(self.BINDINGS)
        app_rows.insert(8, ("0-9", "open rank N (type 1 2 quickly for rank 12)"))
        return [
            ("Console", app_rows),
            ("Rank table (when focused)", rows(RankTable.BINDINGS)),
            ("Log view (when focused)", rows(LogView.BINDINGS) + [
                ("↑ ↓ PgUp PgDn", "scroll (scrolling up pauses follow)"),
                ("mouse wheel", "scroll"),
            ]),
            ("Prompts", [("Enter", "apply"), ("Esc", "cancel")]),
            ("Other", [("ctrl+p", "command palette (also: themes, open rank N)")]),
        ]

    def action_cycle_theme(self) -> None:
        names = sorted(self.themes)
        index = names.index(self.theme) + 1 if self.theme in names else 0
        self.theme = names[index % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)


_KEY_NAMES = {
    "question_mark": "?", "slash": "/", "ampersand": "&", "exclamation_mark": "!",
    "right_square_bracket": "]", "left_square_bracket": "[",
}


def _key_display(key: str) -> str:
    return _KEY_NAMES.get(key, key)


async def run_app(job: JobProtocol, theme: str | None = None) -> int:
    """Run the job in the Textual console; the job's exit code once the user quits.

    A LaunchError from the job (after the screen is up) is shown in the app and raised
    again after it closes, so the CLI prints it and exits non-zero.
    """
    try:
        app = FlexApp(job, theme=theme)
    except ThemeError as exc:
        print(f"flextui: error: {exc}", file=sys.stderr)
        return 2
    try:
        await app.run_async()
    finally:
        await stop_job_of(app)
    if app.job_exception is not None:
        raise app.job_exception
    return job.model.exit_code


async def stop_job_of(app: FlexApp, timeout: float | None = None) -> None:
    """Never leave the job running: if the app ended first (a crash), kill it and wait."""
    task = app.job_task
    if task is None:
        return
    if not task.done():
        app.job.kill()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout or app.job.grace + 15)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - reported by the task
            pass
    elif not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn

