"""Project folders and real command runs, shared by tests/ (through conftest.py) and bench/.

    project = make_project(tmp / "proj", chunk_size=50)     # luigi.cfg copied, settings replaced
    write_spec(project, "c1", SPEC_YAML)
    result = run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=stub.base_url)
    seconds = timed_luigi(project, "RunCohort", "--cohort-id", "c1", workers=8, base_url=url)  # benchmarks
    with luigid(tmp / "luigid", env=...) as (url, state_path, logdir, output_path): ...  # a real luigid

``make_project`` lays out a folder like a checkout: luigi.cfg (the repo's), cohorts/, data/, with the
catalog read from the repo's data/1_raw. ``run_luigi`` / ``run_daydream`` run the real commands as
subprocesses in that folder, with the repo first on PYTHONPATH (so ``bench.*`` task modules and
``python -m tests.support.stub_server`` resolve from a checkout).
"""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RAW_ROOT = REPO / "data" / "1_raw"
# the original project's catalog, checked out next to this repo (tests using it skip when absent)
SHARED_RAW_ROOT = REPO.parent / "shared" / "daydreaming" / "1_raw"
BIN = Path(sys.executable).parent
# an address where nothing listens: a run that should not call an LLM fails instead of reaching the internet
NO_LLM_URL = "http://127.0.0.1:9/v1"
# fast retries for tests; a test can override any of them by passing the flag itself
FAST_LLM_FLAGS = {"--llm-backoff-base-s": "0.01", "--llm-timeout-s": "5", "--llm-max-attempts": "4"}


@dataclass
class Project:
    """A tmp project folder. Paths are absolute, so commands work from any cwd."""
    root: Path
    raw_root: Path

    @property
    def data_root(self) -> Path:
        return self.root / "data"

    @property
    def cohorts_root(self) -> Path:
        return self.root / "cohorts"

    def root_flags(self, prefix="--") -> list:
        """``--data-root D --raw-root R --cohorts-root C`` (prefix "--pipeline-" for luigi)."""
        return [f"{prefix}data-root", str(self.data_root), f"{prefix}raw-root", str(self.raw_root),
                f"{prefix}cohorts-root", str(self.cohorts_root)]

    def gen_dir(self, stage, gen_id) -> Path:
        return self.data_root / "gens" / stage / gen_id

    def read(self, stage, gen_id, name) -> str:
        return (self.gen_dir(stage, gen_id) / name).read_text(encoding="utf-8")

    def meta(self, stage, gen_id) -> dict:
        return json.loads(self.read(stage, gen_id, "metadata.json"))

    def membership(self, cohort_id, stage=None) -> list:
        """Rows of data/cohorts/<id>/membership.csv (as dicts of strings), optionally one stage."""
        with open(self.data_root / "cohorts" / cohort_id / "membership.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [r for r in rows if stage is None or r["stage"] == stage]

    def generators(self, stage) -> dict:
        """template_id -> generator ("llm" or "copy") from the catalog's <stage>_templates.csv."""
        with open(self.raw_root / f"{stage}_templates.csv", newline="", encoding="utf-8") as f:
            return {r["template_id"]: (r.get("generator") or "llm").strip() for r in csv.DictReader(f)}

    def llm_rows(self, cohort_id) -> list:
        """Membership rows that need an LLM call (copy-mode templates excluded)."""
        gens = {stage: self.generators(stage) for stage in ("draft", "essay", "evaluation")}
        return [r for r in self.membership(cohort_id) if gens[r["stage"]][r["template_id"]] == "llm"]

    def events(self) -> list:
        """Every event in data/events, in time order."""
        from pipeline.events import read_events

        return read_events(self.data_root / "events").events


def make_project(root, raw_root=RAW_ROOT, config_from=REPO, **settings) -> Project:
    """Lay out a project folder at ``root``: the luigi.cfg of the checkout ``config_from`` (this repo)
    with each ``key = value`` line named in ``settings`` replaced (e.g. ``chunk_size=50``), empty
    cohorts/ and data/."""
    root = Path(root)
    (root / "cohorts").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    lines = (Path(config_from) / "luigi.cfg").read_text(encoding="utf-8").splitlines()
    for key, value in settings.items():
        lines = [f"{key} = {value}" if line.replace(" ", "").startswith(f"{key}=") else line for line in lines]
    (root / "luigi.cfg").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Project(root=root, raw_root=Path(raw_root))


def write_spec(project, cohort_id, yaml_text) -> Path:
    """Write cohorts/<cohort_id>/spec.yaml of ``project``; returns its path."""
    path = project.cohorts_root / cohort_id / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml_text, encoding="utf-8")
    return path


def command_env(env=None, base_url=None) -> dict:
    """Environment for a pipeline subprocess: no inherited key or config path; LLM at ``base_url``;
    the repo first on PYTHONPATH."""
    out = dict(os.environ)
    for name in ("LUIGI_CONFIG_PATH", "OPENROUTER_API_KEY", "DAYDREAM_LLM_BASE_URL"):
        out.pop(name, None)
    out["DAYDREAM_LLM_BASE_URL"] = base_url or NO_LLM_URL
    out["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [out.get("PYTHONPATH")] if p])
    out.update(env or {})
    return out


def luigi_argv(project, *args, local_scheduler=True, module="pipeline", fast_retries=True) -> list:
    """argv for ``luigi --module MODULE ARGS`` with the project's roots (and fast LLM retries)."""
    argv = [str(BIN / "luigi"), "--module", module, *args]
    if local_scheduler and "--scheduler-host" not in args and "--scheduler-url" not in args:
        argv.append("--local-scheduler")
    argv += project.root_flags("--pipeline-")
    for flag, value in (FAST_LLM_FLAGS.items() if fast_retries else ()):
        if flag not in args:
            argv += [flag, value]
    return argv


def start_luigi(project, *args, env=None, base_url=None) -> subprocess.Popen:
    """Start luigi in its own process group (so ``kill_group`` ends it and its workers); output to files."""
    out = open(project.root / "luigi.out", "ab")
    try:
        return subprocess.Popen(luigi_argv(project, *args), cwd=project.root, env=command_env(env, base_url),
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        out.close()


def kill_group(proc, sig=signal.SIGKILL):
    """Signal ``proc``'s whole process group (started by ``start_luigi``) and wait for it."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def run_luigi(project, *args, env=None, base_url=None, timeout=120, prefix=(), **argv_options
              ) -> subprocess.CompletedProcess:
    """Run ``luigi --module pipeline ARGS`` in ``project`` and wait; stdout/stderr captured as text.

    ``base_url``: the LLM endpoint (a stub's base_url); default NO_LLM_URL. ``env``: extra variables.
    ``prefix``: argv put in front (a wrapper that execs the rest). The run has a process group of its
    own: on timeout the whole group (forked workers too) is killed and the test fails with the output,
    instead of hanging or leaving orphans behind. ``argv_options``: see luigi_argv."""
    argv = list(prefix) + luigi_argv(project, *args, **argv_options)
    proc = subprocess.Popen(argv, cwd=project.root, env=command_env(env, base_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"luigi {' '.join(args)} still running after {timeout}s (killed)\n--- stdout\n"
                             f"{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}") from None
    except BaseException:
        kill_group(proc)
        raise
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # leftovers of a run that exited
    except ProcessLookupError:
        pass
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def timed_luigi(project, task, *args, workers, base_url, module="pipeline", scheduler_url=None, env=None) -> float:
    """For benchmarks: one quiet run with the configured retries (local scheduler, or the luigid at
    ``scheduler_url``); its wall time. ``env``: extra variables. Raises on failure."""
    if scheduler_url:
        args += ("--scheduler-url", scheduler_url)
    started = time.perf_counter()
    result = run_luigi(project, task, *args, "--no-lock", "--workers", str(workers), "--log-level", "WARNING",
                       base_url=base_url, env=env, timeout=None, module=module, fast_retries=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(result.args)} exited {result.returncode} in {project.root}:\n"
                           f"{result.stdout[-1500:]}\n{result.stderr[-1500:]}")
    return elapsed


def run_daydream(project, command, *args, roots=True, env=None, timeout=60) -> subprocess.CompletedProcess:
    """Run ``daydream COMMAND ARGS`` in ``project`` (with its --data-root/--raw-root/--cohorts-root)."""
    argv = [str(BIN / "daydream"), command, *args]
    if roots:
        flags = project.root_flags()
        for i in range(0, len(flags), 2):
            if flags[i] not in args:
                argv += flags[i:i + 2]
    return subprocess.run(argv, cwd=project.root, env=command_env(env), capture_output=True, text=True,
                          timeout=timeout)


def output_of(result) -> str:
    """stdout + stderr of a CompletedProcess, for assertion messages."""
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"


def wait_for(predicate, timeout, what, proc=None, log=None, poll=0.01):
    """Poll ``predicate`` until it returns a truthy value (returned); fail after ``timeout`` s,
    or early if ``proc`` exited (showing ``log``, a file path, when given)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}\n"
                                 + (_tail(log) if log else ""))
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n" + (_tail(log) if log else ""))
        time.sleep(poll)


def _tail(path, n=4000):
    """The last ``n`` characters of a log file, for failure messages."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-n:]
    except FileNotFoundError:
        return f"({path} missing)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def luigid(tmp_path, env=None):
    """A real central scheduler on a free loopback port; yields (url, state_path, logdir, output_path)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    state, logdir, out_path = tmp_path / "state.pickle", tmp_path / "luigid-logs", tmp_path / "luigid.out"
    logdir.mkdir(exist_ok=True)
    url = f"http://127.0.0.1:{port}"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([str(BIN / "luigid"), "--port", str(port), "--address", "127.0.0.1",
                                 "--state-path", str(state), "--logdir", str(logdir)],
                                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        def answers():
            try:
                with urllib.request.urlopen(f"{url}/api/task_list?data={{}}", timeout=1) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(answers, 30, "luigid to answer HTTP", proc=proc, log=out_path, poll=0.1)
        yield url, state, logdir, out_path
    finally:
        proc.terminate()  # SIGTERM: luigid saves its state file on the way out
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=15)
