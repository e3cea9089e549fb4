"""Atomic writes: file modes honour the umask, and the test suite's temp-file check sees fsio's temp files."""
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import fsio

from conftest import make_project
from trust_checks import assert_store_whole, is_temp_file

REPO = Path(__file__).resolve().parents[1]

_WRITE_ALL = """
import os, sys
from pipeline import fsio
os.umask(int(sys.argv[2], 8))
d = sys.argv[1]
fsio.write_text_atomic(os.path.join(d, "atomic.txt"), "a")
fsio.write_json_atomic(os.path.join(d, "meta.json"), {"a": 1})
fsio.write_text_once(os.path.join(d, "raw.txt"), "paid")
fsio.write_if_changed(os.path.join(d, "table.csv"), "x\\n")
"""


@pytest.mark.parametrize("umask, mode", [("022", 0o644), ("002", 0o664), ("077", 0o600)])
def test_written_files_get_the_mode_open_would_give_them(tmp_path, umask, mode):
    """0644 under the usual umask (not mkstemp's 0600), so a data/ shared between users or machines
    stays readable; a stricter umask is honoured too."""
    subprocess.run([sys.executable, "-c", _WRITE_ALL, str(tmp_path), umask], check=True, cwd=REPO, timeout=60)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in tmp_path.iterdir()}
    assert modes == {name: oct(mode) for name in ("atomic.txt", "meta.json", "raw.txt", "table.csv")}


def test_store_check_finds_a_temp_file_left_by_a_killed_writer(tmp_path):
    """The check that "no temporary file is left" really looks at fsio's temp-file names."""
    project = make_project(tmp_path / "proj")
    target = project.data_root / "gens" / "draft" / "d_x" / "raw.txt"
    tmp = Path(fsio._write_tmp(target, b"half"))  # what a writer killed before its rename leaves
    assert is_temp_file(tmp.name) and not is_temp_file("raw.txt") and not is_temp_file("parsed.txt.superseded-1")
    with pytest.raises(AssertionError, match="temporary files left behind"):
        assert_store_whole(project)
    assert_store_whole(project, tmp_ok=True)  # right after a kill: allowed, under a hidden name
    os.unlink(tmp)
    assert_store_whole(project)


@pytest.mark.parametrize("renameat2", ["system", "absent"])
def test_write_once_never_replaces_and_leaves_no_temp_file(tmp_path, monkeypatch, renameat2):
    """A paid answer is written once: a second writer gets False and the first text stays, with
    RENAME_NOREPLACE or, where the system lacks it, the link fallback."""
    if renameat2 == "absent":
        monkeypatch.setattr(fsio, "_RENAMEAT2", None)
    target = tmp_path / "gen" / "raw.txt"
    assert fsio.write_text_once(target, "first answer") is True
    assert fsio.write_text_once(target, "second answer") is False
    assert target.read_text(encoding="utf-8") == "first answer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["raw.txt"]


def test_written_in_pieces_only_when_the_text_differs(tmp_path):
    """A table written in pieces: an equal text leaves the file and its mtime alone, whatever the
    pieces; a text that differs anywhere, or is shorter or longer, replaces it; no temp file stays."""
    path = tmp_path / "t.csv"
    assert fsio.write_pieces_if_changed(path, ["a,b\n", "1,2\n", "3,4\n"]) is True
    os.utime(path, ns=(10**9, 10**9))
    assert fsio.write_pieces_if_changed(path, ["a,b\n1", ",2\n3,4", "\n"]) is False
    assert path.stat().st_mtime_ns == 10**9
    for text in (["a,b\n", "1,2\n"], ["a,b\n", "1,2\n3,4\n", "5,6\n"], ["a,b\n", "1,9\n", "3,4\n"], []):
        assert fsio.write_pieces_if_changed(path, text) is True
        assert path.read_text() == "".join(text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]
