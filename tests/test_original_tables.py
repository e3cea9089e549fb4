"""The original's results tables (pipeline/original_tables.py) and `daydream select-top-essays`.

Expected values are worked out by hand from the formulas of ORIGINAL_OUTPUTS.md §1-§3; the
headers below are the spec's, and test_headers_are_the_specs checks them against the document."""
import csv
import math
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from pipeline.errors import PipelineError
from pipeline import original_tables
from pipeline.original_tables import (AGGREGATED_COLUMNS, CROSS_STATE, evaluation_model_template_pivot, final_results,
                                      generation_scores, normalized_frame, normalized_rows,
                                      perfect_score_paths, rank_essays, read_back,
                                      scores_by_template_model, to_csv_text, variance_analysis,
                                      write_cross_experiment_tables, write_table)
from pipeline.replay import COLUMNS, fold

from conftest import SMALL, output_of, run_daydream, run_luigi, write_spec

SPEC_DOC = Path(__file__).resolve().parents[2] / "shared" / "daydreaming" / "ORIGINAL_OUTPUTS.md"

NORMALIZED = ("gen_id, parent_gen_id, evaluation_template, evaluation_llm_model, score, error, "
              "evaluation_response_path, combo_id, draft_template, generation_template, generation_model, "
              "origin_cohort_id, generation_response_path, input_mode, copied_from")
AGGREGATED = ("parent_gen_id, gen_id, evaluation_template, evaluation_llm_model, score, error, "
              "evaluation_response_path, combo_id, draft_template, generation_template, generation_model, "
              "generation_response_path, origin_cohort_id, input_mode, copied_from")
FINAL = ("analysis_type, generation_template, generation_model, evaluation_llm_model, combo_id, count, "
         "average, std_dev, min_score, max_score, perfect_scores, perfect_score_pct, high_scores_8plus, "
         "high_score_pct, low_scores_3minus")
PERFECT = ("combo_id, generation_template, generation_model, evaluation_llm_model, score, "
           "generation_response_path, evaluation_response_path, notes")
VARIANCE = ("combo_id, generation_template, generation_model, total_evaluations, mean_score, std_dev, "
            "min_score, max_score, num_templates, num_models, score_range, coefficient_of_variation, "
            "analysis_type, eval_model, template_evaluations, templates_used, eval_template, "
            "model_evaluations, models_used, stability_classification")
INDEX = ["combo_id", "draft_template", "generation_template", "generation_model", "parent_gen_id"]


def cols(spec_text):
    return spec_text.split(", ")


def row(gen_id, essay, template, model, score, combo="c1", draft_template="dt", essay_template="et",
        essay_llm="m1", origin="coh"):
    """A replayed evaluation (a row of data/tables/evaluation_results.csv)."""
    return {"gen_id": gen_id, "essay_gen_id": essay, "draft_gen_id": f"d_{essay}", "combo_id": combo,
            "draft_template": draft_template, "draft_llm": "dm", "essay_template": essay_template,
            "essay_llm": essay_llm, "evaluation_template": template, "evaluation_llm": model,
            "replicate": "1", "score": None if score is None else str(score), "status": "done",
            "error": None, "cohort_ids": origin, "origin_cohort_id": origin, "input_mode": "prompt",
            "essay_origin_cohort_id": "essay-coh"}


def scores(*evaluations, data_root="/data"):
    """The aggregated table as the original's downstream assets see it: read back from CSV."""
    return read_back(to_csv_text(normalized_frame(normalized_rows(evaluations, data_root))))


def records(df):
    return df.astype(object).where(df.notna(), None).to_dict("records")


# ----------------------------------------------------------------------------- the normalized row

def test_normalized_row_fields(tmp_path):
    done = row("v1", "e1", "nov", "j1", 7.5)
    copy_essay = dict(row("v2", "e2", "nov", "j1", None, essay_llm=None), origin_cohort_id=" ",
                      input_mode=None)
    one, two, unknown = normalized_rows([done, copy_essay, {"gen_id": "v3"}], tmp_path / "data")
    data = (tmp_path / "data").resolve()
    assert one["score"] == 7.5 and one["error"] is None and one["input_mode"] == "prompt"
    assert one["evaluation_response_path"] == str(data / "gens" / "evaluation" / "v1" / "parsed.txt")
    assert one["generation_response_path"] == str(data / "gens" / "essay" / "e1" / "parsed.txt")
    assert (one["generation_template"], one["generation_model"], one["origin_cohort_id"]) == ("et", "m1", "coh")
    # no essay model: the draft's; blank origin: null; no score: the original's error text
    assert two["generation_model"] == "dm" and two["origin_cohort_id"] is None
    assert two["score"] is None and two["error"] == "missing parsed.txt" and two["input_mode"] is None
    # an evaluation the log does not know still gets its row
    assert unknown["parent_gen_id"] == "" and unknown["generation_response_path"] == ""
    assert unknown["error"] == "missing parsed.txt" and unknown["combo_id"] == ""


def completed(ts, cohort_id, stage, gen_id, parent, copy=False):
    event = {"type": "generation_completed", "ts": ts, "event_id": f"{gen_id}-{ts}", "cohort_id": cohort_id,
             "stage": stage, "gen_id": gen_id, "parent_gen_id": parent, "combo_id": "c1", "template_id": "t",
             "llm_model_id": "m", "replicate": 1, "copy": copy, "source": "run"}
    return (ts, "seg", 0), event


def test_replay_records_the_creator_cohort_and_input_mode():
    # a generation completed again later (regenerated, in another cohort) keeps its creator
    pairs = [completed("2025-03", "later", "evaluation", "v1", "e1"),
             completed("2025-01", "first", "evaluation", "v1", "e1"),
             completed("2025-02", None, "evaluation", "v2", "e1", copy=True),
             completed("2025-00", "essays", "essay", "e1", "d1")]
    columns, evaluations = fold(pairs)["evaluation_results"]
    v1, v2 = (dict(zip(columns, r)) for r in evaluations)
    assert (v1["origin_cohort_id"], v1["input_mode"], v1["essay_origin_cohort_id"]) == ("first", "prompt", "essays")
    assert (v2["origin_cohort_id"], v2["input_mode"]) == (None, "copy")


def write_evaluation_results(tables_dir, evaluations):
    tables_dir.mkdir(parents=True, exist_ok=True)
    with open(tables_dir / "evaluation_results.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, COLUMNS["evaluation_results"])
        writer.writeheader()
        writer.writerows(evaluations)


def read_csv_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_cross_experiment_tables_sorted_by_gen_id_and_empty_ones_removed(tmp_path):
    data = tmp_path / "data"
    out = data / "7_cross_experiment"
    write_evaluation_results(data / "tables", [row("v_b", "e1", "nov", "j1", 4.0), row("v_a", "e1", "nov", "j1", None)])
    write_cross_experiment_tables(data, data / "tables")
    aggregated = read_csv_rows(out / "aggregated_scores.csv")
    filtered = read_csv_rows(out / "filtered_evaluation_results.csv")
    assert aggregated[0] == cols(AGGREGATED) and filtered[0] == cols(NORMALIZED)
    assert [r[1] for r in aggregated[1:]] == ["v_a", "v_b"] and [r[0] for r in filtered[1:]] == ["v_a", "v_b"]
    assert [r[4:6] for r in aggregated[1:]] == [["", "missing parsed.txt"], ["4.0", ""]]
    # an empty log: no rows -> no files (the original writes none; a stale one is removed here)
    write_evaluation_results(data / "tables", [])
    write_cross_experiment_tables(data, data / "tables")
    assert not list(out.iterdir())


def history(seed, n, templates=("t0", "t1", "t2"), models=("j0", "j1", "j2"), start=0):
    """Evaluation rows of many tasks (several essays each), 9 score columns, a spread of
    unrounded scores, missing scores and rows without an essay template (dropped by the pivot)."""
    rng = random.Random(seed)
    rows = []
    for i in range(start, start + n):
        essay = f"e{rng.randrange(40)}"
        score = None if rng.random() < 0.1 else round(rng.uniform(0, 10), rng.choice((1, 3, 7)))
        r = row(f"v_{i:05d}", essay, rng.choice(templates), rng.choice(models), score,
                combo=f"c{int(essay[1:]) % 7}", essay_template=f"et{int(essay[1:]) % 3}",
                essay_llm=f"m{int(essay[1:]) % 2}", origin=f"coh{rng.randrange(3)}")
        r["essay_origin_cohort_id"] = f"ecoh{int(essay[1:]) % 4}"
        if rng.random() < 0.05:
            r["essay_template"] = None
        rows.append(r)
    return rows


class Replays:
    """Successive replayed evaluation tables of one data/, each handed to
    write_cross_experiment_tables with the delta and versions a replay would give."""

    def __init__(self, data, monkeypatch):
        self.data, self.version, self.rows, self.full_builds = data, 0, {}, 0
        real = original_tables._build

        def counted(*args):
            self.full_builds += 1
            return real(*args)
        monkeypatch.setattr(original_tables, "_build", counted)

    def replay(self, rows, version_before=None):
        new = {r["gen_id"]: r for r in rows}
        changed = sorted(g for g in self.rows.keys() | new.keys() if self.rows.get(g) != new.get(g))
        # as replay hands them over: tuples in column order, scores as floats, None for a removed row
        delta = {g: None if g not in new else tuple(
            float(v) if c == "score" and v is not None else v for c, v in
            ((c, new[g].get(c)) for c in COLUMNS["evaluation_results"])) for g in changed}
        write_evaluation_results(self.data / "tables", sorted(rows, key=lambda r: r["gen_id"]))
        before = str(self.version) if version_before is None else version_before
        self.version += 1
        self.rows = new
        builds = self.full_builds
        write_cross_experiment_tables(self.data, self.data / "tables", SimpleNamespace(
            delta={"evaluation_results": delta}, version_before=before, version_after=str(self.version)))
        return self.full_builds > builds

    def files(self):
        out = self.data / "7_cross_experiment"
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())} if out.exists() else {}

    def full_build(self):
        """The files a full build writes for the current table (in the same data/, so the same
        absolute paths); the updated files and their state are put back afterwards."""
        aside = self.data.parent / "aside"
        aside.mkdir()
        out, state = self.data / "7_cross_experiment", self.data / "tables" / CROSS_STATE
        for path in (out, state):
            if path.exists():
                shutil.move(path, aside / path.name)
        builds = self.full_builds
        write_cross_experiment_tables(self.data, self.data / "tables")
        self.full_builds = builds
        files = self.files()
        shutil.rmtree(out, ignore_errors=True)
        for path in aside.iterdir():
            shutil.move(path, self.data / ("tables" if path.name == CROSS_STATE else "") / path.name)
        aside.rmdir()
        return files


def test_cross_experiment_tables_updated_from_replay_deltas_equal_a_full_build(tmp_path, monkeypatch):
    """Each replay's delta is applied to the files in place (no full build), and the files are
    byte for byte those of a full build: rows added, removed, re-scored or failed by a re-parse,
    an essay's origin changed, new and vanished evaluation templates/models, quoted cells."""
    replays = Replays(tmp_path / "data", monkeypatch)
    rows = history(0, 300)
    assert replays.replay(rows)   # the first: nothing to update
    assert len(replays.files()) == 3
    rng = random.Random(1)

    def step(rows, note):
        assert not replays.replay(rows), f"{note}: full build instead of an update"
        assert replays.files() == replays.full_build(), note

    step(rows + history(2, 25, start=1000), "new rows, in old and new tasks")
    rows = rows + history(2, 25, start=1000)
    rescored = [dict(r, score=None if rng.random() < 0.3 else str(round(rng.uniform(0, 10), 2)))
                if i % 9 == 0 else r for i, r in enumerate(rows)]
    step(rescored[::2] + rescored[1::2][10:], "re-parsed scores, some failed; rows removed")
    rows = rescored[::2] + rescored[1::2][10:]
    novel = history(3, 12, templates=("t_new",), models=("j_new", "j0"), start=2000)
    step(rows + novel, "a new evaluation template and model: new columns")
    rows = rows + novel
    rows = [r for r in rows if r["evaluation_llm"] != "j_new"]
    step(rows, "the rows of a model removed: its columns go")
    rows = [dict(r, essay_origin_cohort_id="moved") if r["essay_gen_id"] == "e3" else r for r in rows]
    step(rows, "an essay's creator cohort changed")
    rows = [dict(r, combo_id="c,1", essay_template=None) if r["essay_gen_id"] == "e4" else r for r in rows]
    step(rows + [dict(row("v_q", "e5", "t0", "j1", 2.5), draft_template='say "hi"', essay_origin_cohort_id="ecoh1")], "quoted cells")
    rows = [r for r in rows if r["essay_gen_id"] != "e5"]
    step(rows, "a task's rows all removed")
    lone = dict(row("v_lone", "e_lone", "t_lone", "j0", 5.5, combo="c_lone"), essay_origin_cohort_id="x")
    step(rows + [lone], "a new column in a new task")
    step(rows, "that task and column gone")
    assert replays.replay(rows[:5] + history(4, 5, start=3000), version_before="not-the-files'")
    assert replays.files() == replays.full_build(), "a version mismatch (a crash in between): full build"


def test_cross_experiment_tables_fall_back_on_a_full_build(tmp_path, monkeypatch):
    """A line break in a cell, files changed by hand or a replay without a delta: a full build,
    with the right bytes."""
    replays = Replays(tmp_path / "data", monkeypatch)
    rows = history(5, 80)
    replays.replay(rows)
    broken = rows + [row("v_nl", "e1", "t0", "j1", 1.0, combo="two\nlines")]
    assert replays.replay(broken)
    assert replays.files() == replays.full_build()
    assert replays.replay(rows)   # the files of a line break were not kept for updates
    assert replays.files() == replays.full_build()
    assert not replays.replay(rows[1:])
    path = tmp_path / "data" / "7_cross_experiment" / "aggregated_scores.csv"
    path.write_bytes(path.read_bytes()[:-30])   # a hand edit
    assert replays.replay(rows[2:])
    assert replays.files() == replays.full_build()
    assert replays.replay([])   # no rows: no files
    assert replays.files() == {}


def test_cross_experiment_tables_after_a_crash_in_the_middle_of_an_update(tmp_path, monkeypatch):
    """Killed after some files were updated and before the others: the next replay's delta is
    not applied to that mix; the files are built again, right."""
    replays = Replays(tmp_path / "data", monkeypatch)
    rows = history(6, 120)
    replays.replay(rows)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt
    with monkeypatch.context() as patch:
        patch.setattr(original_tables, "write_text_atomic", killed)   # the pivot, written last
        with pytest.raises(KeyboardInterrupt):
            replays.replay(rows + history(7, 10, start=500))
    assert not (tmp_path / "data" / "tables" / CROSS_STATE).exists()
    assert replays.replay(rows[3:] + history(7, 10, start=500))
    assert replays.files() == replays.full_build()
    assert not replays.replay(rows[4:] + history(7, 10, start=500))   # and updates again after that
    assert replays.files() == replays.full_build()


def test_write_table_skips_empty_frames(tmp_path):
    path = tmp_path / "t.csv"
    assert write_table(path, pd.DataFrame({"a": [1.0]})) == path.read_text() == "a\n1.0\n"
    assert write_table(path, pd.DataFrame(columns=["a"])) is None and not path.exists()


# ----------------------------------------------------------------------------- cohort tables

def test_generation_scores_pivot():
    s = scores(row("v1", "e1", "nov", "j1", 7), row("v2", "e1", "nov", "j1", 8), row("v3", "e1", "nov", "j1", 8),
               row("v4", "e1", "cla", "j2", 5), row("v5", "e0", "nov", "j2", 9, combo="c0"),
               row("v6", "e1", "cla", "j1", None),         # failed: left out
               row("v7", "e1", "other", "j1", 1),          # template not allowlisted
               row("v8", "e1", "cla", "j3", 1))            # model not allowlisted
    table = generation_scores(s, {"nov", "cla"}, {"j1", "j2"})
    keys = ["j1_nov", "j2_cla", "j2_nov"]    # <model>_<template>, sorted
    assert list(table.columns) == INDEX + keys + ["j1_nov_min", "j1_nov_max", "j1_nov_n", "j2_cla_min",
                                                  "j2_cla_max", "j2_cla_n", "j2_nov_min", "j2_nov_max",
                                                  "j2_nov_n", "allowlisted_template_score_sum",
                                                  "generation_response_path"]
    c0, c1 = records(table)   # rows sorted by the index
    assert c0["parent_gen_id"] == "e0" and c0["j2_nov"] == 9.0 and c0["j1_nov"] is None and c0["j1_nov_n"] == 0
    assert c1["j1_nov"] == 7.67 and (c1["j1_nov_min"], c1["j1_nov_max"], c1["j1_nov_n"]) == (7.0, 8.0, 3)
    assert c1["j2_cla"] == 5.0 and c1["j2_cla_n"] == 1
    assert c1["allowlisted_template_score_sum"] == 12.67   # sum of the rounded means
    assert c1["generation_response_path"] == str(Path("/data").resolve() / "gens" / "essay" / "e1" / "parsed.txt")
    assert generation_scores(s, {"nov"}, set()).empty and generation_scores(s, {"zzz"}, {"j1"}).empty


def test_model_template_pivot_and_rows_with_a_blank_index_drop_out():
    s = scores(row("v1", "e1", "nov", "j1", 6), row("v2", "e1", "nov", "j1", 7), row("v3", "e1", "cla", "j2", 2),
               row("v4", "e2", "nov", "j1", 3, draft_template=""))   # blank draft_template: NaN once read back
    table = evaluation_model_template_pivot(s)
    assert list(table.columns) == INDEX + ["j1_nov", "j2_cla"]
    assert records(table) == [{"combo_id": "c1", "draft_template": "dt", "generation_template": "et",
                               "generation_model": "m1", "parent_gen_id": "e1", "j1_nov": 6.5, "j2_cla": 2.0}]
    overall = final_results(s).iloc[-1]
    assert overall["analysis_type"] == "overall_statistics" and overall["count"] == 4   # still counted


def test_final_results_blocks_and_rounding():
    s = scores(row("v1", "e1", "nov", "j1", 10), row("v2", "e1", "nov", "j2", 8), row("v3", "e1", "nov", "j2", 3),
               row("v4", "e2", "nov", "j1", 7, combo="c2", essay_llm="m2"),
               row("v5", "e2", "nov", "j1", None, combo="c2"))
    table = final_results(s)
    assert list(table.columns) == cols(FINAL)
    assert list(table["analysis_type"]) == (["by_generation_template"] + ["by_generation_model"] * 2
                                            + ["by_evaluation_model"] * 2 + ["by_combo_id"] * 2
                                            + ["by_template_and_generation_model"] * 2
                                            + ["by_generation_vs_evaluation_model"] * 3 + ["overall_statistics"])
    by_model = table[table["analysis_type"] == "by_generation_model"]
    m1, m2 = records(by_model)
    # m1: 10, 8, 3 -> mean 7.0, sample std sqrt(13) = 3.6056; one perfect, two >= 8, one <= 3
    assert (m1["generation_model"], m1["count"], m1["average"], m1["std_dev"]) == ("m1", 3, 7.0, 3.61)
    assert (m1["perfect_scores"], m1["perfect_score_pct"], m1["high_scores_8plus"], m1["high_score_pct"],
            m1["low_scores_3minus"]) == (1, 33.3, 2, 66.7, 1)
    assert m1["generation_template"] is None and m1["combo_id"] is None
    assert m2["count"] == 1 and m2["std_dev"] is None and m2["average"] == 7.0
    overall = records(table.tail(1))[0]
    # 10, 8, 3, 7: mean 7.0, std sqrt(26/3) = 2.944; percentages to 2 decimals here
    assert (overall["count"], overall["average"], overall["std_dev"]) == (4, 7.0, 2.94)
    assert (overall["perfect_score_pct"], overall["high_score_pct"]) == (25.0, 50.0)
    pct = final_results(scores(row("v1", "e1", "n", "j1", 9), row("v2", "e1", "n", "j2", 1),
                               row("v3", "e1", "n", "j3", 2)))
    assert list(pct["high_score_pct"]) == [33.3, 33.3, 100.0, 0.0, 0.0, 33.3, 33.3, 100.0, 0.0, 0.0, 33.33]


def test_perfect_score_paths():
    s = scores(row("v1", "e1", "nov", "j1", 10), row("v2", "e1", "nov", "j2", 9.5), row("v3", "e2", "cla", "j2", 10))
    table = perfect_score_paths(s)
    assert list(table.columns) == cols(PERFECT)
    assert list(table["evaluation_response_path"].str.split("/").str[-2]) == ["v1", "v3"]
    assert table["notes"].iloc[0] == "Perfect score from m1 generation + j1 evaluation"
    assert perfect_score_paths(scores(row("v1", "e1", "nov", "j1", 9.99))).empty


def test_variance_analysis_blocks_and_stability():
    s = scores(row("v1", "e1", "nov", "j1", 2), row("v2", "e1", "cla", "j1", 8),    # j1: templates apart
               row("v3", "e1", "nov", "j2", 2.5),                                   # nov: j1 vs j2 close
               row("v4", "e2", "nov", "j1", 6, draft_template="dt2"),              # same key as e1: pooled
               row("v5", "e3", "nov", "j1", 5, combo="c9"))                        # alone: insufficient
    table = variance_analysis(s)
    assert list(table.columns) == cols(VARIANCE)
    overall, alone, per_model, per_template = records(table)
    # c1/et/m1 pools e1 and e2: 2, 8, 2.5, 6 -> mean 4.625, std sqrt(24.6875 / 3) = 2.8687, range 6
    assert overall["analysis_type"] == "overall_variance" and overall["total_evaluations"] == 4
    assert (overall["mean_score"], overall["std_dev"], overall["num_templates"], overall["num_models"]) == (4.625, 2.869, 2, 2)
    assert overall["score_range"] == 6.0 and overall["stability_classification"] == "poor_agreement"
    assert overall["coefficient_of_variation"] == 2.869 / 4.625   # from the rounded values, not rounded
    assert alone["combo_id"] == "c9" and alone["stability_classification"] == "insufficient_data"
    # template_variance: c1 + j1 over 2, 8, 6 (unrounded)
    assert (per_model["analysis_type"], per_model["eval_model"], per_model["template_evaluations"]) == \
        ("template_variance", "j1", 3)
    assert per_model["templates_used"] == "cla, nov" and per_model["num_templates"] == 2
    assert per_model["std_dev"] == pytest.approx(math.sqrt(28 / 3)) and per_model["score_range"] == 6.0
    assert per_model["total_evaluations"] is None and per_model["stability_classification"] == "poor_agreement"
    # model_variance: c1 + nov over 2, 2.5, 6
    assert (per_template["eval_template"], per_template["model_evaluations"], per_template["models_used"]) == \
        ("nov", 3, "j1, j2")
    assert per_template["stability_classification"] == "poor_agreement"


def test_stability_when_all_scores_are_zero():
    # overall rows divide 0 by a zero mean (NaN: insufficient_data despite two scores); template
    # rows set the coefficient to 0 then, and agree
    s = scores(row("v1", "e1", "nov", "j1", 0), row("v2", "e1", "cla", "j1", 0))
    overall, per_model = records(variance_analysis(s))
    assert overall["total_evaluations"] == 2 and overall["coefficient_of_variation"] is None
    assert overall["stability_classification"] == "insufficient_data"
    assert per_model["coefficient_of_variation"] == 0.0 and per_model["stability_classification"] == "high_agreement"
    assert "eval_template" not in variance_analysis(s).columns     # no model_variance block
    assert variance_analysis(scores(row("v1", "e1", "nov", "j1", None))).empty


# ----------------------------------------------------------------------------- build_pivot_tables

def test_scores_by_template_model_first_score_per_task():
    s = scores(row("v1", "e1", "nov", "j1", None),           # error rows carry no score
               row("v2", "e1", "nov", "j1", 3.333),
               row("v3", "e1b", "nov", "j1", 9),             # same task (a replicate essay): collapses
               row("v4", "e1", "cla", "j2", 1.111),
               row("v5", "e2", "nov", "j1", 5, combo="c2", origin="other"),
               row("v6", "e3", "nov", "j1", 5, combo=""))     # incomplete task metadata: dropped
    table, notes = scores_by_template_model(s, {"e1": "first-cohort"})
    assert list(table.columns) == ["essay_gen_id", "combo_id", "draft_template", "generation_template",
                                   "generation_model", "origin_cohort_id", "cla__j2", "nov__j1",
                                   "allowlisted_template_score_sum"]
    assert notes == ["Dropping rows without complete task metadata: 1"]
    first, second = records(table)   # ordered by essay_task_id: c1_dt_m1_et, c2_dt_m1_et
    assert (first["essay_gen_id"], first["nov__j1"], first["cla__j2"]) == ("e1", 3.333, 1.111)
    assert first["allowlisted_template_score_sum"] == pytest.approx(4.444) and first["origin_cohort_id"] == "first-cohort"
    assert (second["essay_gen_id"], second["combo_id"], second["cla__j2"]) == ("e2", "c2", None)
    assert second["origin_cohort_id"] == ""    # the essay's own cohort, unknown here: blank


def test_scores_by_template_model_allowlist():
    s = scores(row("v1", "e1", "nov", "j1", 4), row("v2", "e1", "cla", "j1", 6), row("v3", "e1", "nov", "j2", 8))
    table, notes = scores_by_template_model(s, {}, ({"nov"}, {"j1", "j2"}))
    assert notes == ["Filtered parsed scores to spec-defined evaluation templates/models: kept 2 rows (dropped 1)."]
    assert list(table.columns)[6:] == ["nov__j1", "nov__j2", "allowlisted_template_score_sum"]
    assert table["allowlisted_template_score_sum"].tolist() == [12.0]
    with pytest.raises(PipelineError, match="allowlist_filter_removed_all_rows"):
        scores_by_template_model(s, {}, ({"zzz"}, {"j1"}))


# ----------------------------------------------------------------------------- ranking

def test_rank_essays():
    s = scores(row("v1", "e1", "nov", "j1", 6), row("v2", "e1", "nov", "j1", 8),    # replicates: best = 8
               row("v3", "e1", "nov", "j2", 6), row("v4", "e2", "nov", "j1", 7),
               row("v5", "e3", "nov", "j1", 7), row("v6", "e4", "nov", "j2", None),
               row("v7", "e5", "cla", "j1", 10))
    ranked = rank_essays(s, "nov")
    assert list(ranked.columns) == ["parent_gen_id", "avg_score", "max_score", "models_covered", "score__j1", "score__j2"]
    assert records(ranked) == [
        {"parent_gen_id": "e1", "avg_score": 7.0, "max_score": 8.0, "models_covered": 2, "score__j1": 8.0, "score__j2": 6.0},
        {"parent_gen_id": "e2", "avg_score": 7.0, "max_score": 7.0, "models_covered": 1, "score__j1": 7.0, "score__j2": None},
        {"parent_gen_id": "e3", "avg_score": 7.0, "max_score": 7.0, "models_covered": 1, "score__j1": 7.0, "score__j2": None}]
    assert list(rank_essays(s, "nov", evaluation_models=["j2"])["parent_gen_id"]) == ["e1"]
    assert rank_essays(s, "nov", evaluation_models=[" "]).empty
    assert list(rank_essays(s, "nov", score_span=0, top_n=2)["parent_gen_id"]) == ["e1", "e2"]


# ----------------------------------------------------------------------------- the spec document

def test_headers_are_the_specs():
    if not SPEC_DOC.exists():
        pytest.skip(f"{SPEC_DOC} not present")
    doc = SPEC_DOC.read_text(encoding="utf-8")
    for header in (NORMALIZED, AGGREGATED, FINAL, PERFECT, VARIANCE):
        assert f"`{header}`" in doc


# ----------------------------------------------------------------------------- end to end

# SMALL with two evaluation templates, two judges and two replicates: 16 evaluations
E2E_SPEC = (SMALL.replace("evaluation_template: [clarity-v1]", "evaluation_template: [mechanism-check-v1, clarity-v1]")
            .replace("evaluation_llm: [sonnet_4]\n",
                     "evaluation_llm: [sonnet_4, gemini_25_flash]\n  evaluation_template_replicate: [1, 2]\n"))
KEYS = ["gemini_25_flash_clarity-v1", "gemini_25_flash_mechanism-check-v1", "sonnet_4_clarity-v1",
        "sonnet_4_mechanism-check-v1"]
PIVOT_KEYS = ["clarity-v1__gemini_25_flash", "clarity-v1__sonnet_4", "mechanism-check-v1__gemini_25_flash",
              "mechanism-check-v1__sonnet_4"]


def header(path):
    return read_csv_rows(path)[0]


def test_cohort_run_writes_the_original_tables(project, stub):
    write_spec(project, "orig", E2E_SPEC)
    result = run_luigi(project, "RunCohort", "--cohort-id", "orig", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    data = project.data_root
    cross, reports = data / "7_cross_experiment", data / "cohorts" / "orig" / "reports"
    evaluations = [r["gen_id"] for r in project.membership("orig", "evaluation")]
    assert len(evaluations) == 16

    assert header(cross / "aggregated_scores.csv") == cols(AGGREGATED)
    assert header(cross / "filtered_evaluation_results.csv") == cols(NORMALIZED)
    assert header(reports / "parsing" / "aggregated_scores.csv") == cols(NORMALIZED)
    assert header(reports / "summary" / "generation_scores.csv") == (
        INDEX + KEYS + [f"{k}{s}" for k in KEYS for s in ("_min", "_max", "_n")]
        + ["allowlisted_template_score_sum", "generation_response_path"])
    assert header(reports / "summary" / "evaluation_model_template_pivot.csv") == INDEX + KEYS
    assert header(reports / "summary" / "final_results.csv") == cols(FINAL)
    assert header(reports / "analysis" / "variance_analysis.csv") == cols(VARIANCE)
    meta = ["essay_gen_id", "combo_id", "draft_template", "generation_template", "generation_model", "origin_cohort_id"]
    for folder in (cross, reports / "summary"):
        assert header(folder / "evaluation_scores_by_template_model.csv") == \
            meta + PIVOT_KEYS + ["allowlisted_template_score_sum"]
    # the stub scores 0-9: no perfect score, so (as in the original) no perfect_score_paths.csv
    assert not (reports / "summary" / "perfect_score_paths.csv").exists()

    with open(reports / "parsing" / "aggregated_scores.csv", newline="") as fh:
        cohort_rows = list(csv.DictReader(fh))
    assert [r["gen_id"] for r in cohort_rows] == evaluations          # membership order
    with open(cross / "aggregated_scores.csv", newline="") as fh:
        cross_rows = list(csv.DictReader(fh))
    assert [r["gen_id"] for r in cross_rows] == sorted(evaluations)
    essays = {r["gen_id"]: r for r in project.membership("orig", "essay")}
    for r in cohort_rows + cross_rows:
        parsed = project.gen_dir("evaluation", r["gen_id"]) / "parsed.txt"
        assert float(r["score"]) == float(parsed.read_text().strip().splitlines()[-1])
        assert r["evaluation_response_path"] == str(parsed.resolve()) and r["error"] == ""
        essay = essays[r["parent_gen_id"]]
        assert (r["generation_template"], r["generation_model"], r["origin_cohort_id"], r["input_mode"]) == \
            (essay["template_id"], essay["llm_model_id"], "orig", "prompt")

    # `daydream replay` writes the cross-experiment tables too, byte for byte the same
    before = (cross / "aggregated_scores.csv").read_bytes()
    (cross / "aggregated_scores.csv").unlink()
    result = run_daydream(project, "replay", "--data-root", str(data), roots=False)
    assert result.returncode == 0, output_of(result)
    assert (cross / "aggregated_scores.csv").read_bytes() == before

    # select-top-essays on the cross-experiment table: the essays tied at the best mean of the
    # per-judge best clarity scores
    best = {}
    for r in cross_rows:
        if r["evaluation_template"] == "clarity-v1":
            key = (r["parent_gen_id"], r["evaluation_llm_model"])
            best[key] = max(best.get(key, -1.0), float(r["score"]))
    means = {e: (best[(e, "sonnet_4")] + best[(e, "gemini_25_flash")]) / 2 for e, _ in best}
    top = max(means.values())
    result = run_daydream(project, "select-top-essays", "--cohort-id", "next", "--template", "clarity-v1",
                          "--average-models", "sonnet_4", "gemini_25_flash", "--max-only")
    assert result.returncode == 0, output_of(result)
    with open(data / "curation" / "top_essay_candidates.csv", newline="") as fh:
        chosen = list(csv.DictReader(fh))
    assert sorted(r["essay_gen_id"] for r in chosen) == sorted(e for e, m in means.items() if m == top)
    assert {float(r["avg_score"]) for r in chosen} == {top}


# ----------------------------------------------------------------------------- select-top-essays

SCORES_CSV = """\
parent_gen_id,gen_id,evaluation_template,evaluation_llm_model,score,error
e1,v1,nov,sonnet-4,8.0,
e1,v2,nov,gemini_25_pro,7.0,
e2,v3,nov,sonnet-4,9.0,
e2,v4,nov,gemini_25_pro,6.0,
e3,v5,nov,sonnet-4,7.0,
e3,v6,nov,sonnet-4,,missing parsed.txt
e4,v7,nov,other,10.0,
e5,v8,cla,sonnet-4,10.0,
"""


@pytest.fixture
def scored(project):
    path = project.data_root / "7_cross_experiment" / "aggregated_scores.csv"
    path.parent.mkdir(parents=True)
    path.write_text(SCORES_CSV, encoding="utf-8")
    return project


def select(project, *args):
    return run_daydream(project, "select-top-essays", "--cohort-id", " next ", "--template", "nov", *args)


def candidates(project):
    with open(project.data_root / "curation" / "top_essay_candidates.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_select_top_n(scored):
    result = select(scored, "--top-n", "2")
    assert result.returncode == 0, output_of(result)
    out = scored.data_root / "curation" / "top_essay_candidates.csv"
    assert result.stdout.splitlines()[0] == f"Wrote candidate list with 2 essays to {out}"
    rows = candidates(scored)
    assert list(rows[0]) == ["selection_rank", "selected", "essay_gen_id", "avg_score", "max_score",
                             "models_covered", "score__gemini_25_pro", "score__sonnet-4", "evaluation_template",
                             "source_models", "selection_method", "selection_limit", "proposed_cohort_id"]
    # e1: (8 + 7) / 2 = 7.5, e2: (9 + 6) / 2 = 7.5 -> tie broken by id; e3: 7.0; e4's judge is not averaged
    assert [(r["selection_rank"], r["selected"], r["essay_gen_id"], r["avg_score"], r["max_score"], r["models_covered"])
            for r in rows] == [("1", "True", "e1", "7.5", "8.0", "2"), ("2", "True", "e2", "7.5", "9.0", "2")]
    assert (rows[0]["source_models"], rows[0]["selection_method"], rows[0]["selection_limit"],
            rows[0]["proposed_cohort_id"]) == ("sonnet-4, gemini_25_pro", "top_n", "2", "next")


def test_select_score_span_max_only_and_overwrite(scored):
    assert select(scored, "--score-span", "0.5").returncode == 0
    assert [r["essay_gen_id"] for r in candidates(scored)] == ["e1", "e2", "e3"]
    assert candidates(scored)[2]["score__gemini_25_pro"] == "" and candidates(scored)[0]["selection_limit"] == "0.5"

    refused = select(scored, "--max-only")
    assert refused.returncode == 2 and "output already exists at" in refused.stderr
    assert "rerun with --overwrite or set --output" in refused.stderr and len(candidates(scored)) == 3

    assert select(scored, "--max-only", "--overwrite", "--score-span", "9").returncode == 0
    rows = candidates(scored)
    assert [(r["essay_gen_id"], r["selection_method"], r["selection_limit"]) for r in rows] == \
        [("e1", "max_only", ""), ("e2", "max_only", "")]


def test_select_errors(scored, tmp_path):
    empty = select(scored, "--average-models", "nobody")
    assert empty.returncode == 2 and "ERROR [DATA_MISSING]" in empty.stderr and "'selection_empty'" in empty.stderr
    assert not (scored.data_root / "curation" / "top_essay_candidates.csv").exists()
    missing = select(scored, "--aggregated-scores", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2 and f"aggregated_scores not found: {tmp_path / 'nope.csv'}" in missing.stderr
    (tmp_path / "empty.csv").write_text("")
    unreadable = select(scored, "--aggregated-scores", str(tmp_path / "empty.csv"))
    assert unreadable.returncode == 2 and f"{tmp_path / 'empty.csv'}: not a readable CSV" in unreadable.stderr
    other = select(scored, "--average-models", "other", "--output", "picked.csv")
    assert other.returncode == 0 and (scored.root / "picked.csv").read_text().count("\n") == 2
