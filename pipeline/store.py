"""The generation store on disk (data/gens, data/cohorts): bulk completion checks, cohort writes,
failure markers, run summaries. Plain functions over paths and rows.

    >>> todo = pending(paths, read_membership(paths.membership_csv("demo")))
    >>> stage_status(paths, rows)     # {"draft": {"total": 3, "done": 3, "failed": 0, "pending": 0}, ...}
"""
import csv
import hashlib
import os
from pathlib import Path

from .combos import record_combos
from .errors import StoreError
from .fsio import read_json, write_if_changed, write_json_atomic
from .timestamps import now_iso
from .membership import MEMBERSHIP_FIELDS, spec_folder_hash
from .stages import STAGES

STAGE_ORDER = {stage: i for i, stage in enumerate(STAGES)}


def file_sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def cohort_is_current(paths, cohort_id, catalog) -> bool:
    """True when membership.csv reflects the current spec folder and catalog (nothing to rebuild).

    A cohort without a spec is its membership.csv: current once that file was adopted as it is."""
    manifest = paths.manifest_json(cohort_id)
    spec = paths.spec_file(cohort_id)
    membership = paths.membership_csv(cohort_id)
    if not (manifest.exists() and membership.exists()):
        return False
    try:
        doc = read_json(manifest)
    except StoreError:
        return False
    if _metadata_missing(paths, cohort_id):
        return False
    if not spec.exists():
        return doc.get("spec_hash") is None and doc.get("membership_sha256") == file_sha256(membership)
    return doc.get("spec_hash") == spec_folder_hash(spec) and doc.get("catalog_hash") == catalog.hash


def _metadata_missing(paths, cohort_id) -> bool:
    """True when a member has no metadata.json (e.g. deleted because it was corrupt, as the error
    advises): BuildCohort then runs again and reseeds it. Only stage and gen_id are read here; a
    hand-edited membership is reported by read_membership, not here."""
    with open(paths.membership_csv(cohort_id), newline="", encoding="utf-8", errors="replace") as fh:
        for row in csv.DictReader(fh):
            stage, gen_id = row.get("stage"), row.get("gen_id")
            if stage in STAGES and gen_id and not os.path.exists(paths.gen_dir(stage, gen_id) / "metadata.json"):
                return True
    return False


def _seed(cohort, row):
    """Metadata a cohort build gives a generation: this project's lineage fields and the original's
    (origin_cohort_id = the cohort that first listed it, mode = the template's generator)."""
    seed = {k: row[k] for k in MEMBERSHIP_FIELDS}
    seed["mode"] = cohort.modes.get((row["stage"], row["template_id"]), "llm")
    combo = cohort.combos.get(row["combo_id"]) if row["stage"] == "draft" else None
    if combo:
        seed.update(concept_ids=list(combo["concepts"]), description_level=combo["description_level"],
                    k_max=combo["k_max"])
    return seed


def _clash(meta, seed):
    """The first lineage field where existing metadata names another generation than ``seed``.

    Compared as the ids compare them (text stripped and lower-cased, replicate as an int, a missing
    key agrees with anything); the model of a copy-mode essay is not compared (none is called)."""
    keys = ["stage", "gen_id", "parent_gen_id", "combo_id", "template_id", "replicate"]
    if "copy" not in (meta.get("mode"), seed.get("mode")):
        keys.append("llm_model_id")
    for key in keys:
        if meta.get(key) in (None, "") or seed.get(key) in (None, ""):
            continue
        old, new = meta[key], seed[key]
        same = _as_int(old) == _as_int(new) if key == "replicate" else \
            str(old).strip().lower() == str(new).strip().lower()
        if not same:
            return key
    return None


def _as_int(value):
    try:
        return int(str(value).strip())
    except ValueError:
        return value


def write_cohort(paths, cohort, events) -> bool:
    """Write membership, manifest and metadata seeds; emit cohort_built when membership changed.

    Existing metadata keeps every key it has (only missing keys are added). Rebuilding an
    unchanged cohort changes nothing on disk."""
    for level_k, combos in _group_new_combos(cohort.new_combos).items():
        record_combos(paths.combo_mappings_csv, combos, *level_k)
    updates = []  # checked in full before anything is written
    for row in cohort.rows:
        meta_path = paths.gen_dir(row["stage"], row["gen_id"]) / "metadata.json"
        seed = _seed(cohort, row)
        meta = read_json(meta_path) if meta_path.exists() else {}
        key = _clash(meta, seed)
        if key:
            raise StoreError(f"{meta_path}: {key} is {meta[key]!r} but cohort {cohort.cohort_id} derives "
                             f"{seed[key]!r} for the same id; the store is inconsistent, investigate before rerunning")
        origins = meta.get("origin_cohort_ids", [])
        merged = {**seed, **meta, "origin_cohort_ids": sorted(set(origins) | {cohort.cohort_id})}
        if merged != meta:
            updates.append((meta_path, merged))
    for meta_path, merged in updates:
        write_json_atomic(meta_path, merged, fsync=False)
    changed = write_if_changed(paths.membership_csv(cohort.cohort_id), cohort.membership_csv())
    adopted = write_if_changed(paths.manifest_json(cohort.cohort_id),
                               __import__("json").dumps(cohort.manifest, indent=2, sort_keys=True) + "\n")
    # a membership adopted as it is (no spec) may be unchanged on disk yet new to the event log
    changed = changed or (cohort.spec_path is None and adopted)
    if changed:
        events.emit("cohort_built", cohort_id=cohort.cohort_id, stage=None, gen_id=None,
                    spec_hash=cohort.manifest["spec_hash"], catalog_hash=cohort.manifest["catalog_hash"],
                    counts=cohort.counts, member_fields=MEMBERSHIP_FIELDS,
                    members=[[row[k] for k in MEMBERSHIP_FIELDS] for row in cohort.rows])
        events.fsync()
    return changed


def _group_new_combos(new_combos):
    groups = {}
    for cid, info in new_combos.items():
        groups.setdefault((info["description_level"], info["k_max"]), {})[cid] = info["concepts"]
    return groups


def failed_in_run(gen_dir, run_id) -> bool:
    try:
        return read_json(f"{gen_dir}/failed.json").get("run_id") == run_id
    except (FileNotFoundError, StoreError):
        return False


def mark_failed(gen_dir, run_id, exc):
    write_json_atomic(Path(gen_dir) / "failed.json", {"run_id": run_id, "error": str(exc),
                                                      "error_class": type(exc).__name__, "at": now_iso()})


def mark_blocked(gen_dir, run_id, root):
    """This run skips the generation: ``root`` ("stage gen_id"), an ancestor, failed in it."""
    write_json_atomic(Path(gen_dir) / "failed.json", {"run_id": run_id, "blocked_by": root,
                                                      "error": f"blocked: {root} failed", "at": now_iso()})


def failed_root(gen_dir, stage, gen_id):
    """The failed ancestor ("stage gen_id") if this generation has no parsed output and a failure
    (or blocked) record, from whichever process or run wrote it; else None."""
    gen_dir = Path(gen_dir)
    if (gen_dir / "parsed.txt").exists() or not (gen_dir / "failed.json").exists():
        return None
    try:
        root = read_json(gen_dir / "failed.json").get("blocked_by")
    except StoreError:
        root = None
    return root or f"{stage} {gen_id}"


def pending(paths, rows, run_id=None) -> list:
    """Rows without parsed output (and, given a run id, not already failed in that run), parents first."""
    out = []
    for row in rows:
        gdir = paths.gen_dir(row["stage"], row["gen_id"])
        if os.path.exists(f"{gdir}/parsed.txt"):  # a string: a pathlib join per row costs more than the stat
            continue
        if run_id and failed_in_run(gdir, run_id):
            continue
        out.append(row)
    out.sort(key=lambda r: (STAGE_ORDER[r["stage"]], r["gen_id"]))
    return out


def log_state(paths) -> str:
    """A short fingerprint of the event log's contents (segment names and sizes)."""
    digest = hashlib.sha256()
    root = paths.events_dir
    if root.exists():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.endswith(".jsonl"):
                    full = os.path.join(dirpath, name)
                    digest.update(f"{os.path.relpath(full, root)}:{os.path.getsize(full)}\n".encode())
    return digest.hexdigest()[:16]


def generation_state(paths, row):
    """(state, meta) with state one of done, failed, pending; a failure's reason is in meta["error"]."""
    gdir = paths.gen_dir(row["stage"], row["gen_id"])
    try:
        meta = read_json(gdir / "metadata.json")
    except FileNotFoundError:
        meta = {}
    except StoreError as exc:
        return "failed", {"error": str(exc)}
    if (gdir / "parsed.txt").exists():
        return "done", meta
    if (gdir / "failed.json").exists():
        try:
            marker = read_json(gdir / "failed.json")
        except StoreError:
            marker = {}
        return "failed", {**meta, "error": meta.get("error") or marker.get("error")}
    if meta.get("status") == "failed":
        return "failed", meta
    return "pending", meta


def _states(paths, rows):
    """Yield (row, state, meta, root) in stage order. A generation that is not done and whose parent
    failed (or is itself blocked) is "blocked"; ``root`` is the failed ancestor as "stage gen_id"."""
    seen = {}
    for row in sorted(rows, key=lambda r: STAGE_ORDER[r["stage"]]):
        state, meta = generation_state(paths, row)
        parent = seen.get(row.get("parent_gen_id"))
        if state != "done" and parent is not None and parent[0] in ("failed", "blocked"):
            state, root = "blocked", parent[1]
        else:
            root = f"{row['stage']} {row['gen_id']}"
        seen[row["gen_id"]] = (state, root)
        yield row, state, meta, root


def way_out(paths, row, meta) -> str | None:
    """What to run to get a failed generation unstuck, when rerunning alone will not do it."""
    if meta.get("error_class") != "ParseError":
        return None
    raw = paths.gen_dir(row["stage"], row["gen_id"]) / "raw.txt"
    try:
        text = raw.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text.strip():
        return (f"the saved answer is blank and will never parse: `daydream regenerate {row['stage']} "
                f"{row['gen_id']}` pays for a new one")
    return (f"the saved answer does not parse: fix the parser or template, then `daydream reparse "
            f"{row['stage']} {row['gen_id']}` (no LLM call)")


def stage_status(paths, rows) -> dict:
    """Per stage: total, done, failed, blocked, pending; the failures as (gen_id, reason, way out or
    None) and the blocked ones as (gen_id, failed ancestor)."""
    out = {stage: {"total": 0, "done": 0, "failed": 0, "blocked": 0, "pending": 0, "failures": [],
                   "blocked_by": []} for stage in STAGES}
    for row, state, meta, root in _states(paths, rows):
        entry = out[row["stage"]]
        entry["total"] += 1
        entry[state] += 1
        if state == "failed":
            entry["failures"].append((row["gen_id"], meta.get("error") or "see failed.json",
                                      way_out(paths, row, meta)))
        elif state == "blocked":
            entry["blocked_by"].append((row["gen_id"], root))
    return out


def run_summary(paths, rows, run_started) -> dict:
    """What one run did: done, skipped as already done, failed, blocked behind a failure, LLM calls
    made, tokens, cost."""
    summary = {"total": len(rows), "done": 0, "skipped": 0, "failed": 0, "blocked": 0, "pending": 0,
               "llm_calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0}
    for _, state, meta, _ in _states(paths, rows):
        summary[state] += 1
        if state == "done" and (meta.get("completed_at") or "") < run_started:
            summary["skipped"] += 1
        if (meta.get("called_at") or "") >= run_started:
            summary["llm_calls"] += 1
            summary["prompt_tokens"] += meta.get("prompt_tokens") or 0
            summary["completion_tokens"] += meta.get("completion_tokens") or 0
            summary["cost"] += meta.get("cost") or 0.0
    summary["cost"] = round(summary["cost"], 6)
    return summary


def format_summary(s) -> str:
    return (f"{s['done']}/{s['total']} done ({s['skipped']} skipped as already done), {s['failed']} failed, "
            f"{s['blocked']} blocked by a failed parent, {s['pending']} pending; {s['llm_calls']} LLM calls, "
            f"{s['prompt_tokens']}+{s['completion_tokens']} tokens, cost ${s['cost']:.4f}")
