"""How long does RunCohort take for big cohorts against an LLM that answers instantly?

    $ python bench/scale_bench.py [--sizes 1k,10k] [--workers 1] [--chunk-size N] [--no-naive] [--keep DIR]

For each size, builds a temp project (luigi.cfg, a cohort spec over the demo catalog with paid
models), starts ``python -m tests.support.stub_server`` (latency 0) and times, as subprocesses:
``luigi --module pipeline RunCohort`` (first run), then the same command again (no-op rerun).
For the 1k size it also times the naive flat design - one WrapperTask requiring every
EvaluationTask (``NaiveCohort`` below) - so the chunked/naive ratio is printed. The server's
count file checks exactly one LLM request per LLM generation, and none on the rerun.
``main(argv)`` returns the numbers as a dict for bench/run_all.py.
"""
import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import luigi
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.tasks import EvaluationTask  # noqa: E402
from tests.support.project import command_env, make_project, timed_luigi, write_spec  # noqa: E402
from tests.support.stub_server import StubProcess  # noqa: E402
CONCEPTS = ["idle-recombination", "critic-filter", "memory-consolidation", "feedback-flywheel",
            "search-over-ideas", "proprietary-data-moat", "background-compute"]
# 7 concepts, k_max 3 -> 35 combos; x draft replicates -> drafts; x 2 essay templates (one copy mode)
# x essay replicates -> essays; x 2 evaluation templates -> evaluations.
SIZES = {  # name: (draft replicates, essay replicates, evaluation replicates)
    "1k": (7, 1, 1),      # 245 drafts, 490 essays, 980 evaluations
    "10k": (7, 10, 1),    # 245 drafts, 4,900 essays, 9,800 evaluations
}


class NaiveCohort(luigi.WrapperTask):
    """The flat design this bench compares against: every evaluation is a direct requirement."""

    cohort_id = luigi.Parameter()

    def requires(self):
        from pipeline.membership import read_membership
        from pipeline.paths import Paths

        rows = read_membership(Paths.from_config().membership_csv(self.cohort_id))
        return [EvaluationTask(gen_id=r["gen_id"], cohort_id=self.cohort_id, keep_going=True)
                for r in rows if r["stage"] == "evaluation"]


def spec_yaml(draft_reps, essay_reps, eval_reps) -> str:
    return yaml.safe_dump({
        "concepts": {"ids": CONCEPTS, "k_max": 3, "description_level": "paragraph"},
        "axes": {
            "draft_template": ["links-brainstorm-v1"], "draft_llm": ["gemini_25_flash"],
            "essay_template": ["short-essay-v1", "draft-as-essay"], "essay_llm": ["sonnet_4"],
            "evaluation_template": ["mechanism-check-v1", "clarity-v1"], "evaluation_llm": ["sonnet_4"],
            "draft_template_replicate": list(range(1, draft_reps + 1)),
            "essay_template_replicate": list(range(1, essay_reps + 1)),
            "evaluation_template_replicate": list(range(1, eval_reps + 1)),
        },
    }, sort_keys=False)


def counts(project, cohort_id: str) -> dict:
    """Generations per stage and how many of them call the LLM (copy-mode essays do not)."""
    from pipeline.catalog import load_catalog
    from pipeline.paths import Paths

    catalog = load_catalog(Paths(project.data_root, project.raw_root, project.cohorts_root))
    rows = project.membership(cohort_id)
    out = {stage: sum(1 for r in rows if r["stage"] == stage) for stage in ("draft", "essay", "evaluation")}
    out["generations"] = len(rows)
    out["llm_generations"] = sum(1 for r in rows
                                 if catalog.templates[r["stage"]][r["template_id"]].generator != "copy")
    return out


def bench_chunked(workdir: Path, size: str, workers: int, chunk_size) -> dict:
    cohort_id = f"scale-{size}"
    settings = {"chunk_size": chunk_size} if chunk_size else {}
    project = make_project(workdir / f"chunked-{size}", **settings)
    write_spec(project, cohort_id, spec_yaml(*SIZES[size]))
    server = StubProcess(project.root / "requests.tsv", "--latency", "0", env=command_env())
    try:
        first = timed_luigi(project, "RunCohort", "--cohort-id", cohort_id, workers=workers,
                            base_url=server.base_url)
        after_first = len(server.statuses())
        rerun = timed_luigi(project, "RunCohort", "--cohort-id", cohort_id, workers=workers,
                            base_url=server.base_url)
        after_rerun = len(server.statuses())
    finally:
        server.close()
    n = counts(project, cohort_id)
    return {"size": size, **n, "first_s": first, "s_per_1k": 1000 * first / n["generations"],
            "rerun_s": rerun, "requests_first": after_first, "requests_rerun": after_rerun - after_first}


def bench_naive(workdir: Path, size: str, workers: int) -> dict:
    cohort_id = f"naive-{size}"
    project = make_project(workdir / f"naive-{size}")
    write_spec(project, cohort_id, spec_yaml(*SIZES[size]))
    server = StubProcess(project.root / "requests.tsv", "--latency", "0", env=command_env())
    try:
        build = timed_luigi(project, "BuildCohort", "--cohort-id", cohort_id, workers=workers,
                            base_url=server.base_url)
        run = timed_luigi(project, "NaiveCohort", "--cohort-id", cohort_id, workers=workers,
                          base_url=server.base_url, module="bench.scale_bench")
        requests = len(server.statuses())
    finally:
        server.close()
    n = counts(project, cohort_id)
    return {"size": size, **n, "first_s": build + run, "s_per_1k": 1000 * (build + run) / n["generations"],
            "requests_first": requests}


def _print_table(results, naive):
    head = (f"{'design':8} {'evals':>6} {'essays':>6} {'drafts':>6} {'gens':>6} {'LLM gens':>8} "
            f"{'first s':>8} {'s/1k gens':>9} {'rerun s':>7} {'req first':>9} {'req rerun':>9}")
    print(head)
    print("-" * len(head))
    for r in ([naive] if naive else []) + results:
        design = "naive" if r is naive else "chunked"
        rerun = f"{r['rerun_s']:7.1f}" if "rerun_s" in r else f"{'-':>7}"
        req_rerun = f"{r['requests_rerun']:9d}" if "requests_rerun" in r else f"{'-':>9}"
        print(f"{design:8} {r['evaluation']:6d} {r['essay']:6d} {r['draft']:6d} {r['generations']:6d} "
              f"{r['llm_generations']:8d} {r['first_s']:8.1f} {r['s_per_1k']:9.2f} {rerun} "
              f"{r['requests_first']:9d} {req_rerun}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1k,10k", help=f"comma-separated, of {', '.join(SIZES)}")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--chunk-size", type=int, default=None, help="default: luigi.cfg [pipeline] chunk_size")
    ap.add_argument("--no-naive", action="store_true", help="skip the naive flat baseline")
    ap.add_argument("--keep", default=None, help="keep the projects in this folder")
    args = ap.parse_args(argv)
    sizes = [s for s in args.sizes.split(",") if s]
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        ap.error(f"unknown size {unknown[0]!r}; use {', '.join(SIZES)}")

    workdir = Path(args.keep or tempfile.mkdtemp(prefix="scale-bench-"))
    try:
        results = []
        for size in sizes:
            r = bench_chunked(workdir, size, args.workers, args.chunk_size)
            results.append(r)
            print(f"{size}: first run {r['first_s']:.1f} s, rerun {r['rerun_s']:.1f} s", file=sys.stderr)
        naive = None if args.no_naive else bench_naive(workdir, "1k", args.workers)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"\nRunCohort scale bench: stub LLM with latency 0, --workers {args.workers}, "
          f"chunk_size {args.chunk_size or 'from luigi.cfg'}")
    _print_table(results, naive)
    ok = True
    for r in results:
        if r["requests_first"] != r["llm_generations"] or r["requests_rerun"] != 0:
            ok = False
            print(f"WRONG: {r['size']}: {r['requests_first']} LLM requests for {r['llm_generations']} LLM "
                  f"generations, {r['requests_rerun']} on the rerun (expected 0)")
    chunked_1k = next((r for r in results if r["size"] == "1k"), None)
    ratio = None
    if naive and chunked_1k:
        ratio = chunked_1k["first_s"] / naive["first_s"]
        print(f"chunked/naive first-run time at 1k: {ratio:.2f}")
    return {"workers": args.workers, "chunk_size": args.chunk_size, "chunked": results, "naive": naive,
            "chunked_over_naive_1k": ratio, "ok": ok}


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
