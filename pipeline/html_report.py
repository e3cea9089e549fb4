"""Self-contained HTML reports: one per cohort, and one comparing cohorts.

    >>> write_cohort_html(paths, "demo")             # data/cohorts/demo/reports/index.html
    >>> write_compare_html(paths, ["a", "b"], out)   # daydream compare a b --html out

Built from the replayed tables (reports.read_cohort_tables / cohort_data) in three steps:
``cohort_page``/``compare_page`` turn tables and texts into plain data (dicts and lists); the
``*_svg`` functions draw that data with matplotlib as inline SVG; ``render_*_html`` fills a
Jinja2 template from report_templates/ (autoescaped: essays and judge answers are untrusted
model output). The page loads nothing: no scripts, fonts or images from
anywhere, so it opens offline and the same tables always give the same bytes.
"""
import io
import math
import re
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup

from .combos import read_mappings
from .fsio import write_if_changed
from .reports import (COMPARE_AXES, MAX_FAILURES, _concept_names, cohort_data, cohort_members,
                      failures, llm_usage, read_cohort_tables, read_tables, stage_counts)

Z95 = 1.96
DIST_AXES = ("essay_template", "essay_llm", "draft_template", "draft_llm", "evaluation_template",
             "evaluation_llm")
# (rows, columns) of the mean-score heatmaps: what writes the essays, then who judges them
HEATMAPS = (("essay_template", "essay_llm"), ("evaluation_template", "evaluation_llm"))
MAX_SCATTERS = 6   # judge pairs drawn as scatter plots; the matrix shows every pair


# ----------------------------------------------------------------------------- plain data

def interval(values) -> dict:
    """mean, sample sd, n and the 95% interval half-width 1.96*sd/sqrt(n) (None when n < 2)."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0, "ci": None}
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n, "ci": Z95 * sd / math.sqrt(n) if sd is not None else None}


def distributions(scores, axes=DIST_AXES) -> list:
    """Per axis: its levels, each with its scores and interval(), and whether to plot it (the
    first axis always, the others when they have two levels or more); axes with no level skipped."""
    out = []
    for axis in axes:
        levels = [{"level": level, "scores": sorted(group["score"].tolist()), **interval(group["score"])}
                  for level, group in scores.groupby(axis, sort=True) if level != ""]
        if levels:
            out.append({"axis": axis, "levels": levels, "plot": not out or len(levels) > 1})
    return out


def heatmap(scores, rows_axis, cols_axis) -> dict:
    """Mean score with its interval per (row level, column level); cells missing from the
    design are absent from ``cells``."""
    cells = {(r, c): interval(g["score"]) for (r, c), g in scores.groupby([rows_axis, cols_axis])}
    return {"rows_axis": rows_axis, "cols_axis": cols_axis,
            "rows": sorted({r for r, _ in cells}), "cols": sorted({c for _, c in cells}),
            "cells": [{"row": r, "col": c, **cell} for (r, c), cell in sorted(cells.items())]}


def judge_agreement(scores) -> dict:
    """Judges (evaluation template / evaluator model) compared on the essays both scored, each
    judge's replicates averaged per essay: Pearson r and the shared essay count per pair, and
    the points of each pair for scatter plots."""
    judged = scores.assign(judge=scores["evaluation_template"] + " / " + scores["evaluation_llm"])
    table = judged.groupby(["essay_gen_id", "judge"])["score"].mean().unstack("judge")
    judges = sorted(table.columns)
    pairs, matrix = [], [[None] * len(judges) for _ in judges]
    for i, a in enumerate(judges):
        n = int(table[a].count())
        matrix[i][i] = {"r": 1.0 if n > 1 else None, "n": n}
        for j in range(i + 1, len(judges)):
            b = judges[j]
            both = table[[a, b]].dropna()
            x, y = both[a], both[b]
            r = float(x.corr(y)) if len(both) > 2 and x.std() > 0 and y.std() > 0 else None
            matrix[i][j] = matrix[j][i] = {"r": r, "n": len(both)}
            if len(both):
                pairs.append({"x": a, "y": b, "r": r, "n": len(both),
                              "points": list(zip(x.tolist(), y.tolist()))})
    return {"judges": judges, "matrix": matrix, "pairs": pairs}


def _records(df) -> list:
    """DataFrame rows as dicts with None for missing values (Jinja tests them with `is none`)."""
    return [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in row.items()}
            for row in df.to_dict("records")]


def _by_id(df) -> dict:
    return {row["gen_id"]: row for row in _records(df)}


def essay_entries(data, texts, combos, names) -> list:
    """The essay browser: each essay member with its draft, concepts, and every evaluation
    member's score, status and raw answer; best mean score first, unscored essays last.

    ``texts``: (stage, gen_id) -> text shown (draft/essay parsed.txt, evaluation raw.txt) or None."""
    status = _by_id(data.generations)
    evals = _by_id(data.evaluations)
    members = {r["gen_id"]: r for r in data.members}
    children = {}
    for row in data.members:
        if row["stage"] == "evaluation":
            children.setdefault(row["parent_gen_id"], []).append(row)
    entries = []
    for gen_id in data.member_ids("essay"):
        m = members[gen_id]
        draft = members.get(m["parent_gen_id"]) or {"gen_id": m["parent_gen_id"]}
        judged = []
        for v in sorted(children.get(gen_id, []),
                        key=lambda r: (r["template_id"], r["llm_model_id"], int(r["replicate"]), r["gen_id"])):
            result = evals.get(v["gen_id"], {})
            judged.append({"gen_id": v["gen_id"], "template": v["template_id"], "llm": v["llm_model_id"],
                           "replicate": v["replicate"], "score": result.get("score"),
                           "status": result.get("status") or "pending", "error": result.get("error"),
                           "raw": texts.get(("evaluation", v["gen_id"]))})
        scored = [e["score"] for e in judged if e["score"] is not None]
        entries.append({
            "gen_id": gen_id, "template": m["template_id"], "llm": m["llm_model_id"],
            "replicate": m["replicate"], "combo_id": m["combo_id"],
            "status": status.get(gen_id, {}).get("status") or "pending",
            "error": status.get(gen_id, {}).get("error"),
            "text": texts.get(("essay", gen_id)),
            "draft": {"gen_id": draft["gen_id"], "template": draft.get("template_id"),
                      "llm": draft.get("llm_model_id"),
                      "status": status.get(draft["gen_id"], {}).get("status"),  # None: not a member
                      "text": texts.get(("draft", draft["gen_id"]))},
            "concepts": [{"id": c, "name": names.get(c, "")} for c in combos.get(m["combo_id"], ())],
            "evaluations": judged, **interval(scored)})
    return sorted(entries, key=lambda e: (e["mean"] is None, -(e["mean"] or 0), e["gen_id"]))


def cohort_page(data, texts, combos, names) -> dict:
    """Everything the cohort page shows, as plain data (see render_cohort_html)."""
    scores = data.scores
    return {
        "cohort_id": data.cohort_id,
        "counts": _records(stage_counts(data)),
        "usage": _records(llm_usage(data)),
        "failures": _records(failures(data)),
        "max_failures": MAX_FAILURES,
        "n_evaluations": len(data.member_ids("evaluation")),
        "n_essays_scored": int(scores["essay_gen_id"].nunique()),
        "overall": interval(scores["score"]),
        "distributions": distributions(scores),
        "heatmaps": [heatmap(scores, r, c) for r, c in HEATMAPS] if len(scores) else [],
        "agreement": judge_agreement(scores) if len(scores) else None,
        "essays": essay_entries(data, texts, combos, names),
    }


def compare_page(datas) -> dict:
    """The comparison page's data for CohortData of several cohorts (in the given order)."""
    cohorts = [{"cohort_id": d.cohort_id, "counts": _records(stage_counts(d)),
                "usage": _records(llm_usage(d)), **interval(d.scores["score"])} for d in datas]
    axes = []
    for axis in COMPARE_AXES:
        per = {d.cohort_id: {x["level"]: x for found in distributions(d.scores, [axis])
                             for x in found["levels"]} for d in datas}
        levels = sorted({level for stats in per.values() for level in stats})
        if levels:
            axes.append({"axis": axis, "levels": levels, "cohorts": [
                {"cohort_id": d.cohort_id, "stats": [per[d.cohort_id].get(level) for level in levels]}
                for d in datas]})
    return {"cohorts": cohorts, "axes": axes,
            "distribution": [{"level": d.cohort_id, "scores": sorted(d.scores["score"].tolist()),
                              **interval(d.scores["score"])} for d in datas if len(d.scores)]}


# ----------------------------------------------------------------------------- plots

def _figure(width, height):
    """A matplotlib Figure made without pyplot, so no GUI backend is ever chosen (nor a
    notebook's changed). Imported here, not at module level: matplotlib costs about a
    second to import and only reports need it."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _svg(fig) -> str:
    """The figure as an <svg> element to inline in HTML: text stays text, ids are stable, and
    no XML prolog, DOCTYPE, metadata or namespace URL is left (HTML knows SVG's namespace)."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "daydream"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None,
                                                  "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    return re.sub(r'\s+xmlns(:xlink)?="[^"]*"', "", text, count=2)


def _label(level, limit=40) -> str:
    return level if len(level) <= limit else level[:limit - 1] + "…"


def distribution_svg(axis) -> str:
    """Box plot per level with every score as a dot (jittered, fixed seed)."""
    import numpy as np

    levels = axis["levels"]
    fig = _figure(7, 0.9 + 0.45 * len(levels))
    ax = fig.add_subplot()
    data = [level["scores"] for level in levels]
    ax.boxplot(data, orientation="horizontal", widths=0.5, showfliers=False, showmeans=True)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        ax.scatter(values, i + rng.uniform(-0.18, 0.18, len(values)), s=9, alpha=0.45, color="#1f77b4")
    ax.set_yticks(range(1, len(levels) + 1), [_label(x["level"]) for x in levels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score")
    ax.set_title(f"scores by {axis['axis']}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


def _cell_text(cell) -> str:
    ci = f"±{cell['ci']:.2f}" if cell["ci"] is not None else "±–"
    return f"{cell['mean']:.2f}\n{ci}\nn={cell['n']}"


def _grid(ax, grid, **colours):
    """A heatmap of vector cells centred on integer positions, first row at the top (imshow
    would embed a PNG in the SVG)."""
    rows, cols = grid.shape
    image = ax.pcolormesh([c - 0.5 for c in range(cols + 1)], [r - 0.5 for r in range(rows + 1)],
                          grid, **colours)
    ax.set_ylim(rows - 0.5, -0.5)
    return image


def _colorbar(fig, image, ax, label):
    # vector, not the PNG matplotlib embeds for smooth colorbars
    fig.colorbar(image, ax=ax, label=label, shrink=0.8).solids.set_rasterized(False)


def heatmap_svg(hm) -> str:
    """Mean score per cell, coloured, with ±95% half-width and n written in the cell."""
    import numpy as np

    rows, cols = hm["rows"], hm["cols"]
    grid = np.full((len(rows), len(cols)), np.nan)
    for cell in hm["cells"]:
        grid[rows.index(cell["row"]), cols.index(cell["col"])] = cell["mean"]
    fig = _figure(1.8 + 1.3 * len(cols), 1.2 + 0.75 * len(rows))
    ax = fig.add_subplot()
    image = _grid(ax, grid, cmap="viridis", vmin=0, vmax=max(9, np.nanmax(grid)))
    for cell in hm["cells"]:
        ax.text(cols.index(cell["col"]), rows.index(cell["row"]), _cell_text(cell), ha="center",
                va="center", fontsize=7, color="white" if cell["mean"] < 6 else "black")
    ax.set_xticks(range(len(cols)), [_label(c, 24) for c in cols], fontsize=8, rotation=20, ha="right")
    ax.set_yticks(range(len(rows)), [_label(r) for r in rows], fontsize=8)
    ax.set_xlabel(hm["cols_axis"])
    ax.set_ylabel(hm["rows_axis"])
    _colorbar(fig, image, ax, "mean score")
    return _svg(fig)


def agreement_svgs(agreement) -> dict:
    """The judges' correlation matrix and a scatter plot for each of the first judge pairs
    (dot area grows with the number of essays on the same point)."""
    import numpy as np
    from collections import Counter

    judges = agreement["judges"]
    out = {"matrix": None, "scatter": None}
    if len(judges) < 2:
        return out
    grid = np.array([[np.nan if c["r"] is None else c["r"] for c in row] for row in agreement["matrix"]])
    fig = _figure(2.2 + 1.1 * len(judges), 1.6 + 0.6 * len(judges))
    ax = fig.add_subplot()
    image = _grid(ax, grid, cmap="RdBu", vmin=-1, vmax=1)
    for i, row in enumerate(agreement["matrix"]):
        for j, c in enumerate(row):
            r = "–" if c["r"] is None else f"{c['r']:.2f}"
            dark = c["r"] is not None and abs(c["r"]) > 0.6
            ax.text(j, i, f"r={r}\nn={c['n']}", ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    labels = [_label(j, 30) for j in judges]
    ax.set_xticks(range(len(judges)), labels, fontsize=7, rotation=30, ha="right")
    ax.set_yticks(range(len(judges)), labels, fontsize=7)
    _colorbar(fig, image, ax, "Pearson r")
    out["matrix"] = _svg(fig)

    pairs = agreement["pairs"][:MAX_SCATTERS]
    if pairs:
        fig = _figure(3.2 * min(3, len(pairs)), 3.1 * math.ceil(len(pairs) / 3))
        for k, pair in enumerate(pairs, start=1):
            ax = fig.add_subplot(math.ceil(len(pairs) / 3), min(3, len(pairs)), k)
            counts = Counter(pair["points"])
            xs, ys = zip(*counts)
            ax.scatter(xs, ys, s=[12 + 10 * counts[p] for p in counts], alpha=0.6)
            low = min(xs + ys + (0,))
            high = max(xs + ys + (9,))
            ax.plot([low, high], [low, high], color="grey", lw=0.8, ls="--")
            ax.set_xlabel(_label(pair["x"], 30), fontsize=7)
            ax.set_ylabel(_label(pair["y"], 30), fontsize=7)
            r = "–" if pair["r"] is None else f"{pair['r']:.2f}"
            ax.set_title(f"r={r}, n={pair['n']}", fontsize=8)
        out["scatter"] = _svg(fig)
    return out


def usage_svg(usage, title="") -> str:
    """Tokens (prompt and completion, stacked) and cost per stage."""
    rows = [u for u in usage if u["stage"] != "total"]
    stages = [u["stage"] for u in rows]
    fig = _figure(7, 2.4)
    tokens, cost = fig.subplots(1, 2)
    prompt = [u["prompt_tokens"] for u in rows]
    tokens.bar(stages, prompt, label="prompt")
    tokens.bar(stages, [u["completion_tokens"] for u in rows], bottom=prompt, label="completion")
    tokens.set_title(f"{title}tokens by stage", fontsize=9)
    tokens.legend(fontsize=7)
    cost.bar(stages, [u["cost"] for u in rows], color="#2ca02c")
    cost.set_title(f"{title}cost by stage", fontsize=9)
    for ax in (tokens, cost):
        ax.tick_params(labelsize=8)
    return _svg(fig)


def compare_axis_svg(axis) -> str:
    """Mean ± 95% half-width per level, one marker colour per cohort."""
    levels = axis["levels"]
    fig = _figure(7, 1.0 + 0.45 * len(levels))
    ax = fig.add_subplot()
    k = len(axis["cohorts"])
    for c, cohort in enumerate(axis["cohorts"]):
        offset = (c - (k - 1) / 2) * 0.5 / max(k, 1)
        pts = [(i + offset, s["mean"], s["ci"] or 0) for i, s in enumerate(cohort["stats"]) if s]
        if pts:
            ys, xs, errs = zip(*pts)
            ax.errorbar(xs, ys, xerr=errs, fmt="o", capsize=3, label=cohort["cohort_id"])
    ax.set_yticks(range(len(levels)), [_label(x) for x in levels], fontsize=8)
    ax.set_ylim(len(levels) - 0.5, -0.5)
    ax.set_xlabel("mean score ± 95% interval")
    ax.set_title(axis["axis"], fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return _svg(fig)


# ----------------------------------------------------------------------------- HTML

def _environment():
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipeline", "report_templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda v, fmt="%.2f": "–" if v is None else fmt % v
    env.filters["svg"] = lambda text: Markup(text or "")  # our own matplotlib output, not model text
    return env


def render_cohort_html(page) -> str:
    """The cohort page (report_templates/cohort.html) for cohort_page() data."""
    plots = {}
    if page["overall"]["n"]:
        plots = {"distributions": [distribution_svg(a) if a["plot"] else None for a in page["distributions"]],
                 "heatmaps": [heatmap_svg(h) for h in page["heatmaps"]],
                 "agreement": agreement_svgs(page["agreement"])}
    plots["usage"] = usage_svg(page["usage"]) if page["usage"][-1]["calls"] else None
    return _environment().get_template("cohort.html").render(page=page, plots=plots)


def render_compare_html(page) -> str:
    """The comparison page (report_templates/compare.html) for compare_page() data."""
    plots = {"distribution": distribution_svg({"axis": "cohort", "levels": page["distribution"]})
             if page["distribution"] else None,
             "axes": [compare_axis_svg(a) for a in page["axes"]],
             "usage": [usage_svg(c["usage"], f"{c['cohort_id']}: ") if c["usage"][-1]["calls"] else None
                       for c in page["cohorts"]]}
    return _environment().get_template("compare.html").render(page=page, plots=plots)


# ----------------------------------------------------------------------------- files

def read_texts(paths, data) -> dict:
    """(stage, gen_id) -> the text the essay browser shows: parsed.txt of drafts and essays,
    raw.txt (the judge's whole answer) of evaluations; None when the file is not there."""
    # an essay's draft may not be a member (a cohort curated from essay ids)
    drafts = dict.fromkeys(data.member_ids("draft") + [r["parent_gen_id"] for r in data.members
                                                        if r["stage"] == "essay" and r["parent_gen_id"]])
    wanted = [("draft", gen_id, "parsed.txt") for gen_id in drafts]
    wanted += [("essay", gen_id, "parsed.txt") for gen_id in data.member_ids("essay")]
    wanted += [("evaluation", gen_id, "raw.txt") for gen_id in data.member_ids("evaluation")]
    texts = {}
    for stage, gen_id, name in wanted:
        path = paths.gen_dir(stage, gen_id) / name
        texts[(stage, gen_id)] = path.read_text(encoding="utf-8", errors="replace") if path.exists() else None
    return texts


def write_cohort_html(paths, cohort_id, tables=None) -> Path:
    """Write data/cohorts/<id>/reports/index.html (atomically; untouched when unchanged).
    ``tables``: read_cohort_tables (or read_tables), when the caller has them already."""
    members = cohort_members(paths, cohort_id)
    data = cohort_data(read_cohort_tables(paths, members) if tables is None else tables, cohort_id, members)
    combos = {cid: info["concepts"] for cid, info in read_mappings(paths.combo_mappings_csv).items()}
    page = cohort_page(data, read_texts(paths, data), combos, _concept_names(paths))
    out = paths.reports_dir(cohort_id) / "index.html"
    write_if_changed(out, render_cohort_html(page))
    return out


def write_compare_html(paths, cohort_ids, out) -> Path:
    """Write the comparison of ``cohort_ids`` to the file ``out`` (atomically)."""
    tables = read_tables(paths)
    ids = list(dict.fromkeys(cohort_ids))
    page = compare_page([cohort_data(tables, c, cohort_members(paths, c)) for c in ids])
    out = Path(out)
    write_if_changed(out, render_compare_html(page))
    return out
