"""The "all ranks" view's rows: every rank's lines in arrival order, with the same line
from several ranks merged into one row ("[0-63] INFO trainer: config lr=0.1"). Textual-free.

It reads the model's bounded combined ring incrementally and keeps its own bounded set
of rows, numbered absolutely like the rank tails. A line merges into an earlier row if
that row is among the last `window` rows, comes after that rank's own last row (each
rank's lines stay in their order), and says the same
once a leading timestamp and the rank's own number ("rank 7", "[rank7]", "RANK=7",
"[default7]") are set aside: blocks that every rank prints line by line (config dumps,
warnings) become one block, even when their lines interleave.

Memory is shared fairly: past `max_rows`, rows are dropped oldest first from the ranks
that hold the most, so one rank flooding cannot push every other rank's lines out (its
own oldest lines go; each rank's full log is in the run directory). Dropped rows leave
holes in the numbering; `indices()` lists the rows kept.
"""

from __future__ import annotations

import re
from collections import deque
from itertools import islice

GAP = -1  # the rank list of a row that marks lines this view never saw

_TIMESTAMP_RE = re.compile(
    r"\[?(?:\d{4}-\d\d-\d\d[T ])?\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?\]?[\s:|-]*")
RANK_PLACEHOLDER = "{rank}"


def collapse_key(text: str, rank: int) -> tuple[str, int]:
    """(what the line says without its timestamp and own rank number, timestamp length).

    Plain string scanning: this runs on every line of every rank ("all ranks" is fed all
    the time), so no scanning regex (~10x slower); only a line that starts like a
    timestamp meets one, anchored."""
    cut = 0
    first = text[:1]
    if first.isdigit() or first == "[" and text[1:2].isdigit():
        match = _TIMESTAMP_RE.match(text)
        if match:
            cut = match.end()
    body = text[cut:] if cut else text
    own = str(rank)
    if own not in body:
        return body, cut
    spans = []
    if "ank" in body or "ANK" in body:
        low = body.lower()
        at = low.find("rank")
        while at >= 0:
            if at == 0 or not (body[at - 1].isalnum() or body[at - 1] == "_"):  # not local_rank
                j = at + 4
                while body[j:j + 1] in (" ", "=", ":", "#", "["):
                    j += 1
                end = j + len(own)
                if body.startswith(own, j) and not body[end:end + 1].isdigit():
                    spans.append((j, end))
            at = low.find("rank", at + 4)
    at = body.find("[default")
    while at >= 0:
        j, end = at + 8, at + 8 + len(own)
        if body.startswith(own, j) and not body[end:end + 1].isdigit():
            spans.append((j, end))
        at = body.find("[default", at + 8)
    if not spans:
        return body, cut
    pieces, last = [], 0
    for start, stop in sorted(spans):
        pieces += (body[last:start], RANK_PLACEHOLDER)
        last = stop
    pieces.append(body[last:])
    return "".join(pieces), cut


class Row:
    """A row as readers see it, made on demand from the stored tuple (see Collapser.rows)."""

    __slots__ = ("text", "ranks", "key", "cut")

    def __init__(self, text: str, ranks: list[int], key: str | None = None, cut: int = 0) -> None:
        self.text = text  # the first line, as that rank wrote it
        self.ranks = ranks
        self.key = text if key is None else key
        self.cut = cut

    @property
    def display(self) -> str:
        """One rank: its line. Several: the first's timestamp and what they all said."""
        return _display(self.text, self.ranks, self.key, self.cut)

    def display_for(self, ranks: list[int]) -> str:
        """What the row says for some of its ranks: one rank gets its own number back."""
        if len(ranks) == 1 and len(self.ranks) > 1:
            return self.text[: self.cut] + self.key.replace(RANK_PLACEHOLDER, str(ranks[0]))
        return self.display


def _display(text: str, ranks, key: str, cut: int) -> str:
    if len(ranks) == 1 or cut == 0 and key == text:
        return text
    return text[:cut] + key


def format_ranks(ranks: list[int]) -> str:
    """[0, 1, 2, 3, 5, 7, 8] -> "0-3,5,7-8"."""
    if len(ranks) == 1:
        return str(ranks[0])
    parts = []
    ordered = sorted(ranks)
    start = prev = ordered[0]
    for r in ordered[1:]:
        if r == prev + 1:
            prev = r
            continue
        parts.append(f"{start}-{prev}" if prev > start else str(start))
        start = prev = r
    parts.append(f"{start}-{prev}" if prev > start else str(start))
    return ",".join(parts)


class Collapser:
    def __init__(self, max_rows: int = 20000, window: int = 256) -> None:
        # absolute number -> (text, ranks, key, cut), ascending. Plain tuples of str/int on
        # purpose: CPython's collector stops tracking such tuples, so 100k rows (512 ranks)
        # add nothing to the full collections that otherwise stall every key by 100-200 ms.
        self.rows: dict[int, tuple[str, tuple[int, ...], str, int]] = {}
        self.max_rows = max_rows
        self.window = window
        self.end = 0  # absolute number of the next row
        self.consumed = 0  # how many of the model's combined lines were read
        self.dirty_from = 0  # lowest row changed by the last feed()
        self.dropped = 0  # rows dropped so far (fair share)
        self.evictions = 0  # bumped whenever rows were dropped (readers prune their lists)
        self._owned: dict[int, deque[int]] = {}  # rank -> its rows (by first rank), oldest first
        self._first = 0  # the oldest kept row
        self._last_row: dict[int, int] = {}  # rank -> the newest row holding it
        self._recent: dict[str, int] = {}

    @property
    def first(self) -> int:
        return self._first if self.rows else self.end

    def row(self, index: int) -> Row | None:
        stored = self.rows.get(index)
        return None if stored is None else Row(stored[0], list(stored[1]), stored[2], stored[3])

    def ranks_of(self, index: int) -> tuple[int, ...]:
        stored = self.rows.get(index)
        return () if stored is None else stored[1]

    def display(self, index: int) -> str | None:
        stored = self.rows.get(index)
        return None if stored is None else _display(*stored)

    def indices(self) -> range | list[int]:
        """The kept rows' numbers, ascending (a range while nothing was dropped inside)."""
        first = self.first
        if len(self.rows) == self.end - first:
            return range(first, self.end)
        return list(self.rows)

    def scan(self, start: int, stop: int):
        """(index, what it shows) of the kept rows in [start, stop)."""
        return ((i, _display(*stored)) for i, stored in self._scan(start, stop))

    def _scan(self, start: int, stop: int):
        rows = self.rows
        if len(rows) == self.end - self.first:  # no holes: slice by position
            first = self.first
            start, stop = max(start, first), min(stop, self.end)
            if start >= stop:
                return iter(())
            if start - first > len(rows) // 2:  # near the end: walk in from the right
                tail = list(islice(reversed(rows.items()), self.end - start))
                tail.reverse()
                return iter(tail[: stop - start])
            return islice(rows.items(), start - first, stop - first)
        return ((i, r) for i, r in rows.items() if start <= i < stop)

    def feed(self, combined: deque, total: int, budget: int | None = None) -> bool:
        """Read what `combined` (a ring that has seen `total` lines) got since last time;
        at most `budget` lines (the newest): past some 100k lines/s "all ranks" shows
        where it skipped instead of spending the console's CPU on it."""
        new = total - self.consumed
        if new <= 0:
            return False
        self.consumed = total
        self.dirty_from = self.end
        keep = min(len(combined), budget or len(combined))
        if new > keep:
            missed = new - keep
            gap = f"… {missed} line(s) not shown (see the run directory) …"
            self._append((gap, (GAP,), gap, 0))
            self._recent.clear()
            new = keep
        if new == len(combined):
            entries = list(combined)
        else:
            entries = list(islice(reversed(combined), new))
            entries.reverse()
        self.add(entries)
        return True

    def add(self, entries: list[tuple[int, str]]) -> None:
        recent, rows, owned_by, last = self._recent, self.rows, self._owned, self._last_row
        end, window = self.end, self.window
        if not rows:
            self._first = end
        for rank, text in entries:  # the hot loop of "all ranks": kept plain
            first = text[:1]
            if first.isdigit() or first == "[" or "ank" in text or "ANK" in text or "default" in text:
                key, cut = collapse_key(text, rank)
            else:
                key, cut = text, 0
            index = recent.get(key)
            # A rank's lines keep their order: it joins a row after its own last one only.
            if index is not None and index >= end - window and index > last.get(rank, -1):
                row = rows.get(index)
                if row is not None:
                    rows[index] = (row[0], row[1] + (rank,), row[2], row[3])
                    last[rank] = index
                    if index < self.dirty_from:
                        self.dirty_from = index
                    continue
            rows[end] = (text, (rank,), key, cut)
            last[rank] = end
            owned = owned_by.get(rank)
            if owned is None:
                owned = owned_by[rank] = deque()
            owned.append(end)
            recent[key] = end
            end += 1
        self.end = end
        if len(recent) > 4 * window + 1024:
            floor = end - window
            self._recent = {t: i for t, i in recent.items() if i >= floor}
        if len(rows) > self.max_rows + self.max_rows // 20:
            self._drop_fairly()

    def _append(self, row: tuple[str, tuple[int, ...], str, int]) -> None:
        if not self.rows:
            self._first = self.end
        self.rows[self.end] = row
        owner = row[1][0]
        owned = self._owned.get(owner)
        if owned is None:
            owned = self._owned[owner] = deque()
        owned.append(self.end)
        self.end += 1

    def _drop_fairly(self) -> None:
        """Down to max_rows: every rank keeps min(its rows, cap), cap as high as fits."""
        sizes = sorted(len(owned) for owned in self._owned.values())
        budget, used = self.max_rows, 0
        cap = None
        for i, size in enumerate(sizes):
            holders = len(sizes) - i
            if used + size * holders > budget:
                cap = (budget - used) // holders
                break
            used += size
        if cap is None:
            return
        rows = self.rows
        for owned in self._owned.values():
            while len(owned) > cap:
                del rows[owned.popleft()]
                self.dropped += 1
        self._owned = {owner: owned for owner, owned in self._owned.items() if owned}
        self._first = min((owned[0] for owned in self._owned.values()), default=self.end)
        self.evictions += 1
