"""Tests for the CLI's work called from Python: fitloop.tabular.pipeline (train_table) and fitloop.tabular.runs
(load_run, predict_file, evaluate_file)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
from tablefiles import write_rows

from fitloop.cli import demo_data_path
from fitloop.outputs import OutputPathError
from fitloop.tabular import TableError
from fitloop.tabular.config import ConfigError, load_toml, resolve_run_config
from fitloop.tabular.pipeline import train_table
from fitloop.tabular.runs import NotARunError, evaluate_file, load_run, predict_file

WINE_CLASSES = ["class_0", "class_1", "class_2"]
RUN_FILES = {"run.json", "config.toml", "metrics.json", "history.jsonl", "splits.json", "model"}


def wine_config(**overrides):
    return resolve_run_config({"data.path": demo_data_path(), "data.target": "cultivar", "train.epochs": 5,
                               "train.lr": 0.01, "train.quiet": True, **overrides})


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    """One short wine run (the demo table shipped in the package), trained from Python."""
    out = tmp_path_factory.mktemp("pipeline") / "wine"
    logs: list[str] = []
    cfg = wine_config()
    result = train_table(cfg, out=out, log=logs.append)
    return cfg, result, logs


def test_train_table_result_and_run_directory(wine_run):
    cfg, r, logs = wine_run
    assert r.task == "classification" and r.inputs == 13 and r.features == 13
    assert set(r.rows) == {"train", "val", "test"} and sum(r.rows.values()) == 178
    assert abs(r.rows["train"] / 178 - 0.7) < 0.02 and abs(r.rows["test"] / 178 - 0.15) < 0.02
    assert r.epochs_run == r.max_epochs == 5 and r.eval_split == "test" and r.baseline_kind == "majority class"
    assert set(r.metrics) == set(r.baseline) == {"loss", "accuracy", "precision", "recall", "f1", "confusion_matrix"}
    # the default TabM: 13 numbers embedded (16 bins -> 8 each, with a bias), 8 members' input scalings,
    # 128, 128 hidden, 8 heads, and the linear skip path (13 x 3, no bias)
    embedded = 13 * 8
    assert r.parameters == (13 * 16 * 8 + 13 * 8) + 8 * embedded + (embedded * 128 + 128) + (128 * 128 + 128) + \
        8 * (128 * 3 + 3) + 13 * 3
    assert {"load", "preprocess", "train", "total"} <= set(r.timings)
    assert logs and logs[0].startswith(f"Loaded {demo_data_path()}: 178 rows, 14 columns")
    assert {p.name for p in r.run_dir.iterdir()} >= RUN_FILES
    run = json.loads((r.run_dir / "run.json").read_text())
    assert run["status"] == "finished" and run["target"] == "cultivar" and run["epochs"] == 5
    assert run["rows"] == r.rows and run["data"] == str(Path(demo_data_path()).resolve())
    metrics = json.loads((r.run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["rows"] == r.rows["test"] and metrics["metrics"] == r.metrics
    splits = json.loads((r.run_dir / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(178))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [r.rows[k] for k in ("train", "val", "test")]
    # config.toml is the resolved config (data.path made absolute): loading it gives the same run config
    assert resolve_run_config(load_toml(str(r.run_dir / "config.toml"))) == cfg
    assert cfg.data.path == str(Path(demo_data_path()).resolve())


def test_load_run_predict_and_evaluate(wine_run, tmp_path):
    _, r, _ = wine_run
    run = load_run(r.run_dir)
    assert run.task == "classification" and run.info["classes"] == WINE_CLASSES
    assert run.preprocessor.target == "cultivar" and len(run.preprocessor.feature_names) == 13
    preds, notes = predict_file(run, demo_data_path())
    assert preds.column_names == ["prediction"] and preds.num_rows == 178 and notes == []
    assert set(preds.column("prediction").to_pylist()) <= set(WINE_CLASSES)
    preds, _ = predict_file(run, demo_data_path(), proba=True)
    assert preds.column_names == ["prediction", *(f"proba_{c}" for c in WINE_CLASSES)]
    totals = [sum(row) for row in zip(*(preds.column(f"proba_{c}").to_pylist() for c in WINE_CLASSES))]
    assert all(abs(t - 1) < 1e-5 for t in totals)
    # a pyarrow.Table works as well as a path, and gives the same predictions
    table = pcsv.read_csv(demo_data_path())
    from_table = predict_file(run, table)[0].column("prediction").to_pylist()
    assert from_table == predict_file(run, demo_data_path())[0].column("prediction").to_pylist()
    rep = evaluate_file(run, demo_data_path())
    assert set(rep) == {"rows", "metrics", "baseline", "baseline_kind", "notes"}
    assert rep["rows"] == 178 and rep["baseline_kind"] == "majority class"
    assert 0 <= rep["metrics"]["accuracy"] <= 1 and len(rep["metrics"]["confusion_matrix"]) == 3
    # the baseline predicts the training rows' majority class for every row
    prior = run.info["class_prior"]
    majority = WINE_CLASSES[prior.index(max(prior))]
    share = table.column("cultivar").to_pylist().count(majority) / 178
    assert rep["baseline"]["accuracy"] == pytest.approx(share)


def test_predict_and_evaluate_bad_columns(wine_run, tmp_path):
    _, r, _ = wine_run
    run = load_run(r.run_dir)
    table = pcsv.read_csv(demo_data_path())
    missing = table.drop_columns(["alcohol", "hue"])
    with pytest.raises(TableError, match=r"lacks 2 column\(s\) the model needs: \['alcohol', 'hue'\]"):
        predict_file(run, missing)
    extra = table.append_column("shoe_size", pa.array([42] * table.num_rows))
    _, notes = predict_file(run, extra)
    assert notes == ["ignored 1 column(s) the model does not use: ['shoe_size']"]
    with pytest.raises(TableError, match="no target column 'cultivar'.*use `fitloop predict` for unlabelled data"):
        evaluate_file(run, table.drop_columns(["cultivar"]))
    for bad in (tmp_path / "nope", tmp_path):
        with pytest.raises(NotARunError, match="is not a fitloop run directory"):
            load_run(bad)


def test_bad_settings_and_data_write_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="no target column: pass --target COL"):
        train_table(resolve_run_config({"data.path": demo_data_path()}), out=out)
    with pytest.raises(TableError, match=r"target column 'cultivr' not found\. Did you mean 'cultivar'\?"):
        train_table(wine_config(**{"data.target": "cultivr"}), out=out)
    assert not out.exists()
    (out / "keep").mkdir(parents=True)
    with pytest.raises(OutputPathError, match="is not a fitloop run directory: it holds 1 file or folder"):
        train_table(wine_config(), out=out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["keep"]


def _regression_csv(tmp_path: Path) -> Path:
    rows = [[f"r{i}", i / 10, (i * 7) % 5, 3.0 * i / 10 + 100.0] for i in range(80)]
    return write_rows(tmp_path / "reg.csv", ["row_id", "x", "z", "y"], rows)


def test_regression_run_predicts_in_the_target_units(tmp_path):
    data, out = _regression_csv(tmp_path), tmp_path / "reg-run"
    train_table(resolve_run_config({"data.path": str(data), "data.target": "y", "data.id": "row_id",
                                    "train.epochs": 40, "train.lr": 0.01, "train.quiet": True}), out=out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["baseline_kind"] == "train mean" and set(metrics["metrics"]) == {"mse", "rmse", "mae", "r2"}
    run = load_run(out)
    assert run.task == "regression" and set(run.info["target_scaling"]) == {"mean", "std"}
    preds, _ = predict_file(run, data)
    assert preds.column_names == ["row_id", "prediction"] and preds.num_rows == 80
    assert preds.column("row_id").to_pylist()[:2] == ["r0", "r1"]
    values = preds.column("prediction").to_pylist()
    assert 95 < sum(values) / len(values) < 120  # original units (targets 100..123.7), not standardized
    rep = evaluate_file(run, data)
    assert rep["baseline_kind"] == "train mean" and rep["metrics"]["rmse"] < rep["baseline"]["rmse"]
    with pytest.raises(ValueError, match="--proba is for classification runs"):
        predict_file(run, data, proba=True)
