"""OpenAI-compatible chat-completions client (OpenRouter, or the local stub) with retries.

    >>> client = OpenAIClient("https://openrouter.ai/api/v1", api_key=os.environ["OPENROUTER_API_KEY"])
    >>> res = client.complete("google/gemini-2.5-flash", "Write a haiku.")
    >>> res.text, res.truncated, res.cost, res.attempts

Transient trouble (429, 408, 5xx, timeouts, dropped connections, garbled or empty answers) is
retried with exponential backoff and full jitter, honouring Retry-After. A bad request, key,
credit balance or model name raises LLMError(retryable=False) at once. Running out of attempts
or of ``deadline_s`` (a wall clock over every attempt, wait and body byte) raises
LLMError(retryable=True). The API key never appears in a message, in any spelling.
"""
import email.utils
import json
import os
import random
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import requests
import urllib3
from requests.adapters import HTTPAdapter

from .errors import LLMError

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_FATAL_MESSAGES = {
    400: "request rejected as malformed (HTTP 400)",
    401: "API key rejected - check the key in {key_name} (HTTP 401)",
    402: "out of credit - top up the account (HTTP 402)",
    403: "request forbidden, e.g. moderation or key limits (HTTP 403)",
    404: "unknown model {model} (HTTP 404) - check the model id",
}
_SNIPPET = 300  # chars of a server's error text worth quoting
_CHUNK = 16384  # bytes per read of a response body, between deadline checks


@dataclass
class LLMResult:
    """One completed call. ``truncated`` means finish_reason == "length": the text is cut short."""
    text: str
    finish_reason: str | None
    provider_model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost: float | None
    attempts: int
    duration_s: float
    truncated: bool


@dataclass
class _Failure:
    """One failed attempt (a value, not an exception, so nothing chains the request and its headers)."""
    status: int | None
    error_class: str
    message: str
    retryable: bool
    retry_after: float | None = None


def parse_retry_after(value, now=None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date; None if absent/garbled.

    >>> parse_retry_after("3")
    3.0
    """
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


class OpenAIClient:
    """Chat-completions client for an OpenAI-compatible ``base_url``.

    usage: client = OpenAIClient("https://openrouter.ai/api/v1", api_key=os.environ["OPENROUTER_API_KEY"])
           client.complete("google/gemini-2.5-flash", "prompt")

    ``timeout`` is (connect, read) seconds per attempt (a number means both); ``deadline_s`` caps
    the whole call including retries and waits. ``on_attempt_failed(attempt, status, error_class,
    message, will_retry, delay_s)`` is called after every failed attempt, for logging.
    """

    def __init__(self, base_url, api_key=None, *, timeout=(5, 120), max_attempts=6, backoff_base=1.0,
                 backoff_max=60.0, max_retry_after=120.0, deadline_s=None, on_attempt_failed=None,
                 session=None, key_name="the API key variable", max_rate_limited=30):
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        self.base_url = base_url.rstrip("/")
        self.key_name = key_name  # the variable's name, for messages; never its value
        self._api_key = _clean_key(api_key, key_name)
        self._key_pattern = _key_pattern(self._api_key)
        # 429s say "slow down", not "broken": they get a budget of their own so that workers
        # sharing a provider's concurrency limit wait their turn instead of giving up
        self.max_rate_limited = max_rate_limited
        self.timeout = tuple(timeout) if isinstance(timeout, (tuple, list)) else (timeout, timeout)
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self.deadline_s = deadline_s
        self.on_attempt_failed = on_attempt_failed
        self._session = session
        self._own_session_pid = None if session is not None else 0  # None: the caller's, 0: ours, unused
        self._route = None   # (urllib3 pool, request target, headers) for this process's session

    def __repr__(self):
        return f"OpenAIClient({self.base_url!r}, api_key={'***' if self._api_key else None})"

    def prepare_session(self):
        """Build the session before forking: unused, it holds no connection, so each forked process
        (Luigi's task processes) takes it over instead of building its own (~1 ms each)."""
        if self._session is None:
            self._session = self._new_session()

    @property
    def session(self) -> requests.Session:
        # A pooled session must not cross a fork (Luigi worker processes): ours belongs to the first
        # process that sends through it, and any other process builds its own.
        if self._session is None or self._own_session_pid not in (None, 0, os.getpid()):
            self._session, self._route = self._new_session(), None
        if self._own_session_pid is not None:
            self._own_session_pid = os.getpid()
        return self._session

    def _new_session(self) -> requests.Session:
        s = requests.Session()
        # the environment's proxy and CA-bundle settings, read once here instead of on every
        # request (requests re-reads os.environ per call: ~0.7 ms, a third of a stub call)
        settings = s.merge_environment_settings(self.base_url, {}, None, None, None)
        s.trust_env = False
        s.proxies, s.verify = settings["proxies"], settings["verify"]
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=16)
        s.mount("http://", adapter)
        s.mount("https://", adapter)
        return s

    def _pool(self):
        """(connection pool, request target, headers) for the chat-completions URL: the session's
        adapter picks the pool (proxy, CA bundle) once; each request then goes to urllib3 directly,
        as the adapter would send it, without requests' per-request preparation (half its CPU)."""
        session = self.session
        if self._route is None:
            url = f"{self.base_url}/chat/completions"
            prepared = requests.Request("POST", url).prepare()
            adapter = session.get_adapter(url)
            pool = adapter.get_connection_with_tls_context(prepared, session.verify, proxies=session.proxies)
            adapter.cert_verify(pool, url, session.verify, None)
            headers = {**session.headers, "Content-Type": "application/json"}
            self._route = (pool, adapter.request_url(prepared, session.proxies), headers)
        return self._route

    def complete(self, model: str, prompt: str, *, max_tokens=None, temperature=None,
                 before_attempt=None) -> LLMResult:
        """Send ``prompt`` as one user message to ``model``; return the answer or raise LLMError.

        ``before_attempt()`` runs before every request (e.g. a rate limiter's wait)."""
        payload = {"model": model, "messages": [{"role": "user", "content": prompt}],
                   "usage": {"include": True}}  # OpenRouter then reports usage.cost
        if max_tokens is not None:
            payload["max_tokens"] = max_tokens
        if temperature is not None:
            payload["temperature"] = temperature
        request_body = json.dumps(payload, allow_nan=False).encode("utf-8")  # as requests' json= encodes it
        start = time.monotonic()
        deadline = None if self.deadline_s is None else start + self.deadline_s
        attempt = rate_limited = 0
        fail = None
        while True:
            if before_attempt is not None:
                before_attempt()
            if fail is not None and deadline is not None and time.monotonic() >= deadline:
                break  # a rate limiter's wait used up the rest of the time
            attempt += 1
            outcome = self._attempt(model, request_body, deadline)
            if isinstance(outcome, LLMResult):
                outcome.attempts = attempt
                outcome.duration_s = time.monotonic() - start
                return outcome
            fail = outcome
            fail.message = self._scrub(fail.message)  # last line of defence, whatever built it
            if fail.status == 429:
                rate_limited += 1
            delay = self._delay(attempt, fail.retry_after)
            within_budget = (rate_limited <= self.max_rate_limited if fail.status == 429
                             else attempt - rate_limited < self.max_attempts)
            will_retry = (fail.retryable and within_budget
                          and (deadline is None or time.monotonic() + delay < deadline))
            if self.on_attempt_failed is not None:
                self.on_attempt_failed(attempt, fail.status, fail.error_class, fail.message,
                                       will_retry, delay if will_retry else 0.0)
            if not will_retry:
                break
            time.sleep(delay)
        if not fail.retryable:
            raise LLMError(f"model {model}: {fail.message}", status=fail.status, retryable=False,
                           attempts=attempt, error_class=fail.error_class)
        if within_budget:  # only the clock stopped it
            raise LLMError(f"model {model}: deadline of {self.deadline_s:g}s exceeded after {attempt} "
                           f"attempts (last: {fail.message})", status=fail.status, retryable=True,
                           attempts=attempt, error_class=fail.error_class)
        raise LLMError(f"model {model}: gave up after {attempt} attempts (attempts exhausted); last error "
                       f"{fail.error_class}: {fail.message}", status=fail.status, retryable=True,
                       attempts=attempt, error_class=fail.error_class)

    def _delay(self, attempt, retry_after) -> float:
        # "equal jitter": at least half the exponential step, so retries really back off
        step = min(self.backoff_max, self.backoff_base * 2 ** (min(attempt, 30) - 1))
        backoff = step / 2 + random.uniform(0, step / 2)
        if retry_after is None:
            return backoff
        # Retry-After is a lower bound; the jitter still spreads out clients told the same time.
        return max(min(retry_after, self.max_retry_after), backoff)

    def _scrub(self, text: str) -> str:
        return self._key_pattern.sub("***", text) if self._key_pattern else text

    def _attempt(self, model, request_body, deadline) -> "LLMResult | _Failure":
        connect, read = self.timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return _Failure(None, "deadline", "deadline reached before the attempt", True)
            connect, read = min(connect, left), min(read, left)
        try:
            pool, target, headers = self._pool()
            if self._api_key:
                headers = {**headers, "Authorization": f"Bearer {self._api_key}"}
            # preload_content=False: the body is read below in chunks against the deadline, so a
            # server trickling bytes (each within the read timeout) cannot hold the call forever
            resp = pool.urlopen("POST", target, body=request_body, headers=headers, redirect=False,
                                assert_same_host=False, preload_content=False, decode_content=False,
                                retries=_NO_RETRIES, timeout=urllib3.Timeout(connect=connect, read=read))
            try:
                raw = _read_body(resp, deadline)
            finally:
                resp.close()  # as requests closes a streamed response
                resp.release_conn()
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            if _is_timeout(exc):
                return _Failure(None, "timeout", f"no answer within {read:g}s", True)
            # refused/reset connections and bodies cut off mid-response; named as requests names them
            return _Failure(None, "connection", self._scrub(f"ConnectionError: {exc}")[:_SNIPPET], True)
        except requests.RequestException as exc:  # the session's settings name a bad proxy or URL
            return _Failure(None, "connection", self._scrub(f"{type(exc).__name__}: {exc}")[:_SNIPPET], True)
        if raw is None:
            return _Failure(None, "deadline", "response body still arriving at the deadline", True)
        # scrubbed before anything is cut short, so no snippet can end in part of the key
        if resp.status != 200:
            return self._http_failure(model, resp, self._scrub(raw.decode("utf-8", "replace")))
        try:
            body_text = self._scrub(raw.decode("utf-8"))
        except UnicodeDecodeError:
            return _Failure(200, "invalid_body", "invalid response body (not UTF-8)", True)
        try:
            body = json.loads(body_text)
        except ValueError:
            return _Failure(200, "invalid_body", f"invalid response body (not JSON): {body_text[:80]!r}", True)
        if not isinstance(body, dict):
            return _Failure(200, "invalid_body", "invalid response body (not a JSON object)", True)
        return self._parse_ok(model, body)

    def _http_failure(self, model, resp, body_text) -> _Failure:
        status = resp.status
        # scrubbed again once decoded: JSON may have spelled the key in \uXXXX escapes
        said = self._scrub(_server_message(body_text))[:_SNIPPET]
        if status in RETRYABLE_STATUSES or status >= 500:
            return _Failure(status, f"http_{status}", f"HTTP {status}: {said}", True,
                            parse_retry_after(resp.headers.get("Retry-After")))
        what = _FATAL_MESSAGES.get(status, f"request refused (HTTP {status})")
        what = what.format(model=model, key_name=self.key_name)
        return _Failure(status, f"http_{status}", f"{what}; server said: {said}", False)

    def _parse_ok(self, model, body) -> "LLMResult | _Failure":
        error = body.get("error")
        if error:
            # OpenRouter reports some provider failures as 200 + error object.
            code = error.get("code") if isinstance(error, dict) else None
            msg = error.get("message") if isinstance(error, dict) else error
            code = int(code) if isinstance(code, (int, str)) and str(code).isdigit() else None
            retryable = code is None or code in RETRYABLE_STATUSES or code >= 500
            said = self._scrub(str(msg))[:_SNIPPET]
            if not retryable:
                what = _FATAL_MESSAGES.get(code, f"request refused (code {code})")
                what = what.format(model=model, key_name=self.key_name)
                return _Failure(code, f"api_error_{code}", f"{what}; server said: {said}", False)
            return _Failure(200, "api_error", f"error in 200 body (code {code}): {said}", True)
        choices = body.get("choices")
        if not choices or not isinstance(choices, list) or not isinstance(choices[0], dict):
            return _Failure(200, "no_choices", "response has no choices", True)
        choice = choices[0]
        finish = choice.get("finish_reason")
        if finish == "error":
            return _Failure(200, "finish_error", "provider ended the generation with finish_reason=error", True)
        content = (choice.get("message") or {}).get("content")
        if not isinstance(content, str) or not content:
            return _Failure(200, "empty_content", f"empty content (finish_reason={finish})", True)
        usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
        return LLMResult(text=content, finish_reason=finish, provider_model=body.get("model"),
                         prompt_tokens=usage.get("prompt_tokens"),
                         completion_tokens=usage.get("completion_tokens"),
                         cost=usage.get("cost"), attempts=0, duration_s=0.0,
                         truncated=finish == "length")


def _read_body(resp, deadline) -> "bytes | None":
    """The whole body, or None if ``deadline`` (monotonic) passed before its last byte.

    read1 returns whatever one socket read brings (iter_content would wait for a full chunk)."""
    chunks = []
    while True:
        chunk = resp.read1(_CHUNK, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        if deadline is not None and time.monotonic() >= deadline:
            return None


_NO_RETRIES = urllib3.Retry(0, read=False)  # requests' default: the retries here are ours


def _is_timeout(exc) -> bool:
    """True for a connect or read timeout (as requests tells them: a refused connection is not one)."""
    if isinstance(exc, urllib3.exceptions.MaxRetryError):
        exc = exc.reason
    return isinstance(exc, urllib3.exceptions.TimeoutError) and not isinstance(
        exc, urllib3.exceptions.NewConnectionError)


def _clean_key(key, key_name):
    """The key without surrounding whitespace (a CRLF .env leaves a \\r); refuse control characters
    inside it, which would otherwise be quoted back in an "invalid header" error."""
    key = (key or "").strip()
    if any(ord(c) < 32 or ord(c) == 127 for c in key):
        raise LLMError(f"the API key in {key_name} contains control characters (e.g. a line break inside "
                       f"it); set {key_name} to the key alone", retryable=False, attempts=0,
                       error_class="bad_api_key")
    return key or None


def _key_pattern(key):
    """Matches ``key`` with any of its characters spelled literally, as a JSON ``\\uXXXX`` escape
    or %-encoded, so an echo in any of those spellings is scrubbed."""
    if not key:
        return None
    return re.compile("".join(f"(?:{re.escape(c)}|\\\\u{ord(c):04x}|%{ord(c):02x})" for c in key),
                      re.IGNORECASE)


def _server_message(body_text: str) -> str:
    """The error message from an error body, else the body (the caller scrubs and shortens it)."""
    try:
        err = json.loads(body_text).get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
    except (ValueError, AttributeError):
        pass
    return body_text or "(empty body)"
