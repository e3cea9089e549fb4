"""The original project's spec dialect (its spec_dsl at HEAD): its own test fixtures compile to the
same rows in the same order, its bad inputs fail with errors naming file and key, and
``daydream design`` prints what its compile_experiment_design script computes."""

import csv
import io
import json
import random
from pathlib import Path

import pytest

from conftest import output_of, run_daydream
from pipeline.errors import SpecError
from pipeline.spec import compile_spec

SHARED = Path(__file__).resolve().parents[2] / "shared" / "daydreaming"
ORIG_PILOT = SHARED / "original_store" / "data" / "cohorts" / "orig-pilot" / "spec" / "config.yaml"


def spec_dir(tmp_path: Path, config: str, files: dict[str, str] | None = None, name="config.yaml") -> Path:
    """A spec folder laid out as the original's: <dir>/config.yaml plus items/ files."""
    for rel, content in (files or {}).items():
        target = tmp_path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config, encoding="utf-8")
    return path


def error_of(path: Path, **kwargs) -> str:
    with pytest.raises(SpecError) as info:
        compile_spec(path, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


def table(rows, fields):
    return [tuple(row[f] for f in fields) for row in rows]


# --- the original's fixtures (tests/fixtures/spec_dsl/*), row for row ------------------------

EVAL_PAIRS_CSV = (
    "evaluation_template,evaluation_llm\n"
    "creativity-metrics-v2,sonnet-4\ncreativity-metrics-v2,gemini_25_pro\n"
    "daydreaming-verification-v3,sonnet-4\ndaydreaming-verification-v3,gemini_25_pro\n"
)


def test_baseline_cartesian_pair_from_csv(tmp_path):
    path = spec_dir(tmp_path, """
axes:
  draft_template: '@file:items/draft_templates.csv'
  essay_template: '@file:items/essay_templates.csv'
  evaluation_template: '@file:items/evaluation_templates.csv'
  evaluation_llm: '@file:items/evaluation_llms.csv'
rules:
  pairs:
    evaluation_bundle:
      left: evaluation_template
      right: evaluation_llm
      allowed: '@file:items/evaluation_pairs.csv'
output:
  field_order: [draft_template, essay_template, evaluation_template, evaluation_llm]
""", {
        "items/draft_templates.csv": "draft_template\ncreative-synthesis-v2\napplication-implementation-v2\ngwern_original\n",
        "items/essay_templates.csv": "essay_template\nparsed-from-links-v1\n",
        "items/evaluation_templates.csv": "evaluation_template\ncreativity-metrics-v2\ndaydreaming-verification-v3\n",
        "items/evaluation_llms.csv": "evaluation_llm\nsonnet-4\ngemini_25_pro\n",
        "items/evaluation_pairs.csv": EVAL_PAIRS_CSV,
    })
    spec = compile_spec(path)
    assert spec.fields == ["draft_template", "essay_template", "evaluation_template", "evaluation_llm"]
    pairs = [("creativity-metrics-v2", "sonnet-4"), ("creativity-metrics-v2", "gemini_25_pro"),
             ("daydreaming-verification-v3", "sonnet-4"), ("daydreaming-verification-v3", "gemini_25_pro")]
    assert table(spec.rows, spec.fields) == [
        (draft, "parsed-from-links-v1", template, llm)
        for draft in ("creative-synthesis-v2", "application-implementation-v2", "gwern_original")
        for template, llm in pairs
    ]


def test_cohort_cartesian_tuple_then_pair(tmp_path):
    path = spec_dir(tmp_path, """
axes:
  combo_id: [combo-1]
  draft_template: [draft-A]
  draft_llm: [draft-llm]
  draft_template_replicate: ['1', '2']
  essay_template_replicate: ['1', '2']
  evaluation_template: [eval-1]
  evaluation_llm: [eval-llm]
rules:
  tuples:
    essay_bundle:
      axes: [essay_template, essay_llm]
      items: '@file:items/essay_llm_pairs.csv'
  pairs:
    evaluation_bundle: {left: evaluation_template, right: evaluation_llm,
                        allowed: '@file:items/evaluation_pairs.csv'}
output:
  field_order: [combo_id, draft_template, draft_llm, draft_template_replicate, essay_template,
                essay_llm, essay_template_replicate, evaluation_template, evaluation_llm]
""", {
        "items/essay_llm_pairs.csv": "essay_template,essay_llm\nessay-X,essay-llm\nessay-Y,essay-llm\n",
        "items/evaluation_pairs.csv": "evaluation_template,evaluation_llm\neval-1,eval-llm\n",
    })
    spec = compile_spec(path)
    assert table(spec.rows, ["draft_template_replicate", "essay_template_replicate", "essay_template"]) == [
        (d, e, t) for d in ("1", "2") for e in ("1", "2") for t in ("essay-X", "essay-Y")
    ]
    assert spec.rows[0] == {
        "combo_id": "combo-1", "draft_template": "draft-A", "draft_llm": "draft-llm",
        "draft_template_replicate": "1", "essay_template": "essay-X", "essay_llm": "essay-llm",
        "essay_template_replicate": "1", "evaluation_template": "eval-1", "evaluation_llm": "eval-llm",
    }


def test_creative_alignment_tuple_has_528_rows_in_the_original_order(tmp_path):
    path = spec_dir(tmp_path, """
axes:
  combo_id: [combo_v1_a, combo_v1_b, combo_v1_c]
  evaluation_template: [creativity-metrics-v2, daydreaming-verification-v2, gemini-prior-art-eval-v2,
    interdisciplinary-coherence, iterative-loops-v2, novel-elements-coverage-v1, novelty, novelty-v2,
    o3-prior-art-eval, scientific-rigor-v2, style-coherence-v3]
  evaluation_llm: [gemini_25_pro]
  evaluation_replicate: ['1', '2']
  essay_replicate: ['1', '2']
rules:
  tuples:
    draft_essay_alignment:
      axes: [draft_template, essay_template]
      items:
        - [creative-synthesis-v10, creative-synthesis-v10]
        - [creative-synthesis-v7, parsed-from-links-v1]
    generation_alignment:
      axes: [draft_llm, essay_llm]
      items:
        - [gemini_25_pro, gemini_25_pro]
        - [deepseek_r1_p, deepseek_r1_p]
output:
  field_order: [combo_id, draft_template, draft_llm, essay_template, essay_llm, essay_replicate,
                evaluation_template, evaluation_llm, evaluation_replicate]
""")
    spec = compile_spec(path)
    assert len(spec.rows) == 528
    assert spec.fields == ["combo_id", "draft_template", "draft_llm", "essay_template", "essay_llm",
                           "essay_replicate", "evaluation_template", "evaluation_llm", "evaluation_replicate"]
    # tuple groups replace their axes at the end of the axis order: they vary fastest
    assert table(spec.rows[:5], ["draft_template", "draft_llm", "essay_replicate", "evaluation_replicate"]) == [
        ("creative-synthesis-v10", "gemini_25_pro", "1", "1"),
        ("creative-synthesis-v10", "deepseek_r1_p", "1", "1"),
        ("creative-synthesis-v7", "gemini_25_pro", "1", "1"),
        ("creative-synthesis-v7", "deepseek_r1_p", "1", "1"),
        ("creative-synthesis-v10", "gemini_25_pro", "2", "1"),
    ]
    assert {(r["draft_template"], r["essay_template"]) for r in spec.rows} == {
        ("creative-synthesis-v10", "creative-synthesis-v10"), ("creative-synthesis-v7", "parsed-from-links-v1"),
    }
    assert spec.axes["evaluation_template"][:2] == ["creativity-metrics-v2", "daydreaming-verification-v2"]


FULL_TWO_PHASE = """
axes:
  draft_template: [creative-synthesis-v2, application-implementation-v2]
  draft_llm: [gemini_25_pro, sonnet-4]
%s  evaluation_template: [creativity-metrics-v2, daydreaming-verification-v3]
  evaluation_llm: [gemini_25_pro, sonnet-4]
rules:
  tuples:
    essay_bundle:
      axes: [essay_template, essay_llm]
      items: '@file:items/essay_bundle.csv'
  pairs:
    draft_essay_pair:
      left: draft_template
      right: essay_bundle
      allowed:
        - [creative-synthesis-v2, [essay-theme-v16, gemini_25_pro]]
        - [creative-synthesis-v2, [essay-theme-v16, sonnet-4]]
        - [creative-synthesis-v2, [essay-theme-v17, gemini_25_pro]]
        - [creative-synthesis-v2, [essay-theme-v17, sonnet-4]]
        - [application-implementation-v2, [essay-theme-v16, gemini_25_pro]]
        - [application-implementation-v2, [essay-theme-v16, sonnet-4]]
        - [application-implementation-v2, [essay-theme-v17, gemini_25_pro]]
        - [application-implementation-v2, [essay-theme-v17, sonnet-4]]
    evaluation_bundle:
      left: evaluation_template
      right: evaluation_llm
      allowed: '@file:items/evaluation_pairs.csv'
output:
  field_order: [draft_template, draft_llm, essay_template, essay_llm, evaluation_template, evaluation_llm]
"""
FULL_TWO_PHASE_FILES = {
    "items/essay_bundle.csv": "essay_template,essay_llm\nessay-theme-v16,gemini_25_pro\n"
                              "essay-theme-v16,sonnet-4\nessay-theme-v17,gemini_25_pro\nessay-theme-v17,sonnet-4\n",
    "items/evaluation_pairs.csv": EVAL_PAIRS_CSV,
}


def test_full_two_phase_pair_over_a_tuple_group(tmp_path):
    spec = compile_spec(spec_dir(tmp_path, FULL_TWO_PHASE % "", FULL_TWO_PHASE_FILES))
    assert len(spec.rows) == 64
    # product order: draft_essay_pair (where draft_template was), draft_llm, evaluation_bundle
    assert table(spec.rows[:6], spec.fields) == [
        ("creative-synthesis-v2", "gemini_25_pro", "essay-theme-v16", "gemini_25_pro", t, m)
        for t, m in [("creativity-metrics-v2", "sonnet-4"), ("creativity-metrics-v2", "gemini_25_pro"),
                     ("daydreaming-verification-v3", "sonnet-4"), ("daydreaming-verification-v3", "gemini_25_pro")]
    ] + [
        ("creative-synthesis-v2", "sonnet-4", "essay-theme-v16", "gemini_25_pro", "creativity-metrics-v2", m)
        for m in ("sonnet-4", "gemini_25_pro")
    ]
    assert spec.rows[-1]["draft_template"] == "application-implementation-v2"
    assert spec.rows[-1]["essay_template"] == "essay-theme-v17"


def test_tuple_axes_also_declared_is_the_originals_error(tmp_path):
    # the fixture as it stood before the original's loader began inferring tuple axes
    declared = "  essay_template: [essay-theme-v16, essay-theme-v17]\n  essay_llm: [gemini_25_pro, sonnet-4]\n"
    path = spec_dir(tmp_path, FULL_TWO_PHASE % declared, FULL_TWO_PHASE_FILES)
    message = error_of(path)
    assert "rules.tuples.essay_bundle.axes: tuple axis may not provide explicit levels" in message
    assert "'essay_template'" in message


def test_paired_copy_mix(tmp_path):
    path = spec_dir(tmp_path, """
axes:
  draft_template: [creative-synthesis-v2, gwern_original]
  essay_template: [essay-llm-v1, essay-copy-v1]
  evaluation_template: [quality-eval-v1]
  evaluation_llm: [sonnet-4]
rules:
  pairs:
    draft_essay_mode:
      left: draft_template
      right: essay_template
      allowed: '@file:items/draft_essay_pairs.csv'
output:
  field_order: [draft_template, essay_template, evaluation_template, evaluation_llm]
""", {"items/draft_essay_pairs.csv": "draft_template,essay_template\n"
                                    "gwern_original,essay-copy-v1\ncreative-synthesis-v2,essay-llm-v1\n"})
    spec = compile_spec(path)
    assert table(spec.rows, spec.fields) == [
        ("gwern_original", "essay-copy-v1", "quality-eval-v1", "sonnet-4"),
        ("creative-synthesis-v2", "essay-llm-v1", "quality-eval-v1", "sonnet-4"),
    ]


def test_tie_named_after_first_axis_and_tie_with_new_name(tmp_path):
    path = spec_dir(tmp_path, """
axes:
  draft_template: [draft-A, draft-B, draft-C]
  essay_template: [draft-B, draft-C, draft-D]
rules:
  ties:
    draft_template: {axes: [draft_template, essay_template]}
output: {field_order: []}
""")
    assert compile_spec(path).rows == [
        {"draft_template": "draft-B", "essay_template": "draft-B"},
        {"draft_template": "draft-C", "essay_template": "draft-C"},
    ]
    path = spec_dir(tmp_path, """
axes: {draft_template: [d1, d2], essay_template: [d1, d3]}
rules: {ties: {paired_templates: [draft_template, essay_template]}}
output: {field_order: []}
""")
    spec = compile_spec(path)
    assert spec.rows == [{"paired_templates": "d1", "draft_template": "d1", "essay_template": "d1"}]
    assert spec.fields == ["paired_templates", "draft_template", "essay_template"]


def test_pair_after_tie_matches_the_original_even_dropping_the_other_tied_axis(tmp_path):
    path = spec_dir(tmp_path, """
axes:
  draft_template: [d1, d2]
  essay_template: [d1, d2]
  eval_template: [e1, e2]
rules:
  ties: {paired: [draft_template, essay_template]}
  pairs: {draft_eval: {left: draft_template, right: eval_template, allowed: [[d1, e1], [d2, e2]]}}
output: {field_order: [draft_template]}
""")
    assert compile_spec(path).rows == [
        {"draft_template": "d1", "eval_template": "e1"},
        {"draft_template": "d2", "eval_template": "e2"},
    ]


def test_rules_run_in_written_order(tmp_path):
    body = "axes: {a: [x, y], b: [p, q]}\noutput: {field_order: [a, b]}\nrules:\n"
    pair = "  pairs: {ab: {left: a, right: b, allowed: [[y, q]]}}\n"
    subset = "  subsets: {a: [y]}\n"
    assert compile_spec(spec_dir(tmp_path, body + subset + pair)).rows == [{"a": "y", "b": "q"}]
    # written after the pair, the subset finds its axis gone into the pair
    message = error_of(spec_dir(tmp_path, body + pair + subset))
    assert "rules.subsets.a: axis 'a' was replaced by pair 'ab'" in message
    # and the pair, written after a subset, only accepts the levels the subset left
    message = error_of(spec_dir(tmp_path, body + subset + pair.replace("[[y, q]]", "[[x, p]]")))
    assert "rules.pairs.ab.allowed[0] [x, p]: 'x' is not a level of axis a (levels: y)" in message


def test_int_and_string_levels_are_different_and_print_as_written(tmp_path):
    path = spec_dir(tmp_path, """
axes: {replicate: [1, '1', 2, 1], model: [m]}
rules:
  pairs: {rm: {left: replicate, right: model, allowed: [['1', m], [2, m]]}}
output: {field_order: [model, replicate]}
""")
    assert compile_spec(path).rows == [{"model": "m", "replicate": "1"}, {"model": "m", "replicate": 2}]


def test_file_includes_txt_yaml_json_and_subset_keep(tmp_path):
    path = spec_dir(tmp_path, """
axes:
  a: '@file:items/a.txt'
  b: '@file:items/b.yaml'
  c: '@file:items/c.json'
rules:
  subsets: {a: '@file:items/keep.yml'}
  pairs: {bc: {left: b, right: c, allowed: '@file:items/bc.json'}}
output: {field_order: [c]}
""", {
        "items/a.txt": "  x \n\ny\nz\n",
        "items/b.yaml": "[1, 2]\n",
        "items/c.json": '["p", "q"]',
        "items/keep.yml": "- z\n- x\n",
        "items/bc.json": "[[2, \"p\"], [1, \"q\"]]",
    })
    assert table(compile_spec(path).rows, ["a", "b", "c"]) == [
        ("x", 2, "p"), ("x", 1, "q"), ("z", 2, "p"), ("z", 1, "q"),
    ]


def test_orig_pilot_spec_compiles_to_32_rows():
    if not ORIG_PILOT.exists():
        pytest.skip(f"original store not present: {ORIG_PILOT}")
    spec = compile_spec(ORIG_PILOT)
    assert len(spec.rows) == 32
    assert spec.fields == ["combo_id", "draft_template", "draft_llm", "essay_template", "essay_llm",
                           "evaluation_template", "evaluation_llm", "evaluation_replicate"]
    # the tuple varies fastest, then the evaluation replicate: the order of the store's membership
    assert table(spec.rows[:3], ["combo_id", "draft_template", "evaluation_replicate"]) == [
        ("combo_v1_99d8c57e92a9", "deliberate-rolling-thread-v3", "1"),
        ("combo_v1_99d8c57e92a9", "creative-synthesis-v10", "1"),
        ("combo_v1_99d8c57e92a9", "deliberate-rolling-thread-v3", "2"),
    ]


# --- bad input: each error names the spec file and the key at fault ------------------------


@pytest.mark.parametrize("config, files, expected", [
    ("axes: {a: [x]}\nrules: {pair: {}}\noutput: {field_order: [a]}\n", {},
     "rules: unknown section 'pair'"),
    ("axes: {a: [x]}\nrules: [{subset: {axis: a, keep: [x]}}]\noutput: {field_order: [a]}\n", {},
     "rules: expected a mapping of sections"),
    ("rules:\n  tuples:\n    t: {axes: [a, b, a], items: [[x, y, z]]}\noutput: {field_order: [a]}\n", {},
     "rules.tuples.t.axes: 'a' is listed twice"),
    ("rules:\n  tuples:\n    t1: {axes: [a, b], items: [[x, y]]}\n    t2: {axes: [c, a], items: [[p, x]]}\n"
     "output: {field_order: [a]}\n", {},
     "rules.tuples.t2.axes: axis 'a' is already bound by tuple 't1'"),
    ("axes: {essay_template: null}\nrules: {tuples: {t: {axes: [essay_template], items: [[e]]}}}\n"
     "output: {field_order: []}\n", {},
     "axes.essay_template: null is not a list of levels"),
    ("axes: {a: [x]}\n", {}, "output.field_order: required in the original's spec format"),
    ("axes: {a: '@file:items/a.xlsx'}\noutput: {field_order: [a]}\n", {"items/a.xlsx": "a\nx\n"},
     "axes.a: items/a.xlsx: unsupported @file extension '.xlsx'"),
    ("axes: {a: [x, y], b: [p]}\nrules: {pairs: {p1: {left: a, right: b, allowed: '@file:p.csv'}}}\n"
     "output: {field_order: [a]}\n", {"p.csv": "a,b\nx,p\ny, \n"},
     "rules.pairs.p1.allowed: p.csv line 3: empty value in column 'b'"),
    ("rules: {tuples: {t: {axes: [a, b], items: '@file:t.csv'}}}\noutput: {field_order: [a]}\n",
     {"t.csv": "a,b\n"}, "rules.tuples.t.items: t.csv: has no data rows"),
    ("axes: {a: '@file:a.csv'}\noutput: {field_order: [a]}\n", {"a.csv": ""},
     "axes.a: a.csv: needs a header row"),
    ("axes: {a: '@file:a.yaml'}\noutput: {field_order: [a]}\n", {"a.yaml": ""},
     "axes.a: expected a non-empty list"),
    ("axes: {a: [x], b: [x]}\nrules: {ties: {t: {axes: [a, b], to: a}}}\noutput: {field_order: [a]}\n", {},
     "rules.ties.t.to: not allowed"),
    ("rules: {tuples: {t: {axes: [a], items: [[x]], expand: true}}}\noutput: {field_order: [a]}\n", {},
     "rules.tuples.t.expand: not supported"),
    ("axes: {a: [x], b: [y]}\nrules: {pairs: {p1: {left: a, right: b, allowed: [[x, z]]}}}\n"
     "output: {field_order: [a]}\n", {},
     "rules.pairs.p1.allowed[0] [x, z]: 'z' is not a level of axis b"),
    ("axes: {a: [x], b: [y]}\nrules: {pairs: {a: {left: a, right: b, allowed: [[x, y]]}}}\n"
     "output: {field_order: [a]}\n", {},
     "rules.pairs.a: the rule name 'a' is already an axis"),
    ("axes: {a: [x]}\noutput: {field_order: [a, t]}\n", {},
     "output.field_order: 't' is not an axis"),
])
def test_bad_input_names_file_and_key(tmp_path, config, files, expected):
    assert expected in error_of(spec_dir(tmp_path, config, files))


def test_field_order_optional_only_in_this_projects_spec_yaml(tmp_path):
    path = spec_dir(tmp_path, "axes: {b: [y], a: [x]}\n", name="spec.yaml")
    assert compile_spec(path).rows == [{"b": "y", "a": "x"}]
    assert "output.field_order: required" in error_of(path, original=True)


# --- daydream design -------------------------------------------------------------------------

DESIGN_SPEC = """
axes:
  combo_id: [c1, c2]
  evaluation_replicate: [1, 2]
rules:
  tuples:
    draft_essay: {axes: [draft_template, essay_template], items: '@file:items/pairs.csv'}
output:
  field_order: [combo_id, draft_template, essay_template]
"""
DESIGN_FILES = {"items/pairs.csv": "draft_template,essay_template\nd1,\"e1, quoted\"\nd2,e2\n"}


def test_design_prints_csv_in_the_compilers_order(project, tmp_path):
    path = spec_dir(tmp_path / "spec", DESIGN_SPEC, DESIGN_FILES)
    result = run_daydream(project, "design", str(path), roots=False)
    assert result.returncode == 0, output_of(result)
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["combo_id", "draft_template", "essay_template", "evaluation_replicate"]
    assert rows[1:4] == [["c1", "d1", "e1, quoted", "1"], ["c1", "d2", "e2", "1"], ["c1", "d1", "e1, quoted", "2"]]
    assert len(rows) == 1 + 8


def test_design_writes_jsonl_atomically_to_out(project, tmp_path):
    path = spec_dir(tmp_path / "spec", DESIGN_SPEC, DESIGN_FILES)
    out = tmp_path / "out" / "design.jsonl"
    result = run_daydream(project, "design", str(path), "--format", "jsonl", "--out", str(out), roots=False)
    assert result.returncode == 0, output_of(result)
    assert result.stdout == ""
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 8
    first = json.loads(lines[0])
    assert list(first) == ["combo_id", "draft_template", "essay_template", "evaluation_replicate"]
    assert first["evaluation_replicate"] == 1  # ints stay ints
    assert [p.name for p in out.parent.iterdir()] == ["design.jsonl"]  # no temp file left


def test_design_seed_shuffles_the_product_as_the_original(project, tmp_path):
    path = spec_dir(tmp_path / "spec", DESIGN_SPEC, DESIGN_FILES)
    result = run_daydream(project, "design", str(path), "--seed", "17", "--format", "jsonl", roots=False)
    assert result.returncode == 0, output_of(result)
    plain = compile_spec(path).rows
    order = list(range(len(plain)))
    random.Random(17).shuffle(order)  # what the original's compile_design(seed=17) does to the product
    assert [json.loads(line) for line in result.stdout.splitlines()] == [plain[i] for i in order]


def test_design_error_names_file_and_key_and_writes_nothing(project, tmp_path):
    path = spec_dir(tmp_path / "spec", "axes: {a: [x]}\n")
    out = tmp_path / "design.csv"
    result = run_daydream(project, "design", str(path), "--out", str(out), roots=False)
    assert result.returncode == 2, output_of(result)
    assert result.stderr.startswith(f"daydream: error: {path}: output.field_order: required")
    assert not out.exists()
