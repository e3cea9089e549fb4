"""Generation ids are the original project's: recomputed from its store, its cohort, its collisions."""
import csv
import json
import shutil
from pathlib import Path

import pytest

from pipeline import ids
from pipeline.catalog import load_catalog
from pipeline.errors import PipelineError, SpecError
from pipeline.events import EventLog
from pipeline.membership import compile_cohort, read_membership
from pipeline.paths import Paths
from pipeline.store import write_cohort

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "daydreaming"
ORIGINAL_DATA = SHARED / "original_store" / "data"
needs_original = pytest.mark.skipif(not (ORIGINAL_DATA / "gens").exists() or not (SHARED / "1_raw").exists(),
                                    reason="the original's store (../shared/daydreaming) is not present")

def original_membership_ids():
    with open(ORIGINAL_DATA / "cohorts" / "orig-pilot" / "membership.csv", newline="") as fh:
        return [(r["stage"], r["gen_id"]) for r in csv.DictReader(fh)]


@needs_original
def test_every_generation_of_the_original_store_has_the_id_of_its_signature():
    metas = sorted((ORIGINAL_DATA / "gens").glob("*/*/metadata.json"))
    assert len(metas) == 40
    for path in metas:
        stage = path.parent.parent.name
        meta = json.loads(path.read_text())
        assert ids.gen_id(stage, ids.signature_from_metadata(stage, meta)) == path.parent.name, path


def test_signature_normalizes_text_and_replicate_and_leaves_the_essay_model_out():
    sig = ids.signature("draft", " Combo_A ", "Draft-Tpl", "Gen-Model", "2")
    assert sig == ("combo_a", "draft-tpl", "gen-model", 2)
    assert ids.gen_id("draft", sig) == ids.gen_id("draft", ids.signature("draft", "combo_a", "draft-tpl", "gen-model", 2))
    assert ids.signature("essay", "d_x", "t", "any-model", 1) == ids.signature("essay", "d_x", "t", "other", 1)
    assert ids.gen_id("evaluation", ("e_x", "t", "m", 1)).startswith("v_")
    for bad in (0, "0", "x", "1.5", None, True, 1.5):
        with pytest.raises(PipelineError, match="positive integer"):
            ids.signature("draft", "c", "t", "m", bad)
    with pytest.raises(PipelineError, match="template_id"):
        ids.signature("draft", "c", " ", "m", 1)


def test_collision_variants_are_deterministic_and_run_out_after_four():
    sig = ("d_x", "t", 1)
    plain = ids.gen_id("essay", sig)
    assert ids.resolve_gen_id("essay", sig, lambda gid: None, "m1") == plain
    taken = {plain: (sig, "m1")}
    second = ids.resolve_gen_id("essay", sig, taken.get, "m2")
    assert second.endswith("-1") and second != plain
    assert second == ids.gen_id("essay", sig, 1) == ids.resolve_gen_id("essay", sig, taken.get, "m2")
    assert ids.resolve_gen_id("essay", sig, taken.get, "m1") == plain  # the same generation keeps its id
    everything = lambda gid: (("other",), None)
    with pytest.raises(PipelineError, match="-1..-4"):
        ids.resolve_gen_id("essay", sig, everything, "m1")


@needs_original
def test_orig_pilot_spec_compiles_to_the_ids_of_its_membership(tmp_path):
    # the original's own spec, found at data/cohorts/<id>/spec/config.yaml; an empty store
    data = tmp_path / "data"
    shutil.copytree(ORIGINAL_DATA / "cohorts", data / "cohorts")
    shutil.copy(ORIGINAL_DATA / "combo_mappings.csv", data / "combo_mappings.csv")
    paths = Paths(data_root=data, raw_root=SHARED / "1_raw", cohorts_root=tmp_path / "cohorts")
    cohort = compile_cohort(paths, "orig-pilot", load_catalog(paths))
    assert [(r["stage"], r["gen_id"]) for r in cohort.rows] == original_membership_ids()


@needs_original
def test_orig_pilot_reproduces_the_original_store_and_seeding_keeps_its_metadata(tmp_path):
    data = tmp_path / "data"
    shutil.copytree(ORIGINAL_DATA, data)
    # the same spec as a second cohort, at the other spec location of the original's layout
    shutil.copytree(data / "cohorts" / "orig-pilot" / "spec", tmp_path / "cohorts" / "pilot2" / "spec")
    paths = Paths(data_root=data, raw_root=SHARED / "1_raw", cohorts_root=tmp_path / "cohorts")
    cohort = compile_cohort(paths, "pilot2", load_catalog(paths))
    assert [(r["stage"], r["gen_id"]) for r in cohort.rows] == original_membership_ids()
    copies = [r for r in cohort.rows if r["template_id"] == "parsed-from-links-v1"]
    assert [r["llm_model_id"] for r in copies] == ["gemini_25_pro"] * 2  # the essay_llm, as the original writes

    before = {p: json.loads(p.read_text()) for p in (data / "gens").glob("*/*/metadata.json")}
    write_cohort(paths, cohort, EventLog(paths.events_dir))  # replicate "1" vs 1, essays without combo_id
    for path, old in before.items():
        new = json.loads(path.read_text())
        assert {k: new[k] for k in old} == old, path          # nothing the original wrote is changed
        assert new["origin_cohort_id"] == "orig-pilot" and new["origin_cohort_ids"] == ["pilot2"]
        assert new["combo_id"] in ("combo_v1_99d8c57e92a9", "combo_v1_33f7fd3ced7a")
    wide = read_membership(paths.membership_csv("pilot2"))
    assert [(r["stage"], r["gen_id"]) for r in wide] == original_membership_ids()
    assert {r["origin_cohort_id"] for r in wide} == {"pilot2"}


@needs_original
def test_a_slim_membership_takes_its_lineage_from_metadata(tmp_path):
    rows = read_membership(ORIGINAL_DATA / "cohorts" / "orig-pilot" / "membership.csv")
    assert len(rows) == 40 and {r["origin_cohort_id"] for r in rows} == {"orig-pilot"}
    by_id = {r["gen_id"]: r for r in rows}
    for row in rows:
        if row["stage"] == "evaluation":
            essay = by_id[row["parent_gen_id"]]
            assert row["combo_id"] == essay["combo_id"] == by_id[essay["parent_gen_id"]]["combo_id"] != ""
    slim = tmp_path / "data" / "cohorts" / "x" / "membership.csv"
    slim.parent.mkdir(parents=True)
    slim.write_text("stage,gen_id\ndraft,d_nosuchdraft\n")
    with pytest.raises(SpecError, match=r"membership.csv:2: draft d_nosuchdraft has no .*metadata.json"):
        read_membership(slim)
