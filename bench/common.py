"""What the benchmarks share: a project folder with its own luigi.cfg, and timed luigi runs.

    >>> project = make_project(tmp / "p", "c1", spec_yaml, chunk_size=200)
    >>> seconds = run_luigi(project, "pipeline", "RunCohort", "--cohort-id", "c1", workers=1, base_url=url)
"""
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RAW_ROOT = REPO / "data" / "1_raw"


def make_project(root: Path, cohort_id: str, spec_yaml: str, **settings) -> Path:
    """A project folder: the repo's luigi.cfg with ``settings`` (key = value lines) replaced, the spec."""
    root.mkdir(parents=True, exist_ok=True)
    lines = (REPO / "luigi.cfg").read_text(encoding="utf-8").splitlines()
    for key, value in settings.items():
        lines = [f"{key} = {value}" if line.replace(" ", "").startswith(f"{key}=") else line for line in lines]
    (root / "luigi.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")
    spec_dir = root / "cohorts" / cohort_id
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "spec.yaml").write_text(spec_yaml, encoding="utf-8")
    return root


def command_env(**extra) -> dict:
    env = dict(os.environ)
    for name in ("LUIGI_CONFIG_PATH", "OPENROUTER_API_KEY"):
        env.pop(name, None)  # the project's luigi.cfg rules; no key goes near the stub
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")] if p])
    env.update(extra)
    return env


def run_luigi(project: Path, module: str, task: str, *args, workers: int, base_url: str) -> float:
    """Run one local-scheduler luigi command in ``project``; return its wall time. Raises on failure."""
    cmd = [str(Path(sys.executable).parent / "luigi"), "--module", module, task, *args,
           "--local-scheduler", "--no-lock", "--workers", str(workers),
           "--pipeline-raw-root", str(RAW_ROOT), "--log-level", "WARNING"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=project, env=command_env(DAYDREAM_LLM_BASE_URL=base_url),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode} in {project}:\n{proc.stdout[-3000:]}")
    return elapsed
