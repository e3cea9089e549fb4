"""Replace groups of rows in a CSV file sorted by its first column, without parsing the rest.

    >>> data, removed = splice(path.read_bytes(), {"e_12": b"e_12,...\\n", "v_9": b""})

A group is every row whose first field is the key (a generation's row, an essay's pivot rows,
the calls at one timestamp); the new text replaces it, or goes where the key sorts. Row starts
are found by bisecting byte offsets: a newline starts a row unless it lies inside a quoted field
(an odd number of quote characters before it - csv doubles quotes inside quoted fields).
"""
import mmap
import os
import re
from bisect import bisect_left

from .fsio import write_bytes_atomic

_QUOTE = re.compile(b'"')
_NEEDS_QUOTES = re.compile('[,"\r\n]')   # csv.writer quotes a field holding one of these


class SpliceError(Exception):
    """The file cannot be spliced (a key csv quotes, an empty file)."""


class _Rows:
    def __init__(self, data: bytes):
        self.data = data
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
        data = self.data
        if data[s:s + 1] == b'"':
            raise SpliceError(f"quoted key at byte {s}")
        end = data.find(b",", s)
        newline = data.find(b"\n", s)
        return data[s:end if 0 <= end < newline else newline]

    def first_at_or_after(self, key: bytes, lo: int) -> int:
        """The start of the first row from row start ``lo`` on whose key is >= ``key``."""
        end, step = len(self.data), 256
        while True:   # gallop from lo: keys spliced in one go are sorted, often close together
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


def groups_in_file(path, keys) -> dict:
    """key -> the bytes of its rows, for those of ``keys`` that have rows in the file."""
    found = {}
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
        rows = _Rows(data)
        at = rows.body
        for key in sorted(keys):
            start, at, n = rows.group(key.encode("utf-8"), at)
            if n:
                found[key] = data[start:at]
    return found


def _edits(data, groups) -> tuple:
    """([(start, end, new bytes)] in file order, rows removed) for ``groups`` in ``data``."""
    rows = _Rows(data)
    edits, removed, end = [], 0, rows.body
    for key in sorted(groups):
        if _NEEDS_QUOTES.search(key):
            raise SpliceError(f"key {key!r} would be quoted")
        start, end, n = rows.group(key.encode("utf-8"), end)
        edits.append((start, end, groups[key]))
        removed += n
    return edits, removed


def splice(data: bytes, groups: dict) -> tuple:
    """``data`` with the rows of each key in ``groups`` (str -> the new rows' bytes, b"" to
    remove them) replaced; returns (new data, rows removed)."""
    edits, removed = _edits(data, groups)
    pieces, at = [], 0
    for start, end, text in edits:
        pieces += (data[at:start], text)
        at = end
    pieces.append(data[at:])
    return b"".join(pieces), removed


def splice_file(path, groups: dict) -> int:
    """splice() a file in place (atomically, no fsync); returns the rows removed. The unchanged
    stretches are copied by the kernel (copy_file_range), not through Python."""
    with open(path, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        if not size:
            raise SpliceError(f"{path} is empty")
        with mmap.mmap(src.fileno(), 0, access=mmap.ACCESS_READ) as data:
            edits, removed = _edits(data, groups)

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
            raise SpliceError("the table shrank while being spliced")
        offset, count = offset + done, count - done
