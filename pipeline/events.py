"""Append-only event log: what happened to every generation, one JSON object per line.

Each writing process appends to a segment file of its own, so writers never share a file
and need no lock; replay (pipeline.replay) folds all segments into result tables.

    >>> log = EventLog(Path("data/events"))
    >>> log.emit("generation_started", cohort_id="c1", stage="draft", gen_id="d_x", ...)
    {'event_id': '9f0c...', 'schema': 1, 'ts': '2025-01-02T03:04:05.123456Z', 'type': ...}
    >>> log.fsync(); log.close()
    >>> read_events(Path("data/events")).events      # every event, de-duplicated, in ts order

Layout: ``<events_dir>/<YYYY-MM-DD>/<host>-<pid>-<start_ts_compact>-<random4>.jsonl``.
"""
import json
import logging
import math
import os
import re
import secrets
import socket
import threading
import uuid
import weakref
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import PipelineError

SCHEMA_VERSION = 1
EVENT_TYPES = frozenset({
    "cohort_built", "generation_started", "llm_call_failed", "generation_completed",
    "generation_reused", "parse_failed", "score_parsed", "generation_failed",
})
_ENVELOPE = ("event_id", "schema", "ts", "type")


# --- payload schemas: what replay relies on in each event type (checked when reading) ---------

@dataclass(frozen=True)
class _Check:
    """A field's allowed JSON types, an extra test of the value (or None) and how to say it."""
    kinds: frozenset
    test: object
    expected: str


def _digits(v):  # replicates: 2, or "2" from a CSV
    return type(v) is int or v.strip().isdigit()


def _counts(v):
    return all(type(n) is int for n in v.values())


def _texts(v):
    return all(type(x) is str for x in v)


def _rows(v):
    return all(type(row) is list and all(x is None or type(x) in (str, int, float) for x in row) for row in v)


_TEXT = _Check(frozenset({str}), None, "a string")
_INT = _Check(frozenset({int}), None, "an integer")
_INT_LIKE = _Check(frozenset({int, str}), _digits, "an integer")
# finite: NaN or Infinity would enter the tables as if they were numbers
_NUMBER = _Check(frozenset({int, float}), math.isfinite, "a finite number")
_FLAG = _Check(frozenset({bool}), None, "true or false")
_COUNTS = _Check(frozenset({dict}), _counts, "an object of integer counts")
_TEXTS = _Check(frozenset({list}), _texts, "a list of strings")
_ROWS = _Check(frozenset({list}), _rows, "a list of lists of values")

_LINEAGE = {"cohort_id": _TEXT, "stage": _TEXT, "parent_gen_id": _TEXT, "combo_id": _TEXT,
            "template_id": _TEXT, "llm_model_id": _TEXT, "replicate": _INT_LIKE}
# type -> {field: check}; a field listed in _REQUIRED must be present, any other may be absent or null
PAYLOADS = {
    "cohort_built": {"cohort_id": _TEXT, "spec_hash": _TEXT, "catalog_hash": _TEXT, "counts": _COUNTS,
                     "member_fields": _TEXTS, "members": _ROWS},
    "generation_started": _LINEAGE,
    "generation_reused": {**_LINEAGE, "raw_path": _TEXT, "parsed_path": _TEXT, "raw_sha256": _TEXT},
    "generation_completed": {**_LINEAGE, "raw_path": _TEXT, "parsed_path": _TEXT, "raw_sha256": _TEXT,
                             "source": _TEXT, "copy": _FLAG, "duration_s": _NUMBER, "provider_model": _TEXT,
                             "finish_reason": _TEXT, "prompt_tokens": _INT, "completion_tokens": _INT,
                             "total_tokens": _INT, "cost": _NUMBER, "attempts": _INT},
    "generation_failed": {**_LINEAGE, "error_class": _TEXT, "error": _TEXT},
    "llm_call_failed": {"cohort_id": _TEXT, "stage": _TEXT, "llm_model_id": _TEXT, "attempt": _INT,
                        "status": _INT, "error_class": _TEXT, "message": _TEXT, "will_retry": _FLAG,
                        "delay_s": _NUMBER},
    "parse_failed": {"cohort_id": _TEXT, "stage": _TEXT, "parser": _TEXT, "reason": _TEXT},
    "score_parsed": {"cohort_id": _TEXT, "stage": _TEXT, "score": _NUMBER, "scale": _TEXT, "parser": _TEXT},
}
_REQUIRED = {"score_parsed": ("score",), "cohort_built": ("member_fields", "members")}

log = logging.getLogger(__name__)


class EventLogError(PipelineError):
    """The event log cannot be written or read (malformed line, newer schema, bad event)."""


def _utc_ts(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class EventLog:
    """Writer for one process's segment of the event log.

        >>> log = EventLog(Path("data/events"))
        >>> event = log.emit("score_parsed", cohort_id="c1", stage="evaluation",
        ...                  gen_id="v_1", score=7.0, scale="0-9", parser="in_last_line")
        >>> log.fsync()      # at task end: the events survive a power cut

    The segment file is created on the first emit. Safe across fork (a child process gets a
    segment of its own) and across threads of one process.
    """

    def __init__(self, events_dir):
        self.events_dir = Path(events_dir)
        self.path = None  # the current segment, once something was emitted
        self._fd = None
        self._pid = os.getpid()
        self._last_ts = ""
        self._lock = threading.Lock()
        _LIVE_WRITERS.add(self)

    def emit(self, type, **fields) -> dict:
        """Append one event and return it. ``fields`` go flat at top level next to the
        envelope (event_id, schema, ts, type); cohort_id, stage and gen_id default to None."""
        if type not in EVENT_TYPES:
            raise EventLogError(f"unknown event type {type!r}; expected one of {sorted(EVENT_TYPES)}")
        clash = [k for k in _ENVELOPE if k in fields]
        if clash:
            raise EventLogError(f"{type}: fields {clash} are set by EventLog.emit, not by the caller")
        with self._lock:
            if self._pid != os.getpid() or self._fd is None:
                self._open_segment()
            # max() keeps ts non-decreasing within this segment even if the clock steps back
            ts = max(_utc_ts(datetime.now(timezone.utc)), self._last_ts)
            self._last_ts = ts
            event = {"event_id": uuid.uuid4().hex, "schema": SCHEMA_VERSION, "ts": ts, "type": type,
                     "cohort_id": None, "stage": None, "gen_id": None}
            event.update(fields)
            try:
                data = (json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                        + "\n").encode("utf-8")
            except (TypeError, ValueError) as exc:
                raise EventLogError(f"{type} event for gen_id={event['gen_id']!r} is not "
                                    f"JSON-serialisable: {exc}") from exc
            self._append(data)
        return event

    def _append(self, data):
        # One write per line. After a short or failed write the segment ends in a fragment: it is
        # closed for good (replay skips a torn last line) and the line goes whole into a new one,
        # so no later event of this process is ever glued to the fragment.
        for retry in (False, True):
            try:
                if os.write(self._fd, data) == len(data):
                    return
                problem = "short write"
            except OSError as exc:
                problem = exc.strerror
            failed = self.path
            os.close(self._fd)
            self._fd = None
            if retry:
                break
            try:
                self._open_segment()
            except OSError as exc:
                problem = exc.strerror
                break
        raise EventLogError(f"{failed}: cannot append an event ({problem}); free disk space or fix "
                            "permissions, then rerun")

    def fsync(self):
        """Force this process's events to disk (call at task end)."""
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.fsync(self._fd)

    def close(self):
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # in a forked child this closes only the child's copy
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _open_segment(self):
        if self._pid != os.getpid():
            # Forked child: the inherited descriptor is the parent's segment; drop our copy.
            if self._fd is not None:
                os.close(self._fd)
            self._pid, self._fd, self.path = os.getpid(), None, None
        now = datetime.now(timezone.utc)
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
        day_dir = self.events_dir / now.strftime("%Y-%m-%d")
        day_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = day_dir / (f"{host}-{self._pid}-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
                              f"-{secrets.token_hex(2)}.jsonl")
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
            self.path = path
            return


_LIVE_WRITERS = weakref.WeakSet()


def _after_fork_in_child():
    # A lock held by another parent thread at fork time would never be released in the child.
    for writer in list(_LIVE_WRITERS):
        writer._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------- reading

@dataclass
class ReadStats:
    segments: int = 0
    lines: int = 0
    events: int = 0          # distinct events kept
    duplicates: int = 0      # lines whose event_id was already seen
    torn: list = field(default_factory=list)     # "file:line" of skipped torn last lines
    bad: list = field(default_factory=list)      # "file:line: reason" skipped under skip_bad
    unknown_types: dict = field(default_factory=dict)   # type -> count (kept, ignored by replay)

    def summary(self) -> str:
        parts = [f"{self.events} events from {self.segments} segments"]
        for label, n in (("duplicates", self.duplicates), ("torn last lines", len(self.torn)),
                         ("bad lines skipped", len(self.bad)),
                         ("unknown-type events", sum(self.unknown_types.values()))):
            if n:
                parts.append(f"{n} {label}")
        return ", ".join(parts)


@dataclass
class ReadResult:
    events: list
    stats: ReadStats


def iter_segments(events_dir) -> list:
    """All segment files under ``events_dir``, sorted by relative path (deterministic)."""
    events_dir = Path(events_dir)
    if not events_dir.is_dir():
        return []
    return sorted(events_dir.rglob("*.jsonl"), key=lambda p: p.relative_to(events_dir).as_posix())


def scan_events(events_dir, skip_bad=False, stats=None):
    """Yield ``((ts, segment_index, line_no), event)`` for each distinct event, in file order.

    The key orders events globally; pipeline.replay folds this stream without sorting it.
    Fills ``stats`` (a ReadStats) as it goes."""
    stats = stats if stats is not None else ReadStats()
    seen = set()
    unknown = Counter()
    loads = json.loads
    for seg_idx, path in enumerate(iter_segments(events_dir)):
        stats.segments += 1
        lines = _split_lines(path.read_bytes())
        last = len(lines)
        while last and not lines[last - 1]:
            last -= 1
        stats.lines += last - lines[:last].count("")
        for line_no, line in enumerate(lines, 1):
            if not line:
                continue
            try:
                event = loads(line)
                # Inlined check of the envelope: this loop runs once per event.
                get = event.get
                ok = (type(get("event_id")) is str and type(get("ts")) is str
                      and type(get("type")) is str and type(get("schema")) is int
                      and type(get("gen_id")) is str)
            except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
                if line_no == last:
                    where = f"{path}:{line_no}"
                    log.warning("%s: skipping torn last line (a writer stopped mid-write)", where)
                    stats.torn.append(where)
                    continue
                ok, problem = False, f"invalid JSON: {exc}"
            except AttributeError:  # valid JSON but not an object
                ok, problem = False, "not a JSON object"
            else:
                problem = None if ok else _problem(event)
                if problem is None:
                    if event["schema"] > SCHEMA_VERSION:
                        raise EventLogError(f"{path}:{line_no}: event schema {event['schema']} is newer than "
                                            f"this pipeline's {SCHEMA_VERSION}; upgrade the pipeline")
                    problem = payload_problem(event)
            if problem:
                where = f"{path}:{line_no}"
                if not skip_bad:
                    raise EventLogError(f"{where}: malformed event ({problem}); fix or delete the "
                                        "line, or replay with --skip-bad to skip and count it")
                stats.bad.append(f"{where}: {problem}")
                continue
            event_id = event["event_id"]
            if event_id in seen:
                stats.duplicates += 1
                continue
            seen.add(event_id)
            if event["type"] not in EVENT_TYPES:
                unknown[event["type"]] += 1
            stats.events += 1
            yield (event["ts"], seg_idx, line_no), event
    stats.unknown_types = dict(sorted(unknown.items()))


def _split_lines(raw: bytes) -> list:
    """Lines as str; a line that is not UTF-8 stays bytes so json.loads reports it."""
    try:
        return raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:
        lines = raw.split(b"\n")
        for i, chunk in enumerate(lines):
            try:
                lines[i] = chunk.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return lines


def _problem(event):
    """Why ``event`` (a dict failing the fast check in scan_events) is unusable, or None."""
    for key, kind in (("event_id", str), ("ts", str), ("type", str), ("schema", int)):
        if type(event.get(key)) is not kind:
            return f"missing or non-{kind.__name__} {key!r}"
    if event["type"] in EVENT_TYPES and event["type"] != "cohort_built":
        if type(event.get("gen_id")) is not str:
            return f"{event['type']} without a gen_id"
    return None


def payload_problem(event):
    """What is wrong with ``event``'s fields for its type (see PAYLOADS), or None."""
    rules = _RULES.get(event["type"])
    if rules is None:
        return None  # unknown types are kept and counted, never folded
    get = event.get
    for key, kinds, test, expected in rules:
        value = get(key)
        if value is not None and (type(value) not in kinds or (test is not None and not test(value))):
            return f"{event['type']}: {key} is {json.dumps(value)[:60]}, expected {expected}"
    for key in _REQUIRED.get(event["type"], ()):
        if get(key) is None:
            return f"{event['type']} without {key!r}"
    return None


# the same table as flat tuples: this check runs once per event read
_RULES = {etype: tuple((key, c.kinds, c.test, c.expected) for key, c in fields.items())
          for etype, fields in PAYLOADS.items()}


def read_events(events_dir, skip_bad=False) -> ReadResult:
    """Every distinct event under ``events_dir`` ordered by (ts, segment, line).

    A torn last line of a segment is skipped with a warning; any other malformed line raises
    EventLogError naming file:line, unless ``skip_bad`` (then it is counted in stats.bad)."""
    stats = ReadStats()
    pairs = list(scan_events(events_dir, skip_bad=skip_bad, stats=stats))
    # File order is already (segment, line) order, so a stable sort on ts gives the full key.
    pairs.sort(key=lambda pair: pair[0][0])
    return ReadResult(events=[event for _, event in pairs], stats=stats)
