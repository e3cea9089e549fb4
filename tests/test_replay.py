import csv
import json
import logging
import os
import re
import shutil

import pytest

from pipeline.events import SCHEMA_VERSION, EventLog, EventLogError
from pipeline.cli import main as daydream
from pipeline.replay import TABLES, load_tables, replay

MEMBER_FIELDS = ["stage", "gen_id", "parent_gen_id", "combo_id", "template_id", "llm_model_id",
                 "replicate"]
D1 = dict(stage="draft", gen_id="d1", parent_gen_id=None, combo_id="combo1", template_id="tD",
          llm_model_id="llmA", replicate=1)
D2 = dict(D1, gen_id="d2", combo_id="combo2")
E1 = dict(stage="essay", gen_id="e1", parent_gen_id="d1", combo_id="combo1", template_id="tE",
          llm_model_id="llmB", replicate=1)
E2 = dict(E1, gen_id="e2", template_id="copy", llm_model_id=None)
V1 = dict(stage="evaluation", gen_id="v1", parent_gen_id="e1", combo_id="combo1",
          template_id="tV", llm_model_id="llmC", replicate=1)
V2 = dict(V1, gen_id="v2", llm_model_id="llmD")
V3 = dict(V1, gen_id="v3", template_id="tW")       # member, never run -> pending
V4 = dict(V1, gen_id="v4", replicate=2)            # not a member; its parse fails
D3 = dict(D1, gen_id="d3", combo_id="combo3")      # backfilled, not a member
N_EVENTS = 21  # events write_full_log emits


def done(log, lin, **extra):
    fields = dict(provider_model="prov/" + str(lin["llm_model_id"]), finish_reason="stop",
                  prompt_tokens=10, completion_tokens=20, cost=0.5, duration_s=1.25, attempts=1,
                  raw_path="raw.txt", parsed_path="parsed.txt", raw_sha256="0" * 64,
                  source="run", copy=False)
    fields.update(extra)
    log.emit("generation_completed", cohort_id="c1", **lin, **fields)


def write_full_log(events_dir):
    """One run touching every event type."""
    log = EventLog(events_dir)
    members = [[m[f] for f in MEMBER_FIELDS] for m in (D1, D2, E1, E2, V1, V2, V3)]
    log.emit("cohort_built", cohort_id="c1", spec_hash="s", catalog_hash="k",
             counts={"draft": 2, "essay": 2, "evaluation": 3}, member_fields=MEMBER_FIELDS,
             members=members)
    log.emit("generation_started", cohort_id="c1", **D1)
    log.emit("llm_call_failed", cohort_id="c1", stage="draft", gen_id="d1", llm_model_id="llmA",
             attempt=1, status=429, error_class="RateLimited", message="slow down",
             will_retry=True, delay_s=2.0)
    done(log, D1, attempts=2, prompt_tokens=11, completion_tokens=22, cost=0.125, duration_s=3.5)
    log.emit("generation_started", cohort_id="c1", **D2)
    log.emit("llm_call_failed", cohort_id="c1", stage="draft", gen_id="d2", llm_model_id="llmA",
             attempt=1, status=401, error_class="AuthError", message="bad key",
             will_retry=False, delay_s=None)
    log.emit("generation_failed", cohort_id="c1", **D2, error_class="LLMError", error="bad key")
    log.emit("generation_started", cohort_id="c1", **E1)
    done(log, E1)
    log.emit("generation_started", cohort_id="c1", **E2)
    done(log, E2, copy=True, prompt_tokens=None, completion_tokens=None, cost=None)
    log.emit("generation_started", cohort_id="c1", **V1)
    log.emit("score_parsed", cohort_id="c1", stage="evaluation", gen_id="v1", score=7.0,
             scale="0-9", parser="in_last_line")
    done(log, V1)
    log.emit("generation_started", cohort_id="c1", **V2)
    log.emit("score_parsed", cohort_id="c1", stage="evaluation", gen_id="v2", score=5.5,
             scale="10", parser="complex")
    log.emit("generation_reused", cohort_id="c1", **V2, raw_path="raw.txt", raw_sha256="1" * 64)
    log.emit("generation_started", cohort_id="c1", **V4)
    log.emit("parse_failed", cohort_id="c1", stage="evaluation", gen_id="v4",
             parser="in_last_line", reason="no score")
    log.emit("generation_failed", cohort_id="c1", **V4, error_class="ParseError", error="no score")
    done(log, D3, source="backfill")
    log.close()
    return log.path


def rows(tables_dir, name):
    with open(tables_dir / f"{name}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def table_bytes(tables_dir):
    return {name: (tables_dir / f"{name}.csv").read_bytes() for name in TABLES}


def hand_line(type, ts, gen_id="d1", event_id=None, **fields):
    event = {"event_id": event_id or os.urandom(16).hex(), "schema": SCHEMA_VERSION, "ts": ts,
             "type": type, "cohort_id": "c1", "stage": "draft", "gen_id": gen_id, **fields}
    return json.dumps(event) + "\n"


def test_every_event_type_folds_into_the_expected_rows(tmp_path):
    write_full_log(tmp_path / "events")
    stats = replay(tmp_path / "events", tmp_path / "tables")
    t = tmp_path / "tables"

    gens = {r["gen_id"]: r for r in rows(t, "generation_results")}
    assert list(gens) == ["d1", "d2", "d3", "e1", "e2"]
    assert {k: gens["d1"][k] for k in ("stage", "combo_id", "template_id", "llm_model_id",
                                       "replicate", "status", "finish_reason", "prompt_tokens",
                                       "completion_tokens", "cost", "duration_s", "cohort_ids")} == {
        "stage": "draft", "combo_id": "combo1", "template_id": "tD", "llm_model_id": "llmA",
        "replicate": "1", "status": "done", "finish_reason": "stop", "prompt_tokens": "11",
        "completion_tokens": "22", "cost": "0.125", "duration_s": "3.5", "cohort_ids": "c1"}
    assert re.fullmatch(r"\d{4}-.+\.\d{6}Z", gens["d1"]["completed_at"])
    assert (gens["d2"]["status"], gens["d2"]["error"], gens["d2"]["cost"]) == ("failed", "LLMError: bad key", "")
    assert (gens["e1"]["parent_gen_id"], gens["e2"]["template_id"], gens["e2"]["cost"]) == ("d1", "copy", "")

    evals = {r["gen_id"]: r for r in rows(t, "evaluation_results")}
    assert list(evals) == ["v1", "v2", "v3", "v4"]
    assert evals["v1"] == {
        "gen_id": "v1", "essay_gen_id": "e1", "draft_gen_id": "d1", "combo_id": "combo1",
        "draft_template": "tD", "draft_llm": "llmA", "essay_template": "tE", "essay_llm": "llmB",
        "evaluation_template": "tV", "evaluation_llm": "llmC", "replicate": "1", "score": "7.0",
        "status": "done", "error": "", "cohort_ids": "c1", "origin_cohort_id": "c1", "input_mode": "prompt",
        "essay_origin_cohort_id": "c1"}
    assert (evals["v2"]["score"], evals["v2"]["status"]) == ("5.5", "done")
    # reused, never completed in this log: no creator cohort, no input mode
    assert (evals["v2"]["origin_cohort_id"], evals["v2"]["input_mode"]) == ("", "")
    assert (evals["v3"]["status"], evals["v3"]["score"], evals["v3"]["draft_gen_id"]) == ("pending", "", "d1")
    assert (evals["v4"]["status"], evals["v4"]["score"], evals["v4"]["error"]) == (
        "failed", "", "ParseError: no score")

    scores = rows(t, "scores_long")
    assert [(r["gen_id"], r["score"], r["scale"], r["parser"], r["essay_llm"]) for r in scores] == [
        ("v1", "7.0", "0-9", "in_last_line", "llmB"), ("v2", "5.5", "10", "complex", "llmB")]

    assert rows(t, "generation_scores_pivot") == [{
        "essay_gen_id": "e1", "combo_id": "combo1", "draft_template": "tD", "essay_template": "tE",
        "essay_llm": "llmB", "tV__llmC": "7.0", "tV__llmD": "5.5", "mean": "6.25", "n": "2"}]
    assert rows(t, "evaluation_model_template_pivot") == [
        {"evaluation_template": "tV", "llmC": "7.0", "llmD": "5.5"}]

    calls = rows(t, "llm_calls")
    assert [(c["gen_id"], c["attempt"], c["outcome"], c["status"], c["will_retry"]) for c in calls] == [
        ("d1", "1", "failed", "429", "true"), ("d1", "2", "ok", "", ""),
        ("d2", "1", "failed", "401", "false"), ("e1", "1", "ok", "", ""), ("v1", "1", "ok", "", "")]
    assert calls[1]["cost"] == "0.125" and calls[0]["error_class"] == "RateLimited"
    assert [c["ts"] for c in calls] == sorted(c["ts"] for c in calls)

    assert stats.read.events == N_EVENTS and stats.rows["llm_calls"] == 5


def test_load_tables_types_ids_as_text_and_measures_as_numbers(tmp_path):
    write_full_log(tmp_path / "events")
    replay(tmp_path / "events", tmp_path / "tables")
    tables = load_tables(tmp_path / "tables")
    assert set(tables) == set(TABLES)
    scores = tables["scores_long"]
    assert scores["score"].tolist() == [7.0, 5.5] and scores["gen_id"].tolist() == ["v1", "v2"]
    calls = tables["llm_calls"]
    assert calls["will_retry"].tolist()[:1] == [True] and calls["status"].iloc[0] == 429
    assert tables["generation_scores_pivot"]["mean"].iloc[0] == 6.25


def test_load_tables_without_replay_says_what_to_run(tmp_path):
    with pytest.raises(Exception, match="run `daydream replay`"):
        load_tables(tmp_path)


def test_duplicated_segment_and_second_replay_give_identical_bytes(tmp_path):
    segment = write_full_log(tmp_path / "events")
    replay(tmp_path / "events", tmp_path / "t1")
    first = table_bytes(tmp_path / "t1")
    replay(tmp_path / "events", tmp_path / "t1")
    assert table_bytes(tmp_path / "t1") == first

    shutil.copy(segment, segment.parent / ("0000-copy-" + segment.name))
    stats = replay(tmp_path / "events", tmp_path / "t2")
    assert table_bytes(tmp_path / "t2") == first
    assert stats.read.duplicates == N_EVENTS


def test_latest_event_by_ts_wins_regardless_of_segment_order(tmp_path):
    events = tmp_path / "events" / "2025-01-01"
    events.mkdir(parents=True)
    # "a" sorts first but holds the later events: a retry that completed after the failure in "b".
    (events / "a.jsonl").write_text(
        hand_line("generation_started", "2025-01-01T00:00:05.000000Z", **D1)
        + hand_line("generation_completed", "2025-01-01T00:00:06.000000Z", **D1, cost=2.0,
                    source="run", copy=False, attempts=1))
    (events / "b.jsonl").write_text(
        hand_line("generation_started", "2025-01-01T00:00:01.000000Z", **D1)
        + hand_line("generation_failed", "2025-01-01T00:00:02.000000Z", **D1, error_class="X",
                    error="boom"))
    replay(tmp_path / "events", tmp_path / "tables")
    [row] = rows(tmp_path / "tables", "generation_results")
    assert (row["status"], row["cost"], row["error"]) == ("done", "2.0", "")

    # And the other way round: the failure is the latest event.
    (events / "b.jsonl").write_text(
        hand_line("generation_started", "2025-01-01T00:00:07.000000Z", **D1)
        + hand_line("generation_failed", "2025-01-01T00:00:08.000000Z", **D1, error_class="X",
                    error="boom"))
    replay(tmp_path / "events", tmp_path / "tables")
    [row] = rows(tmp_path / "tables", "generation_results")
    assert (row["status"], row["error"]) == ("failed", "X: boom")


def test_latest_cohort_built_defines_membership(tmp_path):
    events = tmp_path / "events" / "2025-01-01"
    events.mkdir(parents=True)
    old = [[D1[f] for f in MEMBER_FIELDS], [D2[f] for f in MEMBER_FIELDS]]
    new = [[D1[f] for f in MEMBER_FIELDS]]
    (events / "a.jsonl").write_text(
        hand_line("cohort_built", "2025-01-01T00:00:02.000000Z", gen_id=None, stage=None,
                  member_fields=MEMBER_FIELDS, members=new)
        + hand_line("cohort_built", "2025-01-01T00:00:01.000000Z", gen_id=None, stage=None,
                    cohort_id="c2", member_fields=MEMBER_FIELDS, members=old))
    (events / "b.jsonl").write_text(
        hand_line("cohort_built", "2025-01-01T00:00:01.000000Z", gen_id=None, stage=None,
                  member_fields=MEMBER_FIELDS, members=old))
    replay(tmp_path / "events", tmp_path / "tables")
    got = {r["gen_id"]: (r["status"], r["cohort_ids"]) for r in rows(tmp_path / "tables", "generation_results")}
    assert got == {"d1": ("pending", "c1;c2"), "d2": ("pending", "c2")}


def test_torn_last_line_is_skipped_and_the_rest_used(tmp_path, caplog):
    segment = write_full_log(tmp_path / "events")
    with open(segment, "a") as fh:
        fh.write('{"event_id": "0123", "schema": 1, "ts": "2')
    with caplog.at_level(logging.WARNING):
        stats = replay(tmp_path / "events", tmp_path / "tables")
    assert stats.read.torn == [f"{segment}:{N_EVENTS + 1}"] and f"{segment}:{N_EVENTS + 1}" in caplog.text
    assert stats.rows["generation_results"] == 5 and stats.read.events == N_EVENTS


def test_malformed_middle_line_stops_replay_unless_skip_bad(tmp_path):
    segment = write_full_log(tmp_path / "events")
    lines = segment.read_text().splitlines(keepends=True)
    lines[4] = '{"broken": \n'
    segment.write_text("".join(lines))
    with pytest.raises(EventLogError, match=re.escape(f"{segment}:5")):
        replay(tmp_path / "events", tmp_path / "tables")
    assert not (tmp_path / "tables").exists()

    stats = replay(tmp_path / "events", tmp_path / "tables", skip_bad=True)
    assert len(stats.read.bad) == 1 and stats.read.bad[0].startswith(f"{segment}:5: ")
    assert stats.read.events == N_EVENTS - 1


def test_unknown_event_type_is_counted_and_ignored(tmp_path):
    write_full_log(tmp_path / "events")
    replay(tmp_path / "events", tmp_path / "plain")
    extra = tmp_path / "events" / "2099-01-01" / "z.jsonl"
    extra.parent.mkdir()
    extra.write_text(hand_line("quality_flagged", "2099-01-01T00:00:00.000000Z", gen_id="d1",
                               status="weird"))
    stats = replay(tmp_path / "events", tmp_path / "tables")
    assert stats.read.unknown_types == {"quality_flagged": 1}
    assert table_bytes(tmp_path / "tables") == table_bytes(tmp_path / "plain")


def test_future_schema_is_an_error_naming_the_line(tmp_path):
    segment = write_full_log(tmp_path / "events")
    event = json.loads(segment.read_text().splitlines()[1])
    event.update(schema=SCHEMA_VERSION + 1, event_id="f" * 32)
    with open(segment, "a") as fh:
        fh.write(json.dumps(event) + "\n")
    with pytest.raises(EventLogError, match=rf"{re.escape(str(segment))}:{N_EVENTS + 1}: .*upgrade the pipeline"):
        replay(tmp_path / "events", tmp_path / "tables", skip_bad=True)


def test_cli_replays_data_root_and_reports_errors(tmp_path, capsys):
    write_full_log(tmp_path / "events")
    assert daydream(["replay", "--data-root", str(tmp_path)]) == 0
    assert f"{N_EVENTS} events from 1 segments" in capsys.readouterr().out
    assert (tmp_path / "tables" / "generation_results.csv").exists()

    (tmp_path / "events" / "x.jsonl").write_text("oops\n" + hand_line("generation_started", "2025"))
    assert daydream(["replay", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daydream: error: ") and "x.jsonl:1" in err
    assert daydream(["replay", "--data-root", str(tmp_path), "--skip-bad"]) == 0
    assert "1 bad lines skipped" in capsys.readouterr().out


def test_empty_log_writes_header_only_tables(tmp_path):
    stats = replay(tmp_path / "events", tmp_path / "tables")
    assert set(stats.rows.values()) == {0}
    header = (tmp_path / "tables" / "evaluation_results.csv").read_text()
    assert header.startswith("gen_id,essay_gen_id,draft_gen_id,") and header.count("\n") == 1


# (type, fields) with a valid envelope but a payload replay cannot use
BAD_PAYLOADS = {
    "score-text": ("score_parsed", dict(gen_id="v1", stage="evaluation", score="abc", scale="0-9")),
    "score-NaN": ("score_parsed", dict(gen_id="v1", stage="evaluation", score=float("nan"))),
    "score-Infinity": ("score_parsed", dict(gen_id="v1", stage="evaluation", score=float("inf"))),
    "score-missing": ("score_parsed", dict(gen_id="v1", stage="evaluation", scale="0-9")),
    "members-text": ("cohort_built", dict(gen_id=None, member_fields=MEMBER_FIELDS, members="x")),
    "members-flat": ("cohort_built", dict(gen_id=None, member_fields=MEMBER_FIELDS, members=["d9", "d8"])),
    "counts-list": ("cohort_built", dict(gen_id=None, member_fields=MEMBER_FIELDS, members=[], counts=[1])),
    "counts-float": ("cohort_built", dict(gen_id=None, member_fields=MEMBER_FIELDS, members=[], counts={"draft": 1.5})),
    "fields-number": ("cohort_built", dict(gen_id=None, member_fields=["stage", 2], members=[])),
    "members-bool-cell": ("cohort_built", dict(gen_id=None, member_fields=MEMBER_FIELDS, members=[["d9", True]])),
    "members-dict-cell": ("cohort_built", dict(gen_id=None, member_fields=MEMBER_FIELDS, members=[["d9"], [{}]])),
    "replicate-word": ("generation_started", dict(D1, replicate="two")),
    "attempt-text": ("llm_call_failed", dict(gen_id="d1", attempt="1", status=429)),
    "will_retry-text": ("llm_call_failed", dict(gen_id="d1", attempt=1, will_retry="yes")),
    "tokens-float": ("generation_completed", dict(D1, prompt_tokens=1.5)),
    "cost-NaN": ("generation_completed", dict(D1, cost=float("nan"))),
}


@pytest.mark.parametrize("case", list(BAD_PAYLOADS))
def test_bad_payload_is_named_by_file_and_line_and_skipped_with_skip_bad(tmp_path, case):
    type, fields = BAD_PAYLOADS[case]
    write_full_log(tmp_path / "events")
    replay(tmp_path / "events", tmp_path / "plain")
    segment = tmp_path / "events" / "2099-01-01" / "hand.jsonl"
    segment.parent.mkdir()
    good = hand_line("generation_reused", "2099-01-01T00:00:00.000000Z", gen_id="d9")
    segment.write_text(hand_line(type, "2099-01-01T00:00:00.000000Z", **fields) + good)
    assert ("NaN" in segment.read_text()) == ("NaN" in case)  # json.dumps writes NaN as the bare word

    with pytest.raises(EventLogError, match=rf"{re.escape(str(segment))}:1: malformed event \("):
        replay(tmp_path / "events", tmp_path / "tables")
    stats = replay(tmp_path / "events", tmp_path / "tables", skip_bad=True)
    assert len(stats.read.bad) == 1 and stats.read.bad[0].startswith(f"{segment}:1: "), stats.read.bad
    assert stats.read.events == N_EVENTS + 1  # the good line after it is kept
    scores = [r["score"] for r in rows(tmp_path / "tables", "scores_long")]
    assert scores == [r["score"] for r in rows(tmp_path / "plain", "scores_long")]


def test_cli_reports_a_bad_payload_by_file_and_line(tmp_path, capsys):
    write_full_log(tmp_path / "events")
    (tmp_path / "events" / "x.jsonl").write_text(
        hand_line("score_parsed", "2099", gen_id="v1", stage="evaluation", score="abc"))
    assert daydream(["replay", "--data-root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daydream: error: ") and "x.jsonl:1" in err and "score" in err and "Traceback" not in err
    assert daydream(["replay", "--data-root", str(tmp_path), "--skip-bad"]) == 0
    assert "1 bad lines skipped" in capsys.readouterr().out


@pytest.mark.parametrize("piece_rows", [4096, 2])
def test_to_csv_writes_what_csv_writer_writes_for_any_values(monkeypatch, piece_rows):
    """Also when the rows are rendered a few at a time (csv_pieces), some pieces quoted, some not."""
    import io
    import random

    from pipeline import replay as replay_module
    from pipeline.replay import to_csv

    monkeypatch.setattr(replay_module, "_PIECE_ROWS", piece_rows)

    values = [None, "a", "", ",", '"', "x\ny", "\r", "None", " s ", 1, 0, -0.0, 1.5, float("nan"), True, 10**20]
    rng = random.Random(1)
    for _ in range(5000):
        width = rng.randint(1, 4)
        columns = tuple(f"c{i}" for i in range(width))
        # mostly rows as wide as the header, some not
        rows = [tuple(rng.choice(values) for _ in range(rng.choice((width, width, width, width + 1))))
                for _ in range(rng.randint(0, 5))]
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        assert to_csv(columns, rows) == out.getvalue(), rows


def test_a_generation_rebuilt_from_its_values_has_the_same_values():
    from pipeline.replay import _VALUES, _Gen, _gen_from

    from array import array

    values = tuple(f"v{i}" for i in range(len(_Gen.__slots__) - 1)) + (array("q", [1, 2 << 40]),)
    assert _Gen.__slots__[-1] == "keys" and _VALUES(_gen_from(values)) == values
    assert _VALUES(_gen_from(values[:-1] + (values[-1].tobytes(),))) == values   # as marshal hands them over
