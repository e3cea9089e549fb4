"""Many workers, one scheduler: two ``luigi`` processes run the same cohort against a real ``luigid``.

What a user checks: each generation was bought once (no two workers ran the same generation), the
event log says each generation completed once, and the tables are those of a single-process run.
"""
import subprocess
from collections import Counter

import pytest

from pipeline.stub_server import StubLLMServer

from conftest import command_env, kill_group, luigi_argv, make_project, output_of, run_luigi, write_spec
from trust_checks import assert_paid_once, assert_same_tables, luigid, recording_stub, result_tables

pytestmark = pytest.mark.slow

# 6 drafts, 12 essays (6 copies), 24 evaluations: 42 generations, 36 LLM calls
SPEC_42 = """\
concepts: {ids: [idle-recombination, critic-filter, feedback-flywheel, search-over-ideas], k_max: 2, description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  essay_template: [short-essay-v1, draft-as-essay]
  essay_llm: [sonnet_4]
  evaluation_template: [mechanism-check-v1, clarity-v1]
  evaluation_llm: [sonnet_4]
"""
# luigi.cfg [retcode]: a worker that found the cohort run by the other one exits "already running" or
# "not run"; only a failure (30) or worse is wrong
ACCEPTED_EXITS = {0, 10, 25}


def test_two_workers_one_scheduler_buy_each_generation_once(tmp_path, project, make_stub):
    reference = make_project(tmp_path / "reference")
    write_spec(reference, "c1", SPEC_42)
    with StubLLMServer() as ref_srv:
        single = run_luigi(reference, "RunCohort", "--cohort-id", "c1", "--workers", "2", base_url=ref_srv.base_url)
    assert single.returncode == 0, output_of(single)

    write_spec(project, "c1", SPEC_42)
    srv, admitted = recording_stub(make_stub, latency=0.1)
    with luigid(tmp_path / "luigid") as (url, state, logdir, luigid_out):
        args = ("RunCohort", "--cohort-id", "c1", "--workers", "2", "--scheduler-url", url)
        procs, logs = [], []
        try:
            for n in range(2):
                logs.append(project.root / f"worker{n}.out")
                with open(logs[-1], "wb") as out:
                    procs.append(subprocess.Popen(luigi_argv(project, *args, local_scheduler=False), cwd=project.root,
                                                  env=command_env(base_url=srv.base_url), stdout=out,
                                                  stderr=subprocess.STDOUT, start_new_session=True))
            codes = [p.wait(timeout=120) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    kill_group(p)
        outputs = "\n".join(f"--- worker {n} (exit {c})\n{log.read_text()[-3000:]}"
                            for n, (c, log) in enumerate(zip(codes, logs)))
        assert set(codes) <= ACCEPTED_EXITS and 0 in codes, outputs
        if not (project.data_root / "cohorts" / "c1" / "run_complete.json").exists():
            final = run_luigi(project, *args, base_url=srv.base_url, local_scheduler=False)
            assert final.returncode == 0, output_of(final) + outputs

    rows = project.membership("c1")
    assert len(rows) == 42
    assert all((project.gen_dir(r["stage"], r["gen_id"]) / "parsed.txt").exists() for r in rows)
    assert_paid_once(project, "c1", srv)
    completed = Counter(e["gen_id"] for e in project.events() if e["type"] == "generation_completed")
    twice = {g: n for g, n in completed.items() if n > 1}
    assert not twice, f"generations completed more than once: {twice}"
    assert set(completed) == {r["gen_id"] for r in rows}
    assert_same_tables(project, result_tables(reference))
