"""How RunCohort hands its generations to Luigi: in chunks, each under a Luigi worker of its own.

Why not simply require every generation (or yield them all as dynamic dependencies)?
- Luigi's scheduler walks every pending task on each request for work: a whole cohort pending at
  once costs O(n^2) (bench/scale_bench.py: the flat wrapper). A chunk ([pipeline] chunk_size) at a
  time keeps it linear, and the bulk check of files on disk (store.pending) finds what is left.
- A dependency that fails stops everything above it in a Luigi run. A cohort must go on past a
  failed generation, and the failure must still be a FAILED task (with its reason) in Luigi's
  summary and a luigid's visualiser. So the generations are not RunCohort's dependencies: each
  chunk is a ``luigi.build`` of its own, against the run's scheduler (the luigid, when there is
  one, so the visualiser shows every generation; else a fresh local scheduler per chunk). Between
  chunks, what failed in this run is settled (tasks.GenerationTarget) and what needs it is marked
  blocked without being scheduled.
- Luigi forks a task process while holding a lock (spotify/luigi#3208): a ``luigi.build`` inside a
  forked task process (``--workers`` > 1) would wait on that lock forever. There the chunks run
  in a fresh interpreter (multiprocessing "spawn"), handed this run's settings explicitly.
"""
import logging
import multiprocessing
import time
from dataclasses import dataclass, field

import jinja2
import luigi
import luigi.configuration
import luigi.execution_summary
import luigi.interface
import luigi.rpc
import luigi.scheduler

from . import claims, lifeline, runlog, store
from .stages import PARENT
from .config import llm as llm_config, pipeline as pipeline_config
from .errors import PipelineError
from .membership import read_membership

log = logging.getLogger("luigi-interface")
WAIT_POLL_S = 1.0  # how often a run looks again at generations other processes are buying


@dataclass(frozen=True)
class Plan:
    """Everything the chunk runner needs, as plain data (it may run in a fresh interpreter)."""
    paths: object
    cohort_id: str
    run_id: str
    chunk_size: int
    scheduler: str | None          # a luigid's URL, or None for a local scheduler per chunk
    log_file: str
    console_level: str = "WARNING"   # of the spawned runner's stderr (runlog.console_level)
    workers: int = field(default_factory=lambda: luigi.interface.core().workers)
    # config sections as this process resolved them (luigi.cfg plus --llm-... flags)
    settings: dict = field(default_factory=lambda: {
        section.__name__: {name: str(value) for name, value in section().param_kwargs.items()}
        for section in (pipeline_config, llm_config)})


def scheduler_of_this_run():
    """The luigid URL this luigi process talks to, or None with --local-scheduler."""
    core = luigi.interface.core()
    if core.local_scheduler:
        return None
    return core.scheduler_url or f"http://{core.scheduler_host}:{core.scheduler_port}/"


def missing_pools(needed, resource_list) -> list:
    """Pools the cohort's models use that a scheduler's resource_list() does not define."""
    defined = {r["name"] for r in resource_list}
    return sorted(set(needed) - defined)


def warn_about_pools(plan, catalog, rows):
    """A luigid reads [resources] from its own config: started elsewhere, it has none, and then runs
    one task per pool at a time. Say so."""
    if plan.scheduler is None:
        return
    needed = {catalog.models[r["llm_model_id"]].pool for r in rows
              if r["stage"] in catalog.templates and r.get("template_id") in catalog.templates[r["stage"]]
              and catalog.templates[r["stage"]][r["template_id"]].generator == "llm"
              and r.get("llm_model_id") in catalog.models}
    try:
        missing = missing_pools(needed, luigi.rpc.RemoteScheduler(plan.scheduler).resource_list())
    except Exception as exc:  # an old or unreachable luigid: the run itself will say more
        log.warning("could not ask %s for its resources: %s", plan.scheduler, exc)
        return
    if missing:
        log.warning("the luigid at %s has no [resources] for %s, so it runs one task of each at a time; start it "
                    "with this project's luigi.cfg: `scripts/luigid` (LUIGI_CONFIG_PATH=<repo>/luigi.cfg luigid)",
                    plan.scheduler, ", ".join(missing))


def run_in_fresh_process_if_forked(plan):
    """Run the chunks here, or - in a task process luigi forked - in a spawned interpreter."""
    if multiprocessing.parent_process() is None:
        return run(plan)
    proc = multiprocessing.get_context("spawn").Process(target=_spawned, args=(plan,), name="daydream-chunks")
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise PipelineError(f"cohort {plan.cohort_id}: the process running its generations exited with "
                            f"{proc.exitcode}; see {plan.log_file}")


def _spawned(plan):
    # a spawned interpreter would spawn luigi's task processes too (a fresh import each, no logging):
    # here, where no lock is held, they fork again
    multiprocessing.set_start_method("fork", force=True)
    lifeline.adopt_parent()
    config = luigi.configuration.get_config()
    for section, values in plan.settings.items():
        if not config.has_section(section):
            config.add_section(section)
        for name, value in values.items():
            config.set(section, name, value)
    runlog.configure_spawned(plan.log_file, plan.console_level)
    run(plan)


class _Schedulers(luigi.interface._WorkerSchedulerFactory):
    """luigi.build's ``worker_scheduler_factory``: luigi's own, except that a chunk's local scheduler
    does not prune its task graph on every request for work (luigi's does, a walk over every task
    each time a task starts). A chunk's build is short-lived and its one worker is this process."""

    def create_local_scheduler(self):
        return luigi.scheduler.Scheduler(prune_on_get_work=False, record_task_history=False)


def _build(tasks, plan) -> bool:
    """Run one chunk; True if the scheduler held tasks back (a luigid whose pools other processes'
    tasks fill): those are scheduled again on the next pass."""
    scheduler = {"local_scheduler": True} if plan.scheduler is None else {"scheduler_url": plan.scheduler}
    result = luigi.build(tasks, workers=plan.workers, detailed_summary=True, worker_scheduler_factory=_Schedulers(),
                         **scheduler)
    if not result.scheduling_succeeded:
        log.info("some generations of this chunk did not finish; see the log above")
    return result.status == luigi.execution_summary.LuigiStatusCode.NOT_RUN


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


def settle_blocked(paths, rows, run_id):
    """Mark blocked (in this run) the ``rows`` (parents first) whose parent failed or was blocked in
    this run; return the others. Blocked generations are not scheduled: Luigi would call a settled
    parent done."""
    settled, left = {}, []
    for row in rows:
        root = settled.get(row.get("parent_gen_id"))
        if root is None and row["stage"] in PARENT:
            parent_stage = PARENT[row["stage"]]
            parent_dir = paths.gen_dir(parent_stage, row["parent_gen_id"]) if row.get("parent_gen_id") else None
            if parent_dir is not None and store.failed_in_run(parent_dir, run_id):
                root = store.failed_root(parent_dir, parent_stage, row["parent_gen_id"])
        if root:
            store.mark_blocked(paths.gen_dir(row["stage"], row["gen_id"]), run_id, root)
            log.warning("BLOCKED %s %s: %s failed", row["stage"], row["gen_id"], root)
            settled[row["gen_id"]] = root
        else:
            left.append(row)
    return left


def compile_templates(catalog, rows):
    """Compile here the templates the ``rows`` use. Luigi forks a process per task: each inherits
    what this process compiled instead of compiling its own (Catalog.compiled caches per process)."""
    for stage, template_id in {(r["stage"], r.get("template_id")) for r in rows}:
        try:
            catalog.check_template_variables(stage, template_id)
            catalog.compiled(stage, template_id)
        except (PipelineError, KeyError, jinja2.TemplateError):
            pass  # the generation fails with the reason


def run(plan):
    """Schedule every pending generation of the cohort, chunk by chunk, until each is done or
    settled in this run; wait for those other processes are buying."""
    from .tasks import gen_context, generation_task  # the task classes (this module is imported by tasks.py)

    paths = plan.paths
    rows = read_membership(paths.membership_csv(plan.cohort_id))
    todo = store.pending(paths, rows, run_id=plan.run_id)
    ctx = gen_context(paths, plan.run_id)
    compile_templates(ctx.catalog, todo)
    ctx.backends.prepare()  # likewise the HTTP client
    stalled, said_at = 0, -1e9
    while todo:
        todo = settle_blocked(paths, todo, plan.run_id)
        busy = _claimed_elsewhere(paths, todo)
        ready = [r for r in todo if r["gen_id"] not in busy]
        held_back = False
        for start in range(0, len(ready), plan.chunk_size):
            held_back |= _build([generation_task(r, plan.cohort_id, plan.run_id, paths)
                                 for r in ready[start:start + plan.chunk_size]], plan)
        if held_back:
            time.sleep(WAIT_POLL_S)
        elif busy and not ready:
            if time.monotonic() - said_at >= 10:
                log.warning("cohort %s: %d/%d generations finished; waiting for %d that other processes are buying "
                         "(e.g. %s)", plan.cohort_id, len(rows) - len(todo), len(rows), len(busy),
                         next(iter(busy.values())))
                said_at = time.monotonic()
            time.sleep(WAIT_POLL_S)
        left = store.pending(paths, rows, run_id=plan.run_id)
        # a pass that settled nothing is normal while others work; twice with nobody to wait for, it is a bug
        stalled = 0 if busy or held_back or len(left) < len(todo) else stalled + 1
        if stalled >= 2:
            raise PipelineError(f"cohort {plan.cohort_id}: {len(left)} generation(s) neither finished nor "
                                f"failed cleanly (e.g. {left[0]['stage']} {left[0]['gen_id']}); see "
                                f"{plan.log_file} for the error")
        todo = left
