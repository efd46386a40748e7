"""fitloop.diagnose.guards: each guard fires with its message, and each one switches off on its own;
trainer.sanity_check leaves every state exactly as it was."""

import copy
import random
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import fitloop as fl
from fitloop.diagnose.checks import GuardWarning, check_leakage, check_scales
from fitloop.diagnose.guards import DIVERGENCE_STEPS


def _data(n=64, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, generator=g)


def _fit(model, train, val=None, **kw):
    kw = {"quiet": True, "epochs": 1, **kw}
    t = fl.Trainer(model, **kw)
    t.fit(train, val)
    return t


def _guard_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, GuardWarning)]


# ------------------------------------------------------------------------------------- loss shapes


def test_n1_output_against_n_target_is_matched_both_ways():
    X, y = _data()

    def run(target):
        torch.manual_seed(3)
        return _fit(nn.Linear(3, 1), (X, target), epochs=2, batch_size=16).history

    def losses(h):
        return [e["loss"] for e in h]

    assert losses(run(y)) == losses(run(y[:, None]))  # (N, 1) output vs (N,) and (N, 1) targets: the same numbers
    assert losses(run(y)) == losses(run(y[:, None]))


@pytest.mark.parametrize("out_features, y_cols", [(3, 2), (3, 1)])
def test_unmatchable_shapes_raise_naming_both(out_features, y_cols):
    X, _ = _data()
    y = torch.randn(64, y_cols)
    model = nn.Linear(3, out_features)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=rf"output has shape \(64, {out_features}\) but the target has shape "
                                         rf"\(64, {y_cols}\); MSELoss cannot match them"):
        _fit(model, (X, y))
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # no step was applied


def test_loss_shape_guard_switches_off():
    X, _ = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own broadcasting warning: the bug the guard exists for
        _fit(nn.Linear(3, 3), (X, torch.randn(64, 1)), guards={"loss_shapes": False})


# ------------------------------------------------------------------------------------ class targets


def test_labels_beyond_the_outputs_name_values_and_rows():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    y[[5, 40]] = torch.tensor([7, 4])
    with pytest.raises(ValueError, match=r"train y: the model has 3 outputs \(classes 0\.\.2\), but rows 5, 40 "
                                         r"hold labels 7, 4\. Give the model out_features=8"):
        _fit(nn.Linear(3, 3), (X, y), loss="cross_entropy")


def test_negative_labels_and_val_labels_are_checked():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    yv = y[:8].clone()
    yv[2] = -1
    with pytest.raises(ValueError, match=r"val y: class labels must be >= 0, but rows 2 hold -1"):
        _fit(nn.Linear(3, 3), (X, y), (X[:8] + 1, yv), loss="cross_entropy")


def test_fractional_float_labels_name_rows():
    X, _ = _data()
    y = torch.randint(0, 3, (64,)).float()
    y[9] = 1.5
    with pytest.raises(ValueError, match=r"fractional values \(rows 9: 1\.5\)"):
        _fit(nn.Linear(3, 3), (X, y), loss="cross_entropy")


def test_fractional_float_labels_name_the_split():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    yv = y[:8].float()
    yv[3] = 1.5
    with pytest.raises(ValueError, match=r"^val y: cross-entropy needs class indices \(0\.\.C-1\) but y has "
                                         r"fractional values \(rows 3: 1\.5\)"):
        _fit(nn.Linear(3, 3), (X, y), (X[:8] + 5, yv), loss="cross_entropy")


def test_whole_float_labels_are_converted_with_a_warning_naming_the_split():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        t = _fit(nn.Linear(3, 3), (X, y.float()), (X[:8] + 5, y[:8].double()), loss="cross_entropy")
    msgs = _guard_warnings(rec)
    assert any(m.startswith("train y: the class targets are floats (torch.float32); their whole values were "
                            "converted to class indices (int64)") for m in msgs)
    assert any(m.startswith("val y: the class targets are floats (torch.float") for m in msgs)
    assert t.history and "val_loss" in t.history[-1]  # and it trains
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 3), (X, y), loss="cross_entropy")  # integer labels: no warning
    assert not [m for m in _guard_warnings(rec) if "class targets are floats" in m]


def test_binary_targets_outside_0_1():
    X, _ = _data()
    y = torch.randint(0, 2, (64,)).float()
    y[3] = 2.0
    with pytest.raises(ValueError, match=r"binary targets must be 0/1 .* rows 3 hold 2"):
        _fit(nn.Linear(3, 1), (X, y), loss="bce_with_logits")


def test_more_outputs_than_classes_warns():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 10), (X, y), loss="cross_entropy")
    assert any("the model has 10 outputs but the training labels only use 0..2 (3 classes)" in m
               for m in _guard_warnings(rec))


def test_class_target_guard_switches_off():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    y[0] = 5
    with pytest.raises(IndexError):  # torch's own error (on CUDA: a device-side assert) without the guard
        _fit(nn.Linear(3, 3), (X, y), loss="cross_entropy", guards={"class_targets": False})


def test_class_targets_from_a_dataset_are_checked_on_the_first_batch():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    y[:] = 9
    ds = torch.utils.data.TensorDataset(X, y)
    with pytest.raises(ValueError, match=r"y \(the first batch\): the model has 3 outputs"):
        _fit(nn.Linear(3, 3), ds, loss="cross_entropy")


# ------------------------------------------------------------------------------------------ leakage


def test_leakage_between_train_and_val_warns_with_counts_or_errors():
    X, y = _data()
    val = (torch.cat([X[:5], torch.randn(3, 3)]), torch.randn(8))
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 1), (X, y), val)
    assert any("5 of 8 val rows also occur in train" in m for m in _guard_warnings(rec))
    with pytest.raises(ValueError, match="5 of 8 val rows also occur in train"):
        _fit(nn.Linear(3, 1), (X, y), val, guards={"leakage": "error"})
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 1), (X, y), val, guards={"leakage": False})
    assert not any("leakage" in m for m in _guard_warnings(rec))


def test_leakage_is_found_across_dtypes():
    X, y = _data()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 1), (X.double(), y), (X[:10], y[:10]))  # float64 train, its float32 rows in val
    assert any("leakage: identical input rows in more than one split (10 of 10 val rows also occur in train)" in m
               for m in _guard_warnings(rec))
    X64 = torch.randn(50, 3, dtype=torch.float64)  # float64 values; val keeps a float32 copy of 7 rows
    assert check_leakage({"train": X64.numpy(), "val": X64[:7].float()}, mode=False) == {("train", "val"): 7}
    ints = torch.randint(0, 5, (30, 2))
    assert check_leakage({"train": ints, "val": ints[:4].float()}, mode=False) == {("train", "val"): 4}
    assert check_leakage({"train": X64, "val": torch.randn(9, 3)}, mode=False) == {}


def test_split_checks_all_three_parts():
    X = torch.randn(40, 2)
    X[30:] = X[:10]  # 10 duplicated rows
    found = check_leakage(dict(zip(("train", "val", "test"), fl.split(X, torch.zeros(40), leakage=False))),
                          mode=False)
    assert sum(found.values()) > 0 and set(found) <= {("train", "val"), ("train", "test"), ("val", "test")}
    with pytest.raises(ValueError, match="identical input rows in more than one split"):
        fl.split(X, torch.zeros(40), leakage="error")
    assert check_leakage({"train": torch.zeros(3, 2) - 0.0, "val": -torch.zeros(1, 2)}, mode=False) == \
        {("train", "val"): 1}  # -0.0 == 0.0


# ------------------------------------------------------------------------------------------ scales


def test_unscaled_inputs_warn_and_switch_off():
    X, y = _data()
    X[:, 1] *= 1000.0
    assert "feature scales differ by" in check_scales(X)
    assert check_scales(X / X.std(0)) is None
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 1), (X, y))
    msgs = _guard_warnings(rec)
    assert any("column 1" in m and "Standardise" in m for m in msgs)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 1), (X, y), guards={"unscaled": False})
    assert not any("scales" in m for m in _guard_warnings(rec))


# ------------------------------------------------------------------------------------------ divergence

T_C = torch.tensor([0.5, 14.0, 15.0, 28.0, 11.0, 8.0, 3.0, -4.0, 6.0, 13.0, 21.0])
T_U = torch.tensor([35.7, 55.9, 58.2, 81.9, 56.3, 48.9, 33.9, 21.8, 48.4, 60.4, 68.4])


def test_early_divergence_suggests_a_lower_lr():
    # the classic: unnormalised temperatures with SGD at lr 1e-2 blow up
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(1, 1), (T_U[:, None], T_C), optimizer="sgd", lr=1e-2, batch_size=None, epochs=8)
    msgs = [m for m in _guard_warnings(rec) if m.startswith("divergence")]
    assert len(msgs) == 1 and "try lr=0.001" in msgs[0]
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(1, 1), (T_U[:, None], T_C), optimizer="sgd", lr=1e-2, batch_size=None, epochs=8,
             guards={"divergence": False})
    assert not any(m.startswith("divergence") for m in _guard_warnings(rec))


def test_divergence_guard_reads_only_the_first_steps():
    read = []

    class Spy(fl.Callback):
        def on_train_batch_end(self, trainer, step, loss):
            read.append(step)

    X, y = _data(n=200)
    t = fl.Trainer(nn.Linear(3, 1), quiet=True, epochs=3, batch_size=8, callbacks=[Spy()])
    guard = next(cb for cb in t.callbacks if type(cb).__name__ == "GuardCallback")
    t.fit((X, y))
    assert len(read) == 75 and guard._watch is None  # stopped watching after DIVERGENCE_STEPS steps
    assert DIVERGENCE_STEPS < 75


def test_guards_false_turns_every_guard_off_and_bad_names_are_refused():
    X, y = _data()
    X[:, 0] *= 1e4
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _fit(nn.Linear(3, 1), (X, y), (X, y), guards=False)
    assert _guard_warnings(rec) == []
    with pytest.raises(ValueError, match=r"unknown guard 'leak' \(did you mean 'leakage'\?\)"):
        fl.Trainer(nn.Linear(3, 1), guards={"leak": False})
    with pytest.raises(ValueError, match=r"guards\['unscaled'\]: got 'error'"):
        fl.Trainer(nn.Linear(3, 1), guards={"unscaled": "error"})


# ------------------------------------------------------------------------------------------ sanity check


def _states(t):
    sd = copy.deepcopy(t.state_dict())  # the live state dict shares tensors with the optimizer
    return sd, torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), t.generator.get_state()


def _assert_same(a, b):
    def eq(x, y):
        if isinstance(x, torch.Tensor):
            return torch.equal(x, y)
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(eq(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return len(x) == len(y) and all(eq(i, j) for i, j in zip(x, y))
        if isinstance(x, np.ndarray):
            return np.array_equal(x, y)
        return x == y

    sa, sb = a[0], b[0]
    for key in ("model", "optimizer", "train_state", "rng", "history"):
        assert eq(sa[key], sb[key]), key
    assert torch.equal(a[1], b[1]) and np.array_equal(a[2], b[2]) and a[3] == b[3] and torch.equal(a[4], b[4])


def test_sanity_check_learns_and_restores_everything_exactly():
    X, _ = _data(n=128)
    y = torch.randint(0, 3, (128,))
    t = fl.Trainer(nn.Sequential(nn.Linear(3, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 3)),
                   loss="cross_entropy", lr=1e-2, quiet=True, epochs=1)
    t.fit((X, y))  # optimizer state exists: it must come back too
    before = _states(t)
    report = t.sanity_check((X, y))
    assert report.can_learn and bool(report) and report.rows == 16 and report.final_loss < report.initial_loss / 2
    assert report.message.startswith("sanity check: the model can learn")
    _assert_same(before, _states(t))
    assert t.model.training


def test_sanity_check_reports_a_model_that_cannot_learn():
    class IgnoresInput(nn.Module):
        def __init__(self):
            super().__init__()
            self.b = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return self.b.expand(len(x), 1)

    X, y = _data(n=64)
    t = fl.Trainer(IgnoresInput(), lr=1e-2, quiet=True)
    before = _states(t)
    report = t.sanity_check((X, y))
    assert not report.can_learn and "only fell" in report.message
    _assert_same(before, _states(t))

    class Detached(nn.Linear):
        def forward(self, x):
            return super().forward(x).detach()

    report = fl.Trainer(Detached(3, 1), quiet=True).sanity_check((X, y))
    assert not report.can_learn and "the training step failed" in report.message


def test_sanity_check_runs_the_first_step_guards_and_restores():
    X, _ = _data(n=100)
    t = fl.Trainer(nn.Linear(3, 3), quiet=True, lr=1e-2)  # (N, 3) output, (N, 1) target: would broadcast
    y1 = torch.randn(100, 1)
    before = _states(t)
    with pytest.raises(ValueError, match=r"loss: the model's output has shape \(100, 3\) but the target has "
                                         r"shape \(100, 1\); MSELoss cannot match them"):
        t.sanity_check((X, y1))
    _assert_same(before, _states(t))
    y = torch.randint(0, 3, (100,))
    y[[7, 60]] = 5
    with pytest.raises(ValueError, match=r"train y: the model has 3 outputs \(classes 0\.\.2\), but rows 7, 60 "
                                         r"hold labels 5, 5"):
        fl.Trainer(nn.Linear(3, 3), loss="cross_entropy", quiet=True).sanity_check((X, y))
    ok = fl.Trainer(nn.Linear(3, 3), loss="cross_entropy", quiet=True, guards={"class_targets": False})
    with pytest.raises(IndexError):  # without the guard: torch's own error
        ok.sanity_check((X, torch.full((100,), 5)))


def test_evaluate_checks_class_targets_and_loss_shapes():
    X, _ = _data()
    t = _fit(nn.Linear(3, 3), (X, torch.randint(0, 3, (64,))), loss="cross_entropy")
    yb = torch.randint(0, 3, (64,))
    yb[4] = 7
    with pytest.raises(ValueError, match=r"evaluate y: the model has 3 outputs \(classes 0\.\.2\), but rows 4 "
                                         r"hold labels 7\. Give the model out_features=8"):
        t.evaluate((X, yb))
    r = _fit(nn.Linear(3, 1), (X, torch.randn(64, 1)))
    with pytest.raises(ValueError, match=r"evaluate: loss: the model's output has shape \(64, 1\) but the target "
                                         r"has shape \(64, 2\)"):
        r.evaluate((X, torch.randn(64, 2)))
    assert set(r.evaluate((X, torch.randn(64, 1)))) >= {"loss", "mse"}  # matching data still evaluates
    off = _fit(nn.Linear(3, 1), (X, torch.randn(64, 1)), guards={"loss_shapes": False})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert "loss" in off.evaluate((X, torch.randn(64, 2)))  # switched off: torch broadcasts, as before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none available here)")
def test_class_target_messages_are_the_same_on_cuda_as_on_cpu():
    X, _ = _data()
    y = torch.randint(0, 3, (64,))
    y[[5, 40]] = torch.tensor([7, -1])
    messages = []
    for device in ("cpu", "cuda"):
        for bad in ([5], [40]):
            yy = y.clone()
            yy[[i for i in (5, 40) if i not in bad]] = 0
            with pytest.raises(ValueError) as err:
                _fit(nn.Linear(3, 3), (X, yy), loss="cross_entropy", device=device)
            messages.append(str(err.value))
    assert messages[:2] == messages[2:] and "rows 5 hold labels 7" in messages[0]
