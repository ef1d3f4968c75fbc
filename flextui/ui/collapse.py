"""The "all ranks" view's rows: every rank's lines in arrival order, with the same line
from several ranks merged into one row ("[0-7] loss 1.0"). Textual-free.

It reads the model's bounded combined ring incrementally (only while the view is shown)
and keeps its own bounded ring of rows, numbered absolutely like the rank tails.
A line merges into an earlier row with the same text if that row is among the last
`window` rows and does not hold that rank yet, so blocks that ranks print line by line
(config dumps, warnings) collapse even when their lines interleave.
"""

from __future__ import annotations

from collections import deque
from itertools import islice

GAP = -1  # the rank list of a row that marks lines this view never saw


class Row:
    __slots__ = ("text", "ranks")

    def __init__(self, text: str, ranks: list[int]) -> None:
        self.text = text
        self.ranks = ranks


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
        self.rows: deque[Row] = deque(maxlen=max_rows)
        self.window = window
        self.end = 0  # absolute number of the next row
        self.consumed = 0  # how many of the model's combined lines were read
        self.dirty_from = 0  # lowest row changed by the last feed()
        self._recent: dict[str, int] = {}

    @property
    def first(self) -> int:
        return self.end - len(self.rows)

    def row(self, index: int) -> Row | None:
        offset = index - self.first
        if 0 <= offset < len(self.rows):
            return self.rows[offset]
        return None

    def feed(self, combined: deque, total: int) -> bool:
        """Read what `combined` (a ring that has seen `total` lines) got since last time."""
        new = total - self.consumed
        if new <= 0:
            return False
        self.consumed = total
        self.dirty_from = self.end
        if new > len(combined):
            missed = new - len(combined)
            self._append(Row(f"… {missed} line(s) not shown (see the run directory) …", [GAP]))
            self._recent.clear()
            new = len(combined)
        if new == len(combined):
            entries = list(combined)
        else:
            entries = list(islice(reversed(combined), new))
            entries.reverse()
        self.add(entries)
        return True

    def add(self, entries: list[tuple[int, str]]) -> None:
        recent = self._recent
        rows = self.rows
        window = self.window
        for rank, text in entries:
            index = recent.get(text)
            if index is not None and index >= self.end - window:
                row = rows[index - self.end]  # negative offset: cheap from the right
                if rank not in row.ranks:
                    row.ranks.append(rank)
                    if index < self.dirty_from:
                        self.dirty_from = index
                    continue
            rows.append(Row(text, [rank]))
            recent[text] = self.end
            self.end += 1
        if len(recent) > 4 * window + 1024:
            floor = self.end - window
            self._recent = {t: i for t, i in recent.items() if i >= floor}

    def _append(self, row: Row) -> None:
        self.rows.append(row)
        self.end += 1
