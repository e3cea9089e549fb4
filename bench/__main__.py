"""``python -m bench [--quick] [--only NAME ...]``: run every benchmark and print one table."""
import sys

from bench.run_all import main

if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
