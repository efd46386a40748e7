"""`fitloop export` / `fl.export`: ONNX through onnxruntime and torch.export through torch.export.load,
compared with `fitloop predict` on raw rows built by hand from the JSON layout; the failure paths
(mismatch, missing extra, existing file, data file gone) leave nothing behind.

ONNX export costs a few seconds, so each run is exported to ONNX once per module (fixtures).
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from tablefiles import write_rows

from fitloop.cli import main

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _tables(tmp: Path) -> tuple[Path, Path]:
    """A classification table (numeric with gaps, categorical with gaps, bool, text target) and a
    regression table whose target is large (around 60,000)."""
    rng = np.random.default_rng(0)
    cls_rows, reg_rows = [], []
    for i in range(300):
        a, b = rng.normal(1000, 300), rng.normal(0, 1)
        city = str(rng.choice(["x", "y", "z", "w"]))
        flag = bool(rng.random() < 0.5)
        score = (a - 1000) / 300 + b + (city == "y") - (city == "z")
        label = "high" if score > 0.7 else ("low" if score < -0.7 else "mid")
        cls_rows.append([f"r{i}", "" if i % 17 == 0 else round(a, 3), round(b, 4), "" if i % 23 == 0 else city,
                         str(flag).lower(), label])
        price = 50000 + 30 * a + 2000 * b + {"x": 0, "y": 5000, "z": -3000, "w": 100}[city] + 1000 * flag
        reg_rows.append([f"r{i}", "" if i % 13 == 0 else round(a, 3), round(b, 4), city, str(flag).lower(),
                         round(price + rng.normal(0, 500), 2)])
    header = ["id", "a", "b", "city", "flag"]
    return (write_rows(tmp / "cls.csv", [*header, "label"], cls_rows),
            write_rows(tmp / "reg.csv", [*header, "price"], reg_rows))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    cls_csv, reg_csv = _tables(tmp)
    out = {}
    for name, data, target in (("cls", cls_csv, "label"), ("reg", reg_csv, "price")):
        run = tmp / f"run-{name}"
        assert main(["train", str(data), "--target", target, "--id", "id", "--epochs", "4", "--quiet",
                     "--out", str(run)]) == 0
        out[name] = (run, data)
    return out


@pytest.fixture(scope="module")
def onnx_cls(runs, tmp_path_factory):
    """The classification run exported to ONNX once, through the CLI, with fd-level output captured."""
    import os
    import subprocess

    run, data = runs["cls"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run([sys.executable, "-m", "fitloop", "export", str(run), "--format", "onnx"],
                       capture_output=True, text=True, env=env, timeout=300)
    return run, data, r


def _raw_inputs(layout: dict, csv_path: Path) -> tuple[np.ndarray, list[str]]:
    """The `features` input built by hand from the documented layout (not with fitloop's helper)."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    cols = layout["input"]["columns"]
    x = np.empty((len(rows), len(cols)), dtype=np.float64)
    for i, row in enumerate(rows):
        for c in cols:
            v = row[c["name"]]
            if c["kind"] == "categorical":
                x[i, c["index"]] = np.nan if v == "" else c["codes"].get(v, -1)
            else:
                x[i, c["index"]] = np.nan if v == "" else float({"true": 1, "false": 0}.get(v, v))
    return x, [r["id"] for r in rows]


def _predict(run: Path, data: Path, tmp: Path, proba: bool) -> list[dict]:
    out = tmp / "preds.csv"
    assert main(["predict", str(run), str(data), "-o", str(out), *(["--proba"] if proba else []), "--quiet"]) == 0
    with open(out, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # the module's ONNX export (a subprocess) and the two trainings run here first
def test_onnx_export_matches_fitloop_predict_on_raw_rows(onnx_cls, tmp_path):
    run, data, r = onnx_cls
    assert r.returncode == 0, r.stderr
    assert "verified with onnxruntime" in r.stdout and "test rows of cls.csv" in r.stdout
    for chatter in ("[torch.onnx]", "torchvision", "Warning", "W1"):  # torch's export output stays hidden
        assert chatter not in r.stdout + r.stderr
    model, layout_file = run / "export" / "model.onnx", run / "export" / "model.onnx.json"
    layout = json.loads(layout_file.read_text())
    assert layout["input"]["dtype"] == "float64" and [c["name"] for c in layout["input"]["columns"]] == \
        ["a", "b", "city", "flag"]
    assert layout["input"]["columns"][2]["codes"] == {"w": 0, "x": 1, "y": 2, "z": 3}
    assert layout["classes"] == ["high", "low", "mid"]
    assert layout["verification"]["max_abs_diff"] <= 1e-5 and layout["verification"]["rows"] > 64
    assert not [p for p in model.parent.iterdir() if p.name.startswith(".")]  # no temporary file left

    # every row of the file (gaps in `a` and `city` included), plus an unseen city, through onnxruntime
    x, ids = _raw_inputs(layout, data)
    x[5, 2] = -1.0  # an unseen category code: the <unknown> slot, as `fitloop predict` does for new text
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["features"]
    label, proba = sess.run(None, {"features": x})
    edited = tmp_path / "edited.csv"
    with open(data, newline="") as f:
        rows = list(csv.reader(f))
    rows[1 + 5][3] = "atlantis"
    write_rows(edited, rows[0], rows[1:])
    ref = _predict(run, edited, tmp_path, proba=True)
    assert [p["id"] for p in ref] == ids
    assert [layout["classes"][i] for i in label] == [p["prediction"] for p in ref]
    want = np.array([[float(p[f"proba_{c}"]) for c in layout["classes"]] for p in ref])
    assert np.abs(proba - want).max() <= 1e-5
    one_label, _ = sess.run(None, {"features": x[:1]})  # batch size 1: the batch dimension is dynamic
    assert one_label.tolist() == label[:1].tolist()


def test_torch_export_regression_in_target_units(runs, tmp_path, capsys):
    import torch

    run, data = runs["reg"]
    out = tmp_path / "price.pt2"
    assert main(["export", str(run), "--format", "torch-export", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "verified with torch.export.load" in stdout and "in 'price' units" in stdout
    layout = json.loads(Path(f"{out}.json").read_text())
    assert layout["outputs"][0]["name"] == "prediction" and layout["classes"] is None
    x, _ = _raw_inputs(layout, data)
    prog = torch.export.load(str(out)).module()
    with torch.inference_mode():
        pred = prog(torch.from_numpy(x)).numpy()
        pred1 = prog(torch.from_numpy(x[:1])).numpy()
    want = np.array([float(p["prediction"]) for p in _predict(run, data, tmp_path, proba=False)])
    std = json.loads((run / "model" / "fitloop.json").read_text())["table"]["target_scaling"]["std"]
    assert std > 5000 and np.abs(pred - want).max() / std <= 1e-5  # in target standard deviations
    assert pred1.tolist() == pred[:1].tolist()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's own, let through by --debug
def test_mismatch_exits_1_and_leaves_no_file(onnx_cls, monkeypatch, capfd):
    import torch

    from fitloop.integrations import export as ex

    run, _, _ = onnx_cls
    real = ex._export_file

    def perturbed(graph, fmt, example, path):  # an exporter bug: the file's weights drift by 1e-3
        # every weight, unevenly (a run that kept its linear start has a zero MLP output layer, and the
        # same shift of every class's logit leaves the probabilities as they were)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in graph.model.parameters():
                p.add_(1e-3 * torch.randn(p.shape, generator=gen))
        real(graph, fmt, example, path)

    monkeypatch.setattr(ex, "_export_file", perturbed)
    before = sorted(p.name for p in (run / "export").iterdir())
    code = main(["export", str(run), "--format", "onnx", "--out", str(run / "export" / "bad.onnx"), "--debug"])
    out, err = capfd.readouterr()
    assert code == 1
    assert "[torch.onnx]" in out + err  # --debug lets torch's export output through
    assert "verification failed" in err and "tolerance 1e-05" in err and "nothing was written" in err
    assert sorted(p.name for p in (run / "export").iterdir()) == before  # no bad.onnx, no .json, no temp file


def test_missing_extra_exits_2_with_the_install_command(runs, monkeypatch, capsys):
    run, _ = runs["cls"]
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    assert main(["export", str(run), "--out", str(run / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxruntime" in err and "pip install 'fitloop[export]'" in err and "Traceback" not in err
    assert not (run / "x.onnx").exists()


def test_refuses_to_overwrite_and_bad_paths(onnx_cls, capsys):
    run, _, _ = onnx_cls
    assert main(["export", str(run)]) == 2  # RUN_DIR/export/model.onnx is there from the fixture
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["export", str(run), "--format", "torch-export", "--out", str(run / "m.onnx")]) == 2
    assert "use a path ending in .pt2" in capsys.readouterr().err
    assert main(["export", str(run.parent / "not-a-run")]) == 2
    assert "is not a fitloop run directory" in capsys.readouterr().err


def test_a_run_trained_in_memory_verifies_on_generated_rows_and_says_why(runs, tmp_path):
    import pyarrow.csv as pcsv

    import fitloop as fl

    _, data = runs["reg"]
    trained = fl.tabular.train(pcsv.read_csv(data), target="price", id="id", epochs=2, quiet=True,
                               out=tmp_path / "run")
    res = fl.export(trained.run_dir, format="torch-export")
    assert res.rows_checked == 64 and res.source == "64 generated rows" and res.max_abs_diff <= 1e-5
    assert res.notes[0] == ("the run was trained on a table in memory, so its held-out rows cannot be read again; "
                            "verified on 64 rows generated from the training statistics instead")


def test_data_file_gone_verifies_on_generated_rows(runs, tmp_path):
    import fitloop as fl

    run, data = runs["reg"]
    moved_run, moved_data = tmp_path / "run", tmp_path / "data.csv"
    shutil.copytree(run, moved_run)
    shutil.copy(data, moved_data)
    toml = moved_run / "config.toml"
    toml.write_text(toml.read_text().replace(str(data.resolve()), str(moved_data)))
    res = fl.export(moved_run, format="torch-export")
    n_test = len(json.loads((run / "splits.json").read_text())["test"])
    assert res.source.startswith(f"{n_test} test rows of data.csv") and res.rows_checked == n_test + 64
    with open(moved_data, newline="") as f:  # the file changed since training: a column is gone
        rows = [r[:3] + r[4:] for r in csv.reader(f)]
    write_rows(moved_data, rows[0], rows[1:])
    res = fl.export(moved_run, format="torch-export", overwrite=True)
    assert res.rows_checked == 64 and "no longer fits the run" in res.notes[0] and "'city'" in res.notes[0]
    moved_data.unlink()
    res = fl.export(moved_run, format="torch-export", overwrite=True)
    assert res.rows_checked == 64 and res.source == "64 generated rows"
    assert res.notes and "is gone" in res.notes[0] and res.max_abs_diff <= 1e-5
