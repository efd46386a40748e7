"""Where the CLI's model starts and when it stays there: the linear path at the ridge fit (penalty by GCV)
or the logistic fit, and early stopping's "epoch 0" (the initial model, kept unless an epoch beats it by
one standard error). Runs written before these settings resume as they were."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from tablefiles import write_rows

import fitloop as fl
from fitloop.models import RIDGE_GRID, fit_linear_path, fit_logistic_path
from fitloop.tabular.config import resolve_run_config
from fitloop.tabular.pipeline import resume_run, train_table


def _skip(d: int, k: int = 1) -> fl.models.SkipMLP:
    torch.manual_seed(0)
    model = fl.build_mlp(fl.MLPSpec(d, hidden=[8], out_features=k, skip=True))
    assert isinstance(model, fl.models.SkipMLP)
    return model


# ------------------------------------------------------------------------------------ the ridge start


def test_gcv_picks_a_large_penalty_on_noise_and_a_small_one_on_clean_linear_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 6, generator=g)
    noise = torch.randn(200, 1, generator=g)
    clean = X @ torch.arange(1.0, 7.0)[:, None] + 0.01 * torch.randn(200, 1, generator=g)
    m = _skip(6)
    rel_noise = fit_linear_path(m, X, noise, ridge=None)
    assert rel_noise >= 1.0 and rel_noise in RIDGE_GRID
    # shrunk towards the mean: the linear path's weights are small
    assert float(m.skip.weight.detach().abs().max()) < 0.1
    rel_clean = fit_linear_path(m, X, clean, ridge=None)
    assert rel_clean <= 1e-3
    # the model is exactly the linear fit: the MLP's output layer is zero, its bias the intercept
    assert torch.equal(m.mlp[-1].weight, torch.zeros_like(m.mlp[-1].weight))
    assert torch.allclose(m(X), X @ m.skip.weight.T + m.mlp[-1].bias)
    # a fixed penalty is used as given (the previous default, 1e-2)
    assert fit_linear_path(m, X, clean, ridge=1e-2) == 1e-2


# --------------------------------------------------------------------------------- the logistic start


@pytest.mark.parametrize("k", [2, 3])
def test_the_logistic_start_is_scikit_learns_logistic_regression(k):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 4))
    logits = X @ rng.normal(size=(4, k))
    y = np.array([rng.choice(k, p=np.exp(r) / np.exp(r).sum()) for r in logits])  # noisy: not separable
    m = _skip(4, k)
    assert fit_logistic_path(m, torch.tensor(X).float(), torch.tensor(y)) is True
    ref = LogisticRegression(C=1.0, tol=1e-10, max_iter=10_000).fit(X, y).predict_proba(X)
    with torch.no_grad():
        ours = m(torch.tensor(X).float()).softmax(-1).double().numpy()
    assert np.abs(ours - ref).max() < 1e-4
    assert torch.equal(m.mlp[-1].weight, torch.zeros_like(m.mlp[-1].weight))


def test_the_logistic_start_declines_a_problem_too_large_for_newton():
    m = _skip(500, 10)  # 5010 weights > LOGISTIC_MAX_WEIGHTS
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert fit_logistic_path(m, torch.randn(20, 500), torch.randint(0, 10, (20,))) is False
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())


# ----------------------------------------------------------------------------------- epoch 0


class _Fake:
    should_stop, stop_reason, epoch = False, None, 3

    class model:  # noqa: N801 - a stand-in with what EarlyStopping reads
        @staticmethod
        def state_dict():
            return {"w": torch.zeros(1)}


def test_an_epoch_replaces_the_start_only_when_better_by_the_margin():
    stopper = fl.EarlyStopping(patience=10)
    stopper.start_from(1.0, _Fake.model, margin=0.1)
    assert (stopper.best_epoch, stopper.best, stopper.from_start) == (0, 1.0, True)
    stopper.on_epoch_end(_Fake(), 1, {"val_loss": 0.95})  # better, but within one standard error
    assert stopper.best_epoch == 0
    stopper.on_epoch_end(_Fake(), 2, {"val_loss": 0.85})  # 0.15 better: it counts
    assert (stopper.best_epoch, stopper.best) == (2, 0.85)
    stopper.on_epoch_end(_Fake(), 3, {"val_loss": 0.84})  # later epochs compete as usual (no margin)
    assert stopper.best_epoch == 3
    again = fl.EarlyStopping(patience=10)
    again.load_state_dict(stopper.state_dict())
    assert (again.from_start, again.start_margin, again.best_epoch) == (True, 0.1, 3)


def test_a_fit_that_never_beats_its_start_ends_with_the_starting_weights():
    g = torch.Generator().manual_seed(0)
    X, Xv = torch.randn(64, 3, generator=g), torch.randn(32, 3, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    with torch.no_grad():
        yv = model(Xv).reshape(-1)  # the start fits the val rows exactly: every step away is worse there
    start = {k: v.clone() for k, v in model.state_dict().items()}
    stopper = fl.EarlyStopping(patience=3)
    trainer = fl.Trainer(model, epochs=20, lr=0.1, quiet=True, callbacks=[stopper])
    stopper.start_from(float(trainer.evaluate((Xv, yv))["loss"]), trainer.model)
    trainer.fit((X, torch.randn(64, generator=g)), (Xv, yv))
    assert stopper.best_epoch == 0 and trainer.epoch == 3
    assert "(the initial model)" in trainer.stop_reason
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())


def test_the_cli_keeps_the_linear_start_on_a_noise_table(tmp_path):
    rng = np.random.default_rng(1)
    rows = [[f"{a:.4f}", f"{b:.4f}", f"{c:.4f}"] for a, b, c in rng.normal(size=(120, 3))]
    data = write_rows(tmp_path / "noise.csv", ["a", "b", "y"], rows)
    cfg = resolve_run_config({"data.path": str(data), "data.target": "y", "train.quiet": True,
                              "train.epochs": 30, "train.early_stopping": 5})
    r = train_table(cfg, out=tmp_path / "run")
    run = json.loads((r.run_dir / "run.json").read_text())
    assert run["best_epoch"] == 0 and "(the initial model)" in run["stop_reason"]
    assert run["linear_init_ridge"] >= 1.0  # GCV shrinks noise towards the mean
    # the kept model is the ridge start: every member's output layer is still zero
    bundle = fl.bundle.load(r.run_dir / "model")
    assert float(bundle.head_weight.detach().abs().max()) == 0.0
    from fitloop.report.data import from_run_dir

    assert from_run_dir(r.run_dir).best_epoch == 0  # the report says so too (not the lowest trained epoch)


def test_a_run_written_before_these_settings_resumes_with_the_old_start(tmp_path):
    """A config.toml with the linear start but without `model.ridge` & co. resumes as that code ran it:
    ridge 1e-2, no logistic start, no epoch 0."""
    rows = [[f"{math.sin(i):.3f}", f"{math.cos(i):.3f}", f"{math.sin(2 * i):.3f}"] for i in range(60)]
    data = write_rows(tmp_path / "t.csv", ["a", "b", "y"], rows)
    cfg = resolve_run_config({"data.path": str(data), "data.target": "y", "train.epochs": 2, "train.quiet": True})
    new_keys = ("ridge", "logistic_c", "early_stopping_from_start", "early_stopping_se")
    old_toml = "".join(line for line in cfg.to_toml().splitlines(keepends=True)
                       if line.split("=")[0].strip() not in new_keys)
    assert "linear_init = true" in old_toml
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(old_toml)  # killed before anything else was written
    resume_run(run)
    info = json.loads((run / "run.json").read_text())
    assert info["linear_init_ridge"] == 1e-2 and info["best_epoch"] != 0


def test_the_new_settings_are_checked_and_written_to_config_toml():
    from fitloop.tabular.config import ConfigError

    assert resolve_run_config({}).model.ridge == "gcv"  # written as "gcv": a resume tells it from a legacy run
    assert 'ridge = "gcv"' in resolve_run_config({}).to_toml()
    assert resolve_run_config({"model.ridge": 0.1}).model.ridge == 0.1
    with pytest.raises(ConfigError, match=r"model.ridge: got -1.*penalty > 0.*\"gcv\""):
        resolve_run_config({"model.ridge": -1})
    with pytest.raises(ConfigError, match=r"model.logistic_c: got 0.0"):
        resolve_run_config({"model.logistic_c": 0})
