"""Response parsers: pull the usable part out of a model's reply.

Draft parsers turn a raw draft response into the text the next stage sees; score parsers
read the verdict out of an evaluation response. Catalog rows name them by string.

    >>> parse_draft("<thinking>plan</thinking>\\n<essay>Dreams.</essay>", "essay_block_lenient")
    'Dreams.'
    >>> parse_score("REASONING: solid.\\n**SCORE: 7**")
    ScoreResult(score=7.0, scale='0-9', raw_match='**SCORE: 7**')
    >>> parse_score("Final Score: 8/10\\nStrong, but thin on costs.").scale
    '10'

Anything unparseable raises ParseError; no parser raises anything else.
"""
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ParseError

# ---------------------------------------------------------------- draft parsers

_ESSAY_OPEN = re.compile(r"<essay(?:\s[^>]*)?>", re.IGNORECASE)
_ESSAY_CLOSE = re.compile(r"</essay\s*>", re.IGNORECASE)
_THINKING_OPEN = re.compile(r"<thinking(?:\s[^>]*)?>", re.IGNORECASE)
_THINKING_CLOSE = re.compile(r"</thinking\s*>", re.IGNORECASE)
_ESSAY_IDEA = re.compile(
    r"<essay-idea(\s[^>]*)?>(.*?)</essay-idea\s*>", re.IGNORECASE | re.DOTALL
)
_STAGE_ATTR = re.compile(r"""\bstage\s*=\s*["']?(\d+)""", re.IGNORECASE)


def _nonempty(result: str, what: str) -> str:
    if not result.strip():
        raise ParseError(f"{what} is empty")
    return result


def draft_identity(text: str) -> str:
    """The response unchanged (the parser for catalog rows with no parser)."""
    return _nonempty(text, "response")


def essay_block(text: str) -> str:
    """Content of the first ``<essay>...</essay>``, stripped; an unclosed tag runs to the end."""
    opening = _ESSAY_OPEN.search(text)
    if opening is None:
        raise ParseError("no <essay> tag in response; use parser essay_block_lenient to accept "
                         "untagged essays")
    closing = _ESSAY_CLOSE.search(text, opening.end())
    body = text[opening.end(): closing.start() if closing else len(text)]
    return _nonempty(body.strip(), "<essay> block")


def _drop_thinking(text: str) -> str:
    kept, pos = [], 0
    while (opening := _THINKING_OPEN.search(text, pos)) is not None:
        kept.append(text[pos:opening.start()])
        closing = _THINKING_CLOSE.search(text, opening.end())
        if closing:
            pos = closing.end()
        else:
            # Models that forget to close <thinking> still go on to write the essay.
            essay = _ESSAY_OPEN.search(text, opening.end())
            pos = essay.start() if essay else len(text)
    kept.append(text[pos:])
    return "".join(kept)


def essay_block_lenient(text: str) -> str:
    """Like essay_block after dropping ``<thinking>`` blocks; untagged text is taken whole.

    An unclosed ``<thinking>`` ends where the first ``<essay>`` after it starts.
    """
    without_thinking = _drop_thinking(text)
    if _ESSAY_OPEN.search(without_thinking):
        return essay_block(without_thinking)
    return _nonempty(without_thinking.strip(), "response outside <thinking> blocks")


def _stage_key(digits: str) -> tuple[int, str]:
    # Compare as numbers without int(): Python refuses int() on very long digit strings.
    digits = digits.lstrip("0") or "0"
    return len(digits), digits


def essay_idea_last(text: str) -> str:
    """The ``<essay-idea stage="N">`` block with the highest N (the last block if none has a stage).

    Only closed blocks count: a block cut off by a length limit is not a finished idea.
    Among blocks sharing the highest stage the last one wins.
    """
    blocks = []
    for match in _ESSAY_IDEA.finditer(text):
        stage = _STAGE_ATTR.search(match.group(1) or "")
        blocks.append((_stage_key(stage.group(1)) if stage else None, match.group(2)))
    if not blocks:
        raise ParseError("no closed <essay-idea>...</essay-idea> block in response")
    staged = [block for block in blocks if block[0] is not None]
    if staged:
        best = max(stage for stage, _ in staged)
        body = [content for stage, content in staged if stage == best][-1]
    else:
        body = blocks[-1][1]
    return _nonempty(body.strip(), "last <essay-idea> block")


DRAFT_PARSERS = {
    "identity": draft_identity,
    "essay_block": essay_block,
    "essay_block_lenient": essay_block_lenient,
    "essay_idea_last": essay_idea_last,
}

# ---------------------------------------------------------------- score parsers


@dataclass(frozen=True)
class ScoreResult:
    """A parsed verdict. ``scale`` is "0-9" for a plain score, or the denominator ("10")
    when the judge wrote N/10, in which case ``score`` is N. ``raw_match`` is the line read."""

    score: float
    scale: str
    raw_match: str


_NUM = r"\d+(?:\.\d+)?"
_QUALIFIER = r"(?:(?:final|total|overall|aggregate|composite|weighted)\s+)"
# "Score", optionally with a parenthesised range "(0-9)", then a separator.
_LABEL_TAIL = r"score\b(?:\s*\([^)\n]{0,20}\))?\s*(?:[:=|\-\u2013\u2014]|\bis\b|\bof\b)?\s*[\[(]?\s*"
# Line-start labels ("SCORE: 7", "3. Total Score - 6.5/10") and qualified labels anywhere
# ("... giving a final score of 7") are verdicts; other mentions are reasoning text.
_VERDICT_LABEL = re.compile(
    rf"(?:^[^\w\n]*(?:\d+[.)]\s+)?{_QUALIFIER}*|\b{_QUALIFIER}+){_LABEL_TAIL}", re.IGNORECASE
)
_ANY_LABEL = re.compile(rf"\b{_LABEL_TAIL}", re.IGNORECASE)
_HEADING = re.compile(
    rf"^[^\w\n]*(?:\d+[.)]\s+)?{_QUALIFIER}*score\b(?:\s*\([^)\n]{{0,20}}\))?[^\w\n]*$",
    re.IGNORECASE,
)
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|out\s+of\b)\s*(\d+)(?!\d|\.\d)", re.IGNORECASE)
_THREE_DIGITS = re.compile(r"(\d)(?:,\s?|\s)?(\d)(?:,\s?|\s)?(\d)(?![\d/%]|\.\d)")
# A plain number that is not the start of a fraction, percentage or range ("0-9").
_PLAIN = re.compile(
    rf"({_NUM})(?!\d|\.\d|\s*(?:/|%|out\s+of\b)|\s*[-\u2013]\s*\d)", re.IGNORECASE
)
_LIST_ITEM = re.compile(r"\d+[.)]\s+[^\W\d]")
_MARKDOWN = re.compile(r"[*`#]|__")
_SCALES = {"9": "0-9", "10": "10"}


def _read_value(s: str):
    """(score, scale) for the value at the start of ``s``; None if it is no 0-9 or N/9|N/10 score."""
    fraction = _FRACTION.match(s)
    if fraction:
        numerator, denominator = float(fraction.group(1)), fraction.group(2).lstrip("0")
        # Other denominators are sub-scores ("Clarity score: 2/3"), not the verdict.
        if denominator in _SCALES and numerator <= float(denominator):
            return numerator, _SCALES[denominator]
        return None
    digits = _THREE_DIGITS.match(s)
    if digits:
        return sum(int(d) for d in digits.groups()) / 3, "0-9"
    plain = _PLAIN.match(s)
    if plain and float(plain.group(1)) <= 9:
        return float(plain.group(1)), "0-9"
    return None


def _candidates(lines: list[str]):
    """Yield (is_verdict, index, ScoreResult) for every score in the non-empty ``lines``."""
    for index, line in enumerate(lines):
        clean = _MARKDOWN.sub("", line)
        verdict_ends = set()
        for match in _VERDICT_LABEL.finditer(clean):
            verdict_ends.add(match.end())
            value = _read_value(clean[match.end():])
            if value:
                yield True, index, ScoreResult(value[0], value[1], line)
        for match in _ANY_LABEL.finditer(clean):
            if match.end() not in verdict_ends:
                value = _read_value(clean[match.end():])
                if value:
                    yield False, index, ScoreResult(value[0], value[1], line)
        # "### Final Score" on its own line, the number on the next one (not a numbered list).
        if _HEADING.match(clean) and index + 1 < len(lines):
            below = re.sub(r"^[^\w\n]+", "", _MARKDOWN.sub("", lines[index + 1]))
            value = None if _LIST_ITEM.match(below) else _read_value(below)
            if value:
                yield True, index + 1, ScoreResult(value[0], value[1], f"{line}\n{lines[index + 1]}")


def _best(candidates) -> ScoreResult | None:
    """The last verdict; failing that, the last score mentioned in passing."""
    candidates = sorted(candidates, key=lambda c: (c[0], c[1]))
    return candidates[-1][2] if candidates else None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _no_score(lines: list[str]) -> ParseError:
    tail = " | ".join(line if len(line) <= 64 else line[:61] + "..." for line in lines[-3:])
    return ParseError(f"no score found (expected a final line like 'SCORE: 7'); "
                      f"last lines: {tail}")


def score_robust(text: str) -> ScoreResult:
    """The score from the verdict nearest the end, wherever it sits.

    Verdicts are labelled lines (SCORE / Final / Total / Overall Score, markdown allowed,
    number possibly on the line after a heading); they beat scores mentioned in reasoning
    text, before or after them. Plain scores must be within 0-9; N/10 and N/9 are read as N
    with that scale; "Score: 456" means the mean of the three digits. Other fractions are
    sub-scores, out-of-range numbers no score at all.
    """
    lines = _lines(text)
    if not lines:
        raise ParseError("response is empty")
    result = _best(_candidates(lines))
    if result is None:
        raise _no_score(lines)
    return result


SCORE_PARSERS = {
    # The catalog's name. Templates ask for "SCORE: X" as the last line, which score_robust
    # reads first; judges that add notes after it or bold it still parse.
    "in_last_line": score_robust,
    "score_robust": score_robust,
}

KNOWN_PARSERS = set(DRAFT_PARSERS) | set(SCORE_PARSERS)


def _lookup(registry: dict, name: str, kind: str):
    try:
        return registry[name]
    except KeyError:
        raise ParseError(f"unknown {kind} parser {name!r}; known: "
                         f"{', '.join(sorted(registry))}") from None


def parse_draft(text: str, parser: str | None = "identity") -> str:
    """Apply the draft parser named ``parser`` ("" or None means identity)."""
    return _lookup(DRAFT_PARSERS, parser or "identity", "draft")(text)


def parse_score(text: str, parser: str | None = "in_last_line") -> ScoreResult:
    """Apply the score parser named ``parser`` ("" or None means in_last_line)."""
    return _lookup(SCORE_PARSERS, parser or "in_last_line", "score")(text)


# ---------------------------------------------------------------- files (daydream parse-score)


def score_files(paths, parser: str = "in_last_line") -> list[tuple[str, float | None, str | None]]:
    """[(path, score, None) or (path, None, reason)] for each file, in order.

    An unknown parser name raises ParseError before any file is read.
    """
    parse = _lookup(SCORE_PARSERS, parser or "in_last_line", "score")
    results = []
    for path in map(str, paths):
        try:
            results.append((path, parse(Path(path).read_text(encoding="utf-8")).score, None))
        except UnicodeDecodeError as exc:
            results.append((path, None, f"not UTF-8 text ({exc.reason} at byte {exc.start})"))
        except OSError as exc:
            results.append((path, None, f"cannot read file: {exc.strerror or exc}"))
        except ParseError as exc:
            results.append((path, None, " ".join(str(exc).split())))
    return results
