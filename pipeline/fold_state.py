"""The saved fold of the event log, indexed by generation, so a replay reads and rewrites only
the part that new events touch.

    >>> state = open_state(tables_dir, events_dir) or FoldState.empty(events_dir)
    >>> if not read_new(state, sink, stats, skip_bad=False): ...   # a segment changed: replay in full
    >>> state.records(gen_ids); state.set_record(gen_id, record); state.commit()

Segments are append-only (each belongs to one writing process), so the state records, per
segment, how many bytes it has folded; the next replay reads each segment from there on.
read_new returns False - only a full replay then gives the tables a full replay gives - for a
segment that vanished or shrank, one whose folded part's first or last 64 bytes changed (rewritten
in place; a change wholly inside the middle goes unseen: `--full` reads everything), and an
event_id met twice among the new events (the copy kept is the one in the first segment by path,
which an incremental pass cannot know; pipeline.replay checks the new ids against the ids each
touched generation has folded).

The state is an SQLite file (stdlib, one transaction per replay): what pipeline.replay keeps per
generation - where its events are in the log (read back by events_at()) and the
cohorts listing it - is marshalled in shards of about GENS_PER_SHARD generations by a hash of the
gen_id, each with a checksum, so looking up a few generations reads a few shards. A damaged,
foreign or older state means a full replay, never an error.

A full replay uses the machine's second core twice (pipeline.forked): read_all has a forked child
scan and fold the last CHILD_SHARE of the log's bytes, then pieces off the end of this process's
part while it would still be done first (_Split), and save_state has one write the new state
(and a table handed to it) while pipeline.replay writes the other tables.
"""
import bisect
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import marshal
import mmap
import os
import resource
import shutil
import sqlite3
import struct
import sys
import tempfile
import time
import zlib
from array import array
from dataclasses import astuple, dataclass, field
from pathlib import Path

from .errors import StoreError
from .events import ReadStats, _split_lines, iter_segments, scan_lines
from .forked import Channel, ChildError, Job
from .fsio import new_tmp, write_bytes_atomic, write_pieces_if_changed

STATE_FILE = "_fold_state.sqlite"
# written by earlier versions (the fold, the cross-experiment row lines): removed on a full replay
_OLD_STATE_FILES = ("_fold_state.marshal", "_cross_experiment_rows.marshal")
_DIGEST = 32  # write_checked: a blake2b digest of the rest leads the file
# Bump when the records, the event key or the reading rules change: old states are then ignored.
VERSION = 6
# what a state was saved with: its positions are 8-byte integers in this machine's byte order
_FORMAT = (VERSION, sys.byteorder)
_EDGE = 64  # bytes at each end of a segment's folded part compared on each pass
GENS_PER_SHARD = 128   # now that records are small: fewer, bigger shards marshal faster
# read_all: a smaller log is read by one process (a fork and a merge cost more than they save)
PARALLEL_BYTES = 16 << 20
# the child's part costs it a marshal.dumps and this process a loads and a merge: it starts with
# less, then takes pieces of STEAL_BYTES off the end of this process's part while it would still be
# done first, the pieces' hand-over (export and marshal: about HANDOVER of their reading time) included
CHILD_SHARE = 0.34
STEAL_BYTES = 4 << 20
HANDOVER = 0.25
PARALLEL_RECORDS = 50_000   # fewer are saved in well under a second: not worth a fork
_SCHEMA = ("CREATE TABLE meta (k TEXT PRIMARY KEY, v BLOB NOT NULL)",
           "CREATE TABLE shards (n INTEGER PRIMARY KEY, v BLOB NOT NULL)",
           "CREATE TABLE cohorts (k TEXT PRIMARY KEY, v BLOB NOT NULL)")

log = logging.getLogger(__name__)


class StateError(Exception):
    """The saved state is unreadable: replay in full."""


@dataclass
class Segment:
    """How much of one segment file is folded."""
    size: int = 0          # bytes folded
    newlines: int = 0      # in the folded bytes: the next line's number is newlines + 1
    open_line: bool = False  # folded bytes end inside a line (a complete event without its newline)
    head: bytes = b""      # the first and last _EDGE folded bytes: a rewritten segment shows there
    tail: bytes = b""
    index: int = 0         # the segment's number, in the positions of its events (events_at)


@dataclass
class FoldState:
    """Segments covered, the replay's own small values (``meta``), and - through the open
    database - per-generation records, per-parent children lists and per-cohort entries, loaded
    on demand and written back by commit()."""
    events_dir: str
    segments: dict = field(default_factory=dict)    # path relative to events_dir -> Segment
    meta: dict = field(default_factory=dict)        # pipeline.replay's values beside the records
    db: object = None
    mask: int = 0
    shards: dict = field(default_factory=dict)      # shard number -> (records, children), loaded
    dirty: set = field(default_factory=set)         # shard numbers changed
    cohort_entries: dict = field(default_factory=dict)  # cohort_id -> entry or None, loaded
    dirty_cohorts: set = field(default_factory=set)
    next_index: int = 0   # the number the next new segment gets

    @classmethod
    def empty(cls, events_dir):
        return cls(events_dir=str(Path(events_dir).resolve()))

    def _shard_of(self, gen_id) -> int:
        return _shard(gen_id, self.mask)

    def _load(self, numbers) -> None:
        missing = sorted(set(numbers) - self.shards.keys())
        for at in range(0, len(missing), 500):
            chunk = missing[at:at + 500]
            found = dict(self.db.execute(f"SELECT n, v FROM shards WHERE n IN ({','.join('?' * len(chunk))})",
                                         chunk))
            for n in chunk:
                self.shards[n] = _unpack_shard(found[n]) if n in found else ({}, {})

    def records(self, gen_ids) -> dict:
        """gen_id -> record for those of ``gen_ids`` that have one."""
        where = {gen_id: self._shard_of(gen_id) for gen_id in gen_ids}
        self._load(where.values())
        shards = self.shards
        return {gen_id: shards[n][0][gen_id] for gen_id, n in where.items() if gen_id in shards[n][0]}

    def set_record(self, gen_id, record) -> None:
        n = self._shard_of(gen_id)
        if n not in self.shards:
            self._load((n,))
        if record is None:
            self.shards[n][0].pop(gen_id, None)
        else:
            self.shards[n][0][gen_id] = record
        self.dirty.add(n)

    def children(self, parents) -> dict:
        """parent gen_id -> list of the gen_ids whose parent it is."""
        where = {parent: self._shard_of(parent) for parent in parents}
        self._load(where.values())
        return {parent: self.shards[n][1].get(parent, []) for parent, n in where.items()}

    def set_children(self, parent, children) -> None:
        n = self._shard_of(parent)
        self._load((n,))
        if children:
            self.shards[n][1][parent] = children
        else:
            self.shards[n][1].pop(parent, None)
        self.dirty.add(n)

    def cohorts(self, cohort_ids) -> dict:
        """cohort_id -> entry for those of ``cohort_ids`` that have one."""
        for cohort_id in set(cohort_ids) - self.cohort_entries.keys():
            row = self.db.execute("SELECT v FROM cohorts WHERE k = ?", (repr(cohort_id),)).fetchone()
            self.cohort_entries[cohort_id] = None if row is None else _unpack(row[0])
        return {c: self.cohort_entries[c] for c in cohort_ids if self.cohort_entries[c] is not None}

    def set_cohort(self, cohort_id, entry) -> None:
        self.cohort_entries[cohort_id] = entry
        self.dirty_cohorts.add(cohort_id)

    def commit(self) -> None:
        """Write what changed, in the transaction open_state began."""
        db = self.db
        db.executemany("INSERT OR REPLACE INTO shards VALUES (?, ?)",
                       [(n, _pack_shard(*self.shards[n])) for n in sorted(self.dirty)])
        db.executemany("INSERT OR REPLACE INTO cohorts VALUES (?, ?)",
                       [(repr(c), _pack(self.cohort_entries[c])) for c in sorted(self.dirty_cohorts, key=repr)])
        db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", _meta_rows(self))
        db.execute("COMMIT")
        self.dirty.clear()
        self.dirty_cohorts.clear()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


def _shard(gen_id, mask) -> int:
    return zlib.crc32(gen_id.encode("utf-8", "surrogatepass")) & mask


def _pack(value) -> bytes:
    body = marshal.dumps(value)
    return zlib.crc32(body).to_bytes(4, "big") + body


def _unpack(blob):
    body = blob[4:]
    if zlib.crc32(body).to_bytes(4, "big") != blob[:4]:
        raise StateError("a damaged shard")
    try:
        return marshal.loads(body)
    except (ValueError, EOFError, TypeError) as exc:   # another Python's marshal
        raise StateError(str(exc)) from None


def _pack_shard(records, children) -> bytes:
    """_pack of a shard's records (gen_id -> (positions: array("q") or None, listing)) and children
    (parent -> gen_ids), in columns (_pack_columns)."""
    return _pack_columns(list(records), [r[0] for r in records.values()], [r[1] for r in records.values()],
                         list(children), list(children.values()))


def _pack_columns(gen_ids, positions, listings, parents, kids) -> bytes:
    """_pack of a shard given as columns: each text column joined into one str with its lengths,
    the positions into one bytes: marshal then writes a few big values rather than an object per
    record (the 1M log's state: 0.41 s against 0.70 s for records as dicts of tuples)."""
    flat = [kid for some in kids for kid in some]
    return _pack((_joined(gen_ids), _ints([-1 if p is None else len(p) for p in positions]),
                  b"".join([p for p in positions if p is not None]), listings,
                  _joined(parents), _ints(list(map(len, kids))), _joined(flat)))


def _unpack_shard(blob) -> tuple:
    """(records, children) from a _pack_shard or _pack_columns blob; StateError when damaged."""
    try:
        ids, counts, positions, listings, parents, kid_counts, kids = _unpack(blob)
        kids = _split(*kids)
        records, at = {}, 0
        for gen_id, n, listing in zip(_split(*ids), _from_ints(counts), listings, strict=True):
            if n < 0:
                records[gen_id] = (None, listing)
            else:
                records[gen_id] = (array("q", positions[at:at + 8 * n]), listing)
                at += 8 * n
        children, at = {}, 0
        for parent, n in zip(_split(*parents), _from_ints(kid_counts), strict=True):
            children[parent] = kids[at:at + n]
            at += n
    except (ValueError, TypeError) as exc:
        raise StateError(f"a damaged shard ({exc})") from None
    return records, children


def _ints(values) -> tuple:
    """(typecode, bytes) of the list ``values``: one byte each when they fit (most lengths and counts)."""
    code = "b" if -128 <= min(values, default=0) and max(values, default=0) < 128 else "q"
    return code, array(code, values).tobytes()


def _from_ints(ints) -> array:
    code, data = ints
    return array(code, data)


def _joined(texts) -> tuple:
    return "".join(texts), _ints(list(map(len, texts)))


def _split(text, lengths) -> list:
    """The texts _joined() joined."""
    lengths = _from_ints(lengths)
    ends = list(itertools.accumulate(lengths))
    if (ends[-1] if ends else 0) != len(text):
        raise ValueError("lengths do not add up")
    return [text[end - n:end] for end, n in zip(ends, lengths)]


_OFFSET_BITS = 40   # an event's position: its segment's index above the byte offset of its line
_OFFSET_MASK = (1 << _OFFSET_BITS) - 1


def events_at(state, positions) -> dict:
    """gen_id -> [(key, event)] read back from the log for ``positions``: gen_id -> the positions of
    its events (in their keys, from scan_lines: the segment's index above the line's byte offset).
    StateError when a position does not hold an event of that generation (the log changed)."""
    events_dir, rels = Path(state.events_dir), {seg.index: rel for rel, seg in state.segments.items()}
    wanted = {}   # segment index -> [(offset, gen_id)]
    for gen_id, at in positions.items():
        for position in array("q", at):   # saved as the bytes of an array (pipeline.replay._Gen.keys)
            wanted.setdefault(position >> _OFFSET_BITS, []).append((position & _OFFSET_MASK, gen_id))
    found = {gen_id: [] for gen_id in positions}
    for index, at in wanted.items():
        rel = rels.get(index)
        if rel is None:
            raise StateError(f"no segment {index}")
        end = state.segments[rel].size
        with open(events_dir / rel, "rb") as fh:
            for offset, gen_id in sorted(at):
                line = _line_at(fh.fileno(), offset, end)
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if type(event) is not dict or event.get("gen_id") != gen_id or type(event.get("ts")) is not str:
                    raise StateError(f"{rel} at byte {offset} no longer holds an event of {gen_id}")
                found[gen_id].append(((event["ts"], rel, index << _OFFSET_BITS | offset), event))
    return found


def _line_at(fd, offset, end) -> bytes:
    """The line starting at byte ``offset``, up to its newline or ``end``."""
    data = b""
    while offset + len(data) < end:
        chunk = os.pread(fd, min(max(4096, len(data)), end - offset - len(data)), offset + len(data))
        if not chunk:
            break
        newline = chunk.find(b"\n")
        if newline >= 0:
            return data + chunk[:newline]
        data += chunk
    return data


def _meta_rows(state) -> list:
    return [(k, _pack(v)) for k, v in (
        ("version", _FORMAT), ("events_dir", state.events_dir), ("mask", state.mask),
        ("segments", {rel: astuple(seg) for rel, seg in state.segments.items()}), ("replay", state.meta))]


def open_state(tables_dir, events_dir):
    """The saved state for ``events_dir``, open and locked against other replays until commit()
    or close(); None (and a log line) when there is none, or it was saved by another version,
    for another log, or is damaged."""
    path = Path(tables_dir) / STATE_FILE
    if not path.exists():
        return None
    db = None
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=600)
        db.execute("PRAGMA synchronous = OFF")   # derived data: a power cut costs a full replay
        db.execute("BEGIN IMMEDIATE")   # one replay at a time: the second waits, then reads this one's state
        meta = {k: _unpack(v) for k, v in db.execute("SELECT k, v FROM meta")}
        if meta.get("version") != _FORMAT or meta.get("events_dir") != str(Path(events_dir).resolve()):
            db.close()
            return None
        segments = {rel: Segment(*seg) for rel, seg in meta["segments"].items()}
        return FoldState(events_dir=meta["events_dir"], meta=meta["replay"], db=db, mask=meta["mask"],
                         segments=segments, next_index=max((seg.index + 1 for seg in segments.values()), default=0))
    except (sqlite3.Error, StateError, KeyError, TypeError) as exc:
        if db is not None:
            db.close()
        log.warning("%s: unreadable (%s); replaying the whole log", path, exc)
        return None


def save_state(tables_dir, n_records, parts, files=()) -> "PendingState":
    """Begin replacing the saved state. A forked child (the machine's other core) writes
    ``files`` - (path, function returning its text in pieces) pairs: tables the caller hands over,
    written as fsio.write_pieces_if_changed writes them - and calls ``parts()`` - (records: three lists, of gen_ids,
    their positions and their listings; children: parent -> gen_ids; cohorts: cohort_id -> entry) for
    ``n_records`` records -
    and writes them to a new file while this process goes on (pipeline.replay writes the other
    tables meanwhile); PendingState.finish(state, meta) then sets ``state.meta = meta()``, adds it
    and ``state``'s segments and puts the state in place, PendingState.abort() drops it."""
    path = Path(tables_dir) / STATE_FILE
    size = 256
    while size * GENS_PER_SHARD < n_records:
        size *= 2
    tmp = new_tmp(path)   # made here: its name carries this (live) process's pid, not the child's

    def write():
        for file, pieces in files:
            # no fsync: a table lost to a power cut is rebuilt by `daydream replay --full`
            write_pieces_if_changed(file, pieces(), fsync=False)
        _write_records(tmp, size - 1, *parts())

    pending = PendingState(path, tmp, size - 1, None)
    try:
        if n_records < PARALLEL_RECORDS or not spare_core():
            pending.wait(write)
        else:
            pending.job = Job.start(write)
    except BaseException:
        pending.abort()
        raise
    return pending


def save_error(path, why) -> StoreError:
    """The StoreError for a fold state that could not be written. sqlite reports a full disk or a
    file size limit only as "disk I/O error", so the likely cause is looked up and named."""
    causes = []
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        causes.append(f"{os.strerror(errno.EFBIG)}: this process may write files of at most {limit} bytes (ulimit -f)")
    try:
        if shutil.disk_usage(Path(path).parent).free < 64 << 20:
            causes.append(os.strerror(errno.ENOSPC))
    except OSError:
        pass
    cause = f"; {'; '.join(causes)}" if causes else ""
    return StoreError(f"{path}: cannot save the fold state ({why}{cause}); free disk space, raise the "
                      "file size limit or fix permissions, then rerun")


def spare_core() -> bool:
    """Whether a forked helper would run beside this process rather than take turns with it on
    one core (which costs more than doing the work here). On Linux: whether, at one of a few
    instants over about 10 ms, fewer tasks were runnable (this one included) than this process
    may use cores. Not the load average: it trails the last minute (a replay just after other
    work, a cohort's run or a benchmark's previous step, would run alone), and some virtual
    machines never show less than 1 when idle. Elsewhere, the last minute's load."""
    cores = len(os.sched_getaffinity(0))
    try:
        for _ in range(5):
            with open("/proc/loadavg") as fh:   # "0.52 0.58 0.59 2/311 12345": 2 runnable now
                runnable = int(fh.read().split()[3].split("/")[0])
            if runnable < cores:
                return True
            time.sleep(0.002)
        return False
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0] + 0.5 < cores


def _write_records(tmp, mask, records, children, cohorts) -> None:
    # each shard's columns (_pack_columns): gen_ids, positions, listings, parents, their children
    shards = [([], [], [], [], []) for _ in range(mask + 1)]
    for gen_id, positions, listing in zip(*records, strict=True):
        shard = shards[_shard(gen_id, mask)]
        shard[0].append(gen_id)
        shard[1].append(positions)
        shard[2].append(listing)
    for parent, kids in children.items():
        shard = shards[_shard(parent, mask)]
        shard[3].append(parent)
        shard[4].append(kids)
    db = sqlite3.connect(tmp, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode = OFF")   # a new file, renamed into place when complete
        db.execute("PRAGMA synchronous = OFF")
        db.execute("BEGIN")
        for statement in _SCHEMA:
            db.execute(statement)
        db.executemany("INSERT INTO shards VALUES (?, ?)",
                       ((n, _pack_columns(*shard)) for n, shard in enumerate(shards) if shard[0] or shard[3]))
        db.executemany("INSERT INTO cohorts VALUES (?, ?)", ((repr(c), _pack(e)) for c, e in cohorts.items()))
        db.execute("COMMIT")
    finally:
        db.close()


@dataclass
class PendingState:
    """A state being written by save_state's child process (job None: written here)."""
    path: Path
    tmp: str
    mask: int
    job: Job

    def wait(self, write=None) -> None:
        """Wait for the child (or call ``write`` here); a StoreError when the state or a table
        could not be written."""
        try:
            if write is not None:
                write()
            elif self.job is not None:
                self.job.result()
        except StoreError:   # a table that could not be written: it says all
            raise
        except (sqlite3.Error, ChildError) as exc:
            raise save_error(self.path, f"{type(exc).__name__}: {exc}") from None
        finally:
            self.job = None

    def finish(self, state, meta) -> None:
        """Wait for the child; set ``state.meta = meta()`` and add it and ``state``'s segments; put
        the state in place. Raises StoreError when the child failed."""
        try:
            self.wait()
            state.meta = meta()
            state.mask = self.mask
            db = sqlite3.connect(self.tmp, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode = OFF")
                db.execute("PRAGMA synchronous = OFF")
                db.execute("BEGIN")
                db.executemany("INSERT INTO meta VALUES (?, ?)", _meta_rows(state))
                db.execute("COMMIT")
            finally:
                db.close()
            os.replace(self.tmp, self.path)
        except BaseException:
            self.abort()
            raise
        for name in _OLD_STATE_FILES:
            (self.path.parent / name).unlink(missing_ok=True)

    def abort(self) -> None:
        """Stop the child if it still runs and drop its file (the saved state stays as it was)."""
        if self.job is not None:
            self.job.abort()
            self.job = None
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def read_checked(path):
    """The builtins write_checked saved in ``path``; None when there is no such file or it is
    damaged. Raises ValueError, EOFError or TypeError for one another Python's marshal wrote."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None
    digest, body = data[:_DIGEST], data[_DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        log.warning("%s: damaged; computing it again", path)
        return None
    return marshal.loads(body)


def write_checked(path, plain) -> None:
    """Save builtins (marshal) behind their checksum, atomically."""
    # no fsync: what is saved this way is derived from the log and costs a recomputation if lost
    body = marshal.dumps(plain)
    write_bytes_atomic(path, hashlib.blake2b(body, digest_size=_DIGEST).digest() + body, fsync=False)


def read_new(state, sink, stats, skip_bad) -> bool:
    """Pass every event appended since ``state`` was saved to ``sink.add(pairs)``, segment by
    segment; fill ``stats`` (ReadStats). False (with ``state`` half-updated: discard it) when only
    a full replay is right. From an empty state this is the full replay, duplicates and all."""
    events_dir = Path(state.events_dir)
    present = iter_segments(events_dir)
    rels = [p.relative_to(events_dir).as_posix() for p in present]
    if not state.segments.keys() <= set(rels):
        log.info("a segment of the event log disappeared; replaying the whole log")
        return False
    return _read(state, sink, stats, skip_bad, zip(present, rels), set(), bool(state.segments))


def read_all(state, fold, stats, skip_bad) -> None:
    """read_new from an empty ``state`` into ``fold`` (a pipeline.replay.Fold), with the same
    result; for a big log a forked child (the machine's other core) scans and folds the last
    CHILD_SHARE of the bytes meanwhile - the last segments and the end of one more, from a line's
    start - and sends that fold (Fold.export) while this process still reads; then it takes pieces
    off the end of this process's part while it would still finish first (_Split), and hands their
    fold over too. This process rebuilds the first (Fold.from_export) between two of its own
    pieces, so that only the pieces' fold is left to rebuild once it is done; it merges the three
    in the log's order at the end. Whenever the child's part cannot simply be merged - it failed (a
    bad line: this process then raises the same error), it holds an event_id of this process's
    part, or one twice among the pieces it took (read out of order, it may have kept the later) -
    this process reads that part itself."""
    events_dir = Path(state.events_dir)
    present = iter_segments(events_dir)
    segments = [(p, p.relative_to(events_dir).as_posix()) for p in present]
    sizes = [p.stat().st_size for p in present]
    if sum(sizes) < PARALLEL_BYTES or not spare_core():
        _read(state, fold, stats, skip_bad, segments, set(), False)
        return
    split, wanted = len(sizes) - 1, CHILD_SHARE * sum(sizes)
    while split > 0 and sizes[split] <= wanted:
        wanted -= sizes[split]
        split -= 1
    cut = _line_start(present[split], sizes[split] - int(wanted))   # segment `split` is shared at `cut`
    bases = list(itertools.accumulate(sizes, initial=0))   # each segment's first byte in the log, then its end
    meet = _Split(bases[split] + cut)
    later = segments[split:] if cut < sizes[split] else segments[split + 1:]
    channel = Channel()
    job = Job.start(_read_part, events_dir, type(fold), later, split, cut if cut < sizes[split] else None,
                    skip_bad, meet, segments, bases, channel, channel=channel)
    first_part = []   # the child's first fold, rebuilt here (None: the child failed before sending it)

    def claim(i, at, end):
        if not first_part and channel.ready():
            try:
                first_part.append(type(fold).from_export(channel.receive()))
            except EOFError:   # the child failed: job.result() raises its error
                first_part.append(None)
        return meet.claim(bases[i] + at, bases[i] + end) - bases[i]

    try:
        seen = set()
        _read(state, fold, stats, skip_bad, segments[:split + 1], seen, False, claim=claim)
        part = job.result()
        if not first_part:
            first_part.append(type(fold).from_export(channel.receive()))
    except Exception:   # the part's failure: this process reads it itself and meets it too
        if job.pid is not None:   # this process's own read failed
            job.abort()
            raise
        part = None
    except BaseException:
        job.abort()
        raise
    finally:
        channel.close()
    if part is None or not seen.isdisjoint(part[2]):
        first = bisect.bisect_right(bases, meet.limit, hi=len(segments)) - 1   # where this process stopped
        _read(state, fold, stats, skip_bad, segments[first:], seen, False)
        stats.segments = len(segments)
        return
    exported, (_, lines, events, duplicates, torn, bad, unknown_types), _, part_segments = part
    fold.merge(type(fold).from_export(exported))   # the pieces: after this process's part, before the first
    fold.merge(first_part[0])
    stats.segments = len(segments)   # each read by one process or the two
    stats.lines += lines
    stats.events += events
    stats.duplicates += duplicates
    stats.torn += torn
    stats.bad += bad
    for etype, n in unknown_types.items():
        stats.unknown_types[etype] = stats.unknown_types.get(etype, 0) + n
    state.segments.update((rel, Segment(*seg)) for rel, seg in part_segments.items())
    state.next_index = len(segments)


class _Split:
    """Where read_all's two processes meet in the log (offsets count its bytes, segment after
    segment), moved while they read: this process reads from the start and claims each piece
    before it reads it; the child, once done with the log's end, takes pieces off the end of this
    process's part. Shared memory and a lock (lockf: per process) both survive the fork."""

    def __init__(self, limit):
        self._mem = mmap.mmap(-1, 24)   # shared: front (claimed up to), limit, start time
        self._lock = tempfile.TemporaryFile()
        self._mem[:] = struct.pack("qqd", 0, limit, time.perf_counter())

    @property
    def limit(self) -> int:
        return struct.unpack("qqd", self._mem[:])[1]

    def _locked(self, fn):
        fcntl.lockf(self._lock, fcntl.LOCK_EX)
        try:
            front, limit, start = struct.unpack("qqd", self._mem[:])
            front, limit = fn(front, limit, time.perf_counter() - start)
            self._mem[:16] = struct.pack("qq", front, limit)
            return front, limit
        finally:
            fcntl.lockf(self._lock, fcntl.LOCK_UN)

    def claim(self, at, end) -> int:
        """How far this process may read from ``at`` (all before it claimed) towards ``end``."""
        return self._locked(lambda front, limit, _: (max(front, min(end, limit)), limit))[0]

    def take(self, choose):
        """The child's next piece, (start, end), or None: ``choose(front, limit, seconds since the
        start)`` gives the piece's start (a line's start at or after ``front``), or None."""
        taken = []

        def fn(front, limit, elapsed):
            start = choose(front, limit, elapsed)
            if start is None or start >= limit:
                return front, limit
            taken.append((start, limit))
            return front, start
        self._locked(fn)
        return taken[0] if taken else None


def _read_part(events_dir, fold_type, segments, first_index, start, skip_bad, meet, every, bases, channel) -> tuple:
    """read_all's child: ``segments`` (the first from byte ``start``, when not None) read into a new
    fold, sent through ``channel``, then pieces taken off the end of the other process's part
    (``meet``, a _Split over the log's ``every`` segment, starting at ``bases``) into another: that
    fold exported with what read_all adds up; None when a piece taken held an event_id met before
    (read_all then reads this part itself, in order)."""
    part, stats, seen, state = fold_type(), ReadStats(), set(), FoldState.empty(events_dir)
    state.next_index = first_index   # the numbers these segments get in a one-process read
    known = {}   # relative path -> (offset, newlines before it) of the first byte this process read
    if start is not None:   # the bytes before it, as a read up to there would have left them
        with open(segments[0][0], "rb") as fh:
            before = fh.read(start)
        state.segments[segments[0][1]] = Segment(size=start, newlines=before.count(b"\n"), head=before[:_EDGE],
                                                 tail=before[-_EDGE:], index=first_index)
        known[segments[0][1]] = (start, before.count(b"\n"))
        state.next_index += 1
    _read(state, part, stats, skip_bad, segments, seen, False)
    channel.send(part.export())
    part = fold_type()
    if not _take_pieces(meet, state, part, stats, skip_bad, seen, every, bases, known):
        return None
    return part.export(), astuple(stats), list(seen), {rel: astuple(seg) for rel, seg in state.segments.items()}


def _take_pieces(meet, state, part, stats, skip_bad, seen, every, bases, known) -> bool:
    """_read_part's pieces off the end of the other process's part (_Split.take), each from a
    line's start and inside one segment, read with their true line numbers; their bad and torn
    lines listed in the log's order. False when one held an event_id met before. ``bases``: each
    segment's first byte in the log, then the log's end."""
    read_bytes = bases[-1] - meet.limit
    taken = 0   # bytes of the pieces: their fold is handed over at the end
    bad, torn, duplicates = stats.bad, stats.torn, stats.duplicates

    since = []   # (seconds, front) at the first choice: the other process's rate is taken from there on

    def choose(front, limit, elapsed):
        i = bisect.bisect_right(bases, limit - 1, hi=len(every)) - 1   # the segment of the byte before limit
        at = bases[i] + _line_start(every[i][0], max(limit - STEAL_BYTES, front, bases[i]) - bases[i])
        size = limit - at
        if size <= 0:
            return None
        if not since:
            since.append((elapsed, front))
        then, was = since[0]
        # its later segments may be slower than its first: its recent rate once there is one
        rate = (front - was) / (elapsed - then) if elapsed - then >= 0.5 and front > was else front / elapsed
        mine = (size + HANDOVER * (taken + size)) / (read_bytes / elapsed)   # this piece and the hand-over
        return at if not rate or mine <= (limit - front - size) / rate else None

    while (piece := meet.take(choose)) is not None:
        start, end = piece
        i = bisect.bisect_right(bases, start, hi=len(every)) - 1
        path, rel = every[i]
        a, b = start - bases[i], end - bases[i]
        with open(path, "rb") as fh:
            if rel not in known:   # the segment's end: count its lines once
                known[rel] = (b, os.pread(fh.fileno(), b, 0).count(b"\n"))
            newlines = known[rel][1] - os.pread(fh.fileno(), b - a, a).count(b"\n")
            head, tail = os.pread(fh.fileno(), _EDGE, 0), os.pread(fh.fileno(), min(a, _EDGE), a - min(a, _EDGE))
        known[rel] = (a, newlines)
        before = state.segments.get(rel)
        state.segments[rel] = Segment(size=a, newlines=newlines, head=head, tail=tail, index=i)
        stats.bad, stats.torn = [], []
        _read(state, part, stats, skip_bad, [(path, rel)], seen, False, stop=b)
        bad, torn = stats.bad + bad, stats.torn + torn   # this piece is before those read so far
        if b < bases[i + 1] - bases[i]:   # the segment's summary is the one its end's read left
            state.segments[rel] = before
        read_bytes += b - a
        taken += b - a
    stats.bad, stats.torn = bad, torn
    return stats.duplicates == duplicates


def _line_start(path, at) -> int:
    """The first byte of ``path`` at or after ``at`` that starts a line (its size if none does)."""
    if at <= 0:
        return 0
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        return min(at + len(_line_at(fh.fileno(), at - 1, size)), size)


def _read(state, sink, stats, skip_bad, segments, seen, incremental, stop=None, claim=None) -> bool:
    """read_new over ``segments`` ((path, relative path) pairs), the last one only up to byte
    ``stop`` when it is not None (a line's start); ``seen``: the event_ids met so far. ``claim(i,
    at, end)``: how far segment i may be read from ``at`` towards ``end``; once short of its end,
    the segments after it are left unread."""
    duplicates = stats.duplicates
    for i, (path, rel) in enumerate(segments):
        seg = state.segments.get(rel)
        if seg is None:
            seg = Segment(index=state.next_index)
            state.next_index += 1
        with open(path, "rb") as fh:
            # compared on every pass, also when size and mtime are unchanged (mtime has coarse ticks)
            if seg.size and (os.pread(fh.fileno(), len(seg.head), 0) != seg.head
                             or os.pread(fh.fileno(), len(seg.tail), seg.size - len(seg.tail)) != seg.tail):
                log.info("%s changed before the part already replayed; replaying the whole log", path)
                return False
            size_now = os.fstat(fh.fileno()).st_size
            end = size_now if stop is None or i < len(segments) - 1 else stop
            if end <= seg.size and incremental:
                continue
            stats.segments += 1
            fh.seek(seg.size)
            size, newlines, head, tail, open_line = seg.size, seg.newlines, seg.head, seg.tail, seg.open_line
            for raw, last in _pieces(fh, end, claim and (lambda at, upto: claim(i, at, upto))):
                lines = _split_lines(raw)
                if open_line and lines[0]:
                    return False  # text after a complete last line: the line is no longer what was folded
                torn_before = len(stats.torn)
                # a torn last line is the segment's: the line before ``stop`` (a line's start) is whole
                sink.add(scan_lines(path, rel, lines, newlines + 1, seg.index << _OFFSET_BITS | size, seen,
                                    stats, skip_bad, final=last and end == size_now))
                if incremental and stats.duplicates != duplicates:
                    log.info("an event appears twice in the log; replaying the whole log")
                    return False
                # a torn last line is left unfolded, to be read again (perhaps complete) next time
                used = raw.rfind(b"\n") + 1 if len(stats.torn) > torn_before else len(raw)
                folded = raw[:used]
                size += used
                newlines += folded.count(b"\n")
                head, tail = (head + folded[:_EDGE])[:_EDGE], (tail + folded[-_EDGE:])[-_EDGE:]
                if folded:
                    open_line = not folded.endswith(b"\n")
            stopped = claim is not None and fh.tell() < end
        state.segments[rel] = Segment(size=size, newlines=newlines, open_line=open_line, head=head, tail=tail,
                                      index=seg.index)
        if stopped:   # the rest is another process's
            break
    return True


_PIECE = 8 << 20   # a segment is read this much at a time: buffers this size are reused, not mapped anew


def _pieces(fh, end, claim=None):
    """(bytes, last) for the bytes from ``fh``'s position up to ``end``, in pieces of about _PIECE
    that end at a newline - but the last, which ends at ``end``; ``claim(at, upto)``: how far
    this process may read (it stops, at a line's start, where that is no further than ``at``)."""
    at, rest = fh.tell(), b""
    while at < end:
        upto = min(at + _PIECE, end)
        if claim is not None and (upto := claim(at, upto)) <= at:
            break
        chunk = fh.read(upto - at)
        if not chunk:   # the file shrank meanwhile
            break
        at += len(chunk)
        data = rest + chunk if rest else chunk
        if at >= end:
            yield data, True
            return
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        if cut:
            yield data[:cut], False
    if rest:
        yield rest, True
