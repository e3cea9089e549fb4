"""The ``daydream`` command: look at cohorts and results without running Luigi.

    daydream plan demo              # what RunCohort would do, nothing is written
    daydream status demo            # per stage: total, done, failed, pending
    daydream parse-score FILE...    # check a score parser against saved responses
    daydream replay                 # rebuild data/tables from the event log
    daydream rebuild-log            # backfill events for generations made without them
    daydream import-original SRC    # bring in a data folder written by the original
    daydream compare A B [--html F] # templates and models across cohorts (F: an HTML page with plots)
    daydream regenerate STAGE ID    # pay again for one generation, on purpose
    daydream design SPEC_FILE       # a spec's design rows (csv or jsonl), the original's compiler
    daydream select-top-essays --cohort-id X --template T   # the original's ranked candidate list
    daydream reparse [--cohort ID] [STAGE ID ...]   # parse saved answers again, no LLM call
    daydream build-cohort-from-list --cohort-id X           # a cohort of the selected essays
    daydream run COHORT [luigi options]   # RunCohort with a progress line (local scheduler by default)
"""
import argparse
import sys

from .errors import PipelineError
from .paths import Paths
from .stages import STAGES


def _paths(args):
    return Paths.from_config(args.data_root, args.raw_root, args.cohorts_root)


def _add_roots(parser):
    parser.add_argument("--data-root", help="data folder (default: luigi.cfg [pipeline] data_root, or data)")
    parser.add_argument("--raw-root", help="catalog folder (default: <data-root>/1_raw)")
    parser.add_argument("--cohorts-root", help="cohort specs folder (default: cohorts)")


def cmd_plan(args):
    from .catalog import load_catalog
    from .membership import compile_cohort
    from .store import pending

    paths = _paths(args)
    catalog = load_catalog(paths)
    cohort = compile_cohort(paths, args.cohort_id, catalog)
    todo = {r["gen_id"] for r in pending(paths, cohort.rows)}
    print(f"cohort {args.cohort_id}: {cohort.spec_path or paths.membership_csv(args.cohort_id)} against catalog {paths.raw_root}")
    print(f"{'stage':<12}{'generations':>12}{'LLM calls':>11}{'done':>8}{'to run':>8}")
    total_calls = total_todo = 0
    for stage in STAGES:
        rows = [r for r in cohort.rows if r["stage"] == stage]
        calls = [r for r in rows if catalog.templates[stage][r["template_id"]].generator == "llm"]
        left = sum(1 for r in calls if r["gen_id"] in todo)
        total_calls += len(calls)
        total_todo += left
        print(f"{stage:<12}{len(rows):>12}{len(calls):>11}{len(calls) - left:>8}{left:>8}")
    print(f"LLM calls: {total_calls} in all, {total_calls - total_todo} already done, {total_todo} to make")
    print("\nfirst rows:")
    for row in cohort.rows[: args.rows]:
        print("  " + "  ".join(str(row[k]) for k in ("stage", "gen_id", "parent_gen_id", "combo_id",
                                                       "template_id", "llm_model_id", "replicate")))
    return 0


def cmd_status(args):
    from .membership import read_membership
    from .store import stage_status

    paths = _paths(args)
    rows = read_membership(paths.membership_csv(args.cohort_id))
    status = stage_status(paths, rows)
    print(f"{'stage':<12}{'total':>8}{'done':>8}{'failed':>8}{'blocked':>9}{'pending':>9}")
    for stage, s in status.items():
        print(f"{stage:<12}{s['total']:>8}{s['done']:>8}{s['failed']:>8}{s['blocked']:>9}{s['pending']:>9}")
    failures = [(stage, g, e, hint) for stage, s in status.items() for g, e, hint in s["failures"]]
    if failures:
        print(f"\nfailed ({len(failures)}):")
        for stage, gen_id, error, hint in failures[: args.failures]:
            print(f"  {stage} {gen_id}: {error.splitlines()[0][:200] if error else ''}")
            if hint:
                print(f"    -> {hint}")
        if len(failures) > args.failures:
            print(f"  ... and {len(failures) - args.failures} more")
    blocked = {}
    for stage, s in status.items():
        for _, root in s["blocked_by"]:
            blocked.setdefault(root, {}).setdefault(stage, 0)
            blocked[root][stage] += 1
    if blocked:
        print(f"\nblocked by a failed parent ({sum(s['blocked'] for s in status.values())}):")
        for root, per_stage in blocked.items():
            counts = ", ".join(f"{n} {stage}" for stage, n in per_stage.items())
            print(f"  {counts} waiting on {root}")
    if failures:
        print("\nrerunning the cohort retries the failed generations (except where a -> line says otherwise), "
              "then the blocked ones")
    return 1 if failures or blocked else 0


def _passthrough():
    """Subcommands with their own argument parsers: daydream NAME ARGS... == NAME's main(ARGS)."""
    from .parsers import parse_score_main
    from .replay import replay_main

    return {"parse-score": parse_score_main, "replay": replay_main}


def cmd_rebuild_log(args):
    from .backfill import backfill

    paths = _paths(args)
    result = backfill(paths)
    for warning in result.warnings:
        print(f"daydream: warning: {warning}", file=sys.stderr)
    print(f"wrote {result.written} backfill event(s) to {paths.events_dir}")
    return 0


def cmd_import_original(args):
    from .import_original import import_original

    summary = import_original(args.src_data, _paths(args))
    for warning in summary.warnings:
        print(f"daydream: warning: {warning}", file=sys.stderr)
    print(summary.text())
    return 0


def cmd_compare(args):
    from .reports import compare_cohorts

    print(compare_cohorts(_paths(args), args.cohort_ids))
    if args.html:
        from .html_report import write_compare_html

        print(f"wrote {write_compare_html(_paths(args), args.cohort_ids, args.html)}")
    return 0


def cmd_regenerate(args):
    from .regenerate import regenerate

    paths = _paths(args)
    moved = regenerate(paths, args.stage, args.gen_id)
    for line in moved:
        print(line)
    print(f"{args.stage} {args.gen_id} and its dependents will be generated again by the next run")
    return 0


def cmd_design(args):
    """Compile one spec file in the original's format (as its compile_experiment_design does)."""
    from .fsio import write_text_atomic
    from .spec import compile_spec, render_rows

    text = render_rows(compile_spec(args.spec_file, original=True, seed=args.seed), args.format)
    if args.out:
        write_text_atomic(args.out, text)
    else:
        sys.stdout.write(text)
    return 0


def cmd_select_top_essays(args):
    from .original_tables import select_top_essays

    return select_top_essays(_paths(args).data_root, args)


def cmd_reparse(args):
    from .reparse import cohort_targets, parse_targets, reparse

    paths = _paths(args)
    targets = parse_targets(args.targets)
    if args.cohort:
        targets += cohort_targets(paths, args.cohort, include_done=args.all)
    elif not targets:
        raise PipelineError("name generations (STAGE GEN_ID ...) or a cohort (--cohort ID) to re-parse")
    results = reparse(paths, targets, cohort_id=args.cohort)
    for stage, gen_id, outcome, reason in results:
        print(f"{stage} {gen_id}: {outcome}" + (f": {reason.splitlines()[0][:200]}" if reason else ""))
    failed = sum(1 for r in results if r[2] == "failed")
    print(f"re-parsed {len(results) - failed} of {len(results)} saved answer(s) without an LLM call"
          + ("; rerun the cohort to continue with their dependents" if len(results) > failed else ""))
    return 1 if failed else 0


def cmd_build_cohort_from_list(args):
    from .curation import build_cohort_from_list

    return build_cohort_from_list(_paths(args), args)


def build_parser():
    parser = argparse.ArgumentParser(prog="daydream", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("plan", help="preview a cohort: counts, LLM calls, first rows")
    p.add_argument("cohort_id")
    p.add_argument("--rows", type=int, default=10)
    _add_roots(p)
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("status", help="per stage: total, done, failed, pending")
    p.add_argument("cohort_id")
    p.add_argument("--failures", type=int, default=20, help="failures to list")
    _add_roots(p)
    p.set_defaults(func=cmd_status)

    # listed for --help; main() hands their arguments to their own parsers
    sub.add_parser("parse-score", help="print the score of saved evaluation responses (--help for options)")
    sub.add_parser("replay", help="rebuild data/tables from the event log (--help for options)")

    p = sub.add_parser("rebuild-log", help="write backfill events for generations that have files but no events")
    _add_roots(p)
    p.set_defaults(func=cmd_rebuild_log)

    p = sub.add_parser("import-original", help="import a data folder written by the original (its SRC is only read)")
    p.add_argument("src_data", help="the original's data folder (holding gens/, cohorts/, combo_mappings.csv)")
    _add_roots(p)
    p.set_defaults(func=cmd_import_original)

    p = sub.add_parser("compare", help="compare templates and models across cohorts")
    p.add_argument("cohort_ids", nargs="+")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with plots to FILE")
    _add_roots(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("regenerate", help="archive a generation's response and regenerate it (and its dependents)")
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("gen_id")
    _add_roots(p)
    p.set_defaults(func=cmd_regenerate)

    p = sub.add_parser("design", help="compile one spec file (the original's format) into design rows")
    p.add_argument("spec_file")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--out", help="write here (atomically) instead of stdout")
    p.add_argument("--seed", type=int, help="shuffle the rows as the original does with this seed")
    p.set_defaults(func=cmd_design)

    # the original's scripts/select_top_essays.py: same flags, defaults, columns and messages
    p = sub.add_parser("select-top-essays", help="rank essays by one evaluation template into an editable "
                       "candidate list (<data-root>/curation/top_essay_candidates.csv)")
    p.add_argument("--cohort-id", required=True, help="label stored as proposed_cohort_id (nothing is created)")
    p.add_argument("--template", required=True, help="evaluation template to rank by")
    p.add_argument("--top-n", type=int, default=10, help="keep the N best by avg_score (default: 10)")
    p.add_argument("--score-span", type=float, default=None,
                   help="keep all within this distance of the best avg_score (overrides --top-n)")
    p.add_argument("--max-only", action="store_true",
                   help="keep all tied at the best avg_score (overrides --top-n and --score-span)")
    p.add_argument("--aggregated-scores",
                   help="input (default: <data-root>/7_cross_experiment/aggregated_scores.csv)")
    p.add_argument("--average-models", nargs="*", default=["sonnet-4", "gemini_25_pro"],
                   help="evaluation models whose scores are averaged (default: sonnet-4 gemini_25_pro)")
    p.add_argument("--output", help="candidate list (default: <data-root>/curation/top_essay_candidates.csv)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    _add_roots(p)
    p.set_defaults(func=cmd_select_top_essays)

    p = sub.add_parser("reparse", help="parse saved answers (raw.txt) again after a parser fix; no LLM call")
    p.add_argument("targets", nargs="*", metavar="STAGE GEN_ID", help="generations to re-parse")
    p.add_argument("--cohort", help="re-parse this cohort's saved answers that have no parsed output")
    p.add_argument("--all", action="store_true", help="with --cohort: also those already parsed")
    _add_roots(p)
    p.set_defaults(func=cmd_reparse)

    # the original's scripts/build_cohort_from_list.py: same flags, defaults, membership and messages
    p = sub.add_parser("build-cohort-from-list", help="make a cohort of existing essays picked in a candidate list "
                       "(<data-root>/cohorts/<id>/membership.csv; nothing is regenerated)")
    p.add_argument("--cohort-id", required=True, help="the cohort to write under <data-root>/cohorts/<id>/")
    p.add_argument("--candidate-list", help="the edited list (default: <data-root>/curation/top_essay_candidates.csv)")
    p.add_argument("--aggregated-scores", help="where the evaluation ids come from "
                   "(default: <data-root>/7_cross_experiment/aggregated_scores.csv)")
    p.add_argument("--template", help="evaluation template (default: the one named in the candidate list)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing membership.csv of the cohort")
    _add_roots(p)
    p.set_defaults(func=cmd_build_cohort_from_list)

    p = sub.add_parser("run", help="run a cohort (RunCohort) with a live progress line; other options go to luigi, "
                                   "e.g. --workers 4 --scheduler-url http://host:8082/")
    p.add_argument("cohort_id")
    p.add_argument("--verbose", action="store_true", help="Luigi's per-task log on the terminal, no progress line")
    _add_roots(p)
    p.add_argument("luigi_args", nargs=argparse.REMAINDER, help="luigi options (--workers, --scheduler-url, ...)")
    p.set_defaults(func=cmd_run)
    return parser


def luigi_run_argv(args) -> list:
    """The luigi command line `daydream run` stands for; this command's own options may come
    anywhere after the cohort id, everything else goes to luigi."""
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--verbose", action="store_true")
    _add_roots(own)
    mine, rest = own.parse_known_args(args.luigi_args)
    for name, value in vars(mine).items():
        setattr(args, name, getattr(args, name) or value)
    argv = ["--module", "pipeline", "RunCohort", "--cohort-id", args.cohort_id]
    if not any(a.split("=")[0] in ("--scheduler-url", "--scheduler-host", "--local-scheduler") for a in rest):
        argv.append("--local-scheduler")
    for name in ("data_root", "raw_root", "cohorts_root"):
        if getattr(args, name):
            argv += [f"--pipeline-{name.replace('_', '-')}", getattr(args, name)]
    if args.verbose:
        argv.append("--verbose")
    return argv + rest


def cmd_run(args):
    from luigi.retcodes import run_with_retcodes

    from . import runlog, tasks

    argv = luigi_run_argv(args)  # (registers the tasks with luigi, sets args.verbose from the options)
    if not (args.verbose or runlog.log_level_asked(argv)):
        runlog.quiet_terminal(_paths(args).logs_dir / f"{tasks.THIS_RUN}.log")
    run_with_retcodes(argv)  # exits with luigi's code (luigi.cfg [retcode])


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("parse-score", "replay"):
        return _passthrough()[argv[0]](argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"daydream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
