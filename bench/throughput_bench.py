"""How close does RunCohort get to the throughput a latency-bound LLM allows?

    $ python bench/throughput_bench.py [--workers 1,2,4,8] [--latency 0.3] [--max-concurrent 8] [--keep DIR]

Starts ``python -m tests.support.stub_server --latency 0.3 --max-concurrent 8 --count-file F`` (every
answer takes 0.3 s; more than 8 requests in flight get 429), then for each W runs
``luigi --module pipeline RunCohort --workers W --local-scheduler`` in a fresh project whose
luigi.cfg sets ``[resources] llm_paid = 8``, on a cohort of 48 LLM generations with paid models
(12 drafts -> 12 essays -> 24 evaluations). The physical limit is min(W, max_concurrent, pool) / latency
generations per second; the bench prints what each run reached over the whole command and over the
generation window (first generation_started to last generation_completed in the event log).
``main(argv)`` returns the numbers as a dict for bench/run_all.py.
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.events import read_events  # noqa: E402
from tests.support.project import command_env, make_project, timed_luigi, write_spec  # noqa: E402
from tests.support.stub_server import StubProcess  # noqa: E402

POOL = 8  # [resources] llm_paid in the bench's luigi.cfg
COHORT = "throughput"
# 4 concepts, k_max 2 -> 6 combos; x 2 draft replicates -> 12 drafts -> 12 essays -> 24 evaluations
SPEC = """\
concepts: {ids: [idle-recombination, critic-filter, feedback-flywheel, search-over-ideas], k_max: 2,
           description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  draft_template_replicate: [1, 2]
  essay_template: [short-essay-v1]
  essay_llm: [sonnet_4]
  evaluation_template: [mechanism-check-v1, clarity-v1]
  evaluation_llm: [sonnet_4]
"""
LLM_GENERATIONS = 48


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


def run_one(workdir: Path, stub: StubProcess, workers: int, latency: float, max_concurrent: int) -> dict:
    project = make_project(workdir / f"w{workers}", llm_paid=POOL)
    write_spec(project, COHORT, SPEC)
    before = len(stub.statuses())
    wall = timed_luigi(project, "RunCohort", "--cohort-id", COHORT, workers=workers, base_url=stub.base_url)
    statuses = stub.statuses()[before:]
    window, completed = generation_window(project.data_root / "events")
    limit = min(workers, max_concurrent, POOL) / latency
    rate = completed / window if window else 0.0
    return {"workers": workers, "generations": completed, "answered": statuses.count("200"),
            "rate_limited": statuses.count("429"), "wall_s": round(wall, 2), "window_s": round(window, 2),
            "gens_per_s_wall": round(completed / wall, 2), "gens_per_s": round(rate, 2),
            "limit_per_s": round(limit, 2), "ratio_to_limit": round(rate / limit, 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", default="1,2,4,8", help="comma-separated worker counts")
    ap.add_argument("--latency", type=float, default=0.3, help="seconds per stub answer")
    ap.add_argument("--max-concurrent", type=int, default=8, help="stub answers 429 beyond this many")
    ap.add_argument("--keep", default=None, help="keep the projects in this folder")
    args = ap.parse_args(argv)
    workers = [int(w) for w in args.workers.split(",") if w]

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="throughput-bench-"))
    stub = StubProcess(workdir / "requests.tsv", "--latency", str(args.latency),
                       "--max-concurrent", str(args.max_concurrent), env=command_env())
    results = []
    try:
        for w in workers:
            r = run_one(workdir, stub, w, args.latency, args.max_concurrent)
            results.append(r)
            print(f"--workers {w}: {r['gens_per_s']:.2f} generations/s ({r['ratio_to_limit']:.0%} of the limit)",
                  file=sys.stderr)
    finally:
        stub.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nRunCohort throughput: stub latency {args.latency} s, max {args.max_concurrent} in flight, "
          f"[resources] llm_paid = {POOL}, {LLM_GENERATIONS} LLM generations per run")
    head = (f"{'workers':>7} {'gens':>5} {'429s':>5} {'wall s':>7} {'gens/s wall':>11} {'window s':>8} "
            f"{'gens/s':>7} {'limit/s':>7} {'ratio':>6}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['workers']:7d} {r['generations']:5d} {r['rate_limited']:5d} {r['wall_s']:7.1f} "
              f"{r['gens_per_s_wall']:11.2f} {r['window_s']:8.1f} {r['gens_per_s']:7.2f} {r['limit_per_s']:7.2f} "
              f"{r['ratio_to_limit']:6.0%}")
    print("limit = min(workers, max_concurrent, llm_paid) / latency; gens/s over the generation window\n"
          "(first generation_started to last generation_completed). The draft -> essay -> evaluation\n"
          "chain limits parallelism: essays wait for their drafts and evaluations for their essays, so\n"
          "the first and last moments of a run have fewer ready generations than workers; wall time also\n"
          "includes luigi start-up, BuildCohort and the reports.")
    ok = all(r["generations"] == LLM_GENERATIONS and r["answered"] == LLM_GENERATIONS for r in results)
    if not ok:
        print("WRONG: some run did not answer exactly one request per LLM generation")
    return {"latency_s": args.latency, "max_concurrent": args.max_concurrent, "pool": POOL,
            "runs": results, "ok": ok}


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
