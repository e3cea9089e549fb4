"""`daydream rebuild-log`: a store made without events (e.g. by the original pipeline) joins the tables."""
import csv
import json

from pipeline.backfill import backfill
from pipeline.cli import main as daydream
from pipeline.events import read_events
from pipeline.paths import Paths
from pipeline.replay import replay


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
    assert backfill(paths) == 0
