"""Bad input, driven through the real commands as a user would: ``luigi --module pipeline ...`` and
``daydream plan``. Each mistake gets one clear message naming the file, line or id at fault, the
command exits non-zero, nothing is written under data/ and no LLM is called.

(Property-based tests of the spec compiler and the score parser live in test_spec.py and
test_parsers.py.)
"""
import json
import shutil

import luigi
import luigi.configuration
import pytest

from pipeline.errors import PipelineError
from pipeline.paths import Paths, check_id
from tests.support.stub_server import StubLLMServer

from conftest import SMALL, RAW_ROOT, make_project, output_of, run_daydream, run_luigi, write_spec



def data_files(project) -> list:
    return sorted(p for p in project.data_root.rglob("*") if p.is_file())


def assert_rejected(project, stub, cohort_id, *needles, task="RunCohort"):
    """luigi TASK and ``daydream plan`` both refuse, saying ``needles``; nothing written, no LLM call."""
    before = data_files(project)
    run = run_luigi(project, task, "--cohort-id", cohort_id, base_url=stub.base_url, timeout=60)
    assert run.returncode != 0, output_of(run)
    for needle in needles:
        assert needle in run.stdout + run.stderr, output_of(run)

    plan = run_daydream(project, "plan", cohort_id)
    assert plan.returncode == 2, output_of(plan)
    message = plan.stderr.strip()
    assert message.startswith("daydream: error: ") and "\n" not in message, output_of(plan)  # one line
    for needle in needles:
        assert needle in message, output_of(plan)

    assert data_files(project) == before
    assert stub.requests == []


# --- cohort ids ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cohort_id", ["../x", "/etc", "a" * 300])
def test_unsafe_cohort_id_is_refused(project, stub, cohort_id):
    write_spec(project, "c1", SMALL)
    assert_rejected(project, stub, cohort_id, "invalid cohort id")


def test_empty_cohort_id_is_refused(project, stub):
    run = run_luigi(project, "BuildCohort", "--cohort-id", "", base_url=stub.base_url, timeout=60)
    assert run.returncode != 0 and "cohort_id" in run.stdout + run.stderr, output_of(run)
    plan = run_daydream(project, "plan", "")
    assert plan.returncode == 2 and "invalid cohort id ''" in plan.stderr, output_of(plan)
    assert data_files(project) == []


@pytest.mark.parametrize("bad", ["a\0b", "\0", "c1\0/../../etc"])
def test_nul_in_an_id_is_refused(bad):
    # argv cannot carry NUL, so this is checked where every path is built
    with pytest.raises(PipelineError, match="invalid cohort id"):
        check_id(bad, "cohort id")
    paths = Paths("/tmp/nowhere-data", "/tmp/nowhere-raw", "/tmp/nowhere-cohorts")
    with pytest.raises(PipelineError, match="invalid cohort id"):
        paths.spec_file(bad)
    with pytest.raises(PipelineError, match="invalid generation id"):
        paths.gen_dir("draft", bad)


@pytest.fixture
def luigi_config(project):
    """Point the in-process luigi config at ``project`` (restored afterwards)."""
    cfg = luigi.configuration.get_config()
    saved = {k: cfg.get("pipeline", k, None) for k in ("data_root", "raw_root", "cohorts_root")}
    for key, value in (("data_root", project.data_root), ("raw_root", project.raw_root),
                       ("cohorts_root", project.cohorts_root)):
        cfg.set("pipeline", key, str(value))
    yield
    for key, value in saved.items():
        if value is None:
            cfg.remove_option("pipeline", key)
        else:
            cfg.set("pipeline", key, value)


def test_nul_cohort_id_through_luigi_build(project, luigi_config):
    from pipeline.tasks import BuildCohort

    result = luigi.build([BuildCohort(cohort_id="a\0b")], local_scheduler=True, detailed_summary=True)
    assert not result.scheduling_succeeded
    assert data_files(project) == []


def test_unknown_cohort(project, stub):
    write_spec(project, "c1", SMALL)
    assert_rejected(project, stub, "nope", "unknown cohort 'nope'", "known cohorts: c1")


def test_spec_yaml_syntax_error(project, stub):
    write_spec(project, "c1", SMALL.replace("[links-brainstorm-v1]", "[links-brainstorm-v1"))
    assert_rejected(project, stub, "c1", f"{project.cohorts_root / 'c1' / 'spec.yaml'}:", "YAML syntax error")


# --- a broken catalog (a copy of data/1_raw) -------------------------------------------------------

@pytest.fixture
def raw_project(tmp_path):
    """A project with its own copy of the catalog to break, and cohort c1 = SMALL."""
    raw = tmp_path / "raw"
    shutil.copytree(RAW_ROOT, raw)
    project = make_project(tmp_path / "proj", raw_root=raw)
    write_spec(project, "c1", SMALL)
    return project


def _edit(path, old, new):
    text = path.read_text(encoding="utf-8")
    assert old in text, (path, old)
    path.write_text(text.replace(old, new), encoding="utf-8")


def test_csv_missing_column(raw_project, stub):
    models = raw_project.raw_root / "llm_models.csv"
    _edit(models, "id,model,provider,", "id,model,")
    assert_rejected(raw_project, stub, "c1", f"{models}: missing column(s) provider")


def test_csv_duplicate_id(raw_project, stub):
    drafts = raw_project.raw_root / "draft_templates.csv"
    lines = drafts.read_text(encoding="utf-8").splitlines()
    drafts.write_text("\n".join(lines + [lines[1]]) + "\n", encoding="utf-8")
    where = f"{drafts}:{len(lines) + 1}"
    assert_rejected(raw_project, stub, "c1", where, "duplicate template_id 'links-brainstorm-v1'", "first on line 2")


def test_csv_not_utf8(raw_project, stub):
    concepts = raw_project.raw_root / "concepts_metadata.csv"
    text = concepts.read_text(encoding="utf-8").replace("Critic Filter", "Critic Filtré")
    concepts.write_bytes(text.encode("latin-1"))
    assert_rejected(raw_project, stub, "c1", f"{concepts}: not UTF-8")


def test_template_jinja_syntax_error(raw_project, stub):
    template = raw_project.raw_root / "templates" / "draft" / "links-brainstorm-v1.txt"
    _edit(template, "{% endfor %}", "{% endfor %}{% endif %}")
    line = next(i for i, text in enumerate(template.read_text(encoding="utf-8").splitlines(), 1)
                if "{% endif %}" in text)
    assert_rejected(raw_project, stub, "c1", f"{template}:{line}:", "not valid Jinja2", "endif")


def test_template_unknown_variable_fails_before_any_call(raw_project, stub):
    template = raw_project.raw_root / "templates" / "evaluation" / "clarity-v1.txt"
    _edit(template, "{{ response }}", "{{ essay_text }}")
    assert_rejected(raw_project, stub, "c1", str(template), "essay_text")


def test_concept_without_description(raw_project, stub):
    raw = raw_project.raw_root
    for level in ("sentence", "paragraph"):
        (raw / "concepts" / f"descriptions-{level}" / "critic-filter.txt").unlink()
    concepts_json = raw / "concepts" / "day_dreaming_concepts.json"
    doc = json.loads(concepts_json.read_text(encoding="utf-8"))
    doc["concepts"] = [c for c in doc["concepts"] if c["concept_id"] != "critic-filter"]
    concepts_json.write_text(json.dumps(doc), encoding="utf-8")
    line = next(i for i, text in enumerate((raw / "concepts_metadata.csv").read_text().splitlines(), 1)
                if text.startswith("critic-filter,"))
    assert_rejected(raw_project, stub, "c1", f"{raw / 'concepts_metadata.csv'}:{line}", "'critic-filter'",
                    "no description")


# --- files under data/ damaged by hand ---------------------------------------------------------

def test_membership_edited_to_a_missing_parent(project, stub):
    write_spec(project, "c1", SMALL)
    build = run_luigi(project, "BuildCohort", "--cohort-id", "c1", timeout=60)
    assert build.returncode == 0, output_of(build)
    membership = project.data_root / "cohorts" / "c1" / "membership.csv"
    lines = membership.read_text(encoding="utf-8").splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith("essay,"))
    fields = lines[line - 1].split(",")
    fields[lines[0].split(",").index("parent_gen_id")] = "d_doesnotexist"
    lines[line - 1] = ",".join(fields)
    membership.write_text("\n".join(lines) + "\n", encoding="utf-8")

    run = run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=stub.base_url, timeout=60)
    assert run.returncode != 0, output_of(run)
    assert f"{membership}:{line}:" in run.stdout + run.stderr and "d_doesnotexist" in run.stderr, output_of(run)
    assert stub.requests == []
    assert not list(project.data_root.glob("gens/*/*/raw.txt"))
    status = run_daydream(project, "status", "c1")
    assert status.returncode == 2 and f"{membership}:{line}:" in status.stderr, output_of(status)


def test_corrupt_metadata_fails_that_generation_only(project, stub):
    write_spec(project, "c1", SMALL)
    build = run_luigi(project, "BuildCohort", "--cohort-id", "c1", timeout=60)
    assert build.returncode == 0, output_of(build)
    broken = project.membership("c1", "evaluation")[0]["gen_id"]
    meta_path = project.gen_dir("evaluation", broken) / "metadata.json"
    meta_path.write_text('{"stage": "evalu', encoding="utf-8")

    run = run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=stub.base_url, timeout=60)
    assert run.returncode == 30, output_of(run)
    assert f"{meta_path}: corrupt JSON" in run.stderr, output_of(run)
    for row in project.membership("c1"):
        if row["gen_id"] != broken:
            assert project.meta(row["stage"], row["gen_id"])["status"] == "done", row
    assert len(stub.requests) == 5
    assert meta_path.read_text(encoding="utf-8") == '{"stage": "evalu'  # left for the user to look at


def test_corrupt_metadata_shows_in_status(project, stub):
    """`daydream status` must not report a cohort with an unreadable generation as fine."""
    write_spec(project, "c1", SMALL)
    assert run_luigi(project, "BuildCohort", "--cohort-id", "c1", timeout=60).returncode == 0
    broken = project.membership("c1", "evaluation")[0]["gen_id"]
    meta_path = project.gen_dir("evaluation", broken) / "metadata.json"
    meta_path.write_text('{"stage": "evalu', encoding="utf-8")
    run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=stub.base_url, timeout=60)

    status = run_daydream(project, "status", "c1")
    assert status.returncode != 0, output_of(status)
    assert broken in status.stdout + status.stderr and "metadata.json" in status.stdout + status.stderr, \
        output_of(status)


# --- a garbled response body ---------------------------------------------------------------------

def test_non_utf8_response_is_retried(project):
    write_spec(project, "c1", SMALL)
    with StubLLMServer(faults=["non_utf8"]) as srv:
        run = run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=srv.base_url, timeout=60)
    assert run.returncode == 0, output_of(run)
    (failed,) = [e for e in project.events() if e["type"] == "llm_call_failed"]
    assert failed["error_class"] == "invalid_body" and "not UTF-8" in failed["message"]
    for row in project.membership("c1"):
        assert project.meta(row["stage"], row["gen_id"])["status"] == "done"


def test_persistent_non_utf8_response_fails_clearly(project):
    write_spec(project, "c1", SMALL)
    with StubLLMServer(faults=lambda index, body: "non_utf8") as srv:
        run = run_luigi(project, "RunCohort", "--cohort-id", "c1", "--llm-max-attempts", "2",
                        base_url=srv.base_url, timeout=60)
        assert len(srv.requests) == 2 * 2  # both drafts, two attempts each; nothing downstream is called
    assert run.returncode == 30, output_of(run)
    for row in project.membership("c1", "draft"):
        meta = project.meta("draft", row["gen_id"])
        assert meta["status"] == "failed" and "not UTF-8" in meta["error"], meta
        assert not (project.gen_dir("draft", row["gen_id"]) / "raw.txt").exists()
    status = run_daydream(project, "status", "c1")
    assert status.returncode == 1 and "not UTF-8" in status.stdout, output_of(status)
