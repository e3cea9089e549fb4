"""scripts/quickstart, the README's one-minute start, run as a user would (minus the pip install):
in a copy of the repository's files it needs, with the tools of this venv."""
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from conftest import REPO, command_env

FILES = ["scripts/quickstart", "cohorts/quickstart/spec.yaml", "luigi.cfg", "tests/support/__init__.py",
         "tests/support/stub_server.py"]


def test_quickstart_runs_a_cohort_against_the_loopback_server_within_a_minute(tmp_path):
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, tmp_path / name)
    shutil.copytree(REPO / "data" / "1_raw", tmp_path / "data" / "1_raw")
    venv = Path(sys.executable).parent.parent
    started = time.monotonic()
    result = subprocess.run(["bash", "scripts/quickstart", "--no-install"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env=command_env({"VENV": str(venv)}))
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = tmp_path / "data" / "cohorts" / "quickstart" / "reports" / "index.html"
    assert result.stdout.rstrip().splitlines()[-1] == f"Report: {report}  (summary.md beside it)"
    assert report.is_file() and "<svg" in report.read_text(encoding="utf-8")
    assert "estimated cost of the 36 call(s) to make: $" in result.stdout
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()
            if line.split()[:1] in (["draft"], ["essay"], ["evaluation"]) and len(line.split()) == 6}
    assert rows == {"draft": ["6", "6", "0", "0", "0"], "essay": ["6", "6", "0", "0", "0"],
                    "evaluation": ["24", "24", "0", "0", "0"]}
    assert elapsed < 60, f"the one-minute start took {elapsed:.1f} s"
    # the background server ended with the script
    url = urlparse(next(line.split()[-2] for line in result.stdout.splitlines() if "loopback server at" in line))
    with socket.socket() as sock:
        assert sock.connect_ex((url.hostname, url.port)) != 0
