"""An incremental replay: fold the new events into the saved records of the generations they
touch and rewrite only the table rows that change.

    >>> stats = update(state, tables_dir, skip_bad)   # None: replay in full instead

A generation's rows depend on its own record (its folded events and the cohorts listing it) and,
for an evaluation, on its essay's and draft's lineage and its essay's creator cohort; the saved
children lists lead from a changed generation to the rows below it. A pivot row depends on the
scores of one essay's evaluations, so each essay whose scores change has its pivot rows computed
again from its evaluations. The rows go into the sorted CSVs in place (pipeline.sorted_csv), and
the model x template means keep exact partial sums (the same math.fsum as a full replay).
Anything this cannot reproduce byte for byte - a duplicated event, a table changed by someone
else, an evaluation without an essay getting a score, a -0.0 score - returns None and the caller
replays in full.
"""
import csv
import io
import logging
import math
import uuid
from collections import namedtuple
from itertools import repeat
from operator import itemgetter
from pathlib import Path

from . import fold_state
from .sorted_csv import SortedCsvError, groups_in_file, splice, splice_file
from .events import EVENT_TYPES, ReadStats
from .fsio import write_bytes_atomic
from .replay import (PIVOT_INDEX, Fold, ReplayStats, TABLES, _Gen, _gen_from, _SCORE_AT, _VALUES, _lineage,
                     _member, _model_template_cell, _model_template_table, _pivot_cells, _pivot_column, _pivot_rows,
                     _rows, saved_record, table_files, to_csv)

_ROW_TABLES = ("generation_results", "evaluation_results", "scores_long")
log = logging.getLogger(__name__)
_KEYS_AT = _Gen.__slots__.index("keys")
# a record's values, read-only, as the row functions read a _Gen
_Frozen = namedtuple("_Frozen", _Gen.__slots__)
_PENDING = _Frozen._make(_VALUES(_Gen(None)))   # listed by a cohort, no events


class _GiveUp(Exception):
    """Only a full replay gives the right tables."""


class _Pairs(list):
    """read_new's sink: the new events, kept."""

    def add(self, pairs):
        self.extend(pairs)


def update(state, tables_dir: Path, skip_bad) -> ReplayStats:
    """Fold what was appended since ``state`` was saved, update the tables and commit the state;
    None when only a full replay gives the right tables (the caller runs one at once: tables
    this left half-updated differ from what the uncommitted state records, so nothing trusts them)."""
    stats = ReplayStats(read=ReadStats(), tables_dir=tables_dir, incremental=True,
                        version_before=state.meta["version"])
    pairs = _Pairs()
    try:
        if not fold_state.read_new(state, pairs, stats.read, skip_bad):
            return None
        if table_files(tables_dir) != state.meta["files"]:
            log.info("%s: tables changed since the last replay; replaying the whole log", tables_dir)
            return None
        stats.read.unknown_types = dict(sorted(stats.read.unknown_types.items()))
        _Update(state, tables_dir, stats).run(pairs)
    except (_GiveUp, SortedCsvError, fold_state.StateError) as exc:
        log.info("incremental replay gave up (%s); replaying the whole log", exc)
        return None
    except FileNotFoundError:   # a table vanished under us
        return None
    return stats


class _View:
    """Generations (from records) as the full replay's row functions see them."""

    def __init__(self, records):
        self.gens, self.members = {}, {}
        for gen_id, (values, listing) in records.items():
            self.gens[gen_id] = _PENDING if values is None else _Frozen._make(values)
            if listing:
                self.members[gen_id] = _member(listing)
        self.lineage = {gen_id: _lineage(g, self.members.get(gen_id)) for gen_id, g in self.gens.items()}

    def parent(self, gen_id):
        lin = self.lineage.get(gen_id)
        parent = lin[1] if lin is not None else None
        return parent if parent and type(parent) is str else None

    def rows(self, gen_ids) -> tuple:
        """{table: {gen_id: row}} for the generation, evaluation and score rows of ``gen_ids``."""
        tables = _rows(sorted(g for g in gen_ids if g in self.gens), self.gens, self.members, self.lineage)
        return tuple({row[0]: row for row in rows} for rows in tables)


class _Update:
    def __init__(self, state, tables_dir, stats):
        self.state, self.tables_dir, self.stats = state, tables_dir, stats
        self.old = {}   # gen_id -> (values, listing) before the new events (None: none)
        self.old_ids = {}   # gen_id -> the event_ids folded into its old values
        self.old_calls = {}   # gen_id -> (ts, event_id) of its llm_calls rows before the new events
        self.new = {}   # gen_id -> (values, listing) after them, for the generations they touch

    def load(self, gen_ids) -> None:
        """Fold the saved generations ``gen_ids`` again from their events, read back from the log."""
        missing = set(gen_ids) - self.old.keys()
        if missing:
            found = self.state.records(missing)
            events = fold_state.events_at(self.state, {g: r[0] for g, r in found.items() if r[0] is not None})
            fold = Fold()
            for gen_id, pairs in events.items():
                fold.add(pairs)
                self.old_ids[gen_id] = {ev["event_id"] for _, ev in pairs}
            for ts, event_id, row in fold.calls:
                self.old_calls.setdefault(row[2], []).append((ts, event_id))
            cohorts = self.state.cohorts({r[1] for r in found.values() if type(r[1]) is str})
            keys = {cohort_id: entry[0] for cohort_id, entry in cohorts.items()}
            for gen_id in missing:
                self.old[gen_id] = saved_record(found.get(gen_id), fold.gens.get(gen_id), keys)

    def record(self, gen_id, new=True):
        if new and gen_id in self.new:
            return self.new[gen_id]
        return self.old[gen_id]

    def view(self, gen_ids, new) -> _View:
        """The generations ``gen_ids`` with their parents and grandparents."""
        wanted = set(gen_ids)
        for _ in range(2):
            self.load(wanted)
            view = _View({g: r for g in wanted if (r := self.record(g, new)) is not None})
            wanted |= {p for g in list(wanted) if (p := view.parent(g)) is not None}
        self.load(wanted)
        return _View({g: r for g in wanted if (r := self.record(g, new)) is not None})

    def run(self, pairs) -> None:
        state, stats = self.state, self.stats
        touched = self.fold(pairs)
        old_view, new_view = self.view(touched, new=False), self.view(touched, new=True)
        # the children lists follow each touched generation's parent
        moved = {gen_id for gen_id in touched if old_view.parent(gen_id) != new_view.parent(gen_id)}
        parents = {p for gen_id in moved for p in (old_view.parent(gen_id), new_view.parent(gen_id)) if p}
        for parent, kids in state.children(parents).items():
            state.set_children(parent, [k for k in kids if k not in moved]
                               + sorted(k for k in moved if new_view.parent(k) == parent))
        affected = set(touched)
        level = set(touched)
        while level:   # down to the evaluations: their rows show their essay's and draft's lineage
            below = set().union(*state.children(level).values()) - affected
            affected |= below
            level = below
        if affected != touched:
            old_view, new_view = self.view(affected, new=False), self.view(affected, new=True)
        before, after = old_view.rows(affected), new_view.rows(affected)

        delta = {}
        for name, old_rows, new_rows in zip(_ROW_TABLES, before, after):
            changed = {gen_id: new_rows.get(gen_id) for gen_id in old_rows.keys() | new_rows.keys()
                       if old_rows.get(gen_id) != new_rows.get(gen_id)}
            delta[name] = changed
        meta = dict(state.meta)
        edits = {}   # table -> function(path) rewriting the file, returning the change in its row count
        for name, old_rows in zip(_ROW_TABLES, before):
            changed = delta[name]
            if changed:
                groups = {k: _csv_bytes([] if r is None else [r]) for k, r in changed.items()}
                edits[name] = _splicer(groups, sum(r is not None for r in changed.values())
                                       - sum(k in old_rows for k in changed))
        self.pivots(before[2], delta["scores_long"], meta, edits)
        if self.calls:
            edits["llm_calls"] = self.calls_edit
        rows, rewritten = dict(meta["rows"]), False
        for name, edit in edits.items():
            # no fsync, as in a full replay; the state, committed after, records the new files
            added = edit(self.tables_dir / f"{name}.csv")
            if added is not None:
                rows[name] += added
                rewritten = True
        if rewritten or any(delta.values()):
            meta["version"] = uuid.uuid4().hex
        meta["rows"] = rows
        meta["files"] = table_files(self.tables_dir)
        for gen_id, record in self.new.items():
            if record is not None:   # saved as the positions of its events, read back by events_at
                values, listing = record
                record = (None if values is None else values[_KEYS_AT], listing)
            state.set_record(gen_id, record)
        state.meta = meta
        state.commit()
        stats.rows = {name: rows[name] for name in TABLES}
        stats.delta, stats.version_after = delta, meta["version"]

    def calls_edit(self, path) -> int:
        """Splice the new calls into llm_calls.csv, ordered by (ts, event_id): at a ts that has
        rows already, their event_ids come from their generations' records."""
        by_ts = {}
        for ts, event_id, row in self.calls:
            if type(ts) is not str:
                raise _GiveUp("a call without a text ts")
            by_ts.setdefault(ts, []).append((event_id, _csv_bytes([row])))
        for ts, text in groups_in_file(path, by_ts).items():
            rows = list(csv.reader(io.StringIO(text.decode("utf-8"), newline="")))
            gen_ids = {row[2] for row in rows}
            self.load(gen_ids)
            event_ids = sorted(event_id for gen_id in gen_ids for at, event_id in self.old_calls.get(gen_id, ())
                               if at == ts)
            if len(event_ids) != len(rows):
                raise _GiveUp(f"calls at {ts} that the records do not account for")
            by_ts[ts] += zip(event_ids, (_csv_bytes([row]) for row in rows))
        splice_file(path, {ts: b"".join(text for _, text in sorted(calls)) for ts, calls in by_ts.items()})
        return len(self.calls)

    def fold(self, pairs) -> set:
        """Fold ``pairs`` into the records of the generations and cohorts they name; return the
        gen_ids whose records changed."""
        state = self.state
        gen_ids = {ev["gen_id"] for _, ev in pairs if ev["type"] in EVENT_TYPES and ev["type"] != "cohort_built"}
        cohort_ids = {ev.get("cohort_id") for _, ev in pairs if ev["type"] == "cohort_built"}
        self.load(gen_ids)
        old_cohorts = state.cohorts(cohort_ids)
        folded = set().union(*(self.old_ids.get(gen_id, ()) for gen_id in gen_ids))
        folded.update(event_id for entry in old_cohorts.values() for event_id in entry[2])
        if any(ev["event_id"] in folded for _, ev in pairs):
            raise _GiveUp("an event already folded appears again")
        fold = Fold()
        # (_gen_from copies the positions Fold.add appends to: the old records stay as they were)
        fold.gens = {g: _gen_from(r[0]) for g in gen_ids if (r := self.old[g]) is not None and r[0] is not None}
        fold.cohorts = {c: (entry[0], None) for c, entry in old_cohorts.items()}
        fold.add(pairs)
        self.calls = fold.calls
        rebuilt = {c: listing for c, (_, listing) in fold.cohorts.items() if listing is not None}
        listed = {g for c, new_listing in rebuilt.items() for g in (*new_listing, *old_cohorts.get(c, (0, ()))[1])}
        self.load(listed)
        listings = {g: dict(self.old[g][1] or {}) if self.old[g] is not None else {} for g in listed}
        for cohort_id, ids in fold.cohort_events.items():
            old = old_cohorts.get(cohort_id)
            key = fold.cohorts[cohort_id][0]
            members = old[1] if old is not None else []
            if cohort_id in rebuilt:   # a newer cohort_built: the old listing goes, the new one comes
                for gen_id in members:
                    listings[gen_id].pop(cohort_id, None)
                for gen_id, lin in rebuilt[cohort_id].items():
                    listings[gen_id][cohort_id] = (key, lin)
                members = list(rebuilt[cohort_id])
            state.set_cohort(cohort_id, (key, members, (old[2] if old is not None else []) + ids))
        for gen_id in gen_ids | listings.keys():
            old = self.old[gen_id]
            values = _VALUES(fold.gens[gen_id]) if gen_id in fold.gens else (old[0] if old else None)
            lst = listings[gen_id] if gen_id in listings else (old[1] if old else None)
            self.new[gen_id] = (values, lst or None) if values is not None or lst else None
        return gen_ids | listings.keys()

    def pivots(self, old_scores, changed_scores, meta, edits) -> None:
        """Update the generation pivot's rows of every essay whose scores changed, its columns,
        and the model x template means."""
        if not changed_scores:
            return
        columns = dict(meta["columns"])
        cells = dict(meta["cells"])   # (template, llm) -> (count, values whose fsum is the sum)
        added, essays = {}, set()
        for gen_id, new in changed_scores.items():
            for row, sign in ((old_scores.get(gen_id), -1), (new, 1)):
                if row is None:
                    continue
                essay = row[1]
                if not essay or type(essay) is not str:
                    raise _GiveUp("a score of an evaluation without an essay")
                essays.add(essay)
                column = _pivot_column(row)
                columns[column] = columns.get(column, 0) + sign
                value = float(row[_SCORE_AT])
                if not math.isfinite(value) or (value == 0 and math.copysign(1, value) < 0):
                    raise _GiveUp("a -0.0 or non-finite score")
                added.setdefault(_model_template_cell(row), []).append((sign, sign * value))
        for cell, changes in added.items():
            count, values = cells.get(cell, (0, []))
            count += sum(sign for sign, _ in changes)
            cells[cell] = (count, _partials(list(values) + [v for _, v in changes]))
        meta["cells"] = cells = {cell: entry for cell, entry in cells.items() if entry[0]}
        table = _model_template_table({cell: math.fsum(values) / count for cell, (count, values) in cells.items()})
        rows_before = meta["rows"]["evaluation_model_template_pivot"]
        edits["evaluation_model_template_pivot"] = lambda path: _rewrite(path, to_csv(*table).encode("utf-8"),
                                                                         len(table[1]) - rows_before)

        old_columns = sorted(c for c, n in meta["columns"].items() if n)
        meta["columns"] = {c: n for c, n in columns.items() if n}
        new_columns = sorted(meta["columns"])
        kids = set().union(*self.state.children(essays).values())
        groups = {essay: [] for essay in essays}
        for row in self.view(kids | essays, new=True).rows(kids)[2].values():
            if row[1] in groups:
                groups[row[1]].append(row)
        pivot = {essay: _pivot_rows(_pivot_cells(rows), new_columns) for essay, rows in groups.items()}

        groups = {essay: _csv_bytes(rows) for essay, rows in pivot.items()}
        added = sum(map(len, pivot.values()))

        def edit(path):
            if old_columns == new_columns:
                return added - splice_file(path, groups)
            data, removed = splice(_recolumn(path.read_bytes(), old_columns, new_columns), groups)
            write_bytes_atomic(path, data, fsync=False)
            return added - removed
        edits["generation_scores_pivot"] = edit


def _splicer(groups, added):
    def edit(path):
        splice_file(path, groups)
        return added
    return edit


def _rewrite(path, data, added):
    """Write ``data`` unless the file holds it already; None when it did."""
    if path.read_bytes() == data:
        return None
    write_bytes_atomic(path, data, fsync=False)
    return added


def _csv_bytes(rows) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue().encode("utf-8")


def _recolumn(data: bytes, old_columns, new_columns) -> bytes:
    """The generation pivot with its evaluation columns changed to ``new_columns``; a column
    added is empty in every row, a column dropped was empty in every row."""
    width = len(PIVOT_INDEX)
    header = to_csv(PIVOT_INDEX + tuple(new_columns) + ("mean", "n"), []).encode("utf-8")
    if b'"' in data:   # quoted fields: let csv find them
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        next(reader)
        at = [width + old_columns.index(c) if c in old_columns else None for c in new_columns]
        return header + _csv_bytes(row[:width] + [row[i] if i is not None else "" for i in at] + row[-2:]
                                   for row in reader)
    # no quotes: every comma separates fields
    lines = data.split(b"\n")[1:-1]
    old_width = width + len(old_columns) + 2
    pick = itemgetter(*range(width), *(width + old_columns.index(c) if c in old_columns else old_width
                                       for c in new_columns), old_width - 2, old_width - 1)
    return header + b"".join(b",".join(pick(fields + [b""])) + b"\n" for fields in map(bytes.split, lines, repeat(b",")))


def _partials(values) -> list:
    """Shewchuk's non-overlapping partials, whose exact sum is that of ``values`` (so their
    math.fsum is that of the values); removing a value is adding its negative."""
    partials = []
    for x in values:
        i = 0
        for y in partials:
            if abs(x) < abs(y):
                x, y = y, x
            hi = x + y
            lo = y - (hi - x)
            if lo:
                partials[i] = lo
                i += 1
            x = hi
        partials[i:] = [x]
    return partials
