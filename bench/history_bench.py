"""Does a small cohort pay for the history of a long-lived data/?

    $ python bench/history_bench.py [--history 400000] [--quick] [--keep DIR]

Runs the same 42-generation cohort (``luigi --module pipeline RunCohort``, a stub LLM answering
instantly, --workers 1) twice, as subprocesses: in a project whose data/ is empty, and in one whose
event log already holds ``--history`` synthetic events (bench/replay_bench.py's generator) and
was replayed once, as the run that wrote them would have left it. Prints both wall times and
their ratio (target: at most 1.5), then where the history-dependent part goes: in each project,
after its run, the end-of-run work of ReplayResults (the incremental replay, the cross-experiment
tables) timed in-process on a further 42-generation cohort's events. ``main(argv)`` returns the
numbers for bench/run_all.py.
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
from pipeline.events import EventLog  # noqa: E402
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


LINEAGE = ("stage", "gen_id", "parent_gen_id", "combo_id", "template_id", "llm_model_id", "replicate")


def emit_probe_cohort(events_dir) -> None:
    """The events of a 42-generation cohort (6 drafts, 12 essays, 24 scored evaluations) with an
    evaluation template new to the log, as a run writes them."""
    members = [("draft", f"d_probe{i}", None, f"combo_probe{i}", "links-brainstorm-v1", "gemini_25_flash", 1)
               for i in range(6)]
    members += [("essay", f"e_probe{i}", f"d_probe{i // 2}", f"combo_probe{i // 2}", "short-essay-v1", "sonnet_4", 1)
                 for i in range(12)]
    members += [("evaluation", f"v_probe{i}", f"e_probe{i // 2}", f"combo_probe{i // 4}", "probe-check-v1",
                 "sonnet_4", 1) for i in range(24)]
    log = EventLog(events_dir)
    log.emit("cohort_built", cohort_id="probe", member_fields=list(LINEAGE), members=[list(m) for m in members])
    for i, member in enumerate(members):
        lineage = dict(zip(LINEAGE, member))
        log.emit("generation_started", cohort_id="probe", **lineage)
        if lineage["stage"] == "evaluation":
            log.emit("score_parsed", cohort_id="probe", stage="evaluation", gen_id=lineage["gen_id"],
                     score=float(i % 10), scale="0-9", parser="in_last_line")
        log.emit("generation_completed", cohort_id="probe", **lineage, finish_reason="stop", prompt_tokens=100,
                 completion_tokens=200, cost=0.01, duration_s=1.0, attempts=1, source="run", copy=False)
    log.close()


def end_of_run(project) -> dict:
    """Seconds of ReplayResults' work on a further cohort's events, in-process."""
    emit_probe_cohort(project.data_root / "events")
    t0 = time.perf_counter()
    stats = replay(project.data_root / "events", project.data_root / "tables")
    t1 = time.perf_counter()
    write_cross_experiment_tables(project.data_root, project.data_root / "tables", stats)
    t2 = time.perf_counter()
    return {"replay_s": round(t1 - t0, 3), "incremental": stats.incremental,
            "cross_experiment_s": round(t2 - t1, 3)}


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
        parts = {"empty": end_of_run(empty), "with_history": end_of_run(old)}
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    ratio = old_s / empty_s
    print(f"cohort:                      {n} generations, stub LLM latency 0, --workers 1")
    print(f"empty data/:                 {empty_s:.2f} s")
    print(f"data/ with {n_old:,} events: {old_s:.2f} s   (its first full replay took {prime_s:.2f} s)")
    print(f"with history / empty:        {ratio:.2f}x  (target <= 1.5)")
    for name, part in parts.items():
        print(f"end of run, {name + ':':14s} replay {part['replay_s']:.3f} s"
              f"{'' if part['incremental'] else ' (full)'}, cross-experiment tables {part['cross_experiment_s']:.3f} s")
    return {"generations": n, "history_events": n_old, "empty_s": round(empty_s, 3),
            "with_history_s": round(old_s, 3), "ratio": round(ratio, 2), "prime_replay_s": round(prime_s, 3),
            "end_of_run": parts}


if __name__ == "__main__":
    main(sys.argv[1:])
