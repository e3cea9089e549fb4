"""Parsers against realistic model responses: what a user reads out of a judge or draft reply."""
import pytest
from hypothesis import given, settings, strategies as st

from pipeline.cli import main as daydream
from pipeline.errors import ParseError
from pipeline.parsers import (
    DRAFT_PARSERS,
    KNOWN_PARSERS,
    SCORE_PARSERS,
    ScoreResult,
    parse_draft,
    parse_score,
    score_files,
)

# ---------------------------------------------------------------- judge responses

PLAIN_LAST_LINE = """\
**REASONING:** The essay identifies the core problem (static LLMs never "think" between
prompts) and proposes a background generator-critic loop. It quotes the "daydreaming tax"
explicitly but the feedback link into memory is only implied.

- A1 Present: background combinatorial search over memory.
- A2 Present: critic filters candidates.
- B5 Absent: no mention of writing results back.

SCORE: 7
"""

BOLD_FRACTION = """\
## Evaluation

The response draws a clear line from mind-wandering to automated hypothesis generation.

**Strengths**
1. Mechanism clarity is high.
2. Strong cross-domain synthesis.

**Weaknesses**
1. The economic argument is thin.

**SCORE: 5/10**
"""

TOTAL_WITH_DECIMAL_THEN_JUSTIFICATION = """\
### Section Scores
- Core Concepts: 3/5
- Connections: 2/4
- Narrative: 1.5/2

**Total Score: 6.5/10**

Justification: the essay covers most of the concepts, but a higher score of 8 would
require an explicit account of how critic output is written back into memory.
The strategic "data moat" angle is present but underdeveloped.
"""

HEADING_BOLD_BOTH = """\
### Analysis
The essay is an unusually strong synthesis. Sub-score for novelty: 4/5.

### **Final Score:** **8/10**
"""

HEADING_THEN_NUMBER = """\
**Checklist**
- A1 Present
- A2 Present
- A3 Absent

## Final Score

**6**

The missing feedback integration keeps this out of the 7-8 band.
"""

EARLIER_REASONING_SCORE = """\
REASONING: At first glance the essay seems generic and a SCORE: 3 would be too harsh,
but on closer reading it describes a persistent generator/critic loop that writes
validated ideas back into the knowledge base, and ties it to a proprietary-data moat.
Overall score guidance suggests the 7-8 band.

SCORE: 8
"""

SCORE_THEN_SEVERAL_LINES = """\
REASONING: The text proposes a feedback loop but never explains the critic.

SCORE: 4

Notes:
- The essay would score higher with an explicit critic.
- Terminology is original.
"""

THREE_DIGIT = """\
1. Conceptual frame: 4
2. Architecture: 5
3. Strategic rationale: 6

Score: 456
"""

OUT_OF_TEN_WORDS = """\
The piece is coherent and well argued.
Overall, I would give this essay a final score of 7 out of 10.
"""


@pytest.mark.parametrize(
    "text, score, scale, line",
    [
        (PLAIN_LAST_LINE, 7.0, "0-9", "SCORE: 7"),
        (BOLD_FRACTION, 5.0, "10", "**SCORE: 5/10**"),
        (TOTAL_WITH_DECIMAL_THEN_JUSTIFICATION, 6.5, "10", "**Total Score: 6.5/10**"),
        (HEADING_BOLD_BOTH, 8.0, "10", "### **Final Score:** **8/10**"),
        (HEADING_THEN_NUMBER, 6.0, "0-9", "## Final Score\n**6**"),
        (EARLIER_REASONING_SCORE, 8.0, "0-9", "SCORE: 8"),
        (SCORE_THEN_SEVERAL_LINES, 4.0, "0-9", "SCORE: 4"),
        (THREE_DIGIT, 5.0, "0-9", "Score: 456"),
        (OUT_OF_TEN_WORDS, 7.0, "10", "Overall, I would give this essay a final score of 7 out of 10."),
    ],
    ids=["plain", "bold-fraction", "total-decimal-then-text", "heading-bold", "heading-next-line",
         "earlier-reasoning", "score-then-notes", "three-digit", "out-of-ten-in-prose"],
)
def test_real_judge_shapes(text, score, scale, line):
    assert parse_score(text) == ScoreResult(score, scale, line)


@pytest.mark.parametrize("last_line, score", [
    ("SCORE: 7", 7.0),
    ("score:7", 7.0),
    ("**SCORE:** 3", 3.0),
    ("`SCORE: 2`", 2.0),
    ("SCORE: 0", 0.0),
    ("SCORE: 9", 9.0),
    ("Final Score: 6.5", 6.5),
    ("Overall Score - 4", 4.0),
    ("Score (0-9): 5", 5.0),
    ("SCORE: 7.", 7.0),
    ("SCORE: [6]", 6.0),
    ("Score: 4, 5, 6", 5.0),
    ("Final Score: 9/10", 9.0),
    ("SCORE: 10/10", 10.0),
    ("SCORE: 7/9", 7.0),
])
def test_last_line_forms(last_line, score):
    assert parse_score(f"REASONING: fine.\n\n{last_line}\n").score == score


def test_note_after_the_verdict_does_not_override_it():
    text = "**Final Score: 7**\n\n---\n*Note: a score of 9 requires all of section C.*\n"
    assert parse_score(text).score == 7.0


def test_prose_score_counts_when_no_labelled_verdict():
    text = "The essay is thoughtful.\nAll told, this earns a score of 6.\nThanks for reading."
    assert parse_score(text) == ScoreResult(6.0, "0-9", "All told, this earns a score of 6.")


def test_markdown_table_total_row():
    text = "| Criterion | Score |\n|---|---|\n| Novelty | 3/5 |\n| **Total Score** | **7/10** |"
    assert parse_score(text) == ScoreResult(7.0, "10", "| **Total Score** | **7/10** |")


def test_final_verdict_beats_intermediate_sub_scores():
    text = ("Originality score: 2/3\nRigor score: 1/3\nClarity score: 3/3\n\n"
            "**Overall Score: 6/9**\n\nThe essay is solid but unoriginal.")
    assert parse_score(text) == ScoreResult(6.0, "0-9", "**Overall Score: 6/9**")


def test_last_of_several_verdicts_wins():
    text = "Score: 3\n(draft assessment, revised below)\n\nAfter re-reading:\nFinal Score: 5\n"
    assert parse_score(text).score == 5.0


def test_range_echo_is_not_a_score():
    # Models sometimes echo the template's format line before giving the verdict.
    text = "Format: SCORE: 0-9\nSCORE: X\nThe essay earns SCORE: 4 overall.\nThanks."
    assert parse_score(text).score == 4.0


def test_numbered_list_under_score_heading_is_not_the_score():
    text = "## Score\n1. Novelty: strong\n2. Rigor: weak\n"
    with pytest.raises(ParseError, match="no score found"):
        parse_score(text)


# ---------------------------------------------------------------- score failures


@pytest.mark.parametrize("text", [
    "REASONING: good essay.\nSCORE: 12",
    "REASONING: good essay.\nSCORE: 9.5",
    "REASONING: good essay.\nSCORE: 11/10",
    "REASONING: good essay.\nSCORE: 75%",
    "REASONING: good essay.\nSCORE: X",
    "REASONING: good essay.\nClarity score: 3/5",
    "I liked it a lot. Seven, maybe.",
])
def test_no_valid_score_raises(text):
    with pytest.raises(ParseError, match="no score found"):
        parse_score(text)


def test_error_quotes_last_three_lines_truncated():
    long_line = "This essay is about " + "daydreaming " * 40
    text = f"first line never quoted\nsecond\n{long_line}\nno verdict here\n\n"
    with pytest.raises(ParseError) as info:
        parse_score(text)
    message = str(info.value)
    assert "second" in message and "no verdict here" in message and "This essay is about" in message
    assert "first line" not in message
    assert "\n" not in message and len(message) < 300


@pytest.mark.parametrize("text", ["", "   \n\n  "])
def test_empty_response_raises(text):
    with pytest.raises(ParseError, match="empty"):
        parse_score(text)


def test_unknown_parser_is_named_with_known_ones():
    with pytest.raises(ParseError) as info:
        parse_score("SCORE: 5", "last_line_v2")
    assert "'last_line_v2'" in str(info.value) and "in_last_line" in str(info.value)
    with pytest.raises(ParseError, match="'nope'.*essay_block"):
        parse_draft("text", "nope")


def test_empty_parser_name_means_default():
    assert parse_score("SCORE: 5", "").score == 5.0
    assert parse_score("SCORE: 5", None).score == 5.0
    assert parse_draft("  as is \n", "") == "  as is \n"


def test_known_parsers_cover_catalog_names():
    assert {"identity", "essay_block", "essay_block_lenient", "essay_idea_last",
            "in_last_line", "score_robust"} == KNOWN_PARSERS


# ---------------------------------------------------------------- draft parsers


def test_essay_block_takes_first_block_stripped():
    text = "Preamble.\n<essay>\nFirst essay.\n</essay>\n<essay>Second.</essay>"
    assert parse_draft(text, "essay_block") == "First essay."


def test_essay_block_unclosed_runs_to_end():
    assert parse_draft("notes\n<essay>\nCut off mid-sen", "essay_block") == "Cut off mid-sen"


def test_essay_block_requires_tag():
    with pytest.raises(ParseError, match="no <essay> tag"):
        parse_draft("Just an essay without tags.", "essay_block")


def test_essay_block_does_not_take_essay_idea_tags():
    with pytest.raises(ParseError):
        parse_draft('<essay-idea stage="1">\nidea\n</essay-idea>', "essay_block")


@pytest.mark.parametrize("text", ["<essay></essay>", "<essay>\n   \n</essay>", "<essay>"])
def test_essay_block_empty_raises(text):
    with pytest.raises(ParseError, match="empty"):
        parse_draft(text, "essay_block")


CREATIVE_SYNTHESIS_V7 = """\
<thinking>
Concepts: default mode network, generator-verifier gap.
Plan: I will write the essay inside <essay> tags, opening with the problem.
</thinking>

<essay>
# The Daydreaming Machine

Large language models are frozen between prompts...
</essay>
"""


def test_lenient_ignores_essay_tags_mentioned_while_thinking():
    essay = parse_draft(CREATIVE_SYNTHESIS_V7, "essay_block_lenient")
    assert essay.startswith("# The Daydreaming Machine")
    assert essay.endswith("frozen between prompts...")
    # The strict parser is fooled by the tag named inside the thinking block.
    assert parse_draft(CREATIVE_SYNTHESIS_V7, "essay_block").startswith("tags, opening")


def test_lenient_without_essay_tag_takes_text_outside_thinking():
    text = "<thinking>plan</thinking>\n\nThe essay, untagged.\n"
    assert parse_draft(text, "essay_block_lenient") == "The essay, untagged."


def test_lenient_unclosed_thinking_stops_at_essay():
    text = "<thinking>\nnotes that never close\n<essay>\nThe essay.\n</essay>"
    assert parse_draft(text, "essay_block_lenient") == "The essay."


@pytest.mark.parametrize("text", ["<thinking>only thoughts</thinking>\n", "<thinking>cut off"])
def test_lenient_only_thinking_raises(text):
    with pytest.raises(ParseError, match="empty"):
        parse_draft(text, "essay_block_lenient")


ROLLING_THREAD = """\
<essay-idea stage="1">
Seed idea from C1.
</essay-idea>

### Step 3: Concept C3
<thinking>
Three options... pick the second.
</thinking>
<essay-idea stage="3">
Stage three idea, longest and final.
</essay-idea>

### Step 2 (revisited)
<essay-idea stage="2">
Stage two idea.
</essay-idea>

Wrap-up: the stage-3 idea is the keeper.
"""


def test_essay_idea_last_picks_highest_stage_not_last_block():
    assert parse_draft(ROLLING_THREAD, "essay_idea_last") == "Stage three idea, longest and final."


def test_essay_idea_last_compares_stages_as_integers():
    text = "<essay-idea stage='10'>ten</essay-idea>\n<essay-idea stage=\"9\">nine</essay-idea>"
    assert parse_draft(text, "essay_idea_last") == "ten"


def test_essay_idea_last_tie_takes_later_block():
    text = '<essay-idea stage="2">a</essay-idea><essay-idea stage="2">b</essay-idea>'
    assert parse_draft(text, "essay_idea_last") == "b"


def test_essay_idea_last_without_stages_takes_last_block():
    text = "<essay-idea>\nfirst\n</essay-idea>\n<essay-idea>\nsecond\n</essay-idea>"
    assert parse_draft(text, "essay_idea_last") == "second"


def test_essay_idea_last_ignores_unclosed_block():
    text = '<essay-idea stage="1">\ndone\n</essay-idea>\n<essay-idea stage="2">\ntrunc'
    assert parse_draft(text, "essay_idea_last") == "done"


@pytest.mark.parametrize("text", ["No tags at all.", '<essay-idea stage="1">\nunclosed',
                                  '<essay-idea stage="4">\n\n</essay-idea>'])
def test_essay_idea_last_failures(text):
    with pytest.raises(ParseError):
        parse_draft(text, "essay_idea_last")


def test_identity_keeps_text_but_rejects_empty():
    assert parse_draft("  Draft with spacing.\n", "identity") == "  Draft with spacing.\n"
    with pytest.raises(ParseError, match="empty"):
        parse_draft(" \n\t", "identity")


# ---------------------------------------------------------------- files and CLI


def test_cli_prints_scores_and_errors(tmp_path, capsys):
    good = tmp_path / "good.txt"
    good.write_text(BOLD_FRACTION, encoding="utf-8")
    mean = tmp_path / "mean.txt"
    mean.write_text("Score: 455\n", encoding="utf-8")
    bad = tmp_path / "bad.txt"
    bad.write_text("REASONING: fine\nno number\nat all\n", encoding="utf-8")
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("SCORE: 5 \u2014 tr\u00e8s bien".encode("latin-1", "replace"))
    missing = tmp_path / "missing.txt"

    code = daydream(["parse-score", str(good), str(mean), str(bad), str(binary), str(missing)])

    out = capsys.readouterr().out.splitlines()
    assert code != 0
    assert out[0] == f"{good}\t5"
    assert out[1] == f"{mean}\t4.66667"
    assert out[2].startswith(f"{bad}\tERROR: no score found") and "at all" in out[2]
    assert out[3].startswith(f"{binary}\tERROR: not UTF-8")
    assert out[4].startswith(f"{missing}\tERROR: cannot read file")
    assert len(out) == 5


def test_cli_all_good_returns_zero(tmp_path, capsys):
    f = tmp_path / "e.txt"
    f.write_text(TOTAL_WITH_DECIMAL_THEN_JUSTIFICATION, encoding="utf-8")
    assert daydream(["parse-score", "--parser", "score_robust", str(f)]) == 0
    assert capsys.readouterr().out == f"{f}\t6.5\n"


def test_cli_unknown_parser(tmp_path, capsys):
    f = tmp_path / "e.txt"
    f.write_text("SCORE: 1", encoding="utf-8")
    assert daydream(["parse-score", "--parser", "essay_block", str(f)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("daydream: error: ") and "unknown score parser 'essay_block'" in err


def test_score_files_returns_tuples(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("SCORE: 3", encoding="utf-8")
    b.write_text("nothing", encoding="utf-8")
    [(pa, sa, ea), (pb, sb, eb)] = score_files([a, b], "in_last_line")
    assert (pa, sa, ea) == (str(a), 3.0, None)
    assert pb == str(b) and sb is None and eb.startswith("no score found")


# ---------------------------------------------------------------- property

_tag_soup = st.text(
    alphabet=st.sampled_from(list("<>/=\"' \n*#:.,-0123456789abcdeginorstSCORE")) | st.characters(),
    max_size=300,
) | st.lists(
    st.sampled_from(["<essay>", "</essay>", "<thinking>", "</thinking>", '<essay-idea stage="',
                     "</essay-idea>", "SCORE:", "Final Score", "/10", " 7", "12", "\n", "**",
                     "456", "0-9", "x", '">', "9" * 30]),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(text=_tag_soup)
def test_parsers_only_ever_raise_parse_error(text):
    for parse in [*DRAFT_PARSERS.values(), *SCORE_PARSERS.values()]:
        try:
            result = parse(text)
        except ParseError:
            continue
        if isinstance(result, ScoreResult):
            assert 0 <= result.score <= (9 if result.scale == "0-9" else 10)
        else:
            assert result.strip()
