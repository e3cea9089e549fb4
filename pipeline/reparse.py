"""Parse saved answers again, without any LLM call (``daydream reparse``): the way out of parse
failures once the parser or template is fixed.

    >>> reparse(paths, [("evaluation", "v_1a2b")])          # explicit generations
    >>> reparse(paths, cohort_targets(paths, "demo"))       # a cohort's unparsed saved answers

Each generation's raw.txt is parsed with its template's current parser; parsed.txt, metadata.json
and the event log are written as by a run that reuses a saved answer. Dependents are not touched:
the next RunCohort continues with them.
"""
from .catalog import load_catalog
from .errors import PipelineError
from .events import EventLog
from .generation import GenContext, reparse_generation
from .membership import read_membership
from .paths import check_id
from .stages import STAGES


def cohort_targets(paths, cohort_id, include_done=False) -> list:
    """(stage, gen_id) of the cohort's members with a saved answer and (unless ``include_done``)
    no parsed output."""
    out = []
    for row in read_membership(paths.membership_csv(cohort_id)):
        gdir = paths.gen_dir(row["stage"], row["gen_id"])
        if (gdir / "raw.txt").exists() and (include_done or not (gdir / "parsed.txt").exists()):
            out.append((row["stage"], row["gen_id"]))
    return out


def parse_targets(words) -> list:
    """``["draft", "d_1", "essay", "e_2"]`` -> [("draft", "d_1"), ("essay", "e_2")]."""
    if len(words) % 2:
        raise PipelineError(f"expected STAGE GEN_ID pairs, got {' '.join(words)!r}")
    pairs = list(zip(words[::2], words[1::2]))
    for stage, gen_id in pairs:
        if stage not in STAGES:
            raise PipelineError(f"unknown stage {stage!r} (before {gen_id!r}); expected one of {', '.join(STAGES)}")
        check_id(gen_id, "generation id")
    return pairs


def reparse(paths, targets, cohort_id=None) -> list:
    """Re-parse each (stage, gen_id), parents first; returns (stage, gen_id, outcome, reason or None)
    with outcome "parsed" or "failed"."""
    ctx = GenContext(paths, load_catalog(paths), EventLog(paths.events_dir), backends=None, cohort_id=cohort_id)
    results = []
    try:
        for stage, gen_id in sorted(targets, key=lambda t: STAGES.index(t[0])):
            try:
                reparse_generation(ctx, stage, gen_id)
            except PipelineError as exc:
                results.append((stage, gen_id, "failed", str(exc)))
            else:
                results.append((stage, gen_id, "parsed", None))
    finally:
        ctx.events.close()
    return results
