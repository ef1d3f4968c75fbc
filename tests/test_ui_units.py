"""UI pieces that need no running app: collapsing, formatting, themes, line cleaning."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import pytest

from flextui.model import JobModel
from flextui.ui.collapse import GAP, Collapser, format_ranks
from flextui.diagnosis import ERROR_RE, RateMeter, job_state_text, status_text
from flextui.ui.format import fmt_duration, fmt_rate
from flextui.ui.logview import Matcher, clean, max_width, plain, width_of
from flextui.ui.testing import demo_job
from flextui.ui.theming import (
    BUILTIN_DIR, STATUS_VARIABLES, Palette, ThemeError, load_theme_file, load_themes, resolve_theme,
)
from flextui.world import World

REPO = Path(__file__).resolve().parent.parent


# -- the "all ranks" collapse ----------------------------------------------------------


def test_format_ranks():
    assert format_ranks([3]) == "3"
    assert format_ranks([0, 1, 2, 3, 4, 5, 6, 7]) == "0-7"
    assert format_ranks([7, 0, 2, 1, 5]) == "0-2,5,7"


def kept(rows: Collapser) -> list:
    return [rows.row(i) for i in rows.indices()]


def test_identical_lines_from_many_ranks_collapse_into_one_row():
    rows = Collapser(window=64)
    rows.add([(r, "loss 1.0") for r in range(8)])
    assert len(rows.rows) == 1 and kept(rows)[0].ranks == list(range(8))


def test_interleaved_blocks_collapse_line_by_line():
    rows = Collapser(window=64)
    block = ["== config ==", "lr 0.1", "batch 8"]
    rows.add([(r, line) for r in range(4) for line in block])
    assert [(r.text, format_ranks(r.ranks)) for r in kept(rows)] == [
        ("== config ==", "0-3"), ("lr 0.1", "0-3"), ("batch 8", "0-3")]


def test_same_rank_repeating_a_line_makes_a_new_row_and_distinct_lines_stay():
    rows = Collapser(window=64)
    rows.add([(0, "tick"), (0, "tick"), (1, "rank 1 step 1"), (2, "rank 2 step 1")])
    # "rank 1 step 1" and "rank 2 step 1" say the same but for their own rank: one row
    assert [(r.display, r.ranks) for r in kept(rows)] == [
        ("tick", [0]), ("tick", [0]), ("rank {rank} step 1", [1, 2])]


def test_merges_only_within_the_window():
    rows = Collapser(window=4)
    rows.add([(0, "same")] + [(0, f"line {i}") for i in range(10)] + [(1, "same")])
    assert kept(rows)[0].ranks == [0] and kept(rows)[-1].text == "same" and kept(rows)[-1].ranks == [1]


def test_feed_reads_incrementally_and_marks_what_it_missed():
    combined: deque = deque(maxlen=5)
    rows = Collapser(max_rows=100)
    combined.extend([(0, "a"), (1, "b")])
    assert rows.feed(combined, 2) and [r.text for r in kept(rows)] == ["a", "b"]
    assert not rows.feed(combined, 2)
    combined.extend((0, f"x{i}") for i in range(10))  # 12 seen, ring keeps 5
    rows.feed(combined, 12)
    texts = [r.text for r in kept(rows)]
    assert texts[2].startswith("… 5 line(s) not shown") and kept(rows)[2].ranks == [GAP]
    assert texts[3:] == [f"x{i}" for i in range(5, 10)]


def test_rows_are_bounded_and_numbered_absolutely():
    rows = Collapser(max_rows=10)
    rows.add([(0, f"l{i}") for i in range(25)])
    assert len(rows.rows) == 10 and rows.first == 15 and rows.end == 25
    assert rows.row(15).text == "l15" and rows.row(14) is None


def test_model_feeds_the_combined_ring_including_final_partial_lines():
    model = JobModel(World.from_slots({"localhost": [0, 1]}), "r", combined_lines=3)
    model.apply(0, {"ev": "out", "rank": 0, "data": "a\nb\n"})
    model.apply(0, {"ev": "out", "rank": 1, "data": "c\npartial"})
    model.apply(0, {"ev": "exited", "rank": 1, "code": 0, "t": 1.0})
    assert list(model.combined) == [(0, "b"), (1, "c"), (1, "partial")]
    assert model.combined_count == 4


# -- plain-text formatting ---------------------------------------------------------------


def test_status_words_follow_the_issue():
    job = demo_job()
    words = [status_text(r) for r in job.model.ranks]
    assert words[0] == "running" and words[5] == "failed 1" and words[7] == "stopped SIGTERM"
    job.exit(0, code=0)
    job.exit(1, code=None, signal=9)
    assert status_text(job.model.ranks[0]) == "exited 0"
    assert status_text(job.model.ranks[1]) == "killed SIGKILL"


def test_durations_rates_and_countdown():
    assert fmt_duration(3.21) == "3.2s" and fmt_duration(42.7) == "42s" and fmt_duration(125) == "2:05" and fmt_duration(3725) == "1:02:05"
    assert fmt_rate(0) == "-" and fmt_rate(2.34) == "2.3" and fmt_rate(999) == "999" and fmt_rate(64000) == "64k"
    job = demo_job()
    assert job_state_text(job.model, job.t0 + 11) == ("stopping — SIGKILL in 8s", "killed")
    assert job_state_text(job.model, job.t0 + 30) == ("stopping — SIGKILL sent", "killed")


def test_rate_meter():
    job = demo_job()
    meter = RateMeter(job.model)
    assert not meter.sample(100.0)
    job.out(0, "x\n" * 50)
    assert meter.sample(101.0)
    assert meter.rates[0] == 50 and meter.total == 50


# -- line cleaning, search --------------------------------------------------------------


def test_clean_makes_any_line_safe_to_draw():
    assert clean("plain text") == ("plain text", False)
    text, ansi = clean("\x1b[31mred\x1b[0m\tand a bell\x07 and C1\x9b")
    assert ansi and "\x07" not in text and "\x9b" not in text
    assert plain("\x1b[31mred\x1b[0m\tx") == "red     x"  # tabs expand after the escapes go
    assert clean("a\tb") == ("a       b", False)
    assert "?" in clean("bad \udcff byte")[0]  # a lone surrogate is not drawn
    assert width_of("日本") == 4 and width_of("abc") == 3
    assert max_width(["a", "abcd", "日本語"]) == 6 and max_width([]) == 0


def test_matcher_is_smart_case():
    assert Matcher("loss")("Step 1 LOSS 3") and not Matcher("Loss")("loss 3")
    assert list(Matcher("ab").spans("xxABxab")) == [(2, 4), (5, 7)]
    assert Matcher("red")("\x1b[31mred\x1b[0m")


@pytest.mark.parametrize("line", [
    "Traceback (most recent call last):", "RuntimeError: boom", "ERROR rank 3 died",
    "torch.distributed.DistBackendError: NCCL", "Segmentation fault (core dumped)",
])
def test_error_lines(line):
    assert ERROR_RE.search(line)


@pytest.mark.parametrize("line", ["step 3 loss 1.0", "errors=0", "error_rate 0.1"])
def test_not_error_lines(line):
    assert not ERROR_RE.search(line)


# -- themes ---------------------------------------------------------------------------------


def test_builtin_themes_load_with_every_status_colour():
    themes, errors = load_themes([])
    assert errors == [] and {"dark", "light"} <= set(themes)
    for theme in themes.values():
        assert set(STATUS_VARIABLES) <= set(theme.variables)
    assert themes["dark"].dark and not themes["light"].dark


def test_top_level_themes_dir_is_the_package_one():
    assert (REPO / "themes").resolve() == BUILTIN_DIR.resolve()
    assert (REPO / "themes" / "dark.toml").is_file()


def test_user_theme_dir_overrides_and_bad_files_are_reported(tmp_path):
    (tmp_path / "mine.toml").write_text('primary = "#ff0000"\n[variables]\nstatus-failed = "#00ff00"\n')
    (tmp_path / "light.toml").write_text('name = "light"\nprimary = "#123456"\ndark = false\n')
    (tmp_path / "broken.toml").write_text('primary = "not a colour"\n')
    (tmp_path / "typo.toml").write_text('primray = "#ffffff"\n')
    themes, errors = load_themes([tmp_path])
    assert themes["mine"].variables["status-failed"] == "#00ff00"
    assert themes["mine"].variables["status-running"] == STATUS_VARIABLES["status-running"]
    assert themes["light"].primary == "#123456"
    assert len(errors) == 2 and any("broken.toml" in e and "not a colour" in e for e in errors)
    assert any("unknown key 'primray'" in e for e in errors)


def test_user_theme_dir_from_xdg(tmp_path, monkeypatch):
    (tmp_path / "flextui" / "themes").mkdir(parents=True)
    (tmp_path / "flextui" / "themes" / "solar.toml").write_text('primary = "#b58900"\n')
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    monkeypatch.delenv("FLEXTUI_THEME_DIR", raising=False)
    themes, _ = load_themes()
    assert "solar" in themes


def test_resolve_theme(tmp_path, monkeypatch):
    monkeypatch.delenv("FLEXTUI_THEME", raising=False)
    themes, _ = load_themes([])
    assert resolve_theme(None, themes) == "dark"
    assert resolve_theme("light", themes) == "light"
    with pytest.raises(ThemeError, match="unknown theme 'drak'.*dark, light"):
        resolve_theme("drak", themes)
    path = tmp_path / "x.toml"
    path.write_text('name = "from-path"\nprimary = "#abcdef"\n')
    assert resolve_theme(str(path), themes) == "from-path" and "from-path" in themes
    monkeypatch.setenv("FLEXTUI_THEME", "light")
    assert resolve_theme(None, themes) == "light"


def test_palette_takes_status_colours_from_the_theme():
    theme = load_theme_file(BUILTIN_DIR / "light.toml")
    palette = Palette({**theme.to_color_system().generate(), **theme.variables})
    assert palette.status["failed"].color.triplet.hex.lower() == theme.variables["status-failed"].lower()
    assert not palette.dark


def test_themes_are_package_data():
    text = (REPO / "pyproject.toml").read_text()
    assert '"themes/*.toml"' in text and '"*.tcss"' in text
    assert (BUILTIN_DIR.parent / "app.tcss").is_file()
    assert os.path.isdir(BUILTIN_DIR)


# -- issue 13: collapsing what differs only in a rank number or a timestamp ------------


def test_lines_differing_only_in_timestamp_or_own_rank_collapse():
    rows = Collapser(window=1024)
    rows.add([(r, f"2025-01-01 12:00:{r % 60:02d},{r:03d} [rank{r}] INFO trainer: config lr=0.1")
              for r in range(64)])
    rows.add([(r, f"[default{r}]: hello from rank {r} of 64") for r in range(64)])
    shown = kept(rows)
    assert [format_ranks(r.ranks) for r in shown] == ["0-63", "0-63"]
    assert shown[0].display == "2025-01-01 12:00:00,000 [rank{rank}] INFO trainer: config lr=0.1"
    assert shown[1].display == "[default{rank}]: hello from rank {rank} of 64"


def test_a_number_that_is_not_the_own_rank_keeps_lines_apart():
    rows = Collapser(window=64)
    rows.add([(0, "waiting for rank 3"), (1, "waiting for rank 3"), (2, "waiting for rank 4"),
              (3, "step 3 loss 1.0"), (5, "step 5 loss 1.0"), (4, "local_rank 0 ready"),
              (12, "local_rank 0 ready")])
    assert [(r.display, r.ranks) for r in kept(rows)] == [
        ("waiting for rank 3", [0, 1]), ("waiting for rank 4", [2]),
        ("step 3 loss 1.0", [3]), ("step 5 loss 1.0", [5]), ("local_rank 0 ready", [4, 12])]


def test_a_64_rank_config_dump_is_one_block():
    rows = Collapser(window=4 * 64)
    dump = [f"config: {key} = {value}" for key, value in
            (("lr", 0.1), ("batch", 32), ("model", "gpt"), ("seed", 1234))]
    entries = [(r, f"[rank {r}] {line}") for r in range(64) for line in dump]
    entries.sort(key=lambda e: (dump.index(e[1].split("] ", 1)[1]) + (e[0] % 3), e[0]))  # interleaved
    rows.add(entries)
    assert len(rows.rows) == 4 and all(format_ranks(r.ranks) == "0-63" for r in kept(rows))


def test_one_flooding_rank_does_not_push_the_others_out():
    rows = Collapser(max_rows=1000, window=16)
    for step in range(20):  # 64 quiet ranks, a line each per step; rank 3 floods
        rows.add([(r, f"quiet {r} step {step}") for r in range(64) if r != 3])
        rows.add([(3, f"flood {step} {i}") for i in range(2000)])
    texts = [r.text for r in kept(rows)]
    assert len(rows.rows) <= 1000 + 50
    # every quiet rank keeps its last lines; the flood lost its oldest ones
    for r in (0, 1, 63):
        assert f"quiet {r} step 19" in texts and f"quiet {r} step 10" in texts
    assert "flood 0 0" not in texts and "flood 19 1999" in texts
    assert rows.indices() == sorted(rows.rows) and rows.evictions > 0


# -- issue 13: the rank table's query, sort and grouping -------------------------------


def _model_64x8():
    from flextui.ui.testing import FakeJob

    job = FakeJob({f"node{i}": 8 for i in range(64)})
    job.start_all()
    job.exit(137, code=3, t=job.t0 + 5)
    job.exit(200, code=None, signal=9, t=job.t0 + 6)
    job.exit(201, code=None, signal=15, t=job.t0 + 7, stopped=True)
    return job


def test_rank_query_terms():
    from flextui.ui.rankview import RankQuery

    model = _model_64x8().model
    hosts = [n.host for n in model.nodes]
    select = lambda text: RankQuery(text, hosts).select(model)  # noqa: E731
    assert select("137") == [137]
    assert select("0-3 9") == [0, 1, 2, 3, 9]
    assert select("node12") == list(range(96, 104))  # exactly, not node120..
    assert select("node1*") == [r for r in range(512) if model.ranks[r].info.host.startswith("node1")]
    assert select("failed") == [137, 200] and select("stopped") == [201]
    assert select("problem") == [137, 200]
    assert select("node17 failed") == [137] and select("node17 node25 failed") == [137, 200]
    assert len(select("!7")) == 511 and 7 not in select("!7")
    assert select("running !node0 !node1") == [r for r in range(16, 512) if r not in (137, 200, 201)]
    assert not RankQuery("  ") and select("") == list(range(512))


def test_rows_sort_by_status_and_group_by_node():
    from flextui.ui.rankview import NODE, RANK, Context, TableOrder, build_rows, columns_for

    job = _model_64x8()
    model = job.model
    ctx = Context(model, now=job.t0 + 10, rates=[0.0] * 512)
    columns = columns_for(model)
    rows, ranks = build_rows(model, ctx, TableOrder(sort="status"), columns)
    assert [ident for _, ident in rows[:3]] == [137, 200, 0]  # first failure, killed, then running
    assert ranks[-1] == 201  # stopped last
    rows, _ = build_rows(model, ctx, TableOrder(sort="status", grouped=True, collapsed={0}), columns)
    assert rows[:2] == [(NODE, 17), (RANK, 137)]  # the node of the first failure leads
    assert (NODE, 0) in rows and (RANK, 0) not in rows  # folded
    rows, ranks = build_rows(model, ctx, TableOrder(sort="rank", reverse=True), columns)
    assert ranks[:2] == [511, 510]


def test_matcher_is_a_regex_with_smart_case_and_negation():
    assert Matcher(r"loss \d+\.\d")("Step 1 LOSS 3.5")  # \d is not a capital
    assert not Matcher(r"Loss \d")("loss 3")
    assert Matcher("!tick")("loss 3") and not Matcher("!tick")("TICK 3")
    assert list(Matcher("!tick").spans("tick")) == []
    assert list(Matcher("a+").spans("xaaxa")) == [(1, 3), (4, 5)]
    assert Matcher.error("(unclosed") and Matcher.error("fine|ok") is None


def test_feed_reads_at_most_its_budget_and_says_what_it_skipped():
    combined: deque = deque(maxlen=1000)
    rows = Collapser(max_rows=10000)
    combined.extend((0, f"x{i}") for i in range(500))
    rows.feed(combined, 500, budget=100)
    texts = [r.text for r in kept(rows)]
    assert texts[0].startswith("… 400 line(s) not shown") and texts[1:] == [f"x{i}" for i in range(400, 500)]


def test_a_rank_joins_a_row_only_after_its_own_last_one():
    """Rank 5 checkpointed early; the others later: their "saved" must not join rank 5's
    "saved" row above their own "saving" row."""
    rows = Collapser(window=64)
    rows.add([(5, "saving a checkpoint"), (5, "checkpoint saved")])
    rows.add([(r, f"step 9 loss {r}") for r in range(4)])  # the others go on meanwhile
    rows.add([(r, "saving a checkpoint") for r in range(4)])  # a new row: rank 5's is older
    rows.add([(r, "checkpoint saved") for r in range(4)])
    shown = [(r.text, format_ranks(r.ranks)) for r in kept(rows) if "step" not in r.text]
    assert shown == [("saving a checkpoint", "5"), ("checkpoint saved", "5"),
                     ("saving a checkpoint", "0-3"), ("checkpoint saved", "0-3")]
    rows.add([(5, "step 10"), (1, "step 10")])  # no order to keep: one row
    assert kept(rows)[-1].ranks == [5, 1]
