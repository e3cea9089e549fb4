"""A deadline for the whole call ([llm] call_deadline_s): every attempt, every backoff wait and
a body trickling in byte by byte end at it. Past it the generation fails with a reason naming the
deadline, the attempts and the last error; the run goes on and ends.
"""
import time

from pipeline.errors import LLMError
from pipeline.llm_http import OpenAIClient
from tests.support.stub_server import StubLLMServer

from conftest import SMALL, output_of, run_daydream, run_luigi, write_spec


def test_persistent_429_ends_at_the_deadline_with_the_reason():
    with StubLLMServer(faults=lambda index, body: "429-ra0") as srv:
        client = OpenAIClient(srv.base_url, "k", timeout=(1, 1), backoff_base=0.05, backoff_max=0.1,
                              deadline_s=1.0)
        t0 = time.monotonic()
        try:
            client.complete("m/x", "hi")
        except LLMError as exc:
            error = exc
        elapsed = time.monotonic() - t0
        assert len(srv.requests) > 1  # it did retry while there was time
    assert elapsed < 1.5, elapsed
    assert f"deadline of 1s exceeded after {error.attempts} attempts (last: HTTP 429" in str(error), error
    assert error.status == 429


def test_trickling_body_is_cut_at_the_deadline():
    with StubLLMServer(faults=["trickle"], trickle_s=0.05) as srv:
        client = OpenAIClient(srv.base_url, "k", timeout=(1, 1), deadline_s=0.8)
        t0 = time.monotonic()
        try:
            client.complete("m/x", "hi")
        except LLMError as exc:
            error = exc
        assert time.monotonic() - t0 < 1.3
    assert "deadline of 0.8s exceeded after 1 attempts" in str(error) and "still arriving" in str(error), error


def test_cohort_refused_by_429_forever_fails_within_the_deadline(project):
    """Every request gets 429 (Retry-After: 1), as with an exhausted daily quota: each draft fails
    once its 4 s are up, their dependents are blocked, and the run exits non-zero soon after."""
    write_spec(project, "c1", SMALL)
    deadline = 4
    with StubLLMServer(faults=lambda index, body: "429", retry_after=1) as srv:
        t0 = time.monotonic()
        run = run_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", "2",
                        "--llm-call-deadline-s", str(deadline), base_url=srv.base_url, timeout=90)
        elapsed = time.monotonic() - t0
        requests = srv.requests
    assert run.returncode == 30, output_of(run)
    # both drafts wait in parallel (llm_paid = 4); the rest is luigi starting and finishing
    assert elapsed < 2 * deadline + 25, elapsed
    assert {r["status"] for r in requests} == {429}
    for row in project.membership("c1", "draft"):
        error = project.meta("draft", row["gen_id"])["error"]
        assert f"deadline of {deadline}s exceeded after" in error and "(last: HTTP 429" in error, error
    status = run_daydream(project, "status", "c1")
    assert "deadline of 4s exceeded" in status.stdout, output_of(status)


def test_trickling_answer_is_cut_at_the_deadline_and_the_run_goes_on(project):
    """The first request's answer trickles in one byte every 0.3 s (each byte within the read
    timeout): that attempt ends at the 3 s deadline, the other chain completes."""
    write_spec(project, "c1", SMALL)
    with StubLLMServer(faults=["trickle"], trickle_s=0.3) as srv:
        t0 = time.monotonic()
        run = run_luigi(project, "RunCohort", "--cohort-id", "c1", "--llm-timeout-s", "2",
                        "--llm-call-deadline-s", "3", base_url=srv.base_url, timeout=90)
        elapsed = time.monotonic() - t0
        requests = srv.requests
    assert run.returncode == 30, output_of(run)
    assert elapsed < 40, elapsed
    assert requests[0]["fault"] == "trickle" and len(requests) == 4  # 2 drafts, 1 essay, 1 evaluation
    states = {r["gen_id"]: project.meta(r["stage"], r["gen_id"]).get("status") for r in project.membership("c1")}
    assert sorted(states.values(), key=str) == sorted(["failed", "done", "done", "done", None, None], key=str)
    failed = next(g for g, s in states.items() if s == "failed")
    error = project.meta("draft", failed)["error"]
    assert "deadline of 3s exceeded after 1 attempts" in error and "still arriving" in error, error
