"""The original project's results tables, under its paths and names, from the replayed event log.

    >>> write_cross_experiment_tables(Path("data"), Path("data/tables"))   # data/7_cross_experiment/
    >>> write_cohort_tables(paths, "demo")              # data/cohorts/demo/reports/{parsing,summary,analysis}/
    $ daydream select-top-essays --cohort-id top --template clarity-v1 --average-models sonnet_4

Researchers coming from the original (zby/DayDreamingDayDreaming) keep their notebooks and scripts:
the same files, columns, formulas, row orders and rounding, including the original's oddities
(see ../shared/daydreaming/ORIGINAL_OUTPUTS.md §1-§3 and README "Coming from the original").
The rows come from the replay (data/tables/evaluation_results.csv), not from re-reading data/gens.

Every table function takes plain data (the original's normalized 15-column evaluation rows, or a
DataFrame of them as read back from CSV) and returns a DataFrame; an empty DataFrame means "the
original writes no file". The cohort tables are computed from the aggregated table *as read back
from its CSV text*, because the original reads it from disk: empty cells arrive as NaN and such
rows drop out of group-bys and pivots exactly as there.
"""
import csv
import io
import logging
import math
from collections import Counter
from operator import itemgetter
from pathlib import Path

import pandas as pd
from pandas._libs.parsers import STR_NA_VALUES   # read_csv's default na_values

from . import sorted_csv
from .errors import PipelineError, StoreError
from .fold_state import read_checked, write_checked
from .fsio import remove_stale_tmp, write_bytes_atomic, write_if_changed, write_text_atomic
from .membership import read_membership
from .paths import Paths
from .replay import COLUMNS

log = logging.getLogger("luigi-interface")

# §1.1: the normalized evaluation row, and §2.1: the cross-experiment script's column order
NORMALIZED_COLUMNS = (
    "gen_id", "parent_gen_id", "evaluation_template", "evaluation_llm_model", "score", "error",
    "evaluation_response_path", "combo_id", "draft_template", "generation_template",
    "generation_model", "origin_cohort_id", "generation_response_path", "input_mode", "copied_from")
AGGREGATED_COLUMNS = (
    "parent_gen_id", "gen_id", "evaluation_template", "evaluation_llm_model", "score", "error",
    "evaluation_response_path", "combo_id", "draft_template", "generation_template",
    "generation_model", "generation_response_path", "origin_cohort_id", "input_mode", "copied_from")
MISSING_SCORE = "missing parsed.txt"   # the original's error text for an evaluation without a score
GENERATION_INDEX = ["combo_id", "draft_template", "generation_template", "generation_model",
                    "parent_gen_id"]
TASK_COLUMNS = ["combo_id", "draft_template", "generation_template", "generation_model"]
# essay_task_id joins the task columns in this order (not TASK_COLUMNS' order)
TASK_ID_ORDER = ["combo_id", "draft_template", "generation_model", "generation_template"]
FINAL_RESULTS_COLUMNS = [
    "analysis_type", "generation_template", "generation_model", "evaluation_llm_model", "combo_id",
    "count", "average", "std_dev", "min_score", "max_score", "perfect_scores", "perfect_score_pct",
    "high_scores_8plus", "high_score_pct", "low_scores_3minus"]
FINAL_RESULTS_BLOCKS = (
    ("by_generation_template", ["generation_template"]),
    ("by_generation_model", ["generation_model"]),
    ("by_evaluation_model", ["evaluation_llm_model"]),
    ("by_combo_id", ["combo_id"]),
    ("by_template_and_generation_model", ["generation_template", "generation_model"]),
    ("by_generation_vs_evaluation_model", ["generation_model", "evaluation_llm_model"]),
)
PERFECT_COLUMNS = ["combo_id", "generation_template", "generation_model", "evaluation_llm_model",
                   "score", "generation_response_path", "evaluation_response_path"]
VARIANCE_KEY = ["combo_id", "generation_template", "generation_model"]
RANK_COLUMNS = ["parent_gen_id", "avg_score", "max_score", "models_covered"]


# ----------------------------------------------------------------------------- rows

def _evaluation_table(tables_dir, gen_ids=None) -> tuple:
    """The header and rows (lists of text) of the replayed ``evaluation_results.csv``: its first
    column is the gen_id. ``gen_ids``: only those rows are wanted (perhaps more are returned)."""
    path = Path(tables_dir) / "evaluation_results.csv"
    if not path.exists():
        raise StoreError(f"{path} is missing: run `daydream replay` first")
    if gen_ids is None:
        data = path.read_bytes()
    else:
        whole = sorted_csv.mapped(path)
        data = sorted_csv.select(whole, [str(g).encode("utf-8") for g in gen_ids]) or whole[:]
    reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
    header = next(reader, [])
    return header, [row for row in reader if row]


def _as_dicts(header, rows) -> list:
    return [{k: (v if v != "" else None) for k, v in zip(header, row)} for row in rows]


def normalized_rows(evaluations, data_root) -> list:
    """The original's 15-column row (§1.1) for each replayed evaluation (dicts of evaluation_results.csv text,
    empty cells None).

    A dict with only a ``gen_id`` gives the row the original writes for an evaluation it cannot
    find: no lineage, ``error = missing parsed.txt``. Paths are absolute, as the original's."""
    # text, not Path: joining Paths costs seconds over a long history's evaluations
    gens = str(Paths(Path(data_root).resolve()).gens_root)
    rows = []
    for ev in evaluations:
        get = ev.get
        essay_id = (get("essay_gen_id") or "").strip()
        score = get("score")
        score = None if score is None or score == "" else float(score)
        rows.append({
            "gen_id": ev["gen_id"],
            "parent_gen_id": essay_id,
            "evaluation_template": get("evaluation_template"),
            "evaluation_llm_model": get("evaluation_llm"),
            "score": score,
            "error": None if score is not None else MISSING_SCORE,
            "evaluation_response_path": f"{gens}/evaluation/{ev['gen_id']}/parsed.txt",
            "combo_id": get("combo_id") or "",
            "draft_template": get("draft_template") or "",
            "generation_template": get("essay_template") or "",
            "generation_model": get("essay_llm") or get("draft_llm") or "",
            "origin_cohort_id": (get("origin_cohort_id") or "").strip() or None,
            "generation_response_path": f"{gens}/essay/{essay_id}/parsed.txt" if essay_id else "",
            "input_mode": get("input_mode"),
            "copied_from": None,
        })
    return rows


def normalized_frame(rows, columns=NORMALIZED_COLUMNS) -> pd.DataFrame:
    """Rows (dicts) as a DataFrame with ``columns``; the score is numeric even when all missing."""
    df = pd.DataFrame(list(rows), columns=list(NORMALIZED_COLUMNS))
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    return df[list(columns)]


def to_csv_text(df) -> str:
    """The CSV text the original writes for ``df`` (pandas, ``index=False``)."""
    return df.to_csv(index=False, lineterminator="\n")


def read_back(text) -> pd.DataFrame:
    """``pd.read_csv`` of CSV text, as the original's downstream assets read their input."""
    return pd.read_csv(io.StringIO(text))


def valid_scores(scores) -> pd.DataFrame:
    """§1.2: rows with a score and no error."""
    if scores.empty:
        return scores
    return scores[scores["error"].isna() & scores["score"].notna()].copy()


# ----------------------------------------------------------------------------- cohort tables

# ``.map(str)`` below is the original's ``astype(str)`` under pandas 2: null -> "nan"
# (pandas 3's astype(str) keeps nulls).

def _model_template_key(df) -> pd.Series:
    # the cohort pivots' spelling: model first, one underscore
    return df["evaluation_llm_model"].map(str) + "_" + df["evaluation_template"].map(str)


def _pivot(df, aggfunc) -> pd.DataFrame:
    return df.pivot_table(index=GENERATION_INDEX, columns="key", values="score", aggfunc=aggfunc)


def generation_scores(scores, templates, models) -> pd.DataFrame:
    """§2.6 generation_scores.csv: per essay, mean/min/max/n per ``<model>_<template>`` of the
    allowlisted evaluations (templates and models are two independent sets), the sum of the
    means and the essay's response path."""
    valid = valid_scores(scores)
    templates = {str(t) for t in templates if str(t)}
    models = {str(m) for m in models if str(m)}
    if valid.empty or not templates or not models:
        return pd.DataFrame()
    allowed = valid[valid["evaluation_template"].map(str).isin(templates)
                    & valid["evaluation_llm_model"].map(str).isin(models)].copy()
    if allowed.empty:
        return pd.DataFrame()
    allowed["key"] = _model_template_key(allowed)
    means = _pivot(allowed, "mean").round(2)
    keys = list(means.columns)
    parts = [means]
    for suffix, aggfunc in (("_min", "min"), ("_max", "max")):
        parts.append(_pivot(allowed, aggfunc).round(2).add_suffix(suffix))
    parts.append(_pivot(allowed, "count").fillna(0).astype(int).add_suffix("_n"))
    table = pd.concat(parts, axis=1).reset_index()
    table["allowlisted_template_score_sum"] = table[keys].sum(axis=1, skipna=True).round(2)
    # first path per essay, from every aggregated row (failed ones too)
    paths = scores[GENERATION_INDEX + ["generation_response_path"]].drop_duplicates(subset=GENERATION_INDEX)
    table = table.merge(paths, on=GENERATION_INDEX, how="left")
    spread = [f"{key}{suffix}" for key in keys for suffix in ("_min", "_max", "_n")]
    return table[GENERATION_INDEX + keys + spread + ["allowlisted_template_score_sum",
                                                     "generation_response_path"]]


def evaluation_model_template_pivot(scores) -> pd.DataFrame:
    """§2.7: per essay, the mean (rounded to 2) per ``<model>_<template>``, no allowlist."""
    valid = valid_scores(scores)
    if valid.empty:
        return pd.DataFrame()
    valid["key"] = _model_template_key(valid)
    table = _pivot(valid, "mean").round(2).reset_index()
    table.columns.name = None
    return table


def _score_stats(group) -> pd.DataFrame:
    return group.agg(
        count="count", average="mean", std_dev="std", min_score="min", max_score="max",
        perfect_scores=lambda s: (s == 10.0).sum(),
        high_scores_8plus=lambda s: (s >= 8.0).sum(),
        low_scores_3minus=lambda s: (s <= 3.0).sum())


def final_results(scores) -> pd.DataFrame:
    """§2.8 final_results.csv: count/mean/std (n-1)/min/max/perfect/high/low per block of group
    keys, then one overall row; percentages rounded to 1 decimal in blocks, 2 in the overall row."""
    valid = valid_scores(scores)
    if valid.empty:
        return pd.DataFrame()
    blocks = []
    for name, keys in FINAL_RESULTS_BLOCKS:
        stats = _score_stats(valid.groupby(keys)["score"]).round(2)
        stats["perfect_score_pct"] = (stats["perfect_scores"] / stats["count"] * 100).round(1)
        stats["high_score_pct"] = (stats["high_scores_8plus"] / stats["count"] * 100).round(1)
        stats = stats.reset_index()
        stats["analysis_type"] = name
        blocks.append(stats)
    s = valid["score"]
    overall = {"analysis_type": "overall_statistics", "count": len(s), "average": s.mean(),
               "std_dev": s.std(), "min_score": s.min(), "max_score": s.max(),
               "perfect_scores": (s == 10.0).sum(), "high_scores_8plus": (s >= 8.0).sum(),
               "low_scores_3minus": (s <= 3.0).sum(),
               "perfect_score_pct": (s == 10.0).sum() / len(s) * 100,
               "high_score_pct": (s >= 8.0).sum() / len(s) * 100}
    blocks.append(pd.DataFrame([overall]).round(2))
    table = pd.concat(blocks, ignore_index=True)
    return table[[c for c in FINAL_RESULTS_COLUMNS if c in table.columns]]


def perfect_score_paths(scores) -> pd.DataFrame:
    """§2.9: valid rows scoring exactly 10.0, in aggregated order, with a note."""
    valid = valid_scores(scores)
    if valid.empty:
        return pd.DataFrame()
    table = valid.loc[valid["score"] == 10.0, PERFECT_COLUMNS].copy()
    table["notes"] = ("Perfect score from " + table["generation_model"].map(str) + " generation + "
                      + table["evaluation_llm_model"].map(str) + " evaluation")
    return table


def _spread_rows(valid, by, analysis_type, count_name, distinct, distinct_count, distinct_list):
    """One row per group of ``VARIANCE_KEY + [by]`` with at least two scores (unrounded)."""
    label = {"evaluation_llm_model": "eval_model", "evaluation_template": "eval_template"}[by]
    rows = []
    for keys, group in valid.groupby(VARIANCE_KEY + [by]):
        if len(group) < 2:
            continue
        s = group["score"]
        row = dict(zip(VARIANCE_KEY + [label], keys))
        row.update({count_name: len(group), "mean_score": s.mean(), "std_dev": s.std(),
                    "min_score": s.min(), "max_score": s.max(),
                    distinct_count: group[distinct].nunique(),
                    distinct_list: ", ".join(sorted(group[distinct].unique())),
                    "analysis_type": analysis_type})
        row["score_range"] = row["max_score"] - row["min_score"]
        row["coefficient_of_variation"] = row["std_dev"] / row["mean_score"] if row["mean_score"] != 0 else 0
        rows.append(row)
    return pd.DataFrame(rows)


def _stability(row) -> str:
    # Like the original, the count is read from total_evaluations whenever that column exists,
    # so template/model rows see NaN there (NaN < 2 is False) and only the coefficient test applies.
    if "total_evaluations" in row.index:
        n = row["total_evaluations"]
    else:
        n = row.get("template_evaluations", row.get("model_evaluations", 1))
    if pd.isna(row["coefficient_of_variation"]) or n < 2:
        return "insufficient_data"
    for limit, label in ((1.0, "high_agreement"), (2.0, "moderate_agreement"), (3.0, "low_agreement")):
        if row["score_range"] <= limit:
            return label
    return "poor_agreement"


def variance_analysis(scores) -> pd.DataFrame:
    """§2.10 variance_analysis.csv: spread per (combo, essay template, essay model) overall,
    per evaluation model across templates, and per template across models."""
    valid = valid_scores(scores)
    if valid.empty or "evaluation_llm_model" not in valid.columns:
        return pd.DataFrame()
    overall = valid.groupby(VARIANCE_KEY).agg(
        total_evaluations=("score", "count"), mean_score=("score", "mean"), std_dev=("score", "std"),
        min_score=("score", "min"), max_score=("score", "max"),
        num_templates=("evaluation_template", "nunique"),
        num_models=("evaluation_llm_model", "nunique")).round(3).reset_index()
    overall["score_range"] = overall["max_score"] - overall["min_score"]
    overall["coefficient_of_variation"] = overall["std_dev"] / overall["mean_score"]
    overall["analysis_type"] = "overall_variance"
    blocks = [overall,
              _spread_rows(valid, "evaluation_llm_model", "template_variance", "template_evaluations",
                           "evaluation_template", "num_templates", "templates_used"),
              _spread_rows(valid, "evaluation_template", "model_variance", "model_evaluations",
                           "evaluation_llm_model", "num_models", "models_used")]
    blocks = [b for b in blocks if not b.empty]
    if not blocks:
        return pd.DataFrame()
    table = pd.concat(blocks, ignore_index=True, sort=False)
    table["stability_classification"] = table.apply(_stability, axis=1)
    return table


# ----------------------------------------------------------------------------- build_pivot_tables

def _essay_task_ids(df) -> pd.Series:
    """The TASK_ID_ORDER values of each row, each as text and stripped, joined by "_"."""
    parts = df[TASK_ID_ORDER]
    if len(parts) and all(pd.api.types.is_string_dtype(parts[c]) for c in TASK_ID_ORDER):
        # column by column, as a row-wise apply would give for text columns (about 50x faster)
        ids = parts[TASK_ID_ORDER[0]].map(str).str.strip()
        for column in TASK_ID_ORDER[1:]:
            ids = ids + "_" + parts[column].map(str).str.strip()
        return ids
    # a row of numbers only would be upcast to one type: keep the original's row-wise text
    return parts.apply(lambda row: "_".join(str(v).strip() for v in row), axis=1)


def _task_rows(scores, allowlist=None) -> tuple:
    """The rows scores_by_template_model pivots, with their ``essay_task_id`` and ``key``, and the
    notes the original prints about the rows it drops."""
    df = scores
    notes = []
    if allowlist is not None:
        templates, models = allowlist
        if not templates or not models:
            raise PipelineError("the cohort has no evaluation templates/models to use as allowlist")
        before = len(df)
        df = df[df["evaluation_template"].isin(templates) & df["evaluation_llm_model"].isin(models)].copy()
        if df.empty:
            raise PipelineError("allowlist_filter_removed_all_rows")
        if before - len(df):
            notes.append("Filtered parsed scores to spec-defined evaluation templates/models: "
                         f"kept {len(df)} rows (dropped {before - len(df)}).")
    blank = df[TASK_COLUMNS].apply(lambda col: col.map(str).str.strip() == "").any(axis=1)
    drop = df[TASK_COLUMNS].isna().any(axis=1) | blank
    if drop.any():
        notes.append(f"Dropping rows without complete task metadata: {int(drop.sum())}")
        df = df.loc[~drop].copy()
    if df.empty:
        raise PipelineError("no_complete_task_metadata")
    df["essay_task_id"] = _essay_task_ids(df)
    df["key"] = df["evaluation_template"].map(str) + "__" + df["evaluation_llm_model"].map(str)
    return df, notes


def _task_table(df, essay_origins, keys=None) -> pd.DataFrame:
    """scores_by_template_model's table for _task_rows ``df``; ``keys``: its score columns when
    ``df`` holds only some tasks' rows (default: the keys of ``df``)."""
    keys = sorted(df["key"].unique()) if keys is None else keys
    df = df.sort_values(["essay_task_id", "key"])   # multi-key sort is stable: ties keep input order
    meta_columns = ["parent_gen_id"] + TASK_COLUMNS + ["origin_cohort_id"]
    meta = df[["essay_task_id"] + meta_columns].groupby("essay_task_id", as_index=False).agg("first")
    meta = meta.rename(columns={"parent_gen_id": "essay_gen_id"})
    meta["essay_gen_id"] = meta["essay_gen_id"].map(str).replace({"nan": ""})
    essay_ids = set(df["parent_gen_id"].dropna().map(str))
    if essay_ids:
        # the essay's own creator cohort replaces the evaluation's
        meta["origin_cohort_id"] = meta["essay_gen_id"].map(lambda e: essay_origins.get(e) or "")
    cells = df.pivot_table(index="essay_task_id", columns="key", values="score", aggfunc="first").reset_index()
    for key in keys:
        if key not in cells.columns:
            cells[key] = pd.NA
    table = meta.merge(cells, on="essay_task_id", how="outer")
    table["allowlisted_template_score_sum"] = (
        table[keys].apply(pd.to_numeric, errors="coerce").sum(axis=1, skipna=True).fillna(0.0))
    columns = ["essay_gen_id"] + TASK_COLUMNS + ["origin_cohort_id"] + keys + ["allowlisted_template_score_sum"]
    return table.reindex(columns=columns)


def scores_by_template_model(scores, essay_origins, allowlist=None) -> tuple:
    """§2.5 evaluation_scores_by_template_model.csv and the lines the original prints.

    One row per essay task (combo, draft template, essay model, essay template), with the *first*
    valid score per ``<template>__<model>`` column. ``essay_origins``: essay gen_id -> the cohort
    that created it. ``allowlist``: (templates, models) in --cohort-id mode. Raises PipelineError
    where the original's script stops with an error."""
    df, notes = _task_rows(scores, allowlist)
    return _task_table(df, essay_origins), notes


# ----------------------------------------------------------------------------- writing

def write_table(path, df, fsync=True):
    """Write ``df`` like the original (CSV, no index) and return the text. An empty table writes
    no file (None), as in the original; unlike the original, a file left by an earlier run is
    removed, so the files always reflect the current log."""
    path = Path(path)
    remove_stale_tmp(path.parent)   # left by a writer killed mid-write
    if df is None or df.empty:
        path.unlink(missing_ok=True)
        return None
    text = to_csv_text(df)
    write_if_changed(path, text, fsync=fsync)
    return text


def _lines(text, n):
    """(header line, the n row lines) of CSV ``text``, each ending in a newline; None if it does not
    hold n + 1 lines (a cell with a line break)."""
    lines = [line + "\n" for line in text.split("\n")[:-1]]
    return (lines[0], lines[1:]) if len(lines) == n + 1 else None


def _essay_origins(header, rows) -> dict:
    """essay gen_id -> the cohort that created it, from evaluation_results rows."""
    essay, origin = header.index("essay_gen_id"), header.index("essay_origin_cohort_id")
    return {row[essay]: row[origin] for row in rows if row[essay]}


def _write_pivot(path, scores, essay_origins, allowlist=None):
    """``scores`` None: the input file does not exist, so the original's script writes nothing."""
    table, notes = None, []
    try:
        if scores is not None:
            table, notes = scores_by_template_model(scores, essay_origins, allowlist)
    except PipelineError as exc:
        # the original's script stops here; a report run goes on without this file
        log.warning("%s not written: %s", path, exc)
    for note in notes:
        log.info("%s: %s", path.name, note)
    write_table(path, table)


# ----------------------------------------------------------------------------- cross-experiment files
#
# data/7_cross_experiment holds one line per evaluation of the whole log, sorted by gen_id, and the
# pivot of one line per essay task. A run on a long history changes a few of them, so after a replay
# that says which evaluation rows changed (ReplayStats.delta) the files are updated in place:
# changed rows are spliced into the sorted files (pipeline.sorted_csv finds them) and only the pivot
# lines of the tasks they touch are computed again, by the same pandas code over those tasks' rows.
# CROSS_STATE records what that needs and the replay version the files reflect; whenever it does
# not match the replay's version_before, or an update could differ from a full build, the files are
# built from evaluation_results.csv as a whole.

CROSS_STATE = "_cross_experiment_state.marshal"   # in data/tables, beside the fold state
_STATE_FORMAT = 1
# Columns the pivot groups or labels by. A column pandas reads back as numbers would print, say,
# "1.0" for "1": the tasks' lines are computed apart only while each of these holds a cell that
# can only be text (so pandas reads the column as text, whatever the other rows hold).
_TEXT_COLUMNS = ("parent_gen_id", "evaluation_template", "evaluation_llm_model") + tuple(TASK_COLUMNS)
_FILES = ("aggregated_scores.csv", "filtered_evaluation_results.csv", "evaluation_scores_by_template_model.csv")
_AGG_GEN_ID = AGGREGATED_COLUMNS.index("gen_id")
# pandas (numpy) sums a row of a table of 6 rows or more cell after cell, and pairwise below
# that: the update computes the sums of the tasks it touches in the first order, so it updates
# pivots of at least this many tasks (with a margin) and leaves shorter ones to a full build
MIN_TASKS = 16


def write_cross_experiment_tables(data_root, tables_dir, replay=None) -> None:
    """data/7_cross_experiment/{aggregated_scores, filtered_evaluation_results,
    evaluation_scores_by_template_model}.csv over every evaluation in the log, rows sorted by
    gen_id (the original lists aggregated_scores.csv in file-system order, which no one can
    reproduce; filtered_evaluation_results.csv is sorted there too).

    ``replay``: the ReplayStats of the replay that just wrote ``tables_dir``; its ``delta``
    updates files built from the tables it started from (``version_before``), with the same
    bytes as a full build. Without it, or for files of another version, a full build."""
    out = Path(data_root) / "7_cross_experiment"
    state_path = Path(tables_dir) / CROSS_STATE
    state = _read_state(state_path, data_root, out)
    delta = getattr(replay, "delta", None)
    # no state while the files change: a crash before the new one is saved means a full build
    state_path.unlink(missing_ok=True)
    if state is not None and delta is not None and state["version"] == getattr(replay, "version_before", ""):
        state = _update(state, delta.get("evaluation_results", {}), data_root, tables_dir, out)
    else:
        state = None
    if state is None:
        state = _build(data_root, tables_dir, out)
    version = getattr(replay, "version_after", None)
    if state is not None and version is not None:
        state["version"] = version
        state["sizes"] = [_size(out / name) for name in _FILES]
        write_checked(state_path, state)


def _size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _read_state(path, data_root, out):
    """The saved state if it describes the files as they are in ``out`` under this data_root."""
    try:
        state = read_checked(path)
    except (ValueError, EOFError, TypeError):   # another Python's marshal
        return None
    if (not isinstance(state, dict) or state.get("format") != _STATE_FORMAT
            or state.get("data_root") != str(Path(data_root).resolve())   # the rows hold absolute paths
            or state.get("sizes") != [_size(out / name) for name in _FILES]):
        return None
    return state


def _build(data_root, tables_dir, out):
    """Every file from evaluation_results.csv; returns the state for later updates (None when
    the files cannot be updated in place: a cell with a line break)."""
    header, rows = _evaluation_table(tables_dir)
    rows.sort(key=itemgetter(0))   # by gen_id
    normalized = normalized_rows(_as_dicts(header, rows), data_root)
    # derived from the log like data/tables (rebuilt by `daydream replay --full`): no fsync
    text = write_table(out / "aggregated_scores.csv", normalized_frame(normalized, AGGREGATED_COLUMNS), fsync=False)
    filtered = write_table(out / "filtered_evaluation_results.csv", normalized_frame(normalized), fsync=False)
    path = out / "evaluation_scores_by_template_model.csv"
    origins = _essay_origins(header, rows)
    task_rows = table = None
    try:
        if text is not None:
            task_rows, notes = _task_rows(read_back(text))
            table = _task_table(task_rows, origins)
            for note in notes:
                log.info("%s: %s", path.name, note)
    except PipelineError as exc:
        log.warning("%s not written: %s", path, exc)   # the original's script stops here
    pivot = write_table(path, table, fsync=False)
    if any(t is not None and t.count("\n") != len(rows) + 1 for t in (text, filtered)):
        return None
    state = {"format": _STATE_FORMAT, "data_root": str(Path(data_root).resolve()), "version": None,
             "tasks": {}, "keys": {}, "columns": [], "lines": {}, "header": None,
             "text": {c: sum(n for cell, n in Counter(r[c] or "" for r in normalized).items() if _is_text(cell))
                      for c in _TEXT_COLUMNS}}
    found = [(row["gen_id"],) + task_key for row in normalized
             for task_key in [_task_and_key(row)] if task_key is not None]
    for gen_id, task, key in found:
        state["tasks"].setdefault(task, []).append(gen_id)
        state["keys"][key] = state["keys"].get(key, 0) + 1
    if table is None:
        return None if found else state
    lines = _lines(pivot, len(table))
    # the update relies on the pivot's rows being its tasks in order, and on _task_and_key
    # telling each row's task and key as pandas does: checked here
    if (lines is None or len(lines[1]) != len(state["tasks"])
            or found != list(zip(task_rows["gen_id"], task_rows["essay_task_id"], task_rows["key"]))):
        return None
    state["columns"] = sorted(state["keys"])
    if lines[0] != _pivot_header(state["columns"]):
        return None
    state["header"] = lines[0]
    state["lines"] = dict(zip(sorted(state["tasks"]), lines[1]))
    return state


def _is_text(cell) -> bool:
    """Whether pandas can only read CSV cell text ``cell`` as text (not a number, bool or NA)."""
    if cell in STR_NA_VALUES or cell.strip().lower() in ("true", "false"):
        return False
    try:
        float(cell)
    except ValueError:
        return True
    return False


def _task_and_key(row):
    """(essay_task_id, key) of a normalized row read back with text columns, as _task_rows makes
    them; None for a row it drops (incomplete task metadata)."""
    cells = [row[c] or "" for c in TASK_ID_ORDER]
    if any(c in STR_NA_VALUES or not c.strip() for c in cells):
        return None
    key = [row[c] or "" for c in ("evaluation_template", "evaluation_llm_model")]
    return "_".join(c.strip() for c in cells), "__".join("nan" if c in STR_NA_VALUES else c for c in key)


def _update(state, changes, data_root, tables_dir, out):
    """Apply replayed evaluation rows ({gen_id: row tuple or None}) to the files and ``state``;
    None where only a full build gives the right bytes."""
    if not changes:
        return state
    ids = sorted(changes)
    if any(_needs_quotes(g) for g in ids) or not state["tasks"]:
        return None
    header = COLUMNS["evaluation_results"]
    new = normalized_rows(_as_dicts(header, [["" if v is None else str(v) for v in changes[g]]
                                             for g in ids if changes[g] is not None]), data_root)
    files = {}   # name -> (its old lines of the changed rows, its new bytes)
    for name, columns, column in (("aggregated_scores.csv", AGGREGATED_COLUMNS, _AGG_GEN_ID),
                                  ("filtered_evaluation_results.csv", NORMALIZED_COLUMNS, 0)):
        lines = _lines(to_csv_text(normalized_frame(new, columns)), len(new))
        if lines is None:
            return None
        new_lines = iter(lines[1])   # sorted ids with a row in ``changes`` take the next line
        groups = {g: next(new_lines).encode("utf-8") if changes[g] is not None else b"" for g in ids}
        try:
            data = sorted_csv.mapped(out / name)
            files[name] = (sorted_csv.rows(data, [g.encode("utf-8") for g in ids], column),
                           sorted_csv.splice(data, groups, column)[0])
        except (FileNotFoundError, sorted_csv.SortedCsvError):
            return None
    old_lines, aggregated = files["aggregated_scores.csv"]
    if aggregated.find(b"\n") + 1 in (0, len(aggregated)):
        return None   # no rows left: the full build removes the files
    # the pivot: move the changed rows between tasks, then compute the lines of the tasks touched
    old_rows = [dict(zip(AGGREGATED_COLUMNS, (c or None for c in cells)))
                for cells in csv.reader(io.StringIO(old_lines.decode("utf-8"), newline=""))]
    tasks, keys, text = state["tasks"], state["keys"], state["text"]
    touched = set()
    for sign, rows in ((-1, old_rows), (1, new)):
        for row in rows:
            for c in _TEXT_COLUMNS:
                text[c] += sign * _is_text(row[c] or "")
            found = _task_and_key(row)
            if found is None:
                continue
            task, key = found
            touched.add(task)
            keys[key] = keys.get(key, 0) + sign
            members = tasks.setdefault(task, [])
            if sign > 0:
                members.append(row["gen_id"])
            elif row["gen_id"] in members:
                members.remove(row["gen_id"])
            else:
                return None
    if not all(text.values()):
        return None   # a column would be read back as numbers: full build
    columns = sorted(k for k, n in keys.items() if n)
    if columns != state["columns"]:
        state["lines"] = _recolumn(state["lines"], state["columns"], columns)
        if state["lines"] is None:
            return None
        state["keys"] = keys = {k: keys[k] for k in columns}
        state["columns"] = columns
    for task in touched:
        if tasks[task]:
            tasks[task].sort()
        else:
            del tasks[task]
            state["lines"].pop(task, None)
    if len(tasks) < MIN_TASKS:
        return None   # the sums of a short pivot are added up in another order: see _sum_in_order
    touched = sorted(t for t in touched if t in tasks)
    state["header"] = _pivot_header(columns)
    if touched:
        lines = _task_lines(touched, tasks, columns, aggregated, tables_dir)
        if lines is None or lines[0] != state["header"]:
            return None
        state["lines"].update(zip(touched, lines[1]))
    for name, (_, data) in files.items():
        write_bytes_atomic(out / name, data, fsync=False)
    pivot = state["header"] + "".join(state["lines"][t] for t in sorted(state["lines"]))
    write_text_atomic(out / "evaluation_scores_by_template_model.csv", pivot, fsync=False)
    return state


def _needs_quotes(gen_id) -> bool:
    return not gen_id or any(c in gen_id for c in ',"\r\n')


def _pivot_header(columns) -> str:
    """The pivot's header line for score ``columns`` (pandas writes it with csv.writer)."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(
        ["essay_gen_id"] + TASK_COLUMNS + ["origin_cohort_id"] + list(columns) + ["allowlisted_template_score_sum"])
    return out.getvalue()


def _recolumn(lines, old, new):
    """Pivot lines ({task: line}) with score columns ``old`` as lines with columns ``new``: a
    column no row scores is empty in every line and adds nothing to the sum, so it is inserted or
    dropped as an empty cell. The score cells and the sum end the line and are numbers or empty,
    never quoted, so they split off at the last commas. None if a line has too few cells."""
    n = len(old) + 1   # commas before the score cells and the sum ("\n" stays on the sum)
    at = {k: i + 1 for i, k in enumerate(old)}
    pick = itemgetter(0, *(at.get(k, n + 1) for k in new), n)   # n + 1: the empty cell appended
    out = {}
    for task, line in lines.items():
        cells = line.rsplit(",", n)
        if len(cells) != n + 1:
            return None
        cells.append("")
        out[task] = ",".join(pick(cells))
    return out


def _task_lines(touched, tasks, columns, aggregated, tables_dir):
    """(header, lines) of the pivot for the ``touched`` tasks (sorted), from their rows in the
    updated aggregated_scores.csv bytes, with ``columns`` as its score columns; None if that
    cannot be the full build's text."""
    gen_ids = sorted(g for task in touched for g in tasks[task])
    rows = sorted_csv.select(aggregated, [g.encode("utf-8") for g in gen_ids], _AGG_GEN_ID)
    if rows is None:
        return None
    # the text columns as text: what pandas reads them as over all rows (see _TEXT_COLUMNS)
    scores = pd.read_csv(io.BytesIO(rows), dtype={c: str for c in _TEXT_COLUMNS})
    df, _ = _task_rows(scores)
    if len(scores) != len(gen_ids) or sorted(df["essay_task_id"].unique()) != touched \
            or df["parent_gen_id"].isna().all():
        return None
    # the essays' origins from these rows: replay writes an essay's origin on all its evaluations
    header, evaluations = _evaluation_table(tables_dir, gen_ids)
    if len(evaluations) != len(gen_ids):   # not found by bisection: not the table the rows came from
        return None
    table = _task_table(df, _essay_origins(header, evaluations), columns)
    table["allowlisted_template_score_sum"] = [_sum_in_order(cells) for cells in
                                               table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(float)]
    return _lines(to_csv_text(table), len(table))


def _sum_in_order(cells) -> float:
    """A row's score sum as pandas adds it up in a table of MIN_TASKS rows or more: the cells one
    after the other, a missing one as 0.0 (a table of a few rows is summed pairwise instead)."""
    total = 0.0 if math.isnan(cells[0]) else cells[0]
    for cell in cells[1:]:
        total += 0.0 if math.isnan(cell) else cell
    return total


def cohort_evaluation_ids(members) -> list:
    """Evaluation gen_ids of membership rows, in membership order, first occurrence kept."""
    ids = [str(r["gen_id"]) for r in members if str(r["stage"]).lower() == "evaluation"]
    return list(dict.fromkeys(ids))


def write_cohort_tables(paths, cohort_id) -> None:
    """The original's per-cohort report files under data/cohorts/<id>/reports/."""
    members = read_membership(paths.membership_csv(cohort_id))
    ids = cohort_evaluation_ids(members)
    # the cohort's rows only: their essays' origins are all the pivot below looks up
    header, replayed = _evaluation_table(paths.tables_dir, ids)
    wanted = set(ids)
    replayed = [row for row in replayed if row[0] in wanted]
    by_id = {ev["gen_id"]: ev for ev in _as_dicts(header, replayed)}
    rows = normalized_rows([by_id.get(gen_id, {"gen_id": gen_id}) for gen_id in ids], paths.data_root)
    reports = paths.reports_dir(cohort_id)
    text = write_table(reports / "parsing" / "aggregated_scores.csv", normalized_frame(rows))
    # the original's downstream assets read the aggregated table back from its file
    scores = read_back(text) if text else normalized_frame([])
    # allowlists: the evaluation templates and models of the cohort's members (the spec's)
    templates = {r["evaluation_template"] for r in rows if r["evaluation_template"]}
    models = {r["evaluation_llm_model"] for r in rows if r["evaluation_llm_model"]}
    summary = reports / "summary"
    write_table(summary / "generation_scores.csv", generation_scores(scores, templates, models))
    write_table(summary / "evaluation_model_template_pivot.csv", evaluation_model_template_pivot(scores))
    write_table(summary / "final_results.csv", final_results(scores))
    write_table(summary / "perfect_score_paths.csv", perfect_score_paths(scores))
    write_table(reports / "analysis" / "variance_analysis.csv", variance_analysis(scores))
    _write_pivot(summary / "evaluation_scores_by_template_model.csv", scores if text else None,
                 _essay_origins(header, replayed), (templates, models))


# ----------------------------------------------------------------------------- select_top_essays

def rank_essays(df, template_id, evaluation_models=None, score_span=None, top_n=None,
                score_column="avg_score") -> pd.DataFrame:
    """§3.1: essays ranked by one evaluation template. Per (essay, model) the best score; per
    essay the mean (``avg_score``) and max of those, the number of models, and one
    ``score__<model>`` column per model. Best first, ties by essay id; then ``score_span``
    (keep within span of the best), then ``top_n``."""
    empty = pd.DataFrame(columns=RANK_COLUMNS)
    subset = df[df["evaluation_template"] == template_id].copy()
    if evaluation_models is not None:
        allowed = {str(m).strip() for m in evaluation_models if str(m).strip()}
        subset = subset[subset["evaluation_llm_model"].map(str).isin(allowed)]
    if subset.empty:
        return empty
    for column in ("parent_gen_id", "evaluation_llm_model"):
        subset[column] = subset[column].map(_present_text)
    keep = subset["parent_gen_id"].notna() & subset["evaluation_llm_model"].notna() & subset["score"].notna()
    if "error" in subset.columns:
        keep &= subset["error"].isna()
    subset = subset[keep]
    if subset.empty:
        return empty
    best = subset.groupby(["parent_gen_id", "evaluation_llm_model"])["score"].max().unstack()
    best.columns.name = None
    model_columns = [f"score__{m}" for m in best.columns]
    best.columns = model_columns
    best["models_covered"] = best[model_columns].notna().sum(axis=1)
    best["avg_score"] = best[model_columns].mean(axis=1, skipna=True)
    best["max_score"] = best[model_columns].max(axis=1, skipna=True)
    ranked = best.reset_index()[RANK_COLUMNS + sorted(model_columns)]
    ranked = ranked.sort_values([score_column, "parent_gen_id"], ascending=[False, True])
    if score_span is not None and score_span >= 0:
        ranked = ranked[ranked[score_column] >= ranked[score_column].max() - score_span]
    if top_n is not None and top_n >= 0:
        ranked = ranked.head(top_n)
    return ranked.reset_index(drop=True)


def _present_text(value):
    """Stripped text, or None for null, blank and the text "nan"."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    text = str(value).strip()
    return None if not text or text.lower() == "nan" else text


def top_essay_candidates(df, cohort_id, template, average_models, top_n=10, score_span=None,
                         max_only=False) -> pd.DataFrame:
    """§3.2: the editable candidate list of select_top_essays (``--max-only`` > ``--score-span``
    > ``--top-n``). Raises PipelineError with the original's message when nothing is selected."""
    if max_only:
        method, limit, span, n = "max_only", None, 0.0, None
    elif score_span is not None:
        method, limit, span, n = "score_span", score_span, score_span, None
    else:
        method, limit, span, n = "top_n", top_n, None, top_n
    ranked = rank_essays(df, template, evaluation_models=average_models, score_span=span, top_n=n)
    if ranked.empty:
        context = {"reason": "selection_empty", "template": template, "models": average_models}
        raise PipelineError(f"ERROR [DATA_MISSING]: {context}")
    ranked.insert(0, "selection_rank", ranked.index + 1)
    ranked.insert(1, "selected", True)
    ranked = ranked.rename(columns={"parent_gen_id": "essay_gen_id"})
    ranked["evaluation_template"] = template
    ranked["source_models"] = ", ".join(average_models)
    ranked["selection_method"] = method
    ranked["selection_limit"] = limit
    ranked["proposed_cohort_id"] = cohort_id.strip()
    return ranked


def select_top_essays(data_root, args) -> int:
    """``daydream select-top-essays`` (the original's scripts/select_top_essays.py)."""
    source = Path(args.aggregated_scores or Path(data_root) / "7_cross_experiment" / "aggregated_scores.csv")
    if not source.exists():
        raise PipelineError(f"aggregated_scores not found: {source}")
    try:
        df = pd.read_csv(source)
    except (ValueError, UnicodeDecodeError) as exc:   # pandas' parser and empty-data errors are ValueErrors
        raise PipelineError(f"{source}: not a readable CSV ({exc}); expected the original's "
                            f"aggregated_scores.csv") from None
    required = ["gen_id", "parent_gen_id", "evaluation_template", "evaluation_llm_model", "score"]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise PipelineError(f"{source}: missing column(s) {', '.join(missing)}; "
                            f"expected the original's aggregated_scores.csv columns")
    candidates = top_essay_candidates(df, args.cohort_id, args.template, args.average_models, args.top_n,
                                      args.score_span, args.max_only)
    output = Path(args.output or Path(data_root) / "curation" / "top_essay_candidates.csv")
    if not output.is_absolute():
        output = Path.cwd() / output
    if output.exists() and not args.overwrite:
        raise PipelineError(f"output already exists at {output}; rerun with --overwrite or set --output")
    write_text_atomic(output, to_csv_text(candidates))
    print(f"Wrote candidate list with {len(candidates)} essays to {output}")
    command = f"daydream build-cohort-from-list --cohort-id {args.cohort_id.strip()}"
    if args.output:
        command += f" --candidate-list {output}"
    print(f"Edit the 'selected' column as needed, then run `{command}` to make the cohort.")
    return 0
