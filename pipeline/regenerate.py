"""Regenerate a generation on purpose (``daydream regenerate STAGE GEN_ID``).

A paid response is never deleted: raw.txt and parsed.txt of the generation and of everything
that depends on it are renamed to ``<name>.superseded-<UTC time>``, so the next run makes new
calls for them. Cohort run markers are removed so RunCohort runs again.

    >>> regenerate(paths, "draft", "d_abc")    # -> lines describing what was moved
"""
import os

from .errors import PipelineError
from .fsio import read_json
from .timestamps import stamp as stamp_now
from .stages import CHILD as CHILD_STAGE, STAGES



def dependents(paths, stage, gen_id) -> list:
    """(stage, gen_id) of every generation downstream of this one, found from metadata."""
    out, frontier = [], {gen_id}
    child = CHILD_STAGE.get(stage)
    while child and frontier:
        child_dir = paths.stage_dir(child)
        found = set()
        if child_dir.is_dir():
            for gid in sorted(os.listdir(child_dir)):
                meta_path = child_dir / gid / "metadata.json"
                if meta_path.exists() and read_json(meta_path).get("parent_gen_id") in frontier:
                    found.add(gid)
        out.extend((child, g) for g in sorted(found))
        frontier, child = found, CHILD_STAGE.get(child)
    return out


def regenerate(paths, stage, gen_id) -> list:
    if stage not in STAGES:
        raise PipelineError(f"unknown stage {stage!r}")
    gdir = paths.gen_dir(stage, gen_id)
    if not (gdir / "metadata.json").exists():
        raise PipelineError(f"{stage} {gen_id}: no such generation under {paths.stage_dir(stage)}")
    stamp = stamp_now()
    moved = []
    for s, g in [(stage, gen_id)] + dependents(paths, stage, gen_id):
        d = paths.gen_dir(s, g)
        for name in ("parsed.txt", "raw.txt", "failed.json"):
            if (d / name).exists():
                os.replace(d / name, d / f"{name}.superseded-{stamp}")
                moved.append(f"{s} {g}: {name} -> {name}.superseded-{stamp}")
    cohorts = paths.cohorts_data_root
    if cohorts.is_dir():
        for marker in cohorts.glob("*/run_complete.json"):
            marker.unlink()
    return moved
