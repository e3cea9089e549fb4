"""Curated cohorts (pipeline/curation.py, `daydream build-cohort-from-list`): the original's
select -> edit -> build-from-list workflow (ORIGINAL_OUTPUTS.md §3.3-§3.4), then re-judging the
chosen essays with a new judge through the printed spec, without regenerating anything."""
import csv
import json

import pytest
import yaml

from conftest import SHARED_RAW_ROOT, SMALL, make_project, output_of, run_daydream, run_luigi, write_spec

MEMBERSHIP_HEADER = "stage,gen_id,origin_cohort_id,parent_gen_id,combo_id,template_id,llm_model_id,replicate"

# SMALL with a third concept and a second judge: 3 drafts -> 3 essays -> 2 judges each = 12 LLM calls
BASE = SMALL.replace("critic-filter]", "critic-filter, feedback-flywheel]").replace(
    "evaluation_llm: [sonnet_4]", "evaluation_llm: [sonnet_4, gemini_25_flash]")
NEW_JUDGE, NEW_JUDGE_MODEL = "deepseek_r1_f", "deepseek/deepseek-r1:free"


def read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def snapshot(project):
    """(stage, gen_id) -> (raw.txt bytes, mtime_ns) of every generation in the store."""
    out = {}
    for raw in (project.data_root / "gens").glob("*/*/raw.txt"):
        out[(raw.parent.parent.name, raw.parent.name)] = (raw.read_bytes(), raw.stat().st_mtime_ns)
    return out


def hint_spec(stdout):
    """(spec path, spec text) of the re-judge hint build-cohort-from-list prints."""
    lines = stdout.splitlines()
    intro = next(i for i, line in enumerate(lines) if line.startswith("To re-judge these essays"))
    path = lines[intro].rsplit(" save this as ", 1)[1].rstrip(":")
    return path, "".join(line[2:] + "\n" for line in lines[intro + 1:intro + 3])


def test_curated_cohort_reuses_everything_and_a_new_judge_buys_only_its_evaluations(project, stub):
    write_spec(project, "base", BASE)
    result = run_luigi(project, "RunCohort", "--cohort-id", "base", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    assert len(stub.requests) == 12
    # RunCohort already writes the cross-experiment table select-top-essays reads
    assert (project.data_root / "7_cross_experiment" / "aggregated_scores.csv").exists()

    result = run_daydream(project, "select-top-essays", "--cohort-id", "cur", "--template", "clarity-v1",
                          "--average-models", "sonnet_4", "gemini_25_flash", "--top-n", "2")
    assert result.returncode == 0, output_of(result)
    assert "then run `daydream build-cohort-from-list --cohort-id cur` to make the cohort" in result.stdout
    listed = project.data_root / "curation" / "top_essay_candidates.csv"
    chosen = [r["essay_gen_id"] for r in read_rows(listed)]
    assert len(chosen) == 2

    before = snapshot(project)
    result = run_daydream(project, "build-cohort-from-list", "--cohort-id", "cur")
    assert result.returncode == 0, output_of(result)
    folder = project.data_root / "cohorts" / "cur"
    assert f"Wrote membership with 8 rows to {folder / 'membership.csv'}" in result.stdout
    assert (folder / "membership.csv").read_text().splitlines()[0] == MEMBERSHIP_HEADER
    assert (folder / "curation" / "essay_candidates.csv").read_bytes() == listed.read_bytes()
    assert (folder / "curation" / "essays.csv").read_text() == "essay_gen_id\n" + "".join(f"{e}\n" for e in chosen)

    # per essay in list order: its draft, the essay, its two existing evaluations (the base cohort's)
    base = {r["gen_id"]: r for r in project.membership("base")}
    rows = project.membership("cur")
    expected = []
    for essay in chosen:
        expected += [base[essay]["parent_gen_id"], essay]
        expected += [g for g, r in base.items() if r["stage"] == "evaluation" and r["parent_gen_id"] == essay]
    assert [r["gen_id"] for r in rows] == expected
    for r in rows:
        assert r["origin_cohort_id"] == "cur"
        assert {k: v for k, v in r.items() if k != "origin_cohort_id"} == \
            {k: v for k, v in base[r["gen_id"]].items() if k != "origin_cohort_id"}

    result = run_luigi(project, "RunCohort", "--cohort-id", "cur", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    assert len(stub.requests) == 12                      # nothing bought: it re-scopes what exists
    aggregated = read_rows(folder / "reports" / "parsing" / "aggregated_scores.csv")
    assert [r["gen_id"] for r in aggregated] == [r["gen_id"] for r in rows if r["stage"] == "evaluation"]
    assert all(r["score"] and not r["error"] for r in aggregated)
    assert (folder / "reports" / "summary.md").exists() and (folder / "run_complete.json").exists()
    assert snapshot(project) == before
    assert project.meta("essay", chosen[0])["origin_cohort_id"] == "base"   # the creator stays

    # a second curated cohort of the same essays, re-judged through the printed spec with a new judge
    result = run_daydream(project, "build-cohort-from-list", "--cohort-id", "rejudge")
    assert result.returncode == 0, output_of(result)
    spec_path, spec_text = hint_spec(result.stdout)
    assert spec_path == str(project.cohorts_root / "rejudge" / "spec.yaml")
    spec = yaml.safe_load(spec_text)
    assert spec["axes"]["evaluation_template"] == ["clarity-v1"]
    assert sorted(spec["axes"]["evaluation_llm"]) == ["gemini_25_flash", "sonnet_4"]
    spec["axes"]["evaluation_llm"].append(NEW_JUDGE)
    write_spec(project, "rejudge", yaml.safe_dump(spec, sort_keys=False))
    result = run_luigi(project, "RunCohort", "--cohort-id", "rejudge", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    new = stub.requests[12:]
    assert len(new) == len(chosen) * 1 and {r["model"] for r in new} == {NEW_JUDGE_MODEL}
    rejudged = project.membership("rejudge")
    assert [r["gen_id"] for r in rejudged if r["stage"] == "essay"] == chosen
    evaluations = [r for r in rejudged if r["stage"] == "evaluation"]
    assert len(evaluations) == 6 and {r["gen_id"] for r in rows if r["stage"] == "evaluation"} < \
        {r["gen_id"] for r in evaluations}
    after = snapshot(project)
    assert {k: after[k] for k in before} == before       # no draft, essay or old evaluation rewritten
    assert sorted(k[0] for k in set(after) - set(before)) == ["evaluation"] * len(chosen)

    # the hint's other place, the original's data/cohorts/<id>/spec/config.yaml, reads the same list
    result = run_daydream(project, "build-cohort-from-list", "--cohort-id", "orig")
    assert result.returncode == 0, output_of(result)
    last = result.stdout.splitlines()[-1]
    original = project.data_root / "cohorts" / "orig" / "spec" / "config.yaml"
    assert last == f"(saved at the original's place, {original}, it reads " \
                   "essay_gen_id: '@file:../curation/essays.csv')"
    spec_text = hint_spec(result.stdout)[1]
    judges = yaml.safe_load(spec_text)["axes"]["evaluation_llm"]
    assert sorted(judges) == sorted(["sonnet_4", "gemini_25_flash", NEW_JUDGE])   # every judge so far
    original.parent.mkdir()
    original.write_text(spec_text.replace("'@file:../../data/cohorts/orig/curation/essays.csv'",
                                          "'@file:../curation/essays.csv'"))
    plan = run_daydream(project, "plan", "orig")
    assert plan.returncode == 0, output_of(plan)
    assert f"cohort orig: {original}" in plan.stdout
    # each essay, its draft and its evaluations: all made already
    calls = len(chosen) * (2 + len(judges))
    assert f"LLM calls: {calls} in all, {calls} already done, 0 to make" in plan.stdout


# ----------------------------------------------------------------------------- bad input, no LLM

def meta(project, stage, gen_id, **fields):
    path = project.gen_dir(stage, gen_id) / "metadata.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": stage, "gen_id": gen_id, **fields}))


AGGREGATED = """\
parent_gen_id,gen_id,evaluation_template,evaluation_llm_model,score,error
e_one,v_1,nov,j1,7.0,
e_one,v_2,nov,j2,,missing parsed.txt
e_two,v_3,nov,j1,5.0,
e_one,v_4,cla,j1,9.0,
e_one,v_1,nov,j1,7.0,
e_none,v_5,nov,j1,3.0,
e_orphan,v_6,nov,j1,4.0,
"""


def store(project, candidates):
    """A small store written by hand: one draft, two essays of it, four evaluations."""
    meta(project, "draft", "d_x", combo_id="c1", template_id="dt", llm_model_id="m1", replicate=1)
    meta(project, "essay", "e_one", parent_gen_id="d_x", template_id="et", llm_model_id="m1", replicate="2")
    meta(project, "essay", "e_two", parent_gen_id="d_x", template_id="et", llm_model_id="m1")
    meta(project, "essay", "e_orphan", template_id="et", llm_model_id="m1")
    for gen_id, essay, template, judge in [("v_1", "e_one", "nov", "j1"), ("v_2", "e_one", "nov", "j2"),
                                           ("v_3", "e_two", "nov", "j1"), ("v_4", "e_one", "cla", "j1")]:
        meta(project, "evaluation", gen_id, parent_gen_id=essay, template_id=template, llm_model_id=judge, replicate=1)
    table = project.data_root / "7_cross_experiment" / "aggregated_scores.csv"
    table.parent.mkdir(parents=True)
    table.write_text(AGGREGATED)
    listed = project.data_root / "curation" / "top_essay_candidates.csv"
    listed.parent.mkdir(parents=True)
    listed.write_text(candidates)
    return listed


def build(project, *args):
    return run_daydream(project, "build-cohort-from-list", "--cohort-id", "cur", *args)


def refused(result, *fragments):
    assert result.returncode == 2, output_of(result)
    assert result.stderr.startswith("daydream: error: "), output_of(result)
    for fragment in fragments:
        assert fragment in result.stderr, output_of(result)
    return True


def test_selected_rows_in_list_order_with_every_evaluation_of_the_template(project):
    listed = store(project, "selection_rank,selected,essay_gen_id,evaluation_template\n"
                            "1,True,e_two,nov\n2,no,e_orphan,nov\n3,YES,e_one,nov\n4,,e_orphan,nov\n5,1,e_two,nov\n")
    result = build(project)
    assert result.returncode == 0, output_of(result)
    folder = project.data_root / "cohorts" / "cur"
    # the draft once; e_one's two nov evaluations (the failed one too), not its cla one
    assert (folder / "membership.csv").read_text() == MEMBERSHIP_HEADER + "\n" + (
        "draft,d_x,cur,,c1,dt,m1,1\n"
        "essay,e_two,cur,d_x,c1,et,m1,1\n"
        "evaluation,v_3,cur,e_two,c1,nov,j1,1\n"
        "essay,e_one,cur,d_x,c1,et,m1,2\n"
        "evaluation,v_1,cur,e_one,c1,nov,j1,1\n"
        "evaluation,v_2,cur,e_one,c1,nov,j2,1\n")
    assert (folder / "curation" / "essays.csv").read_text() == "essay_gen_id\ne_two\ne_one\n"
    kept = listed.read_text().splitlines()
    assert (folder / "curation" / "essay_candidates.csv").read_text().splitlines() == [kept[i] for i in (0, 1, 3, 5)]
    assert "3 existing nov evaluations; 1 without a score yet will be run" in result.stdout
    assert "evaluation_llm: [j1, j2]" in result.stdout

    # the same list again: refused without --overwrite, nothing changed; with it, replaced
    before = (folder / "membership.csv").read_bytes()
    assert refused(build(project, "--template", "cla"), f"membership already exists at {folder / 'membership.csv'}",
                   "rerun with --overwrite or use a new cohort id")
    assert (folder / "membership.csv").read_bytes() == before
    result = build(project, "--template", "cla", "--overwrite")
    assert refused(result, "essay e_two", f"{listed}:2", "has no cla evaluation of it")
    listed.write_text("essay_gen_id,selected\ne_one,true\n")
    assert build(project, "--template", "cla", "--overwrite").returncode == 0
    assert [r["gen_id"] for r in project.membership("cur")] == ["d_x", "e_one", "v_4"]


def test_bad_lists_are_refused_and_nothing_is_written(project, tmp_path):
    folder = project.data_root / "cohorts" / "cur"
    missing = project.data_root / "curation" / "top_essay_candidates.csv"
    assert refused(build(project), f"candidate list not found at {missing}", "daydream select-top-essays")

    listed = store(project, "essay_gen_id,evaluation_template\ne_one,nov\ne_two,cla\n")
    assert refused(build(project), f"{listed}: the selected rows name several evaluation templates in column "
                                   "evaluation_template (nov, cla); pass --template to pick one")

    listed.write_text("essay_gen_id,template\ne_one,nov\ne_gone,nov\n")
    gone = project.gen_dir("essay", "e_gone") / "metadata.json"
    assert refused(build(project), f"essay e_gone ({listed}:3): essay e_gone has no {gone}")

    listed.write_text("parent_gen_id\ne_orphan\n")
    assert refused(build(project, "--template", "nov"), "essay e_orphan", "has no parent_gen_id")

    corrupt = project.gen_dir("essay", "e_two") / "metadata.json"
    corrupt.write_text("{")
    listed.write_text("essay_gen_id\ne_two\n")
    assert refused(build(project, "--template", "nov"), f"essay e_two ({listed}:2): {corrupt}: corrupt JSON")

    listed.write_text("essay_gen_id,selected\ne_one,false\n")
    assert refused(build(project, "--template", "nov"), f"{listed}: no selected essays")

    listed.write_text("essay,score\ne_one,1\n")
    assert refused(build(project, "--template", "nov"), f"{listed}: no essay_gen_id column")

    listed.write_text("essay_gen_id\ne_one\n")
    assert refused(build(project), "cannot tell the evaluation template", "pass --template")
    elsewhere = tmp_path / "nope.csv"
    assert refused(build(project, "--template", "nov", "--aggregated-scores", str(elsewhere)),
                   f"aggregated scores not found at {elsewhere}", "daydream replay")
    assert refused(build(project, "--template", "zzz"), "no zzz evaluation of any selected essay")
    assert not folder.exists()

    # a cohort with a spec gets its membership from that spec: a list would not last
    write_spec(project, "cur", "axes: {}\n")
    assert refused(build(project, "--template", "nov"), "cohort cur is defined by its spec",
                   str(project.cohorts_root / "cur" / "spec.yaml"), "use a new cohort id")
    assert not folder.exists()


# ----------------------------------------------------------------------------- an original store

ORIGINAL_DATA = SHARED_RAW_ROOT.parent / "original_store" / "data"


@pytest.mark.skipif(not ORIGINAL_DATA.is_dir() or not SHARED_RAW_ROOT.is_dir(),
                    reason=f"no original store at {ORIGINAL_DATA}")
def test_the_workflow_on_an_imported_original_store(tmp_path, stub):
    """A researcher's own store: the original's default judges (sonnet-4, gemini_25_pro) and
    metadata; the curated cohort lists what the original's script would, and runs for free."""
    project = make_project(tmp_path / "proj", raw_root=SHARED_RAW_ROOT)
    for command in (["import-original", str(ORIGINAL_DATA)], ["replay", "--data-root", str(project.data_root)]):
        result = run_daydream(project, *command, roots=command[0] != "replay")
        assert result.returncode == 0, output_of(result)
    result = run_daydream(project, "select-top-essays", "--cohort-id", "best", "--template", "novelty-v2",
                          "--top-n", "2")
    assert result.returncode == 0, output_of(result)
    result = run_daydream(project, "build-cohort-from-list", "--cohort-id", "best")
    assert result.returncode == 0, output_of(result)

    def src_meta(stage, gen_id):
        return json.loads((ORIGINAL_DATA / "gens" / stage / gen_id / "metadata.json").read_text())

    chosen = [r["essay_gen_id"] for r in read_rows(project.data_root / "curation" / "top_essay_candidates.csv")]
    rows = project.membership("best")
    at = 0
    for essay in chosen:
        draft = src_meta("essay", essay)["parent_gen_id"]
        assert [(r["stage"], r["gen_id"]) for r in rows[at:at + 2]] == [("draft", draft), ("essay", essay)]
        judged = sorted(p.name for p in (ORIGINAL_DATA / "gens" / "evaluation").iterdir()
                        if src_meta("evaluation", p.name)["parent_gen_id"] == essay
                        and src_meta("evaluation", p.name)["template_id"] == "novelty-v2")
        assert len(judged) == 4    # 2 judges x 2 replicates
        assert sorted(r["gen_id"] for r in rows[at + 2:at + 6]) == judged
        for r in rows[at:at + 6]:
            m = src_meta(r["stage"], r["gen_id"])
            assert (r["template_id"], r["llm_model_id"], r["replicate"], r["origin_cohort_id"]) == \
                (m["template_id"], m["llm_model_id"], str(m.get("replicate", 1)), "best")
        at += 6
    assert at == len(rows)

    result = run_luigi(project, "RunCohort", "--cohort-id", "best", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    assert stub.requests == []
