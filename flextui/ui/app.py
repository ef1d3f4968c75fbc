"""The Textual console: `await run_app(job)` runs the job and shows it until the user quits.

Layout, top to bottom: job bar, rank table (sorted, filtered, grouped by node: see
rankview.py), the selected rank's panel with its buttons, the tab strip (all ranks + the
ranks in the table's order, as many as fit; `:` picks any rank or host), one status
line, ONE log view (Line API, see logview.py) and the footer. Everything is drawn from
the Textual-free JobModel on a 10 Hz timer that compares counters, so the cost of the
UI does not grow with the log rate, and hidden rank tabs cost nothing.

The app never leaves the job behind: quitting a running job stops it (SIGTERM, SIGKILL
after the grace) and waits; if the app itself fails, run_app kills the job and waits.
"""

from __future__ import annotations

import asyncio
import gc
import re
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
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from flextui.diagnosis import ERROR_RE, RateMeter, gpu_telemetry_note, status_text
from flextui.job import JobProtocol, LaunchError
from flextui.ui.driver import ConsoleDriver
from flextui.ui.format import fmt_duration, status_key
from flextui.ui.logview import ERROR_LINE, CombinedSource, LogView, Matcher, RankSource
from flextui.ui.rankview import SORTS, RankQuery, columns_for, has_gpu_telemetry, shown_rank
from flextui.ui.screens import ConfirmScreen, HelpScreen, SummaryScreen
from flextui.ui.stacksview import StacksScreen
from flextui.ui.theming import STATUS_VARIABLES, Palette, ThemeError, load_themes, resolve_theme
from flextui.ui.widgets import (
    JobBar, KeyBar, RankHeader, RankPanel, RankTable, TabStrip, job_bar_lines, node_detail, rank_detail,
)

TICK = 0.1  # seconds between UI refreshes from the model
DIGIT_TIMEOUT = 0.8  # typing "1" then "2" within this opens rank 12
BIG_JOB_TABLE_PERIOD = 0.5  # seconds between redraws of a >64-rank table's live columns


class StatusLine(JobBar):
    DEFAULT_CSS = """
    StatusLine { height: 1; background: $panel; padding: 0 1; }
    """


class FlexCommands(Provider):
    """flextui's actions in the command palette (Ctrl+P)."""

    def _commands(self) -> list[tuple[str, Callable, str]]:
        app: FlexApp = self.app  # type: ignore[assignment]
        return [
            ("Go to rank or host", app.action_pick, ": then a rank number or a host name"),
            ("All ranks", app.action_show_all, "the combined log of every rank"),
            ("Jump to first failure", app.action_first_failure, "its tab, at its traceback"),
            ("Stacks of every rank (d)", app.action_stacks, "py-spy on every node, ranks grouped by stack"),
            ("Abort job (Ctrl+C)", app.action_abort, "SIGTERM every rank; again: SIGKILL"),
            ("Kill job now", app.action_kill_job, "SIGKILL every rank at once"),
            ("Stop selected rank", app.action_stop_rank, "SIGTERM the rank under the table cursor"),
            ("Kill selected rank", app.action_kill_rank, "SIGKILL the rank under the table cursor"),
            ("Stop selected rank's node", app.action_stop_node, "SIGTERM every rank on its node"),
            ("Filter ranks", app.action_filter_ranks, "the table: failed, node12, 0-63, !stopped"),
            ("Problem ranks only", app.action_problems, "failed, killed and lost ranks (again: all)"),
            ("Sort ranks", app.action_sort, "by " + ", ".join(SORTS)),
            ("Group ranks by node", app.action_group, "one foldable row per node"),
            ("Show/hide ranks in all ranks", app.action_rank_mask, "e.g. 7, !7, node3"),
            ("Job summary", app.action_summary, "every rank's outcome"),
            ("Cycle theme", app.action_cycle_theme, "next flextui theme"),
            ("Toggle wrap", app.action_wrap, "wrap long log lines"),
            ("Follow log", app.action_follow, "scroll with new lines"),
            ("Search log", app.action_search, "/ then n / N"),
            ("Filter log", app.action_filter, "show only matching lines (regex, !negates)"),
            ("Keys", app.action_help, "every key binding"),
        ]

    async def discover(self) -> Hits:
        for name, callback, help_text in self._commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self._commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)


PICK_LIMIT = 40


def pick_hits(app: "FlexApp", query: str) -> list[tuple[float, str, Callable, str]]:
    """What the picker (`:`, and the command palette) offers for a query: (score, name,
    what choosing it does, help). A rank ("137", "rank 137"), a host ("node12"), or a
    table query ("failed", "0-7"); best first."""
    model = app.model
    query = query.strip()
    hits: list[tuple[float, str, Callable, str]] = []
    if not query:
        return hits
    words = query.split()
    if len(words) == 2 and words[0].lower() in ("rank", "r") and words[1].isdigit():
        query = words[1]  # "rank 6"

    def rank_hit(score: float, r) -> tuple[float, str, Callable, str]:
        return (score, f"rank {shown_rank(model, r.rank)}  {r.info.host}  gpu {r.info.gpu}",
                partial(app.go_to_rank, r.rank), status_text(r))

    if query.isdigit():  # the job's RANK (with --no_ssh, not this console's index)
        n = int(query) - shown_rank(model, 0)
        if 0 <= n < len(model.ranks):
            hits.append(rank_hit(1.0, model.ranks[n]))
        for r in model.ranks:
            number = str(shown_rank(model, r.rank))
            if r.rank != n and number.startswith(query):
                hits.append(rank_hit(0.8 - len(number) / 100, r))
    fold = query == query.lower()
    for node in model.nodes:
        host = node.host.lower() if fold else node.host
        if host == query or query in host:
            exact = host == query
            members = [model.ranks[i] for i in node.ranks]
            counts = "  ".join(f"{n} {k}" for k, n in _counts(members).items())
            hits.append((0.95 if exact else 0.7 - len(host) / 1000,
                         f"host {node.host}  ranks {shown_rank(model, node.ranks.start)}-"
                         f"{shown_rank(model, node.ranks.stop - 1)}",
                         partial(app.go_to_host, node.node_rank), counts))
            if exact:
                hits.extend(rank_hit(0.9 - i / 1000, r) for i, r in enumerate(members))
    if not hits:
        selected = RankQuery(query, [n.host for n in model.nodes]).select(model)
        hits.extend(rank_hit(0.6 - i / 10000, model.ranks[r]) for i, r in enumerate(selected))
    hits.sort(key=lambda hit: -hit[0])  # stable: equal scores keep their order
    return hits[:PICK_LIMIT]


def pick_defaults(app: "FlexApp") -> list[tuple[str, Callable, str]]:
    """What the picker offers before anything is typed: (name, action, help)."""
    model = app.model
    picks = []
    first = model.first_failure
    if first is not None:
        picks.append((f"first failure: rank {shown_rank(model, first.rank)} on {first.info.host}",
                      app.action_first_failure, status_text(first)))
    picks.append(("all ranks", app.action_show_all, "the combined log"))
    return picks


class RankPicker(Provider):
    """The command palette's (Ctrl+P) part of the picker: the same hits as `:`."""

    def _hits(self, query: str) -> list[tuple[float, str, Callable, str]]:
        return pick_hits(self.app, query)  # type: ignore[arg-type]

    async def discover(self) -> Hits:
        app: FlexApp = self.app  # type: ignore[assignment]
        for name, callback, help_text in pick_defaults(app):
            yield DiscoveryHit(name, callback, help=help_text)
        yield DiscoveryHit("type a rank (137), a host (node12) or a status (failed)",
                           app.action_pick)

    async def search(self, query: str) -> Hits:
        for score, name, callback, help_text in self._hits(query):
            yield Hit(score, name, callback, help=help_text)


def _counts(ranks) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in ranks:
        key = status_key(r)
        counts[key] = counts.get(key, 0) + 1
    return counts


class FlexApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "flextui"
    COMMANDS = App.COMMANDS | {FlexCommands, RankPicker}

    BINDINGS = [
        Binding("ctrl+c", "abort", "Abort job", priority=True,
                tooltip="SIGTERM every rank, SIGKILL after the grace; again: SIGKILL now "
                        "(a click on it asks first)"),
        Binding("q", "quit", "Quit", tooltip="Quit (asks first, then stops the job, if it runs)"),
        Binding("ctrl+q", "quit", "Quit", show=False, priority=True),
        Binding("D", "detach", "Detach", tooltip="close this console, leave the job running "
                "(flextui attach brings it back)"),
        Binding("question_mark,f1", "help", "Help"),
        Binding("colon", "pick", "Go to", tooltip="go to a rank or host: 137, node12, failed"),
        Binding("x", "first_failure", "First failure"),
        Binding("d", "stacks", "Stacks", show=False,
                tooltip="every running rank's Python stack (py-spy), ranks with the same stack grouped"),
        Binding("t", "toggle_focus", "Table/log", tooltip="move the focus between table and log"),
        Binding("slash", "search", "Search", tooltip="search the log (regex, smart case)"),
        Binding("ampersand", "filter", "Filter log",
                tooltip="show only matching log lines (regex, smart case; !pattern: not matching)"),
        Binding("F", "filter_ranks", "Filter ranks",
                tooltip="the table's ranks: failed, node12, 0-63, !stopped (empty: all)"),
        Binding("p", "problems", "Problems", tooltip="only failed, killed and lost ranks (again: all)"),
        Binding("o", "sort", "Sort", tooltip="sort the table: " + " → ".join(SORTS)),
        Binding("O", "reverse_sort", "Reverse sort", show=False),
        Binding("b", "group", "By node", tooltip="group the table by node (←/→ fold, unfold)"),
        Binding("v", "rank_mask", "Ranks shown in all ranks", show=False,
                tooltip="show/hide ranks in the all-ranks view: 7, !7, node3 (empty: all)"),
        Binding("f", "follow", "Follow"),
        Binding("k", "stop_rank", "Stop rank"),
        Binding("ctrl+k", "kill_rank", "Kill rank", show=False),
        Binding("K", "stop_node", "Stop node", show=False),
        Binding("exclamation_mark", "kill_job", "Kill job now", show=False),
        Binding("tab", "next_tab", "Next tab", show=False, priority=True),
        Binding("shift+tab", "prev_tab", "Previous tab", show=False, priority=True),
        Binding("right_square_bracket", "next_tab", "Next tab", show=False),
        Binding("left_square_bracket", "prev_tab", "Previous tab", show=False),
        Binding("a", "show_all", "All ranks", show=False),
        *[Binding(str(d), f"digit({d})", f"Rank {d}…", show=False) for d in range(10)],
        Binding("n", "search_next", "Next match", show=False),
        Binding("N", "search_prev", "Previous match", show=False),
        Binding("e", "next_error", "Next error", show=False),
        Binding("w", "wrap", "Wrap", show=False),
        Binding("end,G", "log_bottom", "Log: bottom, and follow new lines", show=False),
        Binding("home,g", "log_top", "Log: top (pauses follow)", show=False),
        Binding("z", "zoom", "Hide/show table", show=False),
        Binding("s", "summary", "Summary", show=False),
        Binding("T", "cycle_theme", "Theme", show=False),
    ]

    #: Bindings that belong to the main screen: in a dialog, Tab moves between its buttons.
    MAIN_SCREEN_ONLY = {"next_tab", "prev_tab"}

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
        ranks = len(self.model.ranks)
        window = max(256, 4 * ranks)  # how far back "all ranks" merges
        self.sources = {"all": CombinedSource(self.model, window=window,
                                              max_rows=max(20000, 200 * ranks))}
        self.current_tab = "all"
        self.stopped_by_user: set[int] = set()  # ranks the user stopped one by one
        self.user_stop_note: str | None = None  # what the user stopped, for the verdict
        self._digits = ""
        self._digit_at = 0.0
        self._table_signature: tuple = ()
        self._table_states: tuple = ()
        self._table_drawn = 0.0
        self._panel_key: tuple = ()
        self._last_error: dict[int, tuple[int, str | None]] = {}
        self._announced_failure = False
        self._gpu_columns = False  # the table's GPU column is wide enough for NVML figures
        self._notices_shown = 0
        self._summary_shown = False
        self._prompt_mode: str | None = None
        self._picks: list[tuple[str, Callable, str]] = []  # the picker's hits: (name, action, help)
        self._signals: list[int] = []
        self._heap_frozen = False

    def source(self, key: str):
        """The log source of a tab ("all" or "r<rank>"), made when first shown."""
        source = self.sources.get(key)
        if source is None and key.startswith("r") and key[1:].isdigit():
            rank = int(key[1:])
            if rank < len(self.model.ranks):
                state = self.model.ranks[rank]
                log_file = getattr(self.job, "log_file", None)
                source = self.sources[key] = RankSource(state, log_file(state) if log_file else None)
        return source

    # -- layout -------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        self.job_bar = JobBar(id="jobbar")
        self.table = RankTable(self.model, id="ranks")
        self.rank_header = RankHeader(self.table, id="rank-header")
        self.panel = RankPanel(id="panel")
        self.tabs = TabStrip(id="tabs")
        self.status_line = StatusLine(id="logstatus")
        self.log_view = LogView(id="log")
        self.prompt = Input(id="prompt")
        self.pick_list = OptionList(id="picklist")
        self.pick_list.can_focus = False  # the typing stays in the prompt; ↑/↓ move here
        yield self.job_bar
        yield self.rank_header
        yield self.table
        yield self.panel
        yield self.tabs
        yield self.status_line
        yield self.log_view
        yield self.pick_list
        yield self.prompt
        yield KeyBar()

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
        self.call_after_refresh(self._freeze_heap)

    def _freeze_heap(self) -> None:
        """Move everything alive after the first frame (Textual, the widget tree, the job
        model and its rings) out of the collector's sight. A full collection walks every
        tracked object and stops the event loop meanwhile: with 512 ranks that heap took
        75-125 ms per collection, about once every 1.5 s, landing on whatever key was
        pending (Textual pauses the collector for smooth scrolling for the same reason).
        Garbage is still collected: frozen objects only stop being scanned, and the heap
        is handed back when the app ends."""
        if not self._heap_frozen:
            gc.collect()
            gc.freeze()
            self._heap_frozen = True

    def on_unmount(self) -> None:
        if self._heap_frozen:
            gc.unfreeze()
            self._heap_frozen = False
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
        for widget in (self.rank_header, self.table, self.log_view, self.tabs):
            widget.palette = self.palette
            widget.refresh()
        self._table_signature = self._table_states = ()
        self._panel_key = ()
        self._tick()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.MAIN_SCREEN_ONLY and self.screen is not self.screen_stack[0]:
            return False
        if action == "detach" and not hasattr(self.job, "detach"):
            return False  # a job in this console's own process (headless tests, FakeJob) cannot detach
        return True

    def simulate_key(self, key: str) -> None:
        """A click on the footer's "^c Abort job" asks first; the key itself does not."""
        if key == "ctrl+c":
            # From the app's own queue: a dialog's answer goes back to whoever asked, not
            # to the footer's click handler.
            self.call_later(self.action_confirm_abort)
            return
        super().simulate_key(key)

    async def on_event(self, event: events.Event) -> None:
        # Digits typed quickly name one rank ("1" "2": rank 12); any other key ends that.
        if isinstance(event, events.Key) and not (event.character or "").isdigit():
            self._digits = ""
        await super().on_event(event)

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
        # Redraw the table only when something in it changed (idle jobs cost ~nothing); a
        # big job's last lines and runtimes at most twice a second, statuses at once.
        states = (model.first_failure, [(r.status, r.stopped, model.is_stalled(r, now)) for r in model.ranks])
        if not self._gpu_columns and has_gpu_telemetry(model):  # NVML figures came: a wider GPU column
            self._gpu_columns = True
            self.table.set_columns(columns_for(model))
            self.rank_header.refresh()
            self._table_states = None
        soft = self.rates.rates, [(r.line_count, r.live, fmt_duration(r.runtime(now)) if r.started_at else "")
                                  for r in model.ranks]
        period = TICK if len(model.ranks) <= 64 else BIG_JOB_TABLE_PERIOD
        drawn_ago = time.monotonic() - self._table_drawn
        if states != self._table_states or (soft != self._table_signature and drawn_ago >= period - TICK / 2):
            self._table_states, self._table_signature = states, soft
            self._table_drawn = time.monotonic()
            order = self.table.order
            if order.sort != "rank" or order.query:  # the rows' order or set may change
                self.table.rebuild()
            else:
                self.table.refresh()
            self.rank_header.refresh()
            self._update_tabs()
        self.job_bar.set(job_bar_lines(model, self.palette, now, self._run_dir(), self.rates.total,
                                       self.quitting, self.launch_error, self._stop_note()))
        # "All ranks" reads every line as it comes, also while a rank tab is shown, so its
        # per-rank share of memory is kept (see collapse.py); rank tabs cost nothing hidden.
        all_ranks = self.sources["all"]
        if self.log_view.source is not all_ranks:
            all_ranks.sync()
        self.log_view.sync()
        notices = getattr(self.job, "notices", ())
        while self._notices_shown < len(notices):  # what other consoles did (client.py)
            self.notify(notices[self._notices_shown], title="another console", timeout=6)
            self._notices_shown += 1
        if model.first_failure is not None and not self._announced_failure:
            self._announced_failure = True
            first = model.first_failure
            if not isinstance(self.screen, SummaryScreen):
                self.notify(f"rank {shown_rank(model, first.rank)} on {first.info.host}: {status_text(first)}. "
                            "Press x to see it.", title="first failure", severity="error", timeout=8)
        self._update_panel()
        self._update_status_line()

    def _run_dir(self) -> str | None:
        return self.job.run_path

    def _stop_note(self) -> str | None:
        """Why a job ended "aborted" when the user stopped ranks or nodes one by one."""
        if self.model.stop_reason or not self.user_stop_note:
            return None
        return self.user_stop_note

    def _tab_keys(self) -> list[str]:
        return ["all", *(f"r{rank}" for rank in self.table.ranks_in_order)]

    def _update_tabs(self) -> None:
        """The tab strip: after the ranks' state, the table's order or the tab changed."""
        first = self.model.first_failure
        self.tabs.set(self._tab_keys(), self._tab_label, self.current_tab,
                      f"r{first.rank}" if first is not None else None)

    def _tab_label(self, key: str) -> Text:
        if key == "all":
            return Text("all ranks")
        rank = self.model.ranks[int(key[1:])]
        number = str(shown_rank(self.model, rank.rank))
        if self.model.first_failure is rank:
            return Text("▶" + number, style=self.palette.first_failure)
        return Text(number, style=self.palette.status[status_key(rank)])

    def _update_status_line(self) -> None:
        view, palette = self.log_view, self.palette
        source = view.source
        text = Text()
        if source is None:
            self.status_line.set((text, Text()))
            return
        if self.focused is view:
            text.append("▌", palette.accent)
        if isinstance(source, RankSource):
            rank = source.state
            text.append(f"rank {shown_rank(self.model, rank.rank)}", palette.bold)
            text.append(f" {rank.info.host} gpu {rank.info.gpu} ")
            if rank.cpus:  # --bind_cores_to_rank
                text.append(f"cpus {rank.cpus} ")
            text.append(status_text(rank), palette.status[status_key(rank)])
            text.append(f"  {source.end or rank.line_count:,} lines")
            kept = len(rank.tail)
            if source.indexing:
                text.append(" (reading its log file…)", palette.muted)
            elif kept < rank.line_count and not source.ready:
                text.append(f" (last {kept:,} here)", palette.muted)
        else:
            text.append("all ranks", palette.bold)
            text.append(f"  {source.total:,} lines", palette.muted)
            if view.rank_mask is not None:
                text.append(f"  ranks “{view.rank_mask.text}” ({len(view.rank_mask_set)})",
                            palette.accent)
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
            text.append(f"  filter “{view.filter.pattern}” ({shown:,} lines"
                        f"{'; older matches in the file not shown' if view.filter_capped else ''})", palette.accent)
        if view.search is not None:
            text.append(f"  search “{view.search.pattern}” (n/N)", palette.accent)
        if view.filtering:
            text.append("  filtering the log file…", palette.accent)
        if view.searching:
            text.append("  searching the log file…", palette.accent)
        self.status_line.set((text, Text()))

    def _update_panel(self) -> None:
        if not self.panel.display:
            return
        model, palette, table = self.model, self.palette, self.table
        rank = table.selected_rank()
        node = table.selected_node()
        running = not self.job_done and not model.state.finished
        if rank is not None:
            last_error = self._last_error_of(rank)
            key = (rank.rank, rank.status, rank.pid, rank.line_count, last_error,
                   fmt_duration(rank.runtime(table.now)), table.rates[rank.rank], running)
            if key == self._panel_key:
                return
            self._panel_key = key
            info = rank_detail(rank, table.ctx, palette, last_error)
        elif node is not None:
            key = ("node", node, tuple(r.status for r in model.ranks[model.nodes[node].ranks.start:
                                                                   model.nodes[node].ranks.stop]), running)
            if key == self._panel_key:
                return
            self._panel_key = key
            info = node_detail(model, node, palette)
        else:
            info = Text("no rank matches the filter (F: change it)", palette.muted)
        alive = rank is not None and not rank.status.finished and running
        node_alive = node is not None and running and any(
            not model.ranks[r].status.finished for r in model.nodes[node].ranks)
        self.panel.show(info, {"stop-rank": alive, "kill-rank": alive, "stop-node": node_alive,
                               "abort-job": running})

    def _last_error_of(self, rank) -> str | None:
        """The rank's last error/traceback line, scanning only lines new since last time."""
        seen, last = self._last_error.get(rank.rank, (0, None))
        count = rank.line_count
        if count != seen:
            tail = rank.tail
            new = min(count - seen, len(tail))
            for i in range(len(tail) - 1, len(tail) - 1 - new, -1):
                if ERROR_RE.search(tail[i]):
                    last = tail[i]
                    break
            self._last_error[rank.rank] = (count, last)
        return last

    # -- tabs -----------------------------------------------------------------------------

    def open_tab(self, key: str) -> None:
        source = self.source(key)
        if source is None:
            return
        self._close_overlays()
        if key != self.current_tab or self.log_view.source is not source:
            self.current_tab = key
            self.log_view.show(source)
            if key != "all":
                self.table.move_cursor(int(key[1:]))
        self._update_tabs()
        self._update_status_line()

    def open_rank(self, rank: int) -> None:
        self.open_tab(f"r{rank}")

    def go_to_rank(self, rank: int) -> None:
        """The picker's choice: open the rank; if the table's filter hides it, drop the filter."""
        if rank not in self.table.ranks_in_order and self.table.order.query:
            self.table.set_order(query=RankQuery(""))
            self.notify("The table's filter was cleared to show the rank.", timeout=3)
        self.open_rank(rank)

    def go_to_host(self, node_rank: int) -> None:
        """The picker's choice of a host: the table shows just its ranks; its first opens."""
        node = self.model.nodes[node_rank]
        self.table.set_order(query=RankQuery(node.host, [n.host for n in self.model.nodes]))
        self._table_states = ()
        self.open_rank(node.ranks.start)

    def on_tab_strip_clicked(self, event: TabStrip.Clicked) -> None:
        self.open_tab(event.key)

    def on_rank_table_selected(self, event: RankTable.Selected) -> None:
        self.open_rank(event.rank)
        self.log_view.focus()

    def on_rank_table_moved(self, _event: RankTable.Moved) -> None:
        self._panel_key = ()
        self._update_panel()

    def on_rank_header_sort_clicked(self, event: RankHeader.SortClicked) -> None:
        order = self.table.order
        if order.sort == event.column:
            self.table.set_order(reverse=not order.reverse)
        else:
            self.table.set_order(sort=event.column, reverse=False)
        self._after_order_change()

    def on_log_view_changed(self, _event: LogView.Changed) -> None:
        self._update_status_line()

    def on_descendant_focus(self, _event: events.DescendantFocus) -> None:
        self.rank_header.refresh()  # its "▌" shows which of table and log has the keys
        self._update_status_line()

    def action_next_tab(self) -> None:
        self._step_tab(1)

    def action_prev_tab(self) -> None:
        self._step_tab(-1)

    def _step_tab(self, step: int) -> None:
        keys = self._tab_keys()
        index = keys.index(self.current_tab) if self.current_tab in keys else 0
        self.open_tab(keys[(index + step) % len(keys)])

    def action_show_all(self) -> None:
        self.open_tab("all")

    def action_digit(self, digit: int) -> None:
        now = time.monotonic()
        if now - self._digit_at > DIGIT_TIMEOUT:
            self._digits = ""
        self._digit_at = now
        first = shown_rank(self.model, 0)  # digits name the job's RANK (--no_ssh: a share)
        end = first + len(self.model.ranks)
        self._digits += str(digit)
        if int(self._digits) >= end:
            self._digits = str(digit)
        if first <= int(self._digits) < end:
            self.go_to_rank(int(self._digits) - first)

    def action_pick(self) -> None:
        """`:` the picker: a prompt on this screen with the hits listed above it (no modal
        screen: at 512 ranks the command palette's dimmed redraw of the whole screen made
        each choice take 100-200 ms)."""
        self._open_prompt("pick", "go to: a rank (137), a host (node12), a status (failed)   ↑/↓, Enter", "")
        self._show_picks("")

    def _show_picks(self, query: str) -> None:
        if query.strip():
            picks = [(name, callback, help_text) for _score, name, callback, help_text in pick_hits(self, query)]
        else:
            picks = pick_defaults(self)
        self._picks = picks
        options = []
        for name, _callback, help_text in picks:
            label = Text(name, no_wrap=True, overflow="ellipsis")
            if help_text:
                label.append(f"   {help_text}", self.palette.muted)
            options.append(Option(label))
        if not options:
            options.append(Option(Text("nothing matches", self.palette.muted), disabled=True))
        pick_list = self.pick_list
        with self.batch_update():
            pick_list.clear_options()
            pick_list.add_options(options)
            pick_list.highlighted = 0 if picks else None
            pick_list.add_class("-visible")

    def _run_pick(self, index: int | None) -> None:
        picks = self._picks
        if not picks:
            self.notify("Nothing matches: type a rank (137), a host (node12) or a status (failed).", timeout=3)
            return
        _name, callback, _help = picks[index if index is not None and 0 <= index < len(picks) else 0]
        callback()

    def on_input_changed(self, event: Input.Changed) -> None:
        if self._prompt_mode == "pick" and event.input is self.prompt:
            self._show_picks(event.value)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        if event.option_list is self.pick_list and self._prompt_mode == "pick":  # a click on a hit
            event.stop()
            self._hide_prompt()
            self._run_pick(event.option_index)

    def action_first_failure(self) -> None:
        first = self.model.first_failure
        if first is None:
            self.notify("No rank has failed.", timeout=3)
            return
        self.clear_notifications()  # a toast must not cover the traceback
        self.go_to_rank(first.rank)
        self.log_view.focus()

        def found(found: bool) -> None:
            if not found:
                self.log_view.set_follow(True)
            else:
                self._show_exception_line(first)

        self.log_view.jump_to_traceback(found)

    def _show_exception_line(self, rank) -> None:
        """After a jump to a traceback's top: its end (the exception line, what the rank
        died of) must be on screen too — the traceback from its top if it fits, else its
        last lines."""
        view = self.log_view
        start = view.cursor
        error = (rank.error_line or "").strip()
        if start is None or not error:
            return
        # a literal Matcher: in a tab that reads a long log file, only lines holding its
        # bytes are tested (this runs on the UI thread)
        end = view.find(Matcher(re.escape(error)), forward=True, start=start)
        if end is None:
            return
        layout = view.layout_
        top, bottom = (layout.item_row(layout.abs_to_item(i)) for i in (start, end))
        height = view.scrollable_content_region.height or view.size.height or 1
        if view.scroll_y <= bottom < view.scroll_y + height:
            return
        target = top if bottom - top < height else bottom - height + 2
        view.scroll_to(y=max(0, target), animate=False, immediate=True)
        view.refresh()

    def action_stacks(self) -> None:
        """d: every running rank's stack, grouped (the job asks every node's py-spy)."""
        if isinstance(self.screen, StacksScreen):
            self.pop_screen()
            return
        if not hasattr(self.job, "dump_stacks"):
            self.notify("This job cannot take stacks.", timeout=3)
            return
        if self.job_done or self.model.state.finished:
            self.notify("The job has ended: no process to take a stack of.", timeout=3)
            return
        self._close_overlays()
        self.clear_notifications()
        self.push_screen(StacksScreen(self.job, self.palette))

    # -- the rank table -------------------------------------------------------------------

    def action_filter_ranks(self) -> None:
        self._open_prompt("ranks", "filter ranks: 137  0-63  node12  failed  !stopped  (empty: all)",
                          self.table.order.query.text)

    def action_problems(self) -> None:
        """Only the ranks that failed, were killed or lost (again: every rank)."""
        if self.table.order.query.text == "problem":
            self._set_rank_query("")
        elif not RankQuery("problem").select(self.model):
            self.notify("No rank has failed, been killed or been lost.", timeout=3)
        else:
            self._set_rank_query("problem")

    def _set_rank_query(self, text: str) -> None:
        self.table.set_order(query=RankQuery(text, [n.host for n in self.model.nodes]))
        self._after_order_change()

    def action_sort(self) -> None:
        order = self.table.order
        index = SORTS.index(order.sort) if order.sort in SORTS else -1
        self.table.set_order(sort=SORTS[(index + 1) % len(SORTS)], reverse=False)
        self._after_order_change()

    def action_reverse_sort(self) -> None:
        self.table.set_order(reverse=not self.table.order.reverse)
        self._after_order_change()

    def action_group(self) -> None:
        self.table.set_order(grouped=not self.table.order.grouped)
        self._after_order_change()

    def _after_order_change(self) -> None:
        self.rank_header.refresh()
        self._update_tabs()
        self._panel_key = ()
        self._update_panel()

    # -- log view -------------------------------------------------------------------------

    def action_search(self) -> None:
        self._open_prompt("search", "search: regex (smart case), Enter; then n / N (Esc: cancel)",
                          self.log_view.search.pattern if self.log_view.search else "")

    def action_filter(self) -> None:
        self._open_prompt("filter", "filter: regex (smart case); !regex hides matches (empty: all)",
                          self.log_view.filter.pattern if self.log_view.filter else "")

    def action_rank_mask(self) -> None:
        mask = self.log_view.rank_mask
        self._open_prompt("mask", "all ranks view shows ranks: 7  0-7  !7  node3  !stopped (empty: all)",
                          mask.text if mask is not None else "")

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
        chosen = self.pick_list.highlighted
        self._hide_prompt()
        view = self.log_view
        if mode == "pick":
            self._run_pick(chosen)
        elif mode == "search":
            if not self._valid_pattern(value):
                return
            view.set_search(value or None)
            if value:
                self._search_step(True)
        elif mode == "filter":
            if self._valid_pattern(value):
                view.set_filter(value or None)
        elif mode == "ranks":
            self._set_rank_query(value)
        elif mode == "mask":
            query = RankQuery(value, [n.host for n in self.model.nodes])
            view.set_rank_mask(query if query else None, set(query.select(self.model)))
            if self.current_tab != "all":
                self.open_tab("all")

    def _valid_pattern(self, pattern: str) -> bool:
        from flextui.ui.logview import Matcher

        error = Matcher.error(pattern)
        if error:
            self.notify(f"not a valid regex: {error}", severity="warning", timeout=5)
        return error is None

    PICK_KEYS = {"up": "cursor_up", "down": "cursor_down", "pageup": "page_up", "pagedown": "page_down"}

    def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and self._prompt_mode is not None:
            self._hide_prompt()
            event.stop()
        elif self._prompt_mode == "pick" and event.key in self.PICK_KEYS:
            getattr(self.pick_list, f"action_{self.PICK_KEYS[event.key]}")()
            event.stop()

    def _hide_prompt(self) -> None:
        self._prompt_mode = None
        self.prompt.remove_class("-visible")
        self.pick_list.remove_class("-visible")
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
        search = view.search

        def found(index: int | None) -> None:
            if index is None:
                self.notify(f"“{search.pattern}” not found", timeout=3)
            elif view.search is search:
                view.jump_to(index, match=search)

        view.find_later(search, found, forward=forward)

    def action_next_error(self) -> None:
        """The first error/traceback of the tab; pressed again, the next one."""
        view = self.log_view
        start = view.cursor if view.cursor is not None else view.layout_.first - 1

        def found(index: int | None) -> None:
            if index is None:
                self.notify("No error or traceback in this tab.", timeout=3)
            else:
                view.jump_to(index)

        view.find_later(ERROR_LINE, found, forward=True, start=start)

    def action_wrap(self) -> None:
        self.log_view.set_wrap(not self.log_view.wrap)

    def action_follow(self) -> None:
        self.log_view.set_follow(True)

    def action_log_bottom(self) -> None:
        self.log_view.set_follow(True)

    def action_log_top(self) -> None:
        self.log_view.action_top()

    def action_toggle_focus(self) -> None:
        (self.table if self.focused is self.log_view else self.log_view).focus()

    def action_zoom(self) -> None:
        hidden = self.table.display
        for widget in (self.table, self.rank_header, self.panel):
            widget.display = not hidden
        if hidden:
            self.log_view.focus()
        else:
            self._panel_key = ()

    # -- control --------------------------------------------------------------------------

    def action_abort(self) -> None:
        """Ctrl+C: one key, no question (a second one kills)."""
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

    def action_confirm_abort(self) -> None:
        """The Abort button and a click on the footer: ask first."""
        if self.job_done or isinstance(self.screen, ConfirmScreen):
            return
        if self.model.stop_started_at is not None:
            question, yes = "The job is already stopping.\nKill every rank now (SIGKILL)?", "Kill now"
        else:
            question = ("Abort the job?\nSIGTERM to every rank's process tree, "
                        f"SIGKILL after {self.job.grace:g}s.")
            yes = "Abort job"

        def answer(yes: bool | None) -> None:
            if yes and not self.job_done:
                self.action_abort()

        self.push_screen(ConfirmScreen(question, yes=yes), answer)

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

        hint = "\n(D detaches instead: the job runs on.)" if hasattr(self.job, "detach") else ""
        self.push_screen(ConfirmScreen("The job is still running.\nStop every rank and quit?" + hint,
                                       yes="Stop and quit"), answer)

    def _selected_rank(self):
        rank = self.table.selected_rank()
        if rank is None:
            self.notify("Select a rank in the table first (a node row is selected).", timeout=3)
        return rank

    def action_stop_rank(self) -> None:
        self._ask_rank("stop")

    def action_kill_rank(self) -> None:
        self._ask_rank("kill")

    def _ask_rank(self, how: str) -> None:
        rank = self._selected_rank()
        if rank is None:
            return
        shown = shown_rank(self.model, rank.rank)
        if rank.status.finished or self.job_done:
            self.notify(f"Rank {shown} is not running ({status_text(rank)}).", timeout=3)
            return

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            self.stopped_by_user.add(rank.rank)
            self.user_stop_note = f"rank {shown} on {rank.info.host} {how}ed by the user" \
                if how == "kill" else f"rank {shown} on {rank.info.host} stopped by the user"
            if how == "kill":
                self.job.kill_rank(rank.rank)
                self.notify(f"SIGKILL to rank {shown} (pid {rank.pid}).", timeout=4)
            else:
                self.job.stop_rank(rank.rank)
                self.notify(f"SIGTERM to rank {shown} (pid {rank.pid}).", timeout=4)

        if how == "kill":
            question = (f"Kill rank {shown} on {rank.info.host} (pid {rank.pid})?\n"
                        "SIGKILL to its process tree now: no chance to clean up.")
        else:
            question = (f"Stop rank {shown} on {rank.info.host} (pid {rank.pid})?\n"
                        "SIGTERM to its process tree, SIGKILL after the grace.")
        self.push_screen(ConfirmScreen(question, yes=f"{how.capitalize()} rank {shown}"), answer)

    def action_stop_node(self) -> None:
        node_rank = self.table.selected_node()
        if node_rank is None:
            return
        node = self.model.nodes[node_rank]
        if self.job_done or all(self.model.ranks[r].status.finished for r in node.ranks):
            self.notify(f"Nothing runs on node {node.host}.", timeout=3)
            return
        span = f"{node.ranks.start}-{node.ranks.stop - 1}"

        def answer(yes: bool | None) -> None:
            if yes:
                self.job.stop_node(node.node_rank)
                self.stopped_by_user.update(node.ranks)
                self.user_stop_note = f"node {node.host} (ranks {span}) stopped by the user"
                self.notify(f"SIGTERM to ranks {span} on {node.host}.", timeout=4)

        self.push_screen(ConfirmScreen(
            f"Stop node {node.node_rank} ({node.host}): ranks {span}?\n"
            "SIGTERM to each rank's process tree, SIGKILL after the grace.\n"
            "The other nodes' ranks go on (a collective with them will hang or fail).",
            yes=f"Stop {node.host}"), answer)

    def action_detach(self) -> None:
        """Close the console, the job runs on (a job in a supervisor: ClientJob.detach)."""
        detach = getattr(self.job, "detach", None)
        if self.job_done or detach is None:
            self.notify("This console runs the job in its own process: it cannot detach."
                        if detach is None else "The job has ended: q quits.", timeout=4)
            return

        def answer(yes: bool | None) -> None:
            if yes and not self.job_done:
                detach()
                self.exit(0)

        self.push_screen(ConfirmScreen("Detach? The job keeps running without this console.\n"
                                       f"Back with: flextui attach {self.job.run_id}", yes="Detach"), answer)

    def action_kill_job(self) -> None:
        if self.job_done:
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self.job.kill()
                self.notify("SIGKILL to every rank.", title="killing", severity="warning")

        self.push_screen(ConfirmScreen("Kill every rank now (SIGKILL, no grace)?", yes="Kill job"),
                         answer)

    # -- screens and themes ---------------------------------------------------------------

    def _close_overlays(self) -> None:
        while isinstance(self.screen, (SummaryScreen, HelpScreen)):
            self.pop_screen()

    def action_summary(self) -> None:
        if isinstance(self.screen, SummaryScreen):
            self.pop_screen()
            return
        self._close_overlays()
        self.clear_notifications()  # no toast over the verdict
        self.push_screen(SummaryScreen(self.model, self.palette, self.clock(), self.launch_error,
                                       self._run_dir(), self._stop_note(), set(self.stopped_by_user)))

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self._close_overlays()
        self.push_screen(HelpScreen(self.help_sections()))

    def _diagnosis_help(self) -> list[tuple[str, str]]:
        model = self.model
        rows = [
            ("SILENT", "time since the rank's last line (shown after 5 s); 'stalled?' after "
                       f"--stall_after {model.stall_after:g} s, counted in the job bar"),
            ("CPU MEM", "the rank's process tree (with its children): % of one core, resident memory"),
            ("GPU", "the binding; with NVML on the node also busy %, memory held / total"),
            ("d", "stacks of every running rank (py-spy), grouped, the odd one out first"),
            ("x", "the root cause's traceback; 'collateral' ranks died of a lost peer"),
        ]
        note = gpu_telemetry_note(model)
        if note:
            rows.append(("", note))
        return rows

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

        app_rows = rows([b for b in self.BINDINGS if b.action != "detach" or hasattr(self.job, "detach")])
        app_rows.insert(4, ("0-9", "open rank N (type 1 2 quickly for rank 12)"))
        return [
            ("Console", app_rows),
            ("Rank table (when focused)", rows(RankTable.BINDINGS)),
            ("Log view (when focused)", rows(LogView.BINDINGS) + [
                ("↑ ↓ PgUp PgDn", "scroll (scrolling up pauses follow)"),
                ("mouse wheel", "scroll"),
            ]),
            ("Rank panel", [("buttons", "Stop rank, Kill rank, Stop node, Abort job: each asks first")]),
            ("Diagnosis", self._diagnosis_help()),
            ("Prompts", [("Enter", "apply"), ("Esc", "cancel")]),
            ("Other", [("ctrl+p", "command palette (also: themes, go to a rank or host)")]),
        ]

    def action_cycle_theme(self) -> None:
        names = sorted(self.themes)
        index = names.index(self.theme) + 1 if self.theme in names else 0
        self.theme = names[index % len(names)]
        self.notify(f"theme: {self.theme}", timeout=2)


_KEY_NAMES = {
    "question_mark": "?", "slash": "/", "ampersand": "&", "exclamation_mark": "!",
    "right_square_bracket": "]", "left_square_bracket": "[", "colon": ":",
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
    if task is None or getattr(app.job, "detached", False):
        return  # detached: the job runs on in its supervisor
    if not task.done():
        app.job.kill()
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout or app.job.grace + 15)
        except (asyncio.TimeoutError, Exception):  # noqa: BLE001 - reported by the task
            pass
    elif not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn

