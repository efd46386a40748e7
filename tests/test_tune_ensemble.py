"""`fitloop.tabular.ensemble` (and `fitloop.tune.ensemble`'s greedy selection): ensembles of finished runs,
saved as a run directory that `fitloop predict`, `serve` and `export` read like any run.

Three tiny runs per task (classification with a categorical column and gaps; regression with a large target)
are trained once for the module with the same data, split seed and preprocessing but different weight seeds.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest
import torch
from serve_support import served  # noqa: E402  (tests/serve_support.py)
from tablefiles import write_rows

import fitloop as fl
from fitloop.cli import main
from fitloop.models import Ensemble, EnsembleSpec, MLPSpec
from fitloop.outputs import OutputPathError
from fitloop.tabular import NotARunError, load_run
from fitloop.tabular.ensemble import EnsembleError, build_ensemble
from fitloop.tune.ensemble import greedy_selection

MEMBERS = 3


def _tables(tmp: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    cls_rows, reg_rows = [], []
    for i in range(240):
        a, b = rng.normal(0, 1), rng.normal(5, 2)
        city = str(rng.choice(["x", "y", "z"]))
        score = a + (b - 5) / 2 + (city == "y") + rng.normal(0, 0.7)
        label = "high" if score > 0.6 else ("low" if score < -0.6 else "mid")
        cls_rows.append([f"r{i}", "" if i % 17 == 0 else round(a, 4), round(b, 4), city, label])
        reg_rows.append([f"r{i}", "" if i % 17 == 0 else round(a, 4), round(b, 4), city,
                         round(50000 + 3000 * score, 2)])
    header = ["id", "a", "b", "city"]
    return (write_rows(tmp / "cls.csv", [*header, "label"], cls_rows),
            write_rows(tmp / "reg.csv", [*header, "price"], reg_rows))


def _train(data: Path, target: str, out: Path, seed: int, *extra: str) -> Path:
    # the same split (data.seed) for every member, different initial weights (the training seed)
    assert main(["train", str(data), "--target", target, "--id", "id", "--epochs", "4", "--hidden", "16",
                 "--seed", str(seed), "--set", "data.seed=0", "--set", "model.linear_init=false",
                 *extra, "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ensemble")
    cls_csv, reg_csv = _tables(tmp)
    out = {}
    # classification: plain MLP runs (a mix of differently seeded MLPs); regression: TabM runs, the default
    for name, data, target, kind in (("cls", cls_csv, "label", "mlp"), ("reg", reg_csv, "price", "tabm")):
        members = [_train(data, target, tmp / f"{name}-{k}", k + 1, "--model", kind) for k in range(MEMBERS)]
        ensemble = build_ensemble(members, tmp / f"{name}-ensemble")
        out[name] = (data, members, ensemble)
    return out


def _val_rows_csv(data: Path, run: Path, to: Path) -> Path:
    """The run's validation rows as a CSV of their own (the rows' indices are in splits.json)."""
    split = json.loads((run / "splits.json").read_text())
    table = pcsv.read_csv(data, convert_options=pcsv.ConvertOptions(strings_can_be_null=True))
    pcsv.write_csv(table.take(pa.array(split["val"])), to)
    return to


def _predict(run: Path, data: Path, out: Path, *extra: str) -> pa.Table:
    assert main(["predict", str(run), str(data), "-o", str(out), "--quiet", *extra]) == 0
    return pcsv.read_csv(out)


def _probabilities(table: pa.Table, classes: list[str]) -> np.ndarray:
    return np.column_stack([table.column(f"proba_{c}").to_numpy() for c in classes]).astype(np.float64)


# ------------------------------------------------------------------------------------------ selection


def test_greedy_selection_picks_with_replacement_and_keeps_the_best_round():
    y = torch.zeros(4, dtype=torch.float64)
    candidates = [torch.full((4,), 1.0), torch.full((4,), -1.0), torch.full((4,), 3.0)]

    def mse(v):
        return float(((v - y) ** 2).mean())

    chosen = greedy_selection(candidates, mse, rounds=4)
    assert chosen.counts == [1, 1, 0]  # +1 first (tie with -1: the earlier), then -1: the mean is exact
    assert chosen.loss == 0.0
    assert len(chosen.history) == 4 and chosen.history[:2] == [1.0, 0.0]  # rounds 3-4 only got worse
    assert greedy_selection(candidates[2:], mse, rounds=3).counts == [1]  # re-picking one run changes nothing
    with pytest.raises(ValueError, match="needs candidates and rounds >= 1"):
        greedy_selection([], mse)


def test_spec_round_trips_and_refuses_bad_members():
    spec = EnsembleSpec([MLPSpec(3, [4], 2), MLPSpec(3, [], 2)], weights=[3, 1])
    assert spec.weights == [0.75, 0.25] and spec.in_features == 3 and spec.out_features == 2
    again = EnsembleSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec
    model = Ensemble(spec)
    x = torch.randn(5, 3)
    probs = 0.75 * torch.softmax(model.members[0](x), -1) + 0.25 * torch.softmax(model.members[1](x), -1)
    assert torch.allclose(torch.softmax(model(x), -1), probs, atol=1e-6)  # log of the mean: softmax gives it back
    assert set(model.state_dict()) == {"members.0.0.weight", "members.0.0.bias", "members.0.2.weight",
                                       "members.0.2.bias", "members.1.0.weight", "members.1.0.bias"}
    with pytest.raises(ValueError, match="one weight per member"):
        EnsembleSpec([MLPSpec(3, [4], 2)], weights=[1, 1])
    with pytest.raises(ValueError, match="finite and positive"):
        EnsembleSpec([MLPSpec(3, [4], 2)], weights=[0])
    with pytest.raises(ValueError, match=r"\(in_features, out_features\) differ"):
        EnsembleSpec([MLPSpec(3, [4], 2), MLPSpec(4, [4], 2)], weights=[1, 1])
    with pytest.raises(ValueError, match="average='median'"):
        EnsembleSpec([MLPSpec(3, [4], 2)], weights=[1], average="median")


# ------------------------------------------------------------------------------------------ the bundle


def test_classification_ensemble_is_no_worse_than_its_best_member_through_the_cli(tables, tmp_path):
    data, members, ensemble = tables["cls"]
    info = json.loads((ensemble / "run.json").read_text())
    assert info["format"] == "fitloop-run" and info["status"] == "finished" and info["kind"] == "ensemble"
    chosen = info["ensemble"]["members"]
    assert len(chosen) >= 2  # these runs are close enough for a mix to beat the best alone
    assert abs(sum(m["weight"] for m in chosen) - 1) < 1e-12
    classes = load_run(ensemble).info["classes"]
    val = _val_rows_csv(data, members[0], tmp_path / "val.csv")
    y = np.array([classes.index(v) for v in pcsv.read_csv(val).column("label").to_pylist()])

    def log_loss(p):
        return float(-np.mean(np.log(p[np.arange(len(y)), y])))

    member_probs = {str(m.resolve()): _probabilities(_predict(m, val, tmp_path / f"{m.name}.csv", "--proba"), classes)
                    for m in members}
    ens = _probabilities(_predict(ensemble, val, tmp_path / "ens.csv", "--proba"), classes)
    best = min(log_loss(p) for p in member_probs.values())
    assert log_loss(ens) <= best + 1e-6
    assert abs(log_loss(ens) - info["ensemble"]["val_loss"]) < 1e-5
    assert abs(best - info["ensemble"]["best_member_val_loss"]) < 1e-5
    mixed = sum(m["weight"] * member_probs[m["run"]] for m in chosen)
    np.testing.assert_allclose(ens, mixed, atol=2e-6)  # the weighted mean of the members' probabilities

    model = fl.load(ensemble / "model")
    assert isinstance(model, Ensemble) and model.fitloop_meta["spec"]["kind"] == "ensemble"
    metrics = json.loads((ensemble / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["metrics"]["loss"] < metrics["baseline"]["loss"]


def test_regression_ensemble_averages_in_target_units(tables, tmp_path):
    data, members, ensemble = tables["reg"]
    info = json.loads((ensemble / "run.json").read_text())
    val = _val_rows_csv(data, members[0], tmp_path / "val.csv")
    y = pcsv.read_csv(val).column("price").to_numpy()
    preds = {str(m.resolve()): _predict(m, val, tmp_path / f"{m.name}.csv").column("prediction").to_numpy()
             for m in members}
    ens = _predict(ensemble, val, tmp_path / "ens.csv").column("prediction").to_numpy()

    def mse(p):
        return float(np.mean((p - y) ** 2))

    assert mse(ens) <= min(mse(p) for p in preds.values()) * (1 + 1e-6)
    assert abs(mse(ens) / info["ensemble"]["val_loss"] - 1) < 1e-4  # MSE in the target's units (around 1e6)
    mixed = sum(m["weight"] * preds[m["run"]] for m in info["ensemble"]["members"])
    np.testing.assert_allclose(ens, mixed, rtol=1e-6)
    assert fl.load(ensemble / "model").spec.average == "outputs"


def test_max_members_and_rounds_bound_the_bundle(tables, tmp_path):
    _, members, _ = tables["cls"]
    one = build_ensemble(members, tmp_path / "one", max_members=1)
    info = json.loads((one / "run.json").read_text())["ensemble"]
    assert len(info["members"]) == 1 and len(info["candidates"]) == 1
    assert info["val_loss"] == info["best_member_val_loss"]  # only the best run: itself
    short = build_ensemble([*members, members[0]], tmp_path / "short", rounds=1)  # a run named twice counts once
    info = json.loads((short / "run.json").read_text())["ensemble"]
    assert len(info["candidates"]) == MEMBERS and info["rounds"] == 1 and len(info["members"]) == 1


def test_refuses_runs_that_do_not_share_their_preprocessing(tables, tmp_path):
    data, members, _ = tables["cls"]
    other_split = _train(data, "label", tmp_path / "other", 1, "--set", "data.seed=7")
    with pytest.raises(EnsembleError, match="do not share their preprocessing .*the split"):
        build_ensemble([*members, other_split], tmp_path / "ens")
    assert not (tmp_path / "ens").exists()
    no_val = _train(data, "label", tmp_path / "noval", 1, "--split", "0.8,0.2")
    with pytest.raises(EnsembleError, match="hold out no validation rows"):
        build_ensemble([no_val], tmp_path / "ens")
    with pytest.raises(EnsembleError, match="holds the member run"):
        build_ensemble(members, members[0].parent, overwrite=True)
    with pytest.raises(NotARunError):
        build_ensemble([*members, tmp_path], tmp_path / "ens")
    with pytest.raises(EnsembleError, match="max_members=0"):
        build_ensemble(members, tmp_path / "ens", max_members=0)
    with pytest.raises(OutputPathError, match="--overwrite"):
        build_ensemble(members, tables["cls"][2])  # a run is there already


def test_an_ensemble_is_not_a_member(tables, tmp_path):
    _, members, ensemble = tables["cls"]
    with pytest.raises(EnsembleError, match="not an MLP or TabM run"):
        build_ensemble([*members, ensemble], tmp_path / "nested")


# ------------------------------------------------------------------------------------------ export, serve


@pytest.mark.slow  # each export is verified on the test rows (ONNX costs about 10 s)
@pytest.mark.parametrize("fmt, tasks", [("onnx", ("cls",)), ("torch-export", ("cls", "reg"))])
def test_export_verifies_the_ensemble(tables, tmp_path, capsys, fmt, tasks):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
        pytest.importorskip("onnxscript")
    for name in tasks:
        _, _, ensemble = tables[name]
        out = tmp_path / f"{name}{'.onnx' if fmt == 'onnx' else '.pt2'}"
        assert main(["export", str(ensemble), "--format", fmt, "--out", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "verified with" in printed and "test rows of" in printed, printed
        assert out.is_file() and json.loads(Path(f"{out}.json").read_text())["verification"]["rows"] > 0


def test_serve_answers_predict_like_the_cli(tables, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    pytest.importorskip("httpx")
    from fitloop.integrations.serve import create_app

    data, _, ensemble = tables["cls"]
    cli = _predict(ensemble, data, tmp_path / "cli.csv", "--proba")
    with served(create_app(ensemble, log=io.StringIO())) as client:
        r = client.post("/predict?proba=true", json=pcsv.read_csv(data).drop(["label"]).to_pylist())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["predictions"] == cli.column("prediction").to_pylist()
    want = np.column_stack([cli.column(f"proba_{c}").to_numpy() for c in body["classes"]])
    np.testing.assert_array_equal(np.array(body["probabilities"], dtype=np.float32), want.astype(np.float32))
