"""Read a finished generation folder, as the original writes it or as this project does.

Shared by ``daydream import-original`` and ``daydream rebuild-log``: both turn folders made
without this project's event log into ``generation_completed`` / ``score_parsed`` events.

    >>> gen = read_stored(Path("data/gens/evaluation/v_1"), "evaluation", "v_1", warn=print)
    >>> original_score("7.0\\n")           # 7.0, the original's reading of parsed.txt
    >>> lineage(meta_of, "evaluation", "v_1")  # combo_id found by walking up to the draft

The original's folder: prompt.txt, raw.txt, parsed.txt, metadata.json (stage, gen_id,
origin_cohort_id, mode, template_id, combo_id on drafts, parent_gen_id, llm_model_id, replicate),
raw_metadata.json (finish_reason, usage.{prompt,completion,total}_tokens, duration_s, mode) and
parsed_metadata.json (parser_name). Its evaluation parsed.txt is the bare score, e.g. ``7.0``.
"""
import math
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import ParseError, StoreError
from .fsio import read_json
from .generation import LINEAGE
from .parsers import parse_score
from .stages import PARENT as PARENT_STAGE
from .store import file_sha256

# older originals spelled template_id per stage (ORIGINAL_OUTPUTS 1.1)
_TEMPLATE_ALIASES = ("template_id", "draft_template", "essay_template_id", "evaluation_template")


@dataclass
class StoredGen:
    stage: str
    gen_id: str
    folder: Path
    meta: dict           # metadata.json ({} when absent)
    raw_meta: dict       # raw_metadata.json ({} when absent or unreadable)
    parsed_meta: dict    # parsed_metadata.json ({} when absent or unreadable)
    parsed: str | None   # parsed.txt, None when absent

    @property
    def origin_cohort_id(self):
        value = str(self.meta.get("origin_cohort_id") or "").strip()
        return value or None

    @property
    def copy(self) -> bool:
        return "copy" in (self.meta.get("mode"), self.meta.get("generator"), self.raw_meta.get("mode"))

    @property
    def parser(self):
        return self.meta.get("parser") or self.parsed_meta.get("parser_name")

    def call_fields(self) -> dict:
        """finish_reason, tokens and duration: raw_metadata.json's (the original's) over metadata.json's."""
        usage = self.raw_meta.get("usage") if isinstance(self.raw_meta.get("usage"), dict) else {}

        def pick(key, source, kind):
            value = source.get(key) if source.get(key) is not None else self.meta.get(key)
            return _as(kind, value)

        return {"finish_reason": pick("finish_reason", self.raw_meta, str),
                "prompt_tokens": pick("prompt_tokens", usage, int),
                "completion_tokens": pick("completion_tokens", usage, int),
                "total_tokens": pick("total_tokens", usage, int),
                "duration_s": pick("duration_s", self.raw_meta, float)}


def _as(kind, value):
    """``value`` as ``kind`` (str, int or float), or None when it is not one: events and tables
    get clean types whatever another program wrote."""
    if value is None or isinstance(value, bool):
        return None
    if kind is str:
        return value if isinstance(value, str) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number) or (kind is int and number != int(number)):
        return None
    return int(number) if kind is int else number


def read_stored(folder, stage, gen_id, warn, strict=True) -> StoredGen:
    """Read one generation folder. An unreadable metadata.json raises StoreError naming the file
    (``strict``) or is reported through ``warn`` and read as empty, like unreadable
    raw/parsed metadata always is."""
    folder = Path(folder)
    docs = {}
    for name in ("metadata.json", "raw_metadata.json", "parsed_metadata.json"):
        try:
            docs[name] = _json_or_empty(folder / name)
        except StoreError as exc:
            if strict and name == "metadata.json":
                raise
            warn(f"{exc} (read as empty)")
            docs[name] = {}
    parsed_path = folder / "parsed.txt"
    parsed = parsed_path.read_text(encoding="utf-8", errors="replace") if parsed_path.exists() else None
    return StoredGen(stage, gen_id, folder, docs["metadata.json"], docs["raw_metadata.json"],
                     docs["parsed_metadata.json"], parsed)


def _json_or_empty(path) -> dict:
    if not os.path.exists(path):
        return {}
    doc = read_json(path)
    if not isinstance(doc, dict):
        raise StoreError(f"{path}: expected a JSON object, found {type(doc).__name__}")
    return doc


def lineage(meta_of, stage, gen_id) -> dict:
    """LINEAGE fields of one generation from metadata; ``meta_of(stage, gen_id)`` returns a
    metadata dict ({} if unknown). Essays and evaluations of the original carry no combo_id:
    it is taken from the draft up the parent chain."""
    meta = meta_of(stage, gen_id)
    template = next((meta[k] for k in _TEMPLATE_ALIASES if meta.get(k)), None)
    out = {"parent_gen_id": "" if stage == "draft" else _text(meta.get("parent_gen_id")) or "",
           "combo_id": _text(meta.get("combo_id")), "template_id": _text(template),
           "llm_model_id": _text(meta.get("llm_model_id")), "replicate": _as(int, meta.get("replicate"))}
    walk_stage, walk_meta = stage, meta
    while not out["combo_id"] and walk_stage in PARENT_STAGE and _text(walk_meta.get("parent_gen_id")):
        walk_stage = PARENT_STAGE[walk_stage]
        walk_meta = meta_of(walk_stage, _text(walk_meta["parent_gen_id"]))
        out["combo_id"] = _text(walk_meta.get("combo_id"))
    return {k: out[k] for k in LINEAGE}


def _text(value):
    """An id field as stripped text (None when absent or empty)."""
    return (str(value).strip() or None) if value is not None else None


def original_score(parsed_text) -> float:
    """The original's reading of an evaluation's parsed.txt: stripped, last line, a float.
    Raises ValueError saying what is wrong."""
    text = (parsed_text or "").strip()
    if not text:
        raise ValueError("empty (no score)")
    last = text.splitlines()[-1].strip()
    try:
        value = float(last)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"not a number: {last[:80]!r}")
    return value


def read_score(gen: StoredGen, judge_fallback: bool):
    """(score, scale, parser) of an evaluation; ValueError when there is none.

    The original's bare number first; with ``judge_fallback`` (stores whose parsed.txt holds
    the judge's text) this project's score parser is tried on parsed.txt, then raw.txt."""
    if gen.parsed is None:
        raise ValueError("missing parsed.txt (no score)")
    try:
        return original_score(gen.parsed), gen.meta.get("score_scale"), gen.parser or "in_last_line"
    except ValueError as exc:
        if not judge_fallback:
            raise
        reason = exc
    raw_path = gen.folder / "raw.txt"
    texts = [gen.parsed] + ([raw_path.read_text(encoding="utf-8", errors="replace")] if raw_path.exists() else [])
    for text in texts:
        try:
            result = parse_score(text)
            return result.score, result.scale, "in_last_line"
        except ParseError:
            continue
    raise ValueError(f"{reason}, and the judge parser finds no score in parsed.txt or raw.txt")


def emit_completed(log, gen: StoredGen, lineage_fields, folder, data_root, source, score=None):
    """Emit score_parsed (evaluations with a score) and generation_completed for ``gen``, whose
    files are in ``folder`` under ``data_root``; returns the number of events written."""
    base = {"cohort_id": gen.origin_cohort_id, "stage": gen.stage, "gen_id": gen.gen_id}
    written = 0
    if score is not None:
        value, scale, parser = score
        log.emit("score_parsed", **base, score=value, scale=scale, parser=parser, source=source)
        written += 1
    raw, parsed = Path(folder) / "raw.txt", Path(folder) / "parsed.txt"
    log.emit("generation_completed", **base, **lineage_fields, **gen.call_fields(),
             provider_model=gen.meta.get("provider_model"), cost=gen.meta.get("cost"),
             attempts=gen.meta.get("attempts"),
             raw_path=os.path.relpath(raw, data_root), parsed_path=os.path.relpath(parsed, data_root),
             raw_sha256=file_sha256(raw if raw.exists() else parsed), source=source, copy=gen.copy)
    return written + 1
