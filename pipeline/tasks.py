"""Luigi tasks: a thin shell over the functional core (membership, generation, replay, reports).

    luigi --module pipeline RunCohort --cohort-id demo --local-scheduler
    luigi --module pipeline BuildCohort --cohort-id demo --local-scheduler
    luigi --module pipeline EvaluationTask --gen-id v_abc --local-scheduler

RunCohort schedules work in chunks through dynamic dependencies: the scheduler only ever holds
one chunk of generations (plus their parents), which keeps Luigi's per-task scheduling cost
from growing with the cohort. Completion is checked in bulk, from files on disk.
"""
import logging
import os
import time
import uuid

import luigi

from . import generation
from .catalog import load_catalog
from .config import pipeline as pipeline_config
from .errors import PipelineError
from .events import EventLog
from .fsio import read_json, write_json_atomic, write_text_atomic
from .llm import Backends
from .membership import compile_cohort, read_membership
from .paths import Paths
from . import store

log = logging.getLogger("luigi-interface")

# One id per luigi command: forked task processes inherit it. A generation that failed during this
# run counts as finished for this run (so the cohort goes on), and is retried by the next run.
RUN_ID = os.environ.setdefault("DAYDREAM_RUN_ID", f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}")
RUN_STARTED = generation.now_iso()

_CONTEXT = {}


def context(cohort_id=None):
    """Paths, catalog, event writer and LLM backends, built once per process."""
    paths = Paths.from_config()
    key = (paths.data_root, paths.raw_root)
    if key not in _CONTEXT:
        _CONTEXT[key] = generation.GenContext(paths, load_catalog(paths), EventLog(paths.events_dir),
                                              Backends.from_config())
    ctx = _CONTEXT[key]
    return generation.GenContext(ctx.paths, ctx.catalog, ctx.events, ctx.backends, cohort_id)


class BuildCohort(luigi.Task):
    """Compile the spec into data/cohorts/<id>/membership.csv + manifest.json and seed metadata."""

    cohort_id = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(Paths.from_config().membership_csv(self.cohort_id))

    def complete(self):
        paths = Paths.from_config()
        return store.cohort_is_current(paths, self.cohort_id, context().catalog)

    def run(self):
        ctx = context(self.cohort_id)
        cohort = compile_cohort(ctx.paths, self.cohort_id, ctx.catalog)
        changed = store.write_cohort(ctx.paths, cohort, ctx.events)
        self.set_status_message(f"{cohort.counts} ({'changed' if changed else 'unchanged'})")


class _GenerationTask(luigi.Task):
    gen_id = luigi.Parameter()
    cohort_id = luigi.Parameter(default="", significant=False)
    # RunCohort sets this: a failed generation is recorded and the cohort goes on
    keep_going = luigi.BoolParameter(default=False, significant=False)
    stage = None
    parent_task = None

    @property
    def _paths(self):
        return Paths.from_config()

    def _meta(self):
        return generation.load_meta(self._paths, self.stage, self.gen_id)

    def requires(self):
        if self.parent_task is None:
            return []
        return self.parent_task(gen_id=self._meta()["parent_gen_id"], cohort_id=self.cohort_id,
                                keep_going=self.keep_going)

    @property
    def resources(self):
        try:
            meta = self._meta()
            ctx = context()
            if ctx.catalog.templates[self.stage][meta["template_id"]].generator == "copy":
                return {}
            return {ctx.catalog.models[meta["llm_model_id"]].pool: 1}
        except (PipelineError, KeyError):
            return {}  # run() reports the problem with a clear message

    def output(self):
        return luigi.LocalTarget(self._paths.gen_dir(self.stage, self.gen_id) / "parsed.txt")

    def complete(self):
        gdir = self._paths.gen_dir(self.stage, self.gen_id)
        if (gdir / "parsed.txt").exists():
            return True
        return self.keep_going and store.failed_in_run(gdir, RUN_ID)

    def run(self):
        ctx = context(self.cohort_id or None)
        self.set_status_message(f"{self.stage} {self.gen_id}: running")
        started = time.monotonic()
        try:
            outcome = generation.run_generation(ctx, self.stage, self.gen_id)
        except PipelineError as exc:
            log.warning("FAILED %s %s: %s", self.stage, self.gen_id, exc)
            if not self.keep_going:
                raise
            store.mark_failed(self._paths.gen_dir(self.stage, self.gen_id), RUN_ID, exc)
            self.set_status_message(f"failed: {exc}")
            return
        log.info("%s %s %s in %.1fs", outcome, self.stage, self.gen_id, time.monotonic() - started)
        self.set_status_message(f"{outcome} in {time.monotonic() - started:.1f}s")


class DraftTask(_GenerationTask):
    stage = "draft"


class EssayTask(_GenerationTask):
    stage = "essay"
    parent_task = DraftTask


class EvaluationTask(_GenerationTask):
    stage = "evaluation"
    parent_task = EssayTask


TASK_BY_STAGE = {"draft": DraftTask, "essay": EssayTask, "evaluation": EvaluationTask}


class ReplayResults(luigi.Task):
    """Fold the event log into data/tables/. ``log_state`` names the log contents it reflects."""

    log_state = luigi.Parameter(default="")

    def output(self):
        return luigi.LocalTarget(Paths.from_config().tables_dir / "_replayed_state.txt")

    def complete(self):
        target = self.output()
        return bool(self.log_state) and target.exists() and \
            open(target.path, encoding="utf-8").read().strip() == self.log_state

    def run(self):
        from .replay import replay

        paths = Paths.from_config()
        state = self.log_state or store.log_state(paths)
        stats = replay(paths.events_dir, paths.tables_dir)
        write_text_atomic(self.output().path, state + "\n")
        self.set_status_message(str(stats))


class CohortReport(luigi.Task):
    """Reports for one cohort under data/cohorts/<id>/reports/, from the replayed tables."""

    cohort_id = luigi.Parameter()
    log_state = luigi.Parameter(default="")

    def requires(self):
        return ReplayResults(log_state=self.log_state)

    def output(self):
        return luigi.LocalTarget(Paths.from_config().reports_dir(self.cohort_id) / "summary.md")

    def complete(self):
        state_file = Paths.from_config().reports_dir(self.cohort_id) / "_state.txt"
        return bool(self.log_state) and state_file.exists() and \
            state_file.read_text(encoding="utf-8").strip() == self.log_state

    def run(self):
        from .reports import write_cohort_report

        paths = Paths.from_config()
        write_cohort_report(paths, self.cohort_id)
        write_text_atomic(paths.reports_dir(self.cohort_id) / "_state.txt", self.log_state + "\n")


class RunCohort(luigi.Task):
    """Run every generation of a cohort, then replay the log and write the cohort's reports."""

    cohort_id = luigi.Parameter()
    chunk_size = luigi.IntParameter(default=0, significant=False, description="0: [pipeline] chunk_size")

    def requires(self):
        return BuildCohort(cohort_id=self.cohort_id)

    def output(self):
        return luigi.LocalTarget(Paths.from_config().cohort_dir(self.cohort_id) / "run_complete.json")

    def complete(self):
        paths = Paths.from_config()
        out = self.output()
        if not out.exists() or not BuildCohort(cohort_id=self.cohort_id).complete():
            return False
        rows = read_membership(paths.membership_csv(self.cohort_id))
        return not store.pending(paths, rows) and \
            read_json(out.path).get("membership_sha256") == store.file_sha256(paths.membership_csv(self.cohort_id))

    def run(self):
        paths = Paths.from_config()
        rows = read_membership(paths.membership_csv(self.cohort_id))
        chunk = self.chunk_size or pipeline_config().chunk_size
        total = len(rows)
        while True:
            todo = store.pending(paths, rows, run_id=RUN_ID)
            done = total - len(todo)
            self.set_progress_percentage(round(100 * done / max(total, 1)))
            self.set_status_message(f"{done}/{total} generations finished")
            if not todo:
                break
            yield [TASK_BY_STAGE[r["stage"]](gen_id=r["gen_id"], cohort_id=self.cohort_id, keep_going=True)
                   for r in todo[:chunk]]
        state = store.log_state(paths)
        yield CohortReport(cohort_id=self.cohort_id, log_state=state)
        summary = store.run_summary(paths, rows, RUN_STARTED)
        log.info("cohort %s: %s", self.cohort_id, store.format_summary(summary))
        if summary["failed"]:
            raise PipelineError(f"cohort {self.cohort_id}: {summary['failed']} generation(s) failed "
                                f"(see `daydream status {self.cohort_id}`); rerun to retry them")
        write_json_atomic(self.output().path, {
            "run_id": RUN_ID, "finished_at": generation.now_iso(), "summary": summary,
            "membership_sha256": store.file_sha256(paths.membership_csv(self.cohort_id))})
