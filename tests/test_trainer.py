import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import fitloop as fl


def _linear_trainer(**kw):
    fl.seed_everything(0)
    kw.setdefault("quiet", True)
    return fl.Trainer(nn.Linear(3, 1), **{"loss": "mse", "optimizer": "adam", "lr": 0.05, "epochs": 40,
                                           "batch_size": 32, **kw})


def test_fit_learns_linear_function(regression_data):
    X, y = regression_data
    train, val, test = fl.split(X, y, seed=0)
    tr = _linear_trainer()
    hist = tr.fit(train, val)
    assert len(hist) == 40
    assert [h["epoch"] for h in hist] == list(range(1, 41))
    for key in ("loss", "val_loss", "mse", "val_r2", "lr", "time"):
        assert key in hist[-1]
    assert hist[-1]["loss"] < hist[0]["loss"] / 10
    m = tr.evaluate(test)
    assert set(m) >= {"loss", "mse", "rmse", "mae", "r2"}
    assert m["r2"] > 0.99 and m["rmse"] == pytest.approx(m["mse"] ** 0.5, rel=1e-5)
    w = tr.model.weight.detach().squeeze()
    assert torch.allclose(w, torch.tensor([1.5, -2.0, 0.5]), atol=0.05)


def test_evaluate_loss_equals_mean_over_all_rows(regression_data):
    X, y = regression_data
    tr = _linear_trainer(epochs=1)
    tr.fit((X, y))
    m = tr.evaluate((X, y))
    with torch.no_grad():
        expected = ((tr.model(X).squeeze(1) - y) ** 2).mean().item()
    assert m["loss"] == pytest.approx(expected, rel=1e-6)
    assert m["mse"] == pytest.approx(expected, rel=1e-6)


def test_no_validation_set_is_fine(regression_data):
    X, y = regression_data
    train, val, test = fl.split(X, y, fractions=(0.85, 0.0, 0.15))
    hist = _linear_trainer(epochs=2).fit(train, val)
    assert "val_loss" not in hist[-1]


def test_same_seed_same_weights_different_seed_different(regression_data):
    X, y = regression_data

    def run(seed):
        fl.seed_everything(123)  # same init
        tr = fl.Trainer(fl.build_mlp(fl.MLPSpec(3, [8], 1, dropout=0.2)), epochs=3, seed=seed, quiet=True)
        tr.fit((X, y))
        return [p.detach().clone() for p in tr.model.parameters()]

    a, b, c = run(1), run(1), run(2)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    assert not all(torch.equal(p, q) for p, q in zip(a, c))


def test_validation_runs_in_eval_mode_under_no_grad_and_train_mode_comes_back():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.lin(x)

    X, y = torch.randn(8, 2), torch.randn(8)
    tr = fl.Trainer(Probe(), epochs=1, batch_size=8, quiet=True)
    tr.fit((X, y), (X, y))
    assert seen == [(True, True), (False, False)]
    assert tr.model.training
    tr.predict(X)
    assert seen[-1] == (False, False) and tr.model.training


def test_step_order_is_forward_loss_zero_grad_backward_step():
    calls = []

    class Spy(torch.optim.SGD):
        def zero_grad(self, set_to_none=True):
            calls.append("zero_grad")
            super().zero_grad(set_to_none)

        def step(self, closure=None):
            calls.append("step")
            return super().step(closure)

    model = nn.Linear(1, 1)
    model.register_forward_hook(lambda *a: calls.append("forward"))
    model.weight.register_hook(lambda g: calls.append("backward"))

    def loss(out, y):
        calls.append("loss")
        return ((out - y) ** 2).mean()

    tr = fl.Trainer(model, loss=loss, optimizer=Spy(model.parameters(), lr=0.1), epochs=1, batch_size=None,
                    quiet=True, train_metrics=False)
    tr.fit((torch.randn(4, 1), torch.randn(4, 1)))
    assert calls == ["forward", "loss", "zero_grad", "backward", "step"]


@pytest.mark.parametrize("opt", [("sgd", {"momentum": 0.9}), ("adam", {})])
def test_steps_equal_a_hand_written_loop_bit_for_bit(opt):
    """Gradients are cleared before every backward and the optimizer steps after it (the Trainer
    clears them itself and skips torch's hook wrapper when nothing is hooked): the weights equal a
    hand loop's exactly."""
    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(40, 3, generator=g), torch.randn(40, 1, generator=g)

    def model():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1))

    hand = model()
    name, kw = opt
    opt = (torch.optim.SGD(hand.parameters(), lr=0.05, **kw) if name == "sgd"
           else torch.optim.Adam(hand.parameters(), lr=0.05, fused=True))  # fitloop's default Adam is fused
    for _ in range(3):
        for i in range(0, 40, 8):
            loss = nn.functional.mse_loss(hand(X[i:i + 8]), y[i:i + 8])
            opt.zero_grad()
            loss.backward()
            opt.step()
    tr = fl.Trainer(model(), "mse", (name, kw), lr=0.05, epochs=3, batch_size=8, shuffle=False, quiet=True)
    tr.fit((X, y))
    for p, q in zip(tr.model.parameters(), hand.parameters()):
        assert torch.equal(p, q)


def test_optimizer_step_hooks_schedulers_and_the_profiler_still_see_every_step(recwarn):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    X, y = torch.randn(32, 2), torch.randn(32, 1)
    tr = fl.Trainer(nn.Linear(2, 1), "mse", "sgd", lr=0.1, epochs=2, batch_size=8, quiet=True)
    seen = []
    tr.optimizer.register_step_pre_hook(lambda opt, a, k: seen.append("pre"))
    tr.optimizer.register_step_post_hook(lambda opt, a, k: seen.append("post"))
    handle = register_optimizer_step_post_hook(lambda opt, a, k: seen.append("global"))
    try:
        tr.fit((X, y))
    finally:
        handle.remove()
    assert seen == ["pre", "post", "global"] * 8
    tr2 = fl.Trainer(nn.Linear(2, 1), "mse", "sgd", scheduler=("step", {"step_size": 1}), lr=0.1, epochs=2,
                     batch_size=8, quiet=True)
    tr2.fit((X, y))
    if fl._fastpath.enabled():  # the fast path ran, and was tracked:
        assert tr2.optimizer._opt_called
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]  # no scheduler warning
    with torch.profiler.profile() as prof:
        tr2.fit((X, y))
    assert sum(e.name == "Optimizer.step#SGD.step" for e in prof.events()) == 8  # it stands aside for the profiler


def test_classification_accuracy_from_argmax_and_predict_outputs():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 2, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()  # 3 classes
    train, val, test = fl.split(X, y, seed=0, stratify=True)
    fl.seed_everything(0)
    tr = fl.Trainer(fl.build_mlp(fl.MLPSpec(2, [32], 3)), loss="cross_entropy", lr=1e-2, epochs=30, quiet=True)
    tr.fit(train, val)
    m = tr.evaluate(test)
    assert tr.task == "multiclass"
    logits = tr.predict(test.X)
    acc = (logits.argmax(1) == test.y).float().mean().item()
    assert m["accuracy"] == pytest.approx(acc) and acc > 0.9
    assert torch.equal(tr.predict(test.X, output="class"), logits.argmax(1))
    proba = tr.predict(test.X, output="proba")
    assert torch.allclose(proba.sum(1), torch.ones(len(test)))
    assert len(m["confusion_matrix"]) == 3


def test_binary_task_from_bce_loss():
    X = torch.randn(200, 2)
    y = (X.sum(1) > 0).float()
    tr = fl.Trainer(nn.Linear(2, 1), loss="bce_with_logits", lr=0.1, epochs=20, quiet=True)
    tr.fit((X, y))
    assert tr.task == "binary"
    m = tr.evaluate((X, y))
    assert m["accuracy"] > 0.95
    assert set(tr.predict(X, output="class").unique().tolist()) <= {0, 1}


def test_target_shape_n_is_not_broadcast_against_output_n_by_1(regression_data):
    X, y = regression_data  # y has shape (N,), model outputs (N, 1)
    tr = _linear_trainer(epochs=30)
    tr.fit((X, y))
    assert tr.evaluate((X, y))["r2"] > 0.99  # would stall near r2=0 if broadcast to (N, N)


def test_temperature_plain_function_model_matches_tutorial():
    t_c = torch.tensor([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
    t_u = torch.tensor([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])
    params = torch.tensor([1.0, 0.0], requires_grad=True)
    tr = fl.Trainer(lambda t, w, b: w * t + b, params=params, loss="mse", optimizer="sgd", lr=1e-2,
                    epochs=5000, batch_size=None, quiet=True)
    tr.fit((0.1 * t_u, t_c))
    assert params.detach().tolist() == pytest.approx([5.3671, -17.3012], abs=5e-5)


def test_dataset_and_dataloader_paths(regression_data):
    X, y = regression_data
    ds = TensorDataset(X, y)
    train, val, test = fl.split(ds, seed=0)
    tr = _linear_trainer(epochs=30)
    tr.fit(train, val)
    assert tr.evaluate(test)["r2"] > 0.99
    loader = DataLoader(ds, batch_size=16, shuffle=True)
    tr2 = _linear_trainer(epochs=20)
    tr2.fit(loader)
    assert tr2.evaluate(DataLoader(ds, batch_size=50))["r2"] > 0.99
    assert tr2.predict(DataLoader(TensorDataset(X), batch_size=64)).shape == (200, 1)


def test_print_cadence_like_the_tutorial(capsys, regression_data):
    X, y = regression_data
    tr = fl.Trainer(nn.Linear(3, 1), epochs=12, print_every=5)
    tr.fit((X, y))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("Epoch")]
    assert [int(ln.split()[1].split("/")[0]) for ln in lines] == [1, 2, 3, 5, 10, 12]
    fl.Trainer(nn.Linear(3, 1), epochs=2, quiet=True).fit((X, y))
    assert capsys.readouterr().out == ""


# ---------------------------------------------------------------- bad input


def test_model_without_trainable_parameters():
    m = nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match=r"model: none of the 2 parameters of Linear requires grad"):
        fl.Trainer(m)
    p = torch.tensor([1.0, 0.0])  # forgot requires_grad=True
    with pytest.raises(ValueError, match="requires_grad=True"):
        fl.Trainer(lambda x, w, b: w * x + b, params=p)


def test_empty_dataset_is_refused():
    with pytest.raises(ValueError, match=r"empty \(0 rows\)"):
        fl.Trainer(nn.Linear(1, 1), quiet=True).fit((torch.randn(0, 1), torch.randn(0)))


@pytest.mark.parametrize("bs", [0, -4])
def test_batch_size_must_be_positive(bs):
    with pytest.raises(ValueError, match=rf"batch_size: got {bs}; pass a whole number >= 1, or None"):
        fl.Trainer(nn.Linear(1, 1), batch_size=bs)


def test_unknown_setting_gets_a_suggestion():
    with pytest.raises(TypeError, match=r"unknown setting 'epoch'\. Did you mean 'epochs'\?"):
        fl.Trainer(nn.Linear(1, 1), epoch=3)


def test_xy_length_mismatch_in_fit():
    with pytest.raises(ValueError, match=r"len\(X\)=5, len\(y\)=4"):
        fl.Trainer(nn.Linear(1, 1), quiet=True).fit((torch.randn(5, 1), torch.randn(4)))


def test_small_models_train_with_one_thread_and_the_setting_is_restored(regression_data):
    X, y = regression_data
    seen = []

    class Threads(fl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            seen.append(torch.get_num_threads())

    torch.set_num_threads(2)
    fl.Trainer(nn.Linear(3, 1), epochs=1, quiet=True, callbacks=[Threads()]).fit((X, y))
    fl.Trainer(nn.Linear(3, 1), epochs=1, quiet=True, threads=2, callbacks=[Threads()]).fit((X, y))
    assert seen == [1, 2]
    assert torch.get_num_threads() == 2  # the user's setting is back after fit


def test_training_with_metrics_imports_neither_torchmetrics_nor_scipy():
    """The built-in metrics are plain reductions: a run does not pay torchmetrics' ~2 s / 100 MB import."""
    import subprocess
    import sys

    code = ("import sys, torch, fitloop as fl\n"
            "X = torch.randn(64, 3); y = torch.randint(0, 3, (64,))\n"
            "t = fl.Trainer(torch.nn.Linear(3, 3), loss='cross_entropy', epochs=2, quiet=True)\n"
            "t.fit((X, y), (X, y)); t.evaluate((X, y))\n"
            "print(sorted(m for m in ('torchmetrics', 'scipy', 'matplotlib', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_on_accelerators_a_nonfinite_loss_stops_at_the_epoch_end():
    """Off the CPU there is no per-step check (it would sync the device); the epoch's loss is checked."""

    class AcceleratorLike(fl.Trainer):
        def train_step(self, batch):
            self.training_step.check_every_step = False  # behave as on CUDA
            return super().train_step(batch)

    X = torch.randn(32, 2)
    X[5, 0] = float("nan")
    t = AcceleratorLike(nn.Linear(2, 1), epochs=3, batch_size=8, quiet=True)
    with pytest.raises(fl.NonFiniteError, match=r"after epoch 1: the epoch's loss is nan.*once per epoch"):
        t.fit((X, torch.randn(32)))
    assert t.history == []


def test_lbfgs_nonfinite_loss_is_caught_at_the_epoch_end():
    X = torch.randn(16, 2)
    X[3, 1] = float("inf")
    t = fl.Trainer(nn.Linear(2, 1), optimizer="lbfgs", lr=0.5, epochs=2, batch_size=None, quiet=True)
    with pytest.raises(fl.NonFiniteError, match=r"after epoch 1: the epoch's loss is (nan|inf).*LBFGS"):
        t.fit((X, torch.randn(16)))
