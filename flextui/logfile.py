"""A rank's log file, read on demand: an incremental line index of a growing file.

The console holds only the last lines of each rank in memory (model.RankState.tail); the
rest of a long run lives in its log file. `LineIndex` numbers the file's lines without
holding them (as Textualize's Toolong does): it scans the file once, in big chunks at the
speed of `bytes.count`, and keeps a checkpoint (line number, byte offset) about every
`BLOCK` bytes — 5 GB of log costs ~80k checkpoints (~1.3 MB), not an offset per line.
A line is read by seeking to its checkpoint and splitting one block (a few blocks stay
cached for drawing a screen); `update()` indexes what the file grew by since.

`search()` scans a range of lines forward or backward for a byte pattern, a chunk of
megabytes at a time, and yields only the lines that can match (the caller tests those
with its own text predicate): a search through gigabytes runs at the speed of `re` over
bytes, not of a Python loop over lines.

Textual-free and thread-friendly: an index may be built or searched from a worker thread
while the UI thread reads lines (updates take a lock; readers see only published lines).
"""

from __future__ import annotations

import os
import re
import threading
from array import array
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable, Iterator

from flextui.model import _after_carriage_return

#: A checkpoint (line number, offset) at the first line start after every BLOCK bytes.
BLOCK = 64 * 1024
#: Bytes read at a time when indexing or searching.
CHUNK = 1024 * 1024  # (bigger ones cost more: fresh pages for each)
#: The first chunk of a search is small, so a match near the start shows at once.
FIRST_CHUNK = 256 * 1024
#: A line longer than this is shown cut here (the file keeps all of it).
MAX_LINE_BYTES = 1 << 20
#: Blocks kept decoded for drawing (a screen needs one or two).
CACHED_BLOCKS = 16

Cancelled = Callable[[], bool]


def display_line(raw: bytes) -> str:
    """A log line as the console shows it (and as RankState.add_output stores it):
    undecodable bytes replaced, a progress bar's carriage returns applied."""
    line = raw.decode("utf-8", "replace")
    return _after_carriage_return(line) if "\r" in line else line


#: Finds where a pattern may match in bytes[pos:end]: its offset, or -1.
Finder = Callable[[bytes, int, int], int]

_REGEX_SYNTAX = re.compile(r"[.^$*+?{}\[\]|()\\]")


def byte_finder(pattern: str) -> Finder | None:
    """A Finder for a text regex in raw log bytes (a plain string is found with
    bytes.find, at memchr speed), or None when it has no bytes form. Lines it finds are
    candidates (bytes regexes know only ASCII classes and cases): test their text."""
    literal = re.sub(r"\\(\W)", "", pattern)
    if not _REGEX_SYNTAX.search(literal):
        needle = re.sub(r"\\(\W)", r"\1", pattern).encode("utf-8", "surrogateescape")
        if needle and b"\n" not in needle:
            return lambda hay, pos, end: hay.find(needle, pos, end)
    try:
        regex = re.compile(pattern.encode("utf-8", "surrogateescape"), re.MULTILINE)
    except (re.error, UnicodeError, ValueError):
        return None

    def find(hay: bytes, pos: int, end: int) -> int:
        match = regex.search(hay, pos, end)
        return -1 if match is None else match.start()

    return find


class LineIndex:
    """The lines of the log file at `path`, numbered from 0: line N is the text after the
    N-th newline (a line is complete once its newline is written)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lines = 0  # complete lines indexed
        self.indexed = 0  # byte offset just after the last indexed newline
        self.scanned = 0  # bytes looked at (beyond `indexed`: an unfinished, long line)
        self._offsets = array("Q", [0])  # checkpoints: a line start ...
        self._numbers = array("Q", [0])  # ... and its line number
        self._update_lock = threading.Lock()
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int], list[bytes]] = OrderedDict()  # (k, end)

    # -- the file -----------------------------------------------------------------------

    def _open(self) -> int:
        return os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def size(self) -> int:
        try:
            return os.stat(self.path).st_size
        except OSError:
            return 0

    def _read(self, offset: int, size: int, fd: int | None = None) -> bytes:
        """Bytes at offset. No descriptor stays open between calls (a console may have
        visited 512 ranks' tabs): a long operation passes its own `fd`."""
        if fd is not None:
            return os.pread(fd, size, offset)
        fd = self._open()
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def release(self) -> None:
        """Drop the cached blocks (the tab is no longer shown)."""
        with self._cache_lock:
            self._cache.clear()

    # -- indexing -----------------------------------------------------------------------

    def update(self, limit: int | None = None, budget: int | None = None,
               cancelled: Cancelled | None = None, blocking: bool = True) -> bool:
        """Index the file up to byte `limit` (default: its size), reading at most `budget`
        bytes. True when it got there (False: budget spent, cancelled, or another thread
        is indexing and `blocking` is False)."""
        if not self._update_lock.acquire(blocking):
            return False
        try:
            end = self.size() if limit is None else min(limit, self.size())
            if self.scanned >= end:
                return True
            spent, fd = 0, self._open()
            try:
                while self.scanned < end:
                    if budget is not None and spent >= budget or cancelled is not None and cancelled():
                        return False
                    data = self._read(self.scanned, min(CHUNK, end - self.scanned), fd)
                    if not data:
                        break
                    self._scan(data, self.scanned)
                    spent += len(data)
            finally:
                os.close(fd)
            return True
        finally:
            self._update_lock.release()

    def _scan(self, data: bytes, base: int) -> None:
        offsets, numbers = self._offsets, self._numbers
        lines, start = self.lines, 0
        find, count = data.find, data.count
        while True:
            target = offsets[-1] + BLOCK - base
            newline = find(b"\n", target if target > start else start)
            if newline < 0:
                break
            lines += count(b"\n", start, newline + 1)
            start = newline + 1
            offsets.append(base + start)
            numbers.append(lines)
        lines += count(b"\n", start)
        last = data.rfind(b"\n")
        if last >= 0:
            self.indexed = base + last + 1
        self.scanned = base + len(data)
        self.lines = lines  # last: a reader on another thread sees only indexed lines

    # -- reading lines --------------------------------------------------------------------

    def _block(self, n: int) -> tuple[int, int, int]:
        """(checkpoint k, its line number, its offset) of the block holding line n."""
        k = bisect_right(self._numbers, n) - 1
        return k, self._numbers[k], self._offsets[k]

    def _block_end(self, k: int) -> int:
        return self._offsets[k + 1] if k + 1 < len(self._offsets) else self.indexed

    def line(self, n: int) -> bytes | None:
        """Line n's bytes without its newline (at most MAX_LINE_BYTES), None if not indexed."""
        if not 0 <= n < self.lines:
            return None
        k, first, start = self._block(n)
        end = self._block_end(k)
        if end - start > 4 * BLOCK:  # one or a few very long lines: read just this one
            begin = self.offset_of(n)
            raw = self._read(begin, MAX_LINE_BYTES + 1)
            cut = raw.find(b"\n")
            return raw[:cut] if cut >= 0 else raw[:MAX_LINE_BYTES]
        key = (k, end)  # the last block grows with the file
        with self._cache_lock:
            lines = self._cache.get(key)
            if lines is not None:
                self._cache.move_to_end(key)
        if lines is None:
            lines = self._read(start, end - start).split(b"\n")
            lines.pop()  # after the block's last newline: the next block
            with self._cache_lock:
                self._cache[key] = lines
                while len(self._cache) > CACHED_BLOCKS:
                    self._cache.popitem(last=False)
        offset = n - first
        return lines[offset] if offset < len(lines) else None

    def text(self, n: int) -> str | None:
        raw = self.line(n)
        return None if raw is None else display_line(raw)

    def offset_of(self, n: int) -> int:
        """Byte offset where line n starts (n == lines: just after the last newline)."""
        if n >= self.lines:
            return self.indexed
        k, first, pos = self._block(max(0, n))
        skip = n - first
        while skip:
            data = self._read(pos, min(CHUNK, max(BLOCK, self._block_end(k) - pos)))
            if not data:
                return self.indexed
            found = data.count(b"\n")
            if found < skip:
                skip -= found
                pos += len(data)
                continue
            at = -1
            for _ in range(skip):
                at = data.find(b"\n", at + 1)
            return pos + at + 1
        return pos

    def line_at(self, offset: int) -> int:
        """How many complete lines end before byte `offset` (the line it falls in)."""
        if offset >= self.indexed:
            return self.lines
        k = bisect_right(self._offsets, offset) - 1
        pos, lines = self._offsets[k], self._numbers[k]
        while pos < offset:
            data = self._read(pos, min(CHUNK, offset - pos))
            if not data:
                break
            lines += data.count(b"\n")
            pos += len(data)
        return lines

    # -- searching --------------------------------------------------------------------------

    def search(self, finder: Finder | None, start: int, stop: int, forward: bool = True,
               fold: bool = False, also: bytes | None = b"\x1b",
               cancelled: Cancelled | None = None) -> Iterator[tuple[int, bytes]]:
        """(line number, bytes) of the lines in [start, stop) where `finder` finds its
        pattern, in order (backward: from stop - 1 down). With `fold`, it looks in the
        lower-cased bytes (a case-folding search). Lines holding `also` (escape sequences,
        which the caller strips before matching) come too; with no finder, every line.
        Candidates, not matches: the caller tests each line's text."""
        start, stop = max(0, start), min(stop, self.lines)
        if start >= stop:
            return
        low, high = self.offset_of(start), self.offset_of(stop)
        fd = self._open()
        try:
            yield from self._search(fd, finder, low, high, forward, fold, also, cancelled)
        finally:
            os.close(fd)

    def _search(self, fd: int, finder: Finder | None, low: int, high: int, forward: bool, fold: bool,
                also: bytes | None, cancelled: Cancelled | None) -> Iterator[tuple[int, bytes]]:
        chunks = self._chunks_forward(fd, low, high) if forward else self._chunks_backward(fd, low, high)
        for base, data, lo, hi in chunks:
            if cancelled is not None and cancelled():
                return
            hits = self._candidates(data, lo, hi, finder, fold, also)
            if not forward:
                hits = reversed(list(hits))
            line = -1
            previous = 0
            for at in hits:
                begin = data.rfind(b"\n", lo, at) + 1 or lo
                if line < 0:  # the first in this chunk: numbered from the index's checkpoint
                    line = self.line_at(base + begin)
                elif forward:
                    line += data.count(b"\n", previous, begin)
                else:
                    line -= data.count(b"\n", begin, previous)
                previous = begin
                end = data.find(b"\n", at, hi)
                yield line, data[begin:end if end >= 0 else hi]

    def _chunks_forward(self, fd: int, low: int, high: int) -> Iterator[tuple[int, bytes, int, int]]:
        """(file offset of data, data, lo, hi): data[lo:hi] are whole lines."""
        pos, size = low, FIRST_CHUNK
        while pos < high:
            data = self._read(pos, min(size, high - pos), fd)
            if not data:
                return
            hi = len(data)
            if pos + hi < high:
                hi = data.rfind(b"\n") + 1 or hi  # a line longer than a chunk: searched in pieces
            yield pos, data, 0, hi
            pos += hi
            size = CHUNK

    def _chunks_backward(self, fd: int, low: int, high: int) -> Iterator[tuple[int, bytes, int, int]]:
        pos, size = high, FIRST_CHUNK
        while pos > low:
            begin = max(low, pos - size)
            data = self._read(begin, pos - begin, fd)
            if not data:
                return
            lo = 0
            if begin > low:
                lo = data.find(b"\n") + 1
                if not lo or lo >= len(data):
                    lo = 0
            yield begin, data, lo, len(data)
            pos = begin + lo
            size = CHUNK

    @staticmethod
    def _candidates(data: bytes, lo: int, hi: int, finder: Finder | None, fold: bool,
                    also: bytes | None) -> Iterator[int]:
        """Positions in data[lo:hi] (ascending, at most one per line) of the lines worth testing."""
        find = data.find
        if finder is None:
            pos = lo
            while pos < hi:
                yield pos
                pos = find(b"\n", pos, hi) + 1
                if not pos:
                    return
            return
        hay = data.lower() if fold else data
        pos = lo
        next_also = find(also, lo, hi) if also is not None and also in data else -1
        while pos < hi:
            at = finder(hay, pos, hi)
            if next_also >= 0 and (at < 0 or next_also < at):
                at = next_also
            if at < 0:
                return
            yield at
            pos = find(b"\n", at, hi) + 1
            if not pos:
                return
            if 0 <= next_also < pos:
                next_also = find(also, pos, hi)
