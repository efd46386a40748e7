"""Streamed predict and evaluate (fitloop.tabular.streaming): hive partition columns as training read them,
memory constant in the file's length."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from helpers import PEAK_PREDICT_CHILD

ROOT = Path(__file__).resolve().parents[1]


def test_a_hive_partition_column_is_a_feature_in_streamed_predict_and_evaluate(tmp_path):
    """`data/year=2023/part.parquet`, `data/year=2024/...`: the year is a column of the directory (the target
    depends on it); predict and evaluate stream the directory and see it as training did."""
    import fitloop.tabular as ft
    from fitloop.tabular.streaming import evaluate_stream, predict_stream

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    for year, shift in ((2023, -3.0), (2024, 3.0)):
        (data / f"year={year}").mkdir(parents=True)
        n = 1500
        x1 = rng.normal(size=n)
        table = pa.table({"row": np.arange(n) + (year - 2023) * n, "x1": x1,
                          "y": x1 + shift + 0.1 * rng.normal(size=n)})
        pq.write_table(table, data / f"year={year}" / "part.parquet", row_group_size=500)
    result = ft.train(str(data), target="y", out=tmp_path / "run", id="row", epochs=4, quiet=True,
                      **{"model.kind": "mlp"})  # the quicker model: the test is about the columns
    assert result.inputs == 2 and result.metrics["r2"] > 0.9  # x1 and the year: the year explains most of y
    run = ft.load_run(result.run_dir)
    whole = pads.dataset(data, format="parquet", partitioning="hive").to_table()  # the year as training read it
    assert whole.schema.field("year").type == pa.int32()
    expected = run.predict(whole)
    rows, notes = predict_stream(run, data, tmp_path / "p.parquet", batch_rows=700)
    got = pq.read_table(tmp_path / "p.parquet")
    assert rows == 3000 and notes == []
    assert got.column("row").to_pylist() == expected.column("row").to_pylist()
    np.testing.assert_allclose(got.column("prediction").to_numpy(), expected.column("prediction").to_numpy(),
                               rtol=1e-6)
    report = evaluate_stream(run, data, batch_rows=700)
    assert report["rows"] == 3000 and report["notes"] == []
    assert report["metrics"]["r2"] == pytest.approx(run.evaluate(whole)["metrics"]["r2"], rel=1e-5)
    assert report["metrics"]["r2"] > 0.9



@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status (Linux only)")
def test_streamed_predict_memory_is_constant_in_the_files_length(tmp_path):
    """Peak RSS (VmHWM in a fresh process, beyond what loading the run took) of the streamed predict, at its
    default batch sizes, on 50k and on 500k wide rows in row groups of 65,536: within a few MiB (it grew by
    53 MiB before the row groups were decoded a batch at a time and the forward pass was cut in chunks)."""
    import fitloop.tabular as ft

    rng = np.random.default_rng(0)
    n = 3000
    x1, city = rng.normal(size=n), rng.choice(["a", "b", "c"], n)
    pq.write_table(pa.table({"row": np.arange(n), "x1": x1, "city": city,
                             "y": np.where(x1 + (city == "a") > 0.5, "yes", "no")}), tmp_path / "train.parquet")
    result = ft.train(str(tmp_path / "train.parquet"), target="y", out=tmp_path / "run", id="row", epochs=2,
                      quiet=True, **{"model.kind": "mlp"})  # a small model: the test is about the data's memory
    n = 500_000
    wide = {f"pad{i}": rng.normal(size=n) for i in range(16)}  # columns predict ignores make the rows wide
    big = pa.table({"row": np.arange(n), "x1": rng.normal(size=n), "city": pa.array(rng.choice(["a", "b", "c"], n)),
                    **wide})
    pq.write_table(big, tmp_path / "big.parquet", row_group_size=65_536)
    pq.write_table(big.slice(0, 50_000), tmp_path / "small.parquet", row_group_size=65_536)

    def growth(name: str) -> int:
        out = subprocess.run([sys.executable, "-c", PEAK_PREDICT_CHILD, str(result.run_dir), str(tmp_path / name),
                              str(tmp_path / f"{name}.out.parquet"), "stream"], capture_output=True, text=True,
                             check=True, cwd=ROOT)
        return int(out.stdout.strip().splitlines()[-1])  # KiB

    small, large = growth("small.parquet"), growth("big.parquet")
    assert large - small < 24 * 1024, (small, large)
    assert pq.read_metadata(tmp_path / "big.parquet.out.parquet").num_rows == n
