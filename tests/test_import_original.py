"""`daydream import-original`: a researcher arrives with a store written by the original.

Reads the original's store from ../shared/daydreaming/original_store (never copied into the repo);
tests that damage it work on a copy in tmp.
"""
import csv
import hashlib
import json
import os
import shutil
from collections import Counter

import pytest

from conftest import SHARED_RAW_ROOT, make_project, output_of, run_daydream, run_luigi

ORIGINAL_DATA = SHARED_RAW_ROOT.parent / "original_store" / "data"
pytestmark = pytest.mark.skipif(not ORIGINAL_DATA.is_dir() or not SHARED_RAW_ROOT.is_dir(),
                                reason=f"no original store at {ORIGINAL_DATA}")
COUNTS = {"draft": 4, "essay": 4, "evaluation": 32}


def tree_state(root) -> dict:
    """relative path -> (sha256, mtime_ns) of every file under ``root``."""
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, root)] = (hashlib.sha256(fh.read()).hexdigest(), os.stat(path).st_mtime_ns)
    return out


def original_gens(stage):
    return sorted(p.name for p in (ORIGINAL_DATA / "gens" / stage).iterdir())


def original_scores() -> dict:
    return {gid: float((ORIGINAL_DATA / "gens" / "evaluation" / gid / "parsed.txt").read_text().strip().splitlines()[-1])
            for gid in original_gens("evaluation")}


def import_into(project, src=ORIGINAL_DATA):
    return run_daydream(project, "import-original", str(src))


def read_csv(path) -> list:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def project(tmp_path):
    return make_project(tmp_path / "proj", raw_root=SHARED_RAW_ROOT)


@pytest.fixture
def src_copy(tmp_path):
    """A copy of the original's data folder that a test may damage."""
    return shutil.copytree(ORIGINAL_DATA, tmp_path / "src" / "data")


def test_import_brings_every_generation_and_leaves_src_untouched(project):
    before = tree_state(ORIGINAL_DATA)
    result = import_into(project)
    assert result.returncode == 0, output_of(result)
    assert tree_state(ORIGINAL_DATA) == before
    assert "draft 4, essay 4, evaluation 32" in result.stdout and "scores: 32" in result.stdout

    for stage, n in COUNTS.items():
        ids = original_gens(stage)
        assert len(ids) == n
        for gid in ids:
            for name in ("prompt.txt", "raw.txt", "parsed.txt", "raw_metadata.json", "parsed_metadata.json"):
                assert project.read(stage, gid, name) == (ORIGINAL_DATA / "gens" / stage / gid / name).read_text()
            original = json.loads((ORIGINAL_DATA / "gens" / stage / gid / "metadata.json").read_text())
            meta = project.meta(stage, gid)
            assert {k: meta[k] for k in original} == original     # the original's fields, unchanged
            assert meta["origin_cohort_ids"] == ["orig-pilot"] and meta["combo_id"].startswith("combo_v1_")
    copies = [gid for gid in original_gens("essay") if project.meta("essay", gid)["mode"] == "copy"]
    assert len(copies) == 2

    rows = project.membership("orig-pilot")
    assert list(rows[0]) == ["stage", "gen_id", "origin_cohort_id", "parent_gen_id", "combo_id", "template_id",
                             "llm_model_id", "replicate"]
    assert Counter(r["stage"] for r in rows) == COUNTS
    assert all(r["origin_cohort_id"] == "orig-pilot" and r["combo_id"] for r in rows)
    spec = project.data_root / "cohorts" / "orig-pilot" / "spec" / "config.yaml"
    assert spec.read_bytes() == (ORIGINAL_DATA / "cohorts" / "orig-pilot" / "spec" / "config.yaml").read_bytes()
    assert (project.data_root / "combo_mappings.csv").read_text() == (ORIGINAL_DATA / "combo_mappings.csv").read_text()


def test_replay_after_import_has_the_original_scores_and_tokens(project):
    assert import_into(project).returncode == 0
    replay = run_daydream(project, "replay", "--data-root", str(project.data_root), roots=False)
    assert replay.returncode == 0, output_of(replay)
    evals = {r["gen_id"]: r for r in read_csv(project.data_root / "tables" / "evaluation_results.csv")}
    assert {gid: float(r["score"]) for gid, r in evals.items()} == original_scores()
    assert {r["cohort_ids"] for r in evals.values()} == {"orig-pilot"}
    assert all(r["combo_id"] and r["draft_template"] and r["essay_template"] for r in evals.values())

    gens = {r["gen_id"]: r for r in read_csv(project.data_root / "tables" / "generation_results.csv")}
    draft = original_gens("draft")[0]
    usage = json.loads((ORIGINAL_DATA / "gens" / "draft" / draft / "raw_metadata.json").read_text())["usage"]
    assert int(gens[draft]["prompt_tokens"]) == usage["prompt_tokens"]
    assert int(gens[draft]["completion_tokens"]) == usage["completion_tokens"]
    assert read_csv(project.data_root / "tables" / "llm_calls.csv") == []   # nothing was paid for here

    events = project.events()
    done = [e for e in events if e["type"] == "generation_completed"]
    assert len(done) == 40 and {e["source"] for e in done} == {"import"}
    assert {e["cohort_id"] for e in done} == {"orig-pilot"}
    assert sum(e["copy"] for e in done) == 2
    built = [e for e in events if e["type"] == "cohort_built"]
    assert [(e["cohort_id"], len(e["members"])) for e in built] == [("orig-pilot", 40)]


def test_second_import_writes_nothing(project):
    assert import_into(project).returncode == 0
    before = tree_state(project.data_root)
    again = import_into(project)
    assert again.returncode == 0, output_of(again)
    assert "events written: 0" in again.stdout and "(40 already present)" in again.stdout
    assert tree_state(project.data_root) == before


def test_conflicting_destination_is_refused_with_nothing_written(project):
    gid = original_gens("evaluation")[0]
    theirs = project.gen_dir("evaluation", gid) / "parsed.txt"
    theirs.parent.mkdir(parents=True)
    theirs.write_text("3.0\n")
    before = tree_state(project.data_root)
    result = import_into(project)
    assert result.returncode == 2
    assert "daydream: error:" in result.stderr
    assert str(ORIGINAL_DATA / "gens" / "evaluation" / gid / "parsed.txt") in result.stderr
    assert str(theirs) in result.stderr
    assert tree_state(project.data_root) == before


def test_corrupt_metadata_is_refused_naming_the_file(project, src_copy):
    broken = src_copy / "gens" / "essay" / original_gens("essay")[1] / "metadata.json"
    broken.write_text('{"stage": "essay", "gen_id": ')
    result = import_into(project, src_copy)
    assert result.returncode == 2
    assert f"daydream: error: {broken}: unreadable" in result.stderr
    assert tree_state(project.data_root) == {}


def test_unscorable_evaluation_is_imported_with_a_warning(project, src_copy):
    gid = original_gens("evaluation")[3]
    (src_copy / "gens" / "evaluation" / gid / "parsed.txt").write_text("abc\n")
    result = import_into(project, src_copy)
    assert result.returncode == 0, output_of(result)
    assert f"gens/evaluation/{gid}/parsed.txt: not a number: 'abc' (no score imported)" in result.stderr
    assert "scores: 31" in result.stdout
    scored = [e["gen_id"] for e in project.events() if e["type"] == "score_parsed"]
    assert len(scored) == 31 and gid not in scored


def test_running_an_imported_cohort_buys_nothing(project, stub):
    assert import_into(project).returncode == 0
    run = run_luigi(project, "RunCohort", "--cohort-id", "orig-pilot", base_url=stub.base_url)
    assert run.returncode == 0, output_of(run)
    assert stub.requests == []
    assert Counter(r["stage"] for r in project.membership("orig-pilot")) == COUNTS


def test_combo_defined_two_ways_is_refused(project):
    mappings = project.data_root / "combo_mappings.csv"
    mappings.write_text("combo_id,version,concept_id,description_level,k_max,created_at\n"
                        "combo_v1_99d8c57e92a9,v1,economic-moat,paragraph,1,2026-01-01T00:00:00\n")
    before = tree_state(project.data_root)
    result = import_into(project)
    assert result.returncode == 2
    assert "combo_v1_99d8c57e92a9" in result.stderr
    assert str(mappings) in result.stderr and str(ORIGINAL_DATA / "combo_mappings.csv") in result.stderr
    assert tree_state(project.data_root) == before
