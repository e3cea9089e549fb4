"""Rows of a sorted CSV found and spliced by key (pipeline/sorted_csv.py) are what a full parse
or a rewrite of the whole table gives."""
import csv
import io
import random

import pytest

from pipeline.sorted_csv import SortedCsvError, groups_in_file, select, splice, splice_file
from pipeline.replay import PIVOT_INDEX, to_csv
from pipeline.replay_delta import _recolumn


def csv_bytes(rows, header=("k", "a", "b")) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header:
        writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def test_splice_equals_a_rewrite_with_quoted_newlines_and_commas_in_other_fields():
    rng = random.Random(1)
    keys = [f"k{i:03d}" for i in range(60)]
    for _ in range(2000):
        table = {k: [[k, rng.choice(["x", "a\nb,c", 'q"\n"', ""]), str(j)] for j in range(rng.choice([1, 1, 2]))]
                 for k in rng.sample(keys, rng.randint(0, 30))}
        data = csv_bytes([row for k in sorted(table) for row in table[k]])
        changes = {k: [[k, rng.choice(["y", "\n\n,", '"', ""]), str(j)] for j in range(rng.choice([0, 1, 2]))]
                   for k in rng.sample(keys, rng.randint(0, 8))}
        expected = {**table, **changes}
        spliced, removed = splice(data, {k: csv_bytes(rows, header=None) for k, rows in changes.items()})
        assert spliced == csv_bytes([row for k in sorted(expected) for row in expected[k]])
        assert removed == sum(len(table.get(k, [])) for k in changes)


def test_splice_refuses_a_key_csv_would_quote_and_finds_groups_in_a_file(tmp_path):
    data = csv_bytes([["k1", "a", "b"], ["k2", "a\nb", "c"], ["k2", "d", "e"]])
    with pytest.raises(SortedCsvError):
        splice(data, {"k,2": b'"k,2",c,d\n'})
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    assert groups_in_file(path, ["k0", "k2"]) == {"k2": b'k2,"a\nb",c\nk2,d,e\n'}
    assert splice_file(path, {"k0": b"k0,c,d\n", "k1": b""}) == 1
    assert path.read_bytes() == csv_bytes([["k0", "c", "d"], ["k2", "a\nb", "c"], ["k2", "d", "e"]])


@pytest.mark.parametrize("quoted", [False, True])
def test_recolumn_equals_the_pivot_written_with_the_new_columns(quoted):
    rng = random.Random(3)
    every = [f"c{i}" for i in range(8)]
    for trial in range(300):
        old = sorted(rng.sample(every, rng.randint(0, 6)))
        new = sorted(set(old) - set(rng.sample(old, rng.randint(0, len(old)))) | set(rng.sample(every, rng.randint(0, 3))))
        kept = set(old) & set(new)   # a column dropped or added is empty in every row
        rows = [((f"e{r}", rng.choice(["a", "b,c", 'x"y']) if quoted else "a", "t", "u", "v"),
                 {c: rng.choice([None, 1.5, 2.0]) for c in kept}) for r in range(rng.randint(0, 20))]

        def pivot(columns):
            return to_csv(PIVOT_INDEX + tuple(columns) + ("mean", "n"),
                          [index + tuple(cells.get(c) for c in columns) + (1.0, 2) for index, cells in rows]).encode()
        assert _recolumn(pivot(old), old, new) == pivot(new)


def records(data):
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_select_finds_the_rows_of_keys_as_a_full_parse_would():
    rng = random.Random(0)
    ids = sorted(f"v_{rng.getrandbits(40):x}" for _ in range(500))
    notes = ["ok", "a, quoted note", 'said "no"', "ünïcode", "two\nlines"]
    rows = [(g, rng.choice(notes), f"x{i}") for i, g in enumerate(ids)]
    data = csv_bytes(rows, header=("gen_id", "note", "owner"))
    for keys in ([ids[0], ids[-1]], rng.sample(ids, 40) + ["v_missing", "a", "zzz"], []):
        expected = [["gen_id", "note", "owner"]] + [list(r) for r in rows if r[0] in set(keys)]
        assert records(select(data, [k.encode() for k in keys])) == expected
    # another column, in any order: every row is looked at (a quoted line break after the key)
    wanted = {b"x3", b"x499"}
    later = csv_bytes([(g, owner, "ok\nthen") for g, _, owner in rows])
    assert [r[1] for r in records(select(later, wanted, column=1, sorted_by_key=False))[1:]] == ["x3", "x499"]
    # a quoted cell before the key, or a key csv quotes: left to a full parse
    assert select(data, wanted, column=2, sorted_by_key=False) is None
    assert select(csv_bytes([("a,b", "", ""), ("c", "", "")]), [b"c"]) is None


def test_splice_by_another_column_replaces_and_removes_rows():
    data = csv_bytes([("p1", "a", "x"), ("p0", "c", "y"), ("p2", "e", "z")])
    spliced, removed = splice(data, {"c": b"p9,c,new\n", "a": b"", "d": b"p3,d,w\n"}, column=1)
    assert records(spliced) == [["k", "a", "b"], ["p9", "c", "new"], ["p3", "d", "w"], ["p2", "e", "z"]]
    assert removed == 2
