"""Date and timestamp columns (issue 24 part 1): each becomes numbers (days since 1970, year, month, day of week,
day of year, and the hour of a timestamp) that go the numeric path; train, predict, evaluate, serve's JSON and
CSV inputs, the dry run, the streamed fit and the exported graph all take them."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

import fitloop as fl
from fitloop.cli import main
from fitloop.integrations.serve_input import RequestError, csv_table, records_table
from fitloop.tabular import dry_run
from fitloop.tabular.columns import Table
from fitloop.tabular.errors import TableError
from fitloop.tabular.preprocess import Preprocessor, date_part_values
from fitloop.tabular.runs import load_run
from fitloop.tabular.stream_fit import RowSplit, fit_streamed


def dated_table(n: int = 600, seed: int = 0) -> pa.Table:
    """A regression table whose target follows the month of `day` (a date, some missing) and the hour of
    `stamp` (a timestamp)."""
    rng = np.random.default_rng(seed)
    day = [datetime.date(2021, 1, 1) + datetime.timedelta(days=int(d)) for d in rng.integers(0, 900, n)]
    stamp = [datetime.datetime(2022, 3, 1) + datetime.timedelta(minutes=int(m)) for m in rng.integers(0, 200_000, n)]
    x = rng.normal(size=n)
    y = np.array([np.sin(d.month / 2) for d in day]) + np.array([s.hour / 12 for s in stamp]) + 0.3 * x
    return pa.table({"day": pa.array([None if i % 17 == 0 else d for i, d in enumerate(day)], pa.date32()),
                     "stamp": pa.array(stamp, pa.timestamp("s")), "x": x, "y": y})


def test_date_parts():
    dates = pa.array(["2024-01-05", "2024-12-31 18:30:00", None])  # text, as a JSON request sends it
    assert date_part_values(dates, "year", "d").tolist()[:2] == [2024, 2024]
    assert date_part_values(dates, "month", "d")[:2].tolist() == [1, 12]
    assert date_part_values(dates, "weekday", "d")[:2].tolist() == [4, 1]  # a Friday, a Tuesday (Monday = 0)
    assert date_part_values(dates, "yearday", "d")[:2].tolist() == [5, 366]
    assert date_part_values(dates, "hour", "d")[:2].tolist() == [0, 18]
    days = date_part_values(dates, "days", "d")
    assert days[0] == (datetime.date(2024, 1, 5) - datetime.date(1970, 1, 1)).days
    assert days[1] % 1 == pytest.approx(18.5 / 24)  # the time of day, as a fraction
    assert np.isnan(days[2])
    with pytest.raises(TableError, match=r"column 'd' was a date column in training; 'soon' is not a date"):
        date_part_values(pa.array(["2024-01-05", "soon"]), "days", "d")


def test_a_date_column_becomes_numbers():
    table = Table(dated_table(), target="y")
    assert table.kinds == {"day": "date", "stamp": "date", "x": "numeric", "y": "numeric"}
    pre = table.fit_preprocessor(np.arange(400))
    assert pre.feature_names == ["day__days", "day__days__missing", "day__year", "day__month", "day__weekday",
                                 "day__yearday", "stamp__days", "stamp__month", "stamp__weekday", "stamp__yearday",
                                 "stamp__hour", "x"]  # stamp's year is 2022 in every row: left out
    assert pre.input_columns == ["day", "stamp", "x"]
    assert pre.numeric_positions == [0, *range(2, 12)]  # every part, not the missing flag
    notes = " | ".join(pre.notes)
    assert ("column 'day': a date, as numbers: days since 1970, year, month, day of week (0 = Monday), day of "
            "year") in notes and "hour" in notes
    assert "day: " in notes and "(median date 20" in notes  # imputed with the median date
    with pytest.raises(TableError, match="unsupported type"):
        Table(dated_table(), target="day")


def test_train_predict_evaluate_serve_and_export(tmp_path: Path, capsys):
    data = dated_table()
    pcsv.write_csv(data, tmp_path / "t.csv")
    assert main(["train", str(tmp_path / "t.csv"), "--target", "y", "--epochs", "3", "--hidden", "16",
                 "--out", str(tmp_path / "run"), "-q"]) == 0
    run = load_run(tmp_path / "run")
    pre = run.preprocessor
    assert "day__month" in pre.feature_names and "stamp__hour" in pre.feature_names
    new = dated_table(40, seed=1)
    pcsv.write_csv(new, tmp_path / "new.csv")
    assert main(["predict", str(tmp_path / "run"), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.csv")]) == 0
    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "new.csv")]) == 0
    capsys.readouterr()
    from_file = pcsv.read_csv(tmp_path / "p.csv")["prediction"].to_numpy()
    # the same rows with the dates as ISO text (a JSON request, a table built in memory)
    as_text = [{"day": None if d is None else d.isoformat(), "stamp": s.isoformat(sep=" "), "x": x}
               for d, s, x in zip(new["day"].to_pylist(), new["stamp"].to_pylist(), new["x"].to_pylist())]
    in_memory = run.predict(pa.Table.from_pylist(as_text))["prediction"].to_numpy()
    np.testing.assert_allclose(in_memory, from_file, rtol=1e-5, atol=1e-5)
    numbers, codes, _ = records_table(as_text, pre, max_rows=100)
    np.testing.assert_array_equal(pre.encode(numbers, codes), pre.transform(new))
    with pytest.raises(RequestError, match="column 'day', row 1: expected a date as text"):
        records_table([{"day": "2024-01-05", "stamp": None, "x": 1.0}, {"day": 3, "stamp": None, "x": 1.0}], pre,
                      max_rows=10)
    with pytest.raises(RequestError, match="'someday' is not a date"):
        records_table([{"day": "someday", "stamp": None, "x": 1.0}], pre, max_rows=10)
    body = b"day,stamp,x\n2024-01-05,2024-01-05 10:30:00,1.5\n,,\n"
    table, _ = csv_table(body, pre, max_rows=10)
    assert np.isfinite(pre.transform(table)).all()
    with pytest.raises(RequestError, match="'soon' is not a date"):
        csv_table(b"day,stamp,x\n2024-01-05,2024-01-05,1\nsoon,2024-01-05,2\n", pre, max_rows=10)
    # the exported graph takes each date part as a number; verified against fitloop predict
    result = fl.export(tmp_path / "run", format="torch-export")
    assert result.max_abs_diff <= 1e-5 and result.rows_checked > 64
    layout = json.loads(Path(f"{result.path}.json").read_text())
    dated = [c for c in layout["input"]["columns"] if "date" in c]
    assert [(c["name"], c["date"]["column"], c["date"]["part"]) for c in dated][:2] == [
        ("day__days", "day", "days"), ("day__year", "day", "year")]


def test_the_dry_run_and_the_streamed_fit():
    plan = dry_run(dated_table(), "y", epochs=1)
    decided = {c["name"]: c for c in plan.columns}
    assert decided["day"]["decision"].startswith("5 numbers (days, year, month, weekday, yearday), standardized; "
                                                 "missing -> train median + day__days__missing indicator")
    assert decided["day"]["reason"] == "date: days since 1970, year, month, day of week (0 = Monday), day of year"
    assert decided["stamp"]["decision"].startswith("5 numbers (days, month, weekday, yearday, hour)")
    table = dated_table(3000, seed=2)
    groups = [(0, g, table.slice(start, 500)) for g, start in enumerate(range(0, table.num_rows, 500))]
    kinds = {"day": "date", "stamp": "date", "x": "numeric"}
    fit = fit_streamed(groups, target="y", task="regression", kinds=kinds, split=RowSplit((0.8, 0.2), 1))
    keep, at = [], 0
    for file, group, rows in groups:
        keep.append(at + np.flatnonzero(fit.masks.rows("train")(file, group, np.arange(rows.num_rows))))
        at += rows.num_rows
    memory = Preprocessor.fit(table, target="y", task="regression", kinds=kinds, rows=np.concatenate(keep))
    streamed = fit.preprocessor
    assert streamed.feature_names == memory.feature_names and streamed.notes == memory.notes
    for mine, theirs in zip(streamed.features, memory.features):
        assert mine["mean"] == pytest.approx(theirs["mean"], rel=1e-9) and mine["std"] == pytest.approx(theirs["std"])
        assert {k: v for k, v in mine.items() if k not in ("mean", "std")} == {
            k: v for k, v in theirs.items() if k not in ("mean", "std")}


def test_serve_takes_dates_as_text(tmp_path: Path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    import io

    from serve_support import served  # tests/serve_support.py

    from fitloop.integrations.serve import create_app

    pcsv.write_csv(dated_table(200), tmp_path / "t.csv")
    assert main(["train", str(tmp_path / "t.csv"), "--target", "y", "--epochs", "1", "--hidden", "4",
                 "--out", str(tmp_path / "run"), "-q"]) == 0
    with served(create_app(tmp_path / "run", log=io.StringIO())) as http:
        schema = http.get("/schema").json()
        assert [(c["name"], c["type"]) for c in schema["columns"]] == [("day", "date"), ("stamp", "date"),
                                                                       ("x", "number")]
        assert http.post("/predict", json=schema["example"]).status_code == 200  # the example is a valid request
        rows = [{"day": "2024-01-05", "stamp": "2024-01-05 10:30:00", "x": 0.5}, {"day": None, "stamp": None, "x": 0}]
        answer = http.post("/predict", json=rows)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 2
        refused = http.post("/predict", json=[{"day": "tomorrow", "stamp": None, "x": 0}])
        assert refused.status_code == 422 and "'tomorrow' is not a date" in refused.text
        csv = http.post("/predict_csv", content=b"day,stamp,x\n2024-01-05,2024-01-05 10:30:00,0.5\n")
        assert csv.status_code == 200, csv.text


def test_onnx_export_takes_date_parts(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pcsv.write_csv(dated_table(300), tmp_path / "t.csv")
    assert main(["train", str(tmp_path / "t.csv"), "--target", "y", "--epochs", "1", "--hidden", "8",
                 "--out", str(tmp_path / "run"), "-q"]) == 0
    result = fl.export(tmp_path / "run", format="onnx")  # verified against fitloop predict, on dated rows
    assert result.max_abs_diff <= 1e-5 and result.rows_checked > 64
