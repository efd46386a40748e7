"""Tests for fitloop.tabular.preprocess: leakage-free preprocessing, new tables, JSON state."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from tablefiles import SMALL, write, write_rows

from fitloop.tabular import Preprocessor, Table, TableError, transform_table


def sklearn_features_csv(tmp_path: Path, name: str) -> Path:
    """A bundled scikit-learn dataset as CSV: columns f0..fN and `target` (numbers only)."""
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True, as_frame=False)
    header = [f"f{i}" for i in range(X.shape[1])] + ["target"]
    rows = [[*map(float, x), int(t) if name != "diabetes" else float(t)] for x, t in zip(X, y)]
    return write_rows(tmp_path / f"{name}.csv", header, rows)


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
    assert "dropped column 'name': ID-like text: 30 distinct values in 30 non-missing training rows" in " ".join(
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


# ----------------------------------------------------------------------------- scikit-learn tables


@pytest.mark.parametrize(("name", "task", "n_classes"), [("diabetes", "regression", None),
                                                           ("breast_cancer", "classification", 2),
                                                           ("wine", "classification", 3),
                                                           ("digits", "classification", 10)])
def test_sklearn_tables_end_to_end(tmp_path, name, task, n_classes):
    p = sklearn_features_csv(tmp_path, name)
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
