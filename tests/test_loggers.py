"""Loggers (callbacks/loggers.py, callbacks/mlflow_logger.py): history.csv, TensorBoard, MLflow, --log."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import fitloop as fl
from fitloop.cli import main
from fitloop.extras import MissingExtraError

WINE = os.path.join(os.path.dirname(fl.__file__), "datasets", "wine.csv")


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    return X, (X[:, 0] + 0.5 * X[:, 1] > 0).long()


def _trainer(run_dir, callbacks=(), **kw):
    torch.manual_seed(0)
    settings = dict(epochs=4, batch_size=16, lr=0.02, seed=0, quiet=True, run_dir=str(run_dir))
    settings.update(kw)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return fl.Trainer(model, "cross_entropy", "adam", callbacks=list(callbacks), **settings)


class Crash(fl.Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, step, loss):
        if step == self.step:
            raise RuntimeError("simulated crash")


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(f)]


def _events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return acc


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def test_history_csv_tensorboard_and_mlflow(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    tb, ml = fl.TensorBoardLogger(), fl.MLflowLogger(tracking_uri=mlflow_uri, experiment="exp")
    t = _trainer(run, [tb, ml])
    history = t.fit(_data(), _data(32, 1))
    # history.csv: the scalar values of history.jsonl, exactly (repr of each float)
    rows = list(csv.DictReader(open(run / "history.csv", newline="")))
    lines = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "f1", "precision", "recall", "val_loss", "val_accuracy",
                             "val_f1", "val_precision", "val_recall", "lr", "time"]  # no confusion matrices
    assert [{k: float(v) for k, v in r.items()} for r in rows] == \
        [{k: v for k, v in h.items() if k in rows[0]} for h in lines] == \
        [{k: v for k, v in h.items() if k in rows[0]} for h in history]
    # TensorBoard: per-epoch scalars and the hyperparameters
    acc = _events(run / "tensorboard")
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "grad_norm", "time/epoch_s"} <= tags
    for tag, key in (("loss/train", "loss"), ("loss/val", "val_loss"), ("accuracy/val", "val_accuracy")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2, 3, 4]
        assert [e.value for e in events] == pytest.approx([h[key] for h in history], rel=1e-6)
    assert all(e.value > 0 for e in acc.Scalars("grad_norm"))
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hp = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    assert hp["lr"].number_value == pytest.approx(0.02) and hp["optimizer"].string_value == "Adam"
    assert hp["batch_size"].number_value == 16 and hp["model"].string_value == "Sequential"
    # MLflow: params, the metric history per epoch, the bundle as an artifact
    client = MlflowClient(tracking_uri=mlflow_uri)
    r = client.get_run(ml.run_id)
    assert r.info.status == "FINISHED" and r.info.run_name == "run"
    params = r.data.params
    assert params["lr"] == "0.02" and params["epochs"] == "4" and params["loss"] == "CrossEntropyLoss"
    for key in ("loss", "val_loss", "val_accuracy", "lr", "grad_norm"):
        hist = client.get_metric_history(ml.run_id, key)
        assert [m.step for m in hist] == [1, 2, 3, 4]
        if key != "grad_norm":
            assert [m.value for m in hist] == [h[key] for h in history]
    assert {a.path for a in client.list_artifacts(ml.run_id, "model")} == {"model/model.safetensors",
                                                                          "model/fitloop.json"}
    assert json.loads(Path(client.download_artifacts(ml.run_id, "model/fitloop.json", str(tmp_path)))
                      .read_text())["mlflow_run_id"] == ml.run_id


def test_resume_keeps_every_log_consistent(tmp_path, mlflow_uri):
    """Crash in epoch 4 (the last checkpoint is epoch 2's), resume: history.csv, the TensorBoard curves and
    the MLflow run equal an uninterrupted run's, with no epoch twice."""
    from mlflow.tracking import MlflowClient

    data, val = _data(), _data(32, 1)
    ref = _trainer(tmp_path / "ref", [fl.CSVLogger(tmp_path / "plain.csv")], epochs=5)
    ref_history = ref.fit(data, val)
    mls = []

    def loggers(crash=None):
        mls.append(fl.MLflowLogger(tracking_uri=mlflow_uri))
        return [fl.TensorBoardLogger(), mls[-1], *([crash] if crash else [])]

    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(run, loggers(Crash(20)), epochs=5, checkpoint_every_epochs=2).fit(data, val)  # 6 steps/epoch
    assert len(_csv(run / "history.csv")) == 3  # epoch 3 was logged after the last checkpoint
    client = MlflowClient(tracking_uri=mlflow_uri)
    assert client.get_run(mls[0].run_id).info.status == "FAILED"
    history = _trainer(run, loggers(), epochs=5, checkpoint_every_epochs=2).resume(data, val)
    assert [h["loss"] for h in history] == [h["loss"] for h in ref_history]
    assert _csv(run / "history.csv") == _csv(tmp_path / "ref" / "history.csv") == _csv(tmp_path / "plain.csv")
    events = _events(run / "tensorboard").Scalars("loss/train")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]  # the first session's epoch 3 is purged
    assert [e.value for e in events] == pytest.approx([h["loss"] for h in ref_history], rel=1e-6)
    assert mls[1].run_id == mls[0].run_id  # the same MLflow run, continued
    hist = client.get_metric_history(mls[0].run_id, "loss")
    assert [m.step for m in hist] == [1, 2, 3, 4, 5] and [m.value for m in hist] == [h["loss"] for h in ref_history]
    assert client.get_run(mls[0].run_id).info.status == "FINISHED"


def test_a_resume_in_the_same_second_still_sorts_its_event_file_last(tmp_path):
    """TensorBoard reads event files in name order, and a name starts with the creation second. A resume in the
    same second as the interrupted run, whose file name sorts later within that second (another host, pid or
    writer number: uid 10 sorts before uid 9), must still be read last, so that its purge hides the interrupted
    epoch 3 instead of the other way round."""
    import time

    data, val = _data(), _data(32, 1)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _trainer(run, [fl.TensorBoardLogger(), Crash(20)], epochs=5, checkpoint_every_epochs=2).fit(data, val)
    (first,) = (run / "tensorboard").glob("events.out.tfevents.*")
    parts = first.name.split(".")

    class SameSecond(fl.Callback):  # runs just before the logger's on_fit_start opens the new file
        def on_fit_start(self, trainer):
            parts[3], parts[4] = f"{int(time.time()):010d}", "~"  # this second, a host that sorts after any
            first.rename(first.with_name(".".join(parts)))

    _trainer(run, [SameSecond(), fl.TensorBoardLogger()], epochs=5, checkpoint_every_epochs=2).resume(data, val)
    names = sorted(p.name for p in (run / "tensorboard").glob("events.out.tfevents.*"))
    assert names[0] == ".".join(parts)
    assert [e.step for e in _events(run / "tensorboard").Scalars("loss/train")] == [1, 2, 3, 4, 5]


def test_cli_log_tensorboard_and_mlflow(tmp_path, monkeypatch, mlflow_uri, capsys):
    from mlflow.tracking import MlflowClient

    from fitloop.tabular.config import load_toml, resolve_run_config

    monkeypatch.chdir(tmp_path)  # the default MLflow store is ./mlruns
    out = tmp_path / "runs" / "wine"
    assert main(["train", WINE, "--target", "cultivar", "--epochs", "3", "--quiet", "--out", str(out),
                 "--log", "tensorboard,mlflow"]) == 0, capsys.readouterr().err
    assert capsys.readouterr() == ("", "")  # --quiet: the loggers print nothing either
    assert _events(out / "tensorboard").Scalars("loss/val")[-1].step == 3
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fitloop").experiment_id])
    assert run.info.run_name == "wine" and run.data.tags["fitloop.run_dir"] == str(out.resolve())
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert run.data.metrics["test_accuracy"] == metrics["accuracy"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"model", "metrics.json", "config.toml"} <= artifacts
    bundle = json.loads(Path(client.download_artifacts(run.info.run_id, "model/fitloop.json", str(tmp_path)))
                        .read_text())
    assert "preprocessor" in bundle  # the final bundle, the one `fitloop predict` uses
    # `fitloop resume` rebuilds the Trainer from config.toml, loggers included
    assert resolve_run_config(load_toml(str(out / "config.toml"))).train.log == ["tensorboard", "mlflow"]


def test_mlflow_plain_directory_uri_and_a_bad_uri(tmp_path, monkeypatch, capsys):
    """MLFLOW_TRACKING_URI=./mlruns (a directory, as `mlflow ui` takes it) is the local file store; a URI
    MLflow cannot use is a user error (exit 2) naming it, not an internal error."""
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "./store")
    assert fl.MLflowLogger().tracking_uri == (tmp_path / "store").as_uri()
    assert main(["train", WINE, "--target", "cultivar", "--epochs", "2", "--quiet", "--out", str(tmp_path / "a"),
                 "--log", "mlflow"]) == 0, capsys.readouterr().err
    client = MlflowClient(tracking_uri=(tmp_path / "store").as_uri())
    assert len(client.search_runs([client.get_experiment_by_name("fitloop").experiment_id])) == 1
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    code = main(["train", WINE, "--target", "cultivar", "--epochs", "2", "--quiet", "--out", str(tmp_path / "b"),
                 "--log", "mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and "MLflow: cannot use the tracking URI 'http://127.0.0.1:9'" in err, err
    assert "internal error" not in err


@pytest.mark.parametrize("module, extra, make", [
    ("tensorboard", "tensorboard", lambda: fl.TensorBoardLogger()),
    ("mlflow", "mlflow", lambda: fl.MLflowLogger()),
])
def test_a_missing_extra_names_the_pip_install(monkeypatch, module, extra, make):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(MissingExtraError, match=rf"pip install 'fitloop\[{extra}\]'"):
        make()


def test_cli_missing_extra_and_unknown_logger_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    code = main(["train", WINE, "--target", "cultivar", "--epochs", "1", "--out", str(tmp_path / "r"),
                 "--log", "mlflow"])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'fitloop[mlflow]'" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()  # nothing written
    code = main(["train", WINE, "--target", "cultivar", "--log", "tensorbord"])
    err = capsys.readouterr().err
    assert code == 2 and "unknown logger 'tensorbord'; choose from tensorboard, mlflow" in err


def test_grad_norm_modes(tmp_path):
    from fitloop.callbacks.loggers import GradNorm

    with pytest.raises(ValueError, match="grad_norm: got 'every'; choose one of last, mean, off"):
        GradNorm("every")
    # with clipping the Trainer's own mean of the per-step norms is logged
    t = _trainer(tmp_path / "clip", [fl.TensorBoardLogger(grad_norm="mean")], clip_grad_norm=100.0, epochs=2)
    history = t.fit(_data())
    logged = [e.value for e in _events(tmp_path / "clip" / "tensorboard").Scalars("grad_norm")]
    assert logged == pytest.approx([h["grad_norm"] for h in history], rel=1e-6)
    # without clipping, "mean" measures every step: the same numbers as clipping's (which never clips at 100)
    t = _trainer(tmp_path / "mean", [fl.TensorBoardLogger(grad_norm="mean")], epochs=2)
    t.fit(_data())
    mean = [e.value for e in _events(tmp_path / "mean" / "tensorboard").Scalars("grad_norm")]
    assert mean == pytest.approx(logged, rel=1e-5)
    t = _trainer(tmp_path / "off", [fl.TensorBoardLogger(grad_norm="off")], epochs=1)
    t.fit(_data())
    assert "grad_norm" not in _events(tmp_path / "off" / "tensorboard").Tags()["scalars"]


def test_cli_resume_keeps_logging_to_the_same_runs(tmp_path, monkeypatch, mlflow_uri, capsys):
    """`fitloop train --log ...` fails in epoch 4 (last checkpoint: epoch 2), `fitloop resume` continues the same
    MLflow run and TensorBoard curves, with no epoch twice."""
    from mlflow.tracking import MlflowClient

    from fitloop.tabular import training

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"

    def crashing(t0):
        crash = Crash(7)  # wine: 125 training rows, batch 64 -> 2 steps per epoch; step 7 is in epoch 4
        crash.seconds = None
        return crash

    with monkeypatch.context() as m:
        m.setattr(training, "FirstStep", crashing)
        code = main(["train", WINE, "--target", "cultivar", "--epochs", "5", "--batch-size", "64", "--quiet",
                     "--out", str(out), "--log", "tensorboard,mlflow", "--set", "train.checkpoint_every_epochs=2"])
    assert code == 1 and "simulated crash" in capsys.readouterr().err
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    assert main(["resume", str(out), "--quiet"]) == 0, capsys.readouterr().err
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("fitloop").experiment_id])
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    hist = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in hist] == [1, 2, 3, 4, 5] and [m.value for m in hist] == [h["val_loss"] for h in history]
    events = _events(out / "tensorboard").Scalars("loss/val")
    assert [e.step for e in events] == [1, 2, 3, 4, 5]
