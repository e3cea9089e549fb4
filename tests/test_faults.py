"""Faulty LLM APIs through the whole pipeline: the real ``luigi`` command against the stub server.

For every fault the stub can inject, a small cohort runs where the first requests get the fault
and later ones succeed: the right number of retries is logged and recorded, the run ends (every
command has a timeout), and every generation completes. A persistent fault fails only the
generations it hits (their dependents are blocked), ``daydream status`` says which and why, and a rerun
without the fault finishes the job without buying anything twice. A server that rate-limits
concurrent requests slows the run down but fails nothing.

The one-fault runs are independent, so the module fixture runs them a few at a time in parallel.
"""
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

from tests.support.stub_server import StubLLMServer, answer_text, expected_score

from conftest import SMALL, make_project, output_of, run_daydream, run_luigi, write_spec

SMALL_CALLS = 6
RUN_TIMEOUT = 60  # seconds: a hung run fails the test instead of hanging it

# fault -> (requests that get it, error_class and status the client records for it)
TRANSIENT = {
    "429-ra0": (2, "http_429", 429),
    "429-nora": (2, "http_429", 429),
    "500": (2, "http_500", 500),
    "502": (2, "http_502", 502),
    "503": (2, "http_503", 503),
    "timeout": (1, "timeout", None),
    "drop": (2, "connection", None),
    "badjson": (2, "invalid_body", 200),
    "empty_choices": (2, "no_choices", 200),
    "error200": (2, "api_error", 200),
    "finish_error": (2, "finish_error", 200),
    "empty_content": (2, "empty_content", 200),
}


@dataclass
class FaultRun:
    project: object
    result: object        # CompletedProcess of the luigi run
    requests: list        # the stub's request records
    admitted_at: dict     # request index -> time.monotonic() when the stub received it

    def failed_calls(self):
        return [e for e in self.project.events() if e["type"] == "llm_call_failed"]

    def llm_rows(self):
        return self.project.llm_rows("c1")


def _run_with_stub(project, *luigi_args, faults=None, **stub_options) -> FaultRun:
    """Run cohort c1 of ``project`` against a fresh stub. ``faults``: callable(index, body) or list."""
    admitted_at = {}
    queue = list(faults or []) if not callable(faults) else None

    def fault_for(index, body):
        admitted_at[index] = time.monotonic()
        if queue is None:
            return faults(index, body)
        return queue.pop(0) if queue else None

    with StubLLMServer(faults=fault_for, **stub_options) as srv:
        result = run_luigi(project, "RunCohort", "--cohort-id", "c1", *luigi_args, base_url=srv.base_url,
                           timeout=RUN_TIMEOUT)
        return FaultRun(project, result, srv.requests, admitted_at)


def _fault_case(tmp_root, name):
    project = make_project(tmp_root / name)
    write_spec(project, "c1", SMALL)
    if name == "length":  # every answer is cut off by the token limit
        return _run_with_stub(project, faults=lambda index, body: "length")
    if name == "429-ra1":
        return _run_with_stub(project, faults=["429"], retry_after=1)
    n, _, _ = TRANSIENT[name]
    if name == "timeout":  # the stub stalls longer than the client waits
        return _run_with_stub(project, "--llm-timeout-s", "1", faults=[name] * n, hang_s=4.0)
    return _run_with_stub(project, faults=[name] * n)


@pytest.fixture(scope="module")
def fault_runs(tmp_path_factory):
    """fault name -> FaultRun, for every transient fault plus "429-ra1" and "length"."""
    root = tmp_path_factory.mktemp("faults")
    names = list(TRANSIENT) + ["429-ra1", "length"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        runs = dict(zip(names, pool.map(lambda name: _fault_case(root, name), names)))
    return runs


def _assert_all_done(run):
    assert run.result.returncode == 0, output_of(run.result)
    for row in run.project.membership("c1"):
        assert (run.project.gen_dir(row["stage"], row["gen_id"]) / "parsed.txt").exists(), row
        assert run.project.meta(row["stage"], row["gen_id"])["status"] == "done", row
    assert not [e for e in run.project.events() if e["type"] == "generation_failed"]


@pytest.mark.parametrize("fault", list(TRANSIENT))
def test_transient_fault_is_retried_then_succeeds(fault_runs, fault):
    run = fault_runs[fault]
    n, error_class, status = TRANSIENT[fault]
    _assert_all_done(run)

    failed = run.failed_calls()
    assert len(failed) == n, failed
    assert {e["error_class"] for e in failed} == {error_class}
    assert {e["status"] for e in failed} == {status}
    assert [e["attempt"] for e in failed] == list(range(1, n + 1))
    assert all(e["will_retry"] for e in failed)

    # one worker: the first generation absorbed every fault, the others went through at once
    faulted = {e["gen_id"] for e in failed}
    assert len(faulted) == 1
    rows = run.llm_rows()
    attempts = {r["gen_id"]: run.project.meta(r["stage"], r["gen_id"])["attempts"] for r in rows}
    assert attempts == {gen_id: (n + 1 if gen_id in faulted else 1) for gen_id in attempts}

    # the faulted generation's events: started, n failed attempts, completed (after n + 1 attempts)
    (gen_id,) = faulted
    types = [e["type"] for e in run.project.events() if e["gen_id"] == gen_id]
    assert types == ["generation_started"] + ["llm_call_failed"] * n + ["generation_completed"]
    completed = [e for e in run.project.events() if e["type"] == "generation_completed" and e["gen_id"] == gen_id]
    assert completed[0]["attempts"] == n + 1

    assert len(run.requests) == SMALL_CALLS + n
    assert sum(1 for r in run.requests if r["fault"] is None) == SMALL_CALLS


def test_timeout_attempt_is_cut_at_the_read_timeout(fault_runs):
    (failed,) = fault_runs["timeout"].failed_calls()
    assert "within 1s" in failed["message"], failed


def test_retry_after_is_honoured(fault_runs):
    run = fault_runs["429-ra1"]
    _assert_all_done(run)
    (failed,) = run.failed_calls()
    assert failed["status"] == 429 and failed["delay_s"] >= 1.0, failed
    # the server told the client to wait 1 s: the retry came no sooner
    assert run.admitted_at[1] - run.admitted_at[0] >= 1.0, run.admitted_at


def test_truncated_answers_are_kept_and_flagged(fault_runs):
    run = fault_runs["length"]
    _assert_all_done(run)
    assert run.failed_calls() == []
    for row in run.llm_rows():
        meta = run.project.meta(row["stage"], row["gen_id"])
        assert meta["truncated"] is True and meta["finish_reason"] == "length", meta
        prompt = run.project.read(row["stage"], row["gen_id"], "prompt.txt")
        assert run.project.read(row["stage"], row["gen_id"], "raw.txt") == answer_text(prompt)
        if row["stage"] == "evaluation":  # the parser decides: the stub's cut-off text still has its score
            assert meta["score"] == expected_score(prompt)
    completed = [e for e in run.project.events() if e["type"] == "generation_completed"]
    assert {e["finish_reason"] for e in completed} == {"length"}


# --- a fault that does not go away ------------------------------------------------------------

# the sentence description of critic-filter: only the prompt of that concept's draft contains it
CRITIC_FILTER_TEXT = "A second process judges candidate ideas"



@dataclass
class Persistent:
    project: object
    first: FaultRun        # the run with the fault
    status: object         # `daydream status c1` after it
    rows: dict             # gen_id -> membership row
    failed_ids: set        # the draft the fault hits, its essay and its evaluation
    bad_draft: str
    meta_after_first: dict  # gen_id -> metadata.json after the first run
    events_after_first: list
    rerun: FaultRun        # the run after the fault went away


@pytest.fixture(scope="module")
def persistent(tmp_path_factory):
    """Every request for the critic-filter draft gets 503; then a rerun against a healthy server."""
    project = make_project(tmp_path_factory.mktemp("persistent"))
    write_spec(project, "c1", SMALL)

    def critic_filter_down(index, body):
        return "503" if CRITIC_FILTER_TEXT in body["messages"][0]["content"] else None

    first = _run_with_stub(project, "--llm-max-attempts", "3", faults=critic_filter_down)
    rows = {r["gen_id"]: r for r in project.membership("c1")}
    (bad_draft,) = [g for g in rows if rows[g]["stage"] == "draft"
                    and CRITIC_FILTER_TEXT in project.read("draft", g, "prompt.txt")]
    bad_essay = next(g for g, r in rows.items() if r["parent_gen_id"] == bad_draft)
    bad_eval = next(g for g, r in rows.items() if r["parent_gen_id"] == bad_essay)
    status = run_daydream(project, "status", "c1")
    meta = {g: project.meta(r["stage"], g) for g, r in rows.items()}
    events = project.events()
    rerun = _run_with_stub(project)
    return Persistent(project, first, status, rows, {bad_draft, bad_essay, bad_eval}, bad_draft, meta, events,
                      rerun)


def test_persistent_fault_fails_only_its_chain(persistent):
    p = persistent
    assert p.first.result.returncode == 30, output_of(p.first.result)
    assert len([r for r in p.first.requests if r["fault"] == "503"]) == 3  # the whole retry budget, no more
    assert "gave up after 3 attempts" in p.meta_after_first[p.bad_draft]["error"]
    assert p.meta_after_first[p.bad_draft]["status"] == "failed"
    for gen_id in set(p.rows) - p.failed_ids:
        assert p.meta_after_first[gen_id]["status"] == "done", gen_id
    for gen_id in p.failed_ids:  # nothing downstream of the failure pretends to be done
        assert p.meta_after_first[gen_id].get("status") != "done", gen_id
        assert p.rows[gen_id]["stage"] == "draft" or "score" not in p.meta_after_first[gen_id]


def test_status_names_the_failed_generation_and_why(persistent):
    p = persistent
    assert p.status.returncode == 1, output_of(p.status)
    lines = p.status.stdout.splitlines()
    draft_line = next(line for line in lines if p.bad_draft in line and line.lstrip().startswith("draft"))
    assert "gave up after 3 attempts" in draft_line and "503" in draft_line, p.status.stdout
    failed_listed = {g for g in p.rows if any(line.split()[1:2] == [g + ":"] for line in lines)}
    assert failed_listed == {p.bad_draft}, p.status.stdout
    counts = {line.split()[0]: line.split()[1:] for line in lines
              if line.split()[:1] in (["draft"], ["essay"], ["evaluation"]) and not line.startswith(" ")}
    assert counts["draft"] == ["2", "1", "1", "0", "0"], p.status.stdout  # total done failed blocked pending


def test_dependents_of_a_failure_are_reported_as_blocked(persistent):
    """The essay and evaluation under the failed draft are not failures of their own: status counts
    them as blocked and names the failed draft once; nothing is recorded as their failure."""
    p = persistent
    failed_events = {e["gen_id"] for e in p.events_after_first if e["type"] == "generation_failed"}
    assert failed_events == {p.bad_draft}
    for gen_id in p.failed_ids - {p.bad_draft}:
        assert p.meta_after_first[gen_id].get("status") is None, (gen_id, p.meta_after_first[gen_id])
    assert f"1 essay, 1 evaluation waiting on draft {p.bad_draft}" in p.status.stdout, p.status.stdout


def test_rerun_without_the_fault_buys_only_what_failed(persistent):
    p = persistent
    assert p.rerun.result.returncode == 0, output_of(p.rerun.result)
    bought = {r["prompt_sha"] for r in p.rerun.requests}
    assert len(p.rerun.requests) == len(p.failed_ids)
    done_before = {p.meta_after_first[g]["prompt_sha256"] for g in set(p.rows) - p.failed_ids}
    assert not bought & done_before
    for gen_id, row in p.rows.items():
        assert p.project.meta(row["stage"], gen_id)["status"] == "done"
    assert run_daydream(p.project, "status", "c1").returncode == 0


# --- rate limits --------------------------------------------------------------------------------

# 6 drafts (2 replicates), 6 essays, 6 evaluations: 18 LLM calls, six drafts ready at once
WIDE = """\
concepts: {ids: [idle-recombination, critic-filter, feedback-flywheel], k_max: 2, description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  draft_template_replicate: [1, 2]
  essay_template: [short-essay-v1]
  essay_llm: [sonnet_4]
  evaluation_template: [clarity-v1]
  evaluation_llm: [sonnet_4]
"""


def test_concurrency_limit_slows_but_fails_nothing(project):
    """4 workers (llm_paid = 4) against a server that takes 2 at a time and 429s the rest."""
    write_spec(project, "c1", WIDE)
    run = _run_with_stub(project, "--workers", "4", "--llm-max-attempts", "6", "--llm-backoff-base-s", "0.05",
                         latency=0.2, max_concurrent=2)
    _assert_all_done(run)
    assert sum(1 for r in run.requests if r["fault"] is None) == 18  # one answer per generation
    busy = [r for r in run.requests if r["fault"] == "busy"]
    assert busy, "the server never had more than 2 requests in flight: the test exercised nothing"
    assert len(run.failed_calls()) == len(busy)
