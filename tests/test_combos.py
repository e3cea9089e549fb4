"""data/combo_mappings.csv stays whole when several processes build cohorts at once."""
import csv
import multiprocessing

from pipeline.combos import FIELDS, generate_combos, read_mappings, record_combos

COMBOS = generate_combos(["a", "b", "c", "d"], "paragraph", 2)
BUILDERS = 8


def _record(path, start):
    start.wait()  # all at once: the race is on creating the file and on "not recorded yet"
    record_combos(path, COMBOS, "paragraph", 2)


def test_builders_racing_on_a_new_mappings_file_write_one_header_and_each_combo_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(5):
        path = tmp_path / f"round{round_}" / "combo_mappings.csv"
        start = ctx.Barrier(BUILDERS)
        procs = [ctx.Process(target=_record, args=(path, start)) for _ in range(BUILDERS)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [p.exitcode for p in procs] == [0] * BUILDERS
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == FIELDS and FIELDS not in rows[1:], rows
        assert len(rows) - 1 == 2 * len(COMBOS), rows  # two concepts per combo, each combo once
        assert {cid: m["concepts"] for cid, m in read_mappings(path).items()} == COMBOS
