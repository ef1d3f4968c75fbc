"""flextui.logfile: a log file's lines numbered and searched without holding them."""

from __future__ import annotations

import re

import pytest

from flextui import logfile
from flextui.logfile import LineIndex, byte_finder, display_line


def lines_of(n: int, start: int = 0) -> list[bytes]:
    return [b"line %d %s" % (i, b"x" * (i % 37)) for i in range(start, start + n)]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Blocks and chunks much smaller than a test file, so every boundary is crossed."""
    monkeypatch.setattr(logfile, "BLOCK", 256)
    monkeypatch.setattr(logfile, "CHUNK", 4096)
    monkeypatch.setattr(logfile, "FIRST_CHUNK", 1000)


def write(path, lines: list[bytes], end: bytes = b"\n") -> None:
    path.write_bytes(b"\n".join(lines) + end)


def test_every_line_is_read_back_by_number(tmp_path):
    path = tmp_path / "rank-0.log"
    lines = lines_of(5000)
    write(path, lines)
    index = LineIndex(str(path))
    assert index.update()
    assert index.lines == 5000
    assert len(index._offsets) <= index.size() // 256 + 1  # sparse: one checkpoint a block
    for n in (0, 1, 255, 2500, 4998, 4999):
        assert index.line(n) == lines[n]
    assert [index.line(n) for n in range(5000)] == lines
    assert index.line(5000) is None and index.line(-1) is None
    data = path.read_bytes()
    for n in (0, 17, 4999, 5000):
        assert index.offset_of(n) == (len(b"\n".join(lines[:n])) + 1 if n else 0)
        assert index.line_at(index.offset_of(n)) == n
    assert index.line_at(len(data)) == 5000


def test_a_growing_file_is_indexed_incrementally_and_an_unfinished_line_waits(tmp_path):
    path = tmp_path / "rank-0.log"
    path.write_bytes(b"first\nsecond\nthird, unfin")
    index = LineIndex(str(path))
    index.update()
    assert index.lines == 2 and index.line(1) == b"second" and index.line(2) is None
    with open(path, "ab") as f:
        f.write(b"ished\n" + b"\n".join(lines_of(3000)) + b"\nlast")
    index.update(budget=1000)  # a budget: part of it now, the rest later
    assert 2 < index.lines < 3003
    index.update()
    assert index.lines == 3003
    assert index.line(2) == b"third, unfinished"
    assert index.line(3002) == lines_of(3000)[-1]


def test_update_stops_at_a_limit_the_model_has_reached(tmp_path):
    path = tmp_path / "rank-0.log"
    write(path, lines_of(100))
    index = LineIndex(str(path))
    index.update(limit=index.size() // 2)
    assert 0 < index.lines < 100


def test_display_matches_what_the_model_stores():
    assert display_line(b"10%\r50%\r100%") == "100%"
    assert display_line(b"bad \xff byte") == "bad \ufffd byte"


@pytest.mark.parametrize("forward", [True, False])
def test_search_yields_candidate_lines_in_order(tmp_path, forward):
    path = tmp_path / "rank-0.log"
    lines = lines_of(4000)
    lines[10] = b"a needle here"
    lines[2100] = b"needle again \x1b[31mred\x1b[0m"
    lines[3990] = b"NEEDLE shouting"
    write(path, lines)
    index = LineIndex(str(path))
    index.update()
    found = [n for n, raw in index.search(byte_finder("needle"), 0, 4000, forward) if b"needle" in raw]
    assert found == ([10, 2100] if forward else [2100, 10])
    folded = [n for n, _ in index.search(byte_finder("needle"), 0, 4000, forward, fold=True)]
    assert sorted(folded) == [10, 2100, 3990]
    # a range: only lines inside it, and each candidate's bytes are that line
    inside = list(index.search(byte_finder("needle"), 11, 3990, forward))
    assert [n for n, _ in inside] == [2100]
    assert inside[0][1] == lines[2100]
    # escape sequences: those lines come too (the caller matches them without escapes)
    assert [n for n, _ in index.search(byte_finder("zzz"), 0, 4000, forward)] == [2100]
    assert list(index.search(byte_finder("zzz"), 0, 4000, forward, also=None)) == []


def test_search_with_a_regex_and_without_a_finder(tmp_path):
    path = tmp_path / "rank-0.log"
    lines = lines_of(3000)
    write(path, lines)
    index = LineIndex(str(path))
    index.update()
    hits = [n for n, raw in index.search(byte_finder(r"^line 2\d\d9 "), 0, 3000) if re.search(rb"^line 2\d\d9 ", raw)]
    assert hits == list(range(2009, 3000, 10))
    assert [n for n, _ in index.search(None, 1000, 1010, forward=False)] == list(range(1009, 999, -1))
    assert [raw for _, raw in index.search(None, 0, 3000)] == lines


def test_literal_patterns_use_bytes_find_and_regexes_compile():
    assert byte_finder(r"Traceback \(most recent call last\)")(b"x Traceback (most recent call last)", 0, 99) == 2
    assert byte_finder(r"loss=\d+")(b"a loss=12", 0, 9) == 2
    assert byte_finder(r"loss=\d+")(b"a loss=12", 0, 6) == -1
    assert byte_finder(r"\N{BULLET}") is None  # no bytes form: the caller tests every line


def test_a_search_can_be_cancelled(tmp_path):
    path = tmp_path / "rank-0.log"
    write(path, lines_of(3000))
    index = LineIndex(str(path))
    index.update()
    assert list(index.search(None, 0, 3000, cancelled=lambda: True)) == []
    assert not LineIndex(str(path)).update(cancelled=lambda: True)


def test_no_descriptor_stays_open_between_calls(tmp_path):
    """A console that visited 512 ranks' tabs must not hold 512 open files."""
    import os

    path = tmp_path / "rank-0.log"
    write(path, lines_of(3000))
    before = len(os.listdir("/proc/self/fd"))
    index = LineIndex(str(path))
    index.update()
    assert index.line(2999) == lines_of(3000)[-1]
    assert next(index.search(byte_finder("line 2999"), 0, 3000))[0] == 2999
    index.release()
    assert len(os.listdir("/proc/self/fd")) == before
