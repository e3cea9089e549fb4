"""Luigi tasks: a thin shell over the functional core (membership, generation, replay, reports).

    luigi --module pipeline RunCohort --cohort-id demo --local-scheduler
    luigi --module pipeline BuildCohort --cohort-id demo --local-scheduler
    luigi --module pipeline EvaluationTask --gen-id v_abc --local-scheduler

RunCohort runs the generations in chunks ([pipeline] chunk_size), each chunk with a fresh local
scheduler and the same --workers, also when the run talks to a luigid: a Luigi scheduler holds
every task it has seen until its worker exits, so one scheduler for a whole cohort costs O(n^2)
(see bench/scale_bench.py). Completion is checked in bulk, from files on disk.

Several runs may overlap (on one machine or many sharing data/, with or without a luigid): each
generation is bought under a claim (claims.py); a run skips what another live process is buying
and waits for it before it finishes. Every task carries its process's run id, so that processes
sharing a luigid never share a task and luigi's exit code speaks for each process (``_RunTask``).
"""
import logging
import os
import threading
import time
import uuid

import luigi
import luigi.worker
from luigi.cmdline_parser import CmdlineParser
from luigi.interface import core

from . import claims, generation, lifeline
from .catalog import load_catalog
from .config import llm as llm_config, pipeline as pipeline_config
from .errors import PipelineError
from .events import EventLog
from .fsio import read_json, remove_stale_tmp, write_json_atomic, write_text_atomic
from .llm import Backends
from .membership import compile_cohort, read_membership
from .paths import Paths
from . import store

log = logging.getLogger("luigi-interface")

# One id per luigi process (forked task processes inherit it). A generation that failed during this
# run counts as finished for this run (so the cohort goes on), and is retried by the next run.
RUN_ID = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
RUN_STARTED = generation.now_iso()
lifeline.install()  # task processes forked from here on die with their parent
# how often a run looks again at generations other processes are buying
WAIT_POLL_S = 1.0

_CONTEXT = {}
_PATHS = []  # [(key, Paths)]: the last config seen and its Paths


def config_paths():
    """``Paths.from_config()``, cached while the config stays the same.

    Building a luigi Config costs about a millisecond; tasks ask for their paths many times each."""
    parser = luigi.configuration.get_config()
    section = tuple(parser.items("pipeline")) if parser.has_section("pipeline") else ()
    cmdline = CmdlineParser.get_instance()
    if not _PATHS or _PATHS[0][0][0] is not cmdline or _PATHS[0][0][1] != section:
        _PATHS[:] = [((cmdline, section), Paths.from_config())]
    return _PATHS[0][1]


def context(cohort_id=None):
    """Paths, catalog, event writer and LLM backends, built once per process."""
    paths = config_paths()
    key = (paths.data_root, paths.raw_root)
    if key not in _CONTEXT:
        _CONTEXT[key] = generation.GenContext(paths, load_catalog(paths), EventLog(paths.events_dir),
                                              Backends.from_config(paths.data_root))
    ctx = _CONTEXT[key]
    return generation.GenContext(ctx.paths, ctx.catalog, ctx.events, ctx.backends, cohort_id, RUN_ID,
                                 llm_config().claim_lease_s)


class _RunTask(luigi.Task):
    """A task of this luigi process. When a luigid hands a task this process scheduled to another
    process, luigi's summary calls it "run by another worker" or "not run" and the exit code is
    non-zero (luigi.cfg [retcode]) although everything is done. With the run id in every task id,
    processes sharing a luigid never share a task; claims keep them from buying the same generation."""

    run_id = luigi.Parameter(default=RUN_ID, description="defaults to this process's run id")


class BuildCohort(_RunTask):
    """Compile the spec into data/cohorts/<id>/membership.csv + manifest.json and seed metadata."""

    cohort_id = luigi.Parameter()

    def output(self):
        return luigi.LocalTarget(config_paths().membership_csv(self.cohort_id))

    def complete(self):
        paths = config_paths()
        return store.cohort_is_current(paths, self.cohort_id, context().catalog)

    def run(self):
        ctx = context(self.cohort_id)
        remove_stale_tmp(ctx.paths.cohort_dir(self.cohort_id))
        cohort = compile_cohort(ctx.paths, self.cohort_id, ctx.catalog)
        changed = store.write_cohort(ctx.paths, cohort, ctx.events)
        self.set_status_message(f"{cohort.counts} ({'changed' if changed else 'unchanged'})")


class _GenerationTask(_RunTask):
    gen_id = luigi.Parameter()
    cohort_id = luigi.Parameter(default="", significant=False)
    # RunCohort sets this: a failed generation is recorded and the cohort goes on
    keep_going = luigi.BoolParameter(default=False, significant=False)
    stage = None
    parent_task = None

    @property
    def _paths(self):
        return config_paths()

    def _meta(self):
        # requires() and resources read the lineage, which never changes: read metadata.json once
        gdir = self._paths.gen_dir(self.stage, self.gen_id)
        cached = self.__dict__.get("_lineage")
        if cached is None or cached[0] != gdir:
            cached = self._lineage = (gdir, generation.load_meta(self._paths, self.stage, self.gen_id))
        return cached[1]

    def requires(self):
        if self.parent_task is None:
            return []
        try:
            parent = self._meta()["parent_gen_id"]
        except PipelineError:
            return []  # unreadable metadata: run() fails with the reason, and it is recorded
        return self.parent_task(gen_id=parent, cohort_id=self.cohort_id, keep_going=self.keep_going)

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
        if self.__dict__.pop("_deferred", False):
            return True  # luigi's check right after run() found it claimed elsewhere (that claim may be gone by now)
        # failed, or being bought by another process: finished as far as this pass of RunCohort goes
        return self.keep_going and (store.failed_in_run(gdir, RUN_ID) or
                                    generation.waiting_on(self._paths, self.stage, self.gen_id) is not None)

    def _blocked_by(self):
        """The failed ancestor ("stage gen_id") when the parent has no output but a failure record.

        Luigi runs this task only once the parent task is complete, so such a parent failed in
        this run - in this process or, with luigid, in another one."""
        if self.parent_task is None or not self.keep_going:
            return None
        try:
            parent = self._meta()["parent_gen_id"]
        except PipelineError:
            return None
        stage = self.parent_task.stage
        return store.failed_root(self._paths.gen_dir(stage, parent), stage, parent)

    def run(self):
        ctx = context(self.cohort_id or None)
        root = self._blocked_by()
        if root:  # not a failure of its own: reported once, as blocked, naming the failed ancestor
            log.info("BLOCKED %s %s: %s failed", self.stage, self.gen_id, root)
            store.mark_blocked(self._paths.gen_dir(self.stage, self.gen_id), RUN_ID, root)
            self.set_status_message(f"blocked: {root} failed")
            return
        self.set_status_message(f"{self.stage} {self.gen_id}: running")
        self.set_progress_percentage(0)
        started = time.monotonic()
        try:
            outcome = generation.run_generation(ctx, self.stage, self.gen_id)
        except claims.ClaimedElsewhere as busy:
            if not self.keep_going:
                raise PipelineError(f"{busy}; run it again once that process is done") from None
            log.info("skipped for now: %s", busy)
            self.set_status_message(f"claimed elsewhere: {busy}")
            self._deferred = True
            return
        except PipelineError as exc:
            reason = str(exc).removeprefix(f"{self.stage} {self.gen_id}: ")  # said once, in front
            log.warning("FAILED %s %s: %s", self.stage, self.gen_id, reason)
            if not self.keep_going:
                raise
            store.mark_failed(self._paths.gen_dir(self.stage, self.gen_id), RUN_ID, exc)
            self.set_status_message(f"failed: {reason}")
            return
        log.info("%s %s %s in %.1fs", outcome, self.stage, self.gen_id, time.monotonic() - started)
        self.set_status_message(f"{outcome} in {time.monotonic() - started:.1f}s")
        self.set_progress_percentage(100)


class DraftTask(_GenerationTask):
    stage = "draft"


class EssayTask(_GenerationTask):
    stage = "essay"
    parent_task = DraftTask


class EvaluationTask(_GenerationTask):
    stage = "evaluation"
    parent_task = EssayTask


TASK_BY_STAGE = {"draft": DraftTask, "essay": EssayTask, "evaluation": EvaluationTask}


class ReplayResults(_RunTask):
    """Fold the event log into data/tables/. ``log_state`` names the log contents it reflects."""

    log_state = luigi.Parameter(default="")

    def output(self):
        return luigi.LocalTarget(config_paths().tables_dir / "_replayed_state.txt")

    def complete(self):
        target = self.output()
        return bool(self.log_state) and target.exists() and \
            open(target.path, encoding="utf-8").read().strip() == self.log_state

    def run(self):
        from .original_tables import write_cross_experiment_tables
        from .replay import replay

        paths = config_paths()
        state = self.log_state or store.log_state(paths)
        remove_stale_tmp(paths.tables_dir)
        stats = replay(paths.events_dir, paths.tables_dir)
        write_cross_experiment_tables(paths.data_root, paths.tables_dir)
        write_text_atomic(self.output().path, state + "\n")
        self.set_status_message(str(stats))


class CohortReport(_RunTask):
    """Reports for one cohort under data/cohorts/<id>/reports/, from the replayed tables."""

    cohort_id = luigi.Parameter()
    log_state = luigi.Parameter(default="")

    def requires(self):
        return ReplayResults(log_state=self.log_state)

    def output(self):
        return luigi.LocalTarget(config_paths().reports_dir(self.cohort_id) / "summary.md")

    def complete(self):
        state_file = config_paths().reports_dir(self.cohort_id) / "_state.txt"
        return bool(self.log_state) and state_file.exists() and \
            state_file.read_text(encoding="utf-8").strip() == self.log_state

    def run(self):
        from .html_report import write_cohort_html
        from .original_tables import write_cohort_tables
        from .reports import write_cohort_report

        paths = config_paths()
        for folder in (paths.reports_dir(self.cohort_id), paths.results_dir(self.cohort_id)):
            remove_stale_tmp(folder)
        write_cohort_report(paths, self.cohort_id)
        write_cohort_tables(paths, self.cohort_id)
        write_cohort_html(paths, self.cohort_id)
        write_text_atomic(paths.reports_dir(self.cohort_id) / "_state.txt", self.log_state + "\n")


def _fresh_fork_lock():
    # Luigi forks task processes while holding luigi.worker.fork_lock, so a forked RunCohort would
    # inherit it held and deadlock as soon as its own chunk worker forks (--workers > 1).
    luigi.worker.fork_lock = threading.Lock()


os.register_at_fork(after_in_child=_fresh_fork_lock)


def _build_chunk(tasks):
    """Run one chunk with a local scheduler of its own.

    Luigi's scheduler keeps every finished task of a worker until the worker exits and walks
    them all on each request for work, so one scheduler for a whole cohort costs O(n^2)."""
    if not luigi.build(tasks, local_scheduler=True, workers=core().workers):
        log.warning("some generations of this chunk did not finish; see the log above")


def _claimed_elsewhere(paths, rows):
    """{gen_id: ClaimedElsewhere} of the pending ``rows`` (parents first) that another live process
    is buying, or whose unfinished parent it is buying."""
    busy = {}
    for row in rows:
        gdir = paths.gen_dir(row["stage"], row["gen_id"])
        owner = claims.holder(gdir)
        if owner is not None:
            busy[row["gen_id"]] = claims.ClaimedElsewhere(gdir, owner)
        elif row.get("parent_gen_id") in busy:
            busy[row["gen_id"]] = busy[row["parent_gen_id"]]
    return busy


class RunCohort(_RunTask):
    """Run every generation of a cohort, then replay the log and write the cohort's reports."""

    cohort_id = luigi.Parameter()
    chunk_size = luigi.IntParameter(default=0, significant=False, description="0: [pipeline] chunk_size")

    def requires(self):
        return BuildCohort(cohort_id=self.cohort_id)

    def output(self):
        return luigi.LocalTarget(config_paths().cohort_dir(self.cohort_id) / "run_complete.json")

    def complete(self):
        paths = config_paths()
        out = self.output()
        if not out.exists() or not BuildCohort(cohort_id=self.cohort_id).complete():
            return False
        rows = read_membership(paths.membership_csv(self.cohort_id))
        return not store.pending(paths, rows) and \
            read_json(out.path).get("membership_sha256") == store.file_sha256(paths.membership_csv(self.cohort_id))

    def _wait_for_others(self, total, todo, busy):
        """Sleep while other live processes buy what is left; say so now and then."""
        message = (f"{total - len(todo)}/{total} generations finished; waiting for {len(busy)} that other "
                   f"processes are buying (e.g. {next(iter(busy.values()))})")
        self.set_status_message(message)
        if time.monotonic() - self.__dict__.get("_said_at", -1e9) >= 10:
            log.info("cohort %s: %s", self.cohort_id, message)
            self._said_at = time.monotonic()
        time.sleep(WAIT_POLL_S)

    def run(self):
        paths = config_paths()
        rows = read_membership(paths.membership_csv(self.cohort_id))
        size = self.chunk_size or pipeline_config().chunk_size
        total = len(rows)
        todo = store.pending(paths, rows, run_id=RUN_ID)
        stalled = 0
        while todo:
            busy = _claimed_elsewhere(paths, todo)
            ready = [r for r in todo if r["gen_id"] not in busy]
            for start in range(0, len(ready), size):
                done = total - len(todo) + start
                self.set_progress_percentage(round(100 * done / max(total, 1)))
                self.set_status_message(f"{done}/{total} generations finished")
                tasks = [TASK_BY_STAGE[r["stage"]](gen_id=r["gen_id"], cohort_id=self.cohort_id, keep_going=True)
                         for r in ready[start:start + size]]
                _build_chunk(tasks)
            if busy and not ready:
                self._wait_for_others(total, todo, busy)
            left = store.pending(paths, rows, run_id=RUN_ID)
            # a pass that finished nothing is normal while others work; twice with nobody to wait for, it is a bug
            stalled = 0 if busy or len(left) < len(todo) else stalled + 1
            if stalled >= 2:
                raise PipelineError(f"cohort {self.cohort_id}: {len(left)} generation(s) neither finished nor "
                                    f"failed cleanly (e.g. {left[0]['stage']} {left[0]['gen_id']}); see the log "
                                    f"above for the error")
            todo = left
        self.set_progress_percentage(100)
        state = store.log_state(paths)
        yield CohortReport(cohort_id=self.cohort_id, log_state=state)
        summary = store.run_summary(paths, rows, RUN_STARTED)
        log.info("cohort %s: %s", self.cohort_id, store.format_summary(summary))
        if summary["failed"] or summary["blocked"]:
            raise PipelineError(f"cohort {self.cohort_id}: {summary['failed']} generation(s) failed, "
                                f"{summary['blocked']} more blocked behind them; `daydream status "
                                f"{self.cohort_id}` says why, and what to run where a rerun alone will not do")
        write_json_atomic(self.output().path, {
            "run_id": RUN_ID, "finished_at": generation.now_iso(), "summary": summary,
            "membership_sha256": store.file_sha256(paths.membership_csv(self.cohort_id))})
