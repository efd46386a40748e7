"""TabM, the table trainer's default model: the members, their losses, the embeddings, the linear start, the
bundle, and how `fitloop train` picks it (`--model`), including runs and bundles written before it."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tablefiles import write_rows

import fitloop as fl
from fitloop.metrics import MetricSet
from fitloop.models import MLPSpec, fit_linear_path, fit_logistic_path, spec_from_dict
from fitloop.optim import MembersLoss
from fitloop.tabm import TabM, TabMSpec, combine_members, fit_bins
from fitloop.tabular.config import ConfigError, resolve_run_config
from fitloop.tabular.pipeline import resume_run


def _model(out: int = 1, average: str = "outputs", **kw) -> TabM:
    torch.manual_seed(0)
    return TabM(TabMSpec(5, out_features=out, k=4, hidden=[16, 16], numeric=[0, 1, 2], average=average, **kw))


def test_training_gives_every_member_and_evaluation_the_ensemble():
    model = _model(3, "probabilities")
    x = torch.randn(7, 5)
    members = model.train()(x)
    assert members.shape == (7, 4, 3)
    model.eval()
    with torch.no_grad():
        members = model.members(x)
        ensemble = model(x)
    expected = torch.log(torch.softmax(members, -1).mean(1))
    torch.testing.assert_close(ensemble, expected)
    torch.testing.assert_close(torch.softmax(ensemble, -1).sum(-1), torch.ones(7))
    regression = _model().eval()
    with torch.no_grad():
        assert torch.equal(regression(x), regression.members(x).mean(1))


def test_the_members_loss_is_the_mean_of_each_members_own_loss():
    torch.manual_seed(1)
    out, labels = torch.randn(6, 4, 3), torch.randint(0, 3, (6,))
    each = [torch.nn.functional.cross_entropy(out[:, i], labels) for i in range(4)]
    torch.testing.assert_close(MembersLoss("cross_entropy")(out, labels), torch.stack(each).mean())
    values, y = torch.randn(6, 4, 1), torch.randn(6)
    each = [torch.nn.functional.mse_loss(values[:, i, 0], y) for i in range(4)]
    torch.testing.assert_close(MembersLoss("mse")(values, y), torch.stack(each).mean())
    # an ensemble's output (evaluation): the loss it wraps, a (N,) target viewed as (N, 1)
    assert MembersLoss("mse")(values[:, 0], y) == torch.nn.functional.mse_loss(values[:, 0, 0], y)


def test_a_trainer_trains_it_and_the_train_metrics_score_the_members_mean():
    torch.manual_seed(0)
    X = torch.randn(256, 5)
    y = (X[:, 0] * X[:, 1] > 0).long()
    model = _model(2, "probabilities")
    fit_bins(model, X)
    trainer = fl.Trainer(model, loss=MembersLoss("cross_entropy"), epochs=30, lr=3e-3, quiet=True)
    history = trainer.fit((X[:200], y[:200]), (X[200:], y[200:]))
    assert trainer.task == "multiclass" and "accuracy" in history[-1]
    assert history[-1]["val_accuracy"] > 0.9 > history[0]["val_accuracy"]
    members = torch.randn(10, 4, 2)
    labels = torch.randint(0, 2, (10,))
    metrics = MetricSet("multiclass").compute(members, labels)
    assert float(metrics["accuracy"]) == float((members.mean(1).argmax(-1) == labels).float().mean())


def test_piecewise_bins_are_quantiles_of_the_training_rows_and_extrapolate():
    model = _model(embedding="piecewise", n_bins=4)
    X = torch.arange(100, dtype=torch.float32).repeat(5, 1).T  # 0..99 in every column
    fit_bins(model, X)
    emb = model.embedding
    assert torch.allclose(emb.left[0], torch.tensor([0.0, 24.75, 49.5, 74.25]))
    raw = (torch.tensor([[-10.0, 50.0, 200.0]]).T - emb.left[0]) / emb.width[0]  # three values of column 0
    encoded = torch.minimum(torch.maximum(raw, emb.lower), emb.upper)
    assert encoded[0, 0] < 0 and encoded[0, 1:].eq(0).all()  # below the range: the first bin goes negative
    assert encoded[1].tolist()[:2] == [1.0, 1.0] and 0 < encoded[1, 2] < 1 and encoded[1, 3] == 0
    assert encoded[2, :3].eq(1).all() and encoded[2, 3] > 1  # above: the last bin goes past 1


def test_the_linear_start_is_the_models_output_at_first():
    torch.manual_seed(0)
    X = torch.randn(200, 5)
    target = X @ torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0]) + 0.7
    model = _model()
    fit_bins(model, X)
    fit_linear_path(model, X, target[:, None], ridge=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(X)[:, 0], target, atol=1e-4, rtol=0)
    labels = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
    classifier = _model(3, "probabilities")
    assert fit_logistic_path(classifier, X, labels)
    with torch.no_grad():
        members = classifier.members(X)
        logistic = classifier.skip(X) + classifier.head_bias[0]
    assert torch.equal(members[:, 0], members[:, 3])  # every member starts as the logistic fit
    torch.testing.assert_close(members[:, 0], logistic)
    assert torch.equal(classifier.eval()(X).argmax(1), logistic.argmax(1))


def test_the_spec_is_checked_and_rebuilds_from_json(tmp_path):
    spec = TabMSpec(6, 2, k=3, hidden=[8], numeric=[4, 1], embedding="periodic", average="probabilities")
    assert spec.numeric == [1, 4] and spec_from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    for bad, message in (({"k": 0}, "k must be >= 1"), ({"embedding": "fourier"}, "embedding must be one of"),
                         ({"numeric": [6]}, "numeric must be distinct indices below in_features=6"),
                         ({"hidden": []}, "hidden must name at least one layer"),
                         ({"average": "votes"}, "average must be one of")):
        with pytest.raises(ValueError, match=message):
            TabMSpec(6, 2, **bad)
    torch.manual_seed(0)
    model = TabM(spec)
    fit_bins(model, torch.randn(50, 6))
    trainer = fl.Trainer(model, loss=MembersLoss("cross_entropy"), epochs=1, quiet=True)
    x, y = torch.randn(40, 6), torch.randint(0, 2, (40,))
    trainer.fit((x, y))
    trainer.save(tmp_path / "bundle")
    loaded = fl.load(tmp_path / "bundle")
    assert isinstance(loaded, TabM) and loaded.spec == spec
    with torch.no_grad():
        assert torch.equal(loaded(x), trainer.model.eval()(x))


def test_combine_members_for_one_logit_averages_the_probabilities():
    out = torch.tensor([[[0.0], [2.0]]])
    p = (torch.sigmoid(torch.tensor(0.0)) + torch.sigmoid(torch.tensor(2.0))) / 2
    assert math.isclose(float(combine_members(out, "probabilities")), float(torch.log(p / (1 - p))), rel_tol=1e-6)


def _table(tmp_path):
    rows = [[f"{math.sin(i):.4f}", f"{math.cos(3 * i):.4f}", "abc"[i % 3], f"{math.sin(i) * math.cos(3 * i):.4f}"]
            for i in range(120)]
    return write_rows(tmp_path / "t.csv", ["a", "b", "c", "y"], rows)


def test_fitloop_train_defaults_to_tabm_and_model_mlp_gives_the_previous_mlp(tmp_path):
    from fitloop.cli import main

    data = _table(tmp_path)
    for flag, kind in (([], "tabm"), (["--model", "mlp"], "mlp")):
        out = tmp_path / f"run-{kind}"
        assert main(["train", str(data), "--target", "y", "--epochs", "3", "--quiet", "--out", str(out), *flag]) == 0
        spec = json.loads((out / "model" / "fitloop.json").read_text())["spec"]
        assert spec["kind"] == kind
        assert f'kind = "{kind}"' in (out / "config.toml").read_text()
    tabm = json.loads((tmp_path / "run-tabm" / "model" / "fitloop.json").read_text())["spec"]
    assert tabm["numeric"] == [0, 1] and tabm["hidden"] == [128, 128] and tabm["dropout"] == 0.1  # not c's one-hot
    mlp = json.loads((tmp_path / "run-mlp" / "model" / "fitloop.json").read_text())["spec"]
    assert mlp["hidden"] == [64, 32] and mlp["dropout"] == 0.0


def test_a_run_written_before_tabm_resumes_as_the_mlp_it_was(tmp_path):
    data = _table(tmp_path)
    cfg = resolve_run_config({"data.path": str(data), "data.target": "y", "train.epochs": 2, "train.quiet": True,
                              "model.kind": "mlp"})
    new_keys = ("kind", "k", "embedding", "d_embedding", "n_bins")
    old_toml = "".join(line for line in cfg.to_toml().splitlines(keepends=True)
                       if line.split("=")[0].strip() not in new_keys)
    assert "kind" not in old_toml and "hidden = [\n    64,\n    32,\n]" in old_toml
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(old_toml)  # killed before anything else was written
    resume_run(run)
    assert json.loads((run / "model" / "fitloop.json").read_text())["spec"]["kind"] == "mlp"


def test_model_settings_are_checked_and_size_search_keeps_the_mlp():
    assert resolve_run_config({}).model.kind == "tabm"
    assert resolve_run_config({"model.kind": "mlp"}).model.hidden == [64, 32]
    with pytest.raises(ConfigError, match=r"model.kind \(--model\): got 'forest'; choose tabm or mlp"):
        resolve_run_config({"model.kind": "forest"})
    with pytest.raises(ConfigError, match=r"model.k: got 0"):
        resolve_run_config({"model.k": 0})
    with pytest.raises(ConfigError, match=r"model.embedding: got 'x'"):
        resolve_run_config({"model.embedding": "x"})
    from fitloop.tabular.api import plain_mlp

    cfg = resolve_run_config({})
    plain_mlp(cfg)
    assert (cfg.model.kind, cfg.model.dropout, cfg.train.batch_size, cfg.train.lr) == ("mlp", 0.0, 64, 1e-3)
    tabm = resolve_run_config({"train.lr": 0.01})
    assert (tabm.train.batch_size, tabm.train.lr, tabm.train.early_stopping_rel_delta) == (256, 0.01, 0.0)
    with pytest.raises(ConfigError, match=r"size-search grows and shrinks the plain MLP"):
        plain_mlp(resolve_run_config({"model.kind": "tabm"}))


def test_a_linear_model_is_an_mlp_spec_of_either_kind(tmp_path):
    from fitloop.tabular.plan import plan_run

    data = _table(tmp_path)
    plan = plan_run(resolve_run_config({"data.path": str(data), "data.target": "y", "model.hidden": []}))
    assert isinstance(plan.spec, MLPSpec) and plan.spec.hidden == []


def test_the_one_standard_error_margin_is_measured_for_a_tabm():
    from fitloop.diagnose.verdict import val_standard_error

    torch.manual_seed(0)
    X, y = torch.randn(300, 5), torch.randn(300)
    model = _model()
    trainer = fl.Trainer(model, loss=MembersLoss("mse"), epochs=1, quiet=True)
    trainer.fit((X[:200], y[:200]))
    with torch.no_grad():
        per_row = (model.eval()(X[200:])[:, 0] - y[200:]) ** 2
    se = val_standard_error(trainer, (X[200:], y[200:]))
    assert se > 0 and math.isclose(se, float(per_row.double().std() / 10), rel_tol=1e-5)


def test_early_stopping_puts_the_start_back_when_the_check_says_the_gain_is_noise():
    torch.manual_seed(0)
    X, y = torch.randn(200, 3), torch.randn(200)
    model = fl.build_mlp(fl.MLPSpec(3, [8], 1))
    start = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def confirm(trainer, start_weights):
        calls.append(trainer.epoch)
        assert all(torch.equal(start_weights[k], v) for k, v in start.items())
        return False

    stopper = fl.EarlyStopping(patience=50)
    trainer = fl.Trainer(model, loss="mse", epochs=5, lr=1e-2, quiet=True, callbacks=[stopper])
    stopper.start_from(10.0, model, confirm=confirm)  # a start every epoch beats
    trainer.fit((X[:150], y[:150]), (X[150:], y[150:]))
    assert calls == [5] and stopper.best_epoch == 0 and stopper.best == 10.0
    assert all(torch.equal(model.state_dict()[k], v) for k, v in start.items())
    state = stopper.state_dict()  # checkpointed, for a resume to check the same start
    assert state["start_value"] == 10.0 and all(torch.equal(state["start_weights"][k], v) for k, v in start.items())


def test_the_paired_check_tells_a_real_gain_from_noise():
    from fitloop.tabular.training import paired_confirm

    torch.manual_seed(0)
    X = torch.randn(400, 3)
    y = X[:, 0] * 2 + 0.1 * torch.randn(400)
    model = fl.build_mlp(fl.MLPSpec(3, [], 1))
    trainer = fl.Trainer(model, loss="mse", epochs=1, quiet=True)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    confirm = paired_confirm((X, y))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[2.0, 0.0, 0.0]]))
        model[0].bias.zero_()
    assert confirm(trainer, start)  # the true weights beat a random start on every row
    assert torch.equal(model[0].weight, torch.tensor([[2.0, 0.0, 0.0]]))  # left with the kept weights
    assert not confirm(trainer, {k: v.clone() for k, v in model.state_dict().items()})  # no gain over itself
