"""Tests for fitloop.tabular.columns: reading files, inferring column kinds and the task, error messages."""

from __future__ import annotations

import gzip

import pytest
from tablefiles import SMALL, write, write_rows

from fitloop.tabular import Table, TableError, read_table

# ------------------------------------------------------------------------------------------ reading


def test_read_formats_agree(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    base = read_table(write(tmp_path / "a.csv", SMALL))
    tsv = SMALL.replace(",", "\t")
    paths = [write(tmp_path / "a.tsv", tsv), tmp_path / "a.csv.gz", tmp_path / "a.tsv.gz",
             tmp_path / "a.parquet"]
    paths[1].write_bytes(gzip.compress(SMALL.encode()))
    paths[2].write_bytes(gzip.compress(tsv.encode()))
    pq.write_table(base, paths[3])
    for p in paths:
        assert read_table(p).equals(base), p
    tab = Table.read(paths[3], target="y")
    assert tab.load_seconds >= 0 and len(tab) == 5


def test_file_not_found(tmp_path):
    with pytest.raises(TableError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv")


def test_empty_and_header_only(tmp_path):
    with pytest.raises(TableError, match="empty.csv: the file is empty"):
        read_table(write(tmp_path / "empty.csv", ""))
    with pytest.raises(TableError, match=r"no data rows \(only a header: \['a', 'b'\]\)"):
        Table.read(write(tmp_path / "head.csv", "a,b\n"), target="b")


def test_unsupported_extension(tmp_path):
    with pytest.raises(TableError, match=r"unsupported file extension '\.xlsx'.*\.csv, \.tsv, .*\.parquet"):
        read_table(write(tmp_path / "data.xlsx", "a,b\n1,2\n"))


def test_non_utf8_bytes(tmp_path):
    p = write(tmp_path / "latin.csv", "name,y\ncaf\xe9,1\nbar,2\n".encode("latin-1"))
    with pytest.raises(TableError) as e:
        read_table(p)
    msg = str(e.value)
    assert "column 'name'" in msg and "line 2" in msg and "--encoding latin-1" in msg and "encoding=" in msg
    assert read_table(p, encoding="latin-1").column("name").to_pylist() == ["café", "bar"]
    # bad bytes only after the first streamed block (fallback path) and in the header
    big = b"name,y\n" + b"abc,1\n" * 800_000 + b"caf\xe9,2\n"
    with pytest.raises(TableError, match="line 800002.*--encoding latin-1"):
        read_table(write(tmp_path / "late.csv", big))
    with pytest.raises(TableError, match="header row.*line 1"):
        read_table(write(tmp_path / "head.csv", b"n\xe9,y\n1,2\n"))


def test_ragged_rows_give_line_number(tmp_path):
    with pytest.raises(TableError, match=r"line 4 has 2 fields but the header has 3 \(row text: '4,5'\)"):
        read_table(write(tmp_path / "r.csv", "a,b,c\n1,2,3\n7,8,9\n4,5\n6,7,8\n"))
    rows = "".join(f"{i},{i},{i}\n" for i in range(5000))
    with pytest.raises(TableError, match="line 3002 has 4 fields"):
        read_table(write(tmp_path / "r2.csv", "a,b,c\n" + rows[: rows.index("3000,")] + "1,2,3,4\n"))


def test_late_type_change_falls_back_to_full_reader(tmp_path):
    text = "a,b\n" + "1,x\n" * 600_000 + "1.5,y\n"  # > one streamed block; 'a' becomes float at the end
    t = read_table(write(tmp_path / "late.csv", text))
    assert str(t.schema.field("a").type) == "double" and t.num_rows == 600_001


# -------------------------------------------------------------------------------- inference, errors


def test_kinds_and_task_inference(tmp_path):
    tab = Table.read(write(tmp_path / "s.csv", SMALL), target="y", id="id")
    assert tab.kinds == {"x": "numeric", "city": "categorical", "flag": "bool", "y": "categorical"}
    assert tab.feature_columns == ["x", "city", "flag"] and tab.task == "classification"
    assert tab.columns == ["id", "x", "city", "flag", "y"]
    ints = write_rows(tmp_path / "i.csv", ["x", "few", "many", "real", "b"],
                      [[i, i % 3, i, i + 0.5, i % 2 == 0] for i in range(50)])
    assert Table.read(ints, target="few").task == "classification"
    assert Table.read(ints, target="many").task == "regression"
    assert Table.read(ints, target="real").task == "regression"
    assert Table.read(ints, target="b").task == "classification"
    assert Table.read(ints, target="few", task="regression").task == "regression"
    with pytest.raises(TableError, match="not numeric; it cannot be used for regression"):
        Table.read(write(tmp_path / "s.csv", SMALL), target="y", task="regression")


def test_target_missing_suggests_closest(tmp_path):
    p = write(tmp_path / "s.csv", "age,income,price\n1,2,3\n")
    with pytest.raises(TableError) as e:
        Table.read(p, target="prices")
    assert "target column 'prices' not found" in str(e.value)
    assert "Did you mean 'price'?" in str(e.value) and "['age', 'income', 'price']" in str(e.value)
    with pytest.raises(TableError, match="--drop column 'incme' not found. Did you mean 'income'"):
        Table.read(p, target="price", drop=["incme"])


def test_junk_in_numeric_column(tmp_path):
    rows = [[i, float(i) / 3, i % 2] for i in range(30)]
    rows[17][1] = "n/a?"
    rows[25][1] = "oops"
    p = write_rows(tmp_path / "junk.csv", ["id", "x", "y"], rows)
    with pytest.raises(TableError) as e:
        Table.read(p, target="y")
    msg = str(e.value)
    assert "column 'x' is numeric but has 2 non-numeric value(s)" in msg
    assert "first at data row 18 (line 19" in msg and "'n/a?'" in msg
    # mostly text -> categorical, not junk
    rows = [[i, "abc"[i % 3] if i % 4 else i, i % 2] for i in range(30)]
    assert Table.read(write_rows(tmp_path / "cat.csv", ["id", "c", "y"], rows), target="y").kinds["c"] == (
        "categorical")


def test_all_missing_column(tmp_path):
    p = write(tmp_path / "m.csv", "a,empty,y\n1,,0\n2,,1\n3,,0\n")
    tab = Table.read(p, target="y")
    assert "dropped column 'empty': all values missing" in tab.notes and tab.feature_columns == ["a"]
    with pytest.raises(TableError, match="target column 'empty' has no values"):
        Table.read(p, target="empty")


def test_single_class_target(tmp_path):
    p = write(tmp_path / "one.csv", "a,y\n1,cat\n2,cat\n3,\n")
    with pytest.raises(TableError, match="target 'y' has a single class \\('cat'\\)"):
        Table.read(p, target="y")
    tab = Table.read(write(tmp_path / "two.csv", "a,y\n1,cat\n2,cat\n3,dog\n"), target="y")
    with pytest.raises(TableError, match="the train split has a single class \\('cat'\\)"):
        tab.prepare({"train": [0, 1], "val": [2]})


def test_missing_target_rows_dropped(tmp_path):
    p = write(tmp_path / "t.csv", "a,y\n1,1.5\n2,\n3,2.5\n4,NaN\n5,9.5\n")
    tab = Table.read(p, target="y")
    assert len(tab) == 3 and "dropped 2 row(s) with a missing target 'y'" in tab.notes


# ------------------------------------------------------------------------------------------- prepare


def test_prepare_split_validation(tmp_path):
    tab = Table.read(write(tmp_path / "s.csv", SMALL), target="y")
    with pytest.warns(UserWarning, match="city: 1"):
        prep = tab.prepare(([0, 1, 2], [3, 4]))
    assert set(prep.splits) == {"train", "val"} and prep.test is None
    with pytest.raises(TableError, match="shares rows with 'train'"):
        tab.prepare({"train": [0, 1, 2], "val": [2, 3]})
    with pytest.raises(TableError, match="outside"):
        tab.prepare({"train": [0, 1, 9]})
