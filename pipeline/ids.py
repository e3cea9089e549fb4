"""Deterministic ids. Same inputs -> same id, on any machine, in any cohort.

    >>> draft_id("combo_v1_0123456789ab", "creative-synthesis-v7", "gemma_local", 1)
    'd_...'
    >>> combo_id(["b", "a"], "paragraph", 2)      # order of concepts does not matter
    'combo_v1_...'

Generation id = prefix (d_, e_, v_) + base36 of blake2b-80 over the signature fields, each
stripped, joined with "|". Signatures:
  draft:      combo_id | draft_template | draft_llm | replicate
  essay:      draft_gen_id | essay_template | essay_llm | replicate
  evaluation: essay_gen_id | evaluation_template | evaluation_llm | replicate
"""
import hashlib

from .errors import PipelineError

PREFIX = {"draft": "d_", "essay": "e_", "evaluation": "v_"}
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(value: int) -> str:
    out = ""
    while True:
        value, rem = divmod(value, 36)
        out = _DIGITS[rem] + out
        if not value:
            return out


def _part(value, name):
    text = str(value).strip() if value is not None else ""
    if not text or "|" in text:
        raise PipelineError(f"signature field {name} must be non-empty and contain no '|', got {value!r}")
    return text


def _replicate(value):
    try:
        rep = int(str(value).strip())
    except ValueError:
        rep = 0
    if rep < 1:
        raise PipelineError(f"replicate must be a positive integer, got {value!r}")
    return str(rep)


def gen_id(stage: str, parent: str, template_id: str, llm_model_id: str, replicate) -> str:
    """The id of one generation; ``parent`` is the combo id for drafts, else the parent gen id."""
    if stage not in PREFIX:
        raise PipelineError(f"unknown stage {stage!r}")
    canonical = "|".join(
        [_part(parent, "parent"), _part(template_id, "template_id"), _part(llm_model_id, "llm_model_id"),
         _replicate(replicate)]
    )
    digest = hashlib.blake2b(canonical.encode("utf-8"), digest_size=10).digest()
    return PREFIX[stage] + base36(int.from_bytes(digest, "big"))


def draft_id(combo_id, template_id, llm_model_id, replicate=1):
    return gen_id("draft", combo_id, template_id, llm_model_id, replicate)


def essay_id(draft_gen_id, template_id, llm_model_id, replicate=1):
    return gen_id("essay", draft_gen_id, template_id, llm_model_id, replicate)


def evaluation_id(essay_gen_id, template_id, llm_model_id, replicate=1):
    return gen_id("evaluation", essay_gen_id, template_id, llm_model_id, replicate)


def combo_id(concept_ids, description_level: str, k_max: int) -> str:
    """The original's combo id scheme, so ids carry over from it."""
    key = "|".join(sorted(concept_ids)) + "|" + description_level + "|" + str(k_max)
    return "combo_v1_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
