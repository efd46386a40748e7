"""Training features: schedulers, metrics, accumulation, clipping, precision, compile, device,
regularisation."""

import copy
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop.data import LoaderBatches, Split, TensorBatches
from fitloop.optim import warmup_cosine

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU (none available here)")


def regression_data(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    w = torch.linspace(-1, 1, d)
    y = X @ w + 0.1 * torch.randn(n, generator=g)
    return X, y


def classification_data(n=120, d=4, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, d, generator=g)
    X = centers[y] + 1.0 * torch.randn(n, d, generator=g)
    return X, y


def trainer_for(model, loss="mse", optimizer="sgd", **kw):
    settings = dict(epochs=1, batch_size=16, lr=0.05, quiet=True, seed=0)
    settings.update(kw)
    return fl.Trainer(model, loss=loss, optimizer=optimizer, **settings)


def params_of(model):
    return [p.detach().clone() for p in model.parameters()]


# ---------------------------------------------------------------------------------- schedulers


def test_scheduler_instance_and_lr_recorded_every_epoch():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    trainer = fl.Trainer(model, loss="mse", optimizer=opt, scheduler=sched, epochs=3, quiet=True)
    history = trainer.fit(regression_data())
    assert trainer.scheduler is sched and trainer.scheduler_interval == "epoch"
    # lr is the rate the epoch trained with
    assert [h["lr"] for h in history] == pytest.approx([0.1, 0.05, 0.025])


def test_scheduler_by_name_with_kwargs():
    trainer = trainer_for(nn.Linear(3, 1), scheduler=("step", {"step_size": 2, "gamma": 0.1}),
                          epochs=4, lr=1.0)
    history = trainer.fit(regression_data())
    assert [h["lr"] for h in history] == pytest.approx([1.0, 1.0, 0.1, 0.1])


def test_scheduler_factory_and_errors():
    factory = lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)
    trainer = trainer_for(nn.Linear(3, 1), scheduler=factory, epochs=2, lr=1.0)
    assert [h["lr"] for h in trainer.fit(regression_data())] == pytest.approx([1.0, 0.5])
    with pytest.raises(ValueError, match="Did you mean 'cosine'"):
        trainer_for(nn.Linear(3, 1), scheduler="cosin").fit(regression_data())
    with pytest.raises(ValueError, match="once per epoch"):
        trainer_for(nn.Linear(3, 1), scheduler="plateau", scheduler_interval="step").fit(regression_data())


def test_reduce_on_plateau_uses_the_monitored_metric():
    const = lambda out, y: torch.tensor(1.0)  # never improves
    trainer = trainer_for(nn.Linear(3, 1), metrics={"const": const}, epochs=4, lr=0.01,
                          scheduler=("plateau", {"monitor": "val_const", "patience": 0, "factor": 0.5}))
    history = trainer.fit(regression_data(), regression_data(32, seed=1))
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.01, 0.005, 0.0025])


def test_reduce_on_plateau_missing_monitor_is_a_clear_error():
    trainer = trainer_for(nn.Linear(3, 1), scheduler=("plateau", {"monitor": "val_accuracy"}))
    with pytest.raises(KeyError, match="val_accuracy"):
        trainer.fit(regression_data(), regression_data(32, seed=1))


def test_warmup_cosine_steps_per_batch():
    lrs = []

    class LR(fl.Callback):
        def on_train_batch_end(self, trainer, step, loss):
            lrs.append(trainer.optimizer.param_groups[0]["lr"])

    trainer = trainer_for(nn.Linear(3, 1), callbacks=[LR()], epochs=3, lr=0.1,
                          scheduler=("warmup_cosine", {"warmup_steps": 3}))
    trainer.fit(regression_data(64))  # 4 steps per epoch, 12 in all
    assert trainer.scheduler_interval == "step"
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = warmup_cosine(opt, warmup_steps=3, total_steps=12)
    expected = []
    for _ in range(12):
        ref.optimizer.step()
        ref.step()
        expected.append(ref.get_last_lr()[0])
    assert lrs == pytest.approx(expected)
    assert lrs[1] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_declared_per_epoch():
    trainer = trainer_for(nn.Linear(3, 1), epochs=4, lr=0.1, scheduler_interval="epoch",
                          scheduler=("warmup_cosine", {"warmup_epochs": 2}))
    history = trainer.fit(regression_data(64))
    assert trainer.scheduler_interval == "epoch"
    assert [h["lr"] for h in history] == pytest.approx([0.05, 0.1, 0.1, 0.05], abs=1e-9)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_onecycle_steps_per_optimizer_step(accumulate):
    trainer = trainer_for(nn.Linear(3, 1), epochs=3, lr=0.1, scheduler="onecycle", accumulate=accumulate)
    history = trainer.fit(regression_data(80))  # 5 batches -> 5 or 3 optimizer steps per epoch
    sched = trainer.scheduler
    assert isinstance(sched, torch.optim.lr_scheduler.OneCycleLR) and trainer.scheduler_interval == "step"
    assert sched.total_steps == sched.last_epoch == trainer.global_step == 3 * (5 if accumulate == 1 else 3)
    assert history[-1]["lr"] < 1e-4  # the last step ran at the end of the cycle
    assert max(h["lr"] for h in history) > 0.01


def test_onecycle_instance_is_per_step():
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=8)
    trainer = fl.Trainer(model, loss="mse", optimizer=opt, scheduler=sched, epochs=2, batch_size=16,
                         quiet=True)
    trainer.fit(regression_data(64))
    assert trainer.scheduler_interval == "step" and sched.last_epoch == 8


# ---------------------------------------------------------------------------------- metrics


def test_multiclass_metrics_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    X, y = classification_data(150, classes=4)
    trainer = trainer_for(nn.Linear(4, 4), loss="cross_entropy", optimizer="adam", lr=0.05, epochs=3)
    history = trainer.fit((X[:100], y[:100]), (X[100:], y[100:]))
    for key in ("accuracy", "f1", "precision", "recall", "confusion_matrix"):
        assert key in history[-1] and "val_" + key in history[-1]
    res = trainer.evaluate((X[100:], y[100:]))
    pred = trainer.predict(X[100:], output="class").numpy()
    true = y[100:].numpy()
    assert 0.3 < res["accuracy"] < 1.0  # imperfect, so the comparison means something
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(true, pred), abs=1e-6)
    assert res["f1"] == pytest.approx(skm.f1_score(true, pred, average="macro"), abs=1e-6)
    macro = dict(average="macro", zero_division=0)
    assert res["precision"] == pytest.approx(skm.precision_score(true, pred, **macro), abs=1e-6)
    assert res["recall"] == pytest.approx(skm.recall_score(true, pred, **macro), abs=1e-6)
    assert res["confusion_matrix"] == skm.confusion_matrix(true, pred, labels=range(4)).tolist()


def test_binary_metrics_match_sklearn_with_n_by_1_outputs():
    skm = pytest.importorskip("sklearn.metrics")
    X, y = classification_data(160, classes=2, seed=3)
    y = y.float()
    trainer = trainer_for(nn.Linear(4, 1), loss="bce_with_logits", optimizer="adam", lr=0.02, epochs=2)
    history = trainer.fit((X[:100], y[:100]), (X[100:], y[100:]))
    keys = {"val_accuracy", "val_f1", "val_precision", "val_recall", "val_confusion_matrix"}
    assert keys <= set(history[-1])
    res = trainer.evaluate((X[100:], y[100:]))
    pred = trainer.predict(X[100:], output="class").numpy()
    true = y[100:].long().numpy()
    assert res["accuracy"] == pytest.approx(skm.accuracy_score(true, pred), abs=1e-6)
    assert res["f1"] == pytest.approx(skm.f1_score(true, pred, zero_division=0), abs=1e-6)
    assert res["precision"] == pytest.approx(skm.precision_score(true, pred, zero_division=0), abs=1e-6)
    assert res["recall"] == pytest.approx(skm.recall_score(true, pred, zero_division=0), abs=1e-6)
    assert res["confusion_matrix"] == skm.confusion_matrix(true, pred, labels=[0, 1]).tolist()


def test_regression_metrics_match_sklearn():
    skm = pytest.importorskip("sklearn.metrics")
    X, y = regression_data(120)
    trainer = trainer_for(nn.Linear(3, 1), epochs=2, lr=0.02)
    history = trainer.fit((X[:80], y[:80]), (X[80:], y[80:]))
    assert {"mse", "rmse", "mae", "r2", "val_mse", "val_rmse", "val_mae", "val_r2"} <= set(history[-1])
    res = trainer.evaluate((X[80:], y[80:]))
    pred = trainer.predict(X[80:]).reshape(-1).numpy()
    true = y[80:].numpy()
    assert res["mse"] == pytest.approx(skm.mean_squared_error(true, pred), rel=1e-5)
    assert res["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(true, pred)), rel=1e-5)
    assert res["mae"] == pytest.approx(skm.mean_absolute_error(true, pred), rel=1e-5)
    assert res["r2"] == pytest.approx(skm.r2_score(true, pred), rel=1e-4)


def test_user_metrics_callable_and_torchmetrics_object_on_train_and_val():
    torchmetrics = pytest.importorskip("torchmetrics")
    max_err = lambda out, y: (out.reshape(-1) - y.reshape(-1)).abs().max()
    metrics = {"max_err": max_err, "tm_mae": torchmetrics.MeanAbsoluteError()}
    trainer = trainer_for(nn.Linear(3, 1), metrics=metrics, epochs=2)
    history = trainer.fit(regression_data(64), regression_data(32, seed=1))
    for h in history:
        for key in ("max_err", "tm_mae", "val_max_err", "val_tm_mae"):
            assert isinstance(h[key], float)
        assert h["tm_mae"] == pytest.approx(h["mae"], rel=1e-5)
        assert h["val_tm_mae"] == pytest.approx(h["val_mae"], rel=1e-5)
    assert trainer_for(nn.Linear(3, 1), metrics=[max_err]).evaluate(regression_data())["<lambda>"] > 0


def test_metrics_computed_once_per_epoch_not_per_step(monkeypatch):
    trainer = trainer_for(nn.Linear(3, 1), epochs=3, batch_size=8)  # 8 steps per epoch
    calls = []
    original = fl.trainer.MetricSet.compute
    monkeypatch.setattr(fl.trainer.MetricSet, "compute", lambda self, out, y: calls.append(len(out))
                        or original(self, out, y))
    trainer.fit(regression_data(64), regression_data(32, seed=1))
    assert calls == [64, 32] * 3  # one train and one val computation per epoch, on all rows


# ---------------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("n,b,k", [(32, 8, 4), (30, 8, 4), (40, 8, 3)])
def test_accumulation_equals_one_big_batch(optimizer, n, b, k):
    X, y = regression_data(n, d=5)
    base = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 1))
    small, big = copy.deepcopy(base), copy.deepcopy(base)
    trainer_for(small, optimizer=optimizer, batch_size=b, accumulate=k, shuffle=False, lr=0.1).fit((X, y))
    trainer_for(big, optimizer=optimizer, batch_size=b * k, shuffle=False, lr=0.1).fit((X, y))
    for p, q, p0 in zip(small.parameters(), big.parameters(), base.parameters()):
        assert not torch.equal(p, p0)
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- clipping


def test_clip_grad_norm_logs_the_norm_and_clips():
    X, y = regression_data(32)
    model = nn.Linear(3, 1)
    ref = copy.deepcopy(model)
    nn.functional.mse_loss(ref(X).reshape(-1), y).backward()
    grads = [p.grad.clone() for p in ref.parameters()]
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
    before = params_of(model)
    trainer = trainer_for(model, batch_size=None, lr=0.1, clip_grad_norm=0.01)
    history = trainer.fit((X, y))
    assert history[0]["grad_norm"] == pytest.approx(norm.item(), rel=1e-5)
    assert norm > 0.01
    step = torch.cat([(p0 - p).reshape(-1) for p0, p in zip(before, model.parameters())])
    assert step.norm().item() == pytest.approx(0.1 * 0.01, rel=1e-4)


def test_clip_grad_value_bounds_each_element_and_logs_norm():
    X, y = regression_data(32)
    X = X * 10
    model = nn.Linear(3, 1)
    before = params_of(model)
    history = trainer_for(model, batch_size=None, lr=0.1, clip_grad_value=0.001).fit((X, y))
    assert history[0]["grad_norm"] > 0.001
    for p0, p in zip(before, model.parameters()):
        assert torch.allclose((p0 - p).abs(), torch.full_like(p, 0.1 * 0.001), rtol=1e-4)


def test_no_grad_norm_without_clipping():
    assert "grad_norm" not in trainer_for(nn.Linear(3, 1)).fit(regression_data())[0]


# ---------------------------------------------------------------------------------- precision


def test_bf16_autocast_on_cpu_with_fp32_loss():
    seen = {}
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))

    def hook(module, inputs, output):
        seen["linear"] = output.dtype

    model[0].register_forward_hook(hook)

    def loss(out, y):
        seen["loss_input"] = out.dtype
        value = nn.functional.mse_loss(out, y)
        seen["loss"] = value.dtype
        return value

    trainer = trainer_for(model, loss=loss, precision="bf16", device="cpu")
    history = trainer.fit(regression_data())
    assert seen == {"linear": torch.bfloat16, "loss_input": torch.float32, "loss": torch.float32}
    assert np.isfinite(history[0]["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32


def test_fp16_on_cpu_is_a_clear_error():
    with pytest.raises(ValueError, match="fp16 training needs CUDA"):
        trainer_for(nn.Linear(3, 1), precision="fp16", device="cpu")


def test_unknown_precision_rejected():
    with pytest.raises(ValueError, match="precision"):
        trainer_for(nn.Linear(3, 1), precision="fp8")


@needs_cuda
@pytest.mark.gpu
def test_fp16_on_cuda_uses_grad_scaler():
    trainer = trainer_for(nn.Linear(3, 1), precision="fp16", device="cuda", epochs=2)
    history = trainer.fit(regression_data())
    assert trainer.scaler is not None and trainer.scaler.is_enabled()
    assert np.isfinite(history[-1]["loss"])


@needs_cuda
@pytest.mark.gpu
def test_bf16_on_cuda():
    history = trainer_for(nn.Linear(3, 1), precision="bf16", device="cuda").fit(regression_data())
    assert np.isfinite(history[-1]["loss"])


# ---------------------------------------------------------------------------------- compile


@pytest.mark.slow  # torch.compile builds C++ kernels: about 15 s on 2 CPU cores
def test_compile_saves_without_orig_mod_prefix(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    t0 = time.perf_counter()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    trainer = trainer_for(model, compile=True, batch_size=None, epochs=1)
    trainer.fit(regression_data(32))
    path = trainer.save(str(tmp_path / "bundle"))
    keys = set(safetensors.load_file(str(tmp_path / "bundle" / "model.safetensors")))
    assert keys == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert not any(k.startswith("_orig_mod.") for k in trainer.model.state_dict())
    loaded = fl.load(path, model=nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1)))
    X = regression_data(8, seed=5)[0]
    assert torch.allclose(loaded(X), model(X))
    assert time.perf_counter() - t0 < 60


# ---------------------------------------------------------------------------------- device


def test_pick_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert fl.pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert fl.pick_device("auto").type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert fl.pick_device("auto").type == "cpu"
    assert fl.pick_device("cpu").type == "cpu"


def test_cuda_requested_without_cuda_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        fl.pick_device("cuda")


def test_in_memory_data_moved_once_and_loader_pins_on_cuda():
    trainer = trainer_for(nn.Linear(3, 1))
    X, y = regression_data()
    batches = trainer._batches((X, y), train=True)
    assert isinstance(batches, TensorBatches) and batches.X.device == trainer.device
    loader = trainer._batches(Split(X, y), train=True)
    assert isinstance(loader, TensorBatches)  # a Split is in-memory too
    ds = torch.utils.data.TensorDataset(X, y)
    assert isinstance(trainer._batches(ds, train=True), LoaderBatches)
    assert trainer._batches(ds, train=True).loader.pin_memory is False
    trainer.device = torch.device("cuda")  # no CUDA needed to build the loader
    assert trainer._batches(ds, train=True).loader.pin_memory is True


@needs_cuda
@pytest.mark.gpu
def test_cuda_dataset_path_trains():
    X, y = regression_data()
    trainer = trainer_for(nn.Linear(3, 1), device="cuda")
    history = trainer.fit(torch.utils.data.TensorDataset(X, y))
    assert np.isfinite(history[-1]["loss"]) and next(trainer.model.parameters()).is_cuda


# ---------------------------------------------------------------------------------- regularisation


def one_full_batch_step(**kw):
    X, y = regression_data(32)
    model = nn.Linear(3, 1)
    ref = copy.deepcopy(model)
    trainer_for(model, batch_size=None, lr=0.1, **kw).fit((X, y))
    nn.functional.mse_loss(ref(X).reshape(-1), y).backward()
    return model, ref


def test_weight_decay():
    model, ref = one_full_batch_step(weight_decay=0.5)
    for p, r in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(p, r - 0.1 * (r.grad + 0.5 * r), atol=1e-7)


@pytest.mark.parametrize("kind", ["l1", "l2"])
def test_penalty_adds_exactly_its_gradient(kind):
    strength = 0.3
    model, ref = one_full_batch_step(penalty=(kind, strength))
    for p, r in zip(model.parameters(), ref.parameters()):
        extra = 2 * strength * r if kind == "l2" else strength * torch.sign(r)
        assert torch.allclose(p, r - 0.1 * (r.grad + extra), atol=1e-7)


def test_penalty_validated():
    with pytest.raises(ValueError, match="penalty"):
        trainer_for(nn.Linear(3, 1), penalty=("l3", 0.1))


def test_input_noise_in_training_only():
    X, y = regression_data(64)
    a, b = nn.Linear(3, 1), nn.Linear(3, 1)
    b.load_state_dict(a.state_dict())
    ta = trainer_for(a, input_noise=0.5, batch_size=None)
    tb = trainer_for(b, batch_size=None)
    ta.fit((X, y))
    tb.fit((X, y))
    assert not torch.equal(a.weight, b.weight)  # the noise changed the training step
    first, second = ta.evaluate((X, y)), ta.evaluate((X, y))
    assert first == second
    with torch.no_grad():
        expected = nn.functional.mse_loss(a(X).reshape(-1), y).item()
    assert first["loss"] == pytest.approx(expected, rel=1e-6)
    assert torch.equal(ta.predict(X), ta.predict(X))


def test_dropout_in_mlpspec_train_only():
    model = fl.build_mlp(fl.MLPSpec(3, hidden=[32], out_features=1, dropout=0.5))
    assert any(isinstance(m, nn.Dropout) for m in model)
    trainer = trainer_for(model)
    X, _ = regression_data(16)
    assert torch.equal(trainer.predict(X), trainer.predict(X))
    model.train()
    assert not torch.equal(model(X), model(X))
    with pytest.raises(ValueError, match="dropout"):
        fl.MLPSpec(3, hidden=[4], dropout=1.0)


# ---------------------------------------------------------------------------------- import cost


def test_import_is_light():
    code = ("import sys, fitloop; heavy = [m for m in ('torchmetrics', 'matplotlib', 'sklearn') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
