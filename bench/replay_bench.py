"""How fast is replay compared with just parsing the log?

    $ python bench/replay_bench.py [--events 1000000 | --quick] [--writers 8] [--append 200]
                                   [--repeat 1] [--keep DIR | --log DIR]

Writes a synthetic event log to a temp dir (cohorts; drafts, essays and evaluations with
retries, parse failures and LLM failures mixed in), then times (1) reading and json.loads of
every line - the floor -, (2) reading and checking every event as replay does (framing, typed
validation, duplicates; pipeline.events.scan_events) without folding it, (3) a full replay to CSV
tables, and (4) after appending a few events, the incremental replay that reads only those.
(3) minus (2) is what folding, the tables and the saved fold state cost.

On a shared machine, ``--repeat N`` runs (1)-(3) N times, alternating, prints each round's floor,
replay and ratio, and reports the best of each. ``--log DIR`` times an existing log (a ``--keep``
dir's ``events``) instead of writing one, so two checkouts can be compared on the same bytes; it
skips (4), which would append to that log.
``main(argv)`` returns the numbers as a dict for bench/run_all.py.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.events import SCHEMA_VERSION, ReadStats, iter_segments, scan_events  # noqa: E402
from pipeline.replay import replay  # noqa: E402

MEMBER_FIELDS = ["stage", "gen_id", "parent_gen_id", "combo_id", "template_id", "llm_model_id",
                 "replicate"]
CHAINS_PER_COHORT = 500
EVALS_PER_ESSAY = 3


class _Writer:
    """Buffers one synthetic segment; ts advances a little per event, like a real worker."""

    def __init__(self, path, start):
        self.path, self.now, self.lines, self.count = path, start, [], 0

    def emit(self, type, **fields):
        self.now += timedelta(microseconds=random.randint(1, 5000))
        event = {"event_id": uuid.uuid4().hex, "schema": SCHEMA_VERSION,
                 "ts": self.now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "type": type,
                 "cohort_id": None, "stage": None, "gen_id": None}
        event.update(fields)
        self.lines.append(json.dumps(event, separators=(",", ":")))
        self.count += 1

    def flush(self):
        with open(self.path, "a") as fh:
            fh.write("\n".join(self.lines) + "\n")
        self.lines = []


def _run_generation(w, cohort, lin, rng, score=False):
    w.emit("generation_started", cohort_id=cohort, **lin)
    attempts = 1
    if rng.random() < 0.05:  # transient failure, then retry
        w.emit("llm_call_failed", cohort_id=cohort, stage=lin["stage"], gen_id=lin["gen_id"],
               llm_model_id=lin["llm_model_id"], attempt=1, status=429, error_class="RateLimited",
               message="rate limited", will_retry=True, delay_s=2.0)
        attempts = 2
    if rng.random() < 0.02:  # permanent failure
        w.emit("generation_failed", cohort_id=cohort, **lin, error_class="LLMError", error="HTTP 500")
        return
    if score:
        if rng.random() < 0.03:
            w.emit("parse_failed", cohort_id=cohort, stage="evaluation", gen_id=lin["gen_id"],
                   parser="in_last_line", reason="no score found")
            w.emit("generation_failed", cohort_id=cohort, **lin, error_class="ParseError",
                   error="no score found")
            return
        w.emit("score_parsed", cohort_id=cohort, stage="evaluation", gen_id=lin["gen_id"],
               score=round(rng.uniform(0, 9), 1), scale="0-9", parser="in_last_line")
    gen_id = lin["gen_id"]
    w.emit("generation_completed", cohort_id=cohort, **lin, provider_model=f"prov/{lin['llm_model_id']}",
           finish_reason="stop", prompt_tokens=rng.randint(200, 3000),
           completion_tokens=rng.randint(100, 2000), cost=round(rng.uniform(0.001, 0.05), 6),
           duration_s=round(rng.uniform(1, 60), 3), attempts=attempts,
           raw_path=f"data/gens/{lin['stage']}/{gen_id}/raw.txt",
           parsed_path=f"data/gens/{lin['stage']}/{gen_id}/parsed.txt",
           raw_sha256=uuid.uuid4().hex * 2, source="run", copy=False)


def generate(events_dir, n_events, writers=8, seed=0) -> int:
    """Write about ``n_events`` events (at least) across ``writers`` segments; return the count."""
    rng = random.Random(seed)
    random.seed(seed)
    start = datetime(2025, 1, 1, tzinfo=timezone.utc)
    day = events_dir / "2025-01-01"
    day.mkdir(parents=True, exist_ok=True)
    ws = [_Writer(day / f"bench-{1000 + i}-20250101T000000000000Z-{i:04x}.jsonl", start)
          for i in range(writers)]
    templates = ["creative-synthesis-v10", "deliberate-rolling-thread", "essay-theme-v2"]
    llms = ["sonnet-4", "gemini-25-pro", "deepseek-r1", "qwen3-235b"]
    evaluators = [("daydreaming-verification-v2", "sonnet-4"), ("novelty", "gemini-25-pro"),
                  ("o3-prior-art", "deepseek-r1")]
    chain = 0
    while sum(w.count for w in ws) < n_events:
        cohort = f"cohort-{chain // CHAINS_PER_COHORT:04d}"
        members, chains = [], []
        for c in range(chain, chain + CHAINS_PER_COHORT):
            combo = f"combo_v1_{c:08x}"
            draft = dict(stage="draft", gen_id=f"d_{c:012x}", parent_gen_id=None, combo_id=combo,
                         template_id=rng.choice(templates), llm_model_id=rng.choice(llms), replicate=1)
            essay = dict(draft, stage="essay", gen_id=f"e_{c:012x}", parent_gen_id=draft["gen_id"],
                         template_id="essay-" + draft["template_id"])
            evals = [dict(essay, stage="evaluation", gen_id=f"v_{c:012x}_{k}", parent_gen_id=essay["gen_id"],
                          template_id=t, llm_model_id=m) for k, (t, m) in enumerate(evaluators)]
            members += [[g[f] for f in MEMBER_FIELDS] for g in (draft, essay, *evals)]
            chains.append((draft, essay, evals))
        chain += CHAINS_PER_COHORT
        ws[0].emit("cohort_built", cohort_id=cohort, spec_hash=uuid.uuid4().hex,
                   catalog_hash=uuid.uuid4().hex,
                   counts={"draft": len(chains), "essay": len(chains),
                           "evaluation": len(chains) * EVALS_PER_ESSAY},
                   member_fields=MEMBER_FIELDS, members=members)
        for i, (draft, essay, evals) in enumerate(chains):
            w = ws[i % len(ws)]
            _run_generation(w, cohort, draft, rng)
            _run_generation(w, cohort, essay, rng)
            for ev in evals:
                _run_generation(w, cohort, ev, rng, score=True)
        for w in ws:
            w.flush()
    return sum(w.count for w in ws)


def parse_floor(events_dir) -> int:
    """Read every segment and json.loads every line: the least any replay must do."""
    n = 0
    for path in iter_segments(events_dir):
        for line in path.read_bytes().decode("utf-8").split("\n"):
            if line:
                json.loads(line)
                n += 1
    return n


def read_checked(events_dir) -> int:
    """Read and check every event as a replay does, folding nothing; return the events kept."""
    stats = ReadStats()
    for _ in scan_events(events_dir, stats=stats):
        pass
    return stats.events


def _cpu() -> float:
    # a full replay forks helpers (pipeline.fold_state): their CPU time counts too, once reaped
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _timed(fn, *args, **kwargs):
    """(wall seconds, CPU seconds of this process and its children, fn's value)."""
    t0, c0 = time.perf_counter(), _cpu()
    value = fn(*args, **kwargs)
    return time.perf_counter() - t0, _cpu() - c0, value


def main(argv=()) -> dict:
    """Run the benchmark; ``argv`` as on the command line (empty: defaults). Returns the numbers."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="100k events")
    parser.add_argument("--append", type=int, default=200,
                        help="at least this many events (one synthetic cohort) appended after the full replay, then replayed incrementally")
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="time floor, checks and full replay N times, alternating; report the best")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--keep", type=Path, help="generate into this dir and keep it")
    where.add_argument("--log", type=Path, help="time this existing events dir instead of generating one")
    args = parser.parse_args(argv)
    if args.quick:
        args.events = 100_000

    with tempfile.TemporaryDirectory(prefix="replay-bench-") as tmp:
        root = args.keep or Path(tmp)
        events_dir = args.log or root / "events"
        gen_s, _, n = _timed(generate, events_dir, args.events, args.writers) if not args.log else (0.0, 0.0, None)

        # best wall and best CPU time of each step; CPU time is the steadier on a busy machine
        best = {step: [float("inf"), float("inf")] for step in ("floor", "check", "replay")}
        value, runs = {}, []
        for i in range(args.repeat):
            walls = {}
            for step, fn, fn_args in (("floor", parse_floor, ()), ("check", read_checked, ()),
                                      # a fresh tables dir each time: every run writes every table
                                      ("replay", replay, (root / f"tables-{i}", False, True))):
                walls[step], cpu, value[step] = _timed(fn, events_dir, *fn_args)
                best[step] = [min(best[step][0], walls[step]), min(best[step][1], cpu)]
            runs.append((walls["floor"], walls["replay"]))
            if args.repeat > 1:   # each round's own ratio: how much the host moved between runs
                print(f"run {i + 1}: floor {walls['floor']:.2f} s, full replay {walls['replay']:.2f} s "
                      f"({walls['replay'] / walls['floor']:.2f}x)", flush=True)
        parsed, checked, stats = value.values()
        n = parsed if n is None else n

        if not args.log:
            appended = generate(events_dir, args.append, writers=args.writers, seed=1)
            incremental_s, _, incremental = _timed(replay, events_dir, root / f"tables-{args.repeat - 1}")
    assert parsed == n == checked == stats.read.events, (parsed, n, checked, stats.read.events)

    (floor_s, floor_cpu), (check_s, check_cpu), (replay_s, replay_cpu) = best.values()
    result = {"events": n, "generate_s": round(gen_s, 3), "floor_s": round(floor_s, 3),
              "check_s": round(check_s, 3), "replay_s": round(replay_s, 3), "events_per_s": round(n / replay_s),
              "ratio_check_to_floor": round(check_s / floor_s, 2),
              "ratio_replay_to_floor": round(replay_s / floor_s, 2),
              "floor_cpu_s": round(floor_cpu, 3), "check_cpu_s": round(check_cpu, 3),
              "replay_cpu_s": round(replay_cpu, 3), "ratio_replay_to_floor_cpu": round(replay_cpu / floor_cpu, 2),
              "runs": [(round(f, 3), round(r, 3)) for f, r in runs]}
    print(f"events:            {n:,}" + (f" (best of {args.repeat} runs of each step)" if args.repeat > 1 else ""))
    print("                   wall      CPU")
    for label, wall, cpu in (("floor (read+json)", floor_s, floor_cpu), ("read + checks", check_s, check_cpu),
                             ("full replay", replay_s, replay_cpu)):
        print(f"{label + ':':<18} {wall:6.2f} s {cpu:6.2f} s   {wall / floor_s:.2f}x / {cpu / floor_cpu:.2f}x the floor")
    print(f"events/s:          {n / replay_s:,.0f}")
    print(f"replay / floor:    {replay_s / floor_s:.2f}x (CPU time: {replay_cpu / floor_cpu:.2f}x)")
    if not args.log:
        assert incremental.incremental and incremental.read.events == appended, incremental.summary()
        result.update(appended=appended, incremental_s=round(incremental_s, 3),
                      ratio_incremental_to_full=round(incremental_s / replay_s, 2))
        print(f"incremental:       {incremental_s:.2f} s after {appended} appended events "
              f"({incremental_s / replay_s:.2f}x the full replay)")
    print(f"rows:              {stats.rows}")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
