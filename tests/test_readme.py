"""The README's examples do what the README says they do."""
import re

from conftest import REPO, output_of, run_daydream, write_spec


def readme_block(heading, lang="yaml"):
    """The first ```lang block after ``heading`` in README.md."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    after = text[text.index(heading):]
    return re.search(rf"```{lang}\n(.*?)```", after, re.S).group(1)


def test_the_spec_example_compiles_to_the_counts_the_readme_gives(project):
    write_spec(project, "example", readme_block("## Writing a cohort"))
    result = run_daydream(project, "plan", "example")
    assert result.returncode == 0, output_of(result)
    counts = {m[0]: (int(m[1]), int(m[2])) for m in re.findall(r"^(\w+)\s+(\d+)\s+(\d+)", result.stdout, re.M)}
    assert counts == {"draft": (12, 12), "essay": (12, 6), "evaluation": (48, 48)}
    assert "LLM calls: 66 in all" in result.stdout
