"""Many workers, one scheduler: two ``luigi`` processes run the same cohort against a real ``luigid``.

What a user checks: both processes did work, each generation was bought once (no two workers ran
the same generation), the event log says each generation completed once, both exit 0, and the
tables are those of a single-process run.
"""
import re
import subprocess
from collections import Counter

import pytest

from tests.support.stub_server import StubLLMServer

from conftest import command_env, kill_group, luigi_argv, make_project, output_of, run_luigi, write_spec
from trust_checks import assert_paid_once, assert_same_tables, luigid, result_tables

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
# what each process logs per generation it finished (tasks.py)
FINISHED = re.compile(r"^INFO: (completed|copied) (draft|essay|evaluation) (\S+) in ", re.M)


def test_two_workers_one_scheduler_buy_each_generation_once(tmp_path, project, make_stub):
    reference = make_project(tmp_path / "reference")
    write_spec(reference, "c1", SPEC_42)
    with StubLLMServer() as ref_srv:
        single = run_luigi(reference, "RunCohort", "--cohort-id", "c1", "--workers", "2", base_url=ref_srv.base_url)
    assert single.returncode == 0, output_of(single)

    write_spec(project, "c1", SPEC_42)
    srv = make_stub(latency=0.1)
    # started as scripts/luigid does: with the project's config, so it has the model pools ([resources])
    with luigid(tmp_path / "luigid", env=command_env({"LUIGI_CONFIG_PATH": str(project.root / "luigi.cfg")})) \
            as (url, *_):
        procs, logs = [], []
        try:
            # distinct command lines: luigi's lock refuses a second identical command on one machine
            for n, workers in enumerate(("2", "3")):
                # --verbose: each generation's "completed ..." line on the process's own output
                args = ("RunCohort", "--cohort-id", "c1", "--workers", workers, "--scheduler-url", url, "--verbose")
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
        assert codes == [0, 0], outputs

    finished = [[m[3] for m in FINISHED.finditer(log.read_text())] for log in logs]
    assert all(finished), f"a process did no work: {[len(f) for f in finished]}\n{outputs}"
    both = set(finished[0]) & set(finished[1])
    assert not both, f"generations finished by both processes: {sorted(both)}"
    rows = project.membership("c1")
    assert len(rows) == 42
    assert all((project.gen_dir(r["stage"], r["gen_id"]) / "parsed.txt").exists() for r in rows)
    assert_paid_once(project, "c1", srv)
    completed = Counter(e["gen_id"] for e in project.events() if e["type"] == "generation_completed")
    twice = {g: n for g, n in completed.items() if n > 1}
    assert not twice, f"generations completed more than once: {twice}"
    assert set(completed) == {r["gen_id"] for r in rows}
    assert_same_tables(project, result_tables(reference))

