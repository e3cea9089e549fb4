"""Ids, combos and cohort membership: deterministic, shared across cohorts, errors name the spec."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import ids
from pipeline.catalog import load_catalog
from pipeline.combos import generate_combos, read_mappings, record_combos
from pipeline.errors import SpecError, StoreError
from pipeline.events import EventLog, read_events
from pipeline.membership import compile_cohort, read_membership
from pipeline.paths import Paths
from pipeline.store import cohort_is_current, write_cohort

from conftest import SMALL, output_of, run_daydream, run_luigi, write_spec

REPO = Path(__file__).resolve().parents[1]
SHARED_RAW = REPO.parent / "shared" / "daydreaming" / "1_raw"

SPEC = """
concepts:
  ids: [idle-recombination, critic-filter, feedback-flywheel]
  k_max: 2
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  essay_template: [short-essay-v1, draft-as-essay]
  essay_llm: [sonnet_4, gemini_25_flash]
  evaluation_template: [clarity-v1]
  evaluation_llm: [sonnet_4]
  evaluation_template_replicate: [1, 2]
"""


@pytest.fixture
def paths(tmp_path):
    return Paths(data_root=tmp_path / "data", raw_root=REPO / "data" / "1_raw", cohorts_root=tmp_path / "cohorts")


def spec(paths, cohort_id, text):
    path = paths.cohorts_root / cohort_id / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_gen_ids_are_stable_and_sensitive_to_every_field():
    base = ("combo_v1_0123456789ab", "links-brainstorm-v1", "sonnet_4", 1)
    d = ids.gen_id("draft", ids.signature("draft", *base))
    assert d == ids.gen_id("draft", ids.signature("draft", *base)) and d.startswith("d_") and len(d) <= 18
    for i, other in enumerate(["combo_v1_ffffffffffff", "rolling-idea-v1", "gemini_25_flash", 2]):
        changed = list(base)
        changed[i] = other
        assert ids.gen_id("draft", ids.signature("draft", *changed)) != d
    assert ids.gen_id("essay", ids.signature("essay", d, "short-essay-v1", None, 1)).startswith("e_")


def test_gen_ids_are_the_same_in_another_process():
    code = "from pipeline import ids; print(ids.gen_id('draft', ('combo_v1_0123456789ab', 't', 'm', 1)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout.strip()
    assert out == ids.gen_id("draft", ("combo_v1_0123456789ab", "t", "m", 1))


def test_combo_id_matches_the_original_scheme():
    import hashlib
    expected = "combo_v1_" + hashlib.sha256(b"a|b|c|paragraph|3").hexdigest()[:12]
    assert ids.combo_id(["c", "a", "b"], "paragraph", 3) == expected
    assert len(generate_combos(list("abcde"), "sentence", 3)) == 10


def test_combo_mappings_are_append_only(tmp_path):
    path = tmp_path / "combo_mappings.csv"
    combos = generate_combos(["a", "b", "c"], "paragraph", 2)
    assert record_combos(path, combos, "paragraph", 2) == 3
    before = path.read_bytes()
    assert record_combos(path, combos, "paragraph", 2) == 0
    assert path.read_bytes() == before
    assert read_mappings(path)[next(iter(combos))]["concepts"] == ("a", "b")
    clash = {next(iter(combos)): ("a", "z")}
    with pytest.raises(StoreError, match="append-only"):
        record_combos(path, clash, "paragraph", 2)
    assert path.read_bytes() == before


def test_membership_counts_and_lineage(paths):
    spec(paths, "c1", SPEC)
    cat = load_catalog(paths)
    cohort = compile_cohort(paths, "c1", cat)
    # 3 combos; essays: short-essay x 2 llms + copy (llm-independent) = 3 per draft
    assert cohort.counts == {"draft": 3, "essay": 9, "evaluation": 18}
    by_id = {r["gen_id"]: r for r in cohort.rows}
    for row in cohort.rows:
        assert row["origin_cohort_id"] == "c1"
        if row["stage"] != "draft":
            assert row["parent_gen_id"] in by_id
            assert row["combo_id"] == by_id[row["parent_gen_id"]]["combo_id"]
    copies = [r for r in cohort.rows if r["template_id"] == "draft-as-essay"]
    assert len(copies) == 3 and all(r["llm_model_id"] == "sonnet_4" for r in copies)  # the first essay_llm
    # the essay model is not in the essay id: the second model's essay is a collision variant
    essays = sorted((r for r in cohort.rows if r["template_id"] == "short-essay-v1"),
                    key=lambda r: (r["parent_gen_id"], r["llm_model_id"] != "sonnet_4"))
    assert [r["llm_model_id"] for r in essays] == ["sonnet_4", "gemini_25_flash"] * 3
    for first, second in zip(essays[::2], essays[1::2]):
        sig = ids.signature("essay", first["parent_gen_id"], "short-essay-v1", None, 1)
        assert second["parent_gen_id"] == first["parent_gen_id"]
        assert (first["gen_id"], second["gen_id"]) == (ids.gen_id("essay", sig), ids.gen_id("essay", sig, 1))
        assert second["gen_id"].endswith("-1")
    assert [r["replicate"] for r in cohort.rows if r["stage"] != "evaluation"] == [1] * 12


def test_row_order_does_not_change_ids_and_shared_drafts_share_ids(paths):
    spec(paths, "a", SPEC)
    reordered = SPEC.replace("[idle-recombination, critic-filter, feedback-flywheel]",
                             "[feedback-flywheel, idle-recombination, critic-filter]")
    spec(paths, "b", reordered)
    other = SPEC.replace("evaluation_template: [clarity-v1]", "evaluation_template: [mechanism-check-v1]")
    spec(paths, "c", other)
    cat = load_catalog(paths)
    a, b, c = (compile_cohort(paths, x, cat) for x in "abc")
    key = lambda coh: sorted(tuple(sorted((k, v) for k, v in r.items() if k != "origin_cohort_id")) for r in coh.rows)
    assert key(a) == key(b)
    drafts = lambda coh: {r["gen_id"] for r in coh.rows if r["stage"] == "draft"}
    assert drafts(a) == drafts(c)
    evals = lambda coh: {r["gen_id"] for r in coh.rows if r["stage"] == "evaluation"}
    assert not evals(a) & evals(c)


def test_a_built_essay_keeps_its_model_whatever_order_later_specs_list_models_in(paths):
    spec(paths, "a", SPEC)
    spec(paths, "b", SPEC.replace("[sonnet_4, gemini_25_flash]", "[gemini_25_flash, sonnet_4]"))
    cat = load_catalog(paths)
    write_cohort(paths, compile_cohort(paths, "a", cat), EventLog(paths.events_dir))
    model_of = lambda coh: {r["gen_id"]: r["llm_model_id"] for r in coh.rows if r["template_id"] == "short-essay-v1"}
    assert model_of(compile_cohort(paths, "b", cat)) == model_of(compile_cohort(paths, "a", cat))


@pytest.mark.parametrize("text, fragment", [
    (SPEC.replace("[clarity-v1]", "[no-such-rubric]"), "evaluation_template 'no-such-rubric'"),
    (SPEC.replace("draft_llm: [gemini_25_flash]", "draft_llm: [gpt-9]"), "draft_llm 'gpt-9'"),
    (SPEC.replace("k_max: 2", "k_max: 9"), "k_max"),
    (SPEC.replace("critic-filter,", "no-such-concept,"), "no-such-concept"),
    (SPEC.replace("concepts:", "concept:"), "concept"),
    (SPEC + "  colour: [red]\n", "unknown axis 'colour': a cohort row knows combo, combo_id, draft_gen_id"),
    (SPEC + "rules:\n  tuples:\n    looks: {axes: [colour, shade], items: [[red, dark]]}\n",
     "unknown axis 'colour': a cohort row knows combo, combo_id"),
    (SPEC.replace("[1, 2]", "[0]"), "evaluation_template_replicate must be a positive integer, got '0'"),
    (SPEC + "  draft_model: [sonnet_4]\n", "ambiguous aliases for draft_llm: draft_llm='gemini_25_flash' and draft_model='sonnet_4'"),
    (SPEC.replace("essay_llm: [sonnet_4, gemini_25_flash]", "essay_llm: [None]"), "essay_llm 'None' is not in llm_models.csv"),
    (SPEC + "axes: [\n", "YAML syntax error"),
])
def test_spec_errors_name_the_spec_and_write_nothing(paths, text, fragment):
    path = spec(paths, "bad", text)
    cat = load_catalog(paths)
    with pytest.raises(SpecError) as err:
        compile_cohort(paths, "bad", cat)
    assert str(path) in str(err.value) and fragment in str(err.value)
    assert not paths.data_root.exists()


def test_unknown_or_unsafe_cohort_ids(paths):
    cat = load_catalog(paths)
    with pytest.raises(SpecError, match="unknown cohort 'nope'"):
        compile_cohort(paths, "nope", cat)
    for bad in ["../x", "/etc", "", "a\0b", "x" * 300]:
        with pytest.raises(Exception) as err:
            compile_cohort(paths, bad, cat)
        assert "invalid cohort id" in str(err.value)


def test_build_writes_membership_and_seeds_and_is_idempotent(paths):
    spec(paths, "c1", SPEC)
    cat = load_catalog(paths)
    events = EventLog(paths.events_dir)
    cohort = compile_cohort(paths, "c1", cat)
    assert write_cohort(paths, cohort, events) is True
    rows = read_membership(paths.membership_csv("c1"))
    assert len(rows) == 30
    meta = (paths.gen_dir("draft", rows[0]["gen_id"]) / "metadata.json").read_text()
    assert '"origin_cohort_ids": [\n    "c1"\n  ]' in meta and "concept_ids" in meta

    def snapshot():
        return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths.data_root.rglob("*") if p.is_file()}

    before = snapshot()
    assert write_cohort(paths, compile_cohort(paths, "c1", cat), events) is False
    assert snapshot() == before
    built = [e for e in read_events(paths.events_dir).events if e["type"] == "cohort_built"]
    assert len(built) == 1 and built[0]["counts"]["evaluation"] == 18 and len(built[0]["members"]) == 30


def test_an_edit_of_a_list_outside_the_spec_folder_rebuilds_the_cohort(paths):
    # as this project's build-cohort-from-list hint writes it: a list kept beside the data
    lists = paths.cohorts_root / "lists"
    lists.mkdir(parents=True)
    (lists / "judges.txt").write_text("clarity-v1\n")
    spec(paths, "c1", SPEC.replace("[clarity-v1]", "'@file:../lists/judges.txt'"))
    cat = load_catalog(paths)
    events = EventLog(paths.events_dir)
    assert write_cohort(paths, compile_cohort(paths, "c1", cat), events) is True
    assert cohort_is_current(paths, "c1", cat)
    (lists / "judges.txt").write_text("clarity-v1\nmechanism-check-v1\n")
    assert not cohort_is_current(paths, "c1", cat)
    assert write_cohort(paths, compile_cohort(paths, "c1", cat), events) is True
    assert cohort_is_current(paths, "c1", cat)
    assert len([r for r in read_membership(paths.membership_csv("c1")) if r["stage"] == "evaluation"]) == 36
    (lists / "judges.txt").unlink()
    assert not cohort_is_current(paths, "c1", cat)


def test_second_cohort_adds_its_id_to_shared_generations(paths):
    spec(paths, "a", SPEC)
    spec(paths, "b", SPEC.replace("[clarity-v1]", "[mechanism-check-v1]"))
    cat = load_catalog(paths)
    events = EventLog(paths.events_dir)
    for cid in "ab":
        write_cohort(paths, compile_cohort(paths, cid, cat), events)
    draft = next(r for r in read_membership(paths.membership_csv("b")) if r["stage"] == "draft")
    meta = json.loads((paths.gen_dir("draft", draft["gen_id"]) / "metadata.json").read_text())
    assert meta["origin_cohort_ids"] == ["a", "b"]


def test_hand_edited_membership_with_missing_parent_is_refused(paths, tmp_path):
    spec(paths, "c1", SPEC)
    cat = load_catalog(paths)
    write_cohort(paths, compile_cohort(paths, "c1", cat), EventLog(paths.events_dir))
    path = paths.membership_csv("c1")
    lines = path.read_text().splitlines()
    kept = [lines[0]] + [l for l in lines[1:] if not l.startswith("draft,")]
    path.write_text("\n".join(kept) + "\n")
    with pytest.raises(SpecError) as err:
        read_membership(path)
    assert "membership.csv:2" in str(err.value) and "parent" in str(err.value)


@pytest.mark.skipif(not SHARED_RAW.exists(), reason="original catalog not present")
def test_original_two_phase_cohort_compiles_against_the_original_catalog(tmp_path):
    paths = Paths(data_root=tmp_path / "data", raw_root=SHARED_RAW, cohorts_root=REPO / "cohorts")
    cohort = compile_cohort(paths, "original-two-phase", load_catalog(paths))
    counts = cohort.counts
    assert counts["draft"] == 5 * 3 * 2            # 5 combos (5 choose 4) x 3 templates x 2 models
    # essays: 2 llm essay templates tied to the draft model + 1 copy
    assert counts["essay"] == counts["draft"] * 3
    assert counts["evaluation"] == counts["essay"] * 3 * 2 * 2
    copies = [r for r in cohort.rows if r["template_id"] == "parsed-from-links-v1"]
    assert copies and all(r["llm_model_id"] in ("gemini_25_pro", "deepseek_r1_p") for r in copies)


# --- the original's planner semantics: aliases, replicates, unknown axes ---------------------------

def test_field_aliases_and_replicate_spellings_give_the_same_ids(paths):
    spec(paths, "a", SMALL)
    cat = load_catalog(paths)
    a = compile_cohort(paths, "a", cat)
    write_cohort(paths, a, EventLog(paths.events_dir))  # records the combos for the explicit specs below
    combos = sorted({r["combo_id"] for r in a.rows})
    # SMALL with its combos listed instead of generated from concepts
    plain = SMALL.split("\n", 1)[1].replace("axes:\n", f"axes:\n  combo_id: [{', '.join(combos)}]\n") \
        + "  evaluation_replicate: [2]\n"
    aliased = (plain.replace("combo_id:", "combo:").replace("draft_llm:", "draft_model:")
               .replace("evaluation_replicate: [2]", "evaluation_rep: ['2']")
               + "  generation_llm: [gemini_25_flash]\n  draft_rep: [1]\n  essay_template_replicate: ['1']\n")
    spec(paths, "plain", plain)
    spec(paths, "aliased", aliased)
    ids_of = lambda cid: [(r["stage"], r["gen_id"]) for r in compile_cohort(paths, cid, cat).rows]
    assert ids_of("plain") == ids_of("aliased")
    assert {r["replicate"] for r in compile_cohort(paths, "plain", cat).rows if r["stage"] == "evaluation"} == {2}


def test_replicates_default_to_one_whatever_replication_config_says(paths, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(paths.raw_root, raw)
    (raw / "replication_config.csv").write_text("stage,replicates\ndraft,2\nessay,2\nevaluation,3\n")
    paths = Paths(data_root=paths.data_root, raw_root=raw, cohorts_root=paths.cohorts_root)
    spec(paths, "c1", SPEC.replace("  evaluation_template_replicate: [1, 2]\n", ""))
    cohort = compile_cohort(paths, "c1", load_catalog(paths))
    assert cohort.counts == {"draft": 3, "essay": 9, "evaluation": 9}
    assert {r["replicate"] for r in cohort.rows} == {1}


def test_an_unknown_cohort_lists_the_cohorts_of_every_spec_location(paths):
    spec(paths, "mine", SPEC)
    theirs = paths.cohort_dir("theirs") / "spec" / "config.yaml"
    theirs.parent.mkdir(parents=True)
    theirs.write_text(SPEC)
    assert paths.spec_file("theirs") == theirs
    with pytest.raises(SpecError, match=r"unknown cohort 'nope'.*known cohorts: mine, theirs"):
        compile_cohort(paths, "nope", load_catalog(paths))


def test_a_spec_id_collision_on_disk_gets_the_next_variant(paths):
    spec(paths, "c1", SPEC)
    cat = load_catalog(paths)
    first = compile_cohort(paths, "c1", cat)
    draft = first.rows[0]
    # another generation already sits at this draft's id (as a foreign store might have it)
    squatter = paths.gen_dir("draft", draft["gen_id"]) / "metadata.json"
    squatter.parent.mkdir(parents=True)
    squatter.write_text(json.dumps({"stage": "draft", "gen_id": draft["gen_id"], "combo_id": "combo_v1_other",
                                    "template_id": "links-brainstorm-v1", "llm_model_id": "sonnet_4", "replicate": 1}))
    rows = compile_cohort(paths, "c1", cat).rows
    sig = ids.signature("draft", draft["combo_id"], draft["template_id"], draft["llm_model_id"], 1)
    moved = rows[0]["gen_id"]
    assert moved == ids.gen_id("draft", sig, 1) and moved.endswith("-1") and moved != draft["gen_id"]
    assert all(r["parent_gen_id"] == moved for r in rows if r["stage"] == "essay"
               and r["combo_id"] == draft["combo_id"])
    assert json.loads(squatter.read_text())["combo_id"] == "combo_v1_other"  # left as it was


# --- curated cohorts: existing generations, new judges -------------------------------------------

def test_curated_spec_names_unknown_or_misplaced_gen_ids(paths):
    spec(paths, "c1", SPEC)
    cat = load_catalog(paths)
    base = compile_cohort(paths, "c1", cat)
    write_cohort(paths, base, EventLog(paths.events_dir))
    draft = base.rows[0]["gen_id"]
    curated = "axes:\n  essay_gen_id: [{}]\n  evaluation_template: [clarity-v1]\n  evaluation_llm: [sonnet_4]\n"
    for listed, fragment in [("e_nosuchessay", "essay_gen_id 'e_nosuchessay': no such essay"),
                             (draft, f"no such essay ({paths.gen_dir('essay', draft)}/metadata.json does not "
                                     f"exist); {draft} is a draft")]:
        path = spec(paths, "cur", curated.format(listed))
        with pytest.raises(SpecError) as err:
            compile_cohort(paths, "cur", cat)
        assert str(path) in str(err.value) and fragment in str(err.value)
    essay = next(r["gen_id"] for r in base.rows if r["stage"] == "essay")
    spec(paths, "cur", curated.format(essay) + "  draft_template: [links-brainstorm-v1]\n")
    with pytest.raises(SpecError, match="essay_gen_id takes combo_id, draft_template.* remove the draft_template axis"):
        compile_cohort(paths, "cur", cat)


def test_curated_cohort_from_essay_ids_buys_only_the_new_evaluations(project, stub):
    write_spec(project, "base", SMALL)  # 2 drafts -> 2 essays -> 1 evaluation each (clarity-v1, sonnet_4)
    result = run_luigi(project, "RunCohort", "--cohort-id", "base", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    assert len(stub.requests) == 6
    essay = project.membership("base", "essay")[0]
    kept = {(s, g): project.read(s, g, "raw.txt") for s, g in [("draft", essay["parent_gen_id"]), ("essay", essay["gen_id"])]}

    spec_path = write_spec(project, "rejudge", """\
axes:
  essay_gen_id: '@file:essays.csv'
  evaluation_template: [clarity-v1, mechanism-check-v1]
  evaluation_llm: [sonnet_4, gemini_25_flash]
""")
    (spec_path.parent / "essays.csv").write_text(f"essay_gen_id\n{essay['gen_id']}\n")
    result = run_luigi(project, "RunCohort", "--cohort-id", "rejudge", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    # 4 evaluations of the essay, one of which (clarity-v1 by sonnet_4) the base cohort already has
    new = stub.requests[6:]
    assert len(new) == 3 and sorted(r["model"] for r in new) == \
        ["anthropic/claude-sonnet-4", "google/gemini-2.5-flash", "google/gemini-2.5-flash"]
    rows = project.membership("rejudge")
    assert [(r["stage"], r["gen_id"]) for r in rows[:2]] == [("draft", essay["parent_gen_id"]), ("essay", essay["gen_id"])]
    evaluations = [r for r in rows if r["stage"] == "evaluation"]
    assert len(evaluations) == 4 and {r["parent_gen_id"] for r in evaluations} == {essay["gen_id"]}
    judged = [r["gen_id"] for r in project.membership("base", "evaluation") if r["parent_gen_id"] == essay["gen_id"]]
    assert len(judged) == 1 and judged[0] in {r["gen_id"] for r in evaluations}
    assert {k: project.read(*k, "raw.txt") for k in kept} == kept
    assert project.meta("essay", essay["gen_id"])["origin_cohort_id"] == "base"
    assert (project.data_root / "cohorts" / "rejudge" / "run_complete.json").exists()


def test_a_membership_without_spec_runs_as_it_is(project, stub):
    """The original's build_cohort_from_list.py writes only membership.csv (8 wide columns)."""
    write_spec(project, "base", SMALL)
    result = run_luigi(project, "RunCohort", "--cohort-id", "base", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    rows = [r for r in project.membership("base") if r["gen_id"] != project.membership("base", "evaluation")[1]["gen_id"]]
    # one hand-added evaluation by a new judge, which no run has made yet
    essay = rows[2]
    new_id = ids.gen_id("evaluation", ids.signature("evaluation", essay["gen_id"], "mechanism-check-v1", "sonnet_4", 1))
    rows.append({**essay, "stage": "evaluation", "gen_id": new_id, "parent_gen_id": essay["gen_id"],
                 "template_id": "mechanism-check-v1", "llm_model_id": "sonnet_4", "replicate": "1"})
    listed = project.data_root / "cohorts" / "picked" / "membership.csv"
    listed.parent.mkdir(parents=True)
    listed.write_text("stage,gen_id,origin_cohort_id,parent_gen_id,combo_id,template_id,llm_model_id,replicate\n"
                      + "".join(f"{r['stage']},{r['gen_id']},picked,{r['parent_gen_id']},{r['combo_id']},"
                                f"{r['template_id']},{r['llm_model_id']},{r['replicate']}\n" for r in rows))
    before = listed.read_text()
    result = run_luigi(project, "RunCohort", "--cohort-id", "picked", base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    assert len(stub.requests) == 7 and listed.read_text() == before
    assert project.meta("evaluation", new_id)["origin_cohort_id"] == "picked"
    assert project.read("evaluation", new_id, "parsed.txt").strip()
    status = run_daydream(project, "status", "picked")
    assert status.returncode == 0 and "evaluation" in status.stdout, output_of(status)
    again = run_luigi(project, "RunCohort", "--cohort-id", "picked", base_url=stub.base_url)
    assert again.returncode == 0 and len(stub.requests) == 7


def test_seeding_refuses_metadata_of_another_generation_at_the_same_id(paths):
    spec(paths, "c1", SPEC)
    cohort = compile_cohort(paths, "c1", load_catalog(paths))
    last = cohort.rows[-1]
    # written after the compile looked (e.g. by another build): same id, another rubric
    path = paths.gen_dir(last["stage"], last["gen_id"]) / "metadata.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({**last, "template_id": "mechanism-check-v1", "replicate": str(last["replicate"])}))
    with pytest.raises(StoreError, match=f"{path}: template_id is 'mechanism-check-v1' but cohort c1 derives"):
        write_cohort(paths, cohort, EventLog(paths.events_dir))
    # checked before anything was written
    assert not paths.membership_csv("c1").exists()
    assert [p.parent.name for p in paths.data_root.glob("gens/*/*/metadata.json")] == [last["gen_id"]]
