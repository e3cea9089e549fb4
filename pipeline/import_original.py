"""``daydream import-original SRC_DATA``: bring a store written by the original into this project.

    >>> plan = plan_import(Path("/old/DayDreaming/data"), paths)  # reads only; StoreError on conflict
    >>> summary = apply_import(plan, paths)
    >>> print(summary.text())

SRC is only ever read. Every check (readable metadata, conflicting destinations, conflicting
combo definitions, cohort clashes) runs in ``plan_import`` before ``apply_import`` writes
anything. Generation files are hard-linked (copied across devices); metadata.json is a copy
enriched with this project's fields. Importing twice writes nothing the second time.
"""
import csv
import errno
import filecmp
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .backfill import logged
from .combos import FIELDS as COMBO_FIELDS, append_rows, read_mappings
from .errors import StoreError
from .events import EventLog
from .fsio import read_json, write_bytes_atomic, write_json_atomic, write_text_atomic
from .generation import sha256
from .membership import MEMBERSHIP_FIELDS, membership_text, spec_folder_hash
from .paths import Paths, check_id
from .stages import STAGES
from .store import file_sha256
from .stored_gen import emit_completed, lineage, original_score, read_stored

# parsed.txt last: its presence is what marks a generation done
LINKED = ("prompt.txt", "raw.txt", "raw_metadata.json", "parsed_metadata.json", "parsed.txt")
_SHOW = 5  # conflicts listed in an error


@dataclass
class GenPlan:
    gen: object           # StoredGen read from SRC
    dest: Path
    lineage: dict
    links: list           # file names to link (or copy) into dest
    meta: dict | None     # metadata.json to write; None when dest already has a consistent one
    score: tuple | None   # (score, scale, parser) for evaluations with a readable parsed.txt
    log_event: bool       # done in SRC and not yet in the event log


@dataclass
class CohortPlan:
    cohort_id: str
    spec_files: list      # (src file, dest file) pairs to copy
    members: list         # MEMBERSHIP_FIELDS dicts; [] when SRC has no membership.csv
    membership_text: str | None   # to write; None when dest already lists the same members
    log_event: bool


@dataclass
class ImportPlan:
    src: Path
    gens: list = field(default_factory=list)
    combo_rows: list = field(default_factory=list)
    cohorts: list = field(default_factory=list)
    warnings: list = field(default_factory=list)


@dataclass
class ImportSummary:
    imported: Counter
    skipped: int
    scores: int
    cohorts: int
    combos: int
    events: int
    warnings: list

    def text(self) -> str:
        per_stage = ", ".join(f"{stage} {self.imported[stage]}" for stage in STAGES)
        return (f"imported generations: {per_stage} ({self.skipped} already present)\n"
                f"scores: {self.scores}, cohorts: {self.cohorts}, new combos: {self.combos}, "
                f"events written: {self.events}")


def plan_import(src, paths) -> ImportPlan:
    """Everything the import would do, as plain data. Raises StoreError (nothing written) when
    SRC is unreadable or clashes with what the destination already holds."""
    src = Path(src)
    if not Paths(src).gens_root.is_dir():
        raise StoreError(f"{src}: no gens/ folder; give the original's data folder (the one holding gens/, "
                         f"cohorts/ and combo_mappings.csv)")
    plan = ImportPlan(src)
    known_gens, known_cohorts = logged(paths.events_dir)
    stored = _read_src_gens(src, plan.warnings)
    combos, plan.combo_rows = _plan_combos(src / "combo_mappings.csv", paths.combo_mappings_csv)

    def meta_of(stage, gen_id):
        gen = stored.get((stage, gen_id))
        if gen is not None:
            return gen.meta
        dest = paths.stage_dir(stage) / gen_id / "metadata.json"
        return read_json(dest) if dest.exists() else {}

    conflicts = []
    for (stage, gen_id), gen in stored.items():
        lin = lineage(meta_of, stage, gen_id)
        score = None
        if stage == "evaluation" and gen.parsed is not None:
            try:
                score = (original_score(gen.parsed), None, gen.parser or "in_last_line")
            except ValueError as exc:
                plan.warnings.append(f"gens/{stage}/{gen_id}/parsed.txt: {exc} (no score imported)")
        dest = paths.gen_dir(stage, gen_id)
        links, write_meta = _plan_files(gen, dest, conflicts)
        meta = _enriched(gen, lin, combos, score) if write_meta else None
        plan.gens.append(GenPlan(gen, dest, lin, links, meta, score,
                                 gen.parsed is not None and gen_id not in known_gens))
    for cohort_dir in sorted(p for p in Paths(src).cohorts_data_root.glob("*") if p.is_dir()):
        plan.cohorts.append(_plan_cohort(cohort_dir, paths, meta_of, known_cohorts, conflicts))
    if conflicts:
        listed = "\n  ".join(conflicts[:_SHOW]) + (f"\n  ... and {len(conflicts) - _SHOW} more"
                                                    if len(conflicts) > _SHOW else "")
        raise StoreError(f"cannot import {src} into {paths.data_root}: {len(conflicts)} conflict(s), nothing was "
                         f"written:\n  {listed}\nmove the destination aside or import into another --data-root")
    return plan


def _read_src_gens(src, warnings) -> dict:
    """(stage, gen_id) -> StoredGen for every generation folder of SRC (metadata must be readable)."""
    stored = {}
    for stage_dir in sorted(p for p in Paths(src).gens_root.iterdir() if p.is_dir()):
        if stage_dir.name not in STAGES:
            warnings.append(f"gens/{stage_dir.name}: not a stage ({', '.join(STAGES)}); skipped")
            continue
        for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            gen_id = check_id(folder.name, "generation id", str(folder), error=StoreError)
            if not (folder / "metadata.json").exists():
                warnings.append(f"gens/{stage_dir.name}/{gen_id}: no metadata.json (not imported)")
                continue
            try:
                gen = read_stored(folder, stage_dir.name, gen_id, warnings.append)
            except StoreError as exc:
                raise StoreError(f"{folder / 'metadata.json'}: unreadable ({exc.__cause__ or exc}); nothing was "
                                 f"imported: repair it (in a copy of the store if it must stay as it is) and "
                                 f"import again") from exc
            for key, expected in (("stage", stage_dir.name), ("gen_id", gen_id)):
                if gen.meta.get(key) not in (None, expected):
                    raise StoreError(f"{folder / 'metadata.json'}: {key} is {gen.meta[key]!r} but the folder says "
                                     f"{expected!r}; fix the metadata before importing")
            stored[stage_dir.name, gen_id] = gen
    return stored


def _plan_combos(src_csv, dest_csv):
    """(combo definitions of SRC and destination, SRC rows to append)."""
    dest = read_mappings(dest_csv)
    if not src_csv.exists():
        return dest, []
    source = read_mappings(src_csv)
    for cid, info in source.items():
        if cid in dest and dest[cid] != info:
            raise StoreError(f"combo {cid} is defined differently in {src_csv} ({_combo_text(info)}) and "
                             f"{dest_csv} ({_combo_text(dest[cid])}); nothing was written")
    with src_csv.open(encoding="utf-8", newline="") as fh:
        rows = [[row[k] for k in COMBO_FIELDS] for row in csv.DictReader(fh) if row["combo_id"] not in dest]
    return {**dest, **source}, rows


def _combo_text(info):
    return f"{'+'.join(info['concepts'])}, {info['description_level']}, k_max {info['k_max']}"


def _plan_files(gen, dest, conflicts):
    """(files to link, whether metadata.json is to be written); clashes go to ``conflicts``."""
    links = []
    for name in LINKED:
        source = gen.folder / name
        if not source.exists():
            continue
        if not (dest / name).exists():
            links.append(name)
        elif not filecmp.cmp(source, dest / name, shallow=False):
            conflicts.append(f"{source} differs from {dest / name}")
    if not (dest / "metadata.json").exists():
        return links, True
    try:
        current = read_json(dest / "metadata.json")
    except StoreError as exc:
        conflicts.append(str(exc))
        return links, False
    # this project adds keys to metadata and never rewrites the original's: those must agree
    for key, value in gen.meta.items():
        if key in current and str(current[key]) != str(value):
            conflicts.append(f"{gen.folder / 'metadata.json'} has {key}={value!r} but "
                             f"{dest / 'metadata.json'} has {current[key]!r}")
    return links, False


def _enriched(gen, lin, combos, score) -> dict:
    """The original's metadata plus the fields this project reads."""
    meta = {**gen.meta, **lin, "stage": gen.stage, "gen_id": gen.gen_id,
            "origin_cohort_ids": [gen.origin_cohort_id] if gen.origin_cohort_id else [],
            "mode": gen.meta.get("mode") or ("copy" if gen.copy else "llm"),
            "generator": "copy" if gen.copy else "llm", "parser": gen.parser, "source": "import",
            **{k: v for k, v in gen.call_fields().items() if v is not None}}
    if gen.stage == "draft" and lin["combo_id"] in combos:
        combo = combos[lin["combo_id"]]
        meta.update(concept_ids=list(combo["concepts"]), description_level=combo["description_level"],
                    k_max=combo["k_max"])
    if gen.parsed is not None:
        raw = gen.folder / "raw.txt"
        meta.update(status="done", parsed_sha256=sha256(gen.parsed),
                    raw_sha256=file_sha256(raw if raw.exists() else gen.folder / "parsed.txt"))
    if score is not None:
        meta.update(score=score[0], score_scale=score[1])
    return meta


def _plan_cohort(cohort_dir, paths, meta_of, known_cohorts, conflicts) -> CohortPlan:
    cohort_id = check_id(cohort_dir.name, "cohort id", str(cohort_dir), error=StoreError)
    for own in (paths.cohorts_root / cohort_id / "spec.yaml", paths.cohorts_root / cohort_id / "spec" / "config.yaml"):
        if own.exists():
            conflicts.append(f"cohort {cohort_id} of {cohort_dir} clashes with this project's spec {own}; "
                             f"rename one of them")
    dest_dir = paths.cohort_dir(cohort_id)
    spec_files = []
    spec_src = cohort_dir / "spec"
    for source in sorted(p for p in spec_src.rglob("*") if p.is_file()):
        target = dest_dir / "spec" / source.relative_to(spec_src)
        if not target.exists():
            spec_files.append((source, target))
        elif not filecmp.cmp(source, target, shallow=False):
            conflicts.append(f"{source} differs from {target}")
    members = _members(cohort_dir / "membership.csv", cohort_id, meta_of) \
        if (cohort_dir / "membership.csv").exists() else []
    text = None
    dest_csv = paths.membership_csv(cohort_id)
    if members:
        if not dest_csv.exists():
            text = membership_text(members)
        elif _listed(dest_csv) != {(m["stage"], m["gen_id"]) for m in members}:
            conflicts.append(f"{cohort_dir / 'membership.csv'} lists other generations than {dest_csv}")
    return CohortPlan(cohort_id, spec_files, members, text, bool(members) and cohort_id not in known_cohorts)


def _members(path, cohort_id, meta_of) -> list:
    """Wide membership rows: the file's own columns where it has them (the original writes only
    stage,gen_id), lineage from each generation's metadata otherwise."""
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not {"stage", "gen_id"} <= set(reader.fieldnames or ()):
            raise StoreError(f"{path}: header must include stage,gen_id (found {','.join(reader.fieldnames or [])})")
        rows = list(reader)
    out, seen = [], set()
    for line, row in enumerate(rows, start=2):
        stage, gen_id = (row["stage"] or "").strip(), (row["gen_id"] or "").strip()
        if stage not in STAGES:
            raise StoreError(f"{path}:{line}: unknown stage {stage!r}")
        check_id(gen_id, "generation id", f"{path}:{line}", error=StoreError)
        if (stage, gen_id) in seen:
            continue
        seen.add((stage, gen_id))
        meta = meta_of(stage, gen_id)
        if not meta and not row.get("template_id"):
            raise StoreError(f"{path}:{line}: {stage} {gen_id} has no gens/{stage}/{gen_id}/metadata.json to take "
                             f"its lineage from; import the store that holds it, or remove the row")
        derived = {**lineage(meta_of, stage, gen_id),
                   "origin_cohort_id": str(meta.get("origin_cohort_id") or cohort_id).strip()}
        out.append({k: row[k] if row.get(k) not in (None, "") else derived.get(k, "")
                    for k in MEMBERSHIP_FIELDS} | {"stage": stage, "gen_id": gen_id})
    return out


def _listed(path) -> set:
    with open(path, encoding="utf-8", newline="") as fh:
        return {(r.get("stage"), r.get("gen_id")) for r in csv.DictReader(fh)}


def _link_or_copy(source, target):
    """Hard link ``target`` to ``source``; a copy where links cannot be made (other device, not owner)."""
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EACCES, errno.EMLINK, errno.EOPNOTSUPP):
            raise
        write_bytes_atomic(target, Path(source).read_bytes())


def apply_import(plan: ImportPlan, paths) -> ImportSummary:
    """Write what ``plan`` says: generation files, combos, cohorts, then their events."""
    imported = Counter()
    for g in plan.gens:
        g.dest.mkdir(parents=True, exist_ok=True)
        if g.meta is not None:
            write_json_atomic(g.dest / "metadata.json", g.meta)
        for name in g.links:
            _link_or_copy(g.gen.folder / name, g.dest / name)
        if g.meta is not None or g.links:
            imported[g.gen.stage] += 1
    append_rows(paths.combo_mappings_csv, plan.combo_rows)
    for c in plan.cohorts:
        for source, target in c.spec_files:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_bytes_atomic(target, source.read_bytes())
        if c.membership_text is not None:
            write_text_atomic(paths.membership_csv(c.cohort_id), c.membership_text)

    events = scores = 0
    with EventLog(paths.events_dir) as log:
        for g in plan.gens:
            if g.log_event:
                events += emit_completed(log, g.gen, g.lineage, g.dest, paths.data_root, "import", g.score)
                scores += g.score is not None
        for c in plan.cohorts:
            if c.log_event:
                spec = paths.cohort_dir(c.cohort_id) / "spec" / "config.yaml"
                log.emit("cohort_built", cohort_id=c.cohort_id, stage=None, gen_id=None, source="import",
                         spec_hash=spec_folder_hash(spec) if spec.exists() else None, catalog_hash=None,
                         counts=dict(Counter(m["stage"] for m in c.members)), member_fields=MEMBERSHIP_FIELDS,
                         members=[[m[k] for k in MEMBERSHIP_FIELDS] for m in c.members])
                events += 1
        log.fsync()
    changed = sum(1 for c in plan.cohorts if c.spec_files or c.membership_text is not None or c.log_event)
    return ImportSummary(imported, len(plan.gens) - sum(imported.values()), scores, changed,
                         len({r[0] for r in plan.combo_rows}), events, plan.warnings)


def import_original(src, paths) -> ImportSummary:
    return apply_import(plan_import(src, paths), paths)
