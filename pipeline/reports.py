"""Cohort reports and cross-cohort comparison, from the replayed tables (pipeline.replay).

    >>> summary = write_cohort_report(paths, "demo")   # data/cohorts/demo/reports/summary.md
    >>> print(compare_cohorts(paths, ["demo", "demo-v2"]))

write_cohort_report writes, under ``paths.reports_dir(cohort_id)``: summary.md (read it first),
scores_long.csv, generation_scores_pivot.csv, evaluation_model_template_pivot.csv,
template_summary.csv, model_summary.csv, evaluator_agreement.csv, variance_by_axis.csv and
top_essays.csv; and copies the top essays' texts, with a README.md, to
``paths.results_dir(cohort_id)``. Same tables in, same bytes out: no timestamps, floats as %.2f.

The functions in between (generation_pivot, score_stats, variance_by_axis, ...) take and return
plain DataFrames, for notebooks.
"""
import csv
import io
import math
import numbers
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import sorted_csv
from .combos import read_mappings
from .errors import PipelineError, StoreError
from .fsio import write_if_changed
from .membership import read_membership
from .stages import STAGES
from .replay import PIVOT_INDEX, TABLES, load_tables, parse_table

TOP_N = 5
TEMPLATE_AXES = ("draft_template", "essay_template", "evaluation_template")
MODEL_AXES = ("draft_llm", "essay_llm", "evaluation_llm")
VARIANCE_AXES = ("combo_id", "draft_template", "draft_llm", "essay_template", "essay_llm",
                 "evaluation_template", "evaluation_llm")
COMPARE_AXES = TEMPLATE_AXES + MODEL_AXES
STATS_COLUMNS = ["axis", "level", "mean", "std", "n", "min", "max"]
LINEAGE_COLUMNS = ["draft_gen_id", "combo_id", "draft_template", "draft_llm", "essay_template",
                   "essay_llm"]
FLOAT_FORMAT = "%.2f"
MAX_MARKDOWN_ROWS = 50   # longer tables are cut in summary.md; the CSVs hold every row
MAX_FAILURES = 20
EXCERPT_CHARS = 300
# text columns of scores_long; a missing id becomes "" so it groups as a level of its own
# the tables cohort_data reads, each with the column of its gen_id; all but llm_calls are sorted by it
_COHORT_TABLES = {"generation_results": 0, "evaluation_results": 0, "scores_long": 0, "llm_calls": 2}
_SCORE_IDS = ("gen_id", "essay_gen_id", "draft_gen_id", "combo_id", "draft_template", "draft_llm",
              "essay_template", "essay_llm", "evaluation_template", "evaluation_llm")


@dataclass
class CohortData:
    """The replayed tables cut down to one cohort's members."""
    cohort_id: str
    members: list             # membership rows (dicts)
    generations: pd.DataFrame  # generation_results of the draft and essay members
    evaluations: pd.DataFrame  # evaluation_results of the evaluation members
    scores: pd.DataFrame       # scores_long of the evaluation members
    calls: pd.DataFrame        # llm_calls for any member

    def member_ids(self, stage=None) -> list:
        return [r["gen_id"] for r in self.members if stage is None or r["stage"] == stage]


# ----------------------------------------------------------------------------- loading

def read_tables(paths) -> dict:
    """load_tables with a message saying what to run when the tables are not there yet."""
    for name in TABLES:
        _table_path(paths, name)
    return load_tables(paths.tables_dir)


def _table_path(paths, name) -> Path:
    path = Path(paths.tables_dir) / f"{name}.csv"
    if not path.exists():
        raise StoreError(f"{path} is missing: run `daydream replay` first")
    return path


def read_cohort_tables(paths, members) -> dict:
    """The tables cohort_data reads, typed as load_tables types them, with just the rows of
    ``members`` (read_membership rows): on a long history a cohort's report parses its own rows,
    not everyone's (pipeline.sorted_csv finds them)."""
    ids = [str(r["gen_id"]).encode("utf-8") for r in members]
    tables = {}
    for name, column in _COHORT_TABLES.items():
        data = sorted_csv.mapped(_table_path(paths, name))
        rows = sorted_csv.select(data, ids, column, sorted_by_key=column == 0)
        tables[name] = parse_table(name, io.BytesIO(data if rows is None else rows))
    return tables


def cohort_members(paths, cohort_id) -> list:
    """The cohort's membership rows; PipelineError naming the cohort when it was never built."""
    path = paths.membership_csv(cohort_id)
    if not path.exists():
        known = sorted(p.parent.name for p in path.parent.parent.glob("*/membership.csv"))
        raise PipelineError(
            f"unknown cohort {cohort_id!r}: {path} does not exist"
            + (f" (known cohorts: {', '.join(known)})" if known else "")
            + f"; build it first with `luigi --module pipeline BuildCohort --cohort-id {cohort_id}`")
    return read_membership(path)


def cohort_data(tables, cohort_id, members) -> CohortData:
    """Rows of ``tables`` (load_tables) that belong to the members (read_membership rows)."""
    ids = {stage: [r["gen_id"] for r in members if r["stage"] == stage] for stage in STAGES}
    every = [r["gen_id"] for r in members]
    gens = tables["generation_results"]
    evals = tables["evaluation_results"]
    scores = tables["scores_long"]
    scores = scores[scores["gen_id"].isin(ids["evaluation"])].copy()
    for column in _SCORE_IDS:
        scores[column] = scores[column].fillna("").astype(str)
    calls = tables["llm_calls"]
    return CohortData(
        cohort_id=cohort_id,
        members=members,
        generations=gens[gens["gen_id"].isin(ids["draft"] + ids["essay"])].reset_index(drop=True),
        evaluations=evals[evals["gen_id"].isin(ids["evaluation"])].reset_index(drop=True),
        scores=scores.reset_index(drop=True),
        calls=calls[calls["gen_id"].isin(every)].reset_index(drop=True),
    )


# ----------------------------------------------------------------------------- tables

def generation_pivot(scores) -> pd.DataFrame:
    """One row per essay: mean score per ``<evaluation_template>__<evaluation_llm>`` column,
    then the mean and count of all its scores (the layout of the replayed pivot)."""
    index = list(PIVOT_INDEX)
    if scores.empty:
        return pd.DataFrame(columns=index + ["mean", "n"])
    s = scores.assign(column=scores["evaluation_template"] + "__" + scores["evaluation_llm"])
    cells = s.groupby(index + ["column"])["score"].mean().unstack("column")
    cells = cells[sorted(cells.columns)]
    cells.columns.name = None
    overall = s.groupby(index)["score"].agg(mean="mean", n="count")
    return cells.join(overall).reset_index()


def model_template_pivot(scores) -> pd.DataFrame:
    """Mean score per evaluation_template (rows) and evaluation_llm (columns)."""
    if scores.empty:
        return pd.DataFrame(columns=["evaluation_template"])
    cells = scores.groupby(["evaluation_template", "evaluation_llm"])["score"].mean()
    cells = cells.unstack("evaluation_llm")
    cells.columns.name = None
    return cells.reset_index()


def score_stats(scores, axes) -> pd.DataFrame:
    """For each axis and level: mean, std (sample), n, min and max of the score."""
    if scores.empty:
        return pd.DataFrame(columns=STATS_COLUMNS)
    frames = []
    for axis in axes:
        stats = scores.groupby(axis)["score"].agg(["mean", "std", "count", "min", "max"])
        stats = stats.rename(columns={"count": "n"}).rename_axis("level").reset_index()
        stats.insert(0, "axis", axis)
        frames.append(stats)
    return pd.concat(frames, ignore_index=True)[STATS_COLUMNS]


def evaluator_agreement(scores) -> pd.DataFrame:
    """How much the scores of one essay agree. Per essay (scope "essay") and per essay and
    evaluation template (scope "evaluation_template"): n, distinct evaluator models, mean, std,
    min, max, range, and model_mean_range - the spread of the evaluator models' means, which
    separates disagreement between models from replicate noise."""
    columns = ["essay_gen_id", "scope", "evaluation_template", "n", "n_evaluators", "mean", "std",
               "min", "max", "range", "model_mean_range"]
    if scores.empty:
        return pd.DataFrame(columns=columns)

    def spread(keys):
        groups = scores.groupby(keys)
        out = groups["score"].agg(n="count", mean="mean", std="std", min="min", max="max")
        out["n_evaluators"] = groups["evaluation_llm"].nunique()
        out["range"] = out["max"] - out["min"]
        model_means = scores.groupby(keys + ["evaluation_llm"])["score"].mean().groupby(keys)
        out["model_mean_range"] = model_means.max() - model_means.min()
        return out.reset_index()

    per_essay = spread(["essay_gen_id"]).assign(scope="essay", evaluation_template="")
    per_template = spread(["essay_gen_id", "evaluation_template"]).assign(scope="evaluation_template")
    out = pd.concat([per_essay, per_template], ignore_index=True)[columns]
    # "essay" sorts before "evaluation_template": each essay's overall row comes first
    return out.sort_values(["essay_gen_id", "scope", "evaluation_template"],
                           kind="mergesort").reset_index(drop=True)


def variance_by_axis(scores, axes=VARIANCE_AXES) -> pd.DataFrame:
    """Per axis, the share of the total score variance its group means explain
    (between-group / total sum of squares, eta squared). Axes that vary together (say
    combo_id and draft_template in an unbalanced design) explain overlapping variance, so
    shares add up to at most 1 only for a balanced factorial design."""
    columns = ["axis", "levels", "n", "share"]
    if scores.empty:
        return pd.DataFrame(columns=columns)
    y = scores["score"]
    grand = y.mean()
    total = math.fsum((y - grand) ** 2)
    rows = []
    for axis in axes:
        groups = scores.groupby(axis)["score"]
        between = math.fsum(groups.count() * (groups.mean() - grand) ** 2)
        share = min(between / total, 1.0) if total > 0 else math.nan
        rows.append((axis, groups.ngroups, len(y), share))
    return pd.DataFrame(rows, columns=columns)


def top_essays(scores, n=TOP_N, combos=None) -> pd.DataFrame:
    """The ``n`` essays with the highest mean score (ties: more scores, then essay id), with
    their lineage and, given ``combos`` ({combo_id: concept ids}), their concepts."""
    columns = (["rank", "essay_gen_id", "mean", "std", "n", "min", "max"] + LINEAGE_COLUMNS
               + ["concepts"])
    if scores.empty:
        return pd.DataFrame(columns=columns)
    groups = scores.groupby("essay_gen_id")
    ranked = groups["score"].agg(mean="mean", std="std", n="count", min="min", max="max")
    ranked = ranked.join(groups[LINEAGE_COLUMNS].first()).reset_index()
    ranked = ranked.sort_values(["mean", "n", "essay_gen_id"], ascending=[False, False, True],
                                kind="mergesort").head(n).reset_index(drop=True)
    ranked.insert(0, "rank", range(1, len(ranked) + 1))
    combos = combos or {}
    ranked["concepts"] = [";".join(combos.get(c, ())) for c in ranked["combo_id"]]
    return ranked[columns]


def stage_counts(data: CohortData) -> pd.DataFrame:
    """Per stage: members, done, failed, blocked (behind a failed parent) and pending (never run,
    or interrupted)."""
    status = dict(zip(data.generations["gen_id"], data.generations["status"]))
    status.update(zip(data.evaluations["gen_id"], data.evaluations["status"]))
    parent = {r["gen_id"]: r.get("parent_gen_id") for r in data.members}
    rows = []
    for stage in STAGES:  # parents first, so "blocked" passes down the chain
        states = []
        for gen_id in data.member_ids(stage):
            state = status.get(gen_id)
            if state not in ("done", "failed") and status.get(parent.get(gen_id)) in ("failed", "blocked"):
                state = status[gen_id] = "blocked"
            states.append(state)
        done, failed, blocked = states.count("done"), states.count("failed"), states.count("blocked")
        rows.append((stage, len(states), done, failed, blocked, len(states) - done - failed - blocked))
    return pd.DataFrame(rows, columns=["stage", "members", "done", "failed", "blocked", "pending"])


def llm_usage(data: CohortData) -> pd.DataFrame:
    """Per stage and in total: successful LLM calls, failed attempts, tokens and cost of the
    calls made for the cohort's members (a generation shared with another cohort counts in both)."""
    calls = data.calls
    rows = []
    for stage in STAGES + ("total",):
        c = calls if stage == "total" else calls[calls["stage"] == stage]
        ok = c[c["outcome"] == "ok"]
        rows.append((stage, len(ok), int((c["outcome"] == "failed").sum()),
                     int(ok["prompt_tokens"].fillna(0).sum()),
                     int(ok["completion_tokens"].fillna(0).sum()),
                     float(ok["cost"].fillna(0).sum())))
    return pd.DataFrame(rows, columns=["stage", "calls", "failed_attempts", "prompt_tokens",
                                       "completion_tokens", "cost"])


def failures(data: CohortData) -> pd.DataFrame:
    """Failed members: stage, gen_id, error; in stage order, then by id."""
    frames = [df.loc[df["status"] == "failed", ["gen_id", "error"]].assign(stage=stage)
              for stage, df in (("draft", data.generations[data.generations["stage"] == "draft"]),
                                ("essay", data.generations[data.generations["stage"] == "essay"]),
                                ("evaluation", data.evaluations))]
    out = pd.concat(frames, ignore_index=True)[["stage", "gen_id", "error"]]
    out["error"] = out["error"].fillna("")
    order = {stage: i for i, stage in enumerate(STAGES)}
    return out.sort_values(["stage", "gen_id"], key=lambda col: col.map(order) if col.name == "stage" else col,
                           kind="mergesort").reset_index(drop=True)


# ----------------------------------------------------------------------------- rendering

def to_csv(df) -> str:
    """CSV text with fixed float format: the same frame always gives the same bytes."""
    return df.to_csv(index=False, float_format=FLOAT_FORMAT, lineterminator="\n")


def markdown_table(df, float_format=FLOAT_FORMAT, missing="-") -> str:
    """``df`` as a Markdown table padded to align in a terminal; numbers right-aligned.

        >>> print(markdown_table(pd.DataFrame({"template": ["a"], "mean": [7.25]})))
        | template | mean |
        | -------- | ---: |
        | a        | 7.25 |
    """
    header = [_cell(c, float_format, missing) for c in df.columns]
    right = [pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])
             for c in df.columns]
    body = [[_cell(v, float_format, missing) for v in row] for row in df.itertuples(index=False)]
    widths = [max([3, len(h)] + [len(r[i]) for r in body]) for i, h in enumerate(header)]

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if r else c.ljust(w)
                                 for c, w, r in zip(cells, widths, right)) + " |"

    rule = "| " + " | ".join("-" * (w - 1) + ":" if r else "-" * w for w, r in zip(widths, right)) + " |"
    return "\n".join([line(header), rule] + [line(r) for r in body])


def _cell(value, float_format, missing) -> str:
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return missing
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float_format % value
    text = re.sub(r"\s+", " ", str(value))
    return text.replace("|", "\\|") if text else missing


def _cut(df, limit=MAX_MARKDOWN_ROWS, csv_name=None) -> str:
    """Markdown table of the first ``limit`` rows, saying so when rows were cut."""
    if df.empty:
        return "(no rows)"
    text = markdown_table(df.head(limit))
    if len(df) > limit:
        text += f"\n\nFirst {limit} of {len(df)} rows" + (f"; all in `{csv_name}`." if csv_name else ".")
    return text


def _excerpt(text, limit=EXCERPT_CHARS) -> str:
    flat = re.sub(r"\s+", " ", text).strip()
    return flat if len(flat) <= limit else flat[:limit].rstrip() + "…"


# ----------------------------------------------------------------------------- the report

def write_cohort_report(paths, cohort_id, tables=None) -> Path:
    """Write the cohort's report files (module docstring) and return the path of summary.md.
    ``tables``: read_cohort_tables (or read_tables), when the caller has them already.

    Works for a cohort without scores or without an evaluation stage: summary.md says so and
    the score tables hold just their header."""
    members = cohort_members(paths, cohort_id)
    data = cohort_data(read_cohort_tables(paths, members) if tables is None else tables, cohort_id, members)
    scores = data.scores
    combos = {cid: info["concepts"] for cid, info in read_mappings(paths.combo_mappings_csv).items()}
    top = top_essays(scores, TOP_N, combos)
    texts = _essay_texts(paths, top["essay_gen_id"])
    top["text_file"] = [f"{e}.txt" if texts.get(e) is not None else "" for e in top["essay_gen_id"]]

    tables = {
        "scores_long": scores,
        "generation_scores_pivot": generation_pivot(scores),
        "evaluation_model_template_pivot": model_template_pivot(scores),
        "template_summary": score_stats(scores, TEMPLATE_AXES),
        "model_summary": score_stats(scores, MODEL_AXES),
        "evaluator_agreement": evaluator_agreement(scores),
        "variance_by_axis": variance_by_axis(scores),
        "top_essays": top,
    }
    reports = paths.reports_dir(cohort_id)
    for name, df in tables.items():
        write_if_changed(reports / f"{name}.csv", to_csv(df))

    _write_results(paths, data, top, texts, _concept_names(paths))
    summary = reports / "summary.md"
    write_if_changed(summary, render_summary(data, tables, texts))
    return summary


def _essay_texts(paths, essay_ids) -> dict:
    """essay_gen_id -> its parsed.txt text, or None when the essay has no parsed output."""
    texts = {}
    for essay_id in essay_ids:
        path = paths.gen_dir("essay", essay_id) / "parsed.txt"
        texts[essay_id] = path.read_text(encoding="utf-8") if path.exists() else None
    return texts


def _concept_names(paths) -> dict:
    """concept_id -> name from the catalog's concepts_metadata.csv (empty if unreadable: the
    README then shows ids only)."""
    try:
        with open(paths.concepts_metadata_csv, encoding="utf-8-sig", newline="") as fh:
            return {row["concept_id"]: row.get("name") or "" for row in csv.DictReader(fh)
                    if row.get("concept_id")}
    except (OSError, KeyError, UnicodeDecodeError):
        return {}


def _write_results(paths, data, top, texts, names):
    """Copy the top essays' texts to results_dir with a README.md ranking them."""
    results = paths.results_dir(data.cohort_id)
    keep = set(top["essay_gen_id"])
    if results.is_dir():
        # essays that dropped out of the top since the last report; other files are left alone
        for essay_id in set(data.member_ids("essay")) - keep:
            (results / f"{essay_id}.txt").unlink(missing_ok=True)
    for essay_id in keep:
        if texts.get(essay_id) is not None:
            write_if_changed(results / f"{essay_id}.txt", texts[essay_id])

    lines = [f"# Top essays of cohort {data.cohort_id}", ""]
    if top.empty:
        lines.append("No essay of this cohort has an evaluation score yet.")
    else:
        lines += [f"The {len(top)} essays with the highest mean evaluation score (over every "
                  "evaluation template, evaluator model and replicate). Each `<essay id>.txt` is "
                  "the essay's parsed text; the scores are in "
                  f"`data/cohorts/{data.cohort_id}/reports/top_essays.csv`."]
    for row in top.itertuples(index=False):
        lines += ["", f"## #{row.rank}: {row.essay_gen_id} (mean score {row.mean:.2f}, n={row.n})", "",
                  f"- File: `{row.text_file}`" if row.text_file
                  else "- File: none (the essay has no parsed.txt)",
                  f"- Draft: `{row.draft_gen_id}`, template `{row.draft_template}`, model `{row.draft_llm}`",
                  f"- Essay template: `{row.essay_template}`, model `{row.essay_llm}`",
                  f"- Combo: `{row.combo_id}`"]
        concepts = [c for c in row.concepts.split(";") if c]
        if concepts:
            lines += ["", f"Concepts ({len(concepts)}):"]
            lines += [f"{i}. {names[c]} (`{c}`)" if names.get(c) else f"{i}. `{c}`"
                      for i, c in enumerate(concepts, 1)]
    write_if_changed(results / "README.md", "\n".join(lines) + "\n")


def render_summary(data: CohortData, tables: dict, texts: dict) -> str:
    """summary.md: counts, LLM usage, failures, top essays and the score tables."""
    cid = data.cohort_id
    counts = stage_counts(data)
    usage = llm_usage(data)
    usage["cost"] = usage["cost"].map(lambda v: f"{v:.4f}")  # calls often cost fractions of a cent
    failed = failures(data)
    out = [f"# Cohort {cid}", "",
           f"Generated from the replayed event log. Tables: `data/cohorts/{cid}/reports/*.csv`; "
           f"top essays: `data/results/{cid}/`.", "",
           "## Generations", "", markdown_table(counts), "",
           "## LLM usage", "", markdown_table(usage), "",
           "Calls made for this cohort's generations (a generation shared with another cohort "
           "counts in both); reused and copied generations made none.", "",
           f"## Failures ({len(failed)})", ""]
    if failed.empty:
        out.append("None.")
    else:
        out += [f"- {r.stage} `{r.gen_id}`: {_cell(r.error, FLOAT_FORMAT, 'no error recorded')}"
                for r in failed.head(MAX_FAILURES).itertuples(index=False)]
        if len(failed) > MAX_FAILURES:
            out.append(f"- ... and {len(failed) - MAX_FAILURES} more (`daydream status {cid}`)")
    out += ["", "## Scores", ""]

    scores = data.scores
    n_evals = len(data.member_ids("evaluation"))
    if n_evals == 0:
        out.append("This cohort has no evaluation stage, so there are no scores to report.")
        return "\n".join(out) + "\n"
    if scores.empty:
        out.append(f"No scores yet: none of the {n_evals} evaluations has a parsed score.")
        return "\n".join(out) + "\n"
    s = scores["score"]
    out += [f"{len(s)} scores from {n_evals} evaluations of "
            f"{scores['essay_gen_id'].nunique()} essays: mean {s.mean():.2f}, "
            f"min {s.min():.2f}, max {s.max():.2f}.", ""]

    top = tables["top_essays"]
    out += [f"## Top {len(top)} essays", "",
            markdown_table(top[["rank", "essay_gen_id", "mean", "n", "draft_template", "essay_template",
                                "draft_llm", "essay_llm", "combo_id"]])]
    for row in top.itertuples(index=False):
        text = texts.get(row.essay_gen_id)
        out += ["", f"### {row.rank}. {row.essay_gen_id} ({row.mean:.2f})", ""]
        out.append(f"> {_excerpt(text)}" if text is not None else "(no parsed.txt for this essay)")

    out += ["", "## Mean score by evaluation template and evaluator model", "",
            _cut(tables["evaluation_model_template_pivot"]), "",
            "## Mean score per essay and evaluation (template__model)", "",
            _cut(tables["generation_scores_pivot"], csv_name="generation_scores_pivot.csv"), "",
            "## Scores by template", "", _cut(tables["template_summary"], csv_name="template_summary.csv"), "",
            "## Scores by model", "", _cut(tables["model_summary"], csv_name="model_summary.csv"), "",
            "## Evaluator agreement per essay", "",
            _cut(tables["evaluator_agreement"].query("scope == 'essay'").drop(
                columns=["scope", "evaluation_template"]), csv_name="evaluator_agreement.csv"), "",
            "Per evaluation template: `evaluator_agreement.csv`. model_mean_range is the spread "
            "between the evaluator models' means.", "",
            "## Share of score variance by axis", "", _cut(tables["variance_by_axis"]), "",
            "Between-group over total sum of squares per axis. Axes that vary together explain "
            "overlapping variance, so the shares add up to at most 1 only in a balanced design."]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- comparison

def _number(value):
    """A float for JSON: None for NaN (a level with no score in a cohort)."""
    return None if value is None or math.isnan(value) else float(value)


def comparison(paths, cohort_ids) -> dict:
    """Cohorts compared, as plain data (``daydream compare --json``): each cohort's overall mean
    score and n, then per template and model axis the levels scored in every cohort with, per
    cohort, mean, n and the difference of its mean to the first cohort's (``diff``, None for the first).

        {"cohorts": [{"cohort_id": "A", "mean": 6.25, "n": 8}, ...],
         "axes": {"draft_template": [{"level": "t1", "cohorts": {"A": {"mean": .., "n": .., "diff": None}}}]}}
    """
    ids = list(dict.fromkeys(cohort_ids))
    if not ids:
        raise PipelineError("compare needs at least one cohort id")
    members = {c: cohort_members(paths, c) for c in ids}
    tables = read_tables(paths)
    scores = {c: cohort_data(tables, c, members[c]).scores for c in ids}
    first = ids[0]
    out = {"cohorts": [{"cohort_id": c, "mean": _number(scores[c]["score"].mean()) if len(scores[c]) else None,
                        "n": int(len(scores[c]))} for c in ids],
           "axes": {}}
    for axis in COMPARE_AXES:
        levels = sorted(set.intersection(*(set(scores[c][axis]) for c in ids)) - {""})
        stats = {c: scores[c].groupby(axis)["score"].agg(["mean", "count"]) for c in ids}
        out["axes"][axis] = [
            {"level": level,
             "cohorts": {c: {"mean": _number(stats[c].at[level, "mean"]), "n": int(stats[c].at[level, "count"]),
                             "diff": None if c == first else _number(stats[c].at[level, "mean"]
                                                                     - stats[first].at[level, "mean"])}
                         for c in ids}}
            for level in levels]
    return out


def compare_cohorts(paths, cohort_ids) -> str:
    """Printable comparison of cohorts (see ``comparison``): each one's overall mean score, then per
    template and model axis a table of the levels scored in every cohort.

        >>> print(compare_cohorts(paths, ["baseline", "new-prompts"]))
    """
    data = comparison(paths, cohort_ids)
    ids = [c["cohort_id"] for c in data["cohorts"]]
    first = ids[0]
    out = [f"Cohorts compared: {', '.join(ids)} (mean evaluation score, n = number of scores)", ""]
    for c in data["cohorts"]:
        out.append(f"{c['cohort_id']}: mean {c['mean']:.2f}, n={c['n']}" if c["n"]
                   else f"{c['cohort_id']}: no scores yet, n=0")
    for axis, rows in data["axes"].items():
        out += ["", f"## {axis}", ""]
        if not rows:
            out.append(f"(no {axis} has scores in every cohort)")
            continue
        table = pd.DataFrame({axis: [r["level"] for r in rows]})
        for c in ids:
            table[f"{c} mean"] = [r["cohorts"][c]["mean"] for r in rows]
            table[f"{c} n"] = [r["cohorts"][c]["n"] for r in rows]
        for c in ids[1:]:
            table[f"{c} - {first}"] = [r["cohorts"][c]["diff"] for r in rows]
        out.append(markdown_table(table))
    return "\n".join(out)
