"""The `daydream` command line: in-process through ``cli.main(argv)`` (as sqlite-utils tests its CLI),
plus subprocess runs where the process boundary matters (luigi.cfg of the current folder, --version)."""
import json
import math
import shutil
from importlib import metadata

import pytest

from pipeline.cli import main as daydream
from tests.support.stub_server import StubLLMServer

from conftest import RAW_ROOT, SMALL, make_project, output_of, run_daydream, run_luigi, write_spec


def call(capsys, *argv):
    """(exit code, stdout, stderr) of ``daydream ARGV`` run in this process."""
    try:
        code = daydream(list(argv))
    except SystemExit as exc:  # argparse: --version, --help, usage errors
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_comes_from_the_package_metadata(capsys):
    code, out, _ = call(capsys, "--version")
    assert code == 0 and out == f"daydream {metadata.version('daydreaming-luigi')}\n"


# every subcommand that reads data/, with the arguments it needs
READERS = [
    ["plan", "c1"], ["status", "c1"], ["replay"], ["rebuild-log"], ["compare", "c1"],
    ["regenerate", "draft", "d_x"], ["reparse", "--cohort", "c1"],
    ["select-top-essays", "--cohort-id", "x", "--template", "clarity-v1"],
    ["build-cohort-from-list", "--cohort-id", "x"],
]


@pytest.mark.parametrize("argv", READERS, ids=lambda a: a[0])
def test_a_data_root_that_does_not_exist_is_refused_and_not_created(tmp_path, capsys, argv):
    missing = tmp_path / "nope"
    code, out, err = call(capsys, *argv, "--data-root", str(missing))
    assert code == 2 and out == ""
    assert err == f"daydream: error: data folder {missing} does not exist (from --data-root); check the path, " \
                  "or run from the project folder\n"
    assert not missing.exists()


def test_replay_refuses_a_missing_data_root_as_a_subprocess_too(project):
    missing = project.root / "elsewhere"
    result = run_daydream(project, "replay", "--data-root", str(missing))
    assert result.returncode == 2 and "daydream: error: data folder" in result.stderr, output_of(result)
    assert not missing.exists()


def test_replay_reads_the_data_root_named_in_luigi_cfg(project, stub):
    """No --data-root: `daydream replay`, like every subcommand, takes [pipeline] data_root from luigi.cfg."""
    write_spec(project, "c1", SMALL)
    assert run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=stub.base_url).returncode == 0
    moved = project.root / "store"
    project.data_root.rename(moved)
    cfg = project.root / "luigi.cfg"
    cfg.write_text(cfg.read_text().replace("data_root = data", "data_root = store"))
    result = run_daydream(project, "replay", roots=False)
    assert result.returncode == 0, output_of(result)
    assert (moved / "tables" / "generation_results.csv").exists()
    assert not project.data_root.exists()


def test_usage_errors_of_subcommands_say_daydream_error(capsys):
    code, _, err = call(capsys, "replay", "--no-such-flag")
    assert code == 2 and err.splitlines()[-1] == "daydream: error: unrecognized arguments: --no-such-flag"
    code, _, err = call(capsys, "regenerate", "paragraph", "d_x")
    assert code == 2 and err.splitlines()[-1].startswith("daydream: error: argument stage: invalid choice")


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    code, out, err = call(capsys, "status", "c1", "--data-root", str(tmp_path / "data"))
    assert code == 2 and err.startswith("daydream: error: ") and err.count("\n") == 1 and "membership.csv" in err


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    """The SMALL cohort (2 drafts -> 2 essays -> 2 evaluations) planned, then run against a stub whose
    first answer (a draft) is a 400: one draft fails, its essay and evaluation are blocked."""
    project = make_project(tmp_path_factory.mktemp("cli"))
    write_spec(project, "c1", SMALL)
    plan = json.loads(run_daydream(project, "plan", "c1", "--json").stdout)
    with StubLLMServer(faults=["400"]) as srv:
        result = run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=srv.base_url)
    assert result.returncode != 0, output_of(result)  # a failed generation: non-zero exit
    return project, plan


def test_plan_json_counts_calls_and_prices_them_from_the_catalog(ran):
    project, plan = ran
    assert plan["cohort_id"] == "c1"
    assert plan["stages"] == {stage: {"generations": 2, "llm_calls": 2, "done": 0, "to_run": 2}
                              for stage in ("draft", "essay", "evaluation")}
    assert plan["llm_calls"] == {"total": 6, "done": 0, "to_make": 6}
    est = plan["cost_estimate"]
    models = {m["llm_model_id"]: m for m in est["by_model"]}
    assert {k: m["calls"] for k, m in models.items()} == {"gemini_25_flash": 2, "sonnet_4": 4}
    # data/1_raw/llm_models.csv: Gemini 2.5 Flash $0.30/$2.50, Claude Sonnet 4 $3/$15 per million tokens
    flash, sonnet = models["gemini_25_flash"], models["sonnet_4"]
    assert (flash["prompt_price_per_mtok"], flash["completion_price_per_mtok"]) == (0.30, 2.50)
    assert flash["completion_tokens"] == 2 * 1000 == sonnet["completion_tokens"] / 2  # luigi.cfg expected size
    for m in (flash, sonnet):
        expected = (m["prompt_tokens"] * m["prompt_price_per_mtok"]
                    + m["completion_tokens"] * m["completion_price_per_mtok"]) / 1e6
        assert m["cost_usd"] == pytest.approx(expected, abs=1e-6)
    assert est["cost_usd"] == pytest.approx(flash["cost_usd"] + sonnet["cost_usd"], abs=1e-6)
    assert est["unpriced_models"] == []
    assert est["basis"]["prompts_rendered"] == 2 and est["basis"]["prompts_estimated"] == 4
    # the drafts' prompts were rendered as the run rendered them: same size as the prompt.txt it sent
    drafts = [r["gen_id"] for r in project.membership("c1", "draft")]
    assert flash["prompt_tokens"] == sum(math.ceil(len(project.read("draft", d, "prompt.txt")) / 4) for d in drafts)


def test_plan_text_shows_the_estimate_and_its_basis(ran, capsys):
    project, _ = ran
    code, out, _ = call(capsys, "plan", "c1", *project.root_flags())
    assert code == 0
    assert "estimated cost of the 3 call(s) to make: $" in out  # the failed draft, its essay and evaluation
    assert "basis: " in out and "tokens = characters / 4" in out and "[llm] expected_completion_tokens" in out


def test_plan_names_the_models_without_prices(tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(RAW_ROOT, raw)
    models = raw / "llm_models.csv"
    models.write_text(models.read_text().replace("Gemini 2.5 Flash\",reasoning,0.30,2.50", "Gemini 2.5 Flash\",reasoning,,"))
    project = make_project(tmp_path / "proj", raw_root=raw)
    write_spec(project, "c1", SMALL)
    code, out, _ = call(capsys, "plan", "c1", *project.root_flags())
    assert code == 0
    assert "estimated cost of the 6 call(s) to make: $" in out and " for the priced models (" in out
    assert f"no price for gemini_25_flash: add prompt_price_per_mtok and completion_price_per_mtok " \
           f"(USD per million tokens) to {models}" in out


def test_plan_after_the_run_renders_the_essay_prompts_from_the_drafts_on_disk(ran, capsys):
    project, _ = ran
    code, out, _ = call(capsys, "plan", "c1", "--json", *project.root_flags())
    plan = json.loads(out)
    assert code == 0 and plan["llm_calls"] == {"total": 6, "done": 3, "to_make": 3}
    # left: the failed draft (rendered from concepts), its essay and evaluation (parents not on disk)
    assert plan["cost_estimate"]["basis"]["prompts_rendered"] == 1
    assert plan["cost_estimate"]["calls"] == 3


def test_status_json_lists_counts_failures_and_blocked(ran, capsys):
    project, _ = ran
    code, out, _ = call(capsys, "status", "c1", "--json", *project.root_flags())
    status = json.loads(out)
    assert code == 1  # like the text form: failures mean exit 1
    assert status["stages"]["draft"] == {"total": 2, "done": 1, "failed": 1, "blocked": 0, "pending": 0}
    assert status["stages"]["essay"] == {"total": 2, "done": 1, "failed": 0, "blocked": 1, "pending": 0}
    [failure] = status["failures"]
    assert failure["stage"] == "draft" and "400" in failure["error"]
    assert {b["stage"] for b in status["blocked"]} == {"essay", "evaluation"}
    assert {b["failed_ancestor"] for b in status["blocked"]} == {f"draft {failure['gen_id']}"}


def test_compare_json_has_the_scores_of_the_cohort(ran, capsys):
    project, _ = ran
    code, out, _ = call(capsys, "compare", "c1", "--json", *project.root_flags())
    data = json.loads(out)
    [v] = [r["gen_id"] for r in project.membership("c1", "evaluation")
           if project.gen_dir("evaluation", r["gen_id"]).joinpath("parsed.txt").exists()]
    score = float(project.read("evaluation", v, "parsed.txt"))
    assert code == 0 and data["cohorts"] == [{"cohort_id": "c1", "mean": score, "n": 1}]
    assert set(data["axes"]) == {"draft_template", "essay_template", "evaluation_template",
                                 "draft_llm", "essay_llm", "evaluation_llm"}
    assert data["axes"]["evaluation_llm"] == [{"level": "sonnet_4",
                                               "cohorts": {"c1": {"mean": score, "n": 1, "diff": None}}}]
