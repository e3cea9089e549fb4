"""Incremental replay: the tables after any sequence of appends and replays are byte for byte
those of one full replay, including the original's cross-experiment tables computed from them."""
import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.replay_bench import generate
from pipeline import fold_state
from pipeline.events import EventLog
from pipeline.fold_state import STATE_FILE
from pipeline.original_tables import write_cross_experiment_tables
from pipeline.replay import TABLES, replay


def outputs(data_root, tables_dir) -> dict:
    """Every replayed table and every cross-experiment table, as bytes (these name files under
    the data root: that part is left out)."""
    write_cross_experiment_tables(data_root, tables_dir)
    files = {f"tables/{name}.csv": (Path(tables_dir) / f"{name}.csv").read_bytes() for name in TABLES}
    for path in sorted((Path(data_root) / "7_cross_experiment").glob("*.csv")):
        files[f"7_cross_experiment/{path.name}"] = path.read_bytes().replace(str(data_root).encode(), b"ROOT")
    return files


def full_replay(tmp_path, events_dir, name):
    root = tmp_path / name
    stats = replay(events_dir, root / "tables", full=True)
    assert not stats.incremental
    return outputs(root, root / "tables")


def incremental(data_root, events_dir):
    stats = replay(events_dir, data_root / "tables")
    return stats, outputs(data_root, data_root / "tables")


def test_incremental_replay_after_appends_equals_a_full_replay_byte_for_byte(tmp_path, caplog):
    events = tmp_path / "events"
    data = tmp_path / "data"
    generate(events, 1500, writers=3, seed=1)   # three segments of synthetic cohorts
    first, _ = incremental(data, events)
    assert not first.incremental and (data / "tables" / STATE_FILE).exists()

    # appends to the same segments: the same generations run again (the same timeline: calls at
    # timestamps that have calls already), new scores
    generate(events, 1500, writers=3, seed=2)
    stats, tables = incremental(data, events)
    assert stats.incremental and 0 < stats.read.events < 2 * first.read.events
    assert tables == full_replay(tmp_path, events, "full1")

    # a new segment sorting before the old ones, with a failure after the latest success
    events_day = events / "2025-01-01"
    log = EventLog(events)
    log.emit("generation_failed", cohort_id="cohort-0000", stage="draft", gen_id="d_000000000000",
             error_class="LLMError", error="later failure")
    log.emit("score_parsed", cohort_id="late", stage="evaluation", gen_id="v_000000000000_1", score=3.5,
             scale="0-9", parser="in_last_line")
    log.close()
    moved = events_day / ("a" + log.path.name)
    log.path.rename(moved)
    # a torn last line: skipped now, folded once its writer completes it
    line = json.dumps({"event_id": "f" * 32, "schema": 1, "ts": "2030-01-01T00:00:00.000000Z",
                       "type": "parse_failed", "cohort_id": "late", "stage": "evaluation",
                       "gen_id": "v_000000000001_2", "parser": "p", "reason": "r"})
    torn = events_day / "zz-torn.jsonl"
    torn.write_text(line[:40])
    with caplog.at_level(logging.WARNING):
        stats, tables = incremental(data, events)
    assert stats.incremental and stats.read.events == 2 and len(stats.read.torn) == 1
    assert tables == full_replay(tmp_path, events, "full2")
    torn.write_text(line + "\n")
    stats, tables = incremental(data, events)
    assert stats.incremental and stats.read.events == 1 and not stats.read.torn
    assert tables == full_replay(tmp_path, events, "full3")
    assert "later failure" in (data / "tables" / "generation_results.csv").read_text()

    # nothing new: nothing read, the same bytes
    stats, again = incremental(data, events)
    assert stats.incremental and stats.read.events == 0 and again == tables


def test_a_changed_or_duplicated_segment_means_a_full_replay(tmp_path):
    events = tmp_path / "events"
    data = tmp_path / "data"
    generate(events, 600, writers=2, seed=1)
    incremental(data, events)
    first, second = sorted((events / "2025-01-01").glob("*.jsonl"))

    shutil.copy(second, first.with_name("0-copy.jsonl"))   # a copied segment: all duplicates
    stats, tables = incremental(data, events)
    assert not stats.incremental and stats.read.duplicates > 0
    assert tables == full_replay(tmp_path, events, "full1")

    lines = first.read_text().splitlines(keepends=True)
    first.write_text("".join(lines[:-3]) + lines[-1])        # rewritten in place, shorter
    stats, tables = incremental(data, events)
    assert not stats.incremental
    assert tables == full_replay(tmp_path, events, "full2")

    (data / "tables" / STATE_FILE).write_bytes(b"garbage" * 10)   # a damaged state costs a full replay
    stats, tables = incremental(data, events)
    assert not stats.incremental
    assert tables == full_replay(tmp_path, events, "full3")


def test_the_state_finds_old_events_by_byte_position_past_non_ascii_text(tmp_path):
    """The state keeps where each generation's events are, not their folded values; an
    incremental replay reads them back, so positions must count bytes, not characters."""
    events, data = tmp_path / "events", tmp_path / "data"
    lineage = dict(stage="draft", gen_id="d_1", combo_id="c", template_id="t", llm_model_id="m", replicate=1)
    log = EventLog(events)
    log.emit("generation_failed", cohort_id="k", **dict(lineage, gen_id="d_0"), error_class="E",
             error="réponse tronquée — ünïcode " * 20)
    log.emit("generation_started", cohort_id="k", **lineage)
    log.close()
    replay(events, data / "tables")
    assert (data / "tables" / STATE_FILE).stat().st_size < 64 << 10

    log = EventLog(events)   # a later run completes d_1: its started event is read back
    log.emit("generation_completed", cohort_id="k", **lineage, finish_reason="stop", cost=0.5, source="run")
    log.close()
    stats, tables = incremental(data, events)
    assert stats.incremental and tables == full_replay(tmp_path, events, "full")
    assert "d_1,draft,,c,t,m,1,done,stop" in tables["tables/generation_results.csv"].decode()


def test_an_old_event_rewritten_in_the_middle_of_a_segment_means_a_full_replay(tmp_path):
    events, data = tmp_path / "events", tmp_path / "data"
    generate(events, 600, writers=1, seed=1)
    replay(events, data / "tables")
    segment, = (events / "2025-01-01").glob("*.jsonl")
    text = segment.read_text()
    # same length, same first and last bytes: only reading the generation's events back shows it
    segment.write_text(text.replace('"gen_id":"d_000000000001"', '"gen_id":"d_00000000000x"'))
    log = EventLog(events)
    log.emit("score_parsed", cohort_id="late", stage="draft", gen_id="d_000000000001", score=1.0)
    log.close()
    stats, tables = incremental(data, events)
    assert not stats.incremental
    assert tables == full_replay(tmp_path, events, "full")


def test_an_incremental_replay_names_the_rows_it_changed_and_the_versions(tmp_path):
    events = tmp_path / "events"
    data = tmp_path / "data"
    generate(events, 3000, writers=2, seed=1)
    first = replay(events, data / "tables")
    assert first.delta is None and first.version_after
    old = {row["gen_id"]: row for row in csv.DictReader(open(data / "tables" / "evaluation_results.csv"))}
    log = EventLog(events)
    log.emit("score_parsed", cohort_id="late", stage="evaluation", gen_id="v_000000000000_1", score=3.5)
    log.close()
    stats, tables = incremental(data, events)
    assert stats.incremental and stats.read.events == 1
    assert stats.version_before == first.version_after != stats.version_after
    assert set(stats.delta["evaluation_results"]) == set(stats.delta["scores_long"]) == {"v_000000000000_1"}
    assert stats.delta["generation_results"] == {}
    row = stats.delta["evaluation_results"]["v_000000000000_1"]
    assert row[11] == 3.5 and old["v_000000000000_1"]["score"] != "3.5"
    written = dict(zip(old["v_000000000000_1"], row))
    assert {k: "" if v is None else str(v) for k, v in written.items()} == \
        next(r for r in csv.DictReader(open(data / "tables" / "evaluation_results.csv")) if r["gen_id"] == "v_000000000000_1")
    assert tables == full_replay(tmp_path, events, "full")

    again = replay(events, data / "tables")   # nothing new: nothing changes, same version
    assert again.incremental and again.read.events == 0
    assert again.delta == {name: {} for name in stats.delta}
    assert again.version_before == again.version_after == stats.version_after


def test_each_kind_of_change_replays_incrementally_to_the_full_replays_bytes(tmp_path):
    """Every step appends events of one kind; after each, the incremental tables (and the
    cross-experiment tables) equal a full replay's, and the delta names the changed rows."""
    events, data = tmp_path / "events", tmp_path / "data"
    generate(events, 1200, writers=2, seed=1)
    replay(events, data / "tables")
    fields = ["stage", "gen_id", "parent_gen_id", "combo_id", "template_id", "llm_model_id", "replicate"]
    essay = dict(stage="essay", gen_id="e_000000000001", parent_gen_id="d_000000000001",
                 combo_id="combo_v1_00000001", template_id="essay-x", llm_model_id="sonnet-4", replicate=1)
    new_eval = dict(stage="evaluation", gen_id="v_new", parent_gen_id=essay["gen_id"], combo_id=None,
                    template_id="new-template", llm_model_id="new-llm", replicate=1)
    draft = dict(stage="draft", gen_id="d_000000000002", parent_gen_id=None, combo_id="combo_v1_00000002",
                 template_id="creative-synthesis-v10", llm_model_id="sonnet-4", replicate=1)
    done = dict(finish_reason="stop", prompt_tokens=1, completion_tokens=2, cost=0.5, duration_s=1.0,
                attempts=1, source="run", copy=False)
    steps = {
        # a new cohort over old generations, with a new evaluation (new pivot column) of an old essay
        "new cohort": lambda log: (
            log.emit("cohort_built", cohort_id="again", member_fields=fields,
                     members=[[m[f] for f in fields] for m in (essay, new_eval)]),
            log.emit("generation_started", cohort_id="again", **new_eval),
            log.emit("score_parsed", cohort_id="again", stage="evaluation", gen_id="v_new", score=4.25,
                     scale="0-9", parser="p"),
            log.emit("generation_completed", cohort_id="again", **new_eval, **done)),
        # the cohort rebuilt without the essay, listing an old draft under another combo
        "membership": lambda log: log.emit(
            "cohort_built", cohort_id="again", member_fields=fields,
            members=[[m[f] for f in fields] for m in (new_eval, dict(draft, combo_id="other"))]),
        # an old evaluation judged again (re-parse changes its score), one re-parse failing
        "reparse": lambda log: (
            log.emit("score_parsed", cohort_id="again", stage="evaluation", gen_id="v_000000000001_0",
                     score=1.5, scale="0-9", parser="p"),
            log.emit("parse_failed", cohort_id="again", stage="evaluation", gen_id="v_000000000001_1",
                     parser="p", reason="r")),
        # failed, then completed; the only score of a pivot column removed
        "failed then done": lambda log: (
            log.emit("generation_failed", cohort_id="again", **draft, error_class="E", error="a, \"quoted\"\nerror"),
            log.emit("generation_completed", cohort_id="again", **new_eval, **done),
            log.emit("parse_failed", cohort_id="again", stage="evaluation", gen_id="v_new", parser="p",
                     reason="r")),
        # an essay's lineage changes: its evaluations' rows show the new draft
        "lineage": lambda log: log.emit("generation_started", cohort_id="again", **dict(essay, parent_gen_id=draft["gen_id"])),
    }
    for name, step in steps.items():
        log = EventLog(events)
        step(log)
        log.close()
        stats, tables = incremental(data, events)
        assert stats.incremental and stats.delta is not None, name
        assert tables == full_replay(tmp_path, events, name.replace(" ", "-")), name
        assert stats.rows == replay(events, tmp_path / f"rows-{name}", full=True).rows, name
    assert stats.delta["evaluation_results"]["v_000000000001_0"][2] == "d_000000000002"   # draft_gen_id

    # calls out of order: an old timestamp between existing calls is spliced in
    old_ts = "2025-01-01T00:00:00.000001Z"
    with open(events / "2025-01-01" / "late.jsonl", "w") as fh:
        fh.write(json.dumps({"event_id": "c" * 32, "schema": 1, "ts": old_ts, "type": "llm_call_failed",
                             "cohort_id": "late", "stage": "draft", "gen_id": "d_000000000003",
                             "attempt": 1, "status": 500, "error_class": "E", "will_retry": True}) + "\n")
    stats, tables = incremental(data, events)
    assert stats.incremental and tables == full_replay(tmp_path, events, "calls")
    assert (data / "tables" / "llm_calls.csv").read_text().split("\n")[1].startswith(old_ts)

    # calls at a timestamp that has a call already: ordered by event_id around it
    taken = (data / "tables" / "llm_calls.csv").read_text().split("\n")[5].split(",")[0]
    with open(events / "2025-01-01" / "late.jsonl", "a") as fh:
        for event_id in ("0" * 32, "f" * 32):
            fh.write(json.dumps({"event_id": event_id, "schema": 1, "ts": taken, "type": "llm_call_failed",
                                 "cohort_id": "late", "stage": "draft", "gen_id": "d_000000000004",
                                 "attempt": 1, "status": 500, "error_class": "E", "will_retry": False}) + "\n")
    stats, tables = incremental(data, events)
    assert stats.incremental and tables == full_replay(tmp_path, events, "same-ts")
    assert (data / "tables" / "llm_calls.csv").read_text().count(f"\n{taken},") == 3


def test_a_state_the_child_process_cannot_write_is_a_clear_error_and_leaves_the_old_state(tmp_path, monkeypatch):
    import os
    import sqlite3

    import pytest

    from pipeline import fold_state
    from pipeline.errors import StoreError

    events = tmp_path / "events"
    tables = tmp_path / "tables"
    generate(events, 300, writers=2, seed=1)
    replay(events, tables)
    before = {path.name: path.read_bytes() for path in tables.iterdir()}

    def disk_full(*args):   # runs in the forked child that writes the state
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(fold_state, "_write_records", disk_full)
    monkeypatch.setattr(fold_state, "PARALLEL_RECORDS", 0)
    monkeypatch.setattr(fold_state, "spare_core", lambda: True)   # the child, however busy the machine
    with pytest.raises(StoreError, match=r"_fold_state.sqlite: cannot save the fold state "
                                         r"\(OperationalError: database or disk is full\)"):
        replay(events, tables, full=True)
    # the old state stays (it matches the unchanged tables), no temporary file, no zombie child
    assert {path.name for path in tables.iterdir()} == set(before)
    assert (tables / STATE_FILE).read_bytes() == before[STATE_FILE]
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_an_interrupted_full_replay_stops_the_state_writing_child_and_leaves_no_file(tmp_path, monkeypatch):
    import os

    import pytest

    from pipeline import fold_state
    from pipeline import replay as replay_module

    monkeypatch.setattr(fold_state, "PARALLEL_RECORDS", 0)

    monkeypatch.setattr(fold_state, "spare_core", lambda: True)   # the child, however busy the machine
    events = tmp_path / "events"
    tables = tmp_path / "tables"
    generate(events, 300, writers=2, seed=1)

    def interrupted(*args):   # Ctrl-C while this process builds the tables
        raise KeyboardInterrupt

    monkeypatch.setattr(replay_module, "_tables", interrupted)
    with pytest.raises(KeyboardInterrupt):
        replay(events, tables, full=True)
    assert list(tables.iterdir()) == []
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


@pytest.mark.parametrize("taking", ["as timed", "every piece"])
def test_a_full_replay_read_by_two_processes_equals_one_read_by_one(tmp_path, monkeypatch, taking):
    """Also when the child, done with its part, takes many small pieces off the end of the other
    process's part (read out of order: their bad lines listed, their duplicates found, as in
    order), and when it takes them only while it would still be done first."""
    import os

    from pipeline import fold_state
    from pipeline.events import EventLogError

    if taking == "every piece":
        monkeypatch.setattr(fold_state, "CHILD_SHARE", 0.2)
        monkeypatch.setattr(fold_state, "STEAL_BYTES", 20_000)
        monkeypatch.setattr(fold_state, "HANDOVER", -1e9)   # always worth it
        monkeypatch.setattr(fold_state, "_PIECE", 8192)   # this process claims its part bit by bit,
        claim, take, taken = fold_state._Split.claim, fold_state._Split.take, tmp_path / "taken"

        def slow_claim(self, at, end):   # and slowly: the child is done first and takes pieces
            time.sleep(0.002)
            return claim(self, at, end)

        def noted_take(self, choose):   # called in the forked replay: noted in a file
            piece = take(self, choose)
            with open(taken, "a") as fh:
                fh.write("1" if piece else "")
            return piece
        monkeypatch.setattr(fold_state._Split, "claim", slow_claim)
        monkeypatch.setattr(fold_state._Split, "take", noted_take)
    events = tmp_path / "events"
    generate(events, 3000, writers=4, seed=3)
    day = events / "2025-01-01"
    first, *_, last = sorted(day.iterdir())
    with open(last, "a") as fh:
        # a call row the child renders whose CSV line spans two lines; then a torn last line
        fh.write(json.dumps({"event_id": "n" * 32, "schema": 1, "ts": "2025-01-01T00:00:00.000001Z",
                             "type": "llm_call_failed", "cohort_id": None, "stage": "draft", "gen_id": "d_x",
                             "error_class": 'Two\nlines, "quoted"', "will_retry": False}) + "\n")
        fh.write('{"event_id": "torn')

    def both(name, **kwargs):
        """(stats, tables, state segments) of a full replay by one process (no core to spare), then
        by three (two reading, one saving the state)."""
        results = []
        for spare in (False, True):
            monkeypatch.setattr(fold_state, "PARALLEL_BYTES", 0)
            monkeypatch.setattr(fold_state, "PARALLEL_RECORDS", 0)
            monkeypatch.setattr(fold_state, "spare_core", lambda: spare)
            tables = tmp_path / f"{name}-{spare}"
            stats = replay(events, tables, full=True, **kwargs)
            state = fold_state.open_state(tables, events)
            results.append((stats.read, stats.rows, {n: (tables / f"{n}.csv").read_bytes() for n in TABLES},
                            state.segments, state.meta["rows"]))
            state.close()
            with pytest.raises(ChildProcessError):   # every child reaped
                os.waitpid(-1, os.WNOHANG)
        return results

    one, two = both("plain")
    assert one == two and one[0].torn and one[0].events > 2500
    if taking == "every piece":
        assert len((tmp_path / "taken").read_text()) > 5
    assert b'\n2025-01-01T00:00:00.000001Z,draft,d_x,,,failed,,"Two\nlines, ""quoted""",false,' in one[2]["llm_calls"]

    # a copy of the first segment at the end: the duplicates are the second process's
    (day / ("z" + first.name)).write_bytes(first.read_bytes())
    one, two = both("duplicated")
    assert one == two and one[0].duplicates > 500

    # bad lines in the second process's half (the torn line is no longer last): skipped and
    # counted alike, or the same error
    with open(last, "a") as fh:
        fh.write('\n{"event_id": "x", "schema": 1, "ts": "2025-01-01T00:00:00Z", "type": "score_parsed"}\n')
    one, two = both("skip_bad", skip_bad=True)
    assert one == two and len(one[0].bad) == 2
    for spare in (False, True):
        monkeypatch.setattr(fold_state, "PARALLEL_RECORDS", 0)
        monkeypatch.setattr(fold_state, "spare_core", lambda: spare)
        with pytest.raises(EventLogError, match=rf"{last.name}:\d+: malformed event \(invalid JSON"):
            replay(events, tmp_path / "bad", full=True)


def test_a_child_that_fails_after_sending_its_first_part_has_its_part_read_again(tmp_path, monkeypatch):
    """The reading child sends the fold of its first part while the replay still reads; when it
    fails after that (here: while taking pieces), the replay drops that fold and reads the part
    itself: the tables and counts equal a one-process read's, and no child is left."""
    import os

    events = tmp_path / "events"
    generate(events, 3000, writers=4, seed=5)
    monkeypatch.setattr(fold_state, "PARALLEL_BYTES", 0)
    results = []
    for spare in (False, True):
        monkeypatch.setattr(fold_state, "spare_core", lambda: spare)
        if spare:
            def failing(*args):   # called in the forked child, after its first part went out
                raise RuntimeError("the child broke while taking pieces")
            monkeypatch.setattr(fold_state, "_take_pieces", failing)
        tables = tmp_path / f"tables-{spare}"
        stats = replay(events, tables, full=True)
        results.append((stats.read, stats.rows, {n: (tables / f"{n}.csv").read_bytes() for n in TABLES}))
    assert results[0] == results[1] and results[0][0].events > 2500
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_bad_line_just_before_the_split_is_an_error_not_a_torn_write(tmp_path, monkeypatch):
    """The line before the byte where the child starts is whole (the split is at a line's start):
    a malformed one there is the same error, or the same skipped bad line, as in a one-process read,
    not a torn last line skipped with a warning."""
    import pytest

    from pipeline import fold_state
    from pipeline.events import EventLogError

    events = tmp_path / "events"
    generate(events, 3000, writers=1, seed=3)
    segment, = (events / "2025-01-01").iterdir()
    lines = segment.read_bytes().split(b"\n")
    lines[1499] = b'{"event_id": "cut", "schema": 1'
    segment.write_bytes(b"\n".join(lines))
    cut = sum(len(line) + 1 for line in lines[:1500])   # line 1501 starts there
    monkeypatch.setattr(fold_state, "_line_start", lambda path, at: cut)
    monkeypatch.setattr(fold_state, "PARALLEL_BYTES", 0)
    bad = []
    for spare in (False, True):
        monkeypatch.setattr(fold_state, "spare_core", lambda: spare)
        with pytest.raises(EventLogError, match=rf"{segment.name}:1500: malformed event \(invalid JSON"):
            replay(events, tmp_path / f"error-{spare}", full=True)
        stats = replay(events, tmp_path / f"skip-{spare}", full=True, skip_bad=True)
        bad.append((stats.read.bad, stats.read.torn, stats.read.events))
    assert bad[0] == bad[1] and len(bad[0][0]) == 1 and not bad[0][1]


def test_one_big_segment_is_read_by_two_processes_split_at_a_line(tmp_path, monkeypatch):
    """A log of one segment (one long-lived writer) is shared out too: the child reads its end
    from a line's start; tables, counts and the saved state equal a one-process read's."""
    from pipeline import fold_state

    events = tmp_path / "events"
    generate(events, 3000, writers=1, seed=3)
    segment, = (events / "2025-01-01").iterdir()
    line_start, cuts = fold_state._line_start, tmp_path / "cuts"

    def noted(path, at):   # called in the forked replay: noted in a file
        cut = line_start(path, at)
        with open(cuts, "a") as fh:
            fh.write(f"{cut}\n")
        return cut
    monkeypatch.setattr(fold_state, "_line_start", noted)
    monkeypatch.setattr(fold_state, "PARALLEL_BYTES", 0)
    results = []
    for spare in (False, True):
        monkeypatch.setattr(fold_state, "spare_core", lambda: spare)
        tables = tmp_path / f"tables-{spare}"
        stats = replay(events, tables, full=True)
        state = fold_state.open_state(tables, events)
        results.append((stats.read, stats.rows, {n: (tables / f"{n}.csv").read_bytes() for n in TABLES}, state.segments))
        state.close()
    assert results[0] == results[1] and results[0][0].segments == 1
    text = segment.read_bytes()
    cut, *taken = map(int, cuts.read_text().split())   # where the child started, then took pieces
    assert 0 < cut < len(text) and all(text[at - 1:at] == b"\n" for at in [cut, *taken] if at)

    # the next replay reads on from where both left off
    log = EventLog(events)
    log.emit("score_parsed", cohort_id="late", stage="evaluation", gen_id="v_000000000000_1", score=3.5)
    log.close()
    stats = replay(events, tmp_path / "tables-True")
    assert stats.incremental and stats.read.events == 1
    assert (tmp_path / "tables-True" / "scores_long.csv").read_bytes() == \
        (replay(events, tmp_path / "full", full=True).tables_dir / "scores_long.csv").read_bytes()


def test_a_segment_read_in_pieces_replays_as_one_read_whole(tmp_path, monkeypatch):
    """Big segments are read a piece at a time; small pieces give the same tables, counts and
    state, a torn last line is still only the segment's last, and a bad line ending a piece is
    still an error."""
    import pytest

    from pipeline import fold_state
    from pipeline.events import EventLogError

    events = tmp_path / "events"
    generate(events, 2000, writers=2, seed=4)
    first, last = sorted((events / "2025-01-01").iterdir())
    with open(last, "a") as fh:
        fh.write('{"event_id": "torn')

    def replayed(name, piece):
        monkeypatch.setattr(fold_state, "_PIECE", piece)
        tables = tmp_path / name
        stats = replay(events, tables, full=True)
        state = fold_state.open_state(tables, events)
        state.close()
        return stats.read, stats.rows, {n: (tables / f"{n}.csv").read_bytes() for n in TABLES}, state.segments

    whole = replayed("whole", 8 << 20)
    assert whole == replayed("pieces", 4096) and len(whole[0].torn) == 1

    text = first.read_bytes()
    at = text.index(b"\n", 4096) + 1   # a bad line where a piece ends, well before the last
    first.write_bytes(text[:at] + b'{"bad"\n' + text[at:])
    for piece in (8 << 20, at + 8):
        monkeypatch.setattr(fold_state, "_PIECE", piece)
        with pytest.raises(EventLogError, match=rf"{first.name}:\d+: malformed event \(invalid JSON"):
            replay(events, tmp_path / "bad", full=True)


def test_a_full_replay_clears_what_a_killed_replay_was_writing(tmp_path):
    import subprocess
    import sys

    events, tables = tmp_path / "events", tmp_path / "tables"
    generate(events, 300, writers=1, seed=1)
    tables.mkdir()
    # a replay killed while it wrote the state leaves its temporary file, named for its pid
    subprocess.run([sys.executable, "-c", "import sys; from pipeline.fsio import new_tmp; new_tmp(sys.argv[1])",
                    str(tables / STATE_FILE)], check=True)
    left, = [p.name for p in tables.iterdir()]
    assert STATE_FILE in left and left != STATE_FILE
    replay(events, tables, full=True)
    assert sorted(p.name for p in tables.iterdir()) == sorted([f"{n}.csv" for n in TABLES] + [STATE_FILE])


def test_a_table_the_state_writing_child_cannot_write_is_a_clear_error_naming_it(tmp_path, monkeypatch):
    import os

    import pytest

    from pipeline import fold_state
    from pipeline.errors import StoreError

    monkeypatch.setattr(fold_state, "PARALLEL_RECORDS", 0)
    events = tmp_path / "events"
    generate(events, 300, writers=2, seed=1)
    for spare in (True, False):   # the child writes llm_calls.csv, or this process does
        monkeypatch.setattr(fold_state, "spare_core", lambda: spare)
        tables = tmp_path / f"tables-{spare}"
        (tables / "llm_calls.csv").mkdir(parents=True)   # in the way
        with pytest.raises(StoreError, match=r"llm_calls.csv: cannot write \(Is a directory\)"):
            replay(events, tables, full=True)
        # no temporary file, no state, no zombie child
        assert {path.name for path in tables.iterdir()} <= {f"{name}.csv" for name in TABLES}
        with pytest.raises(ChildProcessError):
            os.waitpid(-1, os.WNOHANG)


def test_a_full_replay_of_an_unchanged_log_leaves_every_table_file_alone(tmp_path, monkeypatch):
    import os

    from pipeline import fold_state

    monkeypatch.setattr(fold_state, "PARALLEL_RECORDS", 0)
    events = tmp_path / "events"
    generate(events, 300, writers=2, seed=1)
    for spare in (True, False):   # llm_calls.csv written by the state-writing child, or here
        monkeypatch.setattr(fold_state, "spare_core", lambda: spare)
        tables = tmp_path / f"tables-{spare}"
        replay(events, tables, full=True)
        files = {name: os.stat(tables / f"{name}.csv") for name in TABLES}
        replay(events, tables, full=True)
        for name, before in files.items():
            after = os.stat(tables / f"{name}.csv")
            assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns), name


def test_no_helper_process_is_forked_while_every_core_is_busy():
    """spare_core looks at the tasks runnable now: with a busy loop on every core it answers no
    at once, where the one-minute load average would still show a core free."""
    cores = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.5)   # started and spinning
        assert not fold_state.spare_core()
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
