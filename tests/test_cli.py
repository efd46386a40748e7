"""Tests for the `fitloop` command line: end to end on real tables, bad input, help.

The run configuration (TOML, --set, flags) is tested in test_run_config.py, the pipeline called from
Python in test_pipeline.py.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tablefiles import sklearn_csv, write_rows

import fitloop
from fitloop.cli import main

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "3", "--quiet"]


# ----------------------------------------------------------------------------------------- helpers


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def no_run_dirs(root: Path) -> bool:
    """Nothing run-like was left: no `runs/` entries and no staged `.tmp-` directories."""
    leftovers = [p for p in root.rglob("*") if p.is_dir() and (".tmp-" in p.name or (p / "run.json").exists())]
    runs = root / "runs"
    return not leftovers and (not runs.exists() or not any(runs.iterdir()))


@pytest.fixture(scope="module")
def wine_run(tmp_path_factory):
    """One trained wine run shared by the predict/evaluate tests."""
    tmp = tmp_path_factory.mktemp("wine")
    data = sklearn_csv(tmp, "wine")
    out = tmp / "run"
    assert main(["train", str(data), "--target", "target", "--id", "row_id", "--epochs", "40", "--lr", "0.01",
                 "--quiet", "--out", str(out)]) == 0
    return out, data


# -------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("name", ["breast_cancer", "wine"])
def test_train_classification_beats_baseline(tmp_path, capsys, name):
    data = sklearn_csv(tmp_path, name)
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", data, "--target", "target", "--id", "row_id", "--epochs", "30",
                                "--lr", "0.01", "--out", out)
    assert code == 0, err
    assert "test metrics" in stdout and "baseline (majority class)" in stdout and str(out) in stdout
    assert {"run.json", "config.toml", "metrics.json", "history.jsonl", "splits.json", "model"} <= {
        p.name for p in out.iterdir()}
    m = json.loads((out / "metrics.json").read_text())
    assert m["split"] == "test" and m["metrics"]["accuracy"] > m["baseline"]["accuracy"] + 0.3
    assert m["metrics"]["accuracy"] > 0.85
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["task"] == "classification"
    n = sum(run["rows"].values())
    splits = json.loads((out / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == list(range(n))
    assert abs(len(splits["train"]) / n - 0.7) < 0.02
    # the preprocessing and the classes are saved as JSON in the bundle; no pickle anywhere
    meta = json.loads((out / "model" / "fitloop.json").read_text())
    assert meta["preprocessor"]["target"] == "target" and meta["table"]["id"] == "row_id"
    assert not list(out.rglob("*.pt")) and not list(out.rglob("*.pkl"))


def test_train_regression_digits_and_predict(tmp_path, capsys):
    # diabetes: regression, metrics in the target's original units and better than the mean predictor
    data = sklearn_csv(tmp_path, "diabetes")
    out = tmp_path / "dia"
    code, _, err = run_cli(capsys, "train", data, "--target", "target", "--epochs", "60", "--lr", "0.003",
                           "--quiet", "--out", out)
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    assert m["baseline_kind"] == "train mean"
    assert m["metrics"]["rmse"] < m["baseline"]["rmse"] and m["metrics"]["r2"] > 0.2
    assert 40 < m["metrics"]["rmse"] < 90  # original units (progression ~ 25..346), not standardized
    preds = tmp_path / "p.csv"
    assert run_cli(capsys, "predict", out, data, "-o", preds)[0] == 0
    rows = list(csv.DictReader(open(preds)))
    assert len(rows) == 442 and 25 < sum(float(r["prediction"]) for r in rows) / 442 < 346
    # digits: 10 integer classes, constant pixel columns dropped with a note
    data = sklearn_csv(tmp_path, "digits")
    code, stdout, err = run_cli(capsys, "train", data, "--target", "target", "--drop", "row_id", "--epochs", "5",
                                "--lr", "0.01", "--batch-size", "128", "--out", tmp_path / "dig")
    assert code == 0, err
    assert "constant" in stdout and "10 of 5" not in stdout
    m = json.loads((tmp_path / "dig" / "metrics.json").read_text())
    assert len(m["metrics"]["confusion_matrix"]) == 10 and m["metrics"]["accuracy"] > 0.8


def test_predict_original_labels_id_and_proba(wine_run, tmp_path, capsys):
    out, data = wine_run
    preds = tmp_path / "preds.csv"
    code, _, err = run_cli(capsys, "predict", out, data, "-o", preds, "--proba")
    assert code == 0, err
    rows = list(csv.DictReader(open(preds)))
    assert list(rows[0]) == ["row_id", "prediction", "proba_0", "proba_1", "proba_2"]
    assert rows[0]["row_id"] == "r0" and {r["prediction"] for r in rows} <= {"0", "1", "2"}
    assert abs(sum(float(rows[5][f"proba_{c}"]) for c in range(3)) - 1) < 1e-4
    # parquet output, and stdout when -o is omitted
    assert run_cli(capsys, "predict", out, data, "-o", tmp_path / "p.parquet")[0] == 0
    code, stdout, _ = run_cli(capsys, "predict", out, data)
    assert code == 0 and stdout.splitlines()[0] == '"row_id","prediction"' and len(stdout.splitlines()) == 179


def test_predict_text_labels_roundtrip(tmp_path, capsys):
    data = sklearn_csv(tmp_path, "breast_cancer")
    out = tmp_path / "bc"
    assert run_cli(capsys, "train", data, "--target", "target", "--id", "row_id", *FAST, "--out", out)[0] == 0
    assert run_cli(capsys, "predict", out, data, "-o", tmp_path / "p.csv")[0] == 0
    labels = {r["prediction"] for r in csv.DictReader(open(tmp_path / "p.csv"))}
    assert labels <= {"malignant", "benign"} and labels


def test_evaluate_json_and_table(wine_run, capsys):
    out, data = wine_run
    code, stdout, err = run_cli(capsys, "evaluate", out, data, "--json")
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["rows"] == 178 and rep["metrics"]["accuracy"] > rep["baseline"]["accuracy"]
    code, stdout, _ = run_cli(capsys, "evaluate", out, data)
    assert code == 0 and "accuracy" in stdout and "baseline" in stdout


def test_report_resume_and_demo(wine_run, tmp_path, capsys, monkeypatch):
    out, _ = wine_run
    code, stdout, _ = run_cli(capsys, "report", out)
    assert code == 0 and "accuracy" in stdout
    code, _, err = run_cli(capsys, "resume", out)
    assert code == 2 and "resume" in err and "Traceback" not in err
    monkeypatch.chdir(tmp_path)
    code, stdout, err = run_cli(capsys, "demo", "--epochs", "2", "--quiet")
    assert code == 0, err
    assert (tmp_path / "runs" / "demo" / "run.json").is_file()
    assert run_cli(capsys, "demo", "--epochs", "2", "--quiet")[0] == 0  # the demo overwrites its run


# --------------------------------------------------------------------------------------------- config


def test_unknown_set_key_via_cli(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "x.csv", "--target", "y", "--set", "model.hiden=[3]")
    assert code == 2 and "Did you mean 'model.hidden'?" in err and "Traceback" not in err


# ------------------------------------------------------------------------------------------ bad input

SMALL = "id,x,z,y\n" + "".join(f"{i},{i * 0.5},{i % 3},{'yes' if i % 2 else 'no'}\n" for i in range(40))


@pytest.mark.parametrize("case", [
    "not_found", "empty", "header_only", "extension", "encoding", "ragged", "target_missing", "junk",
    "all_missing_target", "single_class", "split_sum", "split_count", "bad_epochs", "out_exists", "diverges"])
def test_train_bad_input(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    f = tmp_path / "d.csv"
    args = ["--target", "y"]
    expect: list[str]
    if case == "not_found":
        f, expect = tmp_path / "nope.csv", ["nope.csv: file not found"]
    elif case == "empty":
        f.write_text(""); expect = ["the file is empty"]  # noqa: E702
    elif case == "header_only":
        f.write_text("x,y\n"); expect = ["no data rows", "only a header"]  # noqa: E702
    elif case == "extension":
        f = tmp_path / "d.xlsx"; f.write_text(SMALL); expect = ["unsupported file extension '.xlsx'"]  # noqa: E702
    elif case == "encoding":
        f.write_bytes("x,y\ncaf\xe9,1\nbar,2\n".encode("latin-1")); expect = ["not valid utf-8", "--encoding latin-1"]  # noqa: E702,E501
    elif case == "ragged":
        f.write_text("x,z,y\n1,2,3\n4,5\n"); expect = ["line 3 has 2 fields but the header has 3"]  # noqa: E702
    elif case == "target_missing":
        f.write_text(SMALL); args = ["--target", "yy"]  # noqa: E702
        expect = ["target column 'yy' not found", "Did you mean 'y'?", "['id', 'x', 'z', 'y']"]
    elif case == "junk":
        f.write_text("x,y\n" + "".join(f"{i},{i % 2}\n" for i in range(30)) + "oops,1\n")
        expect = ["column 'x' is numeric", "data row 31", "'oops'"]
    elif case == "all_missing_target":
        f.write_text("x,y\n1,\n2,\n3,\n"); expect = ["target column 'y' has no values (all missing)"]  # noqa: E702
    elif case == "single_class":
        f.write_text("x,y\n1,a\n2,a\n3,a\n"); expect = ["single class ('a')"]  # noqa: E702
    elif case == "split_sum":
        f.write_text(SMALL); args += ["--split", "0.7,0.2,0.2"]; expect = ["add up to 1.1, not 1"]  # noqa: E702
    elif case == "split_count":
        f.write_text(SMALL); args += ["--split", "1"]; expect = ["pass 2 or 3 fractions"]  # noqa: E702
    elif case == "bad_epochs":
        f.write_text(SMALL); args += ["--set", "train.epochs=-1"]; expect = ["train.epochs: got -1"]  # noqa: E702
    elif case == "out_exists":
        f.write_text(SMALL)
        (tmp_path / "runs" / "keep").mkdir(parents=True)
        (tmp_path / "runs" / "keep" / "mine.txt").write_text("x")
        args += ["--out", "runs/keep"]
        expect = ["--out runs/keep: is not a fitloop run directory: it holds 1 file or folder that fitloop did "
                  "not write, e.g. mine.txt"]
    elif case == "diverges":
        f.write_text("x,y\n" + "".join(f"{i},{i * 3.5}\n" for i in range(60)))
        args += ["--lr", "1e30", "--optimizer", "sgd", "--epochs", "3"]
        expect = ["Training stopped", "the loss is"]
    code, stdout, err = run_cli(capsys, "train", f, *args)
    assert code == 2, (stdout, err)
    assert err.startswith("fitloop: error: ") and "Traceback" not in err
    for e in expect:
        assert e in err, (e, err)
    if case == "out_exists":
        assert (tmp_path / "runs" / "keep" / "mine.txt").read_text() == "x"
        assert not [p for p in (tmp_path / "runs").iterdir() if p.name != "keep"]
    elif case == "diverges":  # training had started: the run directory stays, marked failed, for inspection
        (run,) = (tmp_path / "runs").iterdir()
        info = json.loads((run / "run.json").read_text())
        assert info["status"] == "failed" and "NonFiniteError" in info["message"]
        assert not (run / "model").exists()
    else:
        assert no_run_dirs(tmp_path)


def test_all_missing_feature_column_is_dropped_with_note(tmp_path, capsys):
    f = tmp_path / "d.csv"
    f.write_text("x,empty,y\n" + "".join(f"{i},,{i % 2}\n" for i in range(40)))
    code, stdout, err = run_cli(capsys, "train", f, "--target", "y", "--epochs", "1", "--out", tmp_path / "r")
    assert code == 0, err
    assert "dropped column 'empty': all values missing" in stdout


def test_debug_shows_traceback(tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", tmp_path / "nope.csv", "--target", "y", "--debug")
    assert code == 2 and "Traceback" in err and "fitloop: error:" in err


def test_predict_and_evaluate_bad_input(wine_run, tmp_path, capsys):
    out, data = wine_run
    header, *rows = list(csv.reader(open(data)))
    # columns the model needs are missing: listed; an extra column: ignored with a note
    drop = {"alcohol", "hue"}
    keep = [i for i, h in enumerate(header) if h not in drop]
    write_rows(tmp_path / "missing.csv", [header[i] for i in keep], [[r[i] for i in keep] for r in rows[:5]])
    code, _, err = run_cli(capsys, "predict", out, tmp_path / "missing.csv", "-o", tmp_path / "p.csv")
    assert code == 2 and "lacks 2 column(s) the model needs: ['alcohol', 'hue']" in err
    assert not (tmp_path / "p.csv").exists()
    write_rows(tmp_path / "extra.csv", header + ["shoe_size"], [r + ["42"] for r in rows[:5]])
    code, _, err = run_cli(capsys, "predict", out, tmp_path / "extra.csv", "-o", tmp_path / "p.csv")
    assert code == 0 and "ignored 1 column(s) the model does not use: ['shoe_size']" in err
    # not a run directory
    for bad in (tmp_path, tmp_path / "nope", data):
        code, _, err = run_cli(capsys, "predict", bad, data, "-o", tmp_path / "q.csv")
        assert code == 2 and "is not a fitloop run directory" in err and "Traceback" not in err
        code, _, err = run_cli(capsys, "evaluate", bad, data)
        assert code == 2 and "is not a fitloop run directory" in err
    # evaluate: missing feature columns, and no target column
    code, _, err = run_cli(capsys, "evaluate", out, tmp_path / "missing.csv")
    assert code == 2 and "the model needs: ['alcohol', 'hue']" in err
    nolabel = [i for i, h in enumerate(header) if h != "target"]
    write_rows(tmp_path / "nolabel.csv", [header[i] for i in nolabel], [[r[i] for i in nolabel] for r in rows[:5]])
    code, _, err = run_cli(capsys, "evaluate", out, tmp_path / "nolabel.csv")
    assert code == 2 and "no target column 'target'" in err and "fitloop predict" in err
    code, _, err = run_cli(capsys, "predict", out, data, "-o", tmp_path / "x.xlsx")
    assert code == 2 and "unsupported output extension" in err


def test_help_has_examples(capsys):
    for cmd in ("train", "predict", "evaluate", "resume", "report", "demo"):
        code, stdout, _ = run_cli(capsys, cmd, "--help")
        assert code == 0 and "examples:" in stdout and f"fitloop {cmd}" in stdout
    code, stdout, _ = run_cli(capsys, "--version")
    assert code == 0 and stdout.startswith("fitloop 0.")


# ------------------------------------------------------------------------------------------ subprocess


def test_subprocess_train_predict_and_version(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "run"
    wine = ROOT / "fitloop" / "datasets" / "wine.csv"
    r = subprocess.run([sys.executable, "-m", "fitloop", "train", str(wine), "--target", "cultivar", "--epochs", "3",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "test metrics" in r.stdout and (out / "model" / "model.safetensors").is_file()
    r = subprocess.run([sys.executable, "-m", "fitloop", "--version"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip().startswith("fitloop ")
    r = subprocess.run([sys.executable, "-m", "fitloop", "train", str(tmp_path / "nope.csv"), "--target", "y"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("fitloop: error: ") and "Traceback" not in r.stderr


@pytest.mark.slow
def test_resume_after_sigterm_matches_uninterrupted_run(tmp_path):
    """`fitloop train` stopped by SIGTERM mid-run, then `fitloop resume`: the same weights as a run
    never interrupted."""
    import signal
    import time

    import torch
    from safetensors.torch import load_file

    wine = Path(fitloop.__file__).parent / "datasets" / "wine.csv"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    common = ["--target", "cultivar", "--epochs", "60", "--batch-size", "16", "--set",
              "train.checkpoint_every_steps=3", "--quiet"]
    ref = subprocess.run([sys.executable, "-m", "fitloop", "train", str(wine), "--out", str(tmp_path / "ref"),
                          *common], env=env, capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fitloop", "train", str(wine), "--out", str(run), *common],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list((run / "checkpoints").glob("ckpt-*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "fitloop resume" in err or "resume" in err
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    res = subprocess.run([sys.executable, "-m", "fitloop", "resume", str(run), "--quiet"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a = load_file(str(tmp_path / "ref" / "model" / "model.safetensors"))
    b = load_file(str(run / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((run / "metrics.json").read_text()) == json.loads((tmp_path / "ref" / "metrics.json").read_text())
    again = subprocess.run([sys.executable, "-m", "fitloop", "resume", str(run)], env=env, capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 2 and "already finished" in again.stderr


@pytest.mark.slow
def test_train_with_the_compiled_step(tmp_path, capsys):
    data = sklearn_csv(tmp_path, "wine")
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, "train", data, "--target", "target", "--epochs", "15", "--lr", "0.01",
                                "--batch-size", "64", "--compile", "step", "--out", out)
    assert code == 0, err
    assert 'compile = "step"' in (out / "config.toml").read_text()
    assert "compiled the training step for batches of 64 rows in" in stdout and "compiling the step" in stdout
    assert json.loads((out / "run.json").read_text())["timings"]["compile"] > 0
    assert json.loads((out / "metrics.json").read_text())["metrics"]["accuracy"] > 0.85
    code, _, err = run_cli(capsys, "train", data, "--target", "target", "--set", "train.compile=fast",
                           "--out", tmp_path / "bad")
    assert code == 2 and "compile: got 'fast'" in err and not (tmp_path / "bad").exists()
