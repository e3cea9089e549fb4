"""Test and benchmark support: project folders, luigi/daydream runs and the loopback LLM server.

Lives under tests/, so the wheel (setup.cfg: packages include pipeline*) never ships it; bench/ and
tests/ import it from a checkout (``python -m tests.support.stub_server`` from the repo root)."""
