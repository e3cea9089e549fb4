"""End to end: the real ``luigi`` and ``daydream`` commands against the stub LLM over loopback HTTP.

What a user checks after a run: every generation has its files, scores are the model's scores,
a rerun buys nothing, an interrupted run resumes without paying twice, retries and fatal errors
are handled (and the API key never leaks), copy-mode essays copy, ``daydream regenerate`` pays
again for exactly what it says.
"""
import hashlib
import re
import time

import pytest

from tests.support.stub_server import StubLLMServer, expected_score

from conftest import (REPO, SPEC_24, SHARED_RAW_ROOT, kill_group, make_project, output_of, run_daydream, run_luigi,
                      start_luigi, write_spec)

TINY = """\
concepts: {ids: [idle-recombination, critic-filter, feedback-flywheel], k_max: 2, description_level: paragraph}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  essay_template: [short-essay-v1, draft-as-essay]
  essay_llm: [sonnet_4]
  evaluation_template: [mechanism-check-v1]
  evaluation_llm: [sonnet_4]
"""
# 3 drafts, 6 essays (3 copies), 6 evaluations: 12 LLM calls
TINY_COUNTS = {"draft": (3, 3), "essay": (6, 3), "evaluation": (6, 6)}  # (generations, LLM calls)


SECRET = "sk-test-SECRET-XYZ"


def sha(text):
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_shas(project, rows):
    return {sha(project.read(r["stage"], r["gen_id"], "prompt.txt")) for r in rows}


def run_cohort(project, cohort_id, stub, *args, **kwargs):
    return run_luigi(project, "RunCohort", "--cohort-id", cohort_id, *args, base_url=stub.base_url, **kwargs)


def plan_table(result) -> dict:
    """stage -> (generations, LLM calls, done, to run) from ``daydream plan`` output."""
    table = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 5 and parts[0] in ("draft", "essay", "evaluation"):
            table[parts[0]] = tuple(int(p) for p in parts[1:])
    return table


# --- one tiny cohort, run once for the module -------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The TINY cohort: ``daydream plan`` before, one luigi run, the stub's requests of that run."""
    project = make_project(tmp_path_factory.mktemp("tiny"))
    write_spec(project, "c1", TINY)
    with StubLLMServer() as srv:
        plan_before = run_daydream(project, "plan", "c1")
        written_by_plan = sorted(p for p in project.data_root.rglob("*") if p.is_file())
        run = run_cohort(project, "c1", srv)
        yield dict(project=project, stub=srv, plan_before=plan_before, written_by_plan=written_by_plan, run=run,
                   requests=srv.requests)


def test_run_completes_with_the_models_answers(tiny):
    project, run = tiny["project"], tiny["run"]
    assert run.returncode == 0, output_of(run)
    rows = project.membership("c1")
    assert {s: len(project.membership("c1", s)) for s in TINY_COUNTS} == {s: n for s, (n, _) in TINY_COUNTS.items()}
    for row in rows:
        assert project.read(row["stage"], row["gen_id"], "parsed.txt").strip(), row
    for row in project.membership("c1", "evaluation"):
        prompt = project.read("evaluation", row["gen_id"], "prompt.txt")
        parsed = project.read("evaluation", row["gen_id"], "parsed.txt")
        assert float(parsed) == expected_score(prompt), row["gen_id"]
        assert project.meta("evaluation", row["gen_id"])["score"] == expected_score(prompt)
    assert (project.data_root / "cohorts" / "c1" / "reports" / "summary.md").exists()
    assert (project.data_root / "cohorts" / "c1" / "run_complete.json").exists()


def test_replayed_tables_match_the_files_on_disk(tiny):
    import csv

    project = tiny["project"]
    tables = project.data_root / "tables"
    with open(tables / "evaluation_results.csv", newline="") as fh:
        evaluations = {r["gen_id"]: r for r in csv.DictReader(fh)}
    with open(tables / "generation_results.csv", newline="") as fh:
        generations = {r["gen_id"]: r for r in csv.DictReader(fh)}
    for row in project.membership("c1", "evaluation"):
        table_row = evaluations[row["gen_id"]]
        assert float(table_row["score"]) == float(project.read("evaluation", row["gen_id"], "parsed.txt"))
        essay = project.meta("essay", row["parent_gen_id"])
        assert (table_row["essay_gen_id"], table_row["draft_gen_id"]) == (essay["gen_id"], essay["parent_gen_id"])
        assert table_row["essay_template"] == essay["template_id"] and table_row["status"] == "done"
        assert "c1" in table_row["cohort_ids"].split(";")
    for row in project.membership("c1"):
        if row["stage"] != "evaluation":
            meta = project.meta(row["stage"], row["gen_id"])
            table_row = generations[row["gen_id"]]
            assert table_row["status"] == "done" and table_row["template_id"] == meta["template_id"]
            assert str(table_row["completion_tokens"] or "") == str(meta.get("completion_tokens") or "")
    assert set(evaluations) == {r["gen_id"] for r in project.membership("c1", "evaluation")}


def test_metadata_records_the_call(tiny):
    project = tiny["project"]
    for row in project.llm_rows("c1"):
        meta = project.meta(row["stage"], row["gen_id"])
        prompt = project.read(row["stage"], row["gen_id"], "prompt.txt")
        raw = project.read(row["stage"], row["gen_id"], "raw.txt")
        parsed = project.read(row["stage"], row["gen_id"], "parsed.txt")
        assert meta["status"] == "done"
        assert meta["model"] in ("google/gemini-2.5-flash", "anthropic/claude-sonnet-4")
        assert meta["provider_model"] == meta["model"]  # the stub echoes the requested model
        assert meta["finish_reason"] == "stop"
        assert meta["prompt_tokens"] > 0 and meta["completion_tokens"] > 0
        assert meta["attempts"] == 1
        assert meta["prompt_sha256"] == sha(prompt)
        assert meta["raw_sha256"] == sha(raw)
        assert meta["parsed_sha256"] == sha(parsed)


def test_one_request_per_llm_generation(tiny):
    project, requests = tiny["project"], tiny["requests"]
    llm_rows = project.llm_rows("c1")
    assert len(llm_rows) == sum(calls for _, calls in TINY_COUNTS.values())
    assert len(requests) == len(llm_rows)
    assert all(r["status"] == 200 and r["fault"] is None for r in requests)
    assert sorted(r["prompt_sha"] for r in requests) == sorted(prompt_shas(project, llm_rows))


def test_copy_essays_are_the_draft_without_a_call(tiny):
    project = tiny["project"]
    copies = [r for r in project.membership("c1", "essay") if r["template_id"] == "draft-as-essay"]
    assert len(copies) == 3
    for row in copies:
        assert project.read("essay", row["gen_id"], "parsed.txt") == \
            project.read("draft", row["parent_gen_id"], "parsed.txt")
        assert not (project.gen_dir("essay", row["gen_id"]) / "prompt.txt").exists()
        assert "called_at" not in project.meta("essay", row["gen_id"])
    # their evaluations still ran, on the copied text
    copy_ids = {r["gen_id"] for r in copies}
    assert sum(1 for r in project.membership("c1", "evaluation") if r["parent_gen_id"] in copy_ids) == 3


def test_plan_counts_before_and_after(tiny):
    project, before = tiny["project"], tiny["plan_before"]
    assert before.returncode == 0, output_of(before)
    assert plan_table(before) == {s: (n, calls, 0, calls) for s, (n, calls) in TINY_COUNTS.items()}
    assert "LLM calls: 12 in all, 0 already done, 12 to make" in before.stdout
    assert tiny["written_by_plan"] == []
    after = run_daydream(project, "plan", "c1")
    assert after.returncode == 0, output_of(after)
    assert plan_table(after) == {s: (n, calls, calls, 0) for s, (n, calls) in TINY_COUNTS.items()}
    assert "LLM calls: 12 in all, 12 already done, 0 to make" in after.stdout


def test_status_after_a_clean_run(tiny):
    result = run_daydream(tiny["project"], "status", "c1")
    assert result.returncode == 0, output_of(result)
    assert "failed (" not in result.stdout


def test_rerun_makes_no_requests(tiny):
    project = tiny["project"]
    with StubLLMServer() as srv:
        again = run_cohort(project, "c1", srv)
        assert again.returncode == 0, output_of(again)
        assert srv.requests == []
    # and after dropping the run marker (RunCohort really runs) still nothing is bought
    (project.data_root / "cohorts" / "c1" / "run_complete.json").unlink()
    with StubLLMServer() as srv:
        again = run_cohort(project, "c1", srv)
        assert again.returncode == 0, output_of(again)
        assert srv.requests == []
    assert (project.data_root / "cohorts" / "c1" / "run_complete.json").exists()


def test_parallel_workers_complete(project, stub):
    write_spec(project, "c1", TINY)
    run = run_cohort(project, "c1", stub, "--workers", "2", timeout=60)
    assert run.returncode == 0, output_of(run)
    assert len(stub.requests) == len(project.llm_rows("c1"))
    assert all((project.gen_dir(r["stage"], r["gen_id"]) / "parsed.txt").exists() for r in project.membership("c1"))


# --- interruption -------------------------------------------------------------------------------

def test_killed_run_resumes_without_paying_twice(project, make_stub):
    write_spec(project, "c1", SPEC_24)
    srv = make_stub(latency=0.2)
    workers = 2
    proc = start_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", str(workers),
                       base_url=srv.base_url)
    gens = project.data_root / "gens"
    deadline = time.monotonic() + 30
    try:
        while len(list(gens.glob("*/*/parsed.txt"))) < 5:
            assert proc.poll() is None, (project.root / "luigi.out").read_text()
            assert time.monotonic() < deadline, "no progress within 30 s"
            time.sleep(0.02)
    finally:
        kill_group(proc)
    time.sleep(0.5)  # requests in flight at the kill finish on the server side (latency 0.2 s)

    llm_rows = project.llm_rows("c1")
    assert len(llm_rows) == 24
    kept = [r for r in llm_rows if (project.gen_dir(r["stage"], r["gen_id"]) / "raw.txt").exists()]
    assert 5 <= len(kept) < len(llm_rows), "the kill should land mid-run"
    kept_shas = prompt_shas(project, kept)
    first = srv.requests

    rerun = run_cohort(project, "c1", srv, "--workers", str(workers))
    assert rerun.returncode == 0, output_of(rerun)
    assert all((project.gen_dir(r["stage"], r["gen_id"]) / "parsed.txt").exists()
               for r in project.membership("c1"))
    assert len(prompt_shas(project, llm_rows)) == len(llm_rows)
    second = srv.requests[len(first):]

    # a response on disk before the kill is never bought again
    assert not kept_shas & {r["prompt_sha"] for r in second}
    # the rerun buys exactly the generations that had no response
    todo_shas = prompt_shas(project, [r for r in llm_rows if r not in kept])
    assert sorted(r["prompt_sha"] for r in second) == sorted(todo_shas)
    # the first run bought each kept response once, plus at most one call in flight per worker
    assert sorted(r["prompt_sha"] for r in first if r["prompt_sha"] in kept_shas) == sorted(kept_shas)
    in_flight = [r for r in first if r["prompt_sha"] not in kept_shas]
    assert len(in_flight) <= workers
    assert srv.successes == len(llm_rows) + len(in_flight)
    for row in project.membership("c1", "evaluation"):
        prompt = project.read("evaluation", row["gen_id"], "prompt.txt")
        assert float(project.read("evaluation", row["gen_id"], "parsed.txt")) == expected_score(prompt)


# --- retries and fatal errors -------------------------------------------------------------------

def test_transient_errors_are_retried(project, make_stub):
    write_spec(project, "c1", TINY)
    srv = make_stub(faults=["429-ra0", "500", "500"])
    run = run_cohort(project, "c1", srv, "--llm-max-attempts", "6")
    assert run.returncode == 0, output_of(run)
    llm_rows = project.llm_rows("c1")
    assert srv.successes == len(llm_rows)
    assert [r["status"] for r in srv.requests[:4]] == [429, 500, 500, 200]
    attempts = {r["gen_id"]: project.meta(r["stage"], r["gen_id"])["attempts"] for r in llm_rows}
    retried = [g for g, n in attempts.items() if n == 4]
    assert len(retried) == 1 and sorted(attempts.values()) == [1] * (len(llm_rows) - 1) + [4]
    failures = [e for e in project.events() if e["type"] == "llm_call_failed"]
    assert [(e["gen_id"], e["attempt"], e["status"], e["will_retry"]) for e in failures] == \
        [(retried[0], 1, 429, True), (retried[0], 2, 500, True), (retried[0], 3, 500, True)]


def test_rejected_key_fails_at_once_without_leaking_it(project, make_stub):
    write_spec(project, "c1", TINY)
    srv = make_stub(faults=["401"])
    env = {"OPENROUTER_API_KEY": SECRET}
    run = run_cohort(project, "c1", srv, env=env)
    assert run.returncode == 30, output_of(run)
    assert srv.requests[0]["status"] == 401 and srv.requests[0]["auth"]  # the key was sent, and echoed back

    failed_meta = [project.meta(r["stage"], r["gen_id"]) for r in project.membership("c1")]
    failed_meta = [m for m in failed_meta if m.get("status") == "failed"]
    first = [m for m in failed_meta if m["stage"] == "draft"]
    assert len(first) == 1, failed_meta
    bad = first[0]
    # no retries of a 401: exactly one request for that prompt
    bad_sha = sha(project.read("draft", bad["gen_id"], "prompt.txt"))
    assert [r["status"] for r in srv.requests if r["prompt_sha"] == bad_sha] == [401]
    assert "401" in bad["error"]
    assert "OPENROUTER_API_KEY" in bad["error"], bad["error"]
    events = [e for e in project.events() if e["type"] == "llm_call_failed"]
    assert [(e["gen_id"], e["status"], e["will_retry"]) for e in events] == [(bad["gen_id"], 401, False)]

    status = run_daydream(project, "status", "c1")
    assert status.returncode == 1, output_of(status)
    assert f"draft {bad['gen_id']}:" in status.stdout

    texts = [run.stdout, run.stderr, status.stdout, status.stderr]
    texts += [p.read_bytes().decode("utf-8", "replace") for p in project.data_root.rglob("*") if p.is_file()]
    assert not [t for t in texts if SECRET in t]

    # the next run retries the failure and completes
    run2 = run_cohort(project, "c1", srv, env=env)
    assert run2.returncode == 0, output_of(run2)
    assert run_daydream(project, "status", "c1").returncode == 0


# --- regenerate ---------------------------------------------------------------------------------

def test_regenerate_archives_and_rebuys_only_dependents(project, stub):
    write_spec(project, "c1", TINY)
    assert run_cohort(project, "c1", stub).returncode == 0
    draft = project.membership("c1", "draft")[0]["gen_id"]
    old_raw = project.read("draft", draft, "raw.txt")
    essays = [r for r in project.membership("c1", "essay") if r["parent_gen_id"] == draft]
    evals = [r for r in project.membership("c1", "evaluation") if r["parent_gen_id"] in {e["gen_id"] for e in essays}]
    affected = {r["gen_id"] for r in essays + evals} | {draft}
    rebuy = [r for r in project.llm_rows("c1") if r["gen_id"] in affected]
    assert len(rebuy) == 1 + 1 + 2  # the draft, its LLM essay, the evaluations of both its essays
    others = {r["gen_id"]: (project.gen_dir(r["stage"], r["gen_id"]) / "raw.txt").stat().st_mtime_ns
              for r in project.llm_rows("c1") if r["gen_id"] not in affected}

    result = run_daydream(project, "regenerate", "draft", draft)
    assert result.returncode == 0, output_of(result)
    gdir = project.gen_dir("draft", draft)
    assert not (gdir / "raw.txt").exists()
    archived = list(gdir.glob("raw.txt.superseded-*"))
    assert len(archived) == 1 and archived[0].read_text(encoding="utf-8") == old_raw

    before = len(stub.requests)
    run = run_cohort(project, "c1", stub)
    assert run.returncode == 0, output_of(run)
    new = stub.requests[before:]
    assert sorted(r["prompt_sha"] for r in new) == sorted(prompt_shas(project, rebuy))
    assert (gdir / "raw.txt").exists()
    assert others == {g: (project.gen_dir(s, g) / "raw.txt").stat().st_mtime_ns
                      for s, g in ((r["stage"], r["gen_id"]) for r in project.llm_rows("c1"))
                      if g not in affected}


# --- the original catalog -----------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED_RAW_ROOT.is_dir(), reason=f"no original catalog at {SHARED_RAW_ROOT}")

ORIGINAL = """\
concepts:
  ids: [dearth-ai-discoveries, default-mode-network, economic-moat, generator-verifier-gap]
  k_max: 3
  description_level: paragraph
axes:
  draft_template: [creative-synthesis-v7]
  draft_llm: [gemini_25_pro]
  essay_template: [parsed-from-links-v1, synthesis-theme-narrative-v19]
  essay_llm: [deepseek_r1_p]
  evaluation_template: [daydreaming-verification-v3]
  evaluation_llm: [sonnet-4]
  evaluation_template_replicate: [1, 2]
"""


@needs_shared
def test_original_catalog_cohort_runs(tmp_path, stub):
    project = make_project(tmp_path / "proj", raw_root=SHARED_RAW_ROOT)
    write_spec(project, "orig", ORIGINAL)
    run = run_cohort(project, "orig", stub)
    assert run.returncode == 0, output_of(run)
    counts = {s: len(project.membership("orig", s)) for s in ("draft", "essay", "evaluation")}
    assert counts == {"draft": 4, "essay": 8, "evaluation": 16}
    llm_rows = project.llm_rows("orig")
    assert len(llm_rows) == 4 + 4 + 16 == len(stub.requests)
    for row in project.membership("orig", "evaluation"):
        prompt = project.read("evaluation", row["gen_id"], "prompt.txt")
        assert float(project.read("evaluation", row["gen_id"], "parsed.txt")) == expected_score(prompt)
    assert (project.data_root / "cohorts" / "orig" / "reports" / "summary.md").exists()


@needs_shared
def test_original_two_phase_spec_compiles(project):
    result = run_daydream(project, "plan", "original-two-phase", "--raw-root", str(SHARED_RAW_ROOT),
                          "--cohorts-root", str(REPO / "cohorts"))
    assert result.returncode == 0, output_of(result)
    table = plan_table(result)
    assert set(table) == {"draft", "essay", "evaluation"} and all(n > 0 for n, *_ in table.values())
    assert re.search(r"LLM calls: \d+ in all, 0 already done", result.stdout)


def test_missing_description_level_falls_back_and_says_so(project, stub):
    # the demo catalog has sentence and paragraph texts only
    write_spec(project, "art", TINY.replace("description_level: paragraph", "description_level: article"))
    run = run_cohort(project, "art", stub)
    assert run.returncode == 0, output_of(run)
    for row in project.membership("art", "draft"):
        meta = project.meta("draft", row["gen_id"])
        assert meta["description_level_fallbacks"] == {cid: "paragraph" for cid in meta["concept_ids"]}
        prompt = project.read("draft", row["gen_id"], "prompt.txt")
        assert "A flywheel is a loop" in prompt or "Producing candidates is cheap" in prompt


def test_forked_run_logs_to_stderr_at_the_level_asked_for(project, stub):
    # --workers 2: the chunks run in a spawned interpreter, whose logging is set up anew
    write_spec(project, "c1", TINY)
    result = run_luigi(project, "RunCohort", "--cohort-id", "c1", "--workers", "2", "--log-level", "WARNING",
                       base_url=stub.base_url)
    assert result.returncode == 0, output_of(result)
    assert "INFO" not in result.stderr, result.stderr[-3000:]
    run_log = next((project.data_root / "logs").glob("*.log"))
    assert "INFO" in run_log.read_text()   # the chatter went to the run's log instead
