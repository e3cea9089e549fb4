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
from hashlib import blake2b
from operator import itemgetter
from pathlib import Path

import pandas as pd

from . import csv_lines
from .errors import PipelineError, StoreError
from .fold_state import read_checked, write_checked
from .fsio import remove_stale_tmp, write_if_changed, write_text_atomic
from .membership import read_membership
from .paths import Paths

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
ROW_LINES = "_cross_experiment_rows.marshal"   # in data/tables, beside the fold state: see _row_lines
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
    data = path.read_bytes()
    if gen_ids is not None:
        data = csv_lines.select(data, [str(g).encode("utf-8") for g in gen_ids]) or data
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


def scores_by_template_model(scores, essay_origins, allowlist=None) -> tuple:
    """§2.5 evaluation_scores_by_template_model.csv and the lines the original prints.

    One row per essay task (combo, draft template, essay model, essay template), with the *first*
    valid score per ``<template>__<model>`` column. ``essay_origins``: essay gen_id -> the cohort
    that created it. ``allowlist``: (templates, models) in --cohort-id mode. Raises PipelineError
    where the original's script stops with an error."""
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
    keys = sorted(df["key"].unique())
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
    return table.reindex(columns=columns), notes


# ----------------------------------------------------------------------------- writing

def write_table(path, df):
    """Write ``df`` like the original (CSV, no index) and return the text. An empty table writes
    no file (None), as in the original; unlike the original, a file left by an earlier run is
    removed, so the files always reflect the current log."""
    return _write_csv_text(path, None if df is None or df.empty else to_csv_text(df))


def _write_csv_text(path, text):
    """write_table for CSV text already rendered (None: an empty table)."""
    path = Path(path)
    remove_stale_tmp(path.parent)   # left by a writer killed mid-write
    if text is None:
        path.unlink(missing_ok=True)
        return None
    write_if_changed(path, text)
    return text


def _row_lines(header, rows, data_root, tables_dir):
    """For each row of evaluation_results (_evaluation_table), its (aggregated_scores, filtered_evaluation_results)
    CSV line, or None when a line cannot be told apart (a cell holds a line break).

    pandas writes every cell on its own (floats as repr, missing as empty), so a row's line does not
    depend on the other rows: lines are rendered once and kept in tables_dir/ROW_LINES, keyed by the
    a digest of the row's values, and a run with a long history renders only its new rows."""
    path = Path(tables_dir) / ROW_LINES
    root = str(Path(data_root).resolve())   # the lines hold absolute paths under it
    try:
        saved = read_checked(path) or {}
    except (ValueError, EOFError, TypeError):   # another Python's marshal
        saved = {}
    cache = saved.get("rows", {}) if saved.get("data_root") == root else {}
    keys = [blake2b("\x1f".join(row).encode(), digest_size=16).digest() for row in rows]
    new = {key: row for key, row in zip(keys, rows) if key not in cache}
    if new:
        rows = normalized_rows(_as_dicts(header, new.values()), data_root)
        rendered = [_lines(normalized_frame(rows, columns), len(rows))
                    for columns in (AGGREGATED_COLUMNS, NORMALIZED_COLUMNS)]
        if None in rendered:
            return None
        cache.update(zip(new, zip(*rendered)))
    kept = {key: cache[key] for key in keys}
    if new or len(kept) != len(cache):
        write_checked(path, {"data_root": root, "rows": kept})
    return [kept[key] for key in keys]


def _lines(df, n):
    """The n row lines (each ending in a newline) of ``df`` as CSV, or None if they are not n lines."""
    lines = to_csv_text(df).split("\n")[1:-1]
    return [line + "\n" for line in lines] if len(lines) == n else None


def _header(columns) -> str:
    return ",".join(columns) + "\n"


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


def write_cross_experiment_tables(data_root, tables_dir) -> None:
    """data/7_cross_experiment/{aggregated_scores, filtered_evaluation_results,
    evaluation_scores_by_template_model}.csv over every evaluation in the log, rows sorted by
    gen_id (the original lists aggregated_scores.csv in file-system order, which no one can
    reproduce; filtered_evaluation_results.csv is sorted there too)."""
    header, rows = _evaluation_table(tables_dir)
    rows.sort(key=itemgetter(0))   # by gen_id
    out = Path(data_root) / "7_cross_experiment"
    lines = _row_lines(header, rows, data_root, tables_dir) if rows else None
    if lines is None:
        normalized = normalized_rows(_as_dicts(header, rows), data_root)
        text = write_table(out / "aggregated_scores.csv", normalized_frame(normalized, AGGREGATED_COLUMNS))
        write_table(out / "filtered_evaluation_results.csv", normalized_frame(normalized))
    else:
        text = _write_csv_text(out / "aggregated_scores.csv",
                               _header(AGGREGATED_COLUMNS) + "".join(agg for agg, _ in lines))
        _write_csv_text(out / "filtered_evaluation_results.csv",
                        _header(NORMALIZED_COLUMNS) + "".join(filtered for _, filtered in lines))
    scores = read_back(text) if text else None
    _write_pivot(out / "evaluation_scores_by_template_model.csv", scores, _essay_origins(header, rows))


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
