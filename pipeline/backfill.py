"""``daydream rebuild-log``: give generations that have files but no events a place in the log.

A store made before the event log existed (or by the original Dagster pipeline, which uses the
same data/gens/<stage>/<gen_id>/ layout) joins the results tables this way. Backfilled events
carry ``"source": "backfill"``; running it twice writes nothing the second time.

    >>> backfill(Paths.from_config())     # -> number of events written
"""
import os

from .errors import ParseError, StoreError
from .events import EventLog, scan_events
from .fsio import read_json
from .generation import LINEAGE, sha256
from .parsers import parse_score
from .paths import STAGES

_DONE_TYPES = {"generation_completed", "generation_reused"}


def logged_generations(events_dir) -> set:
    """gen ids that already have a completed/reused event."""
    return {e["gen_id"] for _, e in scan_events(events_dir, skip_bad=True) if e["type"] in _DONE_TYPES}


def backfill(paths) -> int:
    known = logged_generations(paths.events_dir)
    log = EventLog(paths.events_dir)
    written = 0
    for stage in STAGES:
        stage_dir = paths.data_root / "gens" / stage
        if not stage_dir.is_dir():
            continue
        for gen_id in sorted(os.listdir(stage_dir)):
            gdir = stage_dir / gen_id
            parsed, raw = gdir / "parsed.txt", gdir / "raw.txt"
            if gen_id in known or not parsed.exists():
                continue
            try:
                meta = read_json(gdir / "metadata.json") if (gdir / "metadata.json").exists() else {}
            except StoreError:
                meta = {}
            lineage = {k: meta.get(k) for k in LINEAGE}
            parsed_text = parsed.read_text(encoding="utf-8", errors="replace")
            raw_text = raw.read_text(encoding="utf-8", errors="replace") if raw.exists() else parsed_text
            base = {"cohort_id": None, "stage": stage, "gen_id": gen_id}
            if stage == "evaluation":
                try:
                    score = parse_score(parsed_text)
                except ParseError:
                    score = None
                if score is not None:
                    log.emit("score_parsed", **base, score=score.score, scale=score.scale,
                             parser=meta.get("parser") or "in_last_line", source="backfill")
                    written += 1
            log.emit("generation_completed", **base, **lineage, provider_model=meta.get("provider_model"),
                     finish_reason=meta.get("finish_reason"), prompt_tokens=meta.get("prompt_tokens"),
                     completion_tokens=meta.get("completion_tokens"), cost=meta.get("cost"),
                     duration_s=meta.get("duration_s"), attempts=meta.get("attempts"),
                     raw_path=os.path.relpath(raw, paths.data_root),
                     parsed_path=os.path.relpath(parsed, paths.data_root),
                     raw_sha256=sha256(raw_text), source="backfill",
                     copy=meta.get("generator") == "copy")
            written += 1
    log.fsync()
    log.close()
    return written
