"""Tests for fitloop.tabular's Python API: train a table from a path, a pyarrow.Table or a pandas.DataFrame with
`fitloop train`'s defaults and decisions, load the run, predict and evaluate on files and tables in memory."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest

import fitloop as fl
import fitloop.tabular as ft
from fitloop.cli import main
from fitloop.tabular import training
from fitloop.tabular.config import ConfigError, settings_overrides

SETTINGS = {"epochs": 4, "lr": 0.01, "quiet": True}  # short runs; the rest is `fitloop train`'s defaults


@pytest.fixture(scope="module")
def wine() -> pa.Table:
    """The demo table as the file reader reads it: the same rows a run on the file sees."""
    return ft.read_table(ft.demo_data_path())


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    return ft.train(ft.demo_data_path(), target="cultivar", out=tmp_path_factory.mktemp("api") / "file", **SETTINGS)


@pytest.fixture(scope="module")
def table_run(tmp_path_factory, wine):
    return ft.train(wine, target="cultivar", out=tmp_path_factory.mktemp("api") / "table", **SETTINGS)


def test_train_from_a_path_is_fitloop_train(tmp_path, capsys, file_run):
    out = tmp_path / "cli"
    code = main(["train", ft.demo_data_path(), "--target", "cultivar", "--epochs", "4", "--lr", "0.01",
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "metrics.json").read_text())
    assert file_run.metrics == saved["metrics"] and file_run.baseline == saved["baseline"]  # exactly
    assert (out / "config.toml").read_text() == (file_run.run_dir / "config.toml").read_text()
    assert file_run.task == "classification" and file_run.rows == {"train": 125, "val": 27, "test": 26}


def test_train_from_an_arrow_table_is_the_run_on_its_file(file_run, table_run):
    assert table_run.metrics == file_run.metrics and table_run.rows == file_run.rows
    info = json.loads((table_run.run_dir / "run.json").read_text())
    assert info["data_in_memory"] is True and "data" not in info
    assert json.loads((file_run.run_dir / "run.json").read_text())["data"] == ft.demo_data_path()
    assert "path" not in (table_run.run_dir / "config.toml").read_text().split("[model]")[0]
    assert ((table_run.run_dir / "splits.json").read_text() == (file_run.run_dir / "splits.json").read_text())


def test_train_from_a_dataframe(tmp_path, file_run):
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    df = pd.read_csv(ft.demo_data_path())
    run = ft.train(df, target="cultivar", out=tmp_path / "df", **SETTINGS)
    assert run.metrics == file_run.metrics
    preds = run.load().predict(df.drop(columns=["cultivar"]))
    assert preds.column("prediction").to_pylist() == run.load().predict(ft.demo_data_path()).column(
        "prediction").to_pylist()


def test_predict_and_evaluate_on_tables_in_memory(table_run, wine):
    loaded = ft.load_run(table_run.run_dir)
    assert isinstance(loaded, ft.LoadedRun) and loaded.task == "classification"
    on_file = loaded.predict(ft.demo_data_path(), proba=True)
    on_table = loaded.predict(wine, proba=True)
    assert on_table.equals(on_file) and on_table.column_names[0] == "prediction"
    assert on_table.num_rows == 178 and set(on_table.column("prediction").to_pylist()) <= {
        "class_0", "class_1", "class_2"}
    report = loaded.evaluate(wine)
    assert report == loaded.evaluate(ft.demo_data_path()) and report["rows"] == 178
    assert set(report["metrics"]) >= {"loss", "accuracy"} and report["baseline_kind"] == "majority class"


def test_predict_notes_are_collected_or_warned(table_run, wine):
    loaded = table_run.load()
    extra = wine.append_column("notes", pa.array(["x"] * wine.num_rows))
    notes: list[str] = []
    loaded.predict(extra, notes=notes)
    assert notes == ["ignored 1 column(s) the model does not use: ['notes']"]
    with pytest.warns(UserWarning, match="ignored 1 column"):
        loaded.predict(extra)


def test_evaluate_needs_the_target(table_run, wine):
    with pytest.raises(ft.TableError, match="no target column 'cultivar'"):
        table_run.load().evaluate(wine.drop_columns(["cultivar"]))


def test_settings_by_name_dotted_or_config(tmp_path):
    assert settings_overrides({"epochs": 3, "hidden": [8], "seed": 1, "task": "regression", "data.seed": 2}) == {
        "train.epochs": 3, "model.hidden": [8], "train.seed": 1, "data.task": "regression", "data.seed": 2}
    with pytest.raises(ConfigError, match="unknown setting 'epoch'. Did you mean 'epochs'?"):
        ft.train(ft.demo_data_path(), target="cultivar", out=tmp_path / "x", epoch=3)
    assert not (tmp_path / "x").exists()
    given = ft.resolve_run_config({"train.lr": 0.5, "data.target": "cultivar"})
    cfg, table = ft.run_config(ft.demo_data_path(), config=given, epochs=2)
    assert (cfg.train.lr, cfg.train.epochs, cfg.data.target, table) == (0.5, 2, "cultivar", None)
    assert given.train.epochs == 50 and given.data.path is None  # the caller's config is never changed
    toml = tmp_path / "run.toml"
    toml.write_text('[train]\nlr = 0.25\n[data]\ntarget = "cultivar"\n')
    cfg, _ = ft.run_config(ft.demo_data_path(), config=str(toml), lr=0.125)
    assert (cfg.train.lr, cfg.data.target) == (0.125, "cultivar")  # settings win over the file
    with pytest.raises(TypeError, match="data: expected a file path, a pyarrow.Table or a pandas.DataFrame"):
        ft.run_config([1, 2, 3])


def test_the_bad_data_errors_name_the_table(wine, tmp_path):
    with pytest.raises(ft.TableError, match="the in-memory table: target column 'cultivr' not found"):
        ft.train(wine, target="cultivr", out=tmp_path / "x", **SETTINGS)
    with pytest.raises(ConfigError, match="no target column"):
        ft.train(wine, out=tmp_path / "x", **SETTINGS)


def test_dry_run_on_a_table_in_memory(wine, tmp_path):
    plan = ft.dry_run(wine, target="cultivar", **SETTINGS)
    assert isinstance(plan, ft.DryRun) and plan.cfg.data.path is None
    assert plan.splits == {"train": 125, "val": 27, "test": 26} and plan.task == "classification"


def test_resume_of_a_run_on_a_table_needs_the_table_again(tmp_path, monkeypatch, wine, table_run):
    class Crash(fl.Callback):
        seconds = None

        def on_train_batch_end(self, trainer, step, loss):
            if step == 5:  # 125 training rows, batch 64: 2 steps an epoch, so epoch 3 (epoch 2 is checkpointed)
                raise RuntimeError("simulated crash")

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(training, "FirstStep", lambda t0: Crash())
        with pytest.raises(RuntimeError, match="simulated crash"):
            ft.train(wine, target="cultivar", out=out, **SETTINGS)
    with pytest.raises(ConfigError, match="trained on a table in memory, so resuming it needs that table again"):
        ft.resume(out)
    with pytest.raises(TypeError, match="a run trained on a file reads it again by itself"):
        ft.resume(out, data=ft.demo_data_path())
    resumed = ft.resume(out, data=wine)
    assert resumed.metrics == table_run.metrics  # the same run as one never interrupted


def test_cli_resume_of_a_run_on_a_table_is_a_user_error(tmp_path, monkeypatch, capsys, wine):
    class Crash(fl.Callback):
        seconds = None

        def on_train_batch_end(self, trainer, step, loss):
            if step == 5:
                raise RuntimeError("simulated crash")

    out = tmp_path / "run"
    monkeypatch.setattr(training, "FirstStep", lambda t0: Crash())
    with pytest.raises(RuntimeError):
        ft.train(wine, target="cultivar", out=out, **SETTINGS)
    assert main(["resume", str(out)]) == 2
    assert "needs that table again" in capsys.readouterr().err


def test_size_search_on_a_table(tmp_path, wine):
    lines: list[str] = []
    sized = ft.size_search(wine, target="cultivar", out=tmp_path / "sized", log=lines.append, widths=(4, 8),
                           depths=(1,), max_trials=3, trial_epochs=2, epochs=2, quiet=True)
    assert isinstance(sized, ft.SizedRun) and (sized.run_dir / "size_search.json").is_file()
    assert any(line.startswith("Searching sizes on 125 train and 27 val rows") for line in lines)
    if sized.run is not None:
        assert sized.run.run_dir == sized.run_dir and list(sized.search.chosen) == sized.run.load().model.spec.hidden
    with pytest.raises(ConfigError, match="chooses the hidden layers itself"):
        ft.size_search(wine, target="cultivar", out=tmp_path / "x", hidden=[4])
    with pytest.raises(ConfigError, match="^jobs: got 0; pass a whole number >= 1.$"):
        ft.size_search(wine, target="cultivar", out=tmp_path / "x", jobs=0)


def test_import_is_light_and_the_names_resolve():
    code = ("import sys, fitloop.tabular as ft; light = not {'torch', 'pyarrow'} & set(sys.modules); "
            "ft.RunConfig; print(light, not {'torch', 'pyarrow'} & set(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]  # the run config is plain Python too
    assert fl.RunConfig is ft.RunConfig and fl.Table is ft.Table and fl.TableError is ft.TableError
    assert sorted(dir(ft)) == sorted(ft.__all__)
