"""What a cohort's remaining LLM calls will cost, before any is made (``daydream plan``).

    >>> est = estimate_cost(paths, catalog, cohort, rows_to_run, Completion(800, 160, "[llm] expected_completion_tokens"))
    >>> est["cost_usd"], est["by_model"][0]["prompt_tokens"], est["basis"]

The basis, also printed by ``daydream plan``:
- a draft's prompt is rendered from its concepts, exactly as the run will render it;
- an essay's or evaluation's prompt is rendered from its parent's parsed text when that is on disk;
  otherwise it is the template rendered around nothing plus the parent's expected completion
  (a copy-mode essay's text is its draft's);
- every completion is expected to be ``Completion.tokens`` long ([llm] expected_completion_tokens,
  else [llm] max_tokens); the embedded model's are ``[llm] local_max_tokens`` (its hard cap);
- tokens are characters / 4 (a common rule of thumb for English; real tokenizers differ by ~20%);
- prices are llm_models.csv's optional ``prompt_price_per_mtok``/``completion_price_per_mtok``
  (USD per million tokens); calls to a model without prices are counted but not priced.
"""
import math
from dataclasses import dataclass

from . import prompts
from .combos import read_mappings
from .errors import PipelineError

CHARS_PER_TOKEN = 4
PARENT_STAGE = {"essay": "draft", "evaluation": "essay"}


@dataclass(frozen=True)
class Completion:
    tokens: int        # expected completion tokens of a call to a remote model
    local_tokens: int  # the embedded model's cap
    source: str        # where ``tokens`` came from, for the printed basis


def tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def _template_only(catalog, stage, template_id) -> str:
    """The prompt of an essay/evaluation template with an empty parent text."""
    render = prompts.render_essay if stage == "essay" else prompts.render_evaluation
    return render(catalog, template_id, "")


def completion_tokens(catalog, completion, rows_by_id, row) -> int:
    """Expected size of ``row``'s output: its model's completion; a copy-mode essay's is its draft's."""
    while row is not None and catalog.templates[row["stage"]][row["template_id"]].generator == "copy":
        row = rows_by_id.get(row["parent_gen_id"])
    model = catalog.models.get(row["llm_model_id"]) if row is not None else None
    return completion.local_tokens if model is not None and model.is_local else completion.tokens


def prompt_tokens(paths, catalog, combos, rows_by_id, row, completion) -> tuple[int, bool]:
    """(estimated prompt tokens of ``row``, whether the prompt was rendered exactly)."""
    stage, tid = row["stage"], row["template_id"]
    if stage == "draft":
        combo = combos.get(row["combo_id"])
        if combo is None:  # a combo this data folder has no record of: the template alone
            return tokens(catalog.templates["draft"][tid].source), False
        prompt, _ = prompts.render_draft(catalog, tid, combo["concepts"], combo["description_level"])
        return tokens(prompt), True
    parent = paths.gen_dir(PARENT_STAGE[stage], row["parent_gen_id"]) / "parsed.txt"
    try:
        text = parent.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        expected = completion_tokens(catalog, completion, rows_by_id, rows_by_id.get(row["parent_gen_id"]))
        return tokens(_template_only(catalog, stage, tid)) + expected, False
    render = prompts.render_essay if stage == "essay" else prompts.render_evaluation
    return tokens(render(catalog, tid, text)), True


def _cost(calls_tokens, price):
    return None if price is None else calls_tokens * price / 1_000_000


def estimate_cost(paths, catalog, cohort, rows, completion: Completion) -> dict:
    """Tokens and USD for the LLM calls ``rows`` (membership rows of ``cohort`` still to run).

    Keys (stable, part of ``daydream plan --json``): calls, prompt_tokens, completion_tokens,
    cost_usd (priced models only), unpriced_models, by_model (list of per-model dicts), basis."""
    combos = {**read_mappings(paths.combo_mappings_csv), **cohort.combos}
    rows_by_id = {r["gen_id"]: r for r in cohort.rows}
    per_model, rendered = {}, 0
    for row in rows:
        model = catalog.models.get(row["llm_model_id"])
        if model is None:
            raise PipelineError(f"{row['stage']} {row['gen_id']}: model {row['llm_model_id']!r} is not in "
                                f"{paths.models_csv}")
        n_prompt, exact = prompt_tokens(paths, catalog, combos, rows_by_id, row, completion)
        rendered += exact
        entry = per_model.setdefault(model.id, {
            "llm_model_id": model.id, "calls": 0, "prompt_tokens": 0, "completion_tokens": 0,
            "prompt_price_per_mtok": model.prompt_price_per_mtok,
            "completion_price_per_mtok": model.completion_price_per_mtok, "cost_usd": None})
        entry["calls"] += 1
        entry["prompt_tokens"] += n_prompt
        entry["completion_tokens"] += completion_tokens(catalog, completion, rows_by_id, row)
    for entry in per_model.values():
        parts = (_cost(entry["prompt_tokens"], entry["prompt_price_per_mtok"]),
                 _cost(entry["completion_tokens"], entry["completion_price_per_mtok"]))
        entry["cost_usd"] = None if None in parts else round(sum(parts), 6)
    by_model = sorted(per_model.values(), key=lambda e: e["llm_model_id"])
    return {
        "calls": len(rows),
        "prompt_tokens": sum(e["prompt_tokens"] for e in by_model),
        "completion_tokens": sum(e["completion_tokens"] for e in by_model),
        "cost_usd": round(sum(e["cost_usd"] for e in by_model if e["cost_usd"] is not None), 6),
        "unpriced_models": [e["llm_model_id"] for e in by_model if e["cost_usd"] is None],
        "by_model": by_model,
        "basis": {"prompts_rendered": rendered, "prompts_estimated": len(rows) - rendered,
                  "chars_per_token": CHARS_PER_TOKEN, "expected_completion_tokens": completion.tokens,
                  "expected_completion_tokens_from": completion.source,
                  "local_completion_tokens": completion.local_tokens},
    }


def basis_text(est) -> str:
    """The estimate's basis in one paragraph, for the text output."""
    b = est["basis"]
    return (f"basis: {b['prompts_rendered']} prompt(s) rendered as the run will render them (drafts from their "
            f"concepts, essays/evaluations from a parent already on disk), {b['prompts_estimated']} estimated as "
            f"template + the parent's expected completion; completions {b['expected_completion_tokens']} tokens "
            f"each ({b['expected_completion_tokens_from']}; embedded model: {b['local_completion_tokens']}); "
            f"tokens = characters / {b['chars_per_token']}; prices (USD per million tokens) from llm_models.csv")
