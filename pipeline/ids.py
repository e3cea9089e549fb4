"""Deterministic ids, the original project's scheme: same signature -> same id, in any cohort.

    >>> sig = signature("draft", "combo_v1_0123456789ab", "creative-synthesis-v10", "gemini_25_pro", 1)
    >>> gen_id("draft", sig)                      # 'd_' + base36
    >>> combo_id(["b", "a"], "paragraph", 2)      # order of concepts does not matter

Signatures (each text part stripped and lower-cased; the replicate an int >= 1):
  draft:      combo_id | draft_template | draft_llm | replicate
  essay:      draft_gen_id | essay_template | replicate          (no essay llm)
  evaluation: essay_gen_id | evaluation_template | evaluation_llm | replicate

Generation id = prefix (``d_``, ``e_``, ``v_``) + base36 of the 80-bit BLAKE2b digest of the
``|``-joined signature. Collision variant N (1..4) hashes the signature followed by
``|collision:N`` and appends ``-N``: ``e_<base36 of blake2b("<signature>|collision:1")>-1``.

Resolving an id (``resolve_gen_id``): try the plain id, then variants 1..4; take the first that
is free or already holds the same generation; fail after variant 4. "The same generation" means
the same signature and, for essays written by an LLM, the same essay model: the essay model is not
part of the essay id (the original's scheme), so two essay models on one draft would otherwise
share one essay, and a cohort asking for one model's essay could be handed another's. The second
model's essay therefore gets a collision variant. Copy-mode essays make no call and match
whatever model they name. Who holds an id is asked of a lookup the caller provides (ids taken
earlier in the same build, then the generation's metadata.json on disk).
"""
import hashlib

from .errors import PipelineError
from .stages import TABLE

PREFIX = {s.name: s.prefix for s in TABLE}
MAX_VARIANT = 4  # the original tries the plain id and variants -1 .. -4
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"


def base36(value: int) -> str:
    out = ""
    while True:
        value, rem = divmod(value, 36)
        out = _DIGITS[rem] + out
        if not value:
            return out


def _part(value, name):
    text = "" if value is None else str(value).strip()
    if not text:
        raise PipelineError(f"signature field {name} must be non-empty, got {value!r}")
    return text.lower()


def replicate(value, name="replicate") -> int:
    """An int >= 1 from 2, '2' or ' 2 '; anything else is refused naming ``name``."""
    if isinstance(value, bool):
        value = None
    try:
        rep = int(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        rep = 0
    if rep < 1 or (isinstance(value, float) and value != rep):
        raise PipelineError(f"{name} must be a positive integer, got {value!r}")
    return rep


def signature(stage: str, parent, template_id, llm_model_id, rep) -> tuple:
    """The normalized signature; ``parent`` is the combo id for drafts, else the parent gen id.
    ``llm_model_id`` is ignored for essays."""
    if stage not in PREFIX:
        raise PipelineError(f"unknown stage {stage!r}")
    parts = [_part(parent, "combo_id" if stage == "draft" else "parent_gen_id"), _part(template_id, "template_id")]
    if stage != "essay":
        parts.append(_part(llm_model_id, "llm_model_id"))
    return tuple(parts) + (replicate(rep),)


def signature_from_metadata(stage: str, meta: dict) -> tuple:
    """The signature a generation's metadata.json describes (a missing replicate reads as 1)."""
    rep = meta.get("replicate")
    return signature(stage, meta.get("combo_id") if stage == "draft" else meta.get("parent_gen_id"),
                     meta.get("template_id"), meta.get("llm_model_id"), 1 if rep in (None, "") else rep)


def gen_id(stage: str, sig: tuple, variant: int = 0) -> str:
    """The id of signature ``sig`` (from ``signature``); ``variant`` N > 0 gives collision variant -N."""
    canonical = "|".join(str(part) for part in sig)
    if variant:
        canonical += f"|collision:{variant}"
    digest = hashlib.blake2b(canonical.encode("utf-8"), digest_size=10).digest()
    base = PREFIX[stage] + base36(int.from_bytes(digest, "big"))
    return f"{base}-{variant}" if variant else base


def resolve_gen_id(stage: str, sig: tuple, holder, writer=None) -> str:
    """The id for a generation with signature ``sig`` made by ``writer`` (the essay model; None
    otherwise). ``holder(gen_id)`` returns None when the id is free, else the (signature, writer)
    already there. Raises PipelineError when the plain id and all variants are held by others."""
    want = (sig, writer)
    for variant in range(MAX_VARIANT + 1):
        candidate = gen_id(stage, sig, variant)
        held = holder(candidate)
        if held is None or held == want:
            return candidate
    raise PipelineError(f"{stage} signature {'|'.join(map(str, sig))}"
                        + (f" (model {writer})" if writer else "")
                        + f": its id {gen_id(stage, sig)} and variants -1..-{MAX_VARIANT} are all taken by other "
                          f"generations; inspect data/gens/{stage}/{gen_id(stage, sig)}*/metadata.json")


def combo_id(concept_ids, description_level: str, k_max: int) -> str:
    """The original's combo id scheme, so ids carry over from it."""
    key = "|".join(sorted(concept_ids)) + "|" + description_level + "|" + str(k_max)
    return "combo_v1_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:12]
