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
import itertools
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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .errors import PipelineError

SCHEMA_VERSION = 1
_ENVELOPE = ("event_id", "schema", "ts", "type")


# --- the event types: one class each, the single definition of every payload ----------------
# Each field is annotated with its check; it may be absent or null unless the check is wrapped in
# required(...). A type has its bases' fields first. EventLog.emit refuses an unknown field, a
# missing required one or a wrong type at once; replay refuses the last two (naming file:line) and
# ignores fields it does not know.

@dataclass(frozen=True)
class _Check:
    """A field's allowed values: ``ok`` is a Python expression over ``v`` (never None), true when v
    is right; ``required``: the field must be present and not null."""
    ok: str
    expected: str
    required: bool = False


def required(check):
    return _Check(check.ok, check.expected, required=True)


TEXT = _Check("type(v) is str", "a string")
INT = _Check("type(v) is int", "an integer")
# replicates: 2, or "2" from a CSV
INT_LIKE = _Check("type(v) is int or (type(v) is str and v.strip().isdigit())", "an integer")
# finite: NaN or Infinity would enter the tables as if they were numbers
NUMBER = _Check("type(v) is float and isfinite(v) or type(v) is int", "a finite number")
FLAG = _Check("type(v) is bool", "true or false")
# containers are checked by the set of their items' types: one C-level pass, no Python loop
COUNTS = _Check("type(v) is dict and set(map(type, v.values())) <= {int}", "an object of integer counts")
TEXTS = _Check("type(v) is list and set(map(type, v)) <= {str}", "a list of strings")
ROWS = _Check("type(v) is list and set(map(type, v)) <= {list}"
              " and set(map(type, chain.from_iterable(v))) <= {NoneType, str, int, float}",
              "a list of lists of values")


class _Event:
    cohort_id: TEXT
    stage: TEXT
    gen_id: TEXT


class _Generation(_Event):
    gen_id: required(TEXT)   # every type but cohort_built names its generation


class _Lineage(_Generation):
    parent_gen_id: TEXT
    combo_id: TEXT
    template_id: TEXT
    llm_model_id: TEXT
    replicate: INT_LIKE


class _Saved(_Lineage):
    """The answer is on disk: raw.txt, its parsed output, raw.txt's hash."""
    raw_path: TEXT
    parsed_path: TEXT
    raw_sha256: TEXT


class CohortBuilt(_Event):
    """A cohort's membership was (re)written; the latest per cohort wins."""
    spec_hash: TEXT
    catalog_hash: TEXT
    counts: COUNTS
    member_fields: required(TEXTS)
    members: required(ROWS)
    source: TEXT   # import: written by `daydream import-original`


class GenerationStarted(_Lineage):
    """A paid call is about to be made."""


class LlmCallFailed(_Generation):
    """One attempt failed (status: HTTP status or null)."""
    llm_model_id: TEXT
    attempt: INT
    status: INT
    error_class: TEXT
    message: TEXT
    will_retry: FLAG
    delay_s: NUMBER


class GenerationCompleted(_Saved):
    """Answered and parsed; source: run, backfill or import."""
    source: TEXT
    copy: FLAG
    duration_s: NUMBER
    provider_model: TEXT
    finish_reason: TEXT
    prompt_tokens: INT
    completion_tokens: INT
    total_tokens: INT
    cost: NUMBER
    attempts: INT


class GenerationReused(_Saved):
    """raw.txt existed: parsed again, no call."""


class ParseFailed(_Generation):
    """The answer could not be parsed."""
    parser: TEXT
    reason: TEXT


class ScoreParsed(_Generation):
    """An evaluation's score (scale 0-9 or 10); the latest parse outcome wins."""
    score: required(NUMBER)
    scale: TEXT
    parser: TEXT
    source: TEXT


class GenerationFailed(_Lineage):
    """The generation failed; its dependents are blocked."""
    error_class: TEXT
    error: TEXT


EVENTS = {"cohort_built": CohortBuilt, "generation_started": GenerationStarted,
          "llm_call_failed": LlmCallFailed, "generation_completed": GenerationCompleted,
          "generation_reused": GenerationReused, "parse_failed": ParseFailed,
          "score_parsed": ScoreParsed, "generation_failed": GenerationFailed}
EVENT_TYPES = frozenset(EVENTS)


def _fields(cls) -> dict:
    """name -> check, bases first; a field a subclass declares again keeps its first place."""
    fields = {}
    for klass in reversed(cls.__mro__):
        fields.update(vars(klass).get("__annotations__", {}))
    return fields


# type -> {field: (check, required)}, in definition order
PAYLOADS = {etype: {name: (check, check.required) for name, check in _fields(cls).items()}
            for etype, cls in EVENTS.items()}

def _compile(etype, payload):
    """Two functions written out for this type, so checking an event runs no loop over the schema
    and builds no objects: ``check(event)``, None or the first bad field (emit, and replay's
    error messages); and ``valid(event)``, true when the event, envelope included, is fine to fold
    (replay's fast path, once per event)."""
    check = ["def check(event):", "    get = event.get"]
    valid = ["def valid(event):", "    get = event.get", "    return (type(get('event_id')) is str",
             "        and type(get('ts')) is str and type(v := get('schema')) is int and v <= SCHEMA_VERSION"]
    for name, (kind, required) in payload.items():
        check.append(f"    v = get({name!r})")
        if required:
            check.append(f"    if v is None: return {name!r}")
        check.append(f"    if v is not None and not ({kind.ok}): return {name!r}")
        # v is bound (walrus) before the check's expression reads it
        valid.append(f"        and ((v := get({name!r})) is not None and ({kind.ok}))" if required else
                     f"        and ((v := get({name!r})) is None or ({kind.ok}))")
    check.append("    return None")
    valid[-1] += ")"
    namespace = {"isfinite": math.isfinite, "chain": itertools.chain, "NoneType": type(None),
                 "SCHEMA_VERSION": SCHEMA_VERSION}
    for lines in (check, valid):
        exec(compile("\n".join(lines), f"<{etype} checker>", "exec"), namespace)
    return namespace["check"], namespace["valid"]


_COMPILED = {etype: _compile(etype, payload) for etype, payload in PAYLOADS.items()}
_CHECKERS = {etype: check for etype, (check, _) in _COMPILED.items()}
_VALID = {etype: valid for etype, (_, valid) in _COMPILED.items()}
_ALLOWED = {etype: frozenset(payload) for etype, payload in PAYLOADS.items()}


def _field_problem(etype, event, key):
    value = event.get(key)
    if value is None:
        return f"{etype} without {key!r}"
    return f"{etype}: {key} is {json.dumps(value)[:60]}, expected {PAYLOADS[etype][key][0].expected}"


def markdown_table() -> str:
    """The README's event table, from EVENTS (tests/test_events.py checks the README holds it)."""
    rows = ["| type | required | optional | meaning |", "| --- | --- | --- | --- |"]
    for etype, cls in EVENTS.items():
        payload = PAYLOADS[etype]
        req = ", ".join(f"`{k}`" for k, (_, r) in payload.items() if r)
        opt = ", ".join(f"`{k}`" for k, (_, r) in payload.items() if not r)
        rows.append(f"| `{etype}` | {req} | {opt} | {cls.__doc__} |")
    return "\n".join(rows) + "\n"


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
        unknown = sorted(fields.keys() - _ALLOWED[type])
        if unknown:
            raise EventLogError(f"{type}: unknown field(s) {unknown}; {EVENTS[type].__name__} in "
                                f"pipeline/events.py defines {sorted(_ALLOWED[type])}")
        payload = {"cohort_id": None, "stage": None, "gen_id": None, **fields}
        bad = _CHECKERS[type](payload)
        if bad is not None:
            raise EventLogError(f"cannot write {_field_problem(type, payload, bad)} (gen_id="
                                f"{payload['gen_id']!r}); see {EVENTS[type].__name__} in pipeline/events.py")
        with self._lock:
            if self._pid != os.getpid() or self._fd is None:
                self._open_segment()
            # max() keeps ts non-decreasing within this segment even if the clock steps back
            ts = max(_utc_ts(datetime.now(timezone.utc)), self._last_ts)
            self._last_ts = ts
            event = {"event_id": uuid.uuid4().hex, "schema": SCHEMA_VERSION, "ts": ts, "type": type}
            event.update(payload)
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
        day_dir = self.events_dir / now.strftime("%Y-%m-%d")
        day_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = day_dir / (f"{_SEGMENT_HOST}-{self._pid}-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
                              f"-{secrets.token_hex(2)}.jsonl")
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                continue
            self.path = path
            return


# the host part of segment names, worked out once per process: luigi's task processes open a
# segment each, and the regex would be compiled in every one of them
_SEGMENT_HOST = re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname()) or "host"
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
    """Yield ``((ts, segment, offset), event)`` for each distinct event, in file order; segment
    is the file's path relative to ``events_dir`` (so keys stay put when new segments appear) and
    offset the byte where the event's line starts in it.

    The key orders events globally; pipeline.replay folds this stream without sorting it.
    Fills ``stats`` (a ReadStats) as it goes."""
    stats = stats if stats is not None else ReadStats()
    seen = set()
    events_dir = Path(events_dir)
    for path in iter_segments(events_dir):
        stats.segments += 1
        lines = _split_lines(path.read_bytes())
        yield from scan_lines(path, path.relative_to(events_dir).as_posix(), lines, 1, 0, seen, stats, skip_bad)
    stats.unknown_types = dict(sorted(stats.unknown_types.items()))


_scan_once = json.JSONDecoder().scan_once  # the C scanner json.loads ends in, without its wrapping


def scan_lines(path, segment, lines, first_line, first_position, seen, stats, skip_bad, final=True):
    """Check and yield ``((ts, segment, position), event)`` for the events of ``lines`` (a
    segment's text split at newlines, its first element being line ``first_line`` and starting at
    ``first_position``, a byte offset plus whatever the caller adds to tell segments apart:
    pipeline.fold_state.events_at); ``seen`` holds the event_ids met so far (duplicates are counted
    and dropped). An unparsable last line is a torn write: skipped with a warning (unless not
    ``final``: more of the segment follows ``lines``)."""
    last = len(lines)
    while last and not lines[last - 1]:
        last -= 1
    stats.lines += last - lines[:last].count("")
    last_no = last + first_line - 1 if final else 0
    scan, valid, add = _scan_once, _VALID, seen.add
    kept = duplicates = 0
    at = first_position
    try:
        for line_no, line in enumerate(lines, first_line):
            position = at
            # str.isascii is O(1); bytes (a line that is not UTF-8) are measured as they are
            at += (len(line) if line.isascii() or type(line) is bytes else len(line.encode("utf-8"))) + 1
            if not line:
                continue
            # The fast path, once per event: a compact line of a known type, every check passing.
            # Anything else (a non-object raises TypeError, an unknown type KeyError) goes to
            # _check_line, which finds what is wrong and says where.
            try:
                event, end = scan(line, 0)
                fast = end == len(line) and valid[event["type"]](event)
            except (StopIteration, ValueError, TypeError, KeyError):
                fast = False
            if not fast:
                event = _check_line(path, line_no, line, line_no == last_no, stats, skip_bad)
                if event is None:
                    continue
            event_id = event["event_id"]
            if event_id in seen:
                duplicates += 1
                continue
            add(event_id)
            kept += 1
            if not fast and event["type"] not in valid:  # kept and counted, never folded
                stats.unknown_types[event["type"]] = stats.unknown_types.get(event["type"], 0) + 1
            yield (event["ts"], segment, position), event
    finally:
        stats.events += kept
        stats.duplicates += duplicates


def _check_line(path, line_no, line, is_last, stats, skip_bad):
    """The event on a line the fast path refused, or None when it is skipped (a torn last line,
    or a bad one under ``skip_bad``); raises EventLogError naming file:line otherwise."""
    try:
        event = json.loads(line)  # trailing spaces, bytes, or the exact error message
        problem = None if isinstance(event, dict) else "not a JSON object"
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        if is_last:
            where = f"{path}:{line_no}"
            log.warning("%s: skipping torn last line (a writer stopped mid-write)", where)
            stats.torn.append(where)
            return None
        problem = f"invalid JSON: {exc}"
    if problem is None:
        problem = _problem(event)
    if problem is None:
        if event["schema"] > SCHEMA_VERSION:
            raise EventLogError(f"{path}:{line_no}: event schema {event['schema']} is newer than "
                                f"this pipeline's {SCHEMA_VERSION}; upgrade the pipeline")
        check = _CHECKERS.get(event["type"])
        bad = None if check is None else check(event)
        if bad is not None:
            problem = _field_problem(event["type"], event, bad)
    if problem:
        where = f"{path}:{line_no}"
        if not skip_bad:
            raise EventLogError(f"{where}: malformed event ({problem}); fix or delete the "
                                "line, or replay with --skip-bad to skip and count it")
        stats.bad.append(f"{where}: {problem}")
        return None
    return event


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
    """Why ``event`` (a dict the fast path in scan_lines refused) has an unusable envelope, or None."""
    for key, kind in (("event_id", str), ("ts", str), ("type", str), ("schema", int)):
        if type(event.get(key)) is not kind:
            return f"missing or non-{kind.__name__} {key!r}"
    if event["type"] in EVENT_TYPES and event["type"] != "cohort_built":
        if type(event.get("gen_id")) is not str:
            return f"{event['type']} without a gen_id"
    return None


def read_events(events_dir, skip_bad=False) -> ReadResult:
    """Every distinct event under ``events_dir`` ordered by (ts, segment path, line).

    A torn last line of a segment is skipped with a warning; any other malformed line raises
    EventLogError naming file:line, unless ``skip_bad`` (then it is counted in stats.bad)."""
    stats = ReadStats()
    pairs = list(scan_events(events_dir, skip_bad=skip_bad, stats=stats))
    # File order is already (segment, line) order, so a stable sort on ts gives the full key.
    pairs.sort(key=lambda pair: pair[0][0])
    return ReadResult(events=[event for _, event in pairs], stats=stats)
