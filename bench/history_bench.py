"""Does a small cohort pay for the history of a long-lived data/?

    $ python bench/history_bench.py [--history 400000] [--quick] [--keep DIR]

Runs the same 42-generation cohort (``luigi --module pipeline RunCohort``, a stub LLM answering
instantly, --workers 1) twice, as subprocesses: in a project whose data/ is empty, and in one whose
event log already holds ``--history`` synthetic events (bench/replay_bench.py's generator) and
was replayed once, as the run that wrote them would have left it. Prints both wall times and
their ratio (target: at most 1.5). ``main(argv)`` returns the numbers for bench/run_all.py.
"""
import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.replay_bench import generate  # noqa: E402
from pipeline.original_tables import write_cross_experiment_tables  # noqa: E402
from pipeline.replay import replay  # noqa: E402
from tests.support.project import command_env, make_project, timed_luigi, write_spec  # noqa: E402
from tests.support.stub_server import StubProcess  # noqa: E402

COHORT = "small"
# 3 combos x 2 draft replicates = 6 drafts; x 2 essay templates = 12 essays; x 2 evaluations = 24
SPEC = yaml.safe_dump({
    "concepts": {"ids": ["idle-recombination", "critic-filter", "memory-consolidation"], "k_max": 2,
                 "description_level": "paragraph"},
    "axes": {"draft_template": ["links-brainstorm-v1"], "draft_llm": ["gemini_25_flash"],
             "essay_template": ["short-essay-v1", "draft-as-essay"], "essay_llm": ["sonnet_4"],
             "evaluation_template": ["mechanism-check-v1", "clarity-v1"], "evaluation_llm": ["sonnet_4"],
             "draft_template_replicate": [1, 2]},
}, sort_keys=False)


def run_cohort(project) -> float:
    server = StubProcess(project.root / "requests.tsv", "--latency", "0", env=command_env())
    try:
        return timed_luigi(project, "RunCohort", "--cohort-id", COHORT, workers=1, base_url=server.base_url)
    finally:
        server.close()


def generations(project) -> int:
    return sum(1 for _ in (project.data_root / "gens").glob("*/*/parsed.txt"))


def main(argv=()) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--history", type=int, default=400_000, help="events already in the log")
    parser.add_argument("--quick", action="store_true", help="a 100k-event history")
    parser.add_argument("--keep", type=Path, help="keep the projects in this folder")
    args = parser.parse_args(argv)
    history = 100_000 if args.quick else args.history
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="history-bench-"))
    try:
        empty = make_project(workdir / "empty")
        old = make_project(workdir / "old")
        for project in (empty, old):
            write_spec(project, COHORT, SPEC)
        n_old = generate(old.data_root / "events", history)
        t0 = time.perf_counter()
        # what the last run left behind: its ReplayResults replayed and wrote the cross-experiment tables
        stats = replay(old.data_root / "events", old.data_root / "tables")
        write_cross_experiment_tables(old.data_root, old.data_root / "tables", stats)
        prime_s = time.perf_counter() - t0
        empty_s = run_cohort(empty)
        old_s = run_cohort(old)
        n = generations(empty)
        assert generations(old) == n, (generations(old), n)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ratio = old_s / empty_s
    print(f"cohort:                      {n} generations, stub LLM latency 0, --workers 1")
    print(f"empty data/:                 {empty_s:.2f} s")
    print(f"data/ with {n_old:,} events: {old_s:.2f} s   (its first full replay took {prime_s:.2f} s)")
    print(f"with history / empty:        {ratio:.2f}x  (target <= 1.5)")
    return {"generations": n, "history_events": n_old, "empty_s": round(empty_s, 3),
            "with_history_s": round(old_s, 3), "ratio": round(ratio, 2), "prime_replay_s": round(prime_s, 3)}


if __name__ == "__main__":
    main(sys.argv[1:])
