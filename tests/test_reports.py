import csv
import re
import shutil

import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline.events import EventLog
from pipeline.membership import MEMBERSHIP_FIELDS, read_membership
from pipeline.paths import Paths
from pipeline.replay import replay
from pipeline.reports import (compare_cohorts, markdown_table, read_cohort_tables, read_tables, top_essays,
                              variance_by_axis, write_cohort_report)


def draft(gen_id, combo, template="tD", llm="lA"):
    return dict(stage="draft", gen_id=gen_id, parent_gen_id="", combo_id=combo, template_id=template,
                llm_model_id=llm, replicate=1)


def essay(gen_id, parent, template):
    return dict(stage="essay", gen_id=gen_id, parent_gen_id=parent["gen_id"], combo_id=parent["combo_id"],
                template_id=template, llm_model_id="lB", replicate=1)


def evaluation(parent, llm, template="tV"):
    return dict(stage="evaluation", gen_id=f"v_{parent['gen_id']}_{template}_{llm}",
                parent_gen_id=parent["gen_id"], combo_id=parent["combo_id"], template_id=template,
                llm_model_id=llm, replicate=1)


D1, D2, D3 = draft("d1", "combo1"), draft("d2", "combo2"), draft("d3", "combo3", template="tD2")
E1, E2 = essay("e1", D1, "tE1"), essay("e2", D1, "tE2")
E3, E4 = essay("e3", D2, "tE1"), essay("e4", D2, "tE2")
E5 = essay("e5", D3, "tE1")
# cohort A: a balanced 2 combos x 2 essay templates x 2 evaluator models design
A_SCORES = {("e1", "lC"): 8.0, ("e1", "lD"): 6.0, ("e2", "lC"): 6.0, ("e2", "lD"): 4.0,
            ("e3", "lC"): 9.0, ("e3", "lD"): 9.0, ("e4", "lC"): 3.0, ("e4", "lD"): 5.0}
ESSAYS = {"e1": E1, "e2": E2, "e3": E3, "e4": E4, "e5": E5}
A_EVALS = [evaluation(ESSAYS[e], llm) for e, llm in A_SCORES]
A_FAILED = evaluation(E1, "lC", template="tW")    # the model answered, no score could be parsed
A_PENDING = evaluation(E2, "lC", template="tW")   # never run
# cohort B shares d1, e1, e2 and their lC evaluations with A, and adds d3 -> e5
B_SCORED = [evaluation(E1, "lC"), evaluation(E2, "lC"), evaluation(E5, "lC")]
E5_UNSCORED = evaluation(E5, "lD", template="tW")
COHORTS = {
    "A": [D1, D2, E1, E2, E3, E4] + A_EVALS + [A_FAILED, A_PENDING],
    "B": [D1, D3, E1, E2, E5] + B_SCORED,
    "unscored": [D3, E5, E5_UNSCORED],
    "drafts-essays": [D1, E1],
}
LONG_TEXT = "The third essay. " + "It goes on and on. " * 30 + "THE END"
TEXTS = {"e1": "Essay one\ntext.\n", "e2": "Essay two.\n", "e3": LONG_TEXT, "e5": "Essay five.\n"}
# e4 has a score but no parsed.txt


def lineage(member):
    return {k: (member[k] or None) for k in ("stage", "gen_id", "parent_gen_id", "combo_id", "template_id",
                                             "llm_model_id", "replicate")}


def completed(log, cohort, member):
    log.emit("generation_started", cohort_id=cohort, **lineage(member))
    log.emit("generation_completed", cohort_id=cohort, **lineage(member), finish_reason="stop",
             prompt_tokens=10, completion_tokens=20, cost=0.5, duration_s=1.0, attempts=1,
             source="run", copy=False)


def build(root):
    paths = Paths(data_root=root / "data", raw_root=root / "raw", cohorts_root=root / "cohorts")
    log = EventLog(paths.events_dir)
    for cohort, members in COHORTS.items():
        members = [{**m, "origin_cohort_id": cohort} for m in members]
        log.emit("cohort_built", cohort_id=cohort, member_fields=MEMBERSHIP_FIELDS,
                 members=[[m[f] for f in MEMBERSHIP_FIELDS] for m in members])
        path = paths.membership_csv(cohort)
        path.parent.mkdir(parents=True)
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, MEMBERSHIP_FIELDS, lineterminator="\n")
            writer.writeheader()
            writer.writerows(members)
    log.emit("llm_call_failed", cohort_id="A", stage="draft", gen_id="d1", llm_model_id="lA", attempt=1,
             status=429, error_class="RateLimited", message="slow down", will_retry=True)
    for member in (D1, D2, D3, E1, E2, E3, E4, E5):
        completed(log, "A", member)
    scores = {m["gen_id"]: A_SCORES[(m["parent_gen_id"], m["llm_model_id"])] for m in A_EVALS}
    scores["v_e5_tV_lC"] = 7.0
    for member in A_EVALS + [B_SCORED[2]]:
        log.emit("score_parsed", stage="evaluation", gen_id=member["gen_id"], score=scores[member["gen_id"]],
                 scale="0-9", parser="in_last_line")
        completed(log, "A", member)
    log.emit("generation_started", cohort_id="A", **lineage(A_FAILED))
    log.emit("parse_failed", cohort_id="A", stage="evaluation", gen_id=A_FAILED["gen_id"],
             parser="in_last_line", reason="no score")
    log.emit("generation_failed", cohort_id="A", **lineage(A_FAILED), error_class="ParseError",
             error="no score in the last line")
    log.close()
    replay(paths.events_dir, paths.tables_dir)

    for gen_id, text in TEXTS.items():
        path = paths.gen_dir("essay", gen_id) / "parsed.txt"
        path.parent.mkdir(parents=True)
        path.write_text(text)
    paths.combo_mappings_csv.write_text(
        "combo_id,version,concept_id,description_level,k_max,created_at\n"
        "combo2,v1,beta,paragraph,2,2025-01-01T00:00:00Z\ncombo2,v1,alpha,paragraph,2,2025-01-01T00:00:00Z\n")
    paths.raw_root.mkdir()
    paths.concepts_metadata_csv.write_text("concept_id,name\nalpha,Alpha Concept\nbeta,Beta Concept\n")
    return paths


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    return build(tmp_path_factory.mktemp("reports"))


@pytest.fixture(scope="module")
def report_a(paths):
    summary = write_cohort_report(paths, "A")
    return summary, paths.reports_dir("A")


def read(path):
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def md_row(text, first_cell):
    """Cells of the Markdown table row starting with ``first_cell``."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} in:\n{text}")


def test_pivots_hold_the_cohorts_means(report_a):
    _, reports = report_a
    pivot = read(reports / "generation_scores_pivot.csv")
    assert list(pivot.columns) == ["essay_gen_id", "combo_id", "draft_template", "essay_template",
                                   "essay_llm", "tV__lC", "tV__lD", "mean", "n"]
    assert pivot[["essay_gen_id", "tV__lC", "tV__lD", "mean", "n"]].values.tolist() == [
        ["e1", "8.00", "6.00", "7.00", "2"], ["e2", "6.00", "4.00", "5.00", "2"],
        ["e3", "9.00", "9.00", "9.00", "2"], ["e4", "3.00", "5.00", "4.00", "2"]]
    assert read(reports / "evaluation_model_template_pivot.csv").values.tolist() == [["tV", "6.50", "6.00"]]
    # B's e5 evaluation is not A's; A's unscored evaluations have no score row
    assert sorted(read(reports / "scores_long.csv")["gen_id"]) == sorted(m["gen_id"] for m in A_EVALS)


def test_template_and_model_summaries(report_a):
    _, reports = report_a
    templates = read(reports / "template_summary.csv").set_index(["axis", "level"])
    assert templates.loc[("essay_template", "tE1")].tolist() == ["8.00", "1.41", "4", "6.00", "9.00"]
    assert templates.loc[("essay_template", "tE2")].tolist() == ["4.50", "1.29", "4", "3.00", "6.00"]
    assert templates.loc[("draft_template", "tD")].tolist()[:3] == ["6.25", "2.25", "8"]
    models = read(reports / "model_summary.csv").set_index(["axis", "level"])
    assert models.loc[("evaluation_llm", "lC"), "mean"] == "6.50"
    assert models.loc[("evaluation_llm", "lD"), "n"] == "4"
    assert set(models.index.get_level_values("axis")) == {"draft_llm", "essay_llm", "evaluation_llm"}


def test_evaluator_agreement_per_essay_and_template(report_a):
    _, reports = report_a
    agreement = read(reports / "evaluator_agreement.csv")
    e4 = agreement[(agreement.essay_gen_id == "e4") & (agreement.scope == "essay")].iloc[0]
    assert (e4["n"], e4["n_evaluators"], e4["mean"], e4["range"], e4["model_mean_range"]) == (
        "2", "2", "4.00", "2.00", "2.00")
    e3 = agreement[(agreement.essay_gen_id == "e3") & (agreement.scope == "evaluation_template")].iloc[0]
    assert (e3["evaluation_template"], e3["range"], e3["std"]) == ("tV", "0.00", "0.00")


def test_variance_shares(report_a):
    _, reports = report_a
    shares = read(reports / "variance_by_axis.csv").set_index("axis")["share"]
    # total SS 35.5; essay templates (means 8 and 4.5) explain 24.5 of it, the combos 0.5
    assert shares["essay_template"] == "0.69" and shares["combo_id"] == "0.01"
    assert shares["draft_template"] == "0.00"

    scores = pd.read_csv(reports / "scores_long.csv", keep_default_na=False)
    exact = variance_by_axis(scores)["share"]
    assert exact.between(0, 1).all() and exact.sum() <= 1 + 1e-12
    assert exact.sum() == pytest.approx(25.5 / 35.5)


def test_top_essays_ranked_with_lineage_and_texts_copied(report_a, paths):
    _, reports = report_a
    top = read(reports / "top_essays.csv")
    assert top[["rank", "essay_gen_id", "mean"]].values.tolist() == [
        ["1", "e3", "9.00"], ["2", "e1", "7.00"], ["3", "e2", "5.00"], ["4", "e4", "4.00"]]
    first = top.iloc[0]
    assert (first["draft_gen_id"], first["combo_id"], first["essay_template"], first["concepts"],
            first["text_file"]) == ("d2", "combo2", "tE1", "alpha;beta", "e3.txt")
    assert top.iloc[3]["text_file"] == ""

    results = paths.results_dir("A")
    assert (results / "e3.txt").read_text() == LONG_TEXT
    assert (results / "e1.txt").read_text() == TEXTS["e1"]
    assert not (results / "e4.txt").exists()
    readme = (results / "README.md").read_text()
    assert readme.index("#1: e3 (mean score 9.00") < readme.index("#2: e1 (mean score 7.00")
    assert "1. Alpha Concept (`alpha`)" in readme and "has no parsed.txt" in readme


def test_top_essays_keeps_n_and_breaks_ties_by_count_then_id():
    scores = pd.DataFrame({"essay_gen_id": ["b", "a", "c", "c"], "score": [5.0, 5.0, 5.0, 5.0],
                           **{c: ["x"] * 4 for c in ("draft_gen_id", "combo_id", "draft_template",
                                                     "draft_llm", "essay_template", "essay_llm")}})
    assert top_essays(scores, n=2)["essay_gen_id"].tolist() == ["c", "a"]


def test_summary_page(report_a, paths):
    summary, _ = report_a
    text = summary.read_text()
    assert md_row(text, "draft") == ["draft", "2", "2", "0", "0", "0"]  # members done failed blocked pending
    assert md_row(text, "evaluation")[:6] == ["evaluation", "10", "8", "1", "0", "1"]
    # one failed attempt plus 14 calls at 0.5 each, 10 + 20 tokens
    assert md_row(text, "total") == ["total", "14", "1", "140", "280", "7.0000"]
    assert "## Failures (1)" in text and f"`{A_FAILED['gen_id']}`: ParseError: no score in the last line" in text
    assert "## Top 4 essays" in text and "### 1. e3 (9.00)" in text
    excerpt = text.split("### 1. e3 (9.00)")[1].split("\n")[2]
    assert excerpt.startswith("> The third essay.") and excerpt.endswith("…") and "THE END" not in excerpt
    assert md_row(text, "tV") == ["tV", "6.50", "6.00"]
    assert md_row(text, "e1")[-2:] == ["7.00", "2"]
    assert md_row(text, "evaluation_template") == ["evaluation_template", "lC", "lD"]


def test_report_is_deterministic(report_a, paths):
    summary, reports = report_a
    before = {p.name: p.read_bytes() for p in reports.iterdir()}
    write_cohort_report(paths, "A")
    assert {p.name: p.read_bytes() for p in reports.iterdir()} == before
    for content in before.values():
        assert not re.search(rb"\d{4}-\d\d-\d\d", content)  # no timestamps


def test_report_from_the_cohorts_rows_equals_the_report_from_every_row(paths, tmp_path):
    """write_cohort_report reads only the members' rows (read_cohort_tables); the files are those
    made from the whole tables."""
    reports = paths.reports_dir("B")
    write_cohort_report(paths, "B", read_tables(paths))
    whole = {p.name: p.read_bytes() for p in reports.iterdir()}
    shutil.rmtree(reports)
    write_cohort_report(paths, "B")
    assert {p.name: p.read_bytes() for p in reports.iterdir()} == whole
    tables = read_cohort_tables(paths, read_membership(paths.membership_csv("B")))
    assert set(tables["llm_calls"]["gen_id"]) <= {m["gen_id"] for m in COHORTS["B"]}
    assert len(tables["generation_results"]) == 5 < len(read_tables(paths)["generation_results"])


def test_cohort_without_scores_or_evaluations(paths):
    results = paths.results_dir("unscored")
    results.mkdir(parents=True)
    (results / "e5.txt").write_text("top essay of an earlier report")
    (results / "notes.txt").write_text("a researcher's notes")
    text = write_cohort_report(paths, "unscored").read_text()
    assert "No scores yet: none of the 1 evaluations has a parsed score." in text
    assert md_row(text, "evaluation")[:6] == ["evaluation", "1", "0", "0", "0", "1"]
    reports = paths.reports_dir("unscored")
    assert read(reports / "scores_long.csv").empty and read(reports / "top_essays.csv").empty
    assert "has an evaluation score yet" in (results / "README.md").read_text()
    assert sorted(p.name for p in results.iterdir()) == ["README.md", "notes.txt"]

    text = write_cohort_report(paths, "drafts-essays").read_text()
    assert "no evaluation stage" in text and md_row(text, "essay")[:3] == ["essay", "1", "1"]


def test_compare_shows_shared_levels_per_cohort(paths):
    text = compare_cohorts(paths, ["A", "B"])
    assert "A: mean 6.25, n=8" in text and "B: mean 7.00, n=3" in text
    # lC scored A's four essays (6.50) and B's e1, e2, e5 (7.00); lD only scored in A
    assert md_row(text, "lC") == ["lC", "6.50", "4", "7.00", "3", "0.50"]
    assert md_row(text, "tE2") == ["tE2", "4.50", "4", "6.00", "1", "1.50"]
    assert "| lD" not in text and "| tD2" not in text


def test_compare_errors_name_the_problem(paths, tmp_path):
    with pytest.raises(PipelineError, match="unknown cohort 'nope'"):
        compare_cohorts(paths, ["A", "nope"])
    fresh = Paths(data_root=tmp_path / "data")
    fresh.membership_csv("A").parent.mkdir(parents=True)
    fresh.membership_csv("A").write_bytes(paths.membership_csv("A").read_bytes())
    with pytest.raises(PipelineError, match="run `daydream replay` first"):
        compare_cohorts(fresh, ["A"])


def test_markdown_table_escapes_and_aligns():
    table = markdown_table(pd.DataFrame({"id": ["a|b", None], "score": [7.256, float("nan")], "n": [3, 12]}))
    assert table.splitlines() == ["| id   | score |   n |",
                                  "| ---- | ----: | --: |",
                                  "| a\\|b |  7.26 |   3 |",
                                  "| -    |     - |  12 |"]
