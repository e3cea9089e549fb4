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

Every subcommand is parsed here (library modules keep only functions); roots come from the
--data-root/--raw-root/--cohorts-root flags, else luigi.cfg [pipeline]. Errors print one
``daydream: error: ...`` line on stderr and exit 2. ``--json`` (plan, status, compare) prints one
JSON object with the keys documented in README ("daydream --json").
"""
import argparse
import json
import sys
from importlib import metadata
from pathlib import Path

from .errors import PipelineError
from .parsers import SCORE_PARSERS
from .paths import Paths
from .stages import STAGES


def _paths(args):
    return Paths.from_config(args.data_root, args.raw_root, args.cohorts_root)


def _data_paths(args):
    """Paths of a subcommand that reads data/: refuses a data folder that does not exist (rather
    than reading nothing, or creating it)."""
    paths = _paths(args)
    if not paths.data_root.is_dir():
        where = "--data-root" if args.data_root else "luigi.cfg [pipeline] data_root (or its default, data)"
        raise PipelineError(f"data folder {paths.data_root} does not exist (from {where}); check the path, "
                            f"or run from the project folder")
    return paths


def _print_json(value):
    print(json.dumps(value, indent=2, sort_keys=False, ensure_ascii=False))


def _version():
    try:
        return metadata.version("daydreaming-luigi")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def _add_command(sub, name, func, help):
    """The parser of subcommand ``name``, which runs ``func(args)``."""
    parser = sub.add_parser(name, help=help)
    parser.set_defaults(func=func)
    return parser


def _add_roots(parser):
    parser.add_argument("--data-root", help="data folder (default: luigi.cfg [pipeline] data_root, or data)")
    parser.add_argument("--raw-root", help="catalog folder (default: <data-root>/1_raw)")
    parser.add_argument("--cohorts-root", help="cohort specs folder (default: cohorts)")


def _completion():
    """Expected completion size for the cost estimate, with where it came from."""
    from .config import llm
    from .estimate import Completion

    cfg = llm()
    if cfg.expected_completion_tokens > 0:
        return Completion(cfg.expected_completion_tokens, cfg.local_max_tokens, "[llm] expected_completion_tokens")
    if cfg.max_tokens > 0:
        return Completion(cfg.max_tokens, cfg.local_max_tokens, "[llm] max_tokens, the cap")
    raise PipelineError("no completion size for the cost estimate: set [llm] expected_completion_tokens "
                        "(or max_tokens) in luigi.cfg")


def plan_data(paths, cohort_id, catalog) -> dict:
    """What RunCohort would do for ``cohort_id``, as plain data (``daydream plan --json``)."""
    from .estimate import estimate_cost
    from .membership import compile_cohort
    from .store import pending

    cohort = compile_cohort(paths, cohort_id, catalog)
    todo = {r["gen_id"] for r in pending(paths, cohort.rows)}
    stages, to_run = {}, []
    for stage in STAGES:
        rows = [r for r in cohort.rows if r["stage"] == stage]
        calls = [r for r in rows if catalog.templates[stage][r["template_id"]].generator == "llm"]
        left = [r for r in calls if r["gen_id"] in todo]
        to_run += left
        stages[stage] = {"generations": len(rows), "llm_calls": len(calls), "done": len(calls) - len(left),
                         "to_run": len(left)}
    calls = sum(s["llm_calls"] for s in stages.values())
    return {"cohort_id": cohort_id, "spec": str(cohort.spec_path or paths.membership_csv(cohort_id)),
            "catalog": str(paths.raw_root), "stages": stages,
            "llm_calls": {"total": calls, "done": calls - len(to_run), "to_make": len(to_run)},
            "cost_estimate": estimate_cost(paths, catalog, cohort, to_run, _completion()),
            "rows": cohort.rows}


def _money(value):
    return "-" if value is None else f"${value:,.4f}"


def _price(model):
    prices = (model["prompt_price_per_mtok"], model["completion_price_per_mtok"])
    return "no price" if None in prices else f"{prices[0]:g} / {prices[1]:g}"


def cmd_plan(args):
    from .catalog import load_catalog
    from .estimate import basis_text

    paths = _data_paths(args)
    plan = plan_data(paths, args.cohort_id, load_catalog(paths))
    if args.json:
        _print_json({k: v for k, v in plan.items() if k != "rows"})
        return 0
    print(f"cohort {args.cohort_id}: {plan['spec']} against catalog {plan['catalog']}")
    print(f"{'stage':<12}{'generations':>12}{'LLM calls':>11}{'done':>8}{'to run':>8}")
    for stage, s in plan["stages"].items():
        print(f"{stage:<12}{s['generations']:>12}{s['llm_calls']:>11}{s['done']:>8}{s['to_run']:>8}")
    calls = plan["llm_calls"]
    print(f"LLM calls: {calls['total']} in all, {calls['done']} already done, {calls['to_make']} to make")
    est = plan["cost_estimate"]
    unpriced = est["unpriced_models"]
    if unpriced and len(unpriced) == len(est["by_model"]):
        cost = "unknown"
    else:
        cost = _money(est["cost_usd"]) + (" for the priced models" if unpriced else "")
    print(f"\nestimated cost of the {est['calls']} call(s) to make: {cost} "
          f"({est['prompt_tokens']:,} prompt + {est['completion_tokens']:,} completion tokens)")
    if unpriced:
        print(f"  no price for {', '.join(unpriced)}: add prompt_price_per_mtok and completion_price_per_mtok "
              f"(USD per million tokens) to {paths.models_csv}")
    if est["by_model"]:
        print(f"  {'model':<20}{'calls':>7}{'prompt tok':>12}{'compl. tok':>12}{'$/Mtok in / out':>18}{'cost':>12}")
        for m in est["by_model"]:
            print(f"  {m['llm_model_id']:<20}{m['calls']:>7}{m['prompt_tokens']:>12,}{m['completion_tokens']:>12,}"
                  f"{_price(m):>18}{_money(m['cost_usd']):>12}")
    print(f"  {basis_text(est)}")
    if args.rows > 0:
        print("\nfirst rows:")
    for row in plan["rows"][: args.rows]:
        print("  " + "  ".join(str(row[k]) for k in ("stage", "gen_id", "parent_gen_id", "combo_id",
                                                       "template_id", "llm_model_id", "replicate")))
    return 0


def status_data(cohort_id, status) -> dict:
    """``daydream status --json``: counts per stage, every failure and every blocked generation."""
    counts = ("total", "done", "failed", "blocked", "pending")
    return {"cohort_id": cohort_id,
            "stages": {stage: {k: s[k] for k in counts} for stage, s in status.items()},
            "failures": [{"stage": stage, "gen_id": g, "error": e, "hint": hint}
                         for stage, s in status.items() for g, e, hint in s["failures"]],
            "blocked": [{"stage": stage, "gen_id": g, "failed_ancestor": root}
                        for stage, s in status.items() for g, root in s["blocked_by"]]}


def cmd_status(args):
    from .membership import read_membership
    from .store import stage_status

    paths = _data_paths(args)
    rows = read_membership(paths.membership_csv(args.cohort_id))
    status = stage_status(paths, rows)
    if args.json:
        _print_json(status_data(args.cohort_id, status))
        return 1 if any(s["failed"] or s["blocked"] for s in status.values()) else 0
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


def cmd_parse_score(args):
    """``file<TAB>score`` per file; exit 1 if any did not parse (an unknown parser is an error: 2)."""
    from .parsers import score_files

    results = score_files(args.files, args.parser)
    for path, score, error in results:
        print(f"{path}\t{score:g}" if error is None else f"{path}\tERROR: {error}")
    return 1 if any(error is not None for _, _, error in results) else 0


def cmd_replay(args):
    """Rebuild the tables from the event log; also the original's cross-experiment tables."""
    from .original_tables import write_cross_experiment_tables  # imports pandas: only here
    from .replay import replay

    paths = _data_paths(args)
    tables_dir = args.tables_dir or paths.tables_dir
    stats = replay(paths.events_dir, tables_dir, skip_bad=args.skip_bad, full=args.full)
    write_cross_experiment_tables(paths.data_root, tables_dir, stats)
    print(stats.summary())
    for bad in stats.read.bad:
        print(f"daydream: warning: skipped bad line {bad}", file=sys.stderr)
    return 0


def cmd_rebuild_log(args):
    from .backfill import backfill

    paths = _data_paths(args)
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
    from .reports import compare_cohorts, comparison

    paths = _data_paths(args)
    if args.json:
        _print_json(comparison(paths, args.cohort_ids))
    else:
        print(compare_cohorts(paths, args.cohort_ids))
    if args.html:
        from .html_report import write_compare_html

        wrote = write_compare_html(paths, args.cohort_ids, args.html)
        print(f"wrote {wrote}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_regenerate(args):
    from .regenerate import regenerate

    paths = _data_paths(args)
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

    return select_top_essays(_data_paths(args).data_root, args)


def cmd_reparse(args):
    from .reparse import cohort_targets, parse_targets, reparse

    paths = _data_paths(args)
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

    return build_cohort_from_list(_data_paths(args), args)


class _Parser(argparse.ArgumentParser):
    """Usage errors of any subcommand read like every other error: ``daydream: error: ...``, exit 2."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(2, f"daydream: error: {message}\n")


def build_parser():
    parser = _Parser(prog="daydream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = _add_command(sub, "plan", cmd_plan, "preview a cohort: counts, LLM calls, cost estimate, first rows")
    p.add_argument("cohort_id")
    p.add_argument("--rows", type=int, default=10)
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: see README)")
    _add_roots(p)

    p = _add_command(sub, "status", cmd_status, "per stage: total, done, failed, pending")
    p.add_argument("cohort_id")
    p.add_argument("--failures", type=int, default=20, help="failures to list")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: see README)")
    _add_roots(p)

    p = _add_command(sub, "parse-score", cmd_parse_score, "print the score of saved evaluation responses")
    p.add_argument("--parser", default="in_last_line",
                   help=f"score parser: {', '.join(sorted(SCORE_PARSERS))} (default: %(default)s)")
    p.add_argument("files", nargs="+", metavar="FILE")

    p = _add_command(sub, "replay", cmd_replay, "rebuild <data-root>/tables from the event log")
    p.add_argument("--tables-dir", type=Path, default=None,
                   help="where to write the CSV tables (default: <data-root>/tables)")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip and count malformed lines instead of stopping at the first")
    p.add_argument("--full", action="store_true",
                   help="read the whole log again instead of only what was appended since the last "
                        "replay (the tables come out the same)")
    _add_roots(p)

    p = _add_command(sub, "rebuild-log", cmd_rebuild_log,
                     "write backfill events for generations that have files but no events")
    _add_roots(p)

    p = _add_command(sub, "import-original", cmd_import_original,
                     "import a data folder written by the original (its SRC is only read)")
    p.add_argument("src_data", help="the original's data folder (holding gens/, cohorts/, combo_mappings.csv)")
    _add_roots(p)

    p = _add_command(sub, "compare", cmd_compare, "compare templates and models across cohorts")
    p.add_argument("cohort_ids", nargs="+")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML report with plots to FILE")
    p.add_argument("--json", action="store_true", help="print one JSON object (keys: see README)")
    _add_roots(p)

    p = _add_command(sub, "regenerate", cmd_regenerate,
                     "archive a generation's response and regenerate it (and its dependents)")
    p.add_argument("stage", choices=list(STAGES))
    p.add_argument("gen_id")
    _add_roots(p)

    p = _add_command(sub, "design", cmd_design, "compile one spec file (the original's format) into design rows")
    p.add_argument("spec_file")
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--out", help="write here (atomically) instead of stdout")
    p.add_argument("--seed", type=int, help="shuffle the rows as the original does with this seed")

    # the original's scripts/select_top_essays.py: same flags, defaults, columns and messages
    p = _add_command(sub, "select-top-essays", cmd_select_top_essays, "rank essays by one evaluation template "
                     "into an editable candidate list (<data-root>/curation/top_essay_candidates.csv)")
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

    p = _add_command(sub, "reparse", cmd_reparse, "parse saved answers (raw.txt) again after a parser fix; no LLM call")
    p.add_argument("targets", nargs="*", metavar="STAGE GEN_ID", help="generations to re-parse")
    p.add_argument("--cohort", help="re-parse this cohort's saved answers that have no parsed output")
    p.add_argument("--all", action="store_true", help="with --cohort: also those already parsed")
    _add_roots(p)

    # the original's scripts/build_cohort_from_list.py: same flags, defaults, membership and messages
    p = _add_command(sub, "build-cohort-from-list", cmd_build_cohort_from_list, "make a cohort of existing essays "
                     "picked in a candidate list (<data-root>/cohorts/<id>/membership.csv; nothing is regenerated)")
    p.add_argument("--cohort-id", required=True, help="the cohort to write under <data-root>/cohorts/<id>/")
    p.add_argument("--candidate-list", help="the edited list (default: <data-root>/curation/top_essay_candidates.csv)")
    p.add_argument("--aggregated-scores", help="where the evaluation ids come from "
                   "(default: <data-root>/7_cross_experiment/aggregated_scores.csv)")
    p.add_argument("--template", help="evaluation template (default: the one named in the candidate list)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing membership.csv of the cohort")
    _add_roots(p)

    p = _add_command(sub, "run", cmd_run, "run a cohort (RunCohort) with a live progress line; other options go "
                     "to luigi, e.g. --workers 4 --scheduler-url http://host:8082/")
    p.add_argument("cohort_id")
    p.add_argument("--verbose", action="store_true", help="Luigi's per-task log on the terminal, no progress line")
    _add_roots(p)
    p.add_argument("luigi_args", nargs=argparse.REMAINDER, help="luigi options (--workers, --scheduler-url, ...)")
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
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return args.func(args)
    except PipelineError as exc:
        print(f"daydream: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
