"""Shared fixtures for tests that run the real pipeline in a throwaway project folder.

    def test_something(project, stub):
        write_spec(project, "c1", SPEC_YAML)
        result = run_luigi(project, "RunCohort", "--cohort-id", "c1", base_url=stub.base_url)
        assert result.returncode == 0, result.stderr
        rows = project.membership("c1")

The helpers (``make_project``, ``run_luigi``, ``run_daydream``, ...) live in tests/support/project.py,
which bench/ uses too; they are imported here so tests keep taking them from ``conftest``.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, for tests.support

from tests.support.project import (BIN, RAW_ROOT, REPO, SHARED_RAW_ROOT, Project,  # noqa: E402,F401
                                   command_env, kill_group, luigi_argv, make_project, output_of,
                                   run_daydream, run_luigi, start_luigi, write_spec)
from tests.support.stub_server import StubLLMServer  # noqa: E402

# 2 drafts, 2 essays, 2 evaluations: 6 LLM calls
SMALL = """\
concepts: {ids: [idle-recombination, critic-filter], k_max: 1, description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  essay_template: [short-essay-v1]
  essay_llm: [sonnet_4]
  evaluation_template: [clarity-v1]
  evaluation_llm: [sonnet_4]
"""

# 4 concepts, pairs: 6 drafts, 6 essays, 12 evaluations = 24 LLM calls, every prompt distinct
SPEC_24 = """\
concepts: {ids: [idle-recombination, critic-filter, feedback-flywheel, search-over-ideas], k_max: 2, description_level: sentence}
axes:
  draft_template: [links-brainstorm-v1]
  draft_llm: [gemini_25_flash]
  essay_template: [short-essay-v1]
  essay_llm: [sonnet_4]
  evaluation_template: [mechanism-check-v1, clarity-v1]
  evaluation_llm: [sonnet_4]
"""
SPEC_24_CALLS = 24


@pytest.fixture
def project(tmp_path) -> Project:
    return make_project(tmp_path / "proj")


@pytest.fixture
def stub():
    """A StubLLMServer answering at ``stub.base_url`` (normal answers, no latency)."""
    with StubLLMServer() as srv:
        yield srv


@pytest.fixture
def make_stub():
    """Factory for stubs with options: ``srv = make_stub(latency=0.2, faults=["500"])``; all closed at teardown."""
    servers = []

    def make(**kwargs):
        srv = StubLLMServer(**kwargs).start()
        servers.append(srv)
        return srv

    yield make
    for srv in servers:
        srv.close()
