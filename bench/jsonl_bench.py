"""Is the `jsonlines` package a better way to read and write the event log than the code's own?

    $ python bench/jsonl_bench.py [--events 200000]

Writes a synthetic log (bench/replay_bench.py's generator), then times, in the same run:
reading every line to a dict with ``jsonlines.Reader`` vs pipeline.events' way (one read and split
per segment, the C scanner per line), and appending every event with ``jsonlines.Writer`` vs
EventLog's way (compact ``json.dumps`` + one ``os.write`` per line). ``main(argv)`` returns the
numbers as a dict for bench/run_all.py.
"""
import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

try:
    import jsonlines  # not a dependency of the project (this bench is why): `pip install jsonlines` to rerun it
except ImportError:
    jsonlines = None

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.replay_bench import generate  # noqa: E402
from pipeline.events import _split_lines, _scan_once, iter_segments  # noqa: E402


def read_ours(events_dir) -> list:
    out = []
    for path in iter_segments(events_dir):
        for line in _split_lines(path.read_bytes()):
            if line:
                out.append(_scan_once(line, 0)[0])
    return out


def read_jsonlines(events_dir) -> list:
    out = []
    for path in iter_segments(events_dir):
        with jsonlines.open(path) as reader:
            out.extend(reader)
    return out


def write_ours(path, events):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for event in events:
            os.write(fd, (json.dumps(event, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                          + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def write_jsonlines(path, events):
    # flush=True: each event reaches the file at once, as the log needs (a crash keeps what was emitted)
    with jsonlines.open(path, mode="a", flush=True, compact=True) as writer:
        for event in events:
            writer.write(event)


def _time(fn, *args, repeat=3):
    """Best of ``repeat`` runs (the machine is shared), and the result."""
    best = None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn(*args)
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    return best, result


def main(argv=()) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=200_000)
    args = parser.parse_args(argv)
    if jsonlines is None:
        print("jsonlines is not installed (the project does not use it); `pip install jsonlines` to rerun this")
        return {"skipped": "jsonlines not installed"}
    with tempfile.TemporaryDirectory(prefix="jsonl-bench-") as tmp:
        events_dir = Path(tmp) / "events"
        generate(events_dir, args.events, writers=4)
        read_s, ours = _time(read_ours, events_dir)
        read_jl_s, theirs = _time(read_jsonlines, events_dir)
        assert ours == theirs
        write_s, _ = _time(write_ours, Path(tmp) / "ours.jsonl", ours)
        write_jl_s, _ = _time(write_jsonlines, Path(tmp) / "theirs.jsonl", ours)
        assert (Path(tmp) / "ours.jsonl").read_bytes() == (Path(tmp) / "theirs.jsonl").read_bytes()
    n = len(ours)
    result = {"events": n, "read_ours_s": round(read_s, 3), "read_jsonlines_s": round(read_jl_s, 3),
              "ratio_read_jsonlines_to_ours": round(read_jl_s / read_s, 2),
              "write_ours_s": round(write_s, 3), "write_jsonlines_s": round(write_jl_s, 3),
              "ratio_write_jsonlines_to_ours": round(write_jl_s / write_s, 2)}
    print(f"events:                 {n:,}")
    print(f"read   ours:            {read_s:.2f} s")
    print(f"read   jsonlines:       {read_jl_s:.2f} s  ({read_jl_s / read_s:.2f}x ours)")
    print(f"append ours:            {write_s:.2f} s")
    print(f"append jsonlines:       {write_jl_s:.2f} s  ({write_jl_s / write_s:.2f}x ours)")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
