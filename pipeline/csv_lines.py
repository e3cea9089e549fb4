"""A few records of a big CSV file, found without parsing the rest.

    >>> data = mapped("data/tables/evaluation_results.csv")
    >>> select(data, [b"v_1x2", b"v_9zz"])      # the header and those two rows, as CSV bytes

The replayed tables and the original's cross-experiment tables are written sorted by their gen_id
cell and, unless a quoted cell holds a line break, one record per line: a record is then found by
bisection over the bytes, so a cohort's report or a replay's few changed rows cost the same on a
long history as on a short one. Callers fall back on a full parse where this does not hold
(``one_record_per_line`` false, or ``Unsorted`` raised).
"""

import mmap


class Unsorted(ValueError):
    """The key cells cannot be compared as bytes (a quoted key): bisection does not apply."""


def mapped(path):
    """The bytes of file ``path``, mapped rather than read: bisection touches only the pages it
    looks at (a bytes-like object with find, rfind and slicing)."""
    with open(path, "rb") as fh:
        try:
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:   # an empty file cannot be mapped
            return b""


def one_record_per_line(data: bytes) -> bool:
    """True when no quoted cell of CSV ``data`` holds a line feed, so each b"\\n" ends a record.

    Quotes pair up in order (an escaped quote is a closing and an opening one), and every
    character of a quoted cell lies inside a pair."""
    pos = 0
    while True:
        start = data.find(b'"', pos)
        if start < 0:
            return True
        end = data.find(b'"', start + 1)
        if end < 0 or data.find(b"\n", start, end) >= 0:
            return False
        pos = end + 1


def body_start(data: bytes) -> int:
    """Offset of the first record: after the header line."""
    end = data.find(b"\n")
    return len(data) if end < 0 else end + 1


def key_cell(data: bytes, start: int, end: int, column: int) -> bytes:
    """Cell ``column`` of the line ``data[start:end]``; Unsorted if it or a cell before it is quoted."""
    for _ in range(column):
        if data[start:start + 1] == b'"':
            raise Unsorted("quoted cell before the key")
        comma = data.find(b",", start, end)
        if comma < 0:
            return b""
        start = comma + 1
    comma = data.find(b",", start, end)
    cell = data[start:end if comma < 0 else comma]
    if cell.startswith(b'"'):
        raise Unsorted(f"quoted key cell {cell[:40]!r}")
    return cell


def locate(data: bytes, key: bytes, column: int = 0, lo: int = None) -> tuple:
    """``(start, end, found)``: the line (without its b"\\n") whose ``column`` cell is ``key`` in
    one-record-per-line ``data`` sorted by that cell; not found: where such a line would go
    (start == end). ``lo``: the first record's offset (default: after the header)."""
    lo = body_start(data) if lo is None else lo
    hi = len(data)
    while lo < hi:
        start = max(lo, data.rfind(b"\n", lo, (lo + hi) // 2) + 1)
        end = data.find(b"\n", start, hi)
        end = hi if end < 0 else end
        cell = key_cell(data, start, end, column)
        if cell == key:
            return start, end, True
        if cell < key:
            lo = end + 1
        else:
            hi = start
    lo = min(lo, len(data))
    return lo, lo, False


def select(data: bytes, keys, column: int = 0, sorted_by_key: bool = True):
    """The header line and, in file order, every line whose ``column`` cell is one of ``keys``,
    as CSV bytes; None when the lines of ``data`` are not its records. ``sorted_by_key``: the
    lines are sorted by that cell (bisection), else every line is looked at."""
    try:
        return _select(data, keys, column, sorted_by_key) if one_record_per_line(data) else None
    except (Unsorted, IndexError):   # IndexError: a line with fewer cells than ``column``
        return None


def _select(data, keys, column, sorted_by_key):
    first = body_start(data)
    header = data[:first]
    if not header.endswith(b"\n"):
        header += b"\n"
    if sorted_by_key:
        spans = sorted(span for span in (locate(data, key, column, first) for key in set(keys)) if span[2])
        lines = [data[start:end] for start, end, _ in spans]
    else:
        wanted = set(keys)
        lines = data[first:].split(b"\n")
        # quoted cells before the key would shift it: look at each line (find, not `in`, which
        # walks a mapped file byte by byte)
        if data.find(b'"') >= 0:
            lines = [line for line in lines if line and key_cell(line, 0, len(line), column) in wanted]
        else:
            lines = [line for line in lines if line and line.split(b",", column + 1)[column] in wanted]
    return header + b"".join(line + b"\n" for line in lines)
