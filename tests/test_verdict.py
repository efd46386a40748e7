"""Verdicts (fitloop/diagnose/verdict.py, callbacks/verdict.py): each produced on purpose by a real small
training run, the rules' thresholds on hand-made histories, printing and run.json."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop.diagnose import verdict as V


def _reg(n, d=3, seed=0, noise=0.1):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    return X, X @ torch.linspace(-1, 1, d) + noise * torch.randn(n, generator=g)


def _fit(model, train, val=None, **kw):
    settings = dict(loss="mse", optimizer="adam", lr=0.05, epochs=30, batch_size=32, quiet=True, seed=0)
    settings.update(kw)
    t = fl.Trainer(model, settings.pop("loss"), settings.pop("optimizer"), **settings)
    t.fit(train, val)
    return t


def _verdict(t):
    return next(cb for cb in t.callbacks if isinstance(cb, fl.VerdictReporter)).verdict


# ------------------------------------------------------------------------------- real runs, on purpose


def test_healthy_linear_regression():
    t = _fit(nn.Linear(3, 1), _reg(128), _reg(64, seed=1))
    v = _verdict(t)
    assert v.kind == "healthy", v
    assert v.not_judged == []
    assert v.facts["baseline_loss"] == pytest.approx(float(((_reg(128)[1] - _reg(128)[1].mean()) ** 2).mean()))
    assert v.facts["final_val_loss"] < 0.05 and v.suggestion.startswith("Nothing to fix")


def _overfit(**kw):
    """A 128x128 MLP on 16 rows of noise: it memorises them while the validation loss climbs."""
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(16, 10, generator=g), torch.randn(16, generator=g))
    val = (torch.randn(64, 10, generator=g), torch.randn(64, generator=g))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 1))
    return _fit(model, train, val, lr=0.01, epochs=60, batch_size=None, **kw)


def test_overfitting_big_model_on_16_noisy_rows():
    t = _overfit()
    v = _verdict(t)
    assert v.kind == "overfitting", v
    k = v.facts["best_epoch"]
    assert k < 60 and v.facts["final_loss"] < t.history[k - 1]["loss"]
    assert v.facts["final_val_loss"] > 1.1 * v.facts["min_val_loss"]
    assert f"reached its minimum {v.facts['min_val_loss']:.4g} at epoch {k}" in v.reason
    assert f"The model keeps the weights of epoch 60; the best were epoch {k}'s." in v.suggestion
    for word in ("early stopping", "weight_decay", "dropout", "input_noise", "more data", "smaller model"):
        assert word in v.suggestion


def test_overfitting_that_early_stopping_handled_is_healthy_and_says_what_happened():
    """Issue 24: the validation loss rose after epoch k and early stopping kept epoch k: the run already dealt
    with it, so the headline is no problem (it was "overfitting" with advice to regularise)."""
    stopper = fl.EarlyStopping(patience=15)
    t = _overfit(callbacks=[stopper])
    v = _verdict(t)
    assert v.kind == "healthy" and not v.problem, v
    k = stopper.best_epoch
    assert v.facts["kept_epoch"] == k == v.facts["best_epoch"]
    assert v.reason.startswith(f"the validation loss rose after epoch {k} (")
    assert f"; early stopping kept epoch {k}." in v.reason
    assert v.suggestion.startswith("Nothing to fix")


def _xor(model, epochs=20):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 2, generator=g)
    y = ((X[:, 0] * X[:, 1]) > 0).long()  # no linear boundary: a linear model stays at the baseline
    return _fit(model, (X[:150], y[:150]), (X[150:], y[150:]), loss="cross_entropy", epochs=epochs, batch_size=50), y


def test_a_plateau_at_the_baseline_names_both_causes_and_no_bigger_model():
    """Issue 24: without evidence that capacity would help, a high plateau is not "underfitting" and the
    verdict does not tell the user to train a bigger model (on data with no more information it would not help)."""
    t, y = _xor(nn.Linear(2, 2))
    v = _verdict(t)
    assert v.kind == "plateau" and not v.problem, v
    prior = torch.bincount(y[:150]).double() / 150
    assert v.facts["baseline_loss"] == pytest.approx(float(-(prior * prior.log()).sum()), rel=1e-5)
    assert v.facts["final_loss"] >= 0.9 * v.facts["baseline_loss"]
    for words in ("too simple", "hold no more information", "fitloop size-search"):
        assert words in v.reason + v.suggestion
    assert "hidden=[256" not in v.suggestion and "not a bigger model" in v.suggestion


def test_underfitting_needs_a_probe_that_did_better():
    t, _ = _xor(nn.Linear(2, 2))
    torch.manual_seed(0)
    probe = V.capacity_probe(t, nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2)), epochs=40)
    v = V.verdict_of(t, probe=probe)
    assert v.kind == "underfitting" and v.problem, v
    assert "the model is too simple for the data" in v.reason and v.facts["probe"] == probe
    assert probe["model"] == "Sequential, 162 parameters" and probe["epochs"] == 40
    # a probe that did no better: the data are the limit, and a bigger model is not advised
    same = V.verdict_of(t, probe={**probe, "val_loss": v.facts["kept_val_loss"]})
    assert same.kind == "plateau" and "A bigger model will not help" in same.suggestion


def test_diverged_loss_rises_sharply_names_lr_over_10():
    t = _fit(nn.Linear(3, 1), _reg(128), _reg(64, seed=1), optimizer="sgd", lr=1.2, epochs=8, batch_size=None)
    v = _verdict(t)
    assert v.kind == "diverged", v
    assert all(math.isfinite(h["loss"]) for h in t.history)  # finite, but rising: the ratio rule
    assert v.facts["final_loss"] > 3 * v.facts["min_loss"]
    assert v.suggestion.startswith("Lower the learning rate tenfold: lr=0.12 (this run used 1.2)")


def test_diverged_nonfinite_is_saved_in_run_json(tmp_path, capsys):
    t = fl.Trainer(nn.Linear(3, 1), "mse", "sgd", lr=1e3, epochs=20, batch_size=None, seed=0,
                   run_dir=tmp_path / "run", print_every=100)
    with pytest.raises(fl.NonFiniteError):
        t.fit(_reg(128), _reg(64, seed=1))
    out = capsys.readouterr().out
    assert "Verdict: diverged. Training stopped on a NaN/inf value" in out
    assert "Suggestion: Lower the learning rate tenfold: lr=100 (this run used 1e+03)" in out
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["status"] == "failed" and info["verdict"]["kind"] == "diverged"
    assert info["verdict"]["facts"]["lr"] == 1000.0


def test_a_run_that_fails_in_its_first_epoch_does_not_claim_it_had_no_validation_data(tmp_path, capsys):
    from fitloop.report.data import from_run_dir

    X, y = _reg(128)
    X = X.clone()
    X[0, 0] = float("nan")  # the first step's loss is NaN: no epoch finishes
    t = fl.Trainer(nn.Linear(3, 1), "mse", "sgd", lr=0.1, epochs=5, batch_size=None, seed=0,
                   run_dir=tmp_path / "run")
    with pytest.raises(fl.NonFiniteError):
        t.fit((X, y), _reg(64, seed=1))
    assert t.history == [] and "no validation data" not in capsys.readouterr().out
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["verdict"]["kind"] == "diverged" and info["verdict"]["not_judged"] == []
    absent = from_run_dir(tmp_path / "run").absent
    assert "the history is empty: no epoch finished, so no curves" in absent
    assert not any("no validation data" in a for a in absent)


def test_no_validation_says_what_it_could_not_judge(tmp_path):
    t = _fit(nn.Linear(3, 1), _reg(128), run_dir=tmp_path / "run")
    v = _verdict(t)
    assert v.kind == "healthy"
    assert len(v.not_judged) == 1 and v.not_judged[0].startswith("overfitting and whether the validation loss")
    saved = json.loads((tmp_path / "run" / "run.json").read_text())["verdict"]
    assert saved == json.loads(json.dumps(v.to_dict())) and V.Verdict.from_dict(saved).kind == "healthy"


def test_printing_respects_quiet_and_the_main_process(capsys, monkeypatch):
    _fit(nn.Linear(3, 1), _reg(64), epochs=3)
    assert capsys.readouterr().out == ""  # quiet=True: nothing
    _fit(nn.Linear(3, 1), _reg(64), epochs=3, quiet=False, print_every=100)
    out = capsys.readouterr().out
    assert "\nVerdict: " in out and "\nSuggestion: " in out
    monkeypatch.setenv("RANK", "1")  # not the main process: the epoch lines are not ours, the verdict is silent
    t = _fit(nn.Linear(3, 1), _reg(64), epochs=3, quiet=False, print_every=100)
    assert "Verdict" not in capsys.readouterr().out and _verdict(t) is not None


# ------------------------------------------------------------------------------ the rules, by hand


def _h(losses, vals=None, lr=0.1):
    return [{"epoch": i + 1, "loss": loss, **({"val_loss": vals[i]} if vals else {}), "lr": lr}
            for i, loss in enumerate(losses)]


def test_rule_thresholds_on_hand_made_histories():
    # diverged: 3x the lowest loss and more than 10% of the fall before it
    assert V.judge(_h([1.0, 0.3, 0.95])).kind == "diverged"
    assert V.judge(_h([100.0, 0.01, 0.5])).kind != "diverged"  # 50x, but 0.5% of the fall: not divergence
    assert V.judge(_h([1.0, 0.3, 0.89]), baseline_loss=2.0).kind != "diverged"  # 2.97x
    assert V.judge(_h([1.0, float("nan")])).reason == "the training loss is nan at epoch 2."
    # overfitting: val 10% above its minimum while train kept falling
    assert V.judge(_h([1.0, 0.5, 0.2], [1.0, 0.5, 0.56]), baseline_loss=1.0).kind == "overfitting"
    # the old gap rule is gone (issue 24): a rise within the noise (10% of the minimum, no standard error) is healthy
    assert V.judge(_h([1.0, 0.5, 0.2], [1.0, 0.5, 0.54]), baseline_loss=1.0).kind == "healthy"
    assert V.judge(_h([1.0, 0.5, 0.4], [1.0, 0.5, 0.54]), baseline_loss=1.0).kind == "healthy"
    # underfitting: at least 90% of the baseline, or a plateau at >= 50% of it
    assert V.judge(_h([1.0, 0.95, 0.9]), baseline_loss=1.0).kind == "underfitting"
    assert V.judge(_h([1.0, 0.95, 0.89]), baseline_loss=1.0).kind == "healthy"
    plateau = [1.0, 0.8, 0.6, 0.6, 0.6, 0.6]
    assert V.judge(_h(plateau), baseline_loss=1.0).reason.startswith("the training loss plateaued high")
    assert V.judge(_h(plateau), baseline_loss=1.0).kind == "plateau"  # no evidence that capacity would help
    assert V.judge(_h(plateau), baseline_loss=1.3).kind == "healthy"  # 46% of the baseline: not high
    # inconclusive, and not judged without a baseline
    one = V.judge(_h([1.0]), baseline_loss=2.0)
    assert one.kind == "inconclusive" and one.reason == "one epoch is too few to see a trend."
    nob = V.judge(_h([1.0, 0.5], [1.0, 0.5]))
    assert nob.kind == "healthy" and nob.not_judged[0].startswith("underfitting: there is no trivial baseline")
    assert V.judge([]).kind == "inconclusive"


def test_baseline_loss_matches_the_constant_models_loss():
    y = torch.tensor([0, 0, 0, 1])
    ce = V.baseline_loss(nn.functional.cross_entropy, y, "multiclass")
    assert ce == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), rel=1e-6)
    yb = torch.tensor([1.0, 0.0, 0.0, 0.0])
    assert V.baseline_loss(nn.functional.binary_cross_entropy_with_logits, yb, "binary") == pytest.approx(ce, rel=1e-5)
    yr = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert V.baseline_loss(nn.functional.mse_loss, yr, "regression") == pytest.approx(3.5)
    assert V.baseline_loss(lambda out, y: out.sum() / 0 * float("nan"), yr, "regression") is None
    assert V.baseline_loss(nn.functional.mse_loss, None, "regression") is None


def test_a_fit_with_its_verdict_imports_no_plotting_library():
    code = ("import sys, torch, fitloop as fl; fl.Trainer(torch.nn.Linear(2, 1), epochs=2, quiet=True).fit("
            "(torch.randn(8, 2), torch.randn(8))); print([m for m in ('matplotlib', 'sklearn', 'torchmetrics') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}).stdout
    assert out.strip() == "[]"


def test_overfitting_when_early_stopping_kept_the_initial_model_or_an_earlier_epoch():
    hist = _h([1.0, 0.5, 0.2, 0.1], [1.0, 0.5, 0.7, 0.9])  # val minimum at epoch 2, then it rose
    kept0 = V.judge(hist, baseline_loss=1.0, kept_epoch=0)  # early stopping kept the start (epoch 0)
    assert kept0.kind == "overfitting" and kept0.facts["kept_epoch"] == 0 and kept0.facts["restored"]
    assert kept0.suggestion.startswith("Early stopping kept its initial weights (epoch 0, before any training), "
                                       "but epoch 2 was clearly better")
    assert "Use early stopping" not in kept0.suggestion
    kept1 = V.judge(hist, baseline_loss=1.0, kept_epoch=1)
    assert kept1.suggestion.startswith("Early stopping kept the weights of epoch 1, but")
    none = V.judge(hist, baseline_loss=1.0)  # no early stopping: the last epoch's weights
    assert none.suggestion.startswith("The model keeps the weights of epoch 4; the best were epoch 2's. Use early")
    # the starting fit kept, within the noise of the best epoch: one line, no problem
    start = V.judge(_h([1.0, 0.5, 0.2, 0.1], [0.52, 0.5, 0.7, 0.9]), baseline_loss=1.0, kept_epoch=0,
                    kept_val_loss=0.51, val_se=0.05)
    assert start.kind == "healthy" and start.reason.startswith("kept the model the run started from (epoch 0; ")
    assert start.suggestion == "Nothing to fix." and "\n" not in start.reason  # one line, no problem


def test_verdict_of_a_trainer_whose_early_stopping_kept_the_initial_weights():
    torch.manual_seed(0)
    X, y = torch.randn(64, 3), torch.randn(64, 1)
    stopper = fl.EarlyStopping(patience=50)
    t = fl.Trainer(nn.Linear(3, 1), epochs=3, quiet=True, callbacks=[stopper])
    stopper.start_from(-1.0, t.model)  # an unbeatable start: every epoch is worse
    t.fit((X, y), (X[:16], y[:16]))
    assert stopper.best_epoch == 0 and V.verdict_of(t).facts["kept_epoch"] == 0
