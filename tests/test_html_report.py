"""The HTML reports, opened in a real headless browser (Debian's ``chromium``).

Two real cohorts run through ``luigi RunCohort`` against the stub LLM server: one where the
server rejects about a quarter of the requests (failed drafts, essays and evaluations: missing
scores), and one with two replicates per evaluation. Their ``reports/index.html`` and the page of
``daydream compare --html`` are loaded from file:// by chromium (no network): the DOM has the
plots, the heatmap with its intervals, an essay-browser entry for every essay with its draft,
concepts and every judge's answer; a screenshot is written. Browser checks skip when chromium is
not installed (``apt-get install chromium``); the checks on the HTML text still run.
"""
import csv
import hashlib
import html
import re
import shutil
import subprocess

import pandas as pd
import pytest

from pipeline.html_report import interval, write_cohort_html
from pipeline.paths import Paths
from tests.support.stub_server import StubLLMServer

from conftest import make_project, output_of, run_daydream, run_luigi, write_spec

CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed "
                                    "(apt-get install chromium); the browser checks need it")

# 3 combos x 2 draft models; 2 essay templates (one copy-mode); 2 judges x 2 evaluator models
FAULTY = """\
concepts: {ids: [idle-recombination, critic-filter, feedback-flywheel], k_max: 2, description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash, sonnet_4]
  essay_template: [short-essay-v1, draft-as-essay]
  essay_llm: [sonnet_4]
  evaluation_template: [mechanism-check-v1, clarity-v1]
  evaluation_llm: [sonnet_4, gemini_25_flash]
"""
# 2 drafts, 2 essays, 2 judges x 2 models x 2 replicates = 16 evaluations
REPLICATED = """\
concepts: {ids: [search-over-ideas, critic-filter], k_max: 1, description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [sonnet_4]
  essay_template: [short-essay-v1]
  essay_llm: [sonnet_4]
  evaluation_template: [mechanism-check-v1, clarity-v1]
  evaluation_llm: [sonnet_4, gemini_25_flash]
  evaluation_template_replicate: [1, 2]
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rejects_a_quarter(index, body):
    """HTTP 400 (not retried) for prompts whose sha256 starts with 0-3, and for every clarity-v1
    judgement by Gemini (so some evaluations of finished essays fail): the same ones every run."""
    prompt = body["messages"][0]["content"]
    if body["model"] == "google/gemini-2.5-flash" and prompt.startswith("Rate how clear"):
        return "400"
    return "400" if hashlib.sha256(prompt.encode()).hexdigest()[0] in "0123" else None


def chromium(url, tmp, *mode):
    """Run headless chromium on ``url`` with a throwaway profile and no network features."""
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}", "--window-size=1280,2000", *mode, url]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, output_of(result)
    return result.stdout


def open_in_browser(page, tmp):
    """The page's DOM after chromium rendered it, and the bytes of its screenshot."""
    tmp.mkdir(parents=True, exist_ok=True)
    url = page.resolve().as_uri()
    dom = chromium(url, tmp, "--dump-dom")
    shot = tmp / "shot.png"
    chromium(url, tmp, f"--screenshot={shot}")
    return dom, shot.read_bytes()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("html"))
    write_spec(project, "faulty", FAULTY)
    write_spec(project, "replicated", REPLICATED)
    with StubLLMServer(faults=rejects_a_quarter) as srv:
        faulty = run_luigi(project, "RunCohort", "--cohort-id", "faulty", base_url=srv.base_url, timeout=240)
    with StubLLMServer() as srv:
        replicated = run_luigi(project, "RunCohort", "--cohort-id", "replicated", base_url=srv.base_url,
                               timeout=240)
    assert faulty.returncode != 0, "the faulty cohort should end with failures\n" + output_of(faulty)
    assert replicated.returncode == 0, output_of(replicated)
    return project


def paths_of(project):
    return Paths(data_root=project.data_root, raw_root=project.raw_root, cohorts_root=project.cohorts_root)


def report(project, cohort_id):
    return project.data_root / "cohorts" / cohort_id / "reports" / "index.html"


def essay_chunks(text):
    """essay gen id -> the part of the page from its browser entry to the next one."""
    parts = re.split(r'<details class="essay" id="essay-', text)[1:]
    return {part.split('"', 1)[0]: part for part in parts}


def check_essay_browser(project, cohort_id, text):
    """Every essay of the cohort has an entry with its draft, concepts, and each of its
    evaluations: id, score or failure, and the judge's raw answer when one was saved."""
    members = project.membership(cohort_id)
    chunks = essay_chunks(text)
    essays = [r for r in members if r["stage"] == "essay"]
    assert sorted(chunks) == sorted(r["gen_id"] for r in essays)
    combos = {}
    with open(project.data_root / "combo_mappings.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            combos.setdefault(row["combo_id"], []).append(row["concept_id"])
    answers = 0
    for essay in essays:
        chunk = chunks[essay["gen_id"]]
        assert essay["parent_gen_id"] in chunk
        for concept in combos[essay["combo_id"]]:
            assert concept in chunk
        draft = project.gen_dir("draft", essay["parent_gen_id"]) / "parsed.txt"
        if draft.exists():
            assert html.escape(draft.read_text(encoding="utf-8"), quote=False) in chunk
        for v in (r for r in members if r["parent_gen_id"] == essay["gen_id"]):
            assert f'id="judge-{v["gen_id"]}"' in chunk
            raw = project.gen_dir("evaluation", v["gen_id"]) / "raw.txt"
            if raw.exists():
                answers += 1
                assert html.escape(raw.read_text(encoding="utf-8"), quote=False) in chunk
    return answers


def check_self_contained(text):
    """No URL anywhere (the stub's texts hold none) and no element that loads anything."""
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<(script|link|img|iframe|object|embed)\b", text)
    assert not re.search(r'\b(src|href)="(?!#)', text)


def check_heatmap_table(project, cohort_id, text, cells=4):
    """The judge heatmap's table holds mean and mean ± 1.96·sd/√n of each cell, recomputed
    here from the cohort's scores_long.csv."""
    scores = pd.read_csv(project.data_root / "cohorts" / cohort_id / "reports" / "scores_long.csv")
    groups = scores.groupby(["evaluation_template", "evaluation_llm"])
    assert groups.ngroups == cells
    for (template, llm), group in groups:
        s = group["score"]
        half = 1.96 * s.std() / len(s) ** 0.5
        row = (f"<tr><td>{template}</td><td>{llm}</td><td class=\"n\">{s.mean():.2f}</td>\n"
               f"<td class=\"n\">{s.mean() - half:.2f} – {s.mean() + half:.2f}</td>\n"
               f"<td class=\"n\">{len(s)}</td></tr>")
        assert row in text


def test_interval_is_mean_plus_minus_1_96_standard_errors():
    assert interval([2, 4, 6]) == pytest.approx({"mean": 4.0, "sd": 2.0, "n": 3, "ci": 1.96 * 2 / 3 ** 0.5})
    assert interval([5]) == {"mean": 5.0, "sd": None, "n": 1, "ci": None}
    assert interval([]) == {"mean": None, "sd": None, "n": 0, "ci": None}


def failed_ids(project, cohort_id):
    """Members of the cohort whose replayed status is failed."""
    tables = project.data_root / "tables"
    status = pd.concat([pd.read_csv(tables / f"{name}.csv", dtype=str)[["gen_id", "status"]]
                        for name in ("generation_results", "evaluation_results")])
    ids = {r["gen_id"] for r in project.membership(cohort_id)}
    return set(status[(status["status"] == "failed") & status["gen_id"].isin(ids)]["gen_id"])


def test_cohort_with_failures_report(runs, tmp_path):
    project = runs
    text = report(project, "faulty").read_text(encoding="utf-8")
    check_self_contained(text)
    failed = failed_ids(project, "faulty")
    evaluations = {r["gen_id"] for r in project.membership("faulty", "evaluation")}
    assert failed & evaluations, "the stub's faults should have failed some evaluations"
    assert f"Failures ({len(failed)})" in text
    assert check_essay_browser(project, "faulty", text) > 0
    for gen_id in failed & evaluations:   # shown failed in the essay browser, with the error
        entry = text.split(f'id="judge-{gen_id}"', 1)[1].split("</details>", 1)[0]
        assert '<span class="failed">failed</span>' in entry and '<p class="failed">' in entry
    check_heatmap_table(project, "faulty", text, cells=3)  # clarity-v1 by Gemini always fails
    # an answer is model output: its <essay> tag is shown as text, never parsed as markup
    assert "&lt;essay&gt;" in text and "<essay>" not in text


def test_cohort_with_replicates_report(runs):
    project = runs
    text = report(project, "replicated").read_text(encoding="utf-8")
    check_self_contained(text)
    assert check_essay_browser(project, "replicated", text) == 16
    assert text.count("· replicate 2") == 8
    check_heatmap_table(project, "replicated", text)


@needs_chromium
@pytest.mark.parametrize("cohort_id", ["faulty", "replicated"])
def test_cohort_report_renders_in_chromium(runs, tmp_path, cohort_id):
    project = runs
    dom, png = open_in_browser(report(project, cohort_id), tmp_path)
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    # distributions (essay template, one per axis with 2+ levels), 2 heatmaps, judge matrix and
    # scatters, cost and tokens
    assert len(re.findall(r"<svg\b", dom)) >= 6
    for figure in ("heatmap-essay_template", "heatmap-evaluation_template", "agreement-matrix",
                   "agreement-scatter", "usage-plot"):
        assert re.search(rf'<figure[^>]*id="{figure}"[^>]*>\s*<svg', dom), figure
    # the heatmap cells carry their interval in text the browser laid out
    assert re.search(r"<text[^>]*>[^<]*±\d\.\d\d", dom)
    members = project.membership(cohort_id)
    assert len(re.findall(r'<details class="essay"', dom)) == sum(r["stage"] == "essay" for r in members)
    judged = [r for r in members if r["stage"] == "evaluation"]
    assert len(re.findall(r'<details class="judge"', dom)) == len(judged)
    raw = next(project.gen_dir("evaluation", r["gen_id"]) / "raw.txt" for r in judged
               if (project.gen_dir("evaluation", r["gen_id"]) / "raw.txt").exists())
    assert html.escape(raw.read_text(encoding="utf-8"), quote=False) in dom


def test_cohort_without_scores_says_so(project, tmp_path):
    write_spec(project, "fresh", REPLICATED)
    built = run_luigi(project, "BuildCohort", "--cohort-id", "fresh")
    assert built.returncode == 0, output_of(built)
    replayed = run_daydream(project, "replay", "--data-root", str(project.data_root), roots=False)
    assert replayed.returncode == 0, output_of(replayed)
    text = write_cohort_html(paths_of(project), "fresh").read_text(encoding="utf-8")
    assert "No scores yet: none of the 16 evaluations has a parsed score." in text
    assert len(essay_chunks(text)) == 2 and "No parsed essay." in text
    check_self_contained(text)


def test_same_tables_give_the_same_page(runs):
    project = runs
    page = report(project, "faulty")
    before = page.read_bytes(), page.stat().st_mtime_ns
    write_cohort_html(paths_of(project), "faulty")
    assert (page.read_bytes(), page.stat().st_mtime_ns) == before


def compare_page(project, out):
    result = run_daydream(project, "compare", "faulty", "replicated", "--html", str(out))
    assert result.returncode == 0, output_of(result)
    assert f"wrote {out}" in result.stdout
    return out


def test_compare_html(runs, tmp_path):
    project = runs
    text = compare_page(project, tmp_path / "compare.html").read_text(encoding="utf-8")
    check_self_contained(text)
    scores = pd.read_csv(project.data_root / "tables" / "scores_long.csv")
    members = {c: {r["gen_id"] for r in project.membership(c, "evaluation")} for c in ("faulty", "replicated")}
    for cohort_id, ids in members.items():
        s = scores[scores["gen_id"].isin(ids)]["score"]
        half = 1.96 * s.std() / len(s) ** 0.5
        assert (f"<tr><td>{cohort_id}</td><td class=\"n\">{s.mean():.2f}</td><td class=\"n\">{half:.2f}</td>"
                f"<td class=\"n\">{len(s)}</td>") in text


@needs_chromium
def test_compare_html_renders_in_chromium(runs, tmp_path):
    dom, png = open_in_browser(compare_page(runs, tmp_path / "compare.html"), tmp_path)
    assert png.startswith(PNG_MAGIC) and len(png) > 10_000
    # the cohort distribution, one plot per template and model axis, one cost plot per cohort
    assert len(re.findall(r"<svg\b", dom)) == 1 + 6 + 2
    assert "faulty" in dom and "replicated" in dom


def test_compare_html_unknown_cohort_is_a_clear_error(runs, tmp_path):
    out = tmp_path / "compare.html"
    result = run_daydream(runs, "compare", "faulty", "nope", "--html", str(out))
    assert result.returncode == 2
    assert "daydream: error: unknown cohort 'nope'" in result.stderr
    assert not out.exists()
