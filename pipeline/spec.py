"""Cohort spec DSL: a YAML (or JSON) file naming experiment axes and rules, compiled into rows
exactly as the original project's ``spec_dsl`` compiles them.

    >>> spec = compile_spec("cohorts/c1/spec.yaml", allowed_axes={"draft_template", "model"})
    >>> spec.fields
    ['draft_template', 'model']
    >>> spec.rows[0]
    {'draft_template': 'creative', 'model': 'gpt'}

A spec looks like this (every block is optional except, in the original's format, ``output``)::

    axes:                                    # may be {} or left out
      combo_id: [c1, c2]
      draft_llm: '@file:items/models.csv'    # .csv (header row), .txt, .yaml/.yml or .json
      evaluation_replicate: [1, 2]           # 1 and '1' are different levels; ints stay ints
    rules:                                   # applied in the order written, items in order
      tuples:                                # tuple axes are NOT declared under axes:
        draft_essay: {axes: [draft_template, essay_template], items: [[d1, e1], [d2, e2]]}
      subsets: {draft_llm: [gpt]}            # keep only these levels, axis order kept
      ties: {same_llm: [draft_llm, essay_llm]}   # or {axes: [...]}; shared levels only
      pairs:
        p1: {left: evaluation_template, right: evaluation_llm,
             allowed: '@file:items/eval_pairs.csv', balance: both}
        p2: {left: combo_id, right: draft_essay,           # a side may be an earlier group
             allowed: [[c1, [d1, e1]], [c2, [d2, e2]]]}
    output:
      field_order: [combo_id, draft_template]   # these columns first, the rest after
    concepts: {...}                          # this project's: handed back in CompiledSpec.extra

Compiling, as the original does:

1. Axis levels are de-duplicated (first occurrence kept). An axis named in a tuple rule takes its
   levels from the tuple items (distinct values at its position, first seen first); declaring it
   under ``axes:`` too is an error, and so is naming it in two tuples.
2. Rules run in the order written (sections as they appear under ``rules:``). A subset filters
   one axis. A tie ``<name>`` keeps the first axis's levels present in all the others and
   replaces the axes by ``<name>`` (which stays where it was if it is one of them, else goes to
   the earliest one's place). A pair ``<name>`` replaces its two sides (looked up through ties;
   a side may be an earlier pair or tuple, its values written as nested lists) by ``<name>``,
   whose levels are the allowed entries, at the earlier side's place; a tuple does the same for
   its axes with its items.
3. Rows are the Cartesian product of the remaining axes, in their order, the last varying
   fastest (shuffled by ``random.Random(seed)`` if a seed is given). Each row is expanded:
   pair values into their two sides (by the names written in the rule), then tuple values into
   their axes, then each tied axis gets its tie's value; a tie whose name is not one of its
   axes leaves a ``<name>`` column. Columns named in
   ``field_order`` come first, the others after in the order they appeared.

The original's format (``spec/config.yaml``, and every spec ``daydream design`` compiles)
requires ``output.field_order``; this project's ``spec.yaml`` may leave it out. Where the
original accepts input silently or crashes, this module stops with a SpecError naming the file
and key: unknown top-level, output or rule-body keys (e.g. ``replicates:``), bool/null/empty or
non-finite levels, an empty axis, CSV rows with more cells than the header, a rule name that
is already an axis, and a pair whose two sides are tied together.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.errors import SpecError

SPEC_KEYS = ("axes", "rules", "output", "concepts")
RULE_KINDS = ("subsets", "ties", "pairs", "tuples")
BALANCE_SIDES = ("left", "right", "both")
FILE_PREFIX = "@file:"
FILE_KINDS = (".csv", ".txt", ".yaml", ".yml", ".json")
OWN_SPEC_NAME = "spec.yaml"  # this project's spec file; any other name is the original's format


@dataclass(frozen=True)
class CompiledSpec:
    """A spec compiled to rows; ``rows`` is what the cohort runs, one generation chain each."""

    path: Path
    fields: list[str]  # column order
    rows: list[dict]  # one dict per row, keys = fields; values str, or int/float as written
    axes: dict[str, list]  # levels each column takes, in row order
    extra: dict  # other top-level blocks, e.g. {"concepts": {...}}


def load_spec(path) -> dict:
    """Parse a spec file and check its structure; ``@file:`` references are left unresolved.

    >>> load_spec("cohorts/c1/spec.yaml")["axes"]
    {'draft_template': ['creative', 'links'], 'model': '@file:items/models.csv'}

    Returns ``{"axes": ..., "rules": ..., "output": {"field_order": [...] or None}}`` plus any
    ``concepts`` block as written; levels are de-duplicated, rules keep their written order.
    """
    path = Path(path)
    data = _read_spec_file(path)
    try:
        return _check_spec(data)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None


def file_refs(path) -> list:
    """The files the ``@file:`` references of spec ``path`` name, relative to its folder, in the
    order written; [] for a spec that cannot be read (compiling it says why).

    >>> file_refs("cohorts/c1/spec.yaml")
    [PosixPath('cohorts/c1/items/models.csv')]
    """
    try:
        doc = load_spec(path)
    except SpecError:
        return []
    found, todo = [], [doc]
    while todo:
        value = todo.pop()
        if _is_file_ref(value):
            found.append(Path(path).parent / value[len(FILE_PREFIX):].strip())
        elif isinstance(value, dict):
            todo.extend(reversed(list(value.values())))
        elif isinstance(value, (list, tuple)):
            todo.extend(reversed(value))
    return found


def compile_spec(path, allowed_axes=None, extra_axes=None, original=None, seed=None) -> CompiledSpec:
    """Compile a spec file into rows.

    ``allowed_axes`` (any container of names) rejects axes the caller does not know.
    ``extra_axes`` ({name: levels}) adds axes computed elsewhere, e.g. ``combo_id`` levels made
    from the ``concepts:`` block; they follow the declared axes and take part in rules like them.
    ``original`` (default: any file not named spec.yaml) requires ``output.field_order``.
    ``seed`` shuffles the product before expansion, with the original's ``random.Random(seed)``.

    >>> spec = compile_spec("spec.yaml", extra_axes={"combo_id": ["c1", "c2"]})
    >>> [row["combo_id"] for row in spec.rows]
    ['c1', 'c2']
    """
    path = Path(path)
    spec = load_spec(path)
    if original is None:
        original = path.name != OWN_SPEC_NAME
    try:
        axes = {}
        for name, levels in spec["axes"].items():
            if allowed_axes is not None and name not in allowed_axes:
                raise SpecError(f"axes: unknown axis {name!r} (allowed: {_show(sorted(allowed_axes))})")
            levels = _resolve(levels, path.parent, f"axes.{name}")
            if isinstance(levels, list) and levels and isinstance(levels[0], tuple):
                raise SpecError(f"axes.{name}: {spec['axes'][name][len(FILE_PREFIX):]} has "
                                f"{len(levels[0])} columns; an axis file needs exactly one "
                                "(use rules.tuples for combinations)")
            axes[name] = _levels(levels, f"axes.{name}")
        for name, levels in (extra_axes or {}).items():
            if name in axes:
                raise SpecError(
                    f"axes.{name}: this axis is generated by the pipeline (e.g. from concepts:); "
                    "remove it from axes:"
                )
            axes[name] = _levels(levels, f"axes.{name}")
        if original and spec["output"]["field_order"] is None:
            raise SpecError(
                "output.field_order: required in the original's spec format; list the axes in "
                "the column order you want, e.g. output: {field_order: [combo_id, draft_template]}"
            )
        fields, rows = _design(axes, spec["rules"], spec["output"]["field_order"], path.parent, allowed_axes,
                               seed)
    except SpecError as exc:
        raise SpecError(f"{path}: {exc}") from None
    extra = {key: value for key, value in spec.items() if key not in ("axes", "rules", "output")}
    levels = {field: list(dict.fromkeys(row[field] for row in rows)) for field in fields}
    return CompiledSpec(path, fields, rows, levels, extra)


def expand_rows(axes: dict[str, list], rules: dict, field_order=None) -> list[dict]:
    """Apply ``rules`` (shaped like the spec's ``rules:`` block, no ``@file:``) to ``axes`` and
    return the rows, keys ordered by ``field_order`` then as expanded.

    >>> expand_rows({"a": ["1", "2"], "b": ["x", "y"]},
    ...             {"pairs": {"p": {"left": "a", "right": "b", "allowed": [["1", "y"]]}}})
    [{'a': '1', 'b': 'y'}]
    """
    checked = {name: _levels(levels, f"axes.{name}") for name, levels in _check_axes(axes).items()}
    order = None if field_order is None else _name_list(field_order, "output.field_order", minimum=0)
    return _design(checked, _check_rules(rules), order, None, None, None)[1]


def render_rows(spec: CompiledSpec, fmt: str) -> str:
    """The rows as ``csv`` (header = spec.fields) or ``jsonl`` (one object a line, ints as ints)."""
    if fmt == "jsonl":
        return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in spec.rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(spec.fields)
    writer.writerows([row[field] for field in spec.fields] for row in spec.rows)
    return out.getvalue()


# --- reading ---------------------------------------------------------------------------------


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (plain PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            duplicate = key in seen
        except TypeError:  # unhashable key: construct_mapping reports it with its line
            break
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _read_spec_file(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read spec: {exc}") from None
    return _parse_text(path, text, str(path))


def _parse_text(path: Path, text: str, shown: str):
    """YAML (or JSON for a .json file); errors name ``shown`` and the line."""
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise SpecError(f"{shown}:{exc.lineno}: JSON syntax error: {exc.msg}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{shown}:{mark.line + 1}" if mark is not None else shown
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{where}: YAML syntax error: {problem}") from None


def _resolve(value, base: Path | None, where: str):
    """The value, or what its ``@file:`` reference holds (relative to the spec's folder)."""
    if not _is_file_ref(value):
        return value
    if base is None:
        raise SpecError(f"{where}: {value!r} is not read here; use compile_spec to resolve @file:")
    rel = value[len(FILE_PREFIX):].strip()
    target = base / rel
    kind = target.suffix.lower()
    if kind not in FILE_KINDS:
        raise SpecError(f"{where}: {rel}: unsupported @file extension {kind or '(none)'!r} "
                        f"(use one of {', '.join(FILE_KINDS)})")
    try:
        text = target.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise SpecError(f"{where}: file not found: {target} (paths are relative to the spec's folder)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{where}: cannot read {rel}: {exc}") from None
    if kind == ".csv":
        return _csv_values(text, f"{where}: {rel}")
    if kind == ".txt":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = _parse_text(target, text, rel)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None
    return [] if data is None and kind != ".json" else data


def _csv_values(text: str, where: str) -> list:
    """One named column: its non-blank values. Several: one tuple per row in header order, every
    cell filled. Cells are stripped; blank lines skipped; columns with an empty name ignored."""
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, [])
        columns = [(i, name.strip()) for i, name in enumerate(header) if name.strip()]
        if not columns:
            raise SpecError(f"{where}: needs a header row naming its column(s) on line 1")
        values = []
        for cells in reader:
            if not cells:
                continue
            if any(cell.strip() for cell in cells[len(header):]):
                raise SpecError(f"{where} line {reader.line_num}: {len(cells)} fields, but the header "
                                f"names {len(header)}")
            got = [cells[i].strip() if i < len(cells) else "" for i, _ in columns]
            if len(columns) == 1:
                if got[0]:
                    values.append(got[0])
                continue
            if "" in got:
                column = columns[got.index("")][1]
                raise SpecError(f"{where} line {reader.line_num}: empty value in column {column!r}")
            values.append(tuple(got))
    except csv.Error as exc:
        raise SpecError(f"{where} line {reader.line_num}: {exc}") from None
    if not values:
        raise SpecError(f"{where}: has no data rows (the first row is the header)")
    return values


# --- structure checks ------------------------------------------------------------------------
# Each raises SpecError("<key path>: <problem>"); the public functions prefix the file.


def _check_spec(data) -> dict:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(f"the spec must be a mapping of {', '.join(SPEC_KEYS)}, got {_kind(data)}")
    for key in data:
        if key not in SPEC_KEYS:
            raise SpecError(f"unknown top-level key {key!r} (allowed: {', '.join(SPEC_KEYS)})")
    spec = {
        "axes": _check_axes(data.get("axes")),
        "rules": _check_rules(data.get("rules")),
        "output": _check_output(data.get("output")),
    }
    if "concepts" in data:
        spec["concepts"] = _mapping(data["concepts"], "concepts")
    return spec


def _check_axes(axes) -> dict:
    checked = {}
    for name, levels in _mapping(axes, "axes").items():
        name = _name(name, "axes")
        where = f"axes.{name}"
        if levels is None:
            raise SpecError(f"{where}: null is not a list of levels; an axis named in rules.tuples "
                            "takes its levels from the items and must not be listed under axes:")
        checked[name] = levels if _is_file_ref(levels) else _levels(levels, where)
    return checked


def _check_output(output) -> dict:
    output = _mapping(output, "output")
    for key in output:
        if key != "field_order":
            raise SpecError(f"output: unknown key {key!r} (allowed: field_order)")
    order = output.get("field_order")
    return {"field_order": None if order is None else _name_list(order, "output.field_order", minimum=0)}


def _check_rules(rules) -> dict:
    """The rules as written, each body normalised; section and item order kept."""
    if isinstance(rules, list):
        raise SpecError("rules: expected a mapping of sections (subsets, ties, pairs, tuples), got a list")
    checked = {}
    for kind, section in _mapping(rules, "rules").items():
        if kind not in RULE_KINDS:
            raise SpecError(f"rules: unknown section {kind!r} (allowed: {', '.join(RULE_KINDS)})")
        checked[kind] = {}
        for name, body in _mapping(section, f"rules.{kind}").items():
            name = _name(name, f"rules.{kind}")
            checked[kind][name] = _CHECKS[kind](body, f"rules.{kind}.{name}")
    return checked


def _check_subset(keep, where):
    return keep if _is_file_ref(keep) else _list(keep, where)


def _check_tie(body, where):
    if isinstance(body, dict):
        if "to" in body:
            raise SpecError(f"{where}.to: not allowed; the tie's name ({where.rsplit('.', 1)[1]}) is its column")
        body = _body(body, where, required=("axes",))["axes"]
        where = f"{where}.axes"
    return {"axes": _name_list(body, where, minimum=1)}


def _check_pair(body, where):
    body = _body(body, where, required=("left", "right", "allowed"), optional=("balance",))
    left, right = _name(body["left"], f"{where}.left"), _name(body["right"], f"{where}.right")
    if left == right:
        raise SpecError(f"{where}: left and right are both {left!r}; a pair needs two axes")
    balance = body.get("balance")
    if balance is not None and balance not in BALANCE_SIDES:
        raise SpecError(f"{where}.balance: expected one of {', '.join(BALANCE_SIDES)}, got {balance!r}")
    allowed = body["allowed"]
    allowed = allowed if _is_file_ref(allowed) else _list(allowed, f"{where}.allowed")
    return {"left": left, "right": right, "allowed": allowed, "balance": balance}


def _check_tuple(body, where):
    if isinstance(body, dict) and "expand" in body:
        raise SpecError(f"{where}.expand: not supported (tuples always expand into their axes)")
    body = _body(body, where, required=("axes", "items"))
    items = body["items"]
    items = items if _is_file_ref(items) else _list(items, f"{where}.items")
    return {"axes": _name_list(body["axes"], f"{where}.axes", minimum=1), "items": items}


_CHECKS = {"subsets": _check_subset, "ties": _check_tie, "pairs": _check_pair, "tuples": _check_tuple}


def _mapping(value, where: str) -> dict:
    # An empty YAML block (`rules:` with nothing under it) loads as None.
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpecError(f"{where}: expected a mapping, got {_kind(value)}")
    return value


def _body(body, where: str, required: tuple, optional: tuple = ()) -> dict:
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected a mapping with keys {', '.join(required)}, got {_kind(body)}")
    for key in body:
        if key not in required + optional:
            raise SpecError(f"{where}: unknown key {key!r} (allowed: {', '.join(required + optional)})")
    for key in required:
        if key not in body:
            raise SpecError(f"{where}: missing key {key!r}")
    return body


def _list(value, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: expected a non-empty list or '{FILE_PREFIX}<file>', got {_kind(value)}")
    return value


def _name(value, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(f"{where}: expected a name (non-empty string), got {_kind(value)}")
    return value


def _name_list(value, where: str, minimum: int) -> list[str]:
    if not isinstance(value, list) or len(value) < minimum:
        raise SpecError(f"{where}: expected a list of at least {minimum} axis names, got {_kind(value)}")
    names = [_name(item, f"{where}[{i}]") for i, item in enumerate(value)]
    twice = [n for i, n in enumerate(names) if n in names[:i]]
    if twice:
        raise SpecError(f"{where}: {twice[0]!r} is listed twice")
    return names


def _level(value, where: str):
    # bool is an int subclass; YAML turns yes/no/on/off into bools, which is never what was meant.
    # nan/inf would not survive a JSON or CSV round trip as the same level.
    if isinstance(value, (int, float)) and not isinstance(value, bool) \
            and (isinstance(value, int) or math.isfinite(value)):
        return value
    if isinstance(value, str) and value:
        return value
    raise SpecError(f"{where}: a level must be a non-empty string or a number, got {_kind(value)} (quote it)")


def _levels(levels, where: str) -> list:
    """Checked levels, duplicates dropped (first kept)."""
    if not isinstance(levels, list) or not levels:
        raise SpecError(f"{where}: expected a non-empty list of levels or '{FILE_PREFIX}<file>', "
                        f"got {_kind(levels)}")
    return list(dict.fromkeys(_level(level, f"{where}[{i}]") for i, level in enumerate(levels)))


def _entry(entry, width: int, where: str, nested: bool) -> tuple:
    """A pair/tuple entry as a tuple of levels; with ``nested`` a value may be a list of levels
    (a pair side that is an earlier pair or tuple)."""
    if not isinstance(entry, (list, tuple)) or len(entry) != width:
        raise SpecError(f"{where}: expected a list of {width} levels, got {_kind(entry)}")
    out = []
    for j, value in enumerate(entry):
        if nested and isinstance(value, (list, tuple)):
            value = tuple(_level(v, f"{where}[{j}][{k}]") for k, v in enumerate(value))
        else:
            value = _level(value, f"{where}[{j}]")
        out.append(value)
    return tuple(out)


def _is_file_ref(value) -> bool:
    return isinstance(value, str) and value.startswith(FILE_PREFIX)


def _kind(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def _show(values) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:10])
    return shown if len(values) <= 10 else f"{shown}, ... ({len(values)} in all)"


# --- compiling -------------------------------------------------------------------------------


class _Design:
    """The axes as rules reshape them: current levels per axis name, their product order, and
    how to turn tie/pair/tuple values back into the original columns."""

    def __init__(self, axes: dict[str, list]):
        self.levels = dict(axes)
        self.order = list(axes)
        self.tie_back: dict[str, str] = {}  # axis -> tie name holding its value
        self.pairs: dict[str, tuple[str, str]] = {}  # pair name -> (left, right) as written
        self.tuples: dict[str, list[str]] = {}  # tuple name -> its axes as written
        self.absorbed: dict[str, str] = {}  # axis -> "pair 'p1'" etc. that replaced it

    def axis(self, name: str, where: str, through_ties: bool) -> str:
        """The current axis ``name`` refers to; unknown or absorbed axes are errors."""
        resolved = self.tie_back.get(name, name) if through_ties else name
        if resolved in self.levels:
            return resolved
        if resolved in self.absorbed:
            group = self.absorbed[resolved]
            raise SpecError(f"{where}: axis {resolved!r} was replaced by {group} in an earlier rule; "
                            f"refer to {group.split(' ', 1)[1]} instead, or move this rule before it")
        raise SpecError(f"{where}: unknown axis {name!r} (axes now: {_show(self.order)})")

    def new_name(self, name: str, where: str, allowed=()) -> None:
        if (name in self.levels and name not in allowed) or name in self.absorbed:
            raise SpecError(f"{where}: the rule name {name!r} is already an axis; give the rule another name")

    def replace(self, names: list[str], group: str, levels: list, label: str) -> None:
        """Put ``group`` with ``levels`` at the earliest of ``names``, which are dropped."""
        at = min(self.order.index(n) for n in names)
        for n in names:
            self.levels.pop(n)
            self.order.remove(n)
            self.absorbed[n] = label
        self.order.insert(at, group)
        self.levels[group] = levels


def _design(axes, rules, field_order, base, allowed_axes, seed):
    """(fields, rows) for resolved ``axes`` and checked ``rules`` (files read from ``base``)."""
    rules = {**rules, "tuples": {name: dict(body) for name, body in rules.get("tuples", {}).items()}}
    for name, tup in rules["tuples"].items():
        where = f"rules.tuples.{name}.items"
        tup["items"] = [_entry(item, len(tup["axes"]), f"{where}[{i}]", nested=False)
                        for i, item in enumerate(_list(_resolve(tup["items"], base, where), where))]
    axes = dict(axes)
    axes.update(_tuple_axes(rules["tuples"], axes, allowed_axes))
    if not axes:
        raise SpecError("axes: no axes declared (and no rules.tuples to take them from)")
    for field in field_order or []:
        if field not in axes:
            raise SpecError(f"output.field_order: {field!r} is not an axis (axes: {_show(axes)})")
    design = _Design(axes)
    for kind, section in rules.items():
        for name, body in section.items():
            _APPLY[kind](design, name, body, f"rules.{kind}.{name}", base)
    combos = list(itertools.product(*(design.levels[name] for name in design.order)))
    if seed is not None:
        random.Random(seed).shuffle(combos)
    rows = []
    for combo in combos:
        row = _expand(dict(zip(design.order, combo)), design)
        ordered = {field: row[field] for field in field_order or [] if field in row}
        ordered.update(row)
        rows.append(ordered)
    return list(rows[0]), rows


def _tuple_axes(tuples: dict, declared: dict, allowed_axes) -> dict[str, list]:
    """Levels of the axes named in tuple rules: distinct values at their position, first seen
    first, in the order the axes are first named."""
    derived: dict[str, list] = {}
    owner: dict[str, str] = {}
    for name, tup in tuples.items():
        where = f"rules.tuples.{name}.axes"
        for pos, axis in enumerate(tup["axes"]):
            if axis in declared:
                raise SpecError(f"{where}: tuple axis may not provide explicit levels: {axis!r} is also "
                                "under axes:; remove it there (its levels come from the items)")
            if axis in owner:
                raise SpecError(f"{where}: axis {axis!r} is already bound by tuple {owner[axis]!r}; "
                                "an axis can be in one tuple only (merge the two tuples)")
            if allowed_axes is not None and axis not in allowed_axes:
                raise SpecError(f"{where}: unknown axis {axis!r} (allowed: {_show(sorted(allowed_axes))})")
            owner[axis] = name
            derived[axis] = list(dict.fromkeys(item[pos] for item in tup["items"]))
    return derived


def _apply_subset(design: _Design, axis: str, keep, where: str, base) -> None:
    keep = _list(_resolve(keep, base, where), where)
    wanted = {_level(value, f"{where}[{i}]") for i, value in enumerate(keep)}
    axis = design.axis(axis, where, through_ties=False)
    kept = [level for level in design.levels[axis] if level in wanted]
    if not kept:
        raise SpecError(f"{where}: none of {_show(keep)} is a level of axis {axis} "
                        f"(levels: {_show(design.levels[axis])})")
    design.levels[axis] = kept


def _apply_tie(design: _Design, name: str, tie: dict, where: str, base) -> None:
    names = [design.axis(axis, f"{where}.axes", through_ties=False) for axis in tie["axes"]]
    design.new_name(name, where, allowed=names)
    others = [set(design.levels[axis]) for axis in names[1:]]
    shared = [level for level in design.levels[names[0]] if all(level in s for s in others)]
    if not shared:
        listing = "; ".join(f"{axis}: {_show(design.levels[axis])}" for axis in names)
        raise SpecError(f"{where}: axes {', '.join(names)} share no level ({listing})")
    if name not in design.order:
        design.order.insert(min(design.order.index(axis) for axis in names), name)
    design.levels[name] = shared
    design.tie_back.setdefault(name, name)
    for axis in names:
        design.tie_back[axis] = name
        if axis != name:
            design.levels.pop(axis)
            design.order.remove(axis)
            design.absorbed[axis] = f"tie {name!r}"


def _apply_pair(design: _Design, name: str, pair: dict, where: str, base) -> None:
    sides = [design.axis(pair[side], f"{where}.{side}", through_ties=True) for side in ("left", "right")]
    if sides[0] == sides[1]:
        raise SpecError(f"{where}: left {pair['left']!r} and right {pair['right']!r} are the same axis "
                        f"{sides[0]!r} (tied)")
    design.new_name(name, where)
    here = f"{where}.allowed"
    allowed = _list(_resolve(pair["allowed"], base, here), here)
    domains = [set(design.levels[side]) for side in sides]
    entries = []
    for i, raw in enumerate(allowed):
        entry = _entry(raw, 2, f"{here}[{i}]", nested=True)
        for side, domain, value in zip(sides, domains, entry):
            if value not in domain:
                shown = list(value) if isinstance(value, tuple) else value
                raise SpecError(f"{here}[{i}] {_show_entry(entry)}: {shown!r} is not a level of axis "
                                f"{side} (levels: {_show(_show_entry(v) for v in design.levels[side])})")
        entries.append(entry)
    entries = list(dict.fromkeys(entries))
    if pair["balance"]:
        _check_balance(entries, pair, where)
    design.pairs[name] = (pair["left"], pair["right"])
    design.replace(sides, name, entries, f"pair {name!r}")


def _apply_tuple(design: _Design, name: str, tup: dict, where: str, base) -> None:
    axes = [design.axis(axis, f"{where}.axes", through_ties=True) for axis in tup["axes"]]
    design.new_name(name, where)
    domains = [set(design.levels[axis]) for axis in axes]
    for i, item in enumerate(tup["items"]):
        for axis, domain, value in zip(axes, domains, item):
            if value not in domain:
                raise SpecError(f"{where}.items[{i}] {list(item)}: {value!r} is not a level of axis "
                                f"{axis} (levels left: {_show(design.levels[axis])})")
    design.tuples[name] = list(tup["axes"])
    design.replace(axes, name, list(dict.fromkeys(tup["items"])), f"tuple {name!r}")


_APPLY = {"subsets": _apply_subset, "ties": _apply_tie, "pairs": _apply_pair, "tuples": _apply_tuple}


def _check_balance(entries: list[tuple], pair: dict, where: str) -> None:
    sides = ("left", "right") if pair["balance"] == "both" else (pair["balance"],)
    for side in sides:
        pos = 0 if side == "left" else 1
        counts: dict = {}
        for entry in entries:
            counts[entry[pos]] = counts.get(entry[pos], 0) + 1
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{_show_entry(level)}: {n}" for level, n in counts.items())
            raise SpecError(
                f"{where}.balance: {side} levels of {pair[side]} have unequal numbers of partners ({listing})"
            )


def _expand(row: dict, design: _Design) -> dict:
    """Pair values into their sides, then tuple values into their axes, then tied axes; each
    kind's group columns dropped after that kind is done (as the original does)."""
    for groups in (design.pairs, design.tuples):
        done = [group for group in groups if group in row]
        for group in done:
            row.update(zip(groups[group], row[group]))
        for group in done:
            row.pop(group, None)
    for axis, tie in design.tie_back.items():
        if axis != tie and tie in row and axis not in row:
            row[axis] = row[tie]
    return row


def _show_entry(value) -> str:
    return "[" + ", ".join(str(v) for v in value) + "]" if isinstance(value, tuple) else str(value)
