"""Luigi tasks: a thin shell over the functional core (membership, generation, replay, reports).

    luigi --module pipeline RunCohort --cohort-id demo --local-scheduler
    luigi --module pipeline BuildCohort --cohort-id demo --local-scheduler
    luigi --module pipeline EvaluationTask --gen-id v_abc --local-scheduler

Each task says what it needs (``requires``), what it makes (``output``) and does it (``run``).
A generation's output is its ``GenerationTarget``: parsed.txt, or - for the tasks RunCohort
schedules - settled in this run (failed, blocked behind a failure, or being bought by another
process), so that the cohort goes on past failures and the next run retries them. A generation
that fails raises, so Luigi (and a luigid's visualiser) shows it FAILED with its reason and the
generations that need it as blocked.

RunCohort hands its generations to Luigi in chunks (chunks.py says why and how); with a luigid
(--scheduler-url / --scheduler-host) they go through it, so the visualiser shows every one.

Several runs may overlap (on one machine or many sharing data/, with or without a luigid): each
generation is bought under a claim (claims.py); a run skips what another live process is buying
and waits for it before it finishes. Every task carries its process's run id, so that processes
sharing a luigid never share a task and luigi's exit code speaks for each process.
"""
import dataclasses
import functools
import logging
import sys
import time
import uuid

import luigi

from . import chunks, claims, generation, lifeline, progress, runlog
from .catalog import load_catalog
from .config import llm as llm_config, pipeline as pipeline_config
from .errors import PipelineError
from .events import EventLog
from .fsio import read_json, remove_stale_tmp, write_json_atomic, write_text_atomic
from .llm import Backends
from .membership import compile_cohort, read_membership
from .paths import Paths
from .timestamps import now_iso, stamp
from . import store

log = logging.getLogger("luigi-interface")

# The default run id of the tasks of this luigi process (its forked task processes share it).
THIS_RUN = f"{stamp()[:-1]}-{uuid.uuid4().hex[:8]}"
RUN_STARTED = now_iso()  # what this process's run did is what was written after this
lifeline.install()  # task processes forked from here on die with their parent


@functools.lru_cache(maxsize=4)
def _shared_context(paths):
    """Catalog, event writer, LLM backends and settings, built once per process and data folder
    (forked task processes inherit them): loading the catalog parses every template."""
    return generation.GenContext(paths, load_catalog(paths), EventLog(paths.events_dir),
                                 Backends.from_config(paths.data_root), claim_lease_s=llm_config().claim_lease_s)


def gen_context(paths, run_id, cohort_id=None):
    return dataclasses.replace(_shared_context(paths), cohort_id=cohort_id, run_id=run_id)


class GenerationTarget(luigi.Target):
    """A generation's parsed.txt; with ``settled_counts``, also "settled in run ``run_id``": it failed
    or was blocked in that run (failed.json names the run), or another live process is buying it.
    RunCohort's tasks count settled as finished: the cohort goes on, the next run tries again."""

    def __init__(self, paths, stage, gen_id, run_id, settled_counts=False):
        self.gen_dir = paths.gen_dir(stage, gen_id)
        self.paths, self.stage, self.gen_id, self.run_id = paths, stage, gen_id, run_id
        self.settled_counts = settled_counts
        self.deferred = False  # set when this process found it claimed elsewhere (that claim may end soon)

    @property
    def path(self):
        return self.gen_dir / "parsed.txt"

    def exists(self):
        if self.path.exists():
            return True
        return self.settled_counts and (
            self.deferred or store.failed_in_run(self.gen_dir, self.run_id)
            or generation.waiting_on(self.paths, self.stage, self.gen_id) is not None)


class _RunTask(luigi.Task):
    """A task of this luigi process. When a luigid hands a task this process scheduled to another
    process, luigi's summary calls it "run by another worker" or "not run" and the exit code is
    non-zero (luigi.cfg [retcode]) although everything is done. With the run id in every task id,
    processes sharing a luigid never share a task; claims keep them from buying the same generation."""

    run_id = luigi.Parameter(default=THIS_RUN, description="defaults to this process's run id")

    @classmethod
    def get_params(cls):
        # luigi finds the parameters by walking dir(cls) on every instantiation (several per
        # generation task: ~1.4 ms); a task class's parameters never change once it is defined
        if "_params" not in cls.__dict__:
            cls._params = super().get_params()
        return list(cls._params)

    @functools.cached_property
    def paths(self):
        # RunCohort's tasks are handed their run's Paths instead (generation_task): reading them
        # from luigi's config takes about 0.2 ms, 5% of what a generation costs on an instant LLM
        return Paths.from_config()


class BuildCohort(_RunTask):
    """Compile the spec into data/cohorts/<id>/membership.csv + manifest.json and seed metadata."""

    cohort_id = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(self.paths.membership_csv(self.cohort_id))

    def complete(self):
        # current, not merely present: the spec or the catalog may have changed since
        return store.cohort_is_current(self.paths, self.cohort_id, _shared_context(self.paths).catalog)

    def run(self):
        ctx = gen_context(self.paths, self.run_id, self.cohort_id)
        remove_stale_tmp(ctx.paths.cohort_dir(self.cohort_id))
        cohort = compile_cohort(ctx.paths, self.cohort_id, ctx.catalog)
        changed = store.write_cohort(ctx.paths, cohort, ctx.events)
        self.set_status_message(f"{cohort.counts} ({'changed' if changed else 'unchanged'})")


class _GenerationTask(_RunTask):
    gen_id = luigi.Parameter()
    cohort_id = luigi.Parameter(default="", significant=False)
    # RunCohort sets this: settled (failed, blocked, bought elsewhere) counts as finished for this run
    keep_going = luigi.BoolParameter(default=False, significant=False)
    stage = None
    parent_task = None

    @functools.cached_property
    def meta(self):
        """The seeded metadata (lineage, template, model), which a run never changes; None if unreadable
        (run() then fails with the reason)."""
        try:
            return generation.load_meta(self.paths, self.stage, self.gen_id)
        except PipelineError:
            return None

    @functools.cached_property
    def _requirements(self):
        # luigi asks requires() several times per task; the parent never changes
        if self.parent_task is None or self.meta is None:
            return []
        parent = self.parent_task(gen_id=self.meta["parent_gen_id"], cohort_id=self.cohort_id,
                                  keep_going=self.keep_going, run_id=self.run_id)
        parent.paths = self.paths
        return parent

    def requires(self):
        return self._requirements

    @property
    def resources(self):
        try:
            catalog = _shared_context(self.paths).catalog
            if catalog.templates[self.stage][self.meta["template_id"]].generator == "copy":
                return {}
            return {catalog.models[self.meta["llm_model_id"]].pool: 1}
        except (PipelineError, KeyError, TypeError):
            return {}  # run() reports the problem with a clear message

    @functools.cached_property
    def _target(self):
        return GenerationTarget(self.paths, self.stage, self.gen_id, self.run_id, settled_counts=self.keep_going)

    def output(self):
        return self._target

    def _label(self):
        meta = self.meta or {}
        return f"{self.stage} {meta.get('template_id', '?')} {meta.get('llm_model_id') or 'copy'}"

    def run(self):
        # no "running" message: luigi shows the task RUNNING, and through a luigid each message is a
        # round trip that would delay the LLM call (its outcome below is worth one)
        started = time.monotonic()
        try:
            outcome = generation.run_generation(gen_context(self.paths, self.run_id, self.cohort_id or None),
                                                self.stage, self.gen_id)
        except claims.ClaimedElsewhere as busy:
            if not self.keep_going:
                raise PipelineError(f"{busy}; run it again once that process is done") from None
            log.info("skipped for now: %s", busy)
            self.set_status_message(f"{self._label()}: claimed elsewhere: {busy}")
            self._target.deferred = True
            return
        except PipelineError as exc:
            reason = str(exc).removeprefix(f"{self.stage} {self.gen_id}: ")  # said once, in front
            log.warning("FAILED %s %s: %s", self.stage, self.gen_id, reason)
            if self.keep_going:
                store.mark_failed(self.gen_dir, self.run_id, exc)
            self.set_status_message(f"{self._label()}: failed: {reason}")
            raise  # FAILED in luigi's summary and visualiser; RunCohort counts it settled and goes on
        took = time.monotonic() - started
        log.info("%s %s %s in %.1fs", outcome, self.stage, self.gen_id, took)
        self.set_status_message(f"{self._label()}: {outcome} in {took:.1f}s")

    @property
    def gen_dir(self):
        return self.paths.gen_dir(self.stage, self.gen_id)


class DraftTask(_GenerationTask):
    stage = "draft"


class EssayTask(_GenerationTask):
    stage = "essay"
    parent_task = DraftTask


class EvaluationTask(_GenerationTask):
    stage = "evaluation"
    parent_task = EssayTask


TASK_BY_STAGE = {"draft": DraftTask, "essay": EssayTask, "evaluation": EvaluationTask}


def generation_task(row, cohort_id, run_id, paths):
    """The task RunCohort schedules for a membership row, with its run's ``paths``."""
    task = TASK_BY_STAGE[row["stage"]](gen_id=row["gen_id"], cohort_id=cohort_id, keep_going=True, run_id=run_id)
    task.paths = paths
    return task


class _StateTarget(luigi.Target):
    """A file holding the event log state (store.log_state) that its task's outputs reflect."""

    def __init__(self, path, state):
        self.path, self.state = path, state

    def exists(self):
        try:
            return bool(self.state) and open(self.path, encoding="utf-8").read().strip() == self.state
        except FileNotFoundError:
            return False


class ReplayResults(_RunTask):
    """Fold the event log into data/tables/. ``log_state`` names the log contents it reflects."""

    log_state = luigi.Parameter(default="")

    def output(self):
        return _StateTarget(self.paths.tables_dir / "_replayed_state.txt", self.log_state)

    def run(self):
        from .original_tables import write_cross_experiment_tables
        from .replay import replay

        state = self.log_state or store.log_state(self.paths)
        remove_stale_tmp(self.paths.tables_dir)
        stats = replay(self.paths.events_dir, self.paths.tables_dir)
        write_cross_experiment_tables(self.paths.data_root, self.paths.tables_dir, stats)
        write_text_atomic(self.output().path, state + "\n")
        self.set_status_message(str(stats))


class CohortReport(_RunTask):
    """Reports for one cohort under data/cohorts/<id>/reports/, from the replayed tables."""

    cohort_id = luigi.Parameter()
    log_state = luigi.Parameter(default="")

    def requires(self):
        return ReplayResults(log_state=self.log_state, run_id=self.run_id)

    def output(self):
        return _StateTarget(self.paths.reports_dir(self.cohort_id) / "_state.txt", self.log_state)

    def run(self):
        from .html_report import write_cohort_html
        from .original_tables import write_cohort_tables
        from .reports import cohort_members, read_cohort_tables, write_cohort_report

        paths = self.paths
        for folder in (paths.reports_dir(self.cohort_id), paths.results_dir(self.cohort_id)):
            remove_stale_tmp(folder)
        tables = read_cohort_tables(paths, cohort_members(paths, self.cohort_id))   # once for both reports
        write_cohort_report(paths, self.cohort_id, tables)
        write_cohort_tables(paths, self.cohort_id)
        write_cohort_html(paths, self.cohort_id, tables)
        write_text_atomic(self.output().path, self.log_state + "\n")


class _CohortDoneTarget(luigi.Target):
    """run_complete.json, written for the current membership, and no generation left without output."""

    def __init__(self, paths, cohort_id):
        self.paths, self.cohort_id = paths, cohort_id
        self.path = paths.cohort_dir(cohort_id) / "run_complete.json"

    def exists(self):
        membership = self.paths.membership_csv(self.cohort_id)
        if not self.path.exists() or not membership.exists():
            return False
        rows = read_membership(membership)
        return not store.pending(self.paths, rows) and \
            read_json(self.path).get("membership_sha256") == store.file_sha256(membership)


class RunCohort(_RunTask):
    """Run every generation of a cohort, then replay the log and write the cohort's reports."""

    cohort_id = luigi.Parameter()
    chunk_size = luigi.IntParameter(default=0, significant=False, description="0: [pipeline] chunk_size")
    verbose = luigi.BoolParameter(default=False, significant=False,
                                  description="Luigi's per-task log on the terminal instead of the progress line")

    def requires(self):
        return BuildCohort(cohort_id=self.cohort_id, run_id=self.run_id)

    def output(self):
        return _CohortDoneTarget(self.paths, self.cohort_id)

    def complete(self):
        # the cohort is done only for the current spec and catalog
        return self.requires().complete() and self.output().exists()

    def run(self):
        paths = self.paths
        rows = read_membership(paths.membership_csv(self.cohort_id))
        if store.pending(paths, rows, run_id=self.run_id):  # (none left when run() starts over after the report)
            self._run_generations(rows)
        yield CohortReport(cohort_id=self.cohort_id, log_state=store.log_state(paths), run_id=self.run_id)
        summary = store.run_summary(paths, rows, RUN_STARTED)
        print(f"cohort {self.cohort_id}: {store.format_summary(summary)}", flush=True)
        log.info("cohort %s: %s", self.cohort_id, store.format_summary(summary))
        if summary["failed"] or summary["blocked"]:
            raise PipelineError(f"cohort {self.cohort_id}: {summary['failed']} generation(s) failed, "
                                f"{summary['blocked']} more blocked behind them; `daydream status "
                                f"{self.cohort_id}` says why, and what to run where a rerun alone will not do")
        write_json_atomic(self.output().path, {
            "run_id": self.run_id, "finished_at": now_iso(), "summary": summary,
            "membership_sha256": store.file_sha256(paths.membership_csv(self.cohort_id))})

    def _run_generations(self, rows):
        """Every pending generation, in chunks (chunks.py), with Luigi's per-task log in the run's log
        file and the progress display meanwhile."""
        verbose = self.verbose or runlog.log_level_asked(sys.argv)
        log_file = self.paths.logs_dir / f"{self.run_id}.log"
        plan = chunks.Plan(paths=self.paths, cohort_id=self.cohort_id, run_id=self.run_id,
                           chunk_size=self.chunk_size or pipeline_config().chunk_size,
                           scheduler=chunks.scheduler_of_this_run(), log_file=str(log_file),
                           console_level=runlog.console_level(sys.argv, self.verbose))
        chunks.warn_about_pools(plan, _shared_context(self.paths).catalog, rows)
        with runlog.chatter_to(log_file, verbose):
            if not pipeline_config().progress:
                return chunks.run_in_fresh_process_if_forked(plan)
            tally = progress.Tally(self.paths, rows, self.run_id, RUN_STARTED)
            with progress.Display(tally, self.cohort_id, report=self._report, live=not verbose) as display:
                chunks.run_in_fresh_process_if_forked(plan)
            log.info("cohort %s: the progress display used %.3fs of CPU", self.cohort_id, display.cpu_s)

    def _report(self, percent, message):
        """Progress for luigi (a luigid's visualiser shows it on RunCohort's row)."""
        self.set_progress_percentage(percent)
        self.set_status_message(message)
