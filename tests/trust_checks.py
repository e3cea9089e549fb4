"""Checks shared by the "trust under failure" tests (crash/resume, disk full, luigid, secrets).

    srv, admitted = recording_stub(make_stub, latency=0.3)   # admitted: [(monotonic, prompt sha)]
    ...
    assert_store_whole(project)                 # no temp files, no half-written JSON/text/event lines
    assert_paid_once(project, "c1", srv, extra={sha_in_flight_at_kill})
    assert_same_tables(project, result_tables(reference))
"""
import csv
import hashlib
import json
import os
import re
import time
from collections import Counter

from conftest import BIN
from tests.support.project import free_port, luigid, wait_for  # noqa: F401 (used by the tests)


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def body_sha(body) -> str:
    """The prompt sha the stub records for a request body."""
    return sha("\n".join(m.get("content") or "" for m in body["messages"]))


def recording_stub(make_stub, faults=None, **kwargs):
    """A stub that also notes each request as it is admitted (before its latency elapses).

    Returns (server, admitted) with admitted a list of (time.monotonic(), prompt sha).
    ``faults``: optional callable(index, body) -> fault name, as for StubLLMServer."""
    admitted = []

    def note(index, body):
        admitted.append((time.monotonic(), body_sha(body)))
        return faults(index, body) if faults else None

    return make_stub(faults=note, **kwargs), admitted


def wait_answered(srv, admitted, timeout=15):
    """Wait until the stub has answered every admitted request (those in flight at a kill finish too)."""
    wait_for(lambda: len(srv.requests) >= len(admitted), timeout, "the stub to answer in-flight requests")


def has(project, row, name) -> bool:
    return (project.gen_dir(row["stage"], row["gen_id"]) / name).exists()


def prompt_sha_of(project, row):
    path = project.gen_dir(row["stage"], row["gen_id"]) / "prompt.txt"
    return sha(path.read_text(encoding="utf-8")) if path.exists() else None


def unsaved_shas(project, cohort_id) -> set:
    """Prompt shas of LLM generations that sent a prompt but have no raw.txt (a bought answer not kept)."""
    return {prompt_sha_of(project, r) for r in project.llm_rows(cohort_id)
            if has(project, r, "prompt.txt") and not has(project, r, "raw.txt")}


def assert_paid_once(project, cohort_id, srv, extra=()):
    """Every LLM generation of the cohort got exactly one successful answer at ``srv``, except that each
    prompt sha in ``extra`` (answers lost to a kill; repeated if lost more than once) got one more."""
    expected = Counter(prompt_sha_of(project, r) for r in project.llm_rows(cohort_id))
    assert None not in expected, "some LLM generation has no prompt.txt"
    got = Counter(r["prompt_sha"] for r in srv.requests if r["status"] == 200 and r["fault"] is None)
    for s in extra:
        expected[s] += 1
    diff = {s: (got[s], expected[s]) for s in set(got) | set(expected) if got[s] != expected[s]}
    assert not diff, f"(successful answers, expected) per prompt sha differ: {diff}"


def is_temp_file(name) -> bool:
    """A temporary file of pipeline.fsio (``.<name>.<random>.tmp-<host>-<pid>``) or any other ``*.tmp``."""
    return re.search(r"\.tmp(-[^/]*)?$", name) is not None


def assert_store_whole(project, tmp_ok=False):
    """What a crash must never leave behind: unparsable JSON, empty outputs, bad event lines (a segment
    may end in one torn line: its writer died mid-write), or temp files. ``tmp_ok``: right after a
    SIGKILL, temp files of writes cut short are expected (never under a target's name); a later
    run must have cleaned them up."""
    data = project.data_root
    leftovers = [str(p) for p in data.rglob("*") if is_temp_file(p.name)]
    if tmp_ok:
        assert all(os.path.basename(p).startswith(".") for p in leftovers), leftovers
    else:
        assert not leftovers, f"temporary files left behind: {leftovers}"
    for path in data.rglob("metadata.json"):
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise AssertionError(f"{path} is not valid JSON: {exc}") from None
    empty = [str(p) for p in data.rglob("parsed.txt") if not p.read_text(encoding="utf-8").strip()]
    assert not empty, f"empty parsed.txt: {empty}"
    for seg in data.glob("events/*/*.jsonl"):
        # every line up to the last newline is whole; what follows it (if anything) may be torn
        for no, line in enumerate(seg.read_bytes().split(b"\n")[:-1], 1):
            try:
                json.loads(line)
            except ValueError:
                raise AssertionError(f"{seg}:{no}: unparsable event line {line[:120]!r}") from None


KEY_COLUMNS = {"generation_results": ("gen_id", "status"),
               "evaluation_results": ("gen_id", "score", "status"),
               "scores_long": ("gen_id", "score")}


def result_tables(project) -> dict:
    """data/tables/{generation_results,evaluation_results,scores_long}.csv reduced to the columns that do
    not depend on timing: sorted lists of tuples (duplicates kept, so a double-counted score shows)."""
    out = {}
    for name, cols in KEY_COLUMNS.items():
        with open(project.data_root / "tables" / f"{name}.csv", newline="", encoding="utf-8") as f:
            out[name] = sorted(tuple(row[c] for c in cols) for row in csv.DictReader(f))
    return out


def assert_same_tables(project, reference):
    """``project``'s result tables equal ``reference`` (from ``result_tables``); shows the rows that differ."""
    tables = result_tables(project)
    for name, rows in reference.items():
        missing = sorted(set(rows) - set(tables[name]))
        unexpected = sorted(set(tables[name]) - set(rows))
        assert tables[name] == rows, (f"{name}.csv differs from an uninterrupted run: rows missing {missing}, "
                                      f"unexpected {unexpected} ({len(tables[name])} rows vs {len(rows)})")


