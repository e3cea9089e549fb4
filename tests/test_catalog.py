"""Catalog loading: the demo and original catalogs load; each kind of bad input names file and id."""
import shutil
from pathlib import Path

import pytest

from pipeline.catalog import load_catalog
from pipeline.errors import CatalogError
from pipeline.paths import Paths

REPO = Path(__file__).resolve().parents[1]
SHARED_RAW = REPO.parent / "shared" / "daydreaming" / "1_raw"


@pytest.fixture
def raw(tmp_path):
    dst = tmp_path / "1_raw"
    shutil.copytree(REPO / "data" / "1_raw", dst)
    return dst


def load(raw):
    return load_catalog(Paths(data_root=raw.parent, raw_root=raw))


def test_demo_catalog_loads(raw):
    cat = load(raw)
    assert len(cat.concepts) == 7
    assert cat.templates["essay"]["draft-as-essay"].generator == "copy"
    assert cat.models["gemma_local"].is_local and cat.models["gemma_local"].pool == "llm_local"
    assert cat.models["deepseek_r1_f"].pool == "llm_free"
    assert cat.models["sonnet_4"].pool == "llm_paid"
    # optional price columns (USD per million tokens), read by `daydream plan`'s cost estimate
    assert (cat.models["sonnet_4"].prompt_price_per_mtok, cat.models["sonnet_4"].completion_price_per_mtok) == (3.0, 15.0)
    assert cat.models["gemma_local"].prompt_price_per_mtok == 0.0


def test_price_columns_are_optional(raw):
    (raw / "llm_models.csv").write_text("id,model,provider\nsonnet_4,anthropic/claude-sonnet-4,anthropic\n"
                                        "gemma_local,gemma-3-270m-q4_k_m,local\n")
    model = load(raw).models["sonnet_4"]
    assert model.prompt_price_per_mtok is None and model.completion_price_per_mtok is None


@pytest.mark.skipif(not SHARED_RAW.exists(), reason="original catalog not present")
def test_original_catalog_loads():
    cat = load_catalog(Paths(data_root="unused", raw_root=SHARED_RAW))
    assert cat.templates["essay"]["parsed-from-links-v1"].generator == "copy"
    assert cat.templates["draft"]["deliberate-rolling-thread-v3"].parser == "essay_idea_last"
    assert cat.replicates["evaluation"] == 2
    # article texts exist for a few concepts only: the others fall back to paragraph
    text, level = cat.concept_text("dearth-ai-discoveries", "article")
    assert level == "paragraph" and text


def test_concept_falls_back_to_shorter_level(raw):
    (raw / "concepts" / "descriptions-paragraph" / "critic-filter.txt").unlink()
    cat = load(raw)
    # the JSON file still has the paragraph: remove it there too to force the fallback
    assert cat.concept_text("critic-filter", "paragraph")[1] == "paragraph"
    import json
    doc = json.loads((raw / "concepts" / "day_dreaming_concepts.json").read_text())
    for c in doc["concepts"]:
        c.pop("paragraph", None)
    (raw / "concepts" / "day_dreaming_concepts.json").write_text(json.dumps(doc))
    text, level = load(raw).concept_text("critic-filter", "paragraph")
    assert level == "sentence" and "judges candidate ideas" in text


def append(path, line):
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@pytest.mark.parametrize("mutate, expected", [
    (lambda r: append(r / "draft_templates.csv", "ghost-v1,Ghost,,identity,llm,true"),
     ["draft_templates.csv:4", "ghost-v1", "does not exist"]),
    (lambda r: append(r / "draft_templates.csv", "links-brainstorm-v1,Dup,,identity,llm,true"),
     ["draft_templates.csv:4", "duplicate template_id", "links-brainstorm-v1"]),
    (lambda r: append(r / "essay_templates.csv", "short-essay-v1b,X,,no_such_parser,llm,true"),
     ["essay_templates.csv:4", "short-essay-v1b", "unknown parser 'no_such_parser'"]),
    (lambda r: append(r / "essay_templates.csv", "short-essay-v1c,X,,identity,magic,true"),
     ["essay_templates.csv:4", "short-essay-v1c", "unknown generator 'magic'"]),
    (lambda r: (r / "templates" / "evaluation" / "clarity-v1.txt").write_text("{% for x in %}\nSCORE"),
     ["clarity-v1.txt:1", "clarity-v1", "not valid Jinja2"]),
    (lambda r: append(r / "llm_models.csv", "sonnet_4,x/y,x,X,general"),
     ["llm_models.csv:6", "duplicate id", "sonnet_4"]),
    (lambda r: (r / "llm_models.csv").write_text("id,model\nx,y\n"),
     ["llm_models.csv", "missing column", "provider"]),
    (lambda r: append(r / "llm_models.csv", "pricey,x/y,x,X,general,-1,2"),
     ["llm_models.csv:6", "pricey", "prompt_price_per_mtok must be a non-negative number", "'-1'"]),
    (lambda r: append(r / "llm_models.csv", "pricey,x/y,x,X,general,1,$2"),
     ["llm_models.csv:6", "pricey", "completion_price_per_mtok must be a non-negative number", "'$2'"]),
    (lambda r: append(r / "llm_models.csv", "pricey,x/y,x,X,general,nan,2"),
     ["llm_models.csv:6", "pricey", "prompt_price_per_mtok", "'nan'"]),
    (lambda r: (r / "concepts_metadata.csv").write_bytes("concept_id,name\ncaf\xe9,Caf\xe9\n".encode("latin-1")),
     ["concepts_metadata.csv", "not UTF-8"]),
    (lambda r: append(r / "concepts_metadata.csv", "undescribed,Undescribed,true"),
     ["concepts_metadata.csv:9", "undescribed", "no description"]),
    (lambda r: append(r / "concepts_metadata.csv", "../escape,Escape,true"),
     ["concepts_metadata.csv:9", "invalid concept_id", "../escape"]),
])
def test_bad_catalog_is_refused_with_file_and_id(raw, mutate, expected):
    mutate(raw)
    with pytest.raises(CatalogError) as err:
        load(raw)
    for fragment in expected:
        assert fragment in str(err.value)


def test_template_with_unknown_variable_fails_before_any_call(raw):
    (raw / "templates" / "essay" / "short-essay-v1.txt").write_text("Notes: {{ draft_block }} {{ secret_sauce }}")
    cat = load(raw)  # loads: the variable check runs for the templates a cohort uses
    with pytest.raises(CatalogError) as err:
        cat.check_template_variables("essay", "short-essay-v1")
    assert "short-essay-v1" in str(err.value) and "secret_sauce" in str(err.value)


def test_catalog_hash_changes_with_content(raw):
    before = load(raw).hash
    assert load(raw).hash == before
    append(raw / "templates" / "draft" / "rolling-idea-v1.txt", "Be brief.")
    assert load(raw).hash != before
