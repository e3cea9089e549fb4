import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import SpecError
from pipeline.spec import CompiledSpec, compile_spec, expand_rows, load_spec


def write_spec(folder: Path, text: str, files: dict[str, str] | None = None) -> Path:
    for rel, content in (files or {}).items():
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")
    path = folder / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def compile_error(tmp_path, text, files=None, **kwargs) -> str:
    path = write_spec(tmp_path, text, files)
    with pytest.raises(SpecError) as info:
        compile_spec(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


def test_product_in_spec_order_levels_keep_their_yaml_type(tmp_path):
    path = write_spec(tmp_path, "axes:\n  model: [gpt, claude]\n  replicate: [1, 2]\n")
    spec = compile_spec(path)
    assert isinstance(spec, CompiledSpec)
    assert spec.path == path
    assert spec.fields == ["model", "replicate"]
    assert spec.rows == [
        {"model": "gpt", "replicate": 1},
        {"model": "gpt", "replicate": 2},
        {"model": "claude", "replicate": 1},
        {"model": "claude", "replicate": 2},
    ]
    assert spec.axes == {"model": ["gpt", "claude"], "replicate": [1, 2]}
    assert spec.extra == {}


def test_compiling_twice_gives_identical_rows(tmp_path):
    path = write_spec(
        tmp_path,
        """
axes: {a: [z, y, x], b: [3, 1, 2], c: [q, p]}
rules:
  pairs: {p: {left: a, right: c, allowed: [[x, p], [z, q], [z, p]]}}
""",
    )
    first, second = compile_spec(path), compile_spec(path)
    assert first.rows == second.rows
    assert [(r["a"], r["c"], r["b"]) for r in first.rows[:4]] == [
        ("x", "p", 3), ("x", "p", 1), ("x", "p", 2), ("z", "q", 3),
    ]
    assert first.fields == ["b", "a", "c"]  # pair columns come back after the untouched axes


def test_subsets_keep_listed_levels_in_axis_order():
    rows = expand_rows({"m": ["a", "b", "c"], "n": ["1"]}, {"subsets": {"m": ["c", "a"]}})
    assert [r["m"] for r in rows] == ["a", "c"]


def test_ties_take_first_axis_levels_present_in_all():
    rows = expand_rows(
        {"draft_model": ["m3", "m1", "m2"], "essay_model": ["m1", "m2", "m4"], "t": ["x"]},
        {"ties": {"same": {"axes": ["draft_model", "essay_model"]}}},
    )
    # the tie's name is not one of its axes, so it stays as a column (first, where the axes were)
    assert rows == [
        {"same": "m1", "t": "x", "draft_model": "m1", "essay_model": "m1"},
        {"same": "m2", "t": "x", "draft_model": "m2", "essay_model": "m2"},
    ]


def test_pairs_keep_only_allowed_combinations():
    rows = expand_rows(
        {"draft": ["d1", "d2"], "other": ["o"], "essay": ["e1", "e2"]},
        {"pairs": {"p": {"left": "draft", "right": "essay", "allowed": [["d2", "e1"], ["d1", "e2"]]}}},
    )
    assert [(r["draft"], r["essay"]) for r in rows] == [("d2", "e1"), ("d1", "e2")]
    assert list(rows[0]) == ["other", "draft", "essay"]


def test_balanced_pairs_pass():
    allowed = [["a", "x"], ["a", "y"], ["b", "x"], ["b", "y"]]
    rows = expand_rows(
        {"l": ["a", "b"], "r": ["x", "y"]},
        {"pairs": {"p": {"left": "l", "right": "r", "allowed": allowed, "balance": "both"}}},
    )
    assert len(rows) == 4


def test_tuples_bring_their_own_axes():
    rows = expand_rows(
        {"d": ["k", "j"]},
        {"tuples": {"t": {"axes": ["c", "a", "b"], "items": [["q", 2, "x"], ["p", 1, "y"], ["q", 2, "x"]]}}},
    )
    assert rows == [
        {"d": "k", "c": "q", "a": 2, "b": "x"},
        {"d": "k", "c": "p", "a": 1, "b": "y"},
        {"d": "j", "c": "q", "a": 2, "b": "x"},
        {"d": "j", "c": "p", "a": 1, "b": "y"},
    ]


def test_rules_compose_tie_then_pair_on_tied_axis():
    rows = expand_rows(
        {"dm": ["m1", "m2"], "em": ["m1", "m2"], "tpl": ["t1", "t2"]},
        {
            "ties": {"same": {"axes": ["dm", "em"]}},
            "pairs": {"p": {"left": "em", "right": "tpl", "allowed": [["m2", "t1"]]}},
        },
    )
    # as in the original: the pair writes em back by its written name, so dm (the tie's other
    # axis) has no value left to take and drops out
    assert rows == [{"em": "m2", "tpl": "t1"}]


def test_field_order_puts_listed_fields_first(tmp_path):
    path = write_spec(
        tmp_path,
        "axes: {a: [1], b: [2], c: [3]}\noutput: {field_order: [c, a]}\n",
    )
    spec = compile_spec(path)
    assert spec.fields == ["c", "a", "b"]
    assert list(spec.rows[0]) == ["c", "a", "b"]


def test_file_includes_single_and_multi_column(tmp_path):
    path = write_spec(
        tmp_path,
        """
axes:
  concept: '@file:items/concepts.csv'
  draft: [d1, d2]
  essay: [e1, e2]
rules:
  pairs:
    p: {left: draft, right: essay, allowed: '@file:items/pairs.csv'}
""",
        {
            "items/concepts.csv": "concept_id\nc1\n\nc2\n",
            "items/pairs.csv": "draft,essay\nd1, e2\nd2,e1\n",
        },
    )
    spec = compile_spec(path)
    assert spec.axes == {"concept": ["c1", "c2"], "draft": ["d1", "d2"], "essay": ["e2", "e1"]}
    assert spec.fields == ["concept", "draft", "essay"]
    assert [(r["concept"], r["draft"], r["essay"]) for r in spec.rows] == [
        ("c1", "d1", "e2"), ("c1", "d2", "e1"), ("c2", "d1", "e2"), ("c2", "d2", "e1"),
    ]


def test_tuples_from_file(tmp_path):
    path = write_spec(
        tmp_path,
        "rules: {tuples: {t: {axes: [a, b, c], items: '@file:t.csv'}}}\n",
        {"t.csv": "a,b,c\n2,y,p\n"},
    )
    assert compile_spec(path).rows == [{"a": "2", "b": "y", "c": "p"}]


def test_concepts_block_is_passed_through(tmp_path):
    path = write_spec(tmp_path, "axes: {a: [1]}\nconcepts: {k_max: 2, anything: [x]}\n")
    assert compile_spec(path).extra == {"concepts": {"k_max": 2, "anything": ["x"]}}
    assert load_spec(path)["concepts"] == {"k_max": 2, "anything": ["x"]}


def test_extra_axes_join_rules_and_product(tmp_path):
    path = write_spec(
        tmp_path,
        "axes: {draft: [d1, d2]}\nrules: {subsets: {combo_id: [c2]}}\noutput: {field_order: [combo_id]}\n",
    )
    spec = compile_spec(path, extra_axes={"combo_id": ["c1", "c2"]})
    assert spec.rows == [{"combo_id": "c2", "draft": "d1"}, {"combo_id": "c2", "draft": "d2"}]


def test_load_spec_leaves_file_references_unread(tmp_path):
    path = write_spec(tmp_path, "axes: {a: '@file:missing.csv', b: [1, '1', 1]}\n")
    assert load_spec(path)["axes"] == {"a": "@file:missing.csv", "b": [1, "1"]}


def test_fifty_thousand_rows_compile_fast(tmp_path):
    levels = "\n".join(f"c{i}" for i in range(1000))
    path = write_spec(
        tmp_path,
        "axes:\n  concept: '@file:c.csv'\n  draft: [a, b, c, d, e]\n  model: [m1, m2, m3, m4, m5, m6, m7, m8, m9, m10]\n"
        "  essay: [a, b, c, d, e]\n"
        "rules: {ties: {t: {axes: [draft, essay]}}}\n",
        {"c.csv": "concept\n" + levels + "\n"},
    )
    start = time.perf_counter()
    spec = compile_spec(path)
    assert time.perf_counter() - start < 1.5
    assert len(spec.rows) == 50_000


# --- errors: each names the spec file and the key or value at fault ------------------------


def test_yaml_syntax_error_names_line(tmp_path):
    message = compile_error(tmp_path, "axes:\n  a: [1, 2\n  b: [3]\nrules: {\n")
    assert "spec.yaml:" in message and "YAML syntax error" in message
    assert any(f"spec.yaml:{n}:" in message for n in (3, 4, 5))


def test_duplicate_yaml_key_is_an_error(tmp_path):
    message = compile_error(tmp_path, "axes:\n  a: [1]\n  a: [2]\n")
    assert "spec.yaml:3:" in message and "duplicate key 'a'" in message


def test_unknown_top_level_key(tmp_path):
    message = compile_error(tmp_path, "axes: {a: [1]}\nreplicates: 2\n")
    assert "'replicates'" in message


def test_unknown_rule_section(tmp_path):
    message = compile_error(tmp_path, "axes: {a: [1]}\nrules: {pair: {}}\n")
    assert "rules:" in message and "'pair'" in message


def test_wrong_type_names_key_path(tmp_path):
    message = compile_error(
        tmp_path, "axes: {a: [1], b: [2]}\nrules: {pairs: {p1: {left: a, right: b, allowed: 5}}}\n"
    )
    assert "rules.pairs.p1.allowed" in message


def test_non_mapping_block_names_key(tmp_path):
    assert "rules: expected a mapping" in compile_error(tmp_path, "axes: {a: [1]}\nrules: [x]\n")
    assert "concepts: expected a mapping" in compile_error(tmp_path, "axes: {a: [1]}\nconcepts: 3\n")


def test_level_that_yaml_made_a_bool_is_rejected(tmp_path):
    message = compile_error(tmp_path, "axes: {a: [yes, x]}\n")
    assert "axes.a[0]" in message and "quote it" in message


def test_duplicate_levels_dropped_first_kept(tmp_path):
    path = write_spec(tmp_path, "axes: {a: [x, y, x, 1, '1', 1]}\n")
    assert [row["a"] for row in compile_spec(path).rows] == ["x", "y", 1, "1"]


def test_unknown_axis_lists_allowed(tmp_path):
    message = compile_error(tmp_path, "axes: {modle: [a]}\n", allowed_axes={"model", "draft_template"})
    assert "'modle'" in message and "draft_template, model" in message


def test_extra_axis_declared_in_spec_too(tmp_path):
    message = compile_error(tmp_path, "axes: {combo_id: [c1]}\n", extra_axes={"combo_id": ["c1"]})
    assert "axes.combo_id" in message


def test_subset_errors(tmp_path):
    message = compile_error(tmp_path, "axes: {a: [x, y]}\nrules: {subsets: {a: [z]}}\n")
    assert "rules.subsets.a" in message and "none of z" in message
    message = compile_error(tmp_path, "axes: {a: [x, y]}\nrules: {subsets: {a: []}}\n")
    assert "rules.subsets.a" in message
    message = compile_error(tmp_path, "axes: {a: [x]}\nrules: {subsets: {b: [x]}}\n")
    assert "rules.subsets.b" in message and "unknown axis 'b'" in message


def test_tie_without_common_level(tmp_path):
    message = compile_error(tmp_path, "axes: {a: [x], b: [y]}\nrules: {ties: {t: {axes: [a, b]}}}\n")
    assert "rules.ties.t" in message and "share no level" in message


def test_pair_value_outside_axis(tmp_path):
    message = compile_error(
        tmp_path, "axes: {a: [x], b: [y]}\nrules: {pairs: {p: {left: a, right: b, allowed: [[x, q]]}}}\n"
    )
    assert "rules.pairs.p.allowed[0]" in message and "'q'" in message and "axis b" in message


def test_unbalanced_pairs_list_counts(tmp_path):
    message = compile_error(
        tmp_path,
        "axes: {a: [x, y], b: [p, q]}\n"
        "rules: {pairs: {p: {left: a, right: b, balance: left, allowed: [[x, p], [x, q], [y, p]]}}}\n",
    )
    assert "rules.pairs.p.balance" in message and "x: 2, y: 1" in message


def test_tuple_item_of_wrong_length(tmp_path):
    message = compile_error(
        tmp_path, "axes: {a: [x], b: [y]}\nrules: {tuples: {t: {axes: [a, b], items: [[x]]}}}\n"
    )
    assert "rules.tuples.t.items[0]" in message


def test_field_order_names_unknown_field(tmp_path):
    message = compile_error(tmp_path, "axes: {a: [x]}\noutput: {field_order: [a, zz]}\n")
    assert "output.field_order" in message and "'zz'" in message


def test_missing_axis_file(tmp_path):
    message = compile_error(tmp_path, "axes: {a: '@file:items/nope.csv'}\n")
    assert "axes.a" in message and "nope.csv" in message


def test_empty_csv(tmp_path):
    message = compile_error(tmp_path, "axes: {a: '@file:a.csv'}\n", {"a.csv": "level\n"})
    assert "axes.a" in message and "a.csv" in message and "no data rows" in message


def test_ragged_csv_names_line(tmp_path):
    message = compile_error(
        tmp_path,
        "axes: {a: [x, y], b: [p]}\nrules: {pairs: {p: {left: a, right: b, allowed: '@file:p.csv'}}}\n",
        {"p.csv": "a,b\nx,p\ny,p,extra\n"},
    )
    assert "rules.pairs.p.allowed" in message and "p.csv line 3" in message


def test_multi_column_axis_file_rejected(tmp_path):
    message = compile_error(tmp_path, "axes: {a: '@file:a.csv'}\n", {"a.csv": "x,y\n1,2\n"})
    assert "axes.a" in message and "2 columns" in message


def test_expand_rows_errors_name_key_without_file():
    with pytest.raises(SpecError, match=r"rules\.ties\.t\.axes: unknown axis 'c'"):
        expand_rows({"a": ["1"], "b": ["1"]}, {"ties": {"t": {"axes": ["a", "c"]}}})


# --- property: any YAML-ish structure compiles or fails with SpecError ----------------------

WORDS = ["axes", "rules", "output", "concepts", "subsets", "ties", "pairs", "tuples", "left",
         "right", "allowed", "balance", "both", "items", "field_order", "a", "b", "c",
         "@file:x.csv", "@file:gone.csv", ""]
scalars = st.one_of(
    st.sampled_from(WORDS), st.integers(-3, 3), st.booleans(), st.none(), st.floats(allow_nan=True)
)
structures = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(WORDS), st.integers(0, 2)), inner, max_size=4),
    ),
    max_leaves=20,
)
axis_names = st.sampled_from(["a", "b", "c", "d"])
level = st.sampled_from(["x", "y", "z", 1, 2])
level_lists = st.lists(level, min_size=1, max_size=3, unique_by=str)
refs = st.sampled_from(["@file:one.csv", "@file:x.csv", "@file:gone.csv"])


def rows_of(width):
    return st.lists(st.lists(level, min_size=width, max_size=width), min_size=1, max_size=4)


def named(body):
    return st.dictionaries(st.sampled_from(["r1", "r2"]), st.one_of(body, structures), max_size=2)


rules = st.fixed_dictionaries(
    {},
    optional={
        "subsets": st.dictionaries(axis_names, st.one_of(level_lists, structures), max_size=2),
        "ties": named(st.fixed_dictionaries({"axes": st.lists(axis_names, max_size=3)})),
        "pairs": named(st.fixed_dictionaries(
            {"left": axis_names, "right": axis_names, "allowed": st.one_of(rows_of(2), refs)},
            optional={"balance": st.sampled_from(["left", "right", "both", "up"])},
        )),
        "tuples": named(st.fixed_dictionaries(
            {"axes": st.lists(axis_names, min_size=2, max_size=2), "items": st.one_of(rows_of(2), refs)}
        )),
    },
)


def spec_dicts(axis_values, rule_blocks, output, concepts):
    return st.fixed_dictionaries(
        {"axes": st.dictionaries(axis_names, axis_values, min_size=1, max_size=3)},
        optional={"rules": rule_blocks, "output": output, "concepts": concepts},
    )


# Mostly well-formed specs reach the rules; loose ones put junk at every level.
well_formed = spec_dicts(
    st.one_of(level_lists, refs),
    rules,
    st.fixed_dictionaries({"field_order": st.lists(axis_names, max_size=2)}),
    st.dictionaries(st.sampled_from(WORDS), structures, max_size=2),
)
loose = spec_dicts(st.one_of(level_lists, structures), st.one_of(rules, structures), structures, structures)
specs = st.one_of(structures, loose, well_formed, well_formed)
spec_texts = st.one_of(specs.map(yaml.safe_dump), st.text(alphabet="axes:-[]{}'\" \n@,#&*!|>%", max_size=40))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=spec_texts)
def test_any_structure_compiles_or_raises_spec_error(text):
    with tempfile.TemporaryDirectory() as folder:
        files = {"x.csv": "v,w\nx,y\n1,2\n", "one.csv": "v\nx\ny\n"}
        path = write_spec(Path(folder), text, files)
        try:
            spec = compile_spec(path, allowed_axes={"a", "b", "c"})
        except SpecError as exc:
            assert str(path) in str(exc)
        else:
            assert all(list(row) == spec.fields for row in spec.rows)
