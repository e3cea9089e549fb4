"""A way out of every failure, as a user meets them through `luigi` and `daydream`:

- a metadata.json deleted (as the corrupt-metadata error advises) is reseeded by the next run;
- answers saved but unparsable get `daydream reparse` once the parser is fixed, with no LLM call;
- a blank answer that will never parse points at `daydream regenerate`;
- dependents of a failed generation are reported as blocked, once, naming the failed parent.
"""
import csv
import shutil
from dataclasses import dataclass

import pytest

from tests.support.stub_server import StubLLMServer

from conftest import RAW_ROOT, SMALL, make_project, output_of, run_daydream, run_luigi, write_spec

pytestmark = pytest.mark.slow


def run_cohort(project, srv, *args):
    return run_luigi(project, "RunCohort", "--cohort-id", "c1", *args, base_url=srv.base_url, timeout=90)


def test_deleted_metadata_is_reseeded_by_the_next_run(project, stub):
    """The corrupt-JSON error says "restore it or delete it to regenerate": deleting it must work."""
    write_spec(project, "c1", SMALL)
    first = run_cohort(project, stub)
    assert first.returncode == 0, output_of(first)
    evaluation = project.membership("c1", "evaluation")[0]["gen_id"]
    gdir = project.gen_dir("evaluation", evaluation)
    (gdir / "metadata.json").unlink()
    (gdir / "parsed.txt").unlink()  # as if it had failed: the corrupt file was its only record
    before = len(stub.requests)
    second = run_cohort(project, stub)
    assert second.returncode == 0, output_of(second)
    assert len(stub.requests) == before  # its saved answer is parsed again, not bought again
    assert project.meta("evaluation", evaluation)["status"] == "done"
    assert run_daydream(project, "status", "c1").returncode == 0


def set_draft_parser(project, parser):
    path = project.raw_root / "draft_templates.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for row in rows:
        row["parser"] = parser if row["template_id"] == "links-brainstorm-v1" else row["parser"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_reparse_after_a_parser_fix_needs_no_llm_call(tmp_path):
    """The draft template names the wrong parser, so both drafts' answers fail to parse: status
    says to fix the parser and reparse; after the fix `daydream reparse` parses them without a
    call, and the next run buys only the essays and evaluations."""
    shutil.copytree(RAW_ROOT, tmp_path / "raw")
    project = make_project(tmp_path / "proj", raw_root=tmp_path / "raw")
    write_spec(project, "c1", SMALL)
    set_draft_parser(project, "essay_idea_last")  # the stub's drafts have no <essay-idea> block
    with StubLLMServer() as srv:
        first = run_cohort(project, srv)
        assert first.returncode == 30, output_of(first)
        assert len(srv.requests) == 2
        drafts = [r["gen_id"] for r in project.membership("c1", "draft")]
        status = run_daydream(project, "status", "c1")
        for gen_id in drafts:
            assert f"`daydream reparse draft {gen_id}`" in status.stdout, output_of(status)

        set_draft_parser(project, "essay_block_lenient")  # the fix
        reparse = run_daydream(project, "reparse", "--cohort", "c1")  # run_daydream: no LLM reachable
        assert reparse.returncode == 0, output_of(reparse)
        assert "re-parsed 2 of 2" in reparse.stdout, output_of(reparse)
        assert len(srv.requests) == 2
        for gen_id in drafts:
            assert project.meta("draft", gen_id)["status"] == "done"
            assert (project.gen_dir("draft", gen_id) / "parsed.txt").read_text(encoding="utf-8").strip()
        reused = [e["gen_id"] for e in project.events() if e["type"] == "generation_reused"]
        assert sorted(reused) == sorted(drafts)

        second = run_cohort(project, srv)
        assert second.returncode == 0, output_of(second)
        assert len(srv.requests) == 6  # 2 drafts once, then 2 essays and 2 evaluations
    assert run_daydream(project, "status", "c1").returncode == 0


def test_reparse_refuses_what_has_no_saved_answer(project, stub):
    write_spec(project, "c1", SMALL)
    assert run_luigi(project, "BuildCohort", "--cohort-id", "c1", timeout=60).returncode == 0
    draft = project.membership("c1", "draft")[0]["gen_id"]
    out = run_daydream(project, "reparse", "draft", draft)
    assert out.returncode == 1 and "no saved answer" in out.stdout, output_of(out)
    out = run_daydream(project, "reparse", "draft")
    assert out.returncode == 2 and out.stderr.startswith("daydream: error: "), output_of(out)


@dataclass
class Blank:
    project: object
    run: object          # the luigi run
    status: object       # `daydream status c1` right after it
    bad: str             # the draft with the blank answer, its essay and evaluation
    essay: str
    evaluation: str
    failed_events: set   # gen_ids with a generation_failed event
    summary: str         # the cohort's summary.md


@pytest.fixture(scope="module")
def blank(tmp_path_factory):
    """The first draft's answer is blank (whitespace only): it fails to parse, its essay and
    evaluation are blocked; status and the run's output say so."""
    project = make_project(tmp_path_factory.mktemp("blank"))
    write_spec(project, "c1", SMALL)
    with StubLLMServer(faults=["blank_content"]) as srv:
        run = run_cohort(project, srv)
    rows = {r["gen_id"]: r for r in project.membership("c1")}
    bad = next(g for g, r in rows.items() if r["stage"] == "draft"
               and not (project.gen_dir("draft", g) / "parsed.txt").exists())
    essay = next(g for g, r in rows.items() if r["parent_gen_id"] == bad)
    evaluation = next(g for g, r in rows.items() if r["parent_gen_id"] == essay)
    failed_events = {e["gen_id"] for e in project.events() if e["type"] == "generation_failed"}
    summary = (project.data_root / "cohorts" / "c1" / "reports" / "summary.md").read_text(encoding="utf-8")
    return Blank(project, run, run_daydream(project, "status", "c1"), bad, essay, evaluation, failed_events, summary)


def test_blank_answer_points_at_regenerate(blank):
    project, run, status, bad = blank.project, blank.run, blank.status, blank.bad
    assert run.returncode == 30, output_of(run)
    assert f"`daydream regenerate draft {bad}`" in status.stdout, output_of(status)
    assert status.returncode == 1

    out = run_daydream(project, "regenerate", "draft", bad)
    assert out.returncode == 0, output_of(out)
    with StubLLMServer() as srv:
        rerun = run_cohort(project, srv)
        assert len(srv.requests) == 3  # the draft, its essay and its evaluation
    assert rerun.returncode == 0, output_of(rerun)


def test_dependents_of_a_failure_are_reported_as_blocked_once(blank):
    run, status, bad, essay, evaluation = blank.run, blank.status, blank.bad, blank.essay, blank.evaluation
    counts = {line.split()[0]: line.split()[1:] for line in status.stdout.splitlines()
              if line.split()[:1] in (["draft"], ["essay"], ["evaluation"]) and not line.startswith(" ")}
    # total done failed blocked pending
    assert counts == {"draft": ["2", "1", "1", "0", "0"], "essay": ["2", "1", "0", "1", "0"],
                      "evaluation": ["2", "1", "0", "1", "0"]}, status.stdout
    failed_section = status.stdout.split("failed (")[1].split("\n\n")[0]
    assert bad in failed_section and essay not in failed_section and evaluation not in failed_section
    assert f"1 essay, 1 evaluation waiting on draft {bad}" in status.stdout, status.stdout
    log = run.stdout + run.stderr
    assert log.count(f"BLOCKED essay {essay}: draft {bad} failed") == 1, log
    assert log.count(f"BLOCKED evaluation {evaluation}: draft {bad} failed") == 1, log
    assert "FAILED essay" not in log and "FAILED evaluation" not in log
    assert f"FAILED draft {bad}: draft {bad}" not in log  # no doubled prefix
    assert "1 generation(s) failed, 2 more blocked behind them" in log
    assert blank.failed_events == {bad}


def test_report_counts_the_blocked_apart_from_failures(blank):
    bad, summary = blank.bad, blank.summary
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in summary.splitlines() if line.startswith("|")]
    assert ["stage", "members", "done", "failed", "blocked", "pending"] in cells, summary
    assert ["essay", "2", "1", "0", "1", "0"] in cells and ["evaluation", "2", "1", "0", "1", "0"] in cells, summary
    assert "## Failures (1)" in summary and bad in summary.split("## Failures (1)")[1].split("##")[0]
