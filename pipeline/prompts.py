"""Prompt rendering: Jinja2 with StrictUndefined, each template compiled once per process.

    >>> prompt, levels = render_draft(catalog, "links-brainstorm-v1", ["critic-filter", "idle-recombination"],
    ...                               "paragraph")
    >>> render_essay(catalog, "short-essay-v1", parsed_draft_text)
    >>> render_evaluation(catalog, "clarity-v1", parsed_essay_text)
"""
import jinja2

from .errors import RenderError


def _render(catalog, stage, template_id, variables):
    catalog.check_template_variables(stage, template_id)
    try:
        return catalog.compiled(stage, template_id).render(**variables)
    except jinja2.UndefinedError as exc:
        raise RenderError(f"{stage} template {template_id!r}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise RenderError(f"{stage} template {template_id!r} failed to render: {exc}") from None


def concept_contexts(catalog, concept_ids, level):
    """The objects draft templates see as ``concepts``, plus the levels actually used."""
    out, used = [], {}
    for cid in concept_ids:
        text, got = catalog.concept_text(cid, level)
        out.append({"concept_id": cid, "name": catalog.concepts[cid].name, "content": text})
        used[cid] = got
    return out, used


def render_draft(catalog, template_id, concept_ids, level):
    """(prompt, {concept_id: level used}) - a level differs from ``level`` where it fell back."""
    concepts, used = concept_contexts(catalog, concept_ids, level)
    return _render(catalog, "draft", template_id, {"concepts": concepts}), used


def render_essay(catalog, template_id, draft_text):
    return _render(catalog, "essay", template_id, {"draft_block": draft_text, "links_block": draft_text})


def render_evaluation(catalog, template_id, essay_text):
    return _render(catalog, "evaluation", template_id, {"response": essay_text})
