"""Benchmarks: ``python -m bench [--quick]`` runs them all (see bench/run_all.py)."""
