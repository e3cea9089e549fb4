"""`daydream rebuild-log`: a store made without events (e.g. by the original pipeline) joins the tables."""
import csv
import json
import shutil

import pytest

from pipeline.backfill import backfill
from pipeline.cli import main as daydream
from pipeline.events import read_events
from pipeline.paths import Paths
from pipeline.replay import replay

from conftest import SHARED_RAW_ROOT

ORIGINAL_DATA = SHARED_RAW_ROOT.parent / "original_store" / "data"
needs_original = pytest.mark.skipif(not ORIGINAL_DATA.is_dir(), reason=f"no original store at {ORIGINAL_DATA}")


def make_gen(root, stage, gen_id, parent, template, model, parsed, raw=None):
    gdir = root / "gens" / stage / gen_id
    gdir.mkdir(parents=True)
    (gdir / "parsed.txt").write_text(parsed)
    (gdir / "raw.txt").write_text(raw if raw is not None else parsed)
    (gdir / "metadata.json").write_text(json.dumps({
        "stage": stage, "gen_id": gen_id, "parent_gen_id": parent, "combo_id": "combo_v1_aaaaaaaaaaaa",
        "template_id": template, "llm_model_id": model, "replicate": 1}))


def test_backfill_brings_an_old_store_into_the_tables(tmp_path):
    root = tmp_path / "data"
    make_gen(root, "draft", "d_old1", "", "creative-synthesis-v7", "deepseek_r1_p", "an idea")
    make_gen(root, "essay", "e_old1", "d_old1", "parsed-from-links-v1", "deepseek_r1_p", "an essay")
    make_gen(root, "evaluation", "v_old1", "e_old1", "novelty-v2", "sonnet-4",
             "Reasoning...\n**Final Score: 8/10**", raw="Reasoning...\n**Final Score: 8/10**")
    make_gen(root, "evaluation", "v_old2", "e_old1", "novelty-v2", "gemini_25_pro", "SCORE: 6")
    paths = Paths(data_root=root)

    assert daydream(["rebuild-log", "--data-root", str(root)]) == 0
    events = read_events(paths.events_dir).events
    assert {e["source"] for e in events} == {"backfill"}
    assert sorted(e["gen_id"] for e in events if e["type"] == "generation_completed") == \
        ["d_old1", "e_old1", "v_old1", "v_old2"]

    replay(paths.events_dir, paths.tables_dir)
    with open(paths.tables_dir / "evaluation_results.csv", newline="") as fh:
        rows = {r["gen_id"]: r for r in csv.DictReader(fh)}
    assert float(rows["v_old1"]["score"]) == 8.0 and float(rows["v_old2"]["score"]) == 6.0
    assert rows["v_old1"]["draft_template"] == "creative-synthesis-v7"
    assert rows["v_old1"]["essay_template"] == "parsed-from-links-v1"

    # idempotent: nothing new the second time
    assert backfill(paths).written == 0


def evaluation_results(paths) -> dict:
    replay(paths.events_dir, paths.tables_dir)
    with open(paths.tables_dir / "evaluation_results.csv", newline="") as fh:
        return {r["gen_id"]: r for r in csv.DictReader(fh)}


@needs_original
def test_rebuild_log_on_an_original_store_recovers_scores_cohort_and_tokens(tmp_path):
    root = shutil.copytree(ORIGINAL_DATA, tmp_path / "data")
    paths = Paths(data_root=root)
    assert daydream(["rebuild-log", "--data-root", str(root)]) == 0

    rows = evaluation_results(paths)
    expected = {p.name: float((p / "parsed.txt").read_text()) for p in (root / "gens" / "evaluation").iterdir()}
    assert len(expected) == 32
    assert {gid: float(r["score"]) for gid, r in rows.items()} == expected
    assert {r["cohort_ids"] for r in rows.values()} == {"orig-pilot"}
    assert all(r["combo_id"].startswith("combo_v1_") for r in rows.values())   # walked up to the draft

    done = {e["gen_id"]: e for e in read_events(paths.events_dir).events if e["type"] == "generation_completed"}
    assert len(done) == 40 and {e["cohort_id"] for e in done.values()} == {"orig-pilot"}
    for gid, event in done.items():
        raw_meta = json.loads((root / event["raw_path"]).with_name("raw_metadata.json").read_text())
        assert event["finish_reason"] == raw_meta["finish_reason"]
        assert event["prompt_tokens"] == raw_meta.get("usage", {}).get("prompt_tokens")
        assert event["copy"] == (raw_meta["mode"] == "copy")
    assert sum(e["copy"] for e in done.values()) == 2


@needs_original
def test_rebuild_log_warns_for_an_evaluation_it_cannot_score(tmp_path, capsys):
    root = shutil.copytree(ORIGINAL_DATA, tmp_path / "data")
    broken = sorted((root / "gens" / "evaluation").iterdir())[5]
    (broken / "parsed.txt").write_text("no verdict here\n")
    (broken / "raw.txt").write_text("no verdict here either\n")
    assert daydream(["rebuild-log", "--data-root", str(root)]) == 0
    err = capsys.readouterr().err
    assert f"gens/evaluation/{broken.name}/parsed.txt: not a number: 'no verdict here'" in err
    rows = evaluation_results(Paths(data_root=root))
    assert len(rows) == 32 and rows[broken.name]["score"] == ""
    assert sum(1 for r in rows.values() if r["score"]) == 31
