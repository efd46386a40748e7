"""Streamed predict and evaluate (fitloop.tabular.streaming): hive partition columns as training read them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest


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
    result = ft.train(str(data), target="y", out=tmp_path / "run", id="row", epochs=4, quiet=True)
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
