"""How close does RunCohort get to the throughput a latency-bound LLM allows, on the local scheduler
and through a real luigid?

    $ python bench/throughput_bench.py [--workers 8] [--latency 0.3] [--repeat 3] [--quick]
                                       [--schedulers local,luigid] [--baseline /path/to/other/checkout]
                                       [--keep DIR]

Starts ``python -m tests.support.stub_server --latency 0.3 --max-concurrent 8 --count-file F`` (every
answer takes 0.3 s; more than 8 requests in flight get 429). For each W, runs
``luigi --module pipeline RunCohort --workers W`` in a fresh project whose luigi.cfg sets
``[resources] llm_paid = 8``, once with ``--local-scheduler`` and once with ``--scheduler-url`` of a
luigid the bench starts for that run (as scripts/luigid does: with the project's luigi.cfg, so it
has the pools) and stops afterwards. The cohort has 102 LLM generations with paid models:
6 drafts -> 12 essays -> 84 evaluations.

The dependency-aware limit is the time a run needs if every stage waits for the one before:
sum over stages of ceil(calls in the stage / slots) x latency, with slots = min(W, max_concurrent,
llm_paid). The bench prints it beside the generation window (first generation_started to last
generation_completed in the event log) and the share reached (limit / window). ``--baseline DIR``
runs another checkout's code (its PYTHONPATH and luigi.cfg) alternately with this one, in the same
session, each going first in every other repetition (so that neither always runs right after a
luigid's run), and prints the ratio. Each kind of run is repeated (``--repeat``, 1 with ``--quick``) and the
medians are reported, with the CPU seconds of each run's processes (luigi, its task processes, the
luigid), which a loaded machine disturbs less than the share. ``main(argv)`` returns the numbers as a
dict for bench/run_all.py.
"""
import argparse
import math
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.events import read_events  # noqa: E402
from tests.support.project import command_env, luigid, make_project, output_of, run_luigi, write_spec  # noqa: E402
from tests.support.stub_server import StubProcess  # noqa: E402

POOL = 8  # [resources] llm_paid in the bench's luigi.cfg
COHORT = "throughput"
# 4 concepts, k_max 2 -> 6 combos -> 6 drafts; x 2 essay replicates -> 12 essays; x 7 evaluation
# replicates -> 84 evaluations: 102 LLM calls
SPEC = """\
concepts: {ids: [idle-recombination, critic-filter, feedback-flywheel, search-over-ideas], k_max: 2,
           description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  essay_template: [short-essay-v1]
  essay_llm: [sonnet_4]
  essay_replicate: [1, 2]
  evaluation_template: [mechanism-check-v1]
  evaluation_llm: [sonnet_4]
  evaluation_replicate: [1, 2, 3, 4, 5, 6, 7]
"""
STAGE_CALLS = {"draft": 6, "essay": 12, "evaluation": 84}
LLM_GENERATIONS = sum(STAGE_CALLS.values())
SCHEDULERS = ("local", "luigid")


def dependency_aware_limit(stage_calls: dict, slots: int, latency: float) -> float:
    """Seconds a run needs when each stage starts after the one before: sum of ceil(calls / slots) x latency."""
    return sum(math.ceil(n / slots) for n in stage_calls.values() if n) * latency


def _parse_ts(ts: str) -> float:
    from datetime import datetime, timezone

    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def generation_window(events_dir: Path) -> tuple:
    """(seconds from the first generation_started to the last generation_completed, completed count)."""
    events = read_events(events_dir).events
    started = [_parse_ts(e["ts"]) for e in events if e["type"] == "generation_started"]
    done = [_parse_ts(e["ts"]) for e in events if e["type"] == "generation_completed" and not e.get("copy")]
    if not started or not done:
        return 0.0, 0
    return max(done) - min(started), len(done)


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: luigi, its task processes, luigid."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Code:
    """Whose code a run uses: this checkout, or another one (its PYTHONPATH and luigi.cfg)."""

    def __init__(self, name, root=None):
        self.name, self.root = name, root

    def project(self, folder):
        return make_project(folder, config_from=self.root or REPO, llm_paid=POOL)

    def env(self, extra=None):
        env = dict(extra or {})
        if self.root is not None:
            env["PYTHONPATH"] = str(self.root)
        return env


def timed_run(project, *args, workers, base_url, scheduler_url=None, env=None) -> float:
    """One run as a user starts it; its wall time. Not tests.support's timed_luigi: its
    ``--log-level WARNING`` asks for luigi's own logging, which puts every task's INFO lines on
    stderr too (runlog.log_level_asked), a cost a user's default run does not have."""
    if scheduler_url:
        args += ("--scheduler-url", scheduler_url)
    started = time.perf_counter()
    result = run_luigi(project, *args, "--no-lock", "--workers", str(workers), base_url=base_url, env=env,
                       timeout=None, fast_retries=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(result.args)} exited {result.returncode} in {project.root}:\n"
                           f"{output_of(result)}")
    return elapsed


def run_one(folder: Path, stub: StubProcess, code: Code, scheduler: str, workers: int, latency: float,
            max_concurrent: int) -> dict:
    project = code.project(folder)
    write_spec(project, COHORT, SPEC)
    before, cpu_before = len(stub.statuses()), _children_cpu()
    run = dict(workers=workers, base_url=stub.base_url, env=code.env())
    if scheduler == "local":
        wall = timed_run(project, "RunCohort", "--cohort-id", COHORT, **run)
    else:
        config = {"LUIGI_CONFIG_PATH": str(project.root / "luigi.cfg")}
        with luigid(folder / "luigid", env=command_env(code.env(config))) as (url, *_):
            wall = timed_run(project, "RunCohort", "--cohort-id", COHORT, scheduler_url=url, **run)
    statuses, cpu = stub.statuses()[before:], _children_cpu() - cpu_before
    window, completed = generation_window(project.data_root / "events")
    limit = dependency_aware_limit(STAGE_CALLS, min(workers, max_concurrent, POOL), latency)
    return {"code": code.name, "scheduler": scheduler, "workers": workers, "generations": completed,
            "answered": statuses.count("200"), "rate_limited": statuses.count("429"), "wall_s": round(wall, 2),
            "window_s": round(window, 3), "limit_s": round(limit, 2),
            "share": round(limit / window, 3) if window else 0.0, "cpu_s": round(cpu, 2)}


def summarize(runs: list, codes: list, schedulers: list, workers: list, key: str) -> dict:
    """{code: {scheduler: {W: median of ``key``}}} over the repetitions."""
    return {c.name: {s: {w: round(statistics.median(r[key] for r in runs if (r["code"], r["scheduler"],
                                                    r["workers"]) == (c.name, s, w)), 3) for w in workers}
                     for s in schedulers} for c in codes}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="8", help="comma-separated worker counts")
    ap.add_argument("--latency", type=float, default=0.3, help="seconds per stub answer")
    ap.add_argument("--max-concurrent", type=int, default=8, help="stub answers 429 beyond this many")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each kind (the median share is reported)")
    ap.add_argument("--quick", action="store_true", help="one run of each kind")
    ap.add_argument("--schedulers", default=",".join(SCHEDULERS), help="comma-separated: local, luigid")
    ap.add_argument("--baseline", default=None, help="another checkout to run alternately with this one")
    ap.add_argument("--keep", default=None, help="keep the projects in this folder")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]
    schedulers = [s for s in SCHEDULERS if s in args.schedulers.split(",")]
    if not schedulers or set(args.schedulers.split(",")) - set(SCHEDULERS):
        ap.error(f"--schedulers: a comma-separated choice of {', '.join(SCHEDULERS)}")
    repeat = 1 if args.quick else args.repeat
    codes = [Code("this")] + ([Code("baseline", Path(args.baseline).resolve())] if args.baseline else [])

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="throughput-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    stub = StubProcess(workdir / "requests.tsv", "--latency", str(args.latency),
                       "--max-concurrent", str(args.max_concurrent), env=command_env())
    runs = []
    try:
        for n in range(repeat):
            for w in workers:
                for scheduler in schedulers:
                    # alternating, so that load from elsewhere hits both alike, and each first every other time
                    for code in (codes if n % 2 == 0 else codes[::-1]):
                        r = run_one(workdir / f"{code.name}-{scheduler}-w{w}-{n}", stub, code, scheduler, w,
                                    args.latency, args.max_concurrent)
                        runs.append(r)
                        print(f"{code.name:8} {scheduler:6} --workers {w}: window {r['window_s']:.2f} s, limit "
                              f"{r['limit_s']:.2f} s: {r['share']:.1%}", file=sys.stderr)
    finally:
        stub.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nRunCohort throughput: stub latency {args.latency} s, max {args.max_concurrent} in flight, "
          f"[resources] llm_paid = {POOL}, {LLM_GENERATIONS} LLM generations per run "
          f"({' -> '.join(f'{n} {s}s' for s, n in STAGE_CALLS.items())})")
    head = (f"{'code':8} {'scheduler':9} {'workers':>7} {'gens':>5} {'429s':>5} {'wall s':>7} {'window s':>8} "
            f"{'limit s':>7} {'share':>6} {'CPU s':>6}")
    print(head)
    print("-" * len(head))
    for r in runs:
        print(f"{r['code']:8} {r['scheduler']:9} {r['workers']:7d} {r['generations']:5d} {r['rate_limited']:5d} "
              f"{r['wall_s']:7.1f} {r['window_s']:8.2f} {r['limit_s']:7.2f} {r['share']:6.1%} {r['cpu_s']:6.1f}")
    shares, cpu = (summarize(runs, codes, schedulers, workers, key) for key in ("share", "cpu_s"))
    for scheduler in schedulers:
        for w in workers:
            for name, medians, show in (("share", shares, "{:.1%}"), ("CPU s", cpu, "{:.2f}")):
                line = f"median {name}, {scheduler}, --workers {w}: " + ", ".join(
                    f"{c.name} {show.format(medians[c.name][scheduler][w])}" for c in codes)
                if args.baseline:
                    ratio = medians["this"][scheduler][w] / medians["baseline"][scheduler][w]
                    line += f" (this / baseline = {ratio:.3f})"
                print(line)
    print("limit = sum over stages of ceil(calls / min(workers, max_concurrent, llm_paid)) x latency;\n"
          "share = limit / generation window (first generation_started to last generation_completed).\n"
          "Wall time also includes luigi start-up, BuildCohort and the reports; CPU s is that of every process\n"
          "of the run (luigi, its task processes, the luigid), less sensitive to a loaded machine than the share.")
    ok = all(r["generations"] == LLM_GENERATIONS and r["answered"] == LLM_GENERATIONS for r in runs)
    if not ok:
        print("WRONG: some run did not answer exactly one request per LLM generation")
    return {"latency_s": args.latency, "max_concurrent": args.max_concurrent, "pool": POOL,
            "llm_generations": LLM_GENERATIONS, "median_share": shares, "median_cpu_s": cpu, "ok": ok}


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
