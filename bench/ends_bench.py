"""What do the end-of-run steps after the replay cost on a long history?

    $ python -m bench.ends_bench [--dir DIR] [--baseline ROOT] [--rounds 3]

DIR holds the two projects of ``python -m bench.history_bench --keep DIR`` (made when missing):
``empty`` (only the 42-generation cohort) and ``old`` (the same cohort after ~400k events of
history). For each project, in a fresh process with the code of this repo (and, with --baseline, of
another checkout, e.g. main's, alternating round by round), times:

- ``cross_full``: write_cross_experiment_tables with no replay delta (a full build);
- ``cross_delta``: the same tables updated from a replay delta that adds the cohort's evaluation
  rows to the tables built without them (only where the code takes a delta); the files must equal
  the full build's;
- ``report``: CohortReport's work (cohort report, the original's cohort tables, index.html).

Prints the median wall and CPU time (``_cpu``: of the measured process, less disturbed by other
load on the machine) per step, and what the history adds.
"""
import argparse
import csv
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COHORT = "small"


def _child(project):
    """Runs in the measured process (cwd: the project, code: PYTHONPATH); prints JSON timings."""
    os.chdir(project)
    import inspect
    from types import SimpleNamespace

    from pipeline import tasks
    from pipeline.original_tables import write_cross_experiment_tables
    from pipeline.paths import Paths
    from pipeline.replay import COLUMNS

    paths = Paths.from_config()
    out = paths.data_root / "7_cross_experiment"
    result = {"pipeline": sys.modules["pipeline"].__file__}

    def timed(name, work, *args):
        wall, cpu = time.perf_counter(), time.process_time()
        work(*args)
        result[name] = time.perf_counter() - wall
        result[f"{name}_cpu"] = time.process_time() - cpu
    if "replay" in inspect.signature(write_cross_experiment_tables).parameters:
        with open(paths.membership_csv(COHORT), newline="", encoding="utf-8") as fh:
            members = {r["gen_id"] for r in csv.DictReader(fh)}
        with open(paths.tables_dir / "evaluation_results.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        header, rows = rows[0], rows[1:]
        assert tuple(header) == COLUMNS["evaluation_results"]
        new = {r[0]: tuple(v or None for v in r) for r in rows if r[0] in members}
        # the files as the replay before the cohort's left them: built from the table without its rows
        table = paths.tables_dir / "evaluation_results.csv"
        kept = table.read_bytes()
        try:
            with open(table, "w", newline="", encoding="utf-8") as fh:
                csv.writer(fh, lineterminator="\n").writerows([header] + [r for r in rows if r[0] not in new])
            write_cross_experiment_tables(paths.data_root, paths.tables_dir, SimpleNamespace(
                delta=None, version_before=None, version_after="before-cohort"))
        finally:
            table.write_bytes(kept)
        timed("cross_delta", write_cross_experiment_tables, paths.data_root, paths.tables_dir, SimpleNamespace(
            delta={"evaluation_results": new}, version_before="before-cohort", version_after="with-cohort"))
        spliced = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".csv"}
    timed("cross_full", write_cross_experiment_tables, paths.data_root, paths.tables_dir)
    if "cross_delta" in result:
        full = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix == ".csv"}
        assert spliced == full, [n for n in full if spliced.get(n) != full[n]]
    task = tasks.CohortReport(cohort_id=COHORT, log_state="ends-bench", run_id="ends-bench")
    timed("report", task.run)
    report = paths.reports_dir(COHORT)
    result["report_sha"] = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(report.rglob("*")) if p.is_file()
                            and p.name != "_state.txt"}
    print(json.dumps(result))


def measure(code_root, project) -> dict:
    env = dict(os.environ, PYTHONPATH=str(code_root))
    env.pop("LUIGI_CONFIG_PATH", None)
    done = subprocess.run([sys.executable, "-c", f"import sys; sys.path.append({str(REPO)!r}); "
                           f"from bench.ends_bench import _child; _child({str(project)!r})"],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{code_root} on {project} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result.pop("pipeline") == str(code_root / "pipeline" / "__init__.py"), "measured the wrong code"
    return result


def main(argv=()) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "ends-bench")
    parser.add_argument("--baseline", type=Path, help="another checkout to time alternately (e.g. main's)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if not (args.dir / "old" / "data").exists():
        from bench import history_bench
        history_bench.main(["--keep", str(args.dir)])
    codes = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    runs = {(code, project): [] for code in codes for project in ("empty", "old")}
    for _ in range(args.rounds):
        for code, root in codes.items():
            for project in ("empty", "old"):
                runs[(code, project)].append(measure(root, args.dir / project))
    out = {}
    for (code, project), results in runs.items():
        steps = [k for k in results[0] if k != "report_sha"]
        out[f"{code}/{project}"] = {k: round(statistics.median(r[k] for r in results), 3) for k in steps}
        print(f"{code:9s}{project:6s}", "  ".join(f"{k} {v:.3f} s" for k, v in out[f"{code}/{project}"].items()))
    for code in codes:
        empty, old = out[f"{code}/empty"], out[f"{code}/old"]
        print(f"{code:9s}history cost (old - empty):", "  ".join(
            f"{k} {old[k] - empty[k]:+.3f} s" for k in old))
    if args.baseline:
        for project in ("empty", "old"):
            same = runs[("this", project)][0]["report_sha"] == runs[("baseline", project)][0]["report_sha"]
            print(f"{project}: report files {'identical' if same else 'DIFFER'} to the baseline's")
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
