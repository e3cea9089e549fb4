"""The saved fold of the event log, so a replay reads only what was appended since the last one.

    >>> state = load(tables_dir, events_dir, Fold) or FoldState.empty(events_dir, Fold())
    >>> if not read_new(state, stats, skip_bad=False): ...   # a segment changed: replay in full
    >>> save(state, tables_dir)

Segments are append-only (each belongs to one writing process), so the state records, per
segment, how many bytes it has folded; the next replay reads each segment from there on.
read_new returns False - only a full replay then gives the tables a full replay gives - for a
segment that vanished or shrank, one whose folded part's first or last 64 bytes changed (rewritten
in place; a change wholly inside the middle goes unseen: `--full` reads everything), and an
event_id met again (the copy kept is the one in the first segment by path, which an incremental
pass cannot know). A state written by another version of the fold is ignored.

The state file holds builtins only (marshal: about ten times faster than pickle here, and it
cannot build arbitrary objects), behind a checksum: a damaged or foreign state means a full
replay, never an error.
"""
import hashlib
import logging
import marshal
import os
from dataclasses import astuple, dataclass, field
from pathlib import Path

from .events import _split_lines, iter_segments, scan_lines
from .fsio import write_bytes_atomic

STATE_FILE = "_fold_state.marshal"
_DIGEST = 32  # a blake2b digest of the rest leads the file: damage is found before unmarshalling
# Bump when Fold's fields, the event key or the reading rules change: old states are then ignored.
VERSION = 1
_EDGE = 64  # bytes at each end of a segment's folded part compared on each pass
SAVE_FRACTION = 0.01  # see worth_saving

log = logging.getLogger(__name__)


@dataclass
class Segment:
    """How much of one segment file is folded."""
    size: int = 0          # bytes folded
    newlines: int = 0      # in the folded bytes: the next line's number is newlines + 1
    open_line: bool = False  # folded bytes end inside a line (a complete event without its newline)
    head: bytes = b""      # the first and last _EDGE folded bytes: a rewritten segment shows there
    tail: bytes = b""


@dataclass
class FoldState:
    events_dir: str
    fold: object                                    # a pipeline.replay.Fold
    seen: set = field(default_factory=set)          # event_ids folded
    segments: dict = field(default_factory=dict)    # path relative to events_dir -> Segment

    @classmethod
    def empty(cls, events_dir, fold):
        return cls(events_dir=str(Path(events_dir).resolve()), fold=fold)

    def covered(self) -> int:
        """Bytes of the log folded."""
        return sum(seg.size for seg in self.segments.values())


def load(tables_dir, events_dir, fold_type):
    """The saved state for ``events_dir`` (its fold a ``fold_type``), or None: none saved, saved
    by another version, for another log, or damaged."""
    path = Path(tables_dir) / STATE_FILE
    try:
        plain = read_checked(path)
        if plain is None:
            return None
        if plain.get("version") != VERSION or plain.get("events_dir") != str(Path(events_dir).resolve()):
            return None
        seen = plain["seen"]
        seen = set(seen.split("\n")) if type(seen) is str else set(seen)
        return FoldState(events_dir=plain["events_dir"], fold=fold_type.from_plain(plain["fold"]), seen=seen,
                         segments={rel: Segment(*seg) for rel, seg in plain["segments"].items()})
    except (ValueError, EOFError, TypeError, KeyError, AttributeError) as exc:  # another Python's marshal
        log.warning("%s: unreadable (%s); replaying the whole log", path, exc)
        return None


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


def worth_saving(state, saved_bytes) -> bool:
    """Whether to rewrite the state file, which costs about as much as folding the whole log
    takes to load: only once the part folded since it was saved reaches SAVE_FRACTION of the
    log. Until then each replay reads that part again (cheap) and the tables are the same."""
    covered = state.covered()
    return covered - saved_bytes >= SAVE_FRACTION * covered


def save(state, tables_dir) -> None:
    write_checked(Path(tables_dir) / STATE_FILE, {
        "version": VERSION, "events_dir": state.events_dir, "fold": state.fold.to_plain(),
        "seen": _packed(state.seen), "segments": {rel: astuple(seg) for rel, seg in state.segments.items()}})


def _packed(ids):
    # one string: marshal writes a set of many strings ten times slower. A list when an id holds a
    # newline, or when there is not exactly one id per part (no ids, or an empty one).
    joined = "\n".join(ids)
    return joined if ids and joined.count("\n") == len(ids) - 1 and "" not in ids else list(ids)


def read_new(state, stats, skip_bad) -> bool:
    """Fold every event appended since ``state`` was saved into it; fill ``stats`` (ReadStats).
    False (with ``state`` half-updated: discard it) when only a full replay is right. From an
    empty state this is the full replay, duplicates and all."""
    events_dir = Path(state.events_dir)
    incremental = bool(state.segments)
    present = iter_segments(events_dir)
    rels = [p.relative_to(events_dir).as_posix() for p in present]
    if not state.segments.keys() <= set(rels):
        log.info("a segment of the event log disappeared; replaying the whole log")
        return False
    duplicates = stats.duplicates
    for path, rel in zip(present, rels):
        seg = state.segments.get(rel) or Segment()
        with open(path, "rb") as fh:
            # compared on every pass, also when size and mtime are unchanged (mtime has coarse ticks)
            if seg.size and (os.pread(fh.fileno(), len(seg.head), 0) != seg.head
                             or os.pread(fh.fileno(), len(seg.tail), seg.size - len(seg.tail)) != seg.tail):
                log.info("%s changed before the part already replayed; replaying the whole log", path)
                return False
            fh.seek(seg.size)
            raw = fh.read()
        if not raw and incremental:
            continue
        stats.segments += 1
        lines = _split_lines(raw)
        if seg.open_line and lines[0]:
            return False  # text after a complete last line: the line is no longer what was folded
        torn_before = len(stats.torn)
        state.fold.add(scan_lines(path, rel, lines, seg.newlines + 1, state.seen, stats, skip_bad))
        if incremental and stats.duplicates != duplicates:
            log.info("an event appears twice in the log; replaying the whole log")
            return False
        # a torn last line is left unfolded, to be read again (perhaps complete) next time
        used = raw.rfind(b"\n") + 1 if len(stats.torn) > torn_before else len(raw)
        folded = raw[:used]
        state.segments[rel] = Segment(
            size=seg.size + used, newlines=seg.newlines + folded.count(b"\n"),
            open_line=bool(folded) and not folded.endswith(b"\n") or (seg.open_line and not folded),
            head=(seg.head + folded)[:_EDGE], tail=(seg.tail + folded)[-_EDGE:])
    return True
