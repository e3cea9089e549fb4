"""Where does a full replay's time go? A timeline of its steps, in each of its processes.

    $ python -m bench.replay_trace --log DIR [--out DIR] [--alone]

Replays the log in ``--log`` (an events dir, e.g. ``bench/replay_bench.py --keep``'s) in full, into
``--out`` (a fresh temporary dir by default), with the replay's steps wrapped. Each step that takes
50 ms or more prints a line as it ends:

    [+2] _resolve            6.45 ->   6.88  faults      7  user  0.44  sys  0.00  peak  870 MB

``+2``: the process, as its pid's distance from this one (the forked replay worker, the child
that reads the end of the log, the one that writes the state); then the step's start and end in
seconds from the start, the page faults it took, its CPU time and the process's peak memory.
Steps nest (``read_all`` holds ``_read``), so their times are not to be added up. The replay
uses the second core as it would on an idle machine (``--alone``: one process, as on a busy one).
The names wrapped are the replay's own functions: a name a later version no longer has is skipped.
"""
import argparse
import marshal
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline import fold_state, replay  # noqa: E402

STEPS = {
    fold_state: ("read_all", "_read_part", "_read", "save_state", "_write_records", "write_pieces_if_changed"),
    fold_state.PendingState: ("wait", "finish"),
    replay: ("_replay_full_answer", "_listings", "_resolve", "_tables", "_state_parts", "_call_lines",
             "write_pieces_if_changed"),
    replay.Fold: ("export", "from_export", "merge"),
    marshal: ("dumps", "loads"),
}
_START, _PID = time.perf_counter(), os.getpid()


def _usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_utime, r.ru_stime


def _wrapped(name, fn):
    def step(*args, **kwargs):
        t0, (faults0, user0, sys0) = time.perf_counter(), _usage()
        try:
            return fn(*args, **kwargs)
        finally:
            t1, (faults1, user1, sys1) = time.perf_counter(), _usage()
            if t1 - t0 >= 0.05:
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
                print(f"[+{os.getpid() - _PID}] {name:<24} {t0 - _START:6.2f} -> {t1 - _START:6.2f}  "
                      f"faults {faults1 - faults0:8d}  user {user1 - user0:5.2f}  sys {sys1 - sys0:5.2f}  "
                      f"peak {peak:5d} MB", flush=True)
    return step


def main(argv=()) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", type=Path, required=True, help="the events dir to replay")
    parser.add_argument("--out", type=Path, help="the tables dir (default: a fresh temporary one)")
    parser.add_argument("--alone", action="store_true", help="one process, as when no core is spare")
    args = parser.parse_args(argv)
    for owner, names in STEPS.items():
        for name in names:
            if hasattr(owner, name):
                setattr(owner, name, _wrapped(name, getattr(owner, name)))
    fold_state.spare_core = lambda: not args.alone
    with tempfile.TemporaryDirectory(prefix="replay-trace-") as tmp:
        t0, c0 = time.perf_counter(), os.times()
        stats = replay.replay(args.log, args.out or Path(tmp) / "tables", full=True)
        t1, c1 = time.perf_counter(), os.times()
    cpu = sum(c1[:4]) - sum(c0[:4])
    print(f"{stats.read.events:,} events: {t1 - t0:.2f} s, {cpu:.2f} s of CPU in all processes")


if __name__ == "__main__":
    main(sys.argv[1:])
