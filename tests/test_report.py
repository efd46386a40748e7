"""Reports (fitloop/report): fl.summary, plots, report.html from a Trainer and from run directories
(finished, interrupted, failed, without validation, written before reports existed), `fitloop runs`,
and one page rendered in headless Chromium."""

from __future__ import annotations

import base64
import csv
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from browser_support import CHROMIUM, NO_CHROMIUM, render  # tests/browser_support.py
from torch import nn

import fitloop as fl
from fitloop.cli import main
from fitloop.report import from_run_dir, write_report

DATASETS = Path(fl.__file__).resolve().parent / "datasets"
PNG = b"\x89PNG\r\n\x1a\n"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two `fitloop train` runs: wine (classification) and diabetes (regression)."""
    root = tmp_path_factory.mktemp("runs")
    for name, target in (("wine", "cultivar"), ("diabetes", "progression")):
        assert main(["train", str(DATASETS / f"{name}.csv"), "--target", target, "--epochs", "6", "--lr", "0.01",
                     "--quiet", "--out", str(root / name)]) == 0
    return root


def _images(html: str) -> dict[str, bytes]:
    return {m.group(1): base64.b64decode(m.group(2))
            for m in re.finditer(r'<img id="plot-(\w+)" alt="[^"]*" src="data:image/png;base64,([^"]+)"', html)}


def _self_contained(html: str) -> None:
    assert "http://" not in html and "https://" not in html and "<script" not in html and "<link" not in html


# ---------------------------------------------------------------------------------------------- summary


def test_summary_shapes_counts_frozen_and_shared():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 8), nn.Tanh()), nn.Linear(8, 2))
    net[0].requires_grad_(False)
    s = fl.summary(net, (4,), verbose=False)
    assert [(r.name, r.kind, r.output_shape, r.params, r.trainable) for r in s.rows] == [
        ("0", "Linear", "[N, 8]", 40, 0), ("1", "ReLU", "[N, 8]", 0, 0), ("2.0", "Linear", "[N, 8]", 72, 72),
        ("2.1", "Tanh", "[N, 8]", 0, 0), ("3", "Linear", "[N, 2]", 18, 18)]
    assert (s.total, s.trainable, s.frozen, s.output_shape) == (130, 90, 40, "[N, 2]")
    assert str(s).splitlines()[-1] == "parameters: 130 total, 90 trainable, 40 frozen"
    assert "40 (40 frozen)" in str(s) and net.training  # the mode is put back

    class Tied(nn.Module):  # a shared weight counts once
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    assert fl.summary(Tied(), (3,), verbose=False).total == 9


def test_summary_prints_and_names_a_bad_shape(capsys):
    s = fl.summary(nn.Linear(3, 2), 3)
    assert capsys.readouterr().out == str(s) + "\n"
    with pytest.raises(ValueError, match=r"forward pass failed on a dummy input of shape \[2, 5\]"):
        fl.summary(nn.Linear(3, 2), (5,), verbose=False)
    emb = fl.summary(nn.Embedding(10, 4), input=torch.zeros(2, 7, dtype=torch.long), verbose=False)
    assert emb.output_shape == "[N, 7, 4]" and emb.total == 40
    for bad in ("abc", (3, 0), (2.5,)):
        with pytest.raises(ValueError, match=r"summary: input_shape must be positive whole numbers, one sample's "
                                             r"shape without the batch dimension, e.g. \(8,\) for 8 features; got"):
            fl.summary(nn.Linear(3, 2), bad, verbose=False)


# ------------------------------------------------------------------------------------ trainer.report


def _classification(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    X = torch.randn(3, 4, generator=g)[y] + 0.7 * torch.randn(n, 4, generator=g)
    return fl.split(X, y, fractions=(0.6, 0.2, 0.2), seed=0, stratify=True)


def test_trainer_report_classification(tmp_path):
    train, val, test = _classification()
    torch.manual_seed(0)
    t = fl.Trainer(fl.build_mlp(fl.MLPSpec(4, hidden=[16], out_features=3)), "cross_entropy", lr=0.02, epochs=8,
                   quiet=True)
    t.fit(train, val)
    files = t.report(tmp_path / "rep", test=test)
    assert sorted(files.plots) == ["confusion", "loss", "metrics"] and files.absent == []  # a constant lr: text
    html = files.html.read_text()
    _self_contained(html)
    images = _images(html)
    assert sorted(images) == sorted(files.plots)
    for name, path in files.plots.items():
        assert path.read_bytes() == images[name] and images[name].startswith(PNG)
    d = files.data
    majority = int(torch.bincount(train.y).argmax())
    assert d.baseline["accuracy"] == pytest.approx(float((test.y == majority).float().mean()))
    assert d.confusion == t.evaluate(test)["confusion_matrix"]  # predictions and metrics agree exactly
    assert d.data["rows"] == {"train": 144, "val": 48, "test": 48}
    assert sum(d.data["target_distribution"]["test"]["counts"].values()) == 48
    assert "Sequential: input [N, 4] -> output [N, 3]. Parameters: 131 total, 131 trainable, 0 frozen." in html
    assert f"<div class=\"kind\">{d.verdict['kind']}</div>" in html


def test_trainer_report_regression_with_and_without_test(tmp_path):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=g)
    y = X @ torch.tensor([1.0, 2.0, 3.0]) + 0.1 * torch.randn(200, generator=g)
    train, test = fl.split(X, y, fractions=(0.8, 0.2), seed=0)
    t = fl.Trainer(nn.Linear(3, 1), "mse", lr=0.05, epochs=5, quiet=True)
    t.fit(train)
    bare = t.report(tmp_path / "bare")
    assert "predicted" not in bare.plots and any(a.startswith("test split: pass test=") for a in bare.absent)
    assert any(a.startswith("validation: fit had no validation data") for a in bare.absent)
    full = t.report(tmp_path / "full", test=test)
    assert {"loss", "metrics", "predicted", "residuals"} <= set(full.plots)
    d = full.data
    assert d.y_true == test.y.tolist() and d.baseline_kind == "train mean"
    assert d.baseline["mse"] == pytest.approx(float(((test.y - train.y.mean()) ** 2).mean()), rel=1e-5)
    assert "overfitting and whether the validation loss" in full.html.read_text()  # not judged, said so
    # trained from a DataLoader: the model summary takes its shape from test=, the missing baseline is said
    # (a DataLoader over a Dataset of its own: one over a TensorDataset is in memory and has its baseline)
    from torch.utils.data import DataLoader, Dataset

    class Rows(Dataset):
        def __len__(self):
            return len(train.X)

        def __getitem__(self, i):
            return train.X[i], train.y[i]

    t.fit(DataLoader(Rows(), batch_size=32))
    loaded = t.report(tmp_path / "loader", test=test).data
    assert loaded.model is not None and loaded.data["features"] == 3 and not loaded.baseline
    assert any(a.startswith("baseline: the training targets are not in memory") for a in loaded.absent)


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch, capsys, runs):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'fitloop\[plot\]'"):
        write_report(runs / "wine", tmp_path)
    code, out, err = run_cli(capsys, "report", runs / "wine", "--out", tmp_path)
    assert code == 2 and "pip install 'fitloop[plot]'" in err and "accuracy" in out
    assert not (tmp_path / "report.html").exists()


# ---------------------------------------------------------------------------------- fitloop report


def test_cli_report_classification_run(runs, capsys, tmp_path):
    code, out, err = run_cli(capsys, "report", runs / "wine", "--out", tmp_path)
    assert code == 0, err
    assert "accuracy" in out and "baseline (majority class)" in out and "verdict: " in out
    assert f"wrote {tmp_path / 'report.html'} (3 plots in {tmp_path / 'plots'})" in out  # a constant lr: text
    html = (tmp_path / "report.html").read_text()
    _self_contained(html)
    assert sorted(_images(html)) == ["confusion", "loss", "metrics"]
    (tmp_path / "afile").write_text("")
    code, _, err = run_cli(capsys, "report", runs / "wine", "--out", tmp_path / "afile")
    assert code == 2 and f"--out {tmp_path / 'afile'}: it is a file; pass a directory" in err
    d = from_run_dir(runs / "wine")
    metrics = json.loads((runs / "wine" / "metrics.json").read_text())
    assert d.confusion == metrics["metrics"]["confusion_matrix"]  # test_predictions.csv agrees with metrics.json
    rows = json.loads((runs / "wine" / "run.json").read_text())["rows"]
    counts = d.data["target_distribution"]
    assert {k: sum(v["counts"].values()) for k, v in counts.items()} == rows
    assert d.model is not None and d.model.total == json.loads((runs / "wine" / "run.json").read_text())["parameters"]


def test_cli_report_regression_run_keeps_original_units(runs, capsys, tmp_path):
    code, _, err = run_cli(capsys, "report", runs / "diabetes", "--out", tmp_path)
    assert code == 0, err
    assert {"predicted", "residuals"} <= {p.stem for p in (tmp_path / "plots").iterdir()}
    with open(DATASETS / "diabetes.csv") as f:
        y = [float(r["progression"]) for r in csv.DictReader(f)]
    with open(runs / "diabetes" / "test_predictions.csv") as f:
        preds = list(csv.DictReader(f))
    assert [float(p["target"]) for p in preds] == [y[int(p["row"])] for p in preds]
    assert json.loads((runs / "diabetes" / "splits.json").read_text())["test"] == [int(p["row"]) for p in preds]


def test_report_of_a_run_written_before_reports(runs, capsys, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(runs / "wine", old)
    for f in ("test_predictions.csv", "report.html"):
        (old / f).unlink(missing_ok=True)
    shutil.rmtree(old / "plots", ignore_errors=True)
    info = json.loads((old / "run.json").read_text())
    kind = info.pop("verdict")["kind"]
    info.pop("target_distribution")
    (old / "run.json").write_text(json.dumps(info))
    code, out, err = run_cli(capsys, "report", old)
    assert code == 0, err
    assert "absent: test-split predictions: no test_predictions.csv" in out
    d = from_run_dir(old)
    assert d.verdict["kind"] == kind  # judged again from the history, with the CLI's baseline loss
    assert "predates saved verdicts" in " ".join(d.notes)
    assert d.confusion == json.loads((old / "metrics.json").read_text())["metrics"]["confusion_matrix"]
    assert "share" in d.data["target_distribution"]["train"] and (old / "plots" / "confusion.png").is_file()


def _api_run(run_dir, *, lr=0.05, callbacks=(), val=True):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(96, 3, generator=g)
    y = X.sum(1)
    t = fl.Trainer(nn.Linear(3, 1), "mse", "sgd", lr=lr, epochs=6, batch_size=32, quiet=True, run_dir=run_dir,
                   callbacks=list(callbacks))
    t.fit((X[:64], y[:64]), (X[64:], y[64:]) if val else None)


class _Interrupt(fl.Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 3:
            raise KeyboardInterrupt


def test_report_failed_interrupted_and_no_validation_runs(tmp_path, capsys):
    with pytest.raises(fl.NonFiniteError):
        _api_run(tmp_path / "failed", lr=1e3)
    with pytest.raises(KeyboardInterrupt):
        _api_run(tmp_path / "interrupted", callbacks=[_Interrupt()])
    _api_run(tmp_path / "noval", val=False)
    for name, status in (("failed", "failed"), ("interrupted", "interrupted")):
        code, out, err = run_cli(capsys, "report", tmp_path / name)
        assert code == 0, err
        assert f"status {status}" in out
        html = (tmp_path / name / "report.html").read_text()
        assert f"status {status}" in html and (tmp_path / name / "plots" / "loss.png").is_file()
    failed = from_run_dir(tmp_path / "failed")
    assert failed.verdict["kind"] == "diverged" and "NonFiniteError" in failed.message
    assert any(a.startswith("model summary: no model bundle") for a in failed.absent)
    assert any(a.startswith("test metrics: no metrics.json") for a in failed.absent)
    assert len(from_run_dir(tmp_path / "interrupted").history) == 2
    noval = from_run_dir(tmp_path / "noval")
    assert any(a.startswith("validation: the run had no validation data") for a in noval.absent)
    assert noval.verdict["not_judged"] and noval.model is None  # a bare nn.Linear has no spec to rebuild


def test_report_of_a_killed_cli_run_says_what_it_trained_on(tmp_path, capsys):
    """run.json holds the data, target, task and rows from the start: a SIGKILLed `fitloop train` still
    reports them, and a classification run lists no regression plots as absent."""
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fitloop", "train", str(DATASETS / "wine.csv"), "--target",
                             "cultivar", "--epochs", "100000", "--early-stopping", "100000", "--out", str(run), "-q"],
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        deadline = time.monotonic() + 120
        while not ((run / "history.jsonl").is_file() and len((run / "history.jsonl").read_text().splitlines()) > 3):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    d = from_run_dir(run)
    assert d.status == "interrupted" and d.task == "classification"
    assert d.data["target"] == "cultivar" and d.data["data"] == str(DATASETS / "wine.csv")
    assert d.data["rows"] == {"train": 125, "val": 27, "test": 26}
    assert not any("predicted against actual" in a or "residuals" in a for a in d.absent), d.absent
    code, out, err = run_cli(capsys, "report", run)
    assert code == 0, err
    assert "None" not in out.split("\n")[0] and "cultivar" in out


@pytest.mark.parametrize("case", ["missing", "file", "empty", "foreign"])
def test_report_on_a_non_run_exits_2_naming_what_is_missing(tmp_path, capsys, case):
    path = tmp_path / "x"
    expect = {"missing": "it does not exist", "file": "it is not a directory", "empty": "it has no run.json",
              "foreign": "it has a run.json that is not a fitloop run's"}[case]
    if case == "file":
        path.write_text("hi")
    elif case != "missing":
        path.mkdir()
        if case == "foreign":
            (path / "run.json").write_text('{"name": "something else"}')
    code, out, err = run_cli(capsys, "report", path)
    assert code == 2 and f"{path} is not a fitloop run directory: {expect}" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------- fitloop runs


def test_runs_lists_sorts_and_prints_json(runs, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(runs / "wine", root / "wine")
    shutil.copytree(runs / "diabetes", root / "group" / "diabetes")
    with pytest.raises(fl.NonFiniteError):
        _api_run(root / "failed", lr=1e3)
    killed = root / "killed"
    shutil.copytree(root / "wine", killed)
    info = json.loads((killed / "run.json").read_text())
    info.update(status="running", pid=2 ** 22 + 12345, epoch=1)  # no such process: a SIGKILLed run, whose
    # last checkpoint was epoch 1 while history.jsonl went on
    (killed / "run.json").write_text(json.dumps(info))
    code, out, err = run_cli(capsys, "runs", root, "--json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert sorted(rows) == ["failed", "group/diabetes", "killed", "wine"]
    assert [rows[n]["status"] for n in ("failed", "killed", "wine")] == ["failed", "interrupted", "finished"]
    epochs = len((killed / "history.jsonl").read_text().splitlines())
    assert rows["killed"]["epochs"] == rows["wine"]["epochs"] == epochs
    wine_metrics = json.loads((root / "wine" / "metrics.json").read_text())["metrics"]
    assert rows["wine"]["test"] == {"metric": "accuracy", "value": wine_metrics["accuracy"], "split": "test"}
    assert rows["group/diabetes"]["test"]["metric"] == "r2" and rows["failed"]["test"] is None
    assert rows["failed"]["verdict"] == "diverged" and rows["wine"]["best_val"]["metric"] == "val_accuracy"
    code, out, _ = run_cli(capsys, "runs", root, "--json", "--sort", "time", "--reverse")
    times = [r["time"] for r in json.loads(out)]
    assert times == sorted(times, reverse=True)
    os.environ["COLUMNS"] = "80"  # what rich assumes when stdout is not a terminal
    try:
        code, out, _ = run_cli(capsys, "runs", root)
    finally:
        del os.environ["COLUMNS"]
    assert code == 0 and "…" not in out  # one full line per run, nothing cut
    lines = {ln.split("│")[1].strip(): ln for ln in out.splitlines() if ln.count("│") > 2}
    assert {"group/diabetes", "killed", "failed", "wine"} <= set(lines)
    assert "interrupted" in lines["killed"] and "diverged" in lines["failed"] and "finished" in lines["wine"]
    assert run_cli(capsys, "runs", tmp_path / "nope")[0:1] == (2,)
    code, _, err = run_cli(capsys, "runs", root, "--sort", "colour")
    assert code == 2 and "invalid choice: 'colour'" in err
    assert run_cli(capsys, "runs", tmp_path / "runs" / "group" / "diabetes" / "model")[1].startswith("no runs")
    code, out, _ = run_cli(capsys, "runs", "--help")
    assert code == 0 and "examples:" in out and "fitloop runs --json" in out


def test_train_prints_the_verdict_and_the_model_summary(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", DATASETS / "wine.csv", "--target", "cultivar", "--epochs", "2",
                             "--out", tmp_path / "run")
    assert code == 0, err
    assert "\nVerdict: " in out and "\nSuggestion: " in out
    assert "TabM: input [N, 13] -> output [N, 3]" in out  # the CLI's default model
    assert "parameters: 35,687 total, 35,687 trainable, 0 frozen" in out


# ----------------------------------------------------------------------------------------- Chromium



@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
def test_report_renders_in_headless_chromium(runs, tmp_path, capsys):
    assert run_cli(capsys, "report", runs / "wine", "--out", tmp_path)[0] == 0
    html = (tmp_path / "report.html").read_text()
    plots = sorted(_images(html))
    result = render(html, tmp_path)  # load errors, decoded image sizes, console lines
    assert result["errors"] == []
    assert sorted(i[0].removeprefix("plot-") for i in result["images"]) == plots
    assert all(w > 100 and h > 100 for _, w, h in result["images"]), result["images"]  # every image decoded
    assert result["console"] == [], result["console"]
