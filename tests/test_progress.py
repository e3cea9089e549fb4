"""The progress display's functional core, the chunk runner's bookkeeping and the generation
target, on real files and without Luigi running; and that ``import pipeline.spec`` loads no Luigi."""
import json
import subprocess
import sys

import pytest

from pipeline import chunks, progress, runlog, store
from pipeline.paths import Paths

RUN, STARTED = "run-1", "2026-01-01T00:00:00.000000Z"


def gen(paths, stage, gen_id, parent="", parsed=None, meta=None, marker=None):
    gdir = paths.gen_dir(stage, gen_id)
    gdir.mkdir(parents=True)
    (gdir / "metadata.json").write_text(json.dumps({"stage": stage, "gen_id": gen_id, **(meta or {})}))
    if parsed is not None:
        (gdir / "parsed.txt").write_text(parsed)
    if marker is not None:
        (gdir / "failed.json").write_text(json.dumps(marker))
    return {"stage": stage, "gen_id": gen_id, "parent_gen_id": parent}


@pytest.fixture
def cohort(tmp_path):
    paths = Paths(tmp_path / "data")
    called = {"called_at": "2026-01-01T00:00:05.000000Z", "prompt_tokens": 1000, "completion_tokens": 500,
              "cost": 0.01}
    rows = [
        gen(paths, "draft", "d_1", parsed="x", meta=called),
        gen(paths, "draft", "d_2", parsed="x", meta={"called_at": "2025-12-31T00:00:00.000000Z",
                                                   "prompt_tokens": 7, "completion_tokens": 7}),  # an earlier run's
        gen(paths, "draft", "d_3", marker={"run_id": RUN, "error": "HTTP 400"}, meta=called),
        gen(paths, "essay", "e_1", "d_1", parsed="x"),
        gen(paths, "essay", "e_3", "d_3", marker={"run_id": RUN, "blocked_by": "draft d_3"}),
        gen(paths, "essay", "e_2", "d_2", marker={"run_id": "an-earlier-run", "error": "boom"}),  # retried now
        gen(paths, "evaluation", "v_1", "e_1"),
    ]
    return paths, rows


def test_tally_counts_what_this_run_settled(cohort):
    paths, rows = cohort
    counts = progress.Tally(paths, rows, RUN, STARTED).scan().counts()
    assert counts["stages"] == {"draft": [2, 3], "essay": [1, 3], "evaluation": [0, 1]}
    assert (counts["failed"], counts["blocked"], counts["settled"], counts["total"]) == (1, 1, 5, 7)
    # calls made in this run only: d_1 and the failed d_3 (a failed parse still paid for its call)
    assert (counts["calls"], counts["tokens"], counts["cost"]) == (2, 3000, 0.02)


def test_tally_looks_again_only_at_what_is_not_settled(cohort):
    paths, rows = cohort
    tally = progress.Tally(paths, rows, RUN, STARTED).scan()
    (paths.gen_dir("evaluation", "v_1") / "parsed.txt").write_text("7.0\n")
    (paths.gen_dir("draft", "d_1") / "parsed.txt").unlink()  # settled already: not read again
    counts = tally.scan().counts()
    assert counts["stages"]["evaluation"] == [1, 1] and counts["stages"]["draft"] == [2, 3]


def test_line_has_per_stage_counts_failures_cost_rate_and_eta(cohort):
    paths, rows = cohort
    counts = progress.Tally(paths, rows, RUN, STARTED).scan().counts()
    line = progress.format_line("c1", counts, elapsed_s=10.0, settled_before=1)
    assert line == ("c1: draft 2/3  essay 1/3  evaluation 0/1 | 1 failed, 1 blocked | 2 calls, 3.0k tokens, "
                    "$0.0200 | 0.4/s, ETA 0:05")
    assert progress.rate_and_eta(counts, 10.0, settled_before=5) == "-/s, ETA -"  # nothing settled yet here
    assert progress.percent(counts) == 71


def test_display_reports_to_luigi_and_prints_plain_lines_when_not_a_terminal(cohort, monkeypatch, capsys):
    paths, rows = cohort
    monkeypatch.setattr(progress, "POLL_S", 0.01)
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)
    reported = []
    display = progress.Display(progress.Tally(paths, rows, RUN, STARTED), "c1", lambda p, m: reported.append((p, m)))
    with display:
        (paths.gen_dir("evaluation", "v_1") / "parsed.txt").write_text("7.0\n")
        import time
        time.sleep(0.2)
    assert reported[-1][0] == 85 and reported[-1][1].startswith("c1: draft 2/3  essay 1/3  evaluation 1/1")
    assert "c1: draft 2/3" in capsys.readouterr().err
    assert display.cpu_s > 0


def test_settle_blocked_marks_the_children_of_what_failed_in_this_run(cohort):
    paths, rows = cohort
    child = gen(paths, "evaluation", "v_3", "e_3")
    todo = store.pending(paths, rows + [child])  # without a run id: everything without parsed.txt
    left = chunks.settle_blocked(paths, todo, RUN)
    # e_3 and its child v_3 are blocked behind d_3; e_2's parent failed in an earlier run: it is tried
    assert [r["gen_id"] for r in left] == ["d_3", "e_2", "v_1"]
    marker = json.loads((paths.gen_dir("evaluation", "v_3") / "failed.json").read_text())
    assert marker["run_id"] == RUN and marker["blocked_by"] == "draft d_3"


def test_missing_pools_names_what_the_scheduler_lacks():
    assert chunks.missing_pools({"llm_paid", "llm_free"}, [{"name": "llm_paid", "num_total": 4}]) == ["llm_free"]
    assert chunks.missing_pools({"llm_paid"}, [{"name": "llm_paid", "num_total": 4}]) == []


def test_runner_compiles_the_templates_its_task_processes_render(tmp_path):
    from pipeline.catalog import load_catalog
    from pipeline.prompts import render_essay
    from tests.support.project import RAW_ROOT

    catalog = load_catalog(Paths(tmp_path / "data", raw_root=RAW_ROOT))
    # an unknown template and a row without one are left for their generations to report
    rows = [{"stage": "essay", "template_id": "short-essay-v1"}, {"stage": "essay", "template_id": "no-such"},
            {"stage": "draft", "gen_id": "d_1"}]
    chunks.compile_templates(catalog, rows)
    compiled_again = []
    catalog._env.from_string = lambda source: compiled_again.append(source)
    assert "the draft" in render_essay(catalog, "short-essay-v1", "the draft")
    assert compiled_again == []  # a task process forked from the runner compiles nothing


def test_log_level_counts_as_asking_for_luigis_log():
    assert runlog.log_level_asked(["luigi", "--log-level", "DEBUG"])
    assert runlog.log_level_asked(["luigi", "--log-level=INFO"])
    assert not runlog.log_level_asked(["luigi", "--workers", "2"])


def test_the_terminal_gets_the_level_asked_for():
    assert runlog.console_level(["luigi", "--log-level", "WARNING"], verbose=False) == "WARNING"
    assert runlog.console_level(["luigi", "--log-level=DEBUG"], verbose=False) == "DEBUG"
    assert runlog.console_level(["luigi", "--workers", "2"], verbose=False) == "WARNING"
    assert runlog.console_level(["luigi", "--log-level", "ERROR"], verbose=True) == "INFO"


def test_generation_target_counts_settled_only_for_runcohort(cohort):
    from pipeline.tasks import GenerationTarget

    paths, _ = cohort
    assert GenerationTarget(paths, "draft", "d_1", RUN).exists()
    assert not GenerationTarget(paths, "draft", "d_3", RUN).exists()  # failed: not made
    assert GenerationTarget(paths, "draft", "d_3", RUN, settled_counts=True).exists()  # but settled in this run
    assert not GenerationTarget(paths, "essay", "e_2", RUN, settled_counts=True).exists()  # failed in another run


def test_importing_the_spec_module_loads_no_luigi():
    code = "import sys, pipeline.spec; print(sorted(m for m in sys.modules if m.startswith(('luigi', 'pipeline.tasks'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
