"""Curated cohorts: a cohort made of existing essays picked from a list (the original's
scripts/build_cohort_from_list.py, ORIGINAL_OUTPUTS.md §3.3-§3.4).

    $ daydream select-top-essays --cohort-id best --template clarity-v1 --average-models sonnet_4
    $ daydream build-cohort-from-list --cohort-id best     # reads data/curation/top_essay_candidates.csv
    $ luigi --module pipeline RunCohort --cohort-id best   # no LLM call: it re-scopes what exists

From the candidate list's selected essays and the cross-experiment aggregated_scores.csv this
writes ``data/cohorts/<id>/membership.csv`` (the original's 8 wide columns: per essay its draft,
the essay, and every existing evaluation of the chosen template, failed ones included),
``curation/essay_candidates.csv`` (the list after the ``selected`` filter) and
``curation/essays.csv`` (the essay ids, for an ``essay_gen_id: '@file:...'`` spec axis that
re-judges them with new judges without regenerating anything). Everything is checked before the
first file is written, so an error leaves nothing behind.
"""
import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import PipelineError, StoreError
from .fsio import read_json, write_text_atomic
from .membership import membership_text

ESSAY_COLUMNS = ("essay_gen_id", "parent_gen_id")        # the first one present names the essays
TEMPLATE_COLUMNS = ("evaluation_template", "template", "template_id")
TRUE_WORDS = {"true", "1", "yes", "y"}
AGGREGATED_REQUIRED = ("gen_id", "parent_gen_id", "evaluation_template", "evaluation_llm_model", "score")


@dataclass
class Candidates:
    """The candidate list after the ``selected`` filter: rows exactly as read, with line numbers."""
    path: Path
    header: list
    rows: list          # lists of cells
    essay_ids: list     # selected essays, list order, each once
    essay_lines: dict   # essay id -> first line naming it

    def column(self, name) -> list:
        return [_cell(self.header, row, name) for row in self.rows]

    def text(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header)
        writer.writerows(self.rows)
        return buf.getvalue()

    def where(self, essay_id) -> str:
        return f"{self.path}:{self.essay_lines[essay_id]}"


@dataclass
class CuratedCohort:
    cohort_id: str
    template: str
    candidates: Candidates
    rows: list          # membership rows (MEMBERSHIP_FIELDS)
    unscored: int       # evaluations in the membership without a score yet (RunCohort will make them)


def read_text_csv(path, what, how_to_get) -> list:
    """All rows of a CSV file as lists of text; PipelineError naming the file when it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{what} not found at {path}; {how_to_get}")
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            return list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PipelineError(f"{path}: cannot read {what} ({exc})") from None


def truthy(value) -> bool:
    """The original's reading of a ``selected`` cell: true/1/yes/y in any case."""
    return str(value).strip().lower() in TRUE_WORDS


def read_candidates(path) -> Candidates:
    """§3.3 step 1: the essays of a candidate list (``essay_gen_id``, else ``parent_gen_id``),
    only the rows whose ``selected`` cell is true when that column exists."""
    table = read_text_csv(path, "candidate list", "run `daydream select-top-essays` first or pass --candidate-list")
    if not table:
        raise PipelineError(f"{path}: empty file; expected a header with an essay_gen_id column")
    header = [h.strip() for h in table[0]]
    id_column = next((c for c in ESSAY_COLUMNS if c in header), None)
    if id_column is None:
        raise PipelineError(f"{path}: no essay_gen_id column (nor parent_gen_id); the header is {','.join(header)}")
    rows, essay_lines = [], {}
    for line, row in enumerate(table[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if "selected" in header and not truthy(_cell(header, row, "selected")):
            continue
        rows.append(row)
        essay_id = _cell(header, row, id_column).strip()
        if essay_id:
            essay_lines.setdefault(essay_id, line)
    if not essay_lines:
        raise PipelineError(f"{path}: no selected essays (set 'selected' to true on the rows to keep)")
    return Candidates(Path(path), header, rows, list(essay_lines), essay_lines)


def _cell(header, row, name) -> str:
    i = header.index(name)
    return row[i] if i < len(row) else ""


def evaluation_template(candidates: Candidates, override=None) -> str:
    """§3.3 step 2: ``--template``, else the one value of the first template column that has any."""
    if override is not None and override.strip():
        return override.strip()
    for column in TEMPLATE_COLUMNS:
        if column not in candidates.header:
            continue
        values = list(dict.fromkeys(v.strip() for v in candidates.column(column) if v.strip()))
        if len(values) > 1:
            raise PipelineError(f"{candidates.path}: the selected rows name several evaluation templates in column "
                                f"{column} ({', '.join(values)}); pass --template to pick one")
        if values:
            return values[0]
    raise PipelineError(f"{candidates.path}: cannot tell the evaluation template (no value in "
                        f"{', '.join(TEMPLATE_COLUMNS)}); pass --template")


def read_aggregated(path) -> list:
    """Rows (dicts of stripped text) of an aggregated_scores.csv with the columns §3.3 needs."""
    table = read_text_csv(path, "aggregated scores", "run `daydream replay` (or a RunCohort) to write "
                                                     "it, or pass --aggregated-scores")
    header = [h.strip() for h in table[0]] if table else []
    missing = [c for c in AGGREGATED_REQUIRED if c not in header]
    if missing:
        raise PipelineError(f"{path}: missing column(s) {', '.join(missing)}; expected the original's "
                            f"aggregated_scores.csv columns")
    return [{name: _cell(header, row, name).strip() for name in header} for row in table[1:] if row]


def candidate_evaluations(aggregated, essay_ids, template) -> dict:
    """§3.3 step 3: essay id -> its evaluations of ``template`` (aggregated rows, any model and
    replicate, failed ones too), in table order, each gen_id once."""
    wanted = set(essay_ids)
    out = {}
    for row in aggregated:
        if row["parent_gen_id"] in wanted and row["evaluation_template"] == template and row["gen_id"]:
            out.setdefault(row["parent_gen_id"], {}).setdefault(row["gen_id"], row)
    return {essay: list(rows.values()) for essay, rows in out.items()}


def _replicate(value) -> int:
    # the original's reading: an int, else 1
    try:
        return int(value)
    except (TypeError, ValueError):
        return 1


def _text(value) -> str:
    return "" if value is None else str(value).strip()


def _metadata(paths, stage, gen_id, named_by) -> dict:
    try:
        path = paths.gen_dir(stage, gen_id) / "metadata.json"
    except PipelineError as exc:
        raise PipelineError(f"{named_by}: {exc}") from None
    try:
        meta = read_json(path)
    except (FileNotFoundError, NotADirectoryError):
        raise PipelineError(f"{named_by}: {stage} {gen_id} has no {path}; a curated cohort lists existing "
                            f"generations only (deselect it, or fix the list)") from None
    except StoreError as exc:
        raise PipelineError(f"{named_by}: {exc}") from None
    except OSError as exc:
        raise PipelineError(f"{named_by}: cannot read {path} ({exc.strerror})") from None
    if not isinstance(meta, dict):
        raise PipelineError(f"{named_by}: {path} is not a JSON object")
    return meta


def membership_rows(paths, cohort_id, candidates: Candidates, template, evaluations: dict, aggregated_path) -> list:
    """§3.3 steps 4-5: per essay in list order its draft, the essay and its evaluations, each
    (stage, gen_id) once, lineage from the generations' metadata.json."""
    rows, seen = [], set()

    def add(stage, gen_id, parent, combo, meta):
        if (stage, gen_id) not in seen:
            seen.add((stage, gen_id))
            rows.append({"stage": stage, "gen_id": gen_id, "origin_cohort_id": cohort_id, "parent_gen_id": parent,
                         "combo_id": combo, "template_id": _text(meta.get("template_id")),
                         "llm_model_id": _text(meta.get("llm_model_id")),
                         "replicate": _replicate(meta.get("replicate"))})

    for essay_id in candidates.essay_ids:
        where = f"essay {essay_id} ({candidates.where(essay_id)})"
        essay = _metadata(paths, "essay", essay_id, where)
        draft_id = _text(essay.get("parent_gen_id"))
        if not draft_id:
            raise PipelineError(f"{where}: {paths.gen_dir('essay', essay_id) / 'metadata.json'} has no "
                                f"parent_gen_id, so its draft is unknown")
        draft = _metadata(paths, "draft", draft_id, f"draft of {where}")
        combo = _text(draft.get("combo_id"))
        if not combo:
            raise PipelineError(f"draft of {where}: {paths.gen_dir('draft', draft_id) / 'metadata.json'} has no combo_id")
        add("draft", draft_id, "", combo, draft)
        add("essay", essay_id, draft_id, combo, essay)
        if essay_id not in evaluations:
            raise PipelineError(f"{where}: {aggregated_path} has no {template} evaluation of it; "
                                f"deselect it, pass another --template, or refresh the table with `daydream replay`")
        for ev in evaluations[essay_id]:
            gen_id = ev["gen_id"]
            add("evaluation", gen_id, essay_id, combo, _metadata(paths, "evaluation", gen_id, f"evaluation of {where}"))
    return rows


def plan_curated_cohort(paths, cohort_id, candidate_list, aggregated_scores, template=None,
                        overwrite=False) -> CuratedCohort:
    """Everything ``build-cohort-from-list`` writes, checked; nothing is written here."""
    cohort_id = cohort_id.strip()
    membership = paths.membership_csv(cohort_id)  # checks the id
    specs = [p for p in paths.spec_files(cohort_id) if p.is_file()]
    if specs:
        # its membership.csv is compiled from that spec, so a list written here would not last
        raise PipelineError(f"cohort {cohort_id} is defined by its spec {specs[0]}; use a new cohort id "
                            f"for the list (or remove that spec)")
    candidates = read_candidates(candidate_list)
    chosen = evaluation_template(candidates, template)
    aggregated = read_aggregated(aggregated_scores)
    evaluations = candidate_evaluations(aggregated, candidates.essay_ids, chosen)
    if not evaluations:
        raise PipelineError(f"{aggregated_scores}: no {chosen} evaluation of any selected essay of {candidate_list}")
    if membership.exists() and not overwrite:
        raise PipelineError(f"membership already exists at {membership}; rerun with --overwrite or use a new cohort id")
    rows = membership_rows(paths, cohort_id, candidates, chosen, evaluations, aggregated_scores)
    unscored = sum(1 for evs in evaluations.values() for ev in evs if not ev["score"] or ev.get("error"))
    return CuratedCohort(cohort_id, chosen, candidates, rows, unscored)


def essays_csv_text(essay_ids) -> str:
    return "essay_gen_id\n" + "".join(f"{essay_id}\n" for essay_id in essay_ids)


def write_curated_cohort(paths, cohort: CuratedCohort) -> dict:
    """Write the cohort's files (membership.csv last: it is what makes the cohort); name -> path."""
    folder = paths.cohort_dir(cohort.cohort_id) / "curation"
    out = {"candidates": folder / "essay_candidates.csv", "essays": folder / "essays.csv",
           "membership": paths.membership_csv(cohort.cohort_id)}
    write_text_atomic(out["candidates"], cohort.candidates.text())
    write_text_atomic(out["essays"], essays_csv_text(cohort.candidates.essay_ids))
    write_text_atomic(out["membership"], membership_text(cohort.rows))
    return out


def file_ref(target, spec_path) -> str:
    """The ``@file:`` value naming ``target`` in a spec saved at ``spec_path`` (the spec compiler
    reads it relative to the spec's folder)."""
    rel = os.path.relpath(os.path.abspath(target), os.path.abspath(Path(spec_path).parent))
    return f"@file:{Path(rel).as_posix()}"


def _flow(value) -> str:
    # one line of YAML, quoted where needed, for a hint the user copies
    return yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10_000).strip()


def rejudge_spec(essays_csv, spec_path, template, judges) -> str:
    """A spec, to be saved at ``spec_path``, that evaluates the essays listed in ``essays_csv``
    with ``template`` by ``judges``: existing essays are reused as they are (essay_gen_id axis)."""
    axes = {"essay_gen_id": file_ref(essays_csv, spec_path), "evaluation_template": [template],
            "evaluation_llm": list(judges)}
    return f"axes: {_flow(axes)}\noutput: {_flow({'field_order': list(axes)})}\n"


def rejudge_hint(paths, cohort: CuratedCohort, essays_csv) -> str:
    """How to re-judge the cohort's essays with new judges: the spec at this project's location,
    and its ``@file`` value at the original's location (data/cohorts/<id>/spec/config.yaml)."""
    judges = list(dict.fromkeys(r["llm_model_id"] for r in cohort.rows if r["stage"] == "evaluation"))
    own, original = paths.spec_files(cohort.cohort_id)[0], paths.spec_files(cohort.cohort_id)[-1]
    spec = rejudge_spec(essays_csv, own, cohort.template, judges)
    there = _flow({"essay_gen_id": file_ref(essays_csv, original)})[1:-1]
    return (f"To re-judge these essays with new judges without regenerating them, add the judges to "
            f"evaluation_llm (evaluations that exist already are reused, not bought again) and save this as "
            f"{own}:\n" + "".join(f"  {line}\n" for line in spec.splitlines())
            + f"(saved at the original's place, {original}, it reads {there})")


def build_cohort_from_list(paths, args) -> int:
    """``daydream build-cohort-from-list`` (the original's scripts/build_cohort_from_list.py)."""
    data = paths.data_root
    candidate_list = Path(args.candidate_list or data / "curation" / "top_essay_candidates.csv")
    aggregated = Path(args.aggregated_scores or data / "7_cross_experiment" / "aggregated_scores.csv")
    cohort = plan_curated_cohort(paths, args.cohort_id, candidate_list, aggregated, args.template, args.overwrite)
    written = write_curated_cohort(paths, cohort)
    evaluations = sum(1 for r in cohort.rows if r["stage"] == "evaluation")
    print(f"Wrote membership with {len(cohort.rows)} rows to {written['membership']}")
    print(f"Copied candidate list to {written['candidates']}")
    print(f"Wrote {len(cohort.candidates.essay_ids)} essay ids to {written['essays']}")
    pending = f"; {cohort.unscored} without a score yet will be run" if cohort.unscored else \
        "; it makes no LLM call"
    print(f"`luigi --module pipeline RunCohort --cohort-id {cohort.cohort_id}` reports on these essays and their "
          f"{evaluations} existing {cohort.template} evaluations{pending}.")
    print(rejudge_hint(paths, cohort, written["essays"]))
    return 0

