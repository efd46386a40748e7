"""Tests for fitloop.table: reading, inference, leakage-free preprocessing, JSON state, error messages."""

from __future__ import annotations

import gzip
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tablefiles import write_rows

from fitloop.table import Preprocessor, Table, TableError, read_table, transform_table

# ----------------------------------------------------------------------------------------- helpers


def write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def sklearn_csv(tmp_path: Path, name: str) -> Path:
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True, as_frame=False)
    header = [f"f{i}" for i in range(X.shape[1])] + ["target"]
    rows = [[*map(float, x), int(t) if name != "diabetes" else float(t)] for x, t in zip(X, y)]
    return write_rows(tmp_path / f"{name}.csv", header, rows)


SMALL = ("id,x,city,flag,y\n1,1.5,a,true,yes\n2,,b,false,no\n3,3.5,a,true,yes\n4,2,c,false,no\n"
         "5,7,a,true,yes\n")


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


# ----------------------------------------------------------------------------------- preprocessing


def test_prepare_small_end_to_end(tmp_path):
    tab = Table.read(write(tmp_path / "s.csv", SMALL), target="y", id="id")
    prep = tab.prepare({"train": [0, 1, 2, 3], "test": [4]})
    pre = prep.preprocessor
    assert pre.feature_names == ["x", "x__missing", "city=a", "city=b", "city=c", "city=<unknown>", "flag"]
    X = prep.train.X
    assert X.dtype == torch.float32 and X.is_contiguous() and X.shape == (4, 7)
    assert prep.train.y.dtype == torch.int64 and prep.train.y.tolist() == [1, 0, 1, 0]
    assert prep.train.ids == [1, 2, 3, 4] and prep.test.ids == [5]
    assert X[:, 1].tolist() == [0, 1, 0, 0]  # missing indicator
    assert X[1, 0].item() == pytest.approx((2.0 - 7 / 3) / np.std([1.5, 3.5, 2]), rel=1e-6)  # median imputed
    assert any("x: 1 (median 2)" in n for n in prep.notes)
    assert pre.decode(prep.train.y) == ["yes", "no", "yes", "no"]


def test_constant_high_cardinality_drop_and_id(tmp_path):
    rows = [[i, 5, f"name{i}", i % 7, "k", i % 2] for i in range(60)]
    p = write_rows(tmp_path / "c.csv", ["id", "const", "name", "v", "kconst", "y"], rows)
    tab = Table.read(p, target="y", id="id", drop=["v"], max_categories=50)
    with pytest.warns(UserWarning, match="name: 30"):  # val names never seen in train
        prep = tab.prepare(fractions=(0.5, 0.5))
    assert len(prep.feature_names) == 31 and prep.feature_names[-1] == "name=<unknown>"
    notes = " | ".join(prep.notes)
    assert "dropped column 'const': constant (5)" in notes
    assert "dropped column 'kconst': constant ('k')" in notes
    assert "dropped columns as requested: ['v']" in notes
    prep = Table.read(p, target="y", id="id", max_categories=10).prepare(fractions=(0.5, 0.5))
    assert "dropped column 'name': 30 distinct values in the training rows > max_categories=10" in " ".join(
        prep.notes)
    assert prep.feature_names == ["v"] and prep.train.X.shape == (30, 1)


def test_standardize_uses_train_rows_only(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(3, 2, n)
    test_rows = np.arange(200, n)
    x[test_rows] += 1000.0  # shifted: must not leak into the fitted statistics
    rows = [[float(a), float(b)] for a, b in zip(x, rng.normal(size=n))]
    p = write_rows(tmp_path / "shift.csv", ["x", "y"], rows)
    tab = Table.read(p, target="y")
    train, val = np.arange(0, 150), np.arange(150, 200)
    prep = tab.prepare({"train": train, "val": val, "test": test_rows})
    spec = prep.preprocessor.features[0]
    assert spec["mean"] == np.mean(x[train]) and spec["std"] == np.std(x[train])
    Xtr = prep.train.X.numpy()
    assert abs(Xtr.mean()) < 1e-5 and abs(Xtr.std() - 1) < 1e-4
    assert prep.test.X.mean().item() > 100  # test rows are transformed with train statistics
    assert prep.train.y.dtype == torch.float32 and prep.val.X.shape == (50, 1)


def test_unknown_categories_and_predict_time_columns(tmp_path):
    tab = Table.read(write(tmp_path / "s.csv", SMALL), target="y", id="id")
    pre = tab.prepare(fractions=(1.0, 0.0)).preprocessor
    new = write(tmp_path / "new.csv", "id,x,city,flag,extra\n9,1,zz,true,5\n10,2,a,false,6\n11,,yy,true,7\n")
    with pytest.warns(UserWarning, match=r"<unknown> slot \(rows per column\): city: 2"):
        out = transform_table(pre, new)
    assert out.y is None and out.ids == [9, 10, 11]
    assert "ignored 1 column(s) the model does not use: ['extra']" in out.notes
    unknown = pre.feature_names.index("city=<unknown>")
    assert out.X[:, unknown].tolist() == [1, 0, 1]
    with pytest.raises(TableError, match=r"lacks 2 column\(s\) the model needs: \['x', 'flag'\]"):
        transform_table(pre, write(tmp_path / "few.csv", "id,city\n1,a\n"))
    with pytest.raises(TableError, match=r"column 'x' is numeric.*data row 2.*'bad'"):
        transform_table(pre, write(tmp_path / "junk.csv", "x,city,flag\n1,a,true\nbad,b,false\n"))
    lab = write(tmp_path / "lab.csv", "x,city,flag,y\n1,a,true,no\n2,b,false,yes\n")
    labelled = transform_table(pre, lab)
    assert labelled.y.tolist() == [0, 1]
    with pytest.raises(TableError, match=r"not among the known classes \['no', 'yes'\]: \['maybe'\]"):
        transform_table(pre, write(tmp_path / "lab2.csv", "x,city,flag,y\n1,a,true,maybe\n"))


@pytest.mark.parametrize("labels", [[3, 7, 3, 11], [True, False, True, False], ["b", "a", "b", "c"]])
def test_json_roundtrip_and_decode_types(tmp_path, labels):
    rows = [[i * 1.5, "uv"[i % 2], lab] for i, lab in enumerate(labels * 5)]
    tab = Table.read(write_rows(tmp_path / "d.csv", ["x", "c", "y"], rows), target="y")
    prep = tab.prepare(fractions=(0.6, 0.4), seed=1)
    state = json.loads(json.dumps(prep.preprocessor.to_dict()))
    pre2 = Preprocessor.from_dict(state)
    assert np.array_equal(pre2.transform(tab.data), prep.preprocessor.transform(tab.data))
    assert pre2.feature_names == prep.feature_names
    decoded = pre2.decode(prep.train.y)
    assert decoded == [labels[i % 4] for i in prep.train.rows]
    assert {type(v) for v in decoded} == {type(labels[0])}
    assert pre2.classes == sorted(set(labels))


def test_prepare_split_validation(tmp_path):
    tab = Table.read(write(tmp_path / "s.csv", SMALL), target="y")
    with pytest.warns(UserWarning, match="city: 1"):
        prep = tab.prepare(([0, 1, 2], [3, 4]))
    assert set(prep.splits) == {"train", "val"} and prep.test is None
    with pytest.raises(TableError, match="shares rows with 'train'"):
        tab.prepare({"train": [0, 1, 2], "val": [2, 3]})
    with pytest.raises(TableError, match="outside"):
        tab.prepare({"train": [0, 1, 9]})


# ----------------------------------------------------------------------------- scikit-learn tables


@pytest.mark.parametrize(("name", "task", "n_classes"), [("diabetes", "regression", None),
                                                           ("breast_cancer", "classification", 2),
                                                           ("wine", "classification", 3),
                                                           ("digits", "classification", 10)])
def test_sklearn_tables_end_to_end(tmp_path, name, task, n_classes):
    p = sklearn_csv(tmp_path, name)
    tab = Table.read(p, target="target")
    assert tab.task == task
    prep = tab.prepare(fractions=(0.7, 0.15, 0.15), seed=0)
    n = len(tab)
    assert sum(s.X.shape[0] for s in prep.splits.values()) == n
    d = len(prep.feature_names)
    assert d == len(tab.feature_columns) - sum("constant" in note for note in prep.notes)
    for split in prep.splits.values():
        assert split.X.shape[1] == d and split.X.dtype == torch.float32 and torch.isfinite(split.X).all()
    Xtr = prep.train.X.numpy()
    assert np.abs(Xtr.mean(0)).max() < 1e-4
    if task == "classification":
        assert prep.preprocessor.num_classes == n_classes and prep.train.y.dtype == torch.int64
    else:
        assert prep.train.y.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pre = Preprocessor.from_dict(json.loads(json.dumps(prep.preprocessor.to_dict())))
        again = transform_table(pre, p)
    assert np.array_equal(again.X.numpy()[prep.train.rows], Xtr)
