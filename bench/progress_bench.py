"""What does RunCohort's progress display cost on the 1k-evaluation cohort?

    $ python bench/progress_bench.py [--runs 2] [--workers 1]

Runs the 1,715-generation cohort of bench/scale_bench.py (stub LLM answering instantly) with the
display off ([pipeline] progress = false: the baseline) and on, alternating, each in a fresh project,
output not a terminal (so the display polls every second, reports to luigi and prints a plain line
every few seconds). Prints the wall times, their ratio, and the display's own CPU time (RunCohort
logs it) as a share of the run: the target is under 2%.
"""
import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scale_bench import SIZES, spec_yaml  # noqa: E402
from tests.support.project import RAW_ROOT, command_env, make_project, write_spec  # noqa: E402
from tests.support.stub_server import StubProcess  # noqa: E402

DISPLAY_CPU = re.compile(r"the progress display used ([0-9.]+)s of CPU")


def one_run(workdir, n, progress, workers):
    project = make_project(workdir / f"run{n}-{'on' if progress else 'off'}",
                           progress="true" if progress else "false")
    write_spec(project, "c1", spec_yaml(*SIZES["1k"]))
    server = StubProcess(project.root / "requests.tsv", "--latency", "0", env=command_env())
    cmd = [str(Path(sys.executable).parent / "luigi"), "--module", "pipeline", "RunCohort", "--cohort-id", "c1",
           "--local-scheduler", "--no-lock", "--workers", str(workers), "--pipeline-raw-root", str(RAW_ROOT)]
    try:
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=project.root, env=command_env(base_url=server.base_url),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        elapsed = time.perf_counter() - started
    finally:
        server.close()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} in {project}:\n{proc.stdout[-3000:]}")
    found = DISPLAY_CPU.search(proc.stdout)
    if progress and not found:
        raise RuntimeError("RunCohort did not log the display's CPU time")
    return elapsed, float(found[1]) if found else 0.0


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2, help="runs of each mode (alternating)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="progress-bench-"))
    off, on, cpu = [], [], []
    try:
        for n in range(args.runs):
            off.append(one_run(workdir, n, False, args.workers)[0])
            seconds, display_cpu = one_run(workdir, n, True, args.workers)
            on.append(seconds)
            cpu.append(display_cpu)
            print(f"run {n}: display off {off[-1]:.1f} s, on {on[-1]:.1f} s (display CPU {display_cpu:.3f} s)",
                  file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    baseline, with_display = min(off), min(on)
    share = max(c / s for c, s in zip(cpu, on))
    print(f"\nprogress display on the 1k-evaluation cohort (--workers {args.workers}, best of {args.runs}): "
          f"off {baseline:.1f} s, on {with_display:.1f} s, ratio {with_display / baseline:.3f}; "
          f"display CPU {100 * share:.2f}% of the run (target < 2%)")
    return {"off_s": baseline, "on_s": with_display, "on_over_off": with_display / baseline,
            "display_cpu_share": share, "ok": share < 0.02}


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
