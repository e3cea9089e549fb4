"""Records of a big CSV file found without parsing the rest (pipeline/csv_lines.py)."""
import csv
import io
import random

from pipeline import csv_lines


def table(rows, header=("gen_id", "note", "owner")) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


def records(data):
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


def test_select_finds_the_rows_of_sorted_keys_as_a_full_parse_would():
    rng = random.Random(0)
    ids = sorted(f"v_{rng.getrandbits(40):x}" for _ in range(500))
    rows = [(g, rng.choice(["ok", "a, quoted note", 'said "no"', "ünïcode"]), f"x{i}") for i, g in enumerate(ids)]
    data = table(rows)
    for keys in ([ids[0], ids[-1]], rng.sample(ids, 40) + ["v_missing", "a", "zzz"], []):
        expected = [["gen_id", "note", "owner"]] + [list(r) for r in rows if r[0] in set(keys)]
        assert records(csv_lines.select(data, [k.encode() for k in keys])) == expected
    # another column, any order: every line is looked at; a quoted cell before it: no answer
    wanted = {b"x3", b"x499"}
    plain = table([(g, "ok", owner) for g, _, owner in rows])
    assert [r[2] for r in records(csv_lines.select(plain, wanted, column=2, sorted_by_key=False))[1:]] == ["x3", "x499"]
    assert csv_lines.select(data, wanted, column=2, sorted_by_key=False) is None


def test_locate_gives_the_line_or_where_it_would_go():
    data = table([("a", "1", ""), ("c", "2", ""), ("e", "3", "")])
    start, end, found = csv_lines.locate(data, b"c")
    assert found and data[start:end] == b"c,2,"
    start, end, found = csv_lines.locate(data, b"d")
    assert not found and start == end and data[start:].startswith(b"e,3")
    assert csv_lines.locate(data, b"z") == (len(data), len(data), False)
    assert csv_lines.locate(table([]), b"a")[2] is False


def test_lines_that_are_not_records_are_left_to_a_full_parse():
    # a quoted line break: a line is not a record
    assert not csv_lines.one_record_per_line(table([("a", "two\nlines", "")]))
    assert csv_lines.select(table([("a", "two\nlines", ""), ("b", "", "")]), [b"b"]) is None
    assert csv_lines.one_record_per_line(table([("a", 'one "quoted", line', "")]))
    # a key that needs quotes cannot be compared as bytes
    assert csv_lines.select(table([("a,b", "", ""), ("c", "", "")]), [b"c"]) is None
