"""What a luigid's visualiser shows of a cohort with failures, asked through luigid's own HTTP API,
and the progress display a person sees on a terminal (`daydream run` on a pseudo-terminal).

A user checks: every generation that failed is a FAILED task whose status message gives its stage,
template, model and reason; what needs it is left pending behind it (upstream failed), never DONE;
RunCohort's row carries the progress line at 100%; the counts are those of `daydream status`; a
luigid started without this project's config gets a warning naming the missing pools.
"""
import fcntl
import hashlib
import json
import os
import pty
import re
import select
import struct
import termios
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import BIN, REPO, SMALL, command_env, output_of, run_daydream, run_luigi, write_spec
from test_luigid import SPEC_42  # 42 generations, 36 LLM calls
from trust_checks import free_port, luigid, wait_for

pytestmark = pytest.mark.slow

STATUS_ROW = re.compile(r"^(draft|essay|evaluation)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)$", re.M)
GENERATION_TASKS = ("DraftTask", "EssayTask", "EvaluationTask")


def rejects_some(index, body):
    """HTTP 400 (not retried) for prompts whose sha256 starts with 0-5: the same ones every run."""
    prompt = body["messages"][0]["content"]
    return "400" if hashlib.sha256(prompt.encode()).hexdigest()[0] in "012345" else None


def task_list(url, **query):
    data = urllib.parse.quote(json.dumps(query))
    with urllib.request.urlopen(f"{url}/api/task_list?data={data}", timeout=10) as resp:
        return json.loads(resp.read())["response"]


def status_counts(project, cohort_id):
    result = run_daydream(project, "status", cohort_id, "--failures", "1000")
    rows = {m[1]: dict(zip(("total", "done", "failed", "blocked", "pending"), map(int, m.groups()[1:])))
            for m in STATUS_ROW.finditer(result.stdout)}
    failed = set(re.findall(r"^  \w+ (\S+): ", result.stdout, re.M))
    return rows, failed, result


def test_luigid_shows_failed_generations_with_reasons_and_blocked_dependents(tmp_path, project, make_stub):
    write_spec(project, "c1", SPEC_42)
    srv = make_stub(faults=rejects_some)
    with luigid(tmp_path / "luigid") as (url, *_):
        run = run_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", "2", "--scheduler-url", url,
                        base_url=srv.base_url, local_scheduler=False)
        failed_tasks = {t["params"]["gen_id"]: t for t in task_list(url, status="FAILED").values()
                        if t["name"] in GENERATION_TASKS}
        done_tasks = {t["params"]["gen_id"]: t for t in task_list(url, status="DONE").values()
                      if t["name"] in GENERATION_TASKS}
        behind = {t["params"]["gen_id"] for t in task_list(url, status="PENDING", upstream_status="UPSTREAM_FAILED")
                  .values() if t["name"] in GENERATION_TASKS}
        cohort_task = next(t for t in task_list(url, status="FAILED").values() if t["name"] == "RunCohort")
    assert run.returncode != 0, "a cohort with failures ends with a non-zero exit\n" + output_of(run)
    # luigid was started outside the project: it has no [resources], and the run says so
    assert "has no [resources] for llm_paid" in run.stderr, output_of(run)

    counts, failed, status = status_counts(project, "c1")
    assert failed, "the stub's faults should have failed some generations\n" + status.stdout
    assert set(failed_tasks) == failed
    for gen_id, task in failed_tasks.items():
        stage = {"DraftTask": "draft", "EssayTask": "essay", "EvaluationTask": "evaluation"}[task["name"]]
        meta = json.loads((project.gen_dir(stage, gen_id) / "metadata.json").read_text())
        assert task["status_message"].startswith(f"{stage} {meta['template_id']} {meta['llm_model_id']}: failed: "), task
        assert "400" in task["status_message"], task
    done = {r["gen_id"] for r in project.membership("c1") if (project.gen_dir(r["stage"], r["gen_id"]) / "parsed.txt").exists()}
    assert set(done_tasks) == done and not set(done_tasks) & failed
    assert all(re.search(r": (completed|copied) in ", t["status_message"]) for t in done_tasks.values())
    blocked_total = sum(c["blocked"] for c in counts.values())
    assert blocked_total and behind and len(behind) <= blocked_total  # blocked, never DONE
    assert not behind & set(done_tasks)
    assert sum(c["done"] for c in counts.values()) == len(done_tasks)
    assert sum(c["failed"] for c in counts.values()) == len(failed_tasks)
    # RunCohort's row: the last progress line, at 100% (every generation settled), the same numbers
    assert cohort_task["progress_percentage"] == 100
    line = cohort_task["status_message"]
    for stage, c in counts.items():
        assert f"{stage} {c['done']}/{c['total']}" in line, line
    assert f"{sum(c['failed'] for c in counts.values())} failed, {blocked_total} blocked" in line, line


def read_pty(fd, proc, timeout):
    out, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out.decode("utf-8", "replace")


def test_daydream_run_on_a_terminal_shows_a_progress_line_and_logs_to_a_file(project, make_stub):
    write_spec(project, "c1", SMALL)
    srv = make_stub(latency=0.05)
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # a 200-column terminal
    argv = [str(BIN / "daydream"), "run", "c1", *project.root_flags(), "--workers", "2"]
    proc = subprocess.Popen(argv, cwd=project.root, env=command_env(base_url=srv.base_url), stdout=subprocess.PIPE,
                            stderr=secondary, text=True, start_new_session=True)
    os.close(secondary)
    terminal = read_pty(primary, proc, timeout=120)
    stdout = proc.communicate(timeout=30)[0]
    os.close(primary)
    assert proc.returncode == 0, f"{stdout}\n{terminal}"
    total = len(project.membership("c1"))
    assert re.search(rf"c1: draft \d+/\d+  essay \d+/\d+  evaluation \d+/\d+ \| 0 failed, 0 blocked \| .*{total}/{total}",
                     terminal), terminal
    assert "Informed scheduler" not in terminal and "completed draft" not in terminal, terminal
    assert re.search(rf"^cohort c1: {total}/{total} done", stdout, re.M), stdout
    logs = list((project.data_root / "logs").glob("*.log"))
    assert len(logs) == 1 and "completed draft" in logs[0].read_text()


def test_scripts_luigid_has_the_pools_wherever_it_is_started(tmp_path):
    """luigid reads [resources] from its own config; scripts/luigid hands it the repository's."""
    port = free_port()
    env = command_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen([str(REPO / "scripts" / "luigid"), "--port", str(port), "--address", "127.0.0.1",
                             "--state-path", str(tmp_path / "state.pickle")], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        def pools():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/resource_list", timeout=1) as resp:
                    return {r["name"]: r["num_total"] for r in json.loads(resp.read())["response"]}
            except OSError:
                return None

        wait_for(pools, 30, "scripts/luigid to answer HTTP", proc=proc, poll=0.1)
        assert pools() == {"llm_free": 1, "llm_paid": 4, "llm_local": 1}
    finally:
        proc.terminate()
        proc.wait(timeout=15)
