"""One virtualised log view (Line API) for every tab.

The view never owns log text: it renders straight from the model's bounded rings
(a rank's `RankState.tail` + `RankState.live`, or the collapsed "all ranks" rows), so
there is one widget however many ranks there are, hidden tabs cost nothing, and memory
is bounded by the rings. The app calls `sync()` from its ~10 Hz timer; `sync()` compares
counters and does work only when the shown source changed.

Lines are numbered absolutely (line N of the rank's output), so positions survive the
ring dropping old lines, and a paused view keeps a copy of the lines it shows: it stays
exactly where the user put it while a rank floods its ring.
"""

from __future__ import annotations

import re
import sys
import time
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from heapq import merge
from itertools import accumulate, chain, islice

from rich.cells import cell_len
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widget import Widget
from textual.worker import get_current_worker

from flextui.diagnosis import ERROR_RE, TRACEBACK
from flextui.logfile import LineIndex, byte_finder, display_line
from flextui.model import JobModel, RankState
from flextui.ui.collapse import GAP, Collapser, format_ranks
from flextui.ui.theming import Palette

ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?")
# C0 (except tab and ESC) and C1 controls and line separators: a terminal could act on them.
_CONTROL_RE = re.compile("[\x00-\x08\x0a-\x1a\x1c-\x1f\x7f-\x9f\u2028\u2029]")


def clean(text: str) -> tuple[str, bool]:
    """Text safe to draw, and whether it holds ANSI escapes (colours) to interpret."""
    if text.isprintable():
        return text, False
    if not text.isascii():  # lone surrogates from undecodable bytes become "?"
        text = text.encode("utf-8", "replace").decode("utf-8", "replace")
    has_ansi = "\x1b" in text
    text = _CONTROL_RE.sub("\ufffd", text)
    if "\t" in text and not has_ansi:  # with escapes, tabs are expanded after parsing them
        text = text.expandtabs(8)
    return text, has_ansi


def plain(text: str) -> str:
    """What search, filter and widths see: no escapes, no control characters."""
    text, has_ansi = clean(text)
    if has_ansi:
        text = ANSI_RE.sub("", text).replace("\x1b", "\ufffd")
        if "\t" in text:
            text = text.expandtabs(8)
    return text


def width_of(text: str) -> int:
    if text.isascii() and text.isprintable():
        return len(text)
    return cell_len(plain(text))


def max_width(texts: list[str]) -> int:
    """The widest of many lines, at C speed for the usual all-ASCII case."""
    if not texts:
        return 0
    widest = max(map(len, texts))
    if not all(map(str.isascii, texts)) or not all(map(str.isprintable, texts)):
        widest = max(widest, max(width_of(t) for t in texts))
    return widest


class Matcher:
    """A regular expression with smart case (case-insensitive unless the pattern has a
    capital letter outside an escape such as \\S); "!pattern" matches the lines that do
    NOT match it. A plain word is a regex too, so "loss" finds "loss" as before."""

    def __init__(self, pattern: str, hint: str | None = None) -> None:
        self.pattern = pattern
        self.negate = pattern.startswith("!") and len(pattern) > 1
        body = pattern[1:] if self.negate else pattern
        literal = re.sub(r"\\.", "", body)
        self.fold = literal == literal.lower()
        self.regex = re.compile(body, re.IGNORECASE if self.fold else 0)
        self._body, self._hint, self._finder = body, hint, None

    @property
    def finder(self):
        """(a logfile Finder for the raw bytes of lines that may match, fold) — a
        search through a log file tests only those lines; (None, False): every line.
        `hint`: a simpler regex every matching line matches (faster on bytes)."""
        if self._finder is None:
            finder = None if self.negate else byte_finder(self._hint or self._body)
            self._finder = (finder, self.fold and finder is not None and self._hint is None)
        return self._finder

    @staticmethod
    def error(pattern: str) -> str | None:
        """Why the pattern is not a usable regex, or None."""
        try:
            Matcher(pattern)
        except re.error as exc:
            return str(exc)
        return None

    def __call__(self, text: str) -> bool:
        if "\x1b" in text or not text.isprintable():
            text = plain(text)
        return (self.regex.search(text) is None) is self.negate

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        """Where it matches (nothing to highlight for a negated pattern)."""
        if self.negate:
            return
        for match in self.regex.finditer(text):
            if match.end() > match.start():
                yield match.start(), match.end()


#: `x` and `e`: a traceback's first line, any error line (a log file is searched for the
#: hint's words first: a bytes regex with ERROR_RE's leading classes crawls).
TRACEBACK_LINE = Matcher(re.escape(TRACEBACK))
ERROR_LINE = Matcher(ERROR_RE.pattern, hint="Error|Exception|ERROR|FATAL|CRITICAL|error:|Traceback"
                     "|Segmentation fault|core dumped")


# -- sources: what a tab shows -------------------------------------------------------


class Source:
    """Absolutely numbered complete lines (those kept: `indices()`) plus a live
    (unfinished) line."""

    key = ""
    title = ""
    first = 0
    end = 0
    live = ""
    dirty_from = 0  # lowest line whose look changed in the last sync (>= old end: appends only)
    prefix_width = 0  # the widest prefix() (for scroll and wrap widths)
    evictions = 0  # bumped when lines went from inside [first, end), not just the oldest

    def sync(self) -> bool:
        raise NotImplementedError

    def text(self, index: int, shown: set[int] | None = None) -> str | None:
        """Line `index` (None if gone); `shown`: the ranks the view shows, if not all."""
        raise NotImplementedError

    def prefix(self, index: int, shown: set[int] | None = None) -> str:
        return ""

    def scan(self, start: int, stop: int) -> Iterator[tuple[int, str]]:
        raise NotImplementedError

    def indices(self, whole: bool = True) -> Sequence[int]:
        """The lines shown; not `whole`: only those in memory (for wrapping, filters)."""
        return range(self.first, self.end)

    @property
    def scan_first(self) -> int:
        """The first line held in memory (what filters and widths look at)."""
        return self.first

    @property
    def total(self) -> int:
        return self.end


class RankSource(Source):
    """A rank's lines: the model's in-memory tail, and, when that no longer holds the
    start of the output, the rest read from the rank's log file (`log_file`) through a
    LineIndex built by a worker thread (LogView starts it). Line N is the file's line N."""

    #: Bytes the UI thread indexes per sync as the file grows (a worker does the first scan).
    UPDATE_BUDGET = 32 << 20
    scan_first = 0

    def __init__(self, state: RankState, log_file: str | None = None) -> None:
        self.state = state
        self.key = f"r{state.rank}"
        self.title = f"rank {state.rank}"
        self.log_file = log_file
        self.index = LineIndex(log_file) if log_file is not None else None  # opens when used
        self.indexing = False  # a worker is building the index
        self.ready = False  # the index holds the file as it was when the worker ended
        self.tail_first = 0  # lines before it are only in the file
        self.scan_first = 0
        self._shift = 0  # lines the file holds beyond the model's count (a run read back without it)
        self._shift_key: tuple[int, int] = (-1, -1)

    # -- the file ----------------------------------------------------------------------

    def tail_is_whole(self) -> bool:
        st = self.state
        return st.line_count <= len(st.tail) < (st.tail.maxlen or len(st.tail) + 1)

    def wants_index(self) -> bool:
        """A worker should index the file: the memory lacks the start of the output."""
        return (self.log_file is not None and not self.ready and not self.indexing
                and not self.tail_is_whole())

    def build_index(self, cancelled=None) -> bool:
        """Index the whole file (blocking: run it in a worker thread). True when done."""
        try:
            done = self.index.update(cancelled=cancelled)
        except OSError:
            self.log_file, done = None, False  # gone or unreadable: the tail is all there is
        if done:
            self.ready = True
        return done

    @property
    def file_lines(self) -> int:
        """Lines [0, file_lines) come from the file (0: the memory holds everything)."""
        return self.tail_first if self.ready else 0

    def _file_count(self) -> int:
        """Lines of the file up to where the model has read it (0 if not known yet)."""
        st, index = self.state, self.index
        key = (st.log_bytes, st.line_count)
        if key != self._shift_key and index.scanned >= st.log_bytes:
            lines = index.line_at(st.log_bytes)
            if not st.live and index.offset_of(lines) < st.log_bytes:
                lines += 1  # its unfinished last line became a line when the rank ended
            self._shift = max(0, lines - st.line_count)
            self._shift_key = key
        return self._shift

    # -- Source ----------------------------------------------------------------------------

    def sync(self) -> bool:
        st = self.state
        shift = 0
        if self.ready:
            try:
                self.index.update(budget=self.UPDATE_BUDGET, blocking=False)
                shift = self._file_count()
            except OSError:
                shift = self._shift
        end = st.line_count + shift
        tail_first = end - len(st.tail)
        first = 0 if self.ready and self.index.lines >= tail_first else tail_first
        live = st.live
        changed = end != self.end or first != self.first or live != self.live
        self.dirty_from = self.end
        self.first, self.end, self.live = first, end, live
        self.tail_first = self.scan_first = tail_first
        return changed

    def text(self, index: int, shown: set[int] | None = None) -> str | None:
        offset = index - self.tail_first
        tail = self.state.tail
        if 0 <= offset < len(tail):
            return tail[offset]
        if offset < 0 and self.ready:
            try:
                return self.index.text(index)
            except OSError:  # the run directory went away under us
                return None
        return None

    def release(self) -> None:
        """Not shown any more: keep the index, drop what it cached."""
        if self.index is not None:
            self.index.release()

    def indices(self, whole: bool = True) -> Sequence[int]:
        return range(self.first if whole else self.scan_first, self.end)

    def scan(self, start: int, stop: int) -> Iterator[tuple[int, str]]:
        if start < self.tail_first and self.ready:
            return chain(((n, display_line(raw)) for n, raw in self.index.search(None, start, min(stop, self.tail_first))),
                         self._scan_tail(self.tail_first, stop))
        return self._scan_tail(start, stop)

    def _scan_tail(self, start: int, stop: int) -> Iterator[tuple[int, str]]:
        tail = self.state.tail
        first = self.tail_first
        start = max(start, first)
        stop = min(stop, first + len(tail))
        if start >= stop:
            return iter(())
        if start - first > len(tail) // 2:  # near the end: walk in from the right
            items = list(islice(reversed(tail), first + len(tail) - start))
            items.reverse()
            return zip(range(start, stop), items[: stop - start])
        return zip(range(start, stop), islice(tail, start - first, stop - first))


class CombinedSource(Source):
    """Every rank's lines in arrival order, the same line from several ranks merged."""

    key = "all"
    title = "all ranks"

    def __init__(self, model: JobModel, max_rows: int = 20000, window: int = 256) -> None:
        self.model = model
        self.rows = Collapser(max_rows=max_rows, window=window)
        self.hosts = [r.info.host for r in model.ranks]
        n = len(self.hosts)
        self.prefix_width = max(len(f"[0-{n - 1}] "), *(len(f"[{n - 1}|{h}] ") for h in self.hosts))

    #: Lines read per sync (~10 per second): beyond ~100k lines/s the view shows a gap.
    BUDGET = 10000

    def sync(self) -> bool:
        rows = self.rows
        changed = rows.feed(self.model.combined, self.model.combined_count, self.BUDGET)
        self.dirty_from = rows.dirty_from if changed else rows.end
        self.first, self.end = rows.first, rows.end
        self.evictions = rows.evictions
        return changed

    def text(self, index: int, shown: set[int] | None = None) -> str | None:
        if shown is not None and len(self.rows.ranks_of(index)) > 1:
            row = self.rows.row(index)
            return row.display_for([r for r in row.ranks if r in shown])
        return self.rows.display(index)

    def ranks_of(self, index: int) -> Sequence[int]:
        return self.rows.ranks_of(index)

    def prefix(self, index: int, shown: set[int] | None = None) -> str:
        ranks = self.rows.ranks_of(index)
        if not ranks or ranks[0] == GAP:
            return ""
        if shown is not None:
            ranks = [r for r in ranks if r in shown]
        number = self.model.world.global_rank  # the job's RANK (--no_ssh runs a share of it)
        if len(ranks) == 1:
            rank = ranks[0]
            return f"[{number(rank)}|{self.hosts[rank] if rank < len(self.hosts) else '?'}] "
        return f"[{format_ranks([number(r) for r in ranks])}] "

    def scan(self, start: int, stop: int) -> Iterator[tuple[int, str]]:
        return self.rows.scan(start, stop)

    def indices(self, whole: bool = True) -> Sequence[int]:
        return self.rows.indices()

    @property
    def total(self) -> int:
        return self.model.combined_count


# -- layout: items (lines shown, after filters) and rows (after wrapping) -----------


class Layout:
    """A snapshot of what the view shows, taken at each sync: `items` are the absolute
    numbers of the complete lines shown (a range, or a list when filtered or sparse),
    then the live line if any."""

    __slots__ = ("items", "first", "end", "live", "count", "cum", "height")

    def __init__(self, items: Sequence[int] = range(0), end: int = 0, live: str | None = None,
                 cum: list[int] | None = None) -> None:
        self.items, self.end, self.live = items, end, live
        self.count = len(items)  # complete lines
        self.first = items[0] if self.count else end
        self.cum = cum
        self.height = cum[-1] if cum is not None else self.count + (1 if live is not None else 0)

    @property
    def total_items(self) -> int:
        return self.count + (1 if self.live is not None else 0)

    def item_abs(self, item: int) -> int:
        if item >= self.count:
            return self.end  # the live line
        return self.items[item]

    def abs_to_item(self, index: int) -> int:
        """The item showing line `index`, or the next one shown after it."""
        total = self.total_items
        if total == 0:
            return 0
        if index >= self.end:
            return total - 1
        item = bisect_left(self.items, index)
        return max(0, min(item, total - 1))

    def row_to_item(self, row: int) -> tuple[int, int]:
        if self.cum is None:
            return row, 0
        item = bisect_right(self.cum, row) - 1
        return item, row - self.cum[item]

    def item_row(self, item: int) -> int:
        return item if self.cum is None else self.cum[min(item, len(self.cum) - 1)]


class LogView(ScrollView, can_focus=True):
    """The log of the selected tab. See the module docstring."""

    BINDINGS = [
        Binding("end,G", "follow", "Bottom, and follow new lines", show=False),
        Binding("home,g", "top", "Top (pauses follow)", show=False),
    ]

    DEFAULT_CSS = """
    LogView {
        background: $surface;
        color: $foreground;
        scrollbar-gutter: stable;
    }
    """

    PINNED_MAX = 4000  # lines a paused view keeps after the rings dropped them
    #: Matches a filter takes from a log file, the newest first (a broad filter on a 5 GB
    #: log would otherwise hold tens of millions of line numbers).
    FILE_MATCHES_MAX = 1_000_000

    class Changed(Message):
        """Follow / wrap / search / filter / cursor / source changed (for the status line)."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.source: Source | None = None
        self.palette: Palette | None = None
        self.follow = True
        self.wrap = False
        self.search: Matcher | None = None
        self.filter: Matcher | None = None
        self.rank_mask = None  # a RankQuery: which ranks "all ranks" shows (None: all)
        self.rank_mask_set: set[int] | None = None
        self.cursor: int | None = None  # a line marked by search / error jumps
        self.layout_ = Layout()
        self.searching = False  # a search of a log file is running
        self.filtering = False  # the filter is reading the part of the log file not in memory
        self.filter_capped = False  # it kept only the newest FILE_MATCHES_MAX of the file's matches
        self._filter_generation = 0  # bumped whenever the matches start over
        self._top_pending = False  # `g` while the log file is being indexed
        self._views: dict[str, tuple[bool, int | None, int, int | None]] = {}
        self._syncing = False
        # Lines shown while paused, (text, prefix), kept when the ring drops them.
        self._pinned: dict[int, tuple[str, str]] = {}
        self._reset_derived()

    def _reset_derived(self) -> None:
        self._reset_matches()
        self._wabs: deque[int] = deque()
        self._wrows: deque[int] = deque()
        self._max_width = 0
        self._wscan = 0
        self._wrap_width = 0
        self._evictions = self.source.evictions if self.source is not None else 0
        self._pinned = {}
        self.layout_ = Layout()

    # -- public API used by the app ---------------------------------------------------

    def show(self, source: Source) -> None:
        """Switch to another tab's source, keeping each tab's scroll position."""
        if self.source is not None:
            self._views[self.source.key] = (self.follow, *self._top_anchor(), self.cursor)
            if isinstance(self.source, RankSource) and self.source is not source:
                self.source.release()
        self.source = source
        self._reset_derived()
        follow, anchor, sub, cursor = self._views.get(source.key, (True, None, 0, None))
        self.follow, self.cursor = follow, cursor
        source.sync()
        self.sync(force=True, anchor=None if follow else (anchor, sub))
        self.post_message(self.Changed())

    def sync(self, force: bool = False, anchor: tuple[int | None, int] | None = None) -> bool:
        """Catch up with the source; cheap when nothing changed. True if it did."""
        source = self.source
        if source is None:
            return False
        if not source.sync() and not force:
            return False
        if anchor is None and not self.follow:
            anchor = self._top_anchor()
        if source.evictions != self._evictions:
            self._prune_dropped()
        end = source.end
        live = source.live or None
        if isinstance(source, RankSource) and source.wants_index():
            self._start_indexing(source)
        keep = self._keep()
        if keep is not None:  # filters look at the lines in memory, and the file if there is one
            whole = self._filters_file()
            items: Sequence[int] = self._update_matches(source.scan_first, end, keep, keep_older=whole)
            if whole and self._file_filter_started != self._filter_generation:
                self._start_file_filter()
            if live is not None and self.filter is not None and not self.filter(live):
                live = None
        else:  # wrapped rows are counted for the lines in memory
            items = source.indices(whole=not self.wrap)
        if self._pinned:
            items = self._with_pinned(items)
        width = self._content_width()
        cum = None
        if self.wrap:
            if width != self._wrap_width:
                self._wabs.clear()
                self._wrows.clear()
            self._wrap_width = width
            cum = self._wrap_cum(items, live, width)
        else:
            self._track_width(end, live)
        layout = Layout(items, end, live, cum)
        self.layout_ = layout
        self._syncing = True
        try:
            self._set_virtual_size(Size(width if self.wrap else self._max_width, layout.height))
            if self.follow:
                self.scroll_end(animate=False, immediate=True, x_axis=False)
            elif anchor is not None and anchor[0] is not None:
                item = layout.abs_to_item(anchor[0])
                row = layout.item_row(item) + (anchor[1] if layout.item_abs(item) == anchor[0] else 0)
                if row != int(self.scroll_y):
                    self.scroll_to(y=row, animate=False, immediate=True)
        finally:
            self._syncing = False
        if self._top_pending and not (isinstance(source, RankSource) and (source.indexing or source.wants_index())):
            self._top_pending = False
            self.action_top()
        self.refresh()
        return True

    def _start_indexing(self, source: RankSource) -> None:
        """Index the rank's log file in a worker thread (a 5 GB file takes seconds); the
        view shows the lines in memory meanwhile and the file's lines once it is done."""
        source.indexing = True

        def build() -> None:
            worker = get_current_worker()
            try:
                source.build_index(lambda: worker.is_cancelled)
            finally:
                source.indexing = False

        self.run_worker(build, thread=True, group="index", exit_on_error=False)
        self.post_message(self.Changed())

    def _set_virtual_size(self, size: Size) -> None:
        """Like `self.virtual_size = size` without a re-layout of the whole screen.

        The view's own size is fixed by CSS, so only its scrollbars depend on the
        virtual size; the reactive's layout=True would re-arrange every widget on each
        sync while the rings fill up.
        """
        if size == self.virtual_size:
            return
        scroll_update = getattr(self, "_scroll_update", None)
        if scroll_update is None:  # a Textual without it: the plain (slower) way
            self.virtual_size = size
            return
        self.set_reactive(Widget.virtual_size, size)
        scroll_update(size)

    def set_wrap(self, wrap: bool) -> None:
        anchor = None if self.follow else self._top_anchor()
        self.wrap = wrap
        self._wabs.clear()
        self._wrows.clear()
        self._max_width = self._wscan = 0
        self.scroll_to(x=0, animate=False, immediate=True)
        if self.filter is not None:  # wrapped, a filter covers the lines in memory only
            self._reset_matches()
        self.sync(force=True, anchor=anchor)
        self.post_message(self.Changed())

    def set_filter(self, pattern: str | None) -> None:
        self.filter = Matcher(pattern) if pattern else None
        self._refilter()

    def set_rank_mask(self, query, ranks: set[int] | None) -> None:
        """Which ranks' lines "all ranks" shows: `query` (a RankQuery, for the status
        line) selected `ranks`; None shows every rank."""
        self.rank_mask = query
        self.rank_mask_set = None if query is None else set(ranks or ())
        self._refilter()

    def _refilter(self) -> None:
        anchor = None if self.follow else self._top_anchor()
        self._reset_matches()
        self._wabs.clear()
        self._wrows.clear()
        self._max_width = self._wscan = 0
        self.sync(force=True, anchor=anchor)
        self.post_message(self.Changed())

    def set_search(self, pattern: str | None) -> None:
        self.search = Matcher(pattern) if pattern else None
        self.refresh()
        self.post_message(self.Changed())

    def set_follow(self, follow: bool = True) -> None:
        self.follow = follow
        if follow:
            self.cursor = None
            self._pinned.clear()
            self.sync(force=True)
            self._syncing = True
            try:
                self.scroll_end(animate=False, immediate=True, x_axis=False)
            finally:
                self._syncing = False
            self.refresh()
        self.post_message(self.Changed())

    def find(self, predicate, forward: bool = True, start: int | None = None) -> int | None:
        """The next shown line (absolute index) after `start`/the cursor that matches.
        Blocking: a tab that reads a log file may take seconds (see find_later)."""
        search = self._search_job(predicate, forward, start)
        return None if search is None else search(lambda: False)

    def find_later(self, predicate, then: Callable[[int | None], None], forward: bool = True,
                   start: int | None = None) -> None:
        """find(), and `then(index)`: at once for lines in memory; a tab that reads its
        log file searches it in a worker thread (gigabytes take seconds) and calls `then`
        on the UI thread when done. A newer search replaces one still running."""
        source = self.source
        if self._reads_file() and not source.ready:
            # Its lines are numbered from the file: index it first, then search.
            def prepare() -> None:
                worker = get_current_worker()
                source.build_index(lambda: worker.is_cancelled)
                if not worker.is_cancelled:
                    self.app.call_from_thread(resume)

            def resume() -> None:
                self.searching = False
                self.sync(force=True)
                self.find_later(predicate, then, forward, start)

            self.searching = True
            self.post_message(self.Changed())
            self.run_worker(prepare, thread=True, group="find", exclusive=True, exit_on_error=False)
            return
        search = self._search_job(predicate, forward, start)
        if search is None or not (self._reads_file() or self._shows_file_matches()):
            then(None if search is None else search(lambda: False))
            return

        def run() -> None:
            worker = get_current_worker()
            found = search(lambda: worker.is_cancelled)
            if not worker.is_cancelled:
                self.app.call_from_thread(done, found)

        def done(found: int | None) -> None:
            self.searching = False
            self.sync(force=True)  # the file's lines, if the search indexed it first
            then(found)
            self.post_message(self.Changed())

        self.searching = True
        self.post_message(self.Changed())
        self.run_worker(run, thread=True, group="find", exclusive=True, exit_on_error=False)

    def _reads_file(self) -> bool:
        source = self.source
        return (isinstance(source, RankSource) and source.log_file is not None
                and not source.tail_is_whole() and isinstance(self.layout_.items, range)
                and not self.wrap)

    def _shows_file_matches(self) -> bool:
        """A filtered view holding lines read from the log file: a search through it reads
        them one by one (~2 µs each: seconds for millions), so it runs in a worker."""
        return self._file_matches > 0

    def _search_job(self, predicate, forward: bool, start: int | None):
        """A function (cancelled) -> index doing the search; None if nothing is shown. Its
        state is taken now (on the UI thread), so a file search may run on another."""
        layout, source = self.layout_, self.source
        if source is None or layout.total_items == 0:
            return None
        if start is None:
            start = self.cursor if self.cursor is not None else (
                layout.item_abs(layout.row_to_item(int(self.scroll_y))[0]) - (1 if forward else 0)
            )
        if not self._reads_file():
            order = self._shown_order(layout, start, forward)

            def search(cancelled) -> int | None:
                for n, (index, text) in enumerate(order):
                    if not n % 4096 and cancelled():
                        return None
                    if predicate(text):
                        return index
                return None

            return search
        return self._file_search(source, layout, predicate, start, forward)

    @staticmethod
    def _file_search(source: RankSource, layout: Layout, predicate, start: int, forward: bool):
        """Search lines [0, tail) in the log file (bytes, in big chunks: only lines where
        the pattern's bytes occur are tested), the tail in memory, then the live line."""
        file_end = source.tail_first
        memory = list(source._scan_tail(file_end, layout.end))
        if layout.live is not None:
            memory.append((layout.end, layout.live))
        keys = [i for i, _ in memory]
        finder, fold = getattr(predicate, "finder", (None, False))

        def in_memory(lo: int, hi: int):
            part = memory[bisect_left(keys, lo):bisect_left(keys, hi)]
            return part if forward else reversed(part)

        def in_file(lo: int, hi: int, cancelled):
            lo, hi = max(lo, 0), min(hi, file_end)
            if lo < hi:
                for n, raw in source.index.search(finder, lo, hi, forward, fold, cancelled=cancelled):
                    yield n, display_line(raw)

        def search(cancelled) -> int | None:
            if not source.ready:
                source.build_index(cancelled)  # `n` before the worker got there
            if not source.ready:
                return None
            beyond = layout.end + 1
            sweeps = [(start + 1, beyond), (0, start + 1)] if forward else [(0, start), (start, beyond)]
            for lo, hi in sweeps:
                parts = (in_file(lo, hi, cancelled), in_memory(lo, hi))
                for index, text in chain(*(parts if forward else reversed(parts))):
                    if predicate(text):
                        return index
                if cancelled():
                    return None
            return None

        return search

    def _shown_order(self, layout: Layout, start: int, forward: bool) -> Iterator[tuple[int, str]]:
        """(index, text) of every shown line after `start`, wrapping around once."""
        items = layout.items
        text = self._text

        def texts(lo: int, hi: int) -> Iterator[tuple[int, str]]:
            if isinstance(items, range):
                return self.source.scan(max(lo, items.start), min(hi, items.stop))
            a, b = bisect_left(items, lo), bisect_left(items, hi)
            return ((i, text(i) or "") for i in items[a:b])

        live = layout.live is not None
        first, end = layout.first, layout.end
        if forward:
            yield from texts(start + 1, end)
            if live and end > start:
                yield end, layout.live
            yield from texts(first, min(start + 1, end))
            if live and end <= start:
                yield end, layout.live
        else:
            if live and end < start:
                yield end, layout.live
            yield from reversed(list(texts(first, min(start, end))))
            if live and end >= start:
                yield end, layout.live
            yield from reversed(list(texts(max(start, first), end)))

    def jump_to(self, index: int, center: bool = True, match: Matcher | None = None) -> None:
        """Mark line `index` and scroll it into view (pauses follow); with `match`, also
        the first place it matches: to the right (scrolled) or on a wrapped row."""
        layout = self.layout_
        self.cursor = index
        self.follow = False
        item = layout.abs_to_item(index)
        row = layout.item_row(item)
        column = self._match_column(index, match) if match is not None else None
        height = self.scrollable_content_region.height or self.size.height or 1
        width = self.scrollable_content_region.width or self.size.width or 1
        self._syncing = True
        try:
            if self.wrap and column is not None:
                wrap = self._wrap_width or width
                row += column[0] // wrap
                column = None
            if not (self.scroll_y <= row < self.scroll_y + height):
                target = max(0, row - height // 3) if center else row
                self.scroll_to(y=target, animate=False, immediate=True)
            if column is not None:
                start, stop = column
                if start < self.scroll_x or stop > self.scroll_x + width:
                    x = max(0, start - width // 4) if stop - start < width else start
                    self.scroll_to(x=x, animate=False, immediate=True)
        finally:
            self._syncing = False
        self.refresh()
        self.post_message(self.Changed())

    def _match_column(self, index: int, match: Matcher) -> tuple[int, int] | None:
        """Cells [start, stop) of the first match on line `index`, prefix included."""
        text = self._text(index) if index != self.layout_.end else self.layout_.live
        if text is None:
            return None
        shown = plain(text)
        for start, stop in match.spans(shown):
            offset = len(self._prefix(index))
            return offset + cell_len(shown[:start]), offset + cell_len(shown[:stop])
        return None

    def jump_to_traceback(self, then: Callable[[bool], None] | None = None) -> bool:
        """The last traceback (else the last error) of this tab's lines; False if none.
        With `then`: a tab reading its log file searches it in a worker thread and calls
        then(found) when done (the return value only says whether it is done)."""
        start = sys.maxsize  # from the end (of the file's lines, once they are numbered)
        if then is None:
            for predicate in (TRACEBACK_LINE, ERROR_LINE):
                index = self.find(predicate, forward=False, start=start)
                if index is not None:
                    self.jump_to(index)
                    return True
            return False
        # a finished rank's last traceback is seldom far from its end
        # (a tab whose lines are all in memory answers at once)
        def after_traceback(index: int | None) -> None:
            if index is not None:
                self.jump_to(index)
                then(True)
            else:
                self.find_later(ERROR_LINE, after_error, forward=False, start=start)

        def after_error(index: int | None) -> None:
            if index is not None:
                self.jump_to(index)
            then(index is not None)

        self.find_later(TRACEBACK_LINE, after_traceback, forward=False, start=start)
        return not self.searching

    def current_line(self) -> str | None:
        if self.cursor is None or self.source is None:
            return None
        if self.cursor == self.layout_.end and self.layout_.live is not None:
            return self.layout_.live
        return self._text(self.cursor)

    def visible_text(self) -> list[str]:
        """The rows on screen as plain text (tests, debugging)."""
        return [self.render_line(y).text.rstrip() for y in range(self.size.height)]

    # -- scrolling ----------------------------------------------------------------------

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        if self._syncing:
            return
        # Scrolling up pauses follow; being clamped to a new bottom (a resize) does not.
        if new_value < old_value and self.follow and new_value < self.max_scroll_y:
            self.follow = False
            self.post_message(self.Changed())
        elif not self.follow and new_value > old_value and new_value >= self.max_scroll_y:
            self.follow = True
            self.cursor = None
            self._pinned.clear()
            self.post_message(self.Changed())

    def action_follow(self) -> None:
        self.set_follow(True)

    def action_top(self) -> None:
        self.follow = False
        source = self.source
        if isinstance(source, RankSource):
            # the file's lines first, if its index became ready since the last sync (else the
            # next sync keeps the first line in memory on top, far below the file's start)
            self._top_pending = False
            self.sync(force=True)
            if source.indexing or source.wants_index():
                self._top_pending = True  # the top of the file, once it is indexed
        self.scroll_to(y=0, animate=False, immediate=True)
        self.post_message(self.Changed())

    def on_resize(self) -> None:
        if self.source is not None:
            if self.wrap:
                self._wabs.clear()
                self._wrows.clear()
            self.sync(force=True)

    # -- derived structures -----------------------------------------------------------

    def _content_width(self) -> int:
        return max(1, self.scrollable_content_region.width or self.size.width or 80)

    def _top_anchor(self) -> tuple[int | None, int]:
        layout = self.layout_
        if layout.total_items == 0:
            return None, 0
        item, sub = layout.row_to_item(min(int(self.scroll_y), max(0, layout.height - 1)))
        return layout.item_abs(item), sub

    def _shown_ranks(self) -> set[int] | None:
        return self.rank_mask_set if self.rank_mask is not None else None

    def _text(self, index: int) -> str | None:
        text = self.source.text(index, self._shown_ranks())
        if text is None:
            pinned = self._pinned.get(index)
            return pinned[0] if pinned else None
        return text

    def _prefix(self, index: int) -> str:
        pinned = self._pinned.get(index)
        if pinned is not None:
            return pinned[1]
        return self.source.prefix(index, self._shown_ranks())

    def _keep(self):
        """The (index, text) -> bool test of the filters, or None when all lines show."""
        text_filter = self.filter
        mask = self.rank_mask_set if self.rank_mask is not None else None
        source = self.source
        if mask is not None and isinstance(source, CombinedSource):
            ranks_of = source.ranks_of
            if text_filter is None:
                return lambda i, t: any(r in mask for r in ranks_of(i))
            return lambda i, t: any(r in mask for r in ranks_of(i)) and text_filter(t)
        if text_filter is None:
            return None
        return lambda i, t: text_filter(t)

    def _update_matches(self, first: int, end: int, keep, keep_older: bool = False) -> list[int]:
        """The matching lines from `first` (the first line in memory) to `end`, tested as
        they arrive. `keep_older`: lines that leave memory stay matched (the view reads
        them from the log file, whose older part a worker filters: _start_file_filter)."""
        matches = self._matches
        if self._mfloor is None:
            self._mfloor = max(self._mscan, first)  # _matches holds every match from here on
        if not keep_older:
            if self._moff < len(matches) and matches[self._moff] < first:
                self._moff = bisect_left(matches, first, self._moff)
            self._mfloor = max(self._mfloor, first)
            if self._moff > 4096 and self._moff * 2 > len(matches):
                del matches[: self._moff]
                self._moff = 0
        # Rows that changed (a rank merged into an earlier row) are tested again.
        dirty = self.source.dirty_from
        if dirty < self._mscan:
            del matches[bisect_left(matches, dirty, self._moff):]
            self._mscan = dirty
        start = max(self._mscan, first if not keep_older else self._mfloor)
        if start < end:
            matches.extend(i for i, text in self.source.scan(start, end) if keep(i, text))
        self._mscan = end
        return matches[self._moff:] if self._moff else matches

    # -- a filter over the part of a rank's log file that is not in memory ---------------

    def _filters_file(self) -> bool:
        """The filter covers the rank's whole log file: the view reads the file (not all
        of it is in memory, and its index is built) and does not wrap (wrapped rows are
        counted for the lines in memory only)."""
        source = self.source
        return (self.filter is not None and isinstance(source, RankSource) and source.log_file is not None
                and source.ready and not source.tail_is_whole() and not self.wrap)

    def _reset_matches(self) -> None:
        """The filter's matches start over (a new filter, source, or wrapping)."""
        self._matches: list[int] = []
        self._moff = 0  # matches before it are gone from memory
        self._mscan = 0  # lines before it were tested
        self._restart_file_filter()

    def _restart_file_filter(self) -> None:
        self._filter_generation += 1  # results of an older filter's worker are dropped
        self._file_filter_started = -1
        self._file_matches = 0  # how many of _matches (at its front) came from the file
        self.filter_capped = False
        self._mfloor: int | None = None
        if self.filtering:
            self.filtering = False
            self.workers.cancel_group(self, "filter")

    def _start_file_filter(self) -> None:
        """Filter lines [0, _mfloor) of the log file in a worker thread (gigabytes take
        seconds), from the newest back: their matches go in front of the in-memory ones as
        they are found, up to FILE_MATCHES_MAX."""
        generation = self._file_filter_started = self._filter_generation
        source, matcher, stop = self.source, self.filter, self._mfloor or 0
        if stop <= 0:
            return
        finder, fold = matcher.finder
        post = self.app.call_from_thread
        room = self.FILE_MATCHES_MAX

        def run() -> None:
            worker = get_current_worker()
            found: list[int] = []  # newest first
            sent, total, capped = time.monotonic(), 0, False
            try:
                for number, raw in source.index.search(finder, 0, stop, forward=False, fold=fold,
                                                       cancelled=lambda: worker.is_cancelled):
                    if matcher(display_line(raw)):
                        if total == room:
                            capped = True
                            break
                        found.append(number)
                        total += 1
                    if found and time.monotonic() - sent > 0.25:
                        post(self._add_file_matches, generation, found, False, False)
                        found, sent = [], time.monotonic()
            except OSError:
                pass  # the run directory went away: the lines in memory are what there is
            if not worker.is_cancelled:
                post(self._add_file_matches, generation, found, True, capped)

        self.filtering = True
        self.post_message(self.Changed())
        self.run_worker(run, thread=True, group="filter", exclusive=True, exit_on_error=False)

    def _add_file_matches(self, generation: int, found: list[int], done: bool, capped: bool) -> None:
        """`found`: the next file matches, newest first (older than any before them)."""
        if generation != self._filter_generation:
            return
        if found:
            found.reverse()
            self._matches[self._moff:self._moff] = found
            self._file_matches += len(found)
        if done:
            self.filtering = False
            self.filter_capped = capped
        self.sync(force=True)
        self.post_message(self.Changed())

    def _prune_dropped(self) -> None:
        """The source dropped lines from inside its span (fair share): forget them."""
        self._evictions = self.source.evictions
        has = self.source.rows.rows if isinstance(self.source, CombinedSource) else None
        if has is None:
            return
        pinned = self._pinned
        kept = [i for i in self._matches[self._moff:] if i in has or i in pinned]
        self._matches, self._moff = kept, 0
        pairs = [(i, n) for i, n in zip(self._wabs, self._wrows) if i in has or i in pinned]
        self._wabs = deque(i for i, _ in pairs)
        self._wrows = deque(n for _, n in pairs)

    def _with_pinned(self, items: Sequence[int]) -> Sequence[int]:
        """A paused view's lines stay where they are: those the ring dropped come from
        the copy taken when they were shown."""
        source = self.source
        missing = sorted(i for i in self._pinned if source.text(i) is None)
        if not missing:
            self._pinned = {i: t for i, t in self._pinned.items() if i >= source.first}
            return items
        if isinstance(items, range) and missing[-1] < items.start:
            return missing + list(items)
        return list(merge(missing, items))

    def _pin_visible(self) -> None:
        """Copy what a paused view shows, so it stays while lines flood in."""
        layout = self.layout_
        height = self.size.height or 1
        top = int(self.scroll_y)
        first_item = layout.row_to_item(top)[0]
        last_item = layout.row_to_item(min(top + height, max(0, layout.height - 1)))[0]
        pinned = self._pinned
        shown = self._shown_ranks()
        for item in range(first_item, min(last_item + 1, layout.count)):
            index = layout.items[item]
            if index not in pinned:
                text = self.source.text(index, shown)
                if text is not None:
                    pinned[index] = (text, self.source.prefix(index, shown))
        if len(pinned) > self.PINNED_MAX:
            for index in sorted(pinned)[: len(pinned) - self.PINNED_MAX]:
                del pinned[index]

    def _track_width(self, end: int, live: str | None) -> None:
        # Only lines new since the last sync; the widest line seen sets the scroll range.
        source = self.source
        start = max(self._wscan, source.scan_first)
        texts = [text for _, text in source.scan(start, end)]
        widest = max(self._max_width, max_width(texts) + source.prefix_width)
        if live is not None:
            widest = max(widest, width_of(live))
        self._max_width = widest
        self._wscan = end

    def _wrap_cum(self, items: Sequence[int], live: str | None, width: int) -> list[int]:
        wabs, wrows = self._wabs, self._wrows
        low = items[0] if len(items) else self.source.end
        while wabs and wabs[0] < low:
            wabs.popleft()
            wrows.popleft()
        if wabs and wabs[0] > low:  # lines before the cached ones (pinned): count again
            wabs.clear()
            wrows.clear()
        dirty = self.source.dirty_from
        while wabs and wabs[-1] >= dirty:
            wabs.pop()
            wrows.pop()
        start = wabs[-1] + 1 if wabs else low
        pw = self.source.prefix_width
        text_of = self._text
        for index in items[bisect_left(items, start):]:
            text = text_of(index) or ""
            wabs.append(index)
            w = (len(text) if text.isascii() and text.isprintable() else width_of(text)) + pw
            wrows.append(-(-w // width) if w > width else 1)
        rows = list(wrows)
        if live is not None:
            rows.append(max(1, -(-width_of(live) // width)))
        return list(accumulate(rows, initial=0))

    # -- rendering -----------------------------------------------------------------------

    def render_lines(self, crop):
        if not self.follow and self.source is not None:
            self._pin_visible()
        return super().render_lines(crop)

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width = self.size.width
        base = self.rich_style
        layout = self.layout_
        row = scroll_y + y
        if self.source is None or row >= layout.height or self.palette is None:
            return Strip.blank(width, base)
        item, sub = layout.row_to_item(row)
        index = layout.item_abs(item)
        is_live = index == layout.end and layout.live is not None
        text = layout.live if is_live else self._text(index)
        if text is None:  # dropped from the ring since the last sync
            return Strip.blank(width, base)
        strip, line_style = self._line_strip(index, text, is_live, base)
        if self.wrap:  # the same width the rows were counted with (scrollbar excluded)
            wrap = self._wrap_width or width
            return strip.crop_extend(sub * wrap, (sub + 1) * wrap, line_style).crop_extend(
                0, width, line_style)
        return strip.crop_extend(scroll_x, scroll_x + width, line_style)

    def _line_strip(self, index: int, raw: str, is_live: bool, base: Style) -> tuple[Strip, Style]:
        palette = self.palette
        shown, has_ansi = clean(raw)
        line_style = base + palette.cursor if index == self.cursor else base
        if has_ansi:
            text = Text.from_ansi(shown, no_wrap=True, end="")
            if "\x1b" in text.plain:
                text = Text(text.plain.replace("\x1b", "\ufffd"), end="")
            if "\t" in text.plain:
                text.expand_tabs(8)
        else:
            text = Text(shown, no_wrap=True, end="")
        text.stylize_before(line_style)  # Text.render ignores Text.style: make it a span
        if is_live:
            text.stylize(palette.live)
        elif ERROR_RE.search(text.plain):
            text.stylize(palette.error)
        if self.search is not None:
            for start, stop in self.search.spans(text.plain):
                text.stylize(palette.match, start, stop)
        prefix = self._prefix(index)
        segments = []
        if prefix:
            segments.append(Segment(prefix, line_style + palette.prefix))
        segments.extend(text.render(self.app.console))
        return Strip(segments), line_style
