"""Fold the event log into result tables (CSV), byte-identical for the same log.

    >>> stats = replay(Path("data/events"), Path("data/tables"))
    >>> print(stats.summary())
    >>> tables = load_tables(Path("data/tables"))      # {"generation_results": DataFrame, ...}

    $ daydream replay [--data-root data] [--skip-bad] [--full]   # the command line (pipeline/cli.py)

Events are folded in one pass with plain dicts; where each generation's events are is saved
(pipeline.fold_state), so the next replay folds only the events appended since, with the old events
of the generations they touch read back, and rewrites only the rows they change
(pipeline.replay_delta). Every "latest" choice compares the event key
(ts, segment, position in it), so the result is the same as folding the events in that order, and a
duplicated segment (same event_ids) changes nothing.
"""
import csv
import functools
import gc
import io
import math
import os
import sqlite3
import uuid
from array import array
from dataclasses import astuple, dataclass, field
from operator import attrgetter, itemgetter
from pathlib import Path

from . import fold_state
from .errors import StoreError
from .events import EVENT_TYPES, ReadStats, iter_segments
from .forked import Job, keep_freed_memory
from .fsio import remove_stale_tmp, write_pieces_if_changed

LINEAGE = ("stage", "parent_gen_id", "combo_id", "template_id", "llm_model_id", "replicate")
EVAL_LINEAGE = ("gen_id", "essay_gen_id", "draft_gen_id", "combo_id", "draft_template", "draft_llm",
                "essay_template", "essay_llm", "evaluation_template", "evaluation_llm", "replicate")
COLUMNS = {
    "generation_results": ("gen_id", "stage", "parent_gen_id", "combo_id", "template_id",
                           "llm_model_id", "replicate", "status", "finish_reason", "prompt_tokens",
                           "completion_tokens", "cost", "duration_s", "completed_at", "cohort_ids",
                           "error"),
    # the last three feed the original's tables (pipeline.original_tables): the cohort of the
    # evaluation's and of its essay's first generation_completed, and copy/prompt
    "evaluation_results": EVAL_LINEAGE + ("score", "status", "error", "cohort_ids", "origin_cohort_id",
                                          "input_mode", "essay_origin_cohort_id"),
    "scores_long": EVAL_LINEAGE + ("score", "scale", "parser"),
    "llm_calls": ("ts", "stage", "gen_id", "llm_model_id", "attempt", "outcome", "status",
                  "error_class", "will_retry", "prompt_tokens", "completion_tokens", "cost",
                  "duration_s"),
}
PIVOT_INDEX = ("essay_gen_id", "combo_id", "draft_template", "essay_template", "essay_llm")
TABLES = ("generation_results", "evaluation_results", "scores_long", "generation_scores_pivot",
          "evaluation_model_template_pivot", "llm_calls")
# Columns load_tables parses as numbers; everything else stays text (ids like "NA" stay ids).
_MEASURES = ("replicate", "prompt_tokens", "completion_tokens", "cost", "duration_s", "score")
_NUMERIC = {"generation_results": _MEASURES, "evaluation_results": _MEASURES,
            "scores_long": _MEASURES, "llm_calls": _MEASURES + ("attempt", "status")}

_STATUS = {"generation_started": "running", "generation_completed": "done",
           "generation_reused": "done", "generation_failed": "failed"}
_NO_KEY = ("",)  # sorts before every real (ts, segment, position) key
_NO_LINEAGE = (None,) * len(LINEAGE)
_NO_DONE = (None,) * 6   # _Gen.done's values but copy, for a generation not done
_NO_COHORTS = frozenset()


@dataclass
class ReplayStats:
    read: ReadStats
    rows: dict = field(default_factory=dict)   # table name -> row count
    tables_dir: Path = None
    incremental: bool = False  # read only what was appended since the last replay
    # {table: {gen_id: row tuple as written, or None: removed}} for generation_results,
    # evaluation_results and scores_long since the tables named version_before; None when the
    # tables were rebuilt wholesale. The versions are opaque names of the tables' content.
    delta: dict = None
    version_before: str = None
    version_after: str = None

    def summary(self) -> str:
        rows = ", ".join(f"{name}={n}" for name, n in self.rows.items())
        how = "new events since the last replay: " if self.incremental else ""
        return f"replayed {how}{self.read.summary()} -> {self.tables_dir}: {rows}"


class _Gen:
    """Latest known state of one generation while folding."""
    __slots__ = ("stage", "status_key", "status", "lineage", "done_key", "done", "reused_ts",
                 "parse_key", "parse", "error", "cohorts", "origin_key", "origin", "keys")

    def __init__(self, stage):
        self.stage = stage
        self.status_key = self.done_key = self.parse_key = _NO_KEY
        self.status = self.lineage = self.done = self.reused_ts = self.parse = self.error = None
        self.cohorts = _NO_COHORTS
        self.origin_key = self.origin = None   # the first generation_completed: creator cohort
        # positions of the events folded (their keys' last part: pipeline.fold_state), as 8-byte
        # integers: marshalled as one bytes value (packing the 1M log's state: 0.37 s, as ints 1.04 s)
        self.keys = array("q")


_VALUES = attrgetter(*_Gen.__slots__)


def _gen_from(values):
    """The _Gen whose _VALUES are ``values``. One assignment to every slot, in __slots__ order:
    Fold.from_export makes one per generation of the other fold, and a setattr loop cost 6x as much."""
    g = _Gen.__new__(_Gen)
    (g.stage, g.status_key, g.status, g.lineage, g.done_key, g.done, g.reused_ts, g.parse_key, g.parse,
     g.error, g.cohorts, g.origin_key, g.origin, g.keys) = values
    g.keys = array("q", g.keys)   # a copy (Fold.add appends to it), from an array or marshal's bytes of one
    return g


class Fold:
    """The folded state: the latest of everything per generation and cohort, and every call row.

    Folding is order-free (every "latest" compares event keys), so a fold can be saved, and the
    events appended since folded into it later (pipeline.fold_state), with the same result as
    folding the whole log at once."""

    def __init__(self):
        self.gens = {}      # gen_id -> _Gen
        self.cohorts = {}   # cohort_id -> (key, its _listing): the latest cohort_built defines membership
        self.calls = []     # (ts, event_id, row)
        self.call_lines = []   # (ts, event_id, its llm_calls.csv line): merged, rendered by another process
        self.cohort_events = {}  # cohort_id -> event_ids of its cohort_built events
        self.pool = {}         # value -> the one copy of it the fold keeps (add's pool)
        self.one_cohort = {}   # cohort_id -> the frozenset of it alone, shared by its generations

    def add(self, pairs) -> "Fold":
        """Fold ``((ts, segment, position), event)`` pairs (pipeline.events.scan_lines), in any order."""
        gens, cohorts, calls = self.gens, self.cohorts, self.calls
        # values repeated across generations are kept once (with the flat listings, the 1M log's
        # fold fell from 1,255 to 1,098 MB): memory is paid for again in page faults
        pool, one = self.pool.setdefault, self.one_cohort
        for key, ev in pairs:
            get = ev.get
            etype = ev["type"]
            if etype == "cohort_built":
                current = cohorts.get(get("cohort_id"))
                if current is None or key > current[0]:
                    # its listing, not the event: the parsed member rows held a fifth of the memory
                    cohorts[get("cohort_id")] = (key, _listing(ev, pool))
                self.cohort_events.setdefault(get("cohort_id"), []).append(ev["event_id"])
                continue
            if etype not in EVENT_TYPES:
                continue
            gen_id = ev["gen_id"]
            g = gens.get(gen_id)
            if g is None:
                stage = get("stage")
                g = gens[gen_id] = _Gen(pool(stage, stage))
            g.keys.append(key[2])
            cohort_id = get("cohort_id")
            if cohort_id and cohort_id not in g.cohorts:
                if g.cohorts:
                    g.cohorts = g.cohorts | {cohort_id}
                else:
                    g.cohorts = one.get(cohort_id) or one.setdefault(cohort_id, frozenset((cohort_id,)))

            status = _STATUS.get(etype)
            if status is not None:
                if key > g.status_key:
                    g.status_key, g.status = key, status
                    stage, combo = get("stage"), get("combo_id")
                    template, model = get("template_id"), get("llm_model_id")
                    g.lineage = (pool(stage, stage), get("parent_gen_id"), pool(combo, combo),
                                 pool(template, template), pool(model, model), get("replicate"))
                    if status == "failed":
                        g.error = ": ".join(str(part) for part in (get("error_class"), get("error"))
                                            if part)
                if etype == "generation_completed":
                    if key > g.done_key:
                        g.done_key = key
                        finish = get("finish_reason")
                        g.done = (pool(finish, finish), get("prompt_tokens"),
                                  get("completion_tokens"), get("cost"), get("duration_s"),
                                  ev["ts"], bool(get("copy")))
                    if g.origin_key is None or key < g.origin_key:
                        g.origin_key, g.origin = key, cohort_id and pool(cohort_id, cohort_id)
                    if not get("copy") and get("source", "run") == "run":
                        stage, model = get("stage"), get("llm_model_id")
                        calls.append((ev["ts"], ev["event_id"], (
                            ev["ts"], pool(stage, stage), gen_id, pool(model, model),
                            get("attempts"), "ok", None, None, None, get("prompt_tokens"),
                            get("completion_tokens"), get("cost"), get("duration_s"))))
                elif etype == "generation_reused" and (g.reused_ts is None or ev["ts"] > g.reused_ts):
                    g.reused_ts = ev["ts"]
            elif etype == "score_parsed" or etype == "parse_failed":
                # The latest parse outcome decides the score: a later failed re-parse clears it.
                if key > g.parse_key:
                    g.parse_key = key
                    if etype == "score_parsed":
                        scale, parser = get("scale"), get("parser")
                        g.parse = (get("score"), pool(scale, scale), pool(parser, parser))
                    else:
                        g.parse = None
            elif etype == "llm_call_failed":
                stage, model, error_class = get("stage"), get("llm_model_id"), get("error_class")
                calls.append((ev["ts"], ev["event_id"], (
                    ev["ts"], pool(stage, stage), gen_id, pool(model, model), get("attempt"),
                    "failed", get("status"), pool(error_class, error_class), _bool(get("will_retry")),
                    None, None, None, None)))
        return self

    def export(self) -> tuple:
        """The fold as builtins (marshal), for from_export(); its calls rendered as CSV lines (the
        exporting process has the time: a line is also cheaper to marshal than its row)."""
        return ({gen_id: _VALUES(g) for gen_id, g in self.gens.items()}, self.cohorts,
                self.call_lines + _call_lines(self.calls), self.cohort_events)

    @classmethod
    def from_export(cls, exported) -> "Fold":
        """The fold another process export()ed (its calls in call_lines), to merge()."""
        gens_values, cohorts, call_lines, cohort_events = exported
        fold = cls()
        fold.gens = {gen_id: _gen_from(values) for gen_id, values in gens_values.items()}
        fold.cohorts, fold.call_lines, fold.cohort_events = cohorts, call_lines, cohort_events
        return fold

    def merge(self, other) -> "Fold":
        """Fold in ``other``, a from_export() fold, as if its events, all later in file order than
        this fold's (pipeline.fold_state.read_all), had been added here; its objects become this
        fold's."""
        gens = self.gens
        for gen_id, o in other.gens.items():
            g = gens.get(gen_id)
            if g is None:
                gens[gen_id] = o
                continue
            if o.status_key > g.status_key:
                g.status_key, g.status, g.lineage = o.status_key, o.status, o.lineage
                if o.status == "failed":
                    g.error = o.error
            if o.done_key > g.done_key:
                g.done_key, g.done = o.done_key, o.done
            if o.reused_ts is not None and (g.reused_ts is None or o.reused_ts > g.reused_ts):
                g.reused_ts = o.reused_ts
            if o.parse_key > g.parse_key:
                g.parse_key, g.parse = o.parse_key, o.parse
            if o.origin_key is not None and (g.origin_key is None or o.origin_key < g.origin_key):
                g.origin_key, g.origin = o.origin_key, o.origin
            g.cohorts = g.cohorts | o.cohorts   # never in place: a set may be shared
            g.keys += o.keys
        for cohort_id, (key, ev) in other.cohorts.items():
            current = self.cohorts.get(cohort_id)
            if current is None or key > current[0]:
                self.cohorts[cohort_id] = (key, ev)
        for cohort_id, ids in other.cohort_events.items():
            self.cohort_events.setdefault(cohort_id, []).extend(ids)
        self.call_lines += other.call_lines
        return self

    def tables(self) -> dict:
        """``{table name: (columns, rows)}`` with rows as tuples in column order."""
        # the state is left as it is: more events may be folded into it after this
        tables, _ = _tables(*_resolve(self.gens, _listings(self.cohorts)))
        return {**tables, "llm_calls": _calls_table(self.calls)}


def _resolve(fold_gens, listings) -> tuple:
    """(gens, members, lineage) for every generation with events or listed by a cohort; members
    (gen_id -> _member) leaves out a generation whose listing tells nothing its events do not."""
    gens, members = fold_gens, {}
    for gen_id, listing in listings.items():
        g = gens.get(gen_id)
        if g is None:
            if gens is fold_gens:   # the fold is left as it is: more events may be folded into it
                gens = dict(fold_gens)
            gens[gen_id] = _Gen(None)
        elif type(listing) is tuple:
            # most generations: listed by a cohort their events name, with their events' lineage
            cohort_id, _, lin = listing
            # (the replicate's type too: 1 == 1.0 == True, and the state keeps the events' one)
            if lin == g.lineage and cohort_id in g.cohorts and type(lin[-1]) is type(g.lineage[-1]):
                continue
        members[gen_id] = _member(listing)
    lineage = {}
    for gen_id, g in gens.items():
        lin = g.lineage
        if lin is None or lin[0] is None or gen_id in members:
            lin = _lineage(g, members.get(gen_id))
        lineage[gen_id] = lin
    return gens, members, lineage


def _rows(gen_ids, gens, members, lineage) -> tuple:
    """(generation rows, evaluation rows, score rows) of ``gen_ids`` (sorted, each in ``gens``);
    ``gens`` and ``lineage`` must hold their parents and grandparents too."""
    generations, evaluations, scores = [], [], []
    member_of = members.get
    for gen_id in gen_ids:
        g, lin = gens[gen_id], lineage[gen_id]
        status = g.status or "pending"
        cohorts = g.cohorts
        member = member_of(gen_id)
        if member is not None and not member[1] <= cohorts:
            cohorts = cohorts | member[1]
        if len(cohorts) == 1:
            cohort_ids, = cohorts
        else:
            cohort_ids = ";".join(sorted(cohorts))
        error = g.error if status == "failed" else None
        stage = lin[0]
        if stage == "evaluation":
            row = _eval_lineage(gen_id, lin, lineage)
            parse, done, essay = g.parse, g.done, gens.get(row[1])
            score = None if parse is None else parse[0]
            evaluations.append(row + (score, status, error, cohort_ids, g.origin,
                                      None if done is None else ("copy" if done[6] else "prompt"),
                                      None if essay is None else essay.origin))
            if score is not None:
                scores.append(row + parse)
        elif stage == "draft" or stage == "essay":
            # one tuple: adding tuples up built the row five times
            done = g.done or _NO_DONE
            generations.append((gen_id, stage, lin[1], lin[2], lin[3], lin[4], lin[5], status, done[0], done[1],
                                done[2], done[3], done[4], done[5] or g.reused_ts, cohort_ids, error))
    return generations, evaluations, scores


def _tables(gens, members, lineage) -> tuple:
    """(every table but llm_calls (_calls_table), _meta's score totals)."""
    generations, evaluations, scores = _rows(sorted(gens), gens, members, lineage)
    pivot_cells, columns, cells = _score_totals(scores)
    return {
        "generation_results": (COLUMNS["generation_results"], generations),
        "evaluation_results": (COLUMNS["evaluation_results"], evaluations),
        "scores_long": (COLUMNS["scores_long"], scores),
        "generation_scores_pivot": _generation_pivot(pivot_cells, sorted(columns)),
        "evaluation_model_template_pivot": _model_template_table({c: _mean(values) for c, values in cells.items()}),
    }, (columns, cells)


def _calls_table(calls) -> tuple:
    calls = sorted(calls)  # by (ts, event_id): unique, so rows are never compared
    return COLUMNS["llm_calls"], [c[2] for c in calls]


def _call_lines(calls) -> list:
    """(ts, event_id, CSV line) for each (ts, event_id, row) of ``calls``."""
    rows = [row for _, _, row in calls]
    lines = _plain_lines(rows, len(COLUMNS["llm_calls"]), split=True)
    if lines is None:   # some value is quoted, perhaps over two lines: one row at a time
        lines = [to_csv((), [row])[1:-1] for row in rows]
    return [(ts, event_id, line) for (ts, event_id, _), line in zip(calls, lines)]


def _calls_csv(fold):
    """llm_calls.csv for ``fold``'s calls and call_lines, in pieces (csv_pieces)."""
    if not fold.call_lines:   # nothing merged: the rows as they are
        yield from csv_pieces(*_calls_table(fold.calls))
        return
    lines = fold.call_lines + _call_lines(fold.calls)
    lines.sort()   # by (ts, event_id): unique, so lines are never compared
    yield to_csv(COLUMNS["llm_calls"], ())
    for at in range(0, len(lines), _PIECE_ROWS):
        # one join a piece: a copy of each line ending in "\n" took a third longer
        yield "\n".join(map(itemgetter(2), lines[at:at + _PIECE_ROWS])) + "\n"


def fold(pairs) -> dict:
    """Fold ``((ts, segment, position), event)`` pairs, in any order, into
    ``{table name: (columns, rows)}`` with rows as tuples in column order."""
    return Fold().add(pairs).tables()


def _bool(value):
    # JSON spelling, so the CSV reads "true"/"false" rather than Python's "True"/"False"
    return {True: "true", False: "false"}.get(value, value)


def _listing(ev, pool) -> dict:
    """gen_id -> LINEAGE values for each member of a cohort_built event (a later row wins), each
    repeated value the one copy ``pool`` (Fold.add's) keeps."""
    fields = list(ev.get("member_fields") or [])
    if "gen_id" not in fields:
        return {}
    gen_at = fields.index("gen_id")
    # A column for each LINEAGE field; one the cohort does not list reads as None.
    pick = itemgetter(*(fields.index(f) if f in fields else len(fields) for f in LINEAGE))
    listing = {}
    for values in ev.get("members") or []:
        stage, parent, combo, template, model, replicate = pick(values + [None])
        listing[values[gen_at]] = (pool(stage, stage), parent, pool(combo, combo), pool(template, template),
                                   pool(model, model), replicate)
    return listing


def _listings(cohorts) -> dict:
    """gen_id -> its listing over the latest cohort_built of each cohort: (cohort_id, event key,
    LINEAGE values) for a generation one cohort lists (most: a dict each is 380k dicts on the 1M
    log), else {cohort_id: (event key, LINEAGE values)} (_listing_dict)."""
    listings = {}
    for cohort_id, (key, listing_of) in cohorts.items():
        for gen_id, lin in listing_of.items():
            listing = listings.get(gen_id)
            if listing is None:
                listings[gen_id] = (cohort_id, key, lin)
            elif type(listing) is tuple:
                listings[gen_id] = {listing[0]: listing[1:], cohort_id: (key, lin)}
            else:
                listing[cohort_id] = (key, lin)
    return listings


def _listing_dict(listing) -> dict:
    """{cohort_id: (event key, LINEAGE values)} for a listing as _listings gives it."""
    if type(listing) is tuple:
        cohort_id, key, lin = listing
        return {cohort_id: (key, lin)}
    return listing


def _member(listing) -> tuple:
    """(lineage from the newest cohort listing the generation, set of the cohort_ids listing it),
    from a listing as _listings gives it or its _listing_dict."""
    listing = _listing_dict(listing)
    if len(listing) == 1:
        (cohort_id, (_, lin)), = listing.items()
        return lin, set() if cohort_id is None else {cohort_id}
    return max(listing.values())[1], {c for c in listing if c is not None}


def _lineage(g, member) -> tuple:
    """LINEAGE values: the latest status event's, falling back on cohort membership."""
    if member is None or member[0] == g.lineage:
        lin = g.lineage or _NO_LINEAGE
    elif g.lineage is None:
        lin = member[0]
    else:
        lin = tuple(m if e is None else e for e, m in zip(g.lineage, member[0]))
    return lin if lin[0] is not None else (g.stage,) + lin[1:]


def _eval_lineage(gen_id, lin, lineage) -> tuple:
    """EVAL_LINEAGE values for evaluation ``gen_id``, walking up to its essay and draft."""
    _, essay_id, combo_id, template_id, llm_model_id, replicate = lin
    essay = lineage.get(essay_id) or _NO_LINEAGE
    draft_id = essay[1]
    draft = lineage.get(draft_id) or _NO_LINEAGE
    return (gen_id, essay_id, draft_id, combo_id or essay[2] or draft[2], draft[3], draft[4],
            essay[3], essay[4], template_id, llm_model_id, replicate)


# positions in an EVAL_LINEAGE row
_PIVOT_AT = tuple(EVAL_LINEAGE.index(c) for c in PIVOT_INDEX)
_EVAL_TEMPLATE_AT = EVAL_LINEAGE.index("evaluation_template")
_EVAL_LLM_AT = EVAL_LINEAGE.index("evaluation_llm")
_SCORE_AT = len(EVAL_LINEAGE)


def _mean(values):
    return math.fsum(values) / len(values)


def _generation_pivot(cells, columns) -> tuple:
    return PIVOT_INDEX + tuple(columns) + ("mean", "n"), _pivot_rows(cells, columns)


def _score_totals(scores) -> tuple:
    """In one pass over score rows (the pivots take a third less time than three passes):
    (pivot index -> ({evaluation column: scores}, its scores), {evaluation column: its number of
    scores}, {(evaluation template, evaluation llm): its scores})."""
    pivot_cells, columns, cells = {}, {}, {}
    pick, judge = itemgetter(*_PIVOT_AT), itemgetter(_EVAL_TEMPLATE_AT, _EVAL_LLM_AT)
    by_judge = {}   # (evaluation template, llm) -> (its column, its cell's scores): a few, not one a row
    for s in scores:
        index = pick(s)
        if None in index:  # None cannot be sorted with text
            index = tuple(v or "" for v in index)
        score = float(s[_SCORE_AT])
        column_cell = by_judge.get(who := judge(s))
        if column_cell is None:
            column_cell = by_judge[who] = (_pivot_column(s), cells.setdefault(_model_template_cell(s), []))
        column = column_cell[0]
        column_cell[1].append(score)
        columns[column] = columns.get(column, 0) + 1
        cell = pivot_cells.get(index)
        if cell is None:
            pivot_cells[index] = ({column: [score]}, [score])
        else:
            cell[0].setdefault(column, []).append(score)
            cell[1].append(score)
    return pivot_cells, columns, cells


def _pivot_cells(scores) -> dict:
    """pivot index -> ({evaluation column: scores}, its scores)."""
    return _score_totals(scores)[0]


def _pivot_column(score_row) -> str:
    return f"{score_row[_EVAL_TEMPLATE_AT]}__{score_row[_EVAL_LLM_AT]}"


def _pivot_rows(cells, columns) -> list:
    rows = []
    for index in sorted(cells):
        by_column, every = cells[index]
        means = [None if (values := by_column.get(column)) is None else _mean(values) for column in columns]
        rows.append(index + tuple(means) + (_mean(every), len(every)))
    return rows


def _model_template_cell(score_row) -> tuple:
    return score_row[_EVAL_TEMPLATE_AT] or "", score_row[_EVAL_LLM_AT] or ""


def _model_template_table(means) -> tuple:
    """The pivot from {(evaluation template, evaluation llm): mean score}."""
    llms = sorted({llm for _, llm in means})
    rows = [(template,) + tuple(means.get((template, llm)) for llm in llms)
            for template in sorted({t for t, _ in means})]
    return ("evaluation_template",) + tuple(llms), rows


def to_csv(columns, rows) -> str:
    """CSV text: header, then tuples as they are. None is written empty and floats as repr,
    the shortest text that reads back as the same float - fixed for a given value."""
    return "".join(csv_pieces(columns, rows))


_PIECE_ROWS = 4096   # rows rendered at a time: their text fits in memory freed by the last piece


def csv_pieces(columns, rows):
    """to_csv's text in pieces (header, then some rows at a time), for fsio.write_pieces_if_changed."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(columns)
    yield out.getvalue()
    rows = rows if type(rows) is list else list(rows)
    for at in range(0, len(rows), _PIECE_ROWS):
        piece = rows[at:at + _PIECE_ROWS]
        lines = _plain_lines(piece, len(columns))
        if lines is None:
            out = io.StringIO()
            csv.writer(out, lineterminator="\n").writerows(piece)
            lines = out.getvalue()
        yield lines


def _plain_lines(rows, width, split=False):
    """What csv.writer writes for ``rows`` (tuples of ``width`` values) when no value needs
    quoting, rendered in about half the time csv.writer takes; None when some value may need quoting.
    ``split``: as a list of lines without their newlines (not one text split again)."""
    if not rows:
        return [] if split else ""
    if width < 2 or set(map(len, rows)) != {width}:   # csv.writer quotes a lone empty field
        return None
    lines = _line_renderer(width)(rows)
    lines.append("")   # the last line's newline, joined rather than added to a copy
    text = "\n".join(lines)
    # a comma, quote or line break inside a value shows as one too many, or is refused
    if (text.count(",") != len(rows) * (width - 1) or text.count("\n") != len(rows)
            or '"' in text or "\r" in text):
        return None
    if split:
        lines.pop()
        return lines
    return text


@functools.cache
def _line_renderer(width):
    """rows -> their lines, None written empty and the rest as str() writes it, for rows of
    ``width`` values. An f-string written for the width renders a row in 60% of the time
    ",".join(map(...)) takes; for width 2 the function is
        def lines(rows):
            return [f"{'' if v0 is None else v0!s},{'' if v1 is None else v1!s}" for v0, v1 in rows]"""
    names = [f"v{i}" for i in range(width)]
    fields = ",".join(f"{{'' if {name} is None else {name}!s}}" for name in names)
    namespace = {}
    exec(f"def lines(rows):\n    return [f\"{fields}\" for {', '.join(names)} in rows]", namespace)
    return namespace["lines"]


def replay(events_dir, tables_dir, skip_bad=False, full=False) -> ReplayStats:
    """(Re)write the CSV tables in ``tables_dir`` from the segments under ``events_dir``.

    Folds only what was appended since the last replay, updating the rows it touches
    (pipeline.replay_delta) in the state saved by the last replay (pipeline.fold_state), unless
    ``full`` or that state is missing or no longer matches the log or the tables; the tables are
    byte-identical either way. Raises EventLogError for a malformed line (unless ``skip_bad``)
    or a newer schema."""
    from .replay_delta import update

    # The fold keeps ~one small object per event alive and makes no cycles; without this the
    # cyclic GC would rescan that growing heap again and again (about half the run time).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        state = None if full else fold_state.open_state(tables_dir, events_dir)
        if state is not None:
            try:
                stats = update(state, Path(tables_dir), skip_bad)
                if stats is not None:
                    return stats
            finally:
                state.close()
        stats = _replay_full(events_dir, Path(tables_dir), skip_bad)
        stats.version_before = state.meta["version"] if state is not None else None
        return stats
    except sqlite3.OperationalError as exc:   # e.g. a full disk, as sqlite words it
        raise fold_state.save_error(Path(tables_dir) / fold_state.STATE_FILE, f"{type(exc).__name__}: {exc}") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _replay_full(events_dir, tables_dir, skip_bad) -> ReplayStats:
    remove_stale_tmp(tables_dir)   # what a killed replay was writing
    if sum(path.stat().st_size for path in iter_segments(events_dir)) < fold_state.PARALLEL_BYTES:
        return _replay_full_here(events_dir, tables_dir, skip_bad)
    # A big log is replayed by a forked process: it ends without freeing its heap object by object
    # (a second or so per million events), and this process never holds that memory.
    job = Job.start(_replay_full_answer, events_dir, tables_dir, skip_bad)
    try:
        read, rows, version = job.result()
    except BaseException:
        remove_stale_tmp(tables_dir)   # what the stopped replay was writing
        raise
    return ReplayStats(read=ReadStats(*read), rows=rows, tables_dir=tables_dir, version_after=version)


def _replay_full_answer(events_dir, tables_dir, skip_bad) -> tuple:
    keep_freed_memory()   # this process ends with the replay: what it frees is only reused
    stats = _replay_full_here(events_dir, tables_dir, skip_bad, keep=_KEPT)
    return astuple(stats.read), stats.rows, stats.version_after


# A forked replay's fold: left for the process's end to drop at once (pipeline.forked), rather than
# freed object by object when _replay_full_here returns.
_KEPT = []


def _replay_full_here(events_dir, tables_dir, skip_bad, keep=None) -> ReplayStats:
    """The full replay, in this process; ``keep``: a list the fold is added to (not freed here)."""
    stats = ReplayStats(read=ReadStats(), tables_dir=tables_dir, version_after=uuid.uuid4().hex)
    state = fold_state.FoldState.empty(events_dir)
    fold = Fold()
    fold_state.read_all(state, fold, stats.read, skip_bad)
    stats.read.unknown_types = dict(sorted(stats.read.unknown_types.items()))
    listings = _listings(fold.cohorts)
    gens, members, lineage = _resolve(fold.gens, listings)
    # The state and llm_calls.csv are written by a forked child (the second core) while this
    # process writes the other tables, and the state is put in place after them all: a state
    # never covers events the tables do not show.
    saving = fold_state.save_state(tables_dir, len(gens), lambda: _state_parts(fold, listings, members, lineage),
                                   [(tables_dir / "llm_calls.csv", lambda: _calls_csv(fold))])
    try:
        tables, totals = _tables(gens, members, lineage)
        for name, (columns, rows) in tables.items():
            # no fsync: a table lost to a power cut is rebuilt by `daydream replay --full`
            write_pieces_if_changed(tables_dir / f"{name}.csv", csv_pieces(columns, rows), fsync=False)
            stats.rows[name] = len(rows)
        stats.rows["llm_calls"] = len(fold.calls) + len(fold.call_lines)
        meta = _meta(stats, totals)   # while the child may still be writing
    except BaseException:
        saving.abort()
        raise
    saving.finish(state, lambda: {**meta, "files": table_files(tables_dir)})
    if keep is not None:
        keep.append((fold, listings, gens, members, lineage, tables))
    return stats


def _state_parts(fold, listings, members, lineage) -> tuple:
    """(records, children, cohorts) as pipeline.fold_state saves them, for pipeline.replay_delta;
    records are three lists - gen_ids, the positions of their events, their listings: an
    incremental replay reads the events back (fold_state.events_at), folds them again and calls
    saved_record() with (positions, listing)."""
    get = listings.get
    # most generations are listed by one cohort their events name, with their events' lineage (so
    # not in members: _resolve): saved as the cohort_id alone, half the bytes of (cohort_id, key);
    # saved_record takes the key from the cohort's entry and the lineage from the events
    gen_ids = list(fold.gens)
    positions = [g.keys for g in fold.gens.values()]
    listed = [listing[0] if type(listing := get(gen_id)) is tuple and gen_id not in members
              else listing and _listing_dict(listing) for gen_id in gen_ids]
    for gen_id in listings.keys() - fold.gens.keys():
        gen_ids.append(gen_id)
        positions.append(None)
        listed.append(_listing_dict(listings[gen_id]))

    children = {}
    for gen_id, lin in lineage.items():
        parent = lin[1]
        if parent and type(parent) is str:
            children.setdefault(parent, []).append(gen_id)
    cohorts = {cohort_id: (key, list(listing), fold.cohort_events[cohort_id])
               for cohort_id, (key, listing) in fold.cohorts.items()}
    return (gen_ids, positions, listed), children, cohorts


_LINEAGE_AT = _Gen.__slots__.index("lineage")


def saved_record(record, gen, cohort_keys):
    """(values, listing) from a record as _state_parts saved it - (the positions of its events,
    listing) - and ``gen``, the _Gen folded from those events (None: it has none): the values are
    gen's, the listing a dict again; ``cohort_keys``: cohort_id -> the key of its latest
    cohort_built, for a listing saved as a cohort_id alone (a cohort built again has every member's
    record saved anew, pipeline.replay_delta, so the key is the one the record was saved with)."""
    if record is None:
        return None
    values, listing = (None if gen is None else _VALUES(gen)), record[1]
    if type(listing) is str:
        if listing not in cohort_keys:
            raise fold_state.StateError(f"no entry for cohort {listing!r}")
        listing = {listing: (cohort_keys[listing], values[_LINEAGE_AT])}
    return values, listing


def _meta(stats, totals) -> dict:
    """What the next incremental replay needs beside the records (pipeline.replay_delta), but
    the tables' "files" (table_files); ``totals`` are _score_totals' column counts and cells."""
    columns, cells = totals
    return {"version": stats.version_after, "rows": dict(stats.rows), "columns": columns,
            "cells": {cell: (len(values), values) for cell, values in cells.items()}}


def table_files(tables_dir) -> dict:
    """table -> (size, mtime, inode) of its file: a table changed by anyone else means a full replay."""
    files = {}
    for name in TABLES:
        st = os.stat(Path(tables_dir) / f"{name}.csv")
        files[name] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return files


def load_tables(tables_dir) -> dict:
    """The replayed tables as pandas DataFrames, ids as text and measures as numbers.

        >>> tables = load_tables(Path("data/tables"))
        >>> tables["scores_long"].groupby("evaluation_llm").score.mean()
    """
    tables = {}
    for name in TABLES:
        path = Path(tables_dir) / f"{name}.csv"
        if not path.exists():
            raise StoreError(f"{path} is missing; run `daydream replay` to build the tables")
        tables[name] = parse_table(name, path)
    return tables


def parse_table(name, source):
    """Table ``name`` as load_tables types it, from a path or a file object holding its CSV
    (pipeline.reports hands in just a cohort's rows)."""
    import pandas as pd  # only report code needs pandas

    df = pd.read_csv(source, dtype=str, keep_default_na=False, na_values=[""])
    if name in _NUMERIC:
        numeric = [c for c in df.columns if c in _NUMERIC[name]]
    else:  # pivots: every column after the index is a number
        numeric = [c for c in df.columns if c not in PIVOT_INDEX and c != "evaluation_template"]
    for column in numeric:
        df[column] = pd.to_numeric(df[column])
    if "will_retry" in df.columns:
        df["will_retry"] = df["will_retry"].map({"true": True, "false": False})
    return df
