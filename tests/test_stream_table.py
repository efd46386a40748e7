"""Tables larger than memory in the table workflow (issue 22 parts 4-5): the one-pass preprocessor fit, the
position-hash and split-column splits, the CSV cache, streamed predict and evaluate (constant memory), the
streamed train path and when `fitloop train` streams."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from helpers import PEAK_PREDICT_CHILD

from fitloop.tabular.columns import Table
from fitloop.tabular.csv_cache import parquet_cache
from fitloop.tabular.errors import TableError
from fitloop.tabular.preprocess import Preprocessor
from fitloop.tabular.reading import read_table
from fitloop.tabular.stream_fit import NumericSummary, RowSplit, fit_streamed, position_hash
from fitloop.tabular.streaming import decide_streaming, parse_size

ROOT = Path(__file__).resolve().parents[1]


def mixed_table(n: int = 6000, seed: int = 0) -> pa.Table:
    """Every kind of column the preprocessor decides on: numbers with gaps, bools, text with gaps,
    ID-like text, a constant and an empty column, and a 3-class target."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    x[rng.random(n) < 0.1] = np.nan
    return pa.table({
        "x": x, "big": rng.integers(0, 10**6, n).astype(np.int64), "flag": rng.random(n) < 0.3,
        "city": pa.array(rng.choice(["a", "b", "c", None], n).tolist()),
        "code": pa.array([f"id{i}" for i in range(n)]), "same": np.ones(n), "blank": pa.nulls(n, pa.float64()),
        "y": rng.integers(0, 3, n)})


KINDS = {"x": "numeric", "big": "numeric", "flag": "bool", "city": "categorical", "code": "categorical",
         "same": "numeric", "blank": "numeric"}


def as_row_groups(table: pa.Table, size: int) -> list[tuple[int, int, pa.Table]]:
    return [(0, g, table.slice(start, size)) for g, start in enumerate(range(0, table.num_rows, size))]


def train_rows(fit, groups) -> np.ndarray:
    """The table's row indices the fit's train filter keeps."""
    keep, at = [], 0
    for file, group, rows in groups:
        mask = fit.masks.rows("train")(file, group, np.arange(rows.num_rows))
        keep.append(at + np.flatnonzero(mask))
        at += rows.num_rows
    return np.concatenate(keep)


# ---------------------------------------------------------------------------------------- one-pass fit


def test_streamed_fit_equals_the_in_memory_fit():
    table = mixed_table()
    groups = as_row_groups(table, 700)
    fit = fit_streamed(groups, target="y", task="classification", kinds=KINDS, split=RowSplit((0.7, 0.15, 0.15), 3))
    rows = train_rows(fit, groups)
    memory = Preprocessor.fit(table, target="y", task="classification", kinds=KINDS, rows=rows, classes=[0, 1, 2])
    streamed = fit.preprocessor
    assert type(streamed) is Preprocessor
    assert fit.rows["train"] == len(rows) and sum(fit.rows.values()) == table.num_rows
    assert streamed.dropped.keys() == memory.dropped.keys() == {"code", "same", "blank"}
    assert [f["name"] for f in streamed.features] == [f["name"] for f in memory.features]
    for mine, theirs in zip(streamed.features, memory.features):
        for key in ("mean", "std"):  # merged batch by batch: equal within float rounding
            if key in theirs:
                assert mine[key] == pytest.approx(theirs[key], rel=1e-12, abs=1e-12)
        exact = {k: v for k, v in theirs.items() if k not in ("mean", "std")}
        assert {k: mine[k] for k in exact} == exact  # median (the sample is the whole column), categories, flags
    assert streamed.classes == [0, 1, 2] and fit.class_counts == np.bincount(table["y"].to_numpy()[rows]).tolist()
    restored = Preprocessor.from_dict(json.loads(json.dumps(streamed.to_dict())))  # saved and loaded the same way
    np.testing.assert_allclose(restored.transform(table), memory.transform(table), rtol=1e-6, atol=1e-6)


def test_regression_target_scaling_and_missing_targets():
    rng = np.random.default_rng(1)
    y = rng.normal(5, 2, 3000)
    y[::50] = np.nan
    table = pa.table({"x": rng.normal(size=3000), "y": y})
    fit = fit_streamed(as_row_groups(table, 512), target="y", task="regression", kinds={"x": "numeric"},
                       split=RowSplit((0.8, 0.2), 0))
    assert fit.dropped_target == 60 and sum(fit.rows.values()) == 2940
    assert "dropped 60 row(s) with a missing target 'y'" in fit.preprocessor.notes
    train = train_rows(fit, as_row_groups(table, 512))
    assert not np.isnan(y[train]).any()  # rows without a target are in no split
    assert fit.target_mean == pytest.approx(float(np.mean(y[train])), rel=1e-12)
    assert fit.target_std == pytest.approx(float(np.std(y[train])), rel=1e-12)


def test_quantiles_of_a_long_column_are_within_the_documented_error():
    values = np.random.default_rng(2).exponential(size=200_000)
    summary = NumericSummary(reservoir=4096, seed=0)
    for start in range(0, values.size, 10_000):
        summary.add(values[start:start + 10_000])
    assert not summary.exact and summary.sample.size == 4096
    tolerance = 3 * np.sqrt(0.25 / 4096)  # 3 standard errors of a sample median's rank
    for q, estimate in zip((0.1, 0.5, 0.9), summary.quantiles([0.1, 0.5, 0.9])):
        rank = float(np.mean(values <= estimate))
        assert abs(rank - q) <= tolerance, (q, rank)
    assert summary.mean == pytest.approx(values.mean(), rel=1e-12) and summary.std == pytest.approx(values.std())


def test_numbers_written_as_text_are_not_dropped_silently():
    numbers = pa.table({"price": [f"{i:,}".replace(",", " ") + " 000" for i in range(200)], "y": [0.0, 1.0] * 100})
    with pytest.raises(TableError, match="'price' holds numbers written in a format fitloop does not read"):
        fit_streamed(as_row_groups(numbers, 64), target="y", task="regression", kinds={"price": "categorical"},
                     split=RowSplit((1.0, 0.0), 0))


# ---------------------------------------------------------------------------------------------- the split


def test_the_position_hash_is_the_same_everywhere():
    offsets = np.arange(5, dtype=np.int64)
    # pinned: the split of a row must not change across machines, numpy versions or processes
    assert position_hash(0, 0, offsets, 0).round(6).tolist() == pytest.approx(
        position_hash(0, 0, offsets.copy(), 0).round(6).tolist())
    child = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import numpy as np
        from fitloop.tabular.stream_fit import position_hash
        print(position_hash(3, 7, np.arange(1000), 42).tobytes().hex())""")],
        capture_output=True, text=True, check=True, cwd=ROOT)
    assert child.stdout.strip() == position_hash(3, 7, np.arange(1000), 42).tobytes().hex()
    assert not np.array_equal(position_hash(0, 0, offsets, 0), position_hash(0, 0, offsets, 1))  # the seed counts
    assert not np.array_equal(position_hash(0, 0, offsets, 0), position_hash(0, 1, offsets, 0))  # so does the place


def test_hash_split_fractions_and_determinism():
    split = RowSplit((0.7, 0.15, 0.15), seed=5)
    names = np.concatenate([split.by_position(f, g, np.arange(10_000)) for f in range(2) for g in range(5)])
    share = {n: float(np.mean(names == n)) for n in ("train", "val", "test")}
    assert share == pytest.approx({"train": 0.7, "val": 0.15, "test": 0.15}, abs=0.01)
    again = np.concatenate([split.by_position(f, g, np.arange(10_000)) for f in range(2) for g in range(5)])
    assert np.array_equal(names, again)
    assert RowSplit((0.8, 0.2)).names == ("train", "test")


def test_split_column_gives_the_rows_and_refuses_other_values():
    table = pa.table({"x": np.arange(8.0), "fold": ["train", "val", "test", "train", "train", None, "val", "test"],
                      "y": np.arange(8.0)})
    good = table.set_column(1, "fold", pa.array(["train", "val", "test", "train", "train", "train", "val", "test"]))
    fit = fit_streamed(as_row_groups(good, 3), target="y", task="regression", kinds={"x": "numeric"},
                       split=RowSplit(column="fold"))
    assert fit.rows == {"train": 4, "val": 2, "test": 2}
    assert train_rows(fit, as_row_groups(good, 3)).tolist() == [0, 3, 4, 5]
    with pytest.raises(TableError, match=r"--split-column 'fold' must hold train, val or test in every row; data row "
                                         r"6 holds None"):
        fit_streamed(as_row_groups(table, 3), target="y", task="regression", kinds={"x": "numeric"},
                     split=RowSplit(column="fold"))
    bad = good.set_column(1, "fold", pa.array(["train", "valid"] * 4))
    with pytest.raises(TableError, match=r"data row 2 holds 'valid' \(values seen: \['valid'\]\)"):
        fit_streamed(as_row_groups(bad, 3), target="y", task="regression", kinds={"x": "numeric"},
                     split=RowSplit(column="fold"))


# -------------------------------------------------------------------------------------------- CSV cache


def write_csv(path: Path, n: int, late_float_at: int) -> Path:
    """A ';'-separated CSV with decimal commas, an integer column that turns fractional late in the file
    (after pyarrow's first block decided its type) and a text column."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        f.write("a;b;c;y\n")
        for i in range(n):
            a = str(i) if i < late_float_at else f"{i}.5"
            b = f"{rng.normal():.4f}".replace(".", ",")
            f.write(f"{a};{b};{'xyz'[i % 3]};{i % 2}\n")
    return path


def test_csv_cache_equals_the_reader_and_is_reused(tmp_path):
    source = write_csv(tmp_path / "big.csv", 300_000, late_float_at=250_000)
    logs: list[str] = []
    cached = parquet_cache(source, tmp_path / "run", log=logs.append)
    assert pq.read_table(cached).equals(read_table(source))  # the reader's dialect: ';', decimal comma, types
    assert "Converted big.csv" in logs[-1]
    written = cached.stat().st_mtime_ns
    assert parquet_cache(source, tmp_path / "run", log=logs.append) == cached
    assert "Reusing the Parquet cache" in logs[-1] and cached.stat().st_mtime_ns == written
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))  # touched: converted again
    parquet_cache(source, tmp_path / "run", log=logs.append)
    assert "Converted big.csv" in logs[-1]
    assert not list((tmp_path / "run" / "data-cache").glob("*.partial"))


# ---------------------------------------------------------------------------------- when to stream


def test_parse_size_and_the_decision(tmp_path):
    assert parse_size("4G") == 4 * 2**30 and parse_size("512m") == 512 * 2**20 and parse_size("1000") == 1000
    with pytest.raises(TableError, match="--memory-budget: got 'lots'"):
        parse_size("lots")
    path = tmp_path / "t.parquet"
    pq.write_table(mixed_table(2000), path)
    assert decide_streaming(path, stream=True) == (True, "streaming the table (--stream)")
    streams, line = decide_streaming(path, memory_budget="1K")
    assert streams and line.startswith("streaming the table: it needs about ")
    streams, line = decide_streaming(path, memory_budget="1G")
    assert not streams and line.startswith("reading the table into memory: it needs about ")
    (tmp_path / "dir").mkdir()
    pq.write_table(mixed_table(100), tmp_path / "dir" / "part-0.parquet")
    assert decide_streaming(tmp_path / "dir", memory_budget="1G")[0]  # a directory is always streamed


# ------------------------------------------------------------------------------- predict and evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small classification run trained in memory, and a Parquet and a CSV file of its rows."""
    import fitloop.tabular as ft

    tmp = tmp_path_factory.mktemp("stream_run")
    rng = np.random.default_rng(0)
    n = 3000
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    city = rng.choice(["a", "b", "c"], n)
    y = np.where(x1 + x2 + (city == "a") > 0.5, "yes", "no")
    table = pa.table({"row": np.arange(n), "x1": x1, "x2": x2, "city": city, "y": y})
    pq.write_table(table, tmp / "rows.parquet", row_group_size=700)
    pcsv.write_csv(table, tmp / "rows.csv")
    result = ft.train(str(tmp / "rows.csv"), target="y", out=tmp / "run", epochs=2, id="row", quiet=True)
    return ft.load_run(result.run_dir), tmp


def test_predict_stream_equals_the_in_memory_predict(trained):
    from fitloop.tabular.streaming import predict_stream

    run, tmp = trained
    expected = run.predict(str(tmp / "rows.csv"), proba=True)
    for source in ("rows.parquet", "rows.csv"):
        for out in ("p.parquet", "p.csv"):
            rows, notes = predict_stream(run, tmp / source, tmp / out, proba=True, batch_rows=512)
            got = pq.read_table(tmp / out) if out.endswith(".parquet") else pcsv.read_csv(tmp / out)
            assert rows == 3000 and notes == []
            assert got.column("row").to_pylist() == list(range(3000))
            assert got.column("prediction").to_pylist() == expected.column("prediction").to_pylist()
            np.testing.assert_allclose(got.column("proba_yes").to_numpy(), expected.column("proba_yes").to_numpy(),
                                       rtol=1e-6)


def test_evaluate_stream_equals_the_in_memory_evaluate(trained):
    from fitloop.tabular.streaming import evaluate_stream

    run, tmp = trained
    expected = run.evaluate(str(tmp / "rows.csv"))
    got = evaluate_stream(run, tmp / "rows.parquet", batch_rows=333)
    assert got["rows"] == expected["rows"] and got["baseline_kind"] == expected["baseline_kind"]
    for key in ("metrics", "baseline"):
        assert got[key]["confusion_matrix"] == expected[key]["confusion_matrix"]
        for name, value in expected[key].items():
            if name != "confusion_matrix":
                assert got[key][name] == pytest.approx(value, rel=1e-5), (key, name)



def test_streamed_predict_memory_does_not_grow_with_the_file(trained, tmp_path):
    """Peak RSS (VmHWM in a fresh process, beyond what loading the run took) of the streamed predict on
    10k and on 200k wide rows, against the in-memory predict of the 200k rows (which holds the table)."""
    run, _ = trained
    rng = np.random.default_rng(0)
    n = 200_000
    wide = {f"pad{i}": rng.normal(size=n) for i in range(16)}  # columns predict ignores make the rows wide
    big = pa.table({"row": np.arange(n), "x1": rng.normal(size=n), "x2": rng.normal(size=n),
                    "city": pa.array(rng.choice(["a", "b", "c"], n)), **wide})
    pq.write_table(big, tmp_path / "big.parquet", row_group_size=8192)
    pq.write_table(big.slice(0, 10_000), tmp_path / "small.parquet", row_group_size=8192)

    def growth(name: str, how: str) -> int:
        out = subprocess.run([sys.executable, "-c", PEAK_PREDICT_CHILD, str(run.path), str(tmp_path / name),
                              str(tmp_path / f"{name}.{how}.parquet"), how, "8192"],
                             capture_output=True, text=True, check=True, cwd=ROOT)
        return int(out.stdout.strip().splitlines()[-1])  # KiB (Linux)

    streamed_small, streamed_big = growth("small.parquet", "stream"), growth("big.parquet", "stream")
    in_memory_big = growth("big.parquet", "memory")
    assert in_memory_big > 100_000, (streamed_small, streamed_big, in_memory_big)  # the table, held whole
    # streamed: 20x the rows, a small part of what holding them costs (pyarrow's reader and writer still keep
    # some tens of MiB more on a longer file; see the module's report)
    assert streamed_big - streamed_small < in_memory_big / 4, (streamed_small, streamed_big, in_memory_big)


# ----------------------------------------------------------------------------------------- streamed train


def test_train_streamed_writes_a_run_that_predicts(tmp_path):
    from fitloop.tabular.config import resolve_run_config
    from fitloop.tabular.runs import load_run
    from fitloop.tabular.stream_train import train_streamed

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for part in range(2):  # a directory of Parquet files is the data
        n = 2500
        x1, city = rng.normal(size=n), rng.choice(["a", "b"], n)
        pq.write_table(pa.table({"x1": x1, "city": city, "y": 2 * x1 + (city == "a") + rng.normal(size=n) * 0.1}),
                       data / f"part-{part}.parquet", row_group_size=600)
    cfg = resolve_run_config({"data.path": str(data), "data.target": "y", "train.epochs": 3, "train.quiet": True})
    result = train_streamed(cfg, tmp_path / "run")
    assert result.rows["train"] > 3000 and set(result.rows) == {"train", "val", "test"}
    assert result.metrics["r2"] > 0.9 and result.baseline["r2"] < 0.01
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "finished" and info["streamed"]["rows"] == result.rows
    run = load_run(tmp_path / "run")  # the bundle is an ordinary one: predict needs nothing new
    whole = pa.concat_tables([pq.read_table(p) for p in sorted(data.glob("*.parquet"))])
    assert run.evaluate(whole)["metrics"]["r2"] > 0.9
    assert Table.from_arrow(whole, "y").task == "regression"


def test_cli_trains_a_directory_resumes_it_and_streams_predict(tmp_path, capsys):
    from fitloop.cli.app import main

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for part in range(2):
        x1, city = rng.normal(size=1500), rng.choice(["a", "b"], 1500)
        pq.write_table(pa.table({"id": np.arange(part * 1500, (part + 1) * 1500), "x1": x1, "city": city,
                                 "y": np.where(x1 + (city == "a") > 0.5, "yes", "no")}),
                       data / f"part-{part}.parquet", row_group_size=500)
    run = tmp_path / "run"
    assert main(["train", str(data), "--target", "y", "--id", "id", "--epochs", "2", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "Streaming the table: a directory or glob of Parquet files."
    assert main(["predict", str(run), str(data), "-o", str(tmp_path / "p.csv")]) == 0
    assert "wrote 3000 predictions to" in capsys.readouterr().err
    assert pcsv.read_csv(tmp_path / "p.csv").column("id").to_pylist() == list(range(3000))
    assert main(["evaluate", str(run), str(data / "part-1.parquet"), "--stream", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 1500
    # an interrupted streamed run resumes as a streamed run
    (run / "metrics.json").unlink()
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "status": "interrupted"}))
    assert main(["resume", str(run)]) == 0
    assert "Streaming the table (a streamed run, resumed)." in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text())["rows"] > 0


def test_split_column_from_the_python_api(tmp_path):
    import fitloop.tabular as ft

    rng = np.random.default_rng(0)
    n = 2000
    x1 = rng.normal(size=n)
    fold = np.where(np.arange(n) < 1400, "train", np.where(np.arange(n) < 1700, "val", "test"))
    pq.write_table(pa.table({"x1": x1, "fold": fold, "y": 3 * x1 + rng.normal(size=n) * 0.1}), tmp_path / "t.parquet")
    result = ft.train(str(tmp_path / "t.parquet"), target="y", out=tmp_path / "run", epochs=2, quiet=True,
                      split_column="fold")
    assert result.rows == {"train": 1400, "val": 300, "test": 300}  # the column's parts, exactly
    assert result.inputs == 1  # the split column is no feature


def test_two_processes_train_a_streamed_table_as_one(tmp_path):
    """`fitloop train DIR --nproc 2` (gloo): the same held-out metrics as one process with the same global batch."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for part in range(2):
        x1 = rng.normal(size=1200)
        pq.write_table(pa.table({"x1": x1, "y": 2 * x1 + rng.normal(size=1200) * 0.1}), data / f"p{part}.parquet",
                       row_group_size=400)
    common = [sys.executable, "-m", "fitloop", "train", str(data), "--target", "y", "--epochs", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*common, "--out", str(tmp_path / "one"), "--batch-size", "64"], check=True, env=env, cwd=tmp_path)
    subprocess.run([*common, "--out", str(tmp_path / "two"), "--batch-size", "32", "--nproc", "2"], check=True,
                   env=env, cwd=tmp_path)
    one, two = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two"))
    assert one["rows"] == two["rows"] > 0
    for name, value in one["metrics"].items():
        assert two["metrics"][name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
