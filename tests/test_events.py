import json
import logging
import multiprocessing
import os
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from pipeline import events as events_mod
from pipeline.errors import PipelineError
from pipeline.events import (SCHEMA_VERSION, EventLog, EventLogError, iter_segments,
                             read_events)

TS_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
FORK = multiprocessing.get_context("fork")


def line(type="generation_started", ts="2025-01-01T00:00:00.000000Z", event_id=None, **fields):
    event = {"event_id": event_id or os.urandom(16).hex(), "schema": SCHEMA_VERSION, "ts": ts,
             "type": type, "cohort_id": "c1", "stage": "draft", "gen_id": "d1", **fields}
    return json.dumps(event) + "\n"


def write_segment(events_dir, name, text):
    path = events_dir / "2025-01-01" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_emit_writes_one_flat_json_line_per_event(tmp_path):
    log = EventLog(tmp_path)
    first = log.emit("generation_started", cohort_id="c1", stage="draft", gen_id="d_1",
                     template_id="t", replicate=1)
    log.emit("cohort_built", cohort_id="c1", counts={"draft": 1}, member_fields=["gen_id"], members=[])
    log.fsync()
    log.close()

    assert set(first) >= {"event_id", "schema", "ts", "type", "cohort_id", "stage", "gen_id"}
    assert re.fullmatch(r"[0-9a-f]{32}", first["event_id"])
    assert TS_RE.match(first["ts"]) and first["schema"] == SCHEMA_VERSION

    [segment] = iter_segments(tmp_path)
    rel = segment.relative_to(tmp_path).as_posix()
    assert re.fullmatch(rf"\d{{4}}-\d\d-\d\d/.+-{os.getpid()}-\d{{8}}T\d{{12}}Z-[0-9a-f]{{4}}\.jsonl", rel)
    lines = segment.read_text().splitlines()
    assert json.loads(lines[0]) == first
    cohort = json.loads(lines[1])
    assert cohort["gen_id"] is None and cohort["counts"] == {"draft": 1}


def test_emit_rejects_unknown_type_and_envelope_override(tmp_path):
    log = EventLog(tmp_path)
    with pytest.raises(EventLogError, match="unknown event type"):
        log.emit("generation_finished", gen_id="d1")
    with pytest.raises(EventLogError, match="ts"):
        log.emit("generation_started", gen_id="d1", ts="yesterday")
    with pytest.raises(EventLogError, match="d1"):
        log.emit("score_parsed", gen_id="d1", score=float("nan"))
    assert issubclass(EventLogError, PipelineError)


@pytest.mark.parametrize("etype, fields, message", [
    ("generation_completed", {"gen_id": "d1", "prompt_tokns": 3}, r"generation_completed: unknown field\(s\) \['prompt_tokns'\]"),
    ("score_parsed", {"gen_id": "d1", "scale": "0-9"}, r"score_parsed without 'score'"),
    ("generation_started", {"stage": "draft"}, r"generation_started without 'gen_id'"),
    ("llm_call_failed", {"gen_id": "d1", "attempt": "1"}, r"llm_call_failed: attempt is \"1\", expected an integer"),
    ("generation_completed", {"gen_id": "d1", "copy": 1}, r"generation_completed: copy is 1, expected true or false"),
])
def test_emit_refuses_an_event_its_definition_does_not_allow_and_writes_nothing(tmp_path, etype, fields, message):
    log = EventLog(tmp_path)
    with pytest.raises(EventLogError, match=message):
        log.emit(etype, **fields)
    assert iter_segments(tmp_path) == []


def test_readme_event_table_is_the_one_the_definitions_give():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert events_mod.markdown_table() in readme, \
        "README.md's event table differs from pipeline/events.py: paste events.markdown_table() into it"


def test_ts_never_goes_backwards_when_the_clock_steps_back(tmp_path, monkeypatch):
    base = datetime(2025, 1, 1, 12, tzinfo=timezone.utc)
    # The first emit reads the clock twice: once to name the segment, once for its ts.
    clock = iter([base, base + timedelta(seconds=5), base, base + timedelta(seconds=6)])

    class SteppingClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return next(clock)

    monkeypatch.setattr(events_mod, "datetime", SteppingClock)
    log = EventLog(tmp_path)
    stamps = [log.emit("llm_call_failed", gen_id="d1", attempt=i)["ts"] for i in range(3)]
    assert stamps == ["2025-01-01T12:00:05.000000Z", "2025-01-01T12:00:05.000000Z",
                      "2025-01-01T12:00:06.000000Z"]


def _emit_many(events_dir, n, barrier):
    log = EventLog(events_dir)
    barrier.wait()
    for i in range(n):
        log.emit("llm_call_failed", stage="draft", gen_id=f"d_{os.getpid()}_{i}", attempt=1,
                 message="x" * (i % 300))
    log.close()


def test_two_processes_writing_at_once_never_interleave(tmp_path):
    barrier = FORK.Barrier(2)
    procs = [FORK.Process(target=_emit_many, args=(tmp_path, 2000, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    segments = iter_segments(tmp_path)
    assert len(segments) == 2
    pids = {int(s.name.split("-")[-3]) for s in segments}
    assert pids == {p.pid for p in procs}
    every_line = [json.loads(text) for s in segments for text in s.read_text().splitlines()]
    assert len(every_line) == 4000
    result = read_events(tmp_path)
    assert len(result.events) == 4000 and not result.stats.torn and not result.stats.bad
    assert [e["ts"] for e in result.events] == sorted(e["ts"] for e in result.events)


def _emit_in_child(log, queue):
    event = log.emit("generation_started", gen_id="child")
    log.fsync()
    queue.put((str(log.path), event["event_id"]))


def test_writer_used_in_forked_child_opens_its_own_segment(tmp_path):
    log = EventLog(tmp_path)
    log.emit("generation_started", gen_id="parent-1")
    parent_segment = log.path
    queue = FORK.Queue()
    child = FORK.Process(target=_emit_in_child, args=(log, queue))
    child.start()
    child_segment, _ = queue.get(timeout=30)
    child.join(timeout=30)
    log.emit("generation_started", gen_id="parent-2")
    log.close()

    assert child_segment != str(parent_segment) and log.path == parent_segment
    assert f"-{child.pid}-" in os.path.basename(child_segment)
    by_file = {s.name: [json.loads(t)["gen_id"] for t in s.read_text().splitlines()]
               for s in iter_segments(tmp_path)}
    assert sorted(by_file.values()) == [["child"], ["parent-1", "parent-2"]]


def test_read_orders_by_ts_across_segments_and_drops_duplicates(tmp_path):
    late = line(ts="2025-01-01T00:00:03.000000Z", gen_id="late")
    write_segment(tmp_path, "a.jsonl", late + line(ts="2025-01-01T00:00:04.000000Z", gen_id="last"))
    write_segment(tmp_path, "b.jsonl", line(ts="2025-01-01T00:00:01.000000Z", gen_id="early") + late)
    result = read_events(tmp_path)
    assert [e["gen_id"] for e in result.events] == ["early", "late", "last"]
    assert result.stats.duplicates == 1 and result.stats.segments == 2


def test_torn_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    path = write_segment(tmp_path, "a.jsonl", line(gen_id="d1") + line(gen_id="d2") + '{"event_id": "ab')
    with caplog.at_level(logging.WARNING):
        result = read_events(tmp_path)
    assert [e["gen_id"] for e in result.events] == ["d1", "d2"]
    assert result.stats.torn == [f"{path}:3"]
    assert f"{path}:3" in caplog.text and "torn" in caplog.text


def test_torn_multibyte_character_at_end_counts_as_torn(tmp_path):
    cut = line(gen_id="d2", message="café").encode()[:-6]  # ends inside the "é"
    path = tmp_path / "2025-01-01" / "a.jsonl"
    path.parent.mkdir()
    path.write_bytes(line(gen_id="d1").encode() + cut)
    result = read_events(tmp_path)
    assert [e["gen_id"] for e in result.events] == ["d1"] and result.stats.torn == [f"{path}:2"]


def test_malformed_middle_line_names_file_and_line_unless_skip_bad(tmp_path):
    path = write_segment(tmp_path, "a.jsonl", line(gen_id="d1") + "not json\n" + line(gen_id="d3")
                         + json.dumps({"type": "generation_started"}) + "\n" + line(gen_id="d5"))
    with pytest.raises(EventLogError, match=re.escape(f"{path}:2")):
        read_events(tmp_path)
    result = read_events(tmp_path, skip_bad=True)
    assert [e["gen_id"] for e in result.events] == ["d1", "d3", "d5"]
    assert [b.split(": ")[0] for b in result.stats.bad] == [f"{path}:2", f"{path}:4"]


# one value of each shape a JSON line can give a field
SHAPES = [None, "x", " 3", "", 2, 2.5, float("nan"), float("inf"), True, [], ["a"], [1], [["a", 1, None, 2.5]],
          [["a", True]], [["a"], "b"], {"a": 1}, {"a": 1.5}]


@pytest.mark.parametrize("etype", sorted(events_mod.PAYLOADS))
def test_replays_fast_check_accepts_exactly_what_the_field_checks_accept(etype):
    # replay folds what valid() accepts without asking the per-field checker that names problems
    valid, check = events_mod._VALID[etype], events_mod._CHECKERS[etype]
    base = {"event_id": "e1", "schema": SCHEMA_VERSION, "ts": "2025", "type": etype}
    for name, (_, required) in events_mod.PAYLOADS[etype].items():
        if required:  # the first shape its check takes
            base[name] = next(v for v in SHAPES[1:] if check(dict(base, **{name: v})) != name)
    assert valid(base) and check(base) is None
    for name in events_mod.PAYLOADS[etype]:
        for value in SHAPES + ["absent"]:
            event = dict(base, **{name: value})
            if value == "absent":
                del event[name]
            assert valid(event) == (check(event) is None), (name, value, check(event))
    for envelope in ({"schema": SCHEMA_VERSION + 1}, {"schema": True}, {"ts": None}, {"event_id": 5}):
        assert not valid(dict(base, **envelope)), envelope


def test_future_schema_asks_for_an_upgrade(tmp_path):
    path = write_segment(tmp_path, "a.jsonl", line() + line(schema=SCHEMA_VERSION + 1) + line())
    for skip_bad in (False, True):
        with pytest.raises(EventLogError, match=rf"{re.escape(str(path))}:2.*upgrade the pipeline"):
            read_events(tmp_path, skip_bad=skip_bad)


def test_unknown_event_type_is_kept_and_counted(tmp_path):
    write_segment(tmp_path, "a.jsonl", line() + line(type="quality_flagged") + line(type="quality_flagged"))
    result = read_events(tmp_path)
    assert len(result.events) == 3
    assert result.stats.unknown_types == {"quality_flagged": 2}
    assert "2 unknown-type events" in result.stats.summary()


def test_missing_events_dir_reads_as_empty(tmp_path):
    result = read_events(tmp_path / "nope")
    assert result.events == [] and result.stats.segments == 0


# A process whose file-size limit cuts an event line short (a real short write, then EFBIG).
_SHORT_WRITE = r"""
import os, resource, signal, sys
from pipeline.events import EventLog, EventLogError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of being killed
log = EventLog(sys.argv[1])
log.emit("generation_started", cohort_id="c1", stage="draft", gen_id="d_first", template_id="t" * 300)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
# 40 bytes of room left in this segment; a fresh segment may grow to the same size
resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(log.path) + 40 - int(sys.argv[2]), hard))
try:
    log.emit("generation_completed", cohort_id="c1", stage="draft", gen_id="d_second", raw_sha256="0" * 64)
    print("written")
except EventLogError as exc:
    print(f"error: {exc}")
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
log.emit("generation_completed", cohort_id="c1", stage="draft", gen_id="d_third", raw_sha256="1" * 64)
log.close()
"""


@pytest.mark.parametrize("squeeze", [0, 420], ids=["room-in-a-new-segment", "no-room-anywhere"])
def test_short_write_ends_the_segment_and_later_events_stay_whole(tmp_path, squeeze):
    """The line cut short stays behind as the last line of a segment that is never written again;
    the event goes whole into a new segment if it fits (else emit fails naming the file), and the
    next event of the process is whole either way, never glued to the fragment."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", _SHORT_WRITE, str(tmp_path), str(squeeze)], capture_output=True,
                         text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    result = read_events(tmp_path)
    got = [e["gen_id"] for e in result.events]
    fragments = [p for p in iter_segments(tmp_path) if not p.read_bytes().endswith(b"\n")]
    assert len(fragments) == 1 and len(result.stats.torn) == 1, (fragments, result.stats)
    if squeeze == 0:
        assert out.stdout.strip() == "written"
        assert got == ["d_first", "d_second", "d_third"]
    else:
        assert out.stdout.startswith("error: ") and "cannot append an event" in out.stdout, out.stdout
        assert got == ["d_first", "d_third"]
