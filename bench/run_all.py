"""Run every benchmark and print one table of the numbers they return.

    $ python -m bench                 # full sizes (tens of minutes)
    $ python -m bench --quick         # small sizes, a minute or two
    $ python -m bench --only throughput --quick

Each benchmark module has ``main(argv) -> dict``; its own report is printed as it runs, then the
combined table lists every number under ``<bench>  <key path>``.
"""
import argparse
import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# name -> (module, argv for --quick, argv for full sizes)
BENCHES = {
    "replay": ("bench.replay_bench", ["--events", "20000"], []),
    "scale": ("bench.scale_bench", ["--sizes", "1k", "--no-naive"], []),
    "throughput": ("bench.throughput_bench", ["--quick"], []),
    "history": ("bench.history_bench", ["--quick"], []),
    "jsonl": ("bench.jsonl_bench", ["--events", "20000"], []),
    "progress": ("bench.progress_bench", ["--runs", "1"], []),
}


def flatten(value, prefix=""):
    """(key path, scalar) pairs; list items are labelled by their size/workers field when they have one."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            label = i
            if isinstance(item, dict):
                label = next((f"{k}={item[k]}" for k in ("size", "workers") if k in item), i)
            yield from flatten(item, f"{prefix}[{label}]")
    else:
        yield prefix, value


def _show(value):
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def print_table(results: dict):
    rows = [(name, key, _show(value)) for name, result in results.items() for key, value in flatten(result)]
    widths = [max(len(r[i]) for r in rows + [("bench", "metric", "value")]) for i in range(3)]
    line = f"{'bench':<{widths[0]}}  {'metric':<{widths[1]}}  {'value':>{widths[2]}}"
    print(line)
    print("-" * len(line))
    for name, key, value in rows:
        print(f"{name:<{widths[0]}}  {key:<{widths[1]}}  {value:>{widths[2]}}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the benchmarks run")
    ap.add_argument("--only", action="append", choices=list(BENCHES), help="run only this one (repeatable)")
    args = ap.parse_args(argv)

    results, ok = {}, True
    for name in args.only or list(BENCHES):
        module, quick, full = BENCHES[name]
        print(f"\n=== {name}: {module} {' '.join(quick if args.quick else full)}", flush=True)
        started = time.perf_counter()
        result = importlib.import_module(module).main(quick if args.quick else full)
        result["bench_s"] = round(time.perf_counter() - started, 1)
        ok = ok and result.get("ok", True)
        results[name] = result

    print(f"\n=== all benchmarks{' (--quick)' if args.quick else ''}")
    print_table(results)
    return {"results": results, "ok": ok}


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
