"""The generation stages, in one table that every module reads.

    >>> STAGE["essay"].parent          # 'draft'
    >>> [s.name for s in TABLE]        # parents first: draft, essay, evaluation

A stage's generations live in data/gens/<folder>/<id>, their ids start with ``prefix``, their
templates may use ``template_variables`` (see prompts.py) and are parsed with ``default_parser``
unless the template names another.
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    prefix: str              # of generation ids (the original's scheme, ids.py)
    parent: str | None       # the stage whose output this one reads; None for drafts (they read a combo)
    template_variables: frozenset
    default_parser: str
    folder: str              # under data/gens/


TABLE = (
    Stage("draft", "d_", None, frozenset({"concepts"}), "identity", "draft"),
    Stage("essay", "e_", "draft", frozenset({"draft_block", "links_block"}), "identity", "essay"),
    Stage("evaluation", "v_", "essay", frozenset({"response"}), "in_last_line", "evaluation"),
)
STAGE = {s.name: s for s in TABLE}
STAGES = tuple(STAGE)  # parents first
PARENT = {s.name: s.parent for s in TABLE if s.parent}
CHILD = {s.parent: s.name for s in TABLE if s.parent}
