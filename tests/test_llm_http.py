"""OpenAIClient against the real StubLLMServer over loopback."""
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest
import requests

from pipeline.errors import LLMError
from pipeline.llm_http import OpenAIClient, parse_retry_after
from tests.support.stub_server import StubLLMServer, answer_text, expected_score, prompt_sha

KEY = "sk-test-SECRET-123"
MODEL = "test/model-a"
ROOT = Path(__file__).resolve().parents[1]


def make_client(srv, events=None, **kw):
    opts = dict(api_key=KEY, timeout=(0.5, 0.5), max_attempts=4, backoff_base=0.01, backoff_max=0.05)
    if events is not None:
        opts["on_attempt_failed"] = lambda *a: events.append(a)
    opts.update(kw)
    return OpenAIClient(srv.base_url, **opts)


def call_with(faults, prompt="Tell me about lanterns.", **kw):
    """Run one complete() against a fresh stub; return (result or LLMError, events, requests)."""
    events = []
    with StubLLMServer(faults=faults, hang_s=2.0) as srv:
        try:
            out = make_client(srv, events, **kw).complete(MODEL, prompt)
        except LLMError as exc:
            out = exc
        return out, events, srv.requests


def test_success_returns_text_usage_and_sends_key_and_usage_flag():
    prompt = "Combine orchards and circuits."
    res, events, reqs = call_with(None, prompt)
    assert res.text == answer_text(prompt)
    assert res.text.splitlines()[-1] == f"SCORE: {expected_score(prompt)}"
    assert "<essay>" in res.text and "</essay>" in res.text
    assert (res.finish_reason, res.provider_model, res.truncated, res.attempts) == ("stop", MODEL, False, 1)
    assert res.prompt_tokens == 4 and res.completion_tokens > 10 and res.cost == 0.0001
    assert res.duration_s > 0 and events == []
    [req] = reqs
    assert req["prompt_sha"] == prompt_sha(prompt) and req["model"] == MODEL and req["auth"]
    assert req["body"]["usage"] == {"include": True}
    assert req["body"]["messages"] == [{"role": "user", "content": prompt}]


def test_max_tokens_and_temperature_are_sent_only_when_given():
    with StubLLMServer() as srv:
        client = make_client(srv)
        client.complete(MODEL, "a", max_tokens=50, temperature=0.2)
        client.complete(MODEL, "b")
        first, second = (r["body"] for r in srv.requests)
    assert (first["max_tokens"], first["temperature"]) == (50, 0.2)
    assert "max_tokens" not in second and "temperature" not in second


def test_429_retry_after_is_honoured_then_success():
    events = []
    with StubLLMServer(faults=["429"], retry_after=1) as srv:
        res = make_client(srv, events).complete(MODEL, "p")
        assert len(srv.requests) == 2 and srv.successes == 1
    assert res.attempts == 2 and res.duration_s >= 1.0
    [(attempt, status, error_class, message, will_retry, delay)] = events
    assert (attempt, status, error_class, will_retry, delay) == (1, 429, "http_429", True, 1.0)
    assert KEY not in message


def test_retry_after_is_capped_by_max_retry_after():
    events = []
    with StubLLMServer(faults=["429"], retry_after=30) as srv:
        res = make_client(srv, events, max_retry_after=0.1).complete(MODEL, "p")
    assert res.attempts == 2 and res.duration_s < 1
    assert events[0][5] == 0.1


def test_parse_retry_after_seconds_and_http_date():
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=10), usegmt=True), now=now) == 10.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=10), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_three_500s_then_success():
    res, events, reqs = call_with(["500", "500", "500"])
    assert res.attempts == 4 and len(reqs) == 4
    assert [(e[0], e[1], e[4]) for e in events] == [(1, 500, True), (2, 500, True), (3, 500, True)]
    assert all(0 <= e[5] <= 0.05 for e in events)


@pytest.mark.parametrize("fault, status, words", [
    ("401", 401, "API key rejected - check the key in"),
    ("402", 402, "out of credit"),
    ("404", 404, f"unknown model {MODEL}"),
    ("400", 400, "malformed"),
])
def test_client_errors_fail_at_once_without_leaking_the_key(fault, status, words):
    exc, events, reqs = call_with([fault])
    assert isinstance(exc, LLMError) and len(reqs) == 1
    assert (exc.status, exc.retryable, exc.attempts) == (status, False, 1)
    assert words in str(exc) and MODEL in str(exc)
    # The stub echoes the Authorization header in its error body; it must come back scrubbed.
    assert "Bearer ***" in str(exc)
    assert KEY not in str(exc) and KEY not in repr(exc.args)
    assert [(e[1], e[4]) for e in events] == [(status, False)] and KEY not in events[0][3]


def test_client_repr_hides_the_key():
    client = OpenAIClient("http://127.0.0.1:9/v1", api_key=KEY)
    assert KEY not in repr(client) and "***" in repr(client)


@pytest.mark.parametrize("fault, error_class", [
    ("timeout", "timeout"),
    ("drop", "connection"),
    ("badjson", "invalid_body"),
    ("non_utf8", "invalid_body"),
    ("empty_choices", "no_choices"),
    ("error200", "api_error"),
    ("finish_error", "finish_error"),
    ("empty_content", "empty_content"),
    ("null_content", "empty_content"),
    ("502", "http_502"),
    ("429-nora", "http_429"),
])
def test_transient_fault_then_success(fault, error_class):
    prompt = f"prompt for {fault}"
    res, events, reqs = call_with([fault], prompt)
    assert res.text == answer_text(prompt) and res.attempts == 2
    assert [r["fault"] for r in reqs] == [fault, None]
    [event] = events
    assert event[0] == 1 and event[2] == error_class and event[4] is True


def test_length_returns_truncated_result():
    res, events, reqs = call_with(["length"])
    assert res.truncated and res.finish_reason == "length" and res.attempts == 1 and len(reqs) == 1


def test_persistent_503_gives_up_after_exactly_max_attempts():
    exc, events, reqs = call_with(lambda i, body: "503", max_attempts=3)
    assert isinstance(exc, LLMError) and len(reqs) == 3
    assert (exc.status, exc.retryable, exc.attempts) == (503, True, 3)
    assert MODEL in str(exc) and "3 attempts" in str(exc) and "HTTP 503" in str(exc)
    assert KEY not in str(exc)
    assert [e[4] for e in events] == [True, True, False]


def test_persistent_empty_content_gives_up():
    exc, events, reqs = call_with(lambda i, body: "empty_content", max_attempts=2)
    assert isinstance(exc, LLMError) and exc.retryable and exc.error_class == "empty_content"
    assert len(reqs) == 2


def test_deadline_bounds_retry_waits():
    t0 = time.monotonic()
    with StubLLMServer(faults=["429"], retry_after=5) as srv:
        with pytest.raises(LLMError) as info:
            make_client(srv, deadline_s=0.5).complete(MODEL, "p")
        assert len(srv.requests) == 1
    assert time.monotonic() - t0 < 1.5
    assert info.value.retryable and "deadline" in str(info.value)


def test_deadline_bounds_a_hanging_attempt():
    t0 = time.monotonic()
    with StubLLMServer(faults=lambda i, body: "timeout", hang_s=5) as srv:
        with pytest.raises(LLMError) as info:
            make_client(srv, timeout=(5, 5), deadline_s=0.4).complete(MODEL, "p")
    assert time.monotonic() - t0 < 1.5
    assert info.value.error_class == "timeout"


def test_max_concurrent_answers_429_to_the_excess():
    n = 6
    with StubLLMServer(latency=0.5, max_concurrent=2) as srv:
        barrier = threading.Barrier(n)
        results = [None] * n

        def hit(i):
            barrier.wait()
            r = requests.post(f"{srv.base_url}/chat/completions", timeout=5,
                              json={"model": MODEL, "messages": [{"role": "user", "content": str(i)}]})
            results[i] = (r.status_code, r.headers.get("Retry-After"))

        threads = [threading.Thread(target=hit, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == [(200, None)] * 2 + [(429, "0")] * 4
        assert srv.successes == 2


def test_clients_retrying_through_max_concurrent_all_succeed():
    n = 6
    with StubLLMServer(latency=0.1, max_concurrent=2) as srv:
        client = make_client(srv, max_attempts=30, timeout=(1, 1))
        out = [None] * n
        threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, client.complete(MODEL, f"q{i}")))
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.text for r in out] == [answer_text(f"q{i}") for i in range(n)]
        assert srv.successes == n and max(r.attempts for r in out) > 1


def test_unknown_fault_name_is_rejected():
    with pytest.raises(ValueError, match="unknown stub fault"):
        StubLLMServer(faults=["500", "oops"])


def test_stub_server_subprocess_prints_ready_serves_and_counts(tmp_path):
    count_file = tmp_path / "count.tsv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.stub_server", "--port", "0", "--latency", "0",
         "--faults", "500", "--count-file", str(count_file)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = proc.stdout.readline().strip()
        assert line.startswith("READY http://127.0.0.1:") and line.endswith("/v1")
        url = line.split()[1]
        client = OpenAIClient(url, api_key=KEY, timeout=(2, 2), backoff_base=0.01)
        res = client.complete(MODEL, "hello")
        assert res.text == answer_text("hello") and res.attempts == 2
        lines = count_file.read_text().splitlines()
        assert lines == [f"500\t{MODEL}\t{prompt_sha('hello')}", f"200\t{MODEL}\t{prompt_sha('hello')}"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def _session_in_child(client) -> bool:
    """Whether a process forked now sends through the very session ``client`` holds here."""
    before = id(client._session)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child answers through the pipe and exits at once
        try:
            os.write(write, b"same" if id(client.session) == before else b"other")
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as fh:
        return fh.read() == b"same"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_session_prepared_before_a_fork_is_taken_over_until_it_has_carried_a_request():
    with StubLLMServer() as srv:
        client = make_client(srv)
        client.prepare_session()
        assert _session_in_child(client)  # unused: no pooled connection to share
        client.complete(MODEL, "hi")  # now it pools a connection of this process
        assert not _session_in_child(client)
        assert client.complete(MODEL, "again").text == answer_text("again")
