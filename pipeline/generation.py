"""Run one generation: render the prompt, call the model unless a raw response already exists,
parse, and write the files, emitting events as it goes. Luigi tasks are a thin shell over this.

    >>> ctx = GenContext(paths, catalog, EventLog(paths.events_dir), Backends.from_config())
    >>> run_generation(ctx, "draft", "d_1a2b3c")      # -> "completed" | "reused" | "copied" | "done"

Files under data/gens/<stage>/<gen_id>/: prompt.txt, raw.txt (write-once: a paid response is
never overwritten), parsed.txt (the target; evaluations hold the score, e.g. "7.0"), metadata.json,
and claim.<n>.json while a process works on it (see claims.py): a generation another live process
has claimed raises ClaimedElsewhere, which is not a failure.
"""
import contextlib
import functools
import hashlib
import os
import time
from dataclasses import dataclass

from . import claims, lifeline, parsers, prompts
from .errors import ParseError, PipelineError, StoreError
from .fsio import read_json, remove_stale_tmp, swap_in_json, write_json_atomic, write_text_atomic, write_text_once
from .stages import PARENT
from .timestamps import now_iso, stamp

LINEAGE = ("parent_gen_id", "combo_id", "template_id", "llm_model_id", "replicate")


@dataclass
class GenContext:
    paths: object
    catalog: object
    events: object
    backends: object
    cohort_id: str | None = None
    run_id: str = ""         # names this run in the claims it makes
    claim_lease_s: float = 60.0


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()




def load_meta(paths, stage, gen_id) -> dict:
    path = f"{paths.gen_dir(stage, gen_id)}/metadata.json"
    try:
        meta = read_json(path)
    except FileNotFoundError:
        raise StoreError(f"{path}: no metadata for {stage} {gen_id}; build its cohort first (BuildCohort)") from None
    for key in ("stage", "gen_id") + LINEAGE:
        if key not in meta:
            raise StoreError(f"{path}: metadata lacks {key!r}; rebuild the cohort that owns {gen_id}")
    return meta


PARENT_STAGE = PARENT


def waiting_on(paths, stage, gen_id):
    """The claim of another live process on this unfinished generation or on the unfinished
    ancestor it needs (as ClaimedElsewhere), else None."""
    while True:
        gdir = paths.gen_dir(stage, gen_id)
        if os.path.exists(f"{gdir}/parsed.txt"):
            return None
        owner = claims.holder(gdir)
        if owner is not None:
            return claims.ClaimedElsewhere(gdir, owner)
        if stage not in PARENT_STAGE:
            return None
        try:
            stage, gen_id = PARENT_STAGE[stage], _parent_id(paths, stage, gen_id)
        except PipelineError:
            return None


@functools.lru_cache(maxsize=1 << 16)
def _parent_id(paths, stage, gen_id):
    # a generation's id is derived from its parent's (pipeline.ids), so the answer never
    # changes: luigi asks waiting_on several times per task, and each ask read metadata.json
    return load_meta(paths, stage, gen_id)["parent_gen_id"]


def read_parent_text(paths, meta) -> str:
    parent_stage = PARENT_STAGE[meta["stage"]]
    path = f"{paths.gen_dir(parent_stage, meta['parent_gen_id'])}/parsed.txt"
    try:
        return _read_text(path)
    except FileNotFoundError:
        busy = waiting_on(paths, parent_stage, meta["parent_gen_id"])
        if busy is not None:
            raise busy from None  # the parent is being generated elsewhere: come back later
        raise StoreError(f"{meta['stage']} {meta['gen_id']}: parent {parent_stage} {meta['parent_gen_id']} "
                         f"has no parsed output ({path}); run the parent first") from None


def render(ctx, meta) -> str:
    """The prompt; for drafts, records in ``meta`` any concept that fell back to a shorter text."""
    stage, tid = meta["stage"], meta["template_id"]
    if stage == "draft":
        prompt, used = prompts.render_draft(ctx.catalog, tid, meta["concept_ids"], meta["description_level"])
        fallbacks = {cid: got for cid, got in used.items() if got != meta["description_level"]}
        if fallbacks:
            meta["description_level_fallbacks"] = fallbacks
        return prompt
    parent = read_parent_text(ctx.paths, meta)
    if stage == "essay":
        return prompts.render_essay(ctx.catalog, tid, parent)
    return prompts.render_evaluation(ctx.catalog, tid, parent)


def parse(stage, parser_name, raw):
    """(parsed text, score info or None). Raises ParseError."""
    if stage == "evaluation":
        result = parsers.parse_score(raw, parser_name)
        return f"{result.score:.1f}\n", result
    return parsers.parse_draft(raw, parser_name), None


def _template(ctx, meta):
    try:
        return ctx.catalog.templates[meta["stage"]][meta["template_id"]]
    except KeyError:
        raise PipelineError(f"{meta['stage']} {meta['gen_id']}: template {meta['template_id']!r} is not in the "
                            f"catalog {ctx.catalog.root}") from None


def _model(ctx, meta):
    try:
        return ctx.catalog.models[meta["llm_model_id"]]
    except KeyError:
        raise PipelineError(f"{meta['stage']} {meta['gen_id']}: model {meta['llm_model_id']!r} is not in "
                            f"{ctx.catalog.root}/llm_models.csv") from None


def run_generation(ctx: GenContext, stage: str, gen_id: str) -> str:
    """Run one generation under its claim; any failure is recorded (metadata, events) before it is
    raised. Raises ClaimedElsewhere (not recorded: not a failure) if another live process holds
    the claim, and lifeline.ParentGone if the luigi process that started this one has died."""
    gdir = ctx.paths.gen_dir(stage, gen_id)
    parsed = f"{gdir}/parsed.txt"
    if os.path.exists(parsed):
        return "done"
    base = {"cohort_id": ctx.cohort_id, "stage": stage, "gen_id": gen_id}
    meta = _load_or_report(ctx, base)  # before claiming: a bad id or missing metadata leaves no claim behind
    lifeline.check_parent()
    with claims.held(gdir, ctx.claim_lease_s, ctx.run_id, done=functools.partial(os.path.exists, parsed)) as claim:
        remove_stale_tmp(gdir, claim.names)  # the owner clears what killed writers left
        # look again under the claim: the previous owner may have finished it
        if os.path.exists(parsed):
            return "done"
        if claim.number > 1:  # ... or, failing or killed (its claim file stays), changed its metadata
            meta = _load_or_report(ctx, base)
        try:
            return _run(ctx, meta, gdir, base)
        except PipelineError as exc:
            _fail(ctx, meta, f"{gdir}/metadata.json", base, exc)
            raise


def _load_or_report(ctx, base):
    try:
        return load_meta(ctx.paths, base["stage"], base["gen_id"])
    except PipelineError as exc:
        # unreadable metadata is left as it is for the user to inspect; the log still hears of it
        ctx.events.emit("generation_failed", **base, error_class=type(exc).__name__, error=str(exc))
        ctx.events.fsync()
        raise


def reparse_generation(ctx: GenContext, stage: str, gen_id: str) -> str:
    """Parse the saved raw.txt again (after a parser fix), never calling a model: rewrites parsed.txt
    and metadata and logs the outcome like a run that reuses a saved answer. A failure is recorded
    (and a parsed.txt from before is set aside as ``parsed.txt.superseded-<time>``) before it is raised."""
    gdir = ctx.paths.gen_dir(stage, gen_id)
    if not (gdir / "raw.txt").exists():
        raise PipelineError(f"{stage} {gen_id}: no saved answer ({gdir / 'raw.txt'}) to re-parse; run its "
                            f"cohort to buy one")
    meta = load_meta(ctx.paths, stage, gen_id)
    base = {"cohort_id": ctx.cohort_id, "stage": stage, "gen_id": gen_id}
    try:
        return _run(ctx, meta, gdir, base)
    except PipelineError as exc:
        if (gdir / "parsed.txt").exists():
            superseded_at = stamp()
            os.replace(gdir / "parsed.txt", gdir / f"parsed.txt.superseded-{superseded_at}")
        _fail(ctx, meta, gdir / "metadata.json", base, exc)
        raise


def _run(ctx, meta, gdir, base) -> str:
    paths, events, stage = ctx.paths, ctx.events, meta["stage"]
    parsed_path, raw_path, meta_path = f"{gdir}/parsed.txt", f"{gdir}/raw.txt", f"{gdir}/metadata.json"
    lineage = {k: meta[k] for k in LINEAGE}
    template = _template(ctx, meta)
    started = time.monotonic()
    meta.update(template_id=template.template_id, parser=template.parser, generator=template.generator,
                started_at=meta.get("started_at") or now_iso())

    call_info, done = {}, None
    # the metadata.json a write replaced, kept under a temporary name for the next file written
    # here (fsio.swap_in_json says why): raw.txt or parsed.txt reuse its inode
    spare = None
    try:
        if template.generator == "copy":
            raw = read_parent_text(paths, meta)
            write_text_atomic(raw_path, raw, fsync=False)  # a copy of the parent's: rebuilt if lost
            outcome = "copied"
        elif os.path.exists(raw_path):
            raw = _read_text(raw_path)
            outcome = "reused"
        else:
            model = _model(ctx, meta)
            prompt = render(ctx, meta)
            write_text_atomic(f"{gdir}/prompt.txt", prompt, fsync=False)  # re-rendered if lost
            events.emit("generation_started", **base, **lineage)

            def failed(attempt, status, error_class, message, will_retry, delay_s):
                events.emit("llm_call_failed", **base, llm_model_id=meta["llm_model_id"], attempt=attempt,
                            status=status, error_class=error_class, message=message, will_retry=will_retry,
                            delay_s=delay_s)

            result = ctx.backends.complete(model, prompt, stage=stage, on_attempt_failed=failed)
            raw = result.text
            call_info = {
                "provider_model": result.provider_model, "model": model.model, "provider": model.provider,
                "finish_reason": result.finish_reason, "truncated": result.truncated,
                "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                "cost": result.cost, "attempts": result.attempts, "llm_duration_s": round(result.duration_s, 3),
                "prompt_sha256": sha256(prompt), "raw_sha256": sha256(raw), "called_at": now_iso(),
            }
            meta.update(call_info)
            try:
                done = _parsed_into(meta, template, raw, started)
            except ParseError:
                pass  # recorded below, once the answer is saved
            # one metadata write per bought answer, renamed in before raw.txt: if the process dies
            # between the two, the raw is what is missing (and re-bought), never the record of what a
            # kept raw cost. Only the paid answer is fsynced (README "Durability": after a power cut
            # this metadata may be the older one)
            spare = swap_in_json(meta_path, meta)
            saved, spare = write_text_once(raw_path, raw, reuse=spare), None
            if not saved:
                raw, done = _read_text(raw_path), None  # another worker won the race: keep theirs
            outcome = "completed"

        if done is None:
            try:
                done = _parsed_into(meta, template, raw, started)
            except ParseError as exc:
                events.emit("parse_failed", **base, parser=template.parser, reason=str(exc))
                raise
            spare = swap_in_json(meta_path, meta)
        parsed, score = done
        if score is not None:
            events.emit("score_parsed", **base, score=score.score, scale=score.scale, parser=template.parser)
        # the event goes first: a crash before parsed.txt is renamed in means a rerun re-parses (and
        # logs a reuse); the other order could leave a finished generation the log never hears of
        rel_dir = os.path.relpath(gdir, paths.data_root)  # relative: data/ may be mounted elsewhere on other machines
        rel = {"raw_path": f"{rel_dir}/raw.txt", "parsed_path": f"{rel_dir}/parsed.txt"}
        common = dict(**base, **lineage, **rel, raw_sha256=meta["raw_sha256"])
        if outcome == "reused":
            events.emit("generation_reused", **common)
        else:
            events.emit("generation_completed", **common, source="run",
                        copy=outcome == "copied", duration_s=meta["duration_s"],
                        **{k: call_info.get(k) for k in ("provider_model", "finish_reason", "prompt_tokens",
                                                          "completion_tokens", "cost", "attempts")})
        events.fsync()  # once per generation: its events and (fsynced before) its raw.txt are durable
        # derived from raw.txt: `daydream reparse`
        write_text_atomic(parsed_path, parsed, fsync=False, reuse=spare)
        spare = None
        return outcome
    finally:
        if spare is not None:  # an error came before it was written over (a failed write removes it)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spare)


def _read_text(path):
    with open(path, encoding="utf-8") as fh:
        return fh.read()


def _parsed_into(meta, template, raw, started):
    """(parsed text, score or None) of ``raw``, recorded in ``meta`` as done. Raises ParseError
    (and leaves ``meta`` as it was)."""
    parsed, score = parse(meta["stage"], template.parser, raw)
    meta.update(status="done", error=None, completed_at=now_iso(), duration_s=round(time.monotonic() - started, 3),
                raw_sha256=sha256(raw), parsed_sha256=sha256(parsed))
    if score is not None:
        meta.update(score=score.score, score_scale=score.scale)
    return parsed, score


def _fail(ctx, meta, meta_path, base, exc):
    meta.update(status="failed", error=str(exc), error_class=type(exc).__name__, failed_at=now_iso())
    write_json_atomic(meta_path, meta, fsync=False)
    lineage = {k: meta[k] for k in LINEAGE}
    ctx.events.emit("generation_failed", **base, **lineage, error_class=type(exc).__name__, error=str(exc))
    ctx.events.fsync()
