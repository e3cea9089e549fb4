"""A local OpenAI-compatible chat-completions server standing in for OpenRouter in tests, benchmarks and
the one-minute start (scripts/quickstart). A test double: not part of the installed package.

    >>> with StubLLMServer(latency=0.0, faults=["429-ra0", "500"]) as srv:
    ...     OpenAIClient(srv.base_url).complete("m/x", "hi")   # 429, 500, then a normal answer
    ...     srv.requests, srv.successes

    $ python -m tests.support.stub_server --port 0 --latency 0.3 --max-concurrent 8 --count-file n.tsv
    READY http://127.0.0.1:PORT/v1

Answers are deterministic in the prompt (see ``answer_text``): a few sentences, an
``<essay>...</essay>`` block and a last line ``SCORE: <digit>``. Faults are injected by name,
either from a list consumed by successive requests or from a callable(request_index, body).
Error bodies deliberately echo the request headers (like a careless server) so tests can check
that clients never leak the API key.
"""
import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

_REPO = Path(__file__).resolve().parents[2]  # where ``python -m tests.support.stub_server`` resolves
_STATUS_FAULTS = {"429", "429-ra0", "429-nora", "500", "502", "503", "400", "401", "402", "404"}
_BODY_FAULTS = {"timeout", "drop", "badjson", "empty_choices", "length", "error200", "finish_error",
                "empty_content", "null_content", "non_utf8", "trickle", "500-echo-escaped", "blank_content"}
FAULTS = frozenset(_STATUS_FAULTS | _BODY_FAULTS)

_WORDS = ("lantern", "orchard", "circuit", "harbor", "mosaic", "signal", "meadow", "archive",
          "compass", "ember", "glacier", "thread", "canopy", "beacon", "prism", "tide")


def prompt_sha(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def expected_score(prompt: str) -> int:
    """The digit on the last line of ``answer_text(prompt)``."""
    return int(prompt_sha(prompt)[:8], 16) % 10


def answer_text(prompt: str) -> str:
    """The stub's deterministic answer to ``prompt``."""
    h = prompt_sha(prompt)
    w = [_WORDS[int(c, 16)] for c in h[:8]]
    return (f"Notes on the {w[0]} and the {w[1]}: both carry a {w[2]} of meaning.\n"
            f"<essay>\nThe {w[3]} and the {w[4]} meet where a {w[5]} begins. "
            f"Read together, the {w[6]} explains the {w[7]} (ref {h[:12]}).\n</essay>\n"
            f"SCORE: {expected_score(prompt)}")


class StubLLMServer:
    """ThreadingHTTPServer on ``host:port`` (port 0 = any free port); see the module doc.

    ``faults``: list of fault names (see FAULTS) used by successive requests, then normal answers;
    or callable(request_index, body_dict) -> fault name or None. ``max_concurrent``: requests beyond
    this many in flight get 429 with Retry-After: 0. ``retry_after``: seconds sent with fault "429".
    ``hang_s``: how long fault "timeout" stalls before closing. ``trickle_s``: the pause between the
body bytes of fault "trickle" (a normal answer, one byte at a time). ``count_file``: append
    ``<status>\\t<model>\\t<prompt sha256>`` per request ("-" when no status was sent).
    """

    def __init__(self, latency=0.0, max_concurrent=None, faults=None, *, retry_after=1, hang_s=3.0,
                 trickle_s=0.3, count_file=None, host="127.0.0.1", port=0):
        if faults is not None and not callable(faults):
            faults = list(faults)
            unknown = sorted(set(faults) - FAULTS)
            if unknown:
                raise ValueError(f"unknown stub fault(s) {unknown}; known: {sorted(FAULTS)}")
        self.latency = latency
        self.max_concurrent = max_concurrent
        self.retry_after = retry_after
        self.hang_s = hang_s
        self.trickle_s = trickle_s
        self._faults = faults
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._requests = []
        self._arrived = []  # monotonic arrival time per request index
        self._in_flight = 0
        self._count_fd = (os.open(count_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                          if count_file else None)
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.stub = self
        self._thread = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def requests(self) -> list:
        """One dict per request so far: index, model, prompt_sha, status, fault, auth, body."""
        with self._lock:
            return [dict(r) for r in self._requests if r is not None]

    @property
    def successes(self) -> int:
        """Normal answers sent (no fault, not rate-limited)."""
        with self._lock:
            return sum(1 for r in self._requests if r is not None and r["fault"] is None)

    def start(self) -> "StubLLMServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="stub-llm", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self):
        self._httpd.serve_forever(poll_interval=0.2)

    def close(self):
        self._stop.set()  # wakes handlers stalled by "timeout"
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()
        if self._count_fd is not None:
            os.close(self._count_fd)
            self._count_fd = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # --- used by the handler threads ---

    def _admit(self, body) -> tuple:
        """Count the request in; return (index, fault) with fault "busy" when over max_concurrent."""
        with self._lock:
            index = len(self._requests)
            self._requests.append(None)  # reserve the slot; _record fills it
            self._arrived.append(time.monotonic())
            self._in_flight += 1
            if self.max_concurrent is not None and self._in_flight > self.max_concurrent:
                return index, "busy"
            if callable(self._faults):
                fault = self._faults(index, body)
            elif self._faults:
                fault = self._faults.pop(0)
            else:
                fault = None
        return index, fault

    def _leave(self):
        with self._lock:
            self._in_flight -= 1

    def _record(self, index, **entry):
        # Recorded before the response goes out, so a client that got its answer sees the entry.
        with self._lock:
            self._requests[index] = dict(index=index, received=self._arrived[index], **entry)
            if self._count_fd is not None:
                status = "-" if entry["status"] is None else entry["status"]
                line = f"{status}\t{entry['model']}\t{entry['prompt_sha']}\n"
                os.write(self._count_fd, line.encode("utf-8"))  # one write: atomic O_APPEND line


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # benchmarks open many connections at once

    def handle_error(self, request, client_address):
        # Clients hanging up (timeouts, dropped pools) are expected here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real API behind a pooled client
    # headers and body go out in two writes: without this, Nagle + delayed ACK hold each reply ~40 ms
    disable_nagle_algorithm = True

    def log_message(self, format, *args):
        pass

    def do_POST(self):
        stub = self.server.stub
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
            messages = body["messages"]
            prompt = "\n".join(m.get("content") or "" for m in messages)
            model = body["model"]
        except (ValueError, KeyError, TypeError, AttributeError):
            self._send_json(400, {"error": {"code": 400, "message": "stub: body needs model and messages"}})
            return
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"code": 404, "message": f"stub: no route {self.path}"}})
            return
        index, fault = stub._admit(body)
        try:
            if fault not in FAULTS and fault not in (None, "busy"):
                raise ValueError(f"unknown stub fault {fault!r} from the faults callable")
            self._answer(stub, index, fault, model, prompt, body)
        finally:
            stub._leave()

    def _answer(self, stub, index, fault, model, prompt, body):
        sha = prompt_sha(prompt)

        def record(status):
            stub._record(index, model=model, prompt_sha=sha, status=status, fault=fault,
                         auth=self.headers.get("Authorization", "").startswith("Bearer "), body=body)

        if fault == "busy":
            record(429)
            self._send_json(429, _err(429, "stub: too many concurrent requests"), {"Retry-After": "0"})
            return
        if stub.latency:
            time.sleep(stub.latency)
        if fault in _STATUS_FAULTS:
            status = int(fault[:3])
            extra = {"429": {"Retry-After": str(stub.retry_after)}, "429-ra0": {"Retry-After": "0"}}
            record(status)
            # Echo the headers (including Authorization) like a careless server would.
            echo = f"stub fault {fault}; request headers: {dict(self.headers)}"
            self._send_json(status, _err(status, echo), extra.get(fault, {}))
            return
        if fault == "500-echo-escaped":
            # a JSON error body quoting the Authorization header with every character \u-escaped:
            # valid JSON that decodes back to the key
            record(500)
            auth = "".join(f"\\u{ord(c):04x}" for c in self.headers.get("Authorization", ""))
            self._send_bytes(500, ('{"error": {"code": 500, "message": "stub fault 500-echo-escaped; '
                                   f'you sent Authorization: {auth}"}}}}').encode("ascii"))
            return
        if fault == "timeout":
            record(None)
            stub._stop.wait(stub.hang_s)
            self.close_connection = True
            return
        text = answer_text(prompt)
        if fault == "drop":
            record(200)
            data = json.dumps(_completion(index, model, prompt, text, "stop")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        record(200)
        if fault == "trickle":
            self._trickle(json.dumps(_completion(index, model, prompt, text, "stop")).encode(), stub)
        elif fault == "badjson":
            self._send_bytes(200, b'{"id": "gen-bad", "choices": [')
        elif fault == "non_utf8":
            self._send_bytes(200, b'{"choices": [{"message": {"content": "\xff\xfe\xfa"}, '
                                  b'"finish_reason": "stop"}]}')
        elif fault == "error200":
            self._send_json(200, {"error": {"code": 502, "message": "upstream"}})
        elif fault == "empty_choices":
            self._send_json(200, {"id": f"gen-{index}", "model": model, "choices": []})
        else:
            finish, content = {"length": ("length", text), "finish_error": ("error", text[:20]),
                               "empty_content": ("stop", ""), "null_content": ("stop", None),
                               "blank_content": ("stop", " \n\n  "),
                               None: ("stop", text)}[fault]
            self._send_json(200, _completion(index, model, prompt, content, finish))

    def _trickle(self, data, stub):
        """A normal 200 answer sent one byte at a time, each within any read timeout."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.flush()
        for i in range(len(data)):
            if stub._stop.wait(stub.trickle_s):
                break
            self.wfile.write(data[i:i + 1])
            self.wfile.flush()
        self.close_connection = True

    def _send_json(self, status, obj, headers=None):
        self._send_bytes(status, json.dumps(obj).encode("utf-8"), headers)

    def _send_bytes(self, status, data, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _err(code, message):
    return {"error": {"code": code, "message": message}}


def _completion(index, model, prompt, content, finish):
    prompt_tokens = len(prompt.split())
    completion_tokens = len((content or "").split())
    return {"id": f"gen-{prompt_sha(prompt)[:16]}-{index}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens, "cost": 0.0001}}


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class StubProcess:
    """The stub in a subprocess of its own (for luigi runs in other processes to reach).

        >>> stub = StubProcess(Path("requests.tsv"), "--latency", "0.3", "--max-concurrent", "8")
        >>> stub.base_url, stub.statuses()      # one status per request answered so far
        >>> stub.close()
    """

    def __init__(self, count_file, *args, cwd=None, env=None):
        self.count_file = Path(count_file)
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.support.stub_server", "--port", "0",
                                      "--count-file", str(count_file), *args],
                                     stdout=subprocess.PIPE, text=True, cwd=cwd or _REPO, env=env)
        line = self.proc.stdout.readline().split()
        if not line or line[0] != "READY":
            self.proc.kill()
            raise RuntimeError(f"stub server did not start (said {line!r})")
        self.base_url = line[1]

    def statuses(self) -> list:
        if not self.count_file.exists():
            return []
        with open(self.count_file, encoding="utf-8") as fh:
            return [line.split("\t")[0] for line in fh]

    def close(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m tests.support.stub_server", description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    ap.add_argument("--max-concurrent", type=int, default=None, help="429 beyond this many in flight")
    ap.add_argument("--faults", default="", help="comma-separated fault names for the first requests")
    ap.add_argument("--retry-after", type=int, default=1, help="Retry-After seconds for fault 429")
    ap.add_argument("--hang-s", type=float, default=3.0, help="stall of fault 'timeout'")
    ap.add_argument("--count-file", default=None, help="append '<status>\\t<model>\\t<sha>' per request")
    args = ap.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    try:
        srv = StubLLMServer(args.latency, args.max_concurrent, faults, retry_after=args.retry_after,
                            hang_s=args.hang_s, count_file=args.count_file, host=args.host, port=args.port)
    except (ValueError, OSError) as exc:
        ap.error(str(exc))
    # SIGTERM ends serve_forever like Ctrl-C does, so the count file is closed cleanly.
    signal.signal(signal.SIGTERM, _interrupt)
    print(f"READY {srv.base_url}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()


if __name__ == "__main__":
    main()
