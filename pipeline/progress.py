"""A cohort run's progress, counted from the files on disk, and the line that shows it.

    >>> tally = Tally(paths, rows, run_id, run_started)
    >>> tally.scan()                          # looks again only at generations not yet settled
    >>> format_line("c1", tally.counts(), elapsed_s=12.0, settled_before=0)
    'c1: draft 6/6  essay 8/12  evaluation 0/24 | 1 failed, 2 blocked | 14 calls, 5.2k tokens, $0.0123 | 1.2/s, ETA 0:21'

A generation is settled once it has parsed output, or a failure (or blocked) record of this run;
calls, tokens and cost are those of its metadata when its call was made in this run (as in
``daydream status`` and the run's final summary). ``Display`` polls a Tally in a thread while
RunCohort works: a live line on a terminal (tqdm), a plain line every few seconds otherwise, and
RunCohort's progress and status message in Luigi (a luigid's visualiser shows them).
"""
import os
import sys
import threading
import time

from .fsio import read_json
from .errors import StoreError
from .stages import STAGES

POLL_S = 2.0          # how often the display looks at the files (each look stats the unsettled rows)
PLAIN_EVERY_S = 5.0   # a plain line this often when the output is not a terminal


class Tally:
    def __init__(self, paths, rows, run_id, run_started):
        self.run_id, self.run_started = run_id, run_started
        self.rows = [(r["stage"], str(paths.gen_dir(r["stage"], r["gen_id"]))) for r in rows]
        self.final = {}  # index in rows -> (state, call made in this run: (prompt, completion, cost) or None)

    def _settle(self, gen_dir, state):
        try:
            meta = read_json(os.path.join(gen_dir, "metadata.json"))
        except (FileNotFoundError, StoreError):
            meta = {}
        call = None
        if (meta.get("called_at") or "") >= self.run_started:
            call = (meta.get("prompt_tokens") or 0, meta.get("completion_tokens") or 0, meta.get("cost") or 0.0)
        return state, call

    def _marker_state(self, gen_dir):
        """failed / blocked when failed.json was written by this run, else None (an earlier run's
        failure is retried by this one)."""
        try:
            marker = read_json(os.path.join(gen_dir, "failed.json"))
        except (FileNotFoundError, StoreError):
            return None
        if marker.get("run_id") != self.run_id:
            return None
        return "blocked" if marker.get("blocked_by") else "failed"

    def scan(self):
        for i, (_, gen_dir) in enumerate(self.rows):
            if i in self.final:
                continue
            if os.path.exists(os.path.join(gen_dir, "parsed.txt")):
                self.final[i] = self._settle(gen_dir, "done")
            elif os.path.exists(os.path.join(gen_dir, "failed.json")):
                state = self._marker_state(gen_dir)
                if state:
                    self.final[i] = self._settle(gen_dir, state)
        return self

    def counts(self) -> dict:
        out = {"stages": {s: [0, 0] for s in STAGES}, "failed": 0, "blocked": 0, "settled": len(self.final),
               "total": len(self.rows), "calls": 0, "tokens": 0, "cost": 0.0}
        for i, (stage, _) in enumerate(self.rows):
            out["stages"][stage][1] += 1
            state, call = self.final.get(i, (None, None))
            if state == "done":
                out["stages"][stage][0] += 1
            elif state:
                out[state] += 1
            if call:
                out["calls"] += 1
                out["tokens"] += call[0] + call[1]
                out["cost"] += call[2]
        return out


def _duration(seconds) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _tokens(n) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def describe(counts) -> str:
    """Per stage done/total, failures, calls, tokens, cost."""
    stages = "  ".join(f"{s} {d}/{t}" for s, (d, t) in counts["stages"].items() if t)
    return (f"{stages} | {counts['failed']} failed, {counts['blocked']} blocked | {counts['calls']} calls, "
            f"{_tokens(counts['tokens'])} tokens, ${counts['cost']:.4f}")


def rate_and_eta(counts, elapsed_s, settled_before) -> str:
    """Generations settled per second since the display started, and the time left at that rate."""
    done_here = counts["settled"] - settled_before
    if elapsed_s <= 0 or done_here <= 0:
        return "-/s, ETA -"
    rate = done_here / elapsed_s
    return f"{rate:.1f}/s, ETA {_duration((counts['total'] - counts['settled']) / rate)}"


def format_line(cohort_id, counts, elapsed_s, settled_before) -> str:
    return f"{cohort_id}: {describe(counts)} | {rate_and_eta(counts, elapsed_s, settled_before)}"


def percent(counts) -> int:
    return int(100 * counts["settled"] / counts["total"]) if counts["total"] else 100


class Display:
    """While the ``with`` block runs: poll a Tally every POLL_S, show it, and hand luigi the
    percentage and line (``report(percent, line)``) whenever they change. ``cpu_s`` is what the
    polling cost (the display's own CPU time), reported in the run's log."""

    def __init__(self, tally, cohort_id, report, live=True, stream=None):
        self.tally, self.cohort_id, self.report = tally, cohort_id, report
        self.stream = stream or sys.stderr
        self.live = live
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._bar = None
        self._last = None

    def _tick(self, now, started, settled_before, last_plain):
        cpu = time.thread_time()
        counts = self.tally.scan().counts()
        line = format_line(self.cohort_id, counts, now - started, settled_before)
        if (percent(counts), describe(counts)) != self._last:
            self._last = (percent(counts), describe(counts))
            self.report(percent(counts), line)
        if self._bar is not None:
            self._bar.n = counts["settled"]
            self._bar.set_description_str(f"{self.cohort_id}: {describe(counts)}", refresh=False)
            self._bar.refresh()
        elif self.live and now - last_plain >= PLAIN_EVERY_S:
            print(line, file=self.stream, flush=True)
            last_plain = now
        self.cpu_s += time.thread_time() - cpu
        return last_plain

    def _loop(self):
        started = time.monotonic()
        settled_before = self.tally.scan().counts()["settled"]
        last_plain = started
        while not self._stop.wait(POLL_S):
            last_plain = self._tick(time.monotonic(), started, settled_before, last_plain)
        self._tick(time.monotonic(), started, settled_before, float("inf"))

    def __enter__(self):
        if self.live and self.stream.isatty():
            from tqdm import tqdm

            try:
                width = os.get_terminal_size(self.stream.fileno()).columns
            except OSError:
                width = 0
            self._bar = tqdm(total=self.tally.counts()["total"], file=self.stream, unit="gen", leave=True,
                             ncols=width or 160, bar_format="{desc} | {n_fmt}/{total_fmt} {rate_fmt}, ETA {remaining}")
        self._thread = threading.Thread(target=self._loop, name="daydream-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self._bar is not None:
            self._bar.close()
        return False
