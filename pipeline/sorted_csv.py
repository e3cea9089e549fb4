"""Rows of a big CSV file sorted by a key column, found or replaced without parsing the rest.

    >>> data = mapped("data/tables/evaluation_results.csv")
    >>> select(data, [b"v_1x2", b"v_9zz"])          # the header and those rows, as CSV bytes
    >>> new, removed = splice(data, {"e_12": b"e_12,...\\n", "v_9": b""})   # replace, remove
    >>> splice_file(path, {"e_12": b"e_12,...\\n"})   # the same, in place

The replayed tables and the original's cross-experiment tables are written by csv.writer sorted
by a key cell (a gen_id, or the ts of llm_calls), so a cohort's report or a replay's few changed
rows cost the same on a long history as on a short one: rows are found by bisecting byte
offsets. A newline starts a row unless it lies inside a quoted cell (an odd number of quote
characters before it: csv doubles quotes inside quoted cells). A group is every row whose key is
the same (a generation's row, an essay's pivot rows, the calls at one timestamp).

Where bisection cannot apply - a quoted key cell, or a quoted cell before the key - SortedCsvError
is raised (select returns None): callers parse the whole file instead.
"""
import mmap
import os
import re
from bisect import bisect_left

from .fsio import write_bytes_atomic

_QUOTE = re.compile(b'"')
_NEEDS_QUOTES = re.compile('[,"\r\n]')   # csv.writer quotes a cell holding one of these


class SortedCsvError(ValueError):
    """The rows cannot be found by comparing key cells as bytes (a key csv quotes, an empty file)."""


def mapped(path):
    """The bytes of file ``path``, mapped rather than read: bisection touches only the pages it
    looks at (a bytes-like object with find, rfind and slicing)."""
    with open(path, "rb") as fh:
        try:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:   # an empty file cannot be mapped
            return b""


class _Rows:
    """Row starts and key cells of CSV ``data`` (header first) keyed by cell ``column``."""

    def __init__(self, data: bytes, column: int = 0):
        self.data, self.column = data, column
        self.quotes = [m.start() for m in _QUOTE.finditer(data)] if data.find(b'"') != -1 else []
        self.body = self.start_at(1)  # after the header

    def start_at(self, p) -> int:
        """The first row start at or after byte ``p`` (len(data) past the last row)."""
        data, quotes = self.data, self.quotes
        i = data.find(b"\n", p - 1)
        while i != -1 and quotes and bisect_left(quotes, i) & 1:
            i = data.find(b"\n", i + 1)
        return len(data) if i == -1 else i + 1

    def key(self, s) -> bytes:
        """The key cell of the row starting at ``s``."""
        data = self.data
        newline = data.find(b"\n", s)
        end = len(data) if newline == -1 else newline
        for _ in range(self.column):
            if data[s:s + 1] == b'"':
                raise SortedCsvError(f"quoted cell before the key at byte {s}")
            comma = data.find(b",", s, end)
            if comma == -1:
                raise SortedCsvError(f"the row at byte {s} has no cell {self.column}")
            s = comma + 1
        if data[s:s + 1] == b'"':
            raise SortedCsvError(f"quoted key at byte {s}")
        comma = data.find(b",", s, end)
        return data[s:end if comma == -1 else comma]

    def first_at_or_after(self, key: bytes, lo: int) -> int:
        """The start of the first row from row start ``lo`` on whose key is >= ``key``."""
        end, step = len(self.data), 256
        while True:   # gallop from lo: keys looked up in one go are sorted, often close together
            hi = min(lo + step, end)
            s = self.start_at(hi)
            if s >= end or self.key(s) >= key:
                break
            lo, step = self.start_at(s + 1), step * 2
        while lo < hi:   # the answer is a row start in [lo, hi), or the first one from hi
            mid = (lo + hi) // 2
            s = self.start_at(mid)
            if s < end and self.key(s) < key:
                lo = self.start_at(s + 1)
            else:
                hi = mid
        return self.start_at(lo)

    def group(self, key: bytes, lo: int) -> tuple:
        """(start, end, rows) of the rows keyed ``key``, searched from row start ``lo`` on;
        start == end where they would go."""
        start = end = self.first_at_or_after(key, lo)
        rows = 0
        while end < len(self.data) and self.key(end) == key:
            end, rows = self.start_at(end + 1), rows + 1
        return start, end, rows

    def every(self):
        """(start, end) of every row, in file order."""
        s, size = self.body, len(self.data)
        while s < size:
            e = self.start_at(s + 1)
            yield s, e
            s = e


def _lines(pieces) -> bytes:
    """The rows joined, the last one ended by a newline (a file's last may lack it)."""
    out = b"".join(pieces)
    return out if not out or out.endswith(b"\n") else out + b"\n"


def rows(data: bytes, keys, column: int = 0, sorted_by_key: bool = True) -> bytes:
    """Every row of ``data`` whose ``column`` cell is one of ``keys`` (bytes), in file order.
    ``sorted_by_key``: the rows are sorted by that cell (bisection), else every row is looked at.
    Raises SortedCsvError where bisection does not apply."""
    return _rows_of(_Rows(data, column), keys, sorted_by_key)


def select(data: bytes, keys, column: int = 0, sorted_by_key: bool = True):
    """The header line and rows(); None where bisection does not apply (parse the whole file)."""
    try:
        found = _Rows(data, column)
        return _lines([data[:found.body]]) + _rows_of(found, keys, sorted_by_key)
    except SortedCsvError:
        return None


def _rows_of(found, keys, sorted_by_key) -> bytes:
    data = found.data
    if sorted_by_key:
        spans, at = [], found.body
        for key in sorted(set(keys)):
            start, at, _ = found.group(key, at)
            spans.append((start, at))
        return _lines(data[s:e] for s, e in spans)
    wanted, column = set(keys), found.column
    if not found.quotes:   # every line is a row: split them in C rather than walk row by row
        try:
            return _lines([line + b"\n" for line in data[found.body:].split(b"\n")
                           if line and line.split(b",", column + 1)[column] in wanted])
        except IndexError:
            raise SortedCsvError(f"a row has no cell {column}") from None
    return _lines(data[s:e] for s, e in found.every() if found.key(s) in wanted)


def groups_in_file(path, keys) -> dict:
    """key -> the bytes of its rows, for those of ``keys`` (str) that have rows in the file
    (keyed by its first column)."""
    found = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        found_rows = _Rows(data)
        at = found_rows.body
        for key in sorted(keys):
            start, at, n = found_rows.group(key.encode("utf-8"), at)
            if n:
                found[key] = data[start:at]
    return found


def _edits(data, groups, column) -> tuple:
    """([(start, end, new bytes)] in file order, rows removed) for ``groups`` in ``data``."""
    found = _Rows(data, column)
    edits, removed, end = [], 0, found.body
    for key in sorted(groups):
        if _NEEDS_QUOTES.search(key):
            raise SortedCsvError(f"key {key!r} would be quoted")
        start, end, n = found.group(key.encode("utf-8"), end)
        edits.append((start, end, groups[key]))
        removed += n
    return edits, removed


def splice(data: bytes, groups: dict, column: int = 0) -> tuple:
    """``data`` with the rows of each key in ``groups`` (str -> the new rows' bytes, b"" to
    remove them) replaced; returns (new data, rows removed)."""
    edits, removed = _edits(data, groups, column)
    view = memoryview(data)   # pieces of a (mapped) file are not copied before the join
    pieces, at = [], 0
    for start, end, text in edits:
        pieces += (view[at:start], text)
        at = end
    pieces.append(view[at:])
    return b"".join(pieces), removed


def splice_file(path, groups: dict) -> int:
    """splice() a file keyed by its first column in place (atomically, no fsync); returns the rows
    removed. The unchanged stretches are copied by the kernel (copy_file_range), not through Python."""
    with open(path, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        if not size:
            raise SortedCsvError(f"{path} is empty")
        with mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as data:
            edits, removed = _edits(data, groups, 0)

        def write(out):
            at = 0
            for start, end, text in edits + [(size, size, b"")]:
                _copy(src.fileno(), out, at, start - at)
                view = memoryview(text)
                while view:
                    view = view[os.write(out, view):]
                at = end
        write_bytes_atomic(path, write, fsync=False)
    return removed


def _copy(src, out, offset, count) -> None:
    while count > 0:
        try:
            done = os.copy_file_range(src, out, count, offset)
        except (AttributeError, OSError):   # not Linux, or a filesystem pair it cannot copy between
            done = os.write(out, os.pread(src, min(count, 1 << 24), offset))
        if not done:
            raise SortedCsvError("the table shrank while being spliced")
        offset, count = offset + done, count - done
