"""``daydream rebuild-log``: give generations that have files but no events a place in the log.

A store made before the event log existed (or by the original Dagster pipeline, which uses the
same data/gens/<stage>/<gen_id>/ layout) joins the results tables this way. Backfilled events
carry ``"source": "backfill"`` and the creator cohort (metadata ``origin_cohort_id``) as
``cohort_id``; running it twice writes nothing the second time.

    >>> result = backfill(Paths.from_config())
    >>> result.written, result.warnings     # events written, one line per generation not scored
"""
import os
from dataclasses import dataclass, field

from .events import EventLog, scan_events
from .stages import STAGES
from .stored_gen import emit_completed, lineage, read_score, read_stored

_DONE_TYPES = {"generation_completed", "generation_reused"}


@dataclass
class BackfillResult:
    written: int = 0
    warnings: list = field(default_factory=list)


def logged(events_dir) -> tuple:
    """(gen ids that already have a completed/reused event, cohort ids with a cohort_built event)."""
    gens, cohorts = set(), set()
    for _, event in scan_events(events_dir, skip_bad=True):
        if event["type"] in _DONE_TYPES:
            gens.add(event["gen_id"])
        elif event["type"] == "cohort_built":
            cohorts.add(event.get("cohort_id"))
    return gens, cohorts


def backfill(paths) -> BackfillResult:
    known, _ = logged(paths.events_dir)
    result = BackfillResult()
    metas = {}  # (stage, gen_id) -> metadata, for walking up to a generation's draft

    def meta_of(stage, gen_id):
        if (stage, gen_id) not in metas:
            gdir = paths.stage_dir(stage) / gen_id
            metas[stage, gen_id] = read_stored(gdir, stage, gen_id, lambda _: None, strict=False).meta
        return metas[stage, gen_id]

    log = EventLog(paths.events_dir)
    try:
        for stage in STAGES:
            stage_dir = paths.stage_dir(stage)
            if not stage_dir.is_dir():
                continue
            for gen_id in sorted(os.listdir(stage_dir)):
                gdir = stage_dir / gen_id
                if gen_id in known or not (gdir / "parsed.txt").exists():
                    continue
                gen = read_stored(gdir, stage, gen_id, result.warnings.append, strict=False)
                metas[stage, gen_id] = gen.meta
                score = None
                if stage == "evaluation":
                    try:
                        score = read_score(gen, judge_fallback=True)
                    except ValueError as exc:
                        result.warnings.append(f"{os.path.relpath(gdir / 'parsed.txt', paths.data_root)}: "
                                               f"{exc} (no score backfilled)")
                result.written += emit_completed(log, gen, lineage(meta_of, stage, gen_id), gdir,
                                                 paths.data_root, "backfill", score)
        log.fsync()
    finally:
        log.close()
    return result
