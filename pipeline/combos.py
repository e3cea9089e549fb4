"""Concept combinations and the append-only ``data/combo_mappings.csv``.

    >>> combos = generate_combos(["a", "b", "c"], "paragraph", k_max=2)   # {combo_id: (concepts...)}
    >>> record_combos(paths.combo_mappings_csv, combos, "paragraph", 2)
"""
import contextlib
import csv
import fcntl
import io
import itertools
import os
from pathlib import Path

from .errors import StoreError
from .ids import combo_id
from .timestamps import now_iso

FIELDS = ["combo_id", "version", "concept_id", "description_level", "k_max", "created_at"]


def generate_combos(concept_ids, description_level, k_max):
    """Every k_max-sized combination (the original's "focused" strategy), in a stable order."""
    out = {}
    for combo in itertools.combinations(sorted(concept_ids), k_max):
        out[combo_id(combo, description_level, k_max)] = combo
    return out


def read_mappings(path) -> dict:
    """combo_id -> {"concepts": tuple, "description_level": str, "k_max": int}."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:  # (empty: created by an appender that holds the lock)
        return {}
    found = {}
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames != FIELDS:
            raise StoreError(f"{path}: unexpected header {reader.fieldnames}; expected {','.join(FIELDS)}")
        for row in reader:
            entry = found.setdefault(row["combo_id"], {"concepts": [], "description_level": row["description_level"],
                                                       "k_max": int(row["k_max"])})
            entry["concepts"].append(row["concept_id"])
    return {cid: {**e, "concepts": tuple(sorted(e["concepts"]))} for cid, e in found.items()}


def record_combos(path, combos: dict, description_level, k_max) -> int:
    """Append rows for combos not yet recorded. A known combo id with other concepts is an error.

    Returns the number of combos appended."""
    path = Path(path)
    with _appending(path) as fd:  # read and append as one step: two builders never record a combo twice
        existing = read_mappings(path)
        new_rows = []
        now = now_iso(micro=False)
        for cid, concepts in combos.items():
            if cid in existing:
                if existing[cid]["concepts"] != tuple(sorted(concepts)):
                    raise StoreError(
                        f"{path}: combo {cid} is recorded with concepts {', '.join(existing[cid]['concepts'])} but "
                        f"now derives from {', '.join(sorted(concepts))}; the mapping is append-only: investigate "
                        f"before editing it"
                    )
                continue
            for concept in sorted(concepts):
                new_rows.append([cid, "v1", concept, description_level, k_max, now])
        _write_rows(fd, new_rows)
    return len({r[0] for r in new_rows})


def append_rows(path, rows):
    """Append mapping rows (lists in FIELDS order) to ``path``, with the header if it is new."""
    if rows:
        with _appending(Path(path)) as fd:
            _write_rows(fd, rows)


@contextlib.contextmanager
def _appending(path):
    """An O_APPEND descriptor of ``path`` (created if missing) under an exclusive flock, so that
    processes sharing data/ take turns reading and appending."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # releases the lock


def _write_rows(fd, rows):
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if os.fstat(fd).st_size == 0:
        writer.writerow(FIELDS)
    writer.writerows(rows)
    os.write(fd, buf.getvalue().encode("utf-8"))  # one O_APPEND write: a reader never sees half a row
    os.fsync(fd)
