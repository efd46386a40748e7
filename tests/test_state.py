"""The Trainer owns its state: state_dict/load_state_dict continue a run exactly, every attribute is
created in __init__, and the events the run-directory callback uses are public and ordered."""

import pytest
import torch
from torch import nn

import fitloop as fl


def _data(n=72, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    return X, y


def _trainer(**kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 1))
    settings = dict(epochs=2, batch_size=16, lr=0.01, quiet=True, seed=0, input_noise=0.01, clip_grad_norm=1.0)
    settings.update(kw)
    return fl.Trainer(model, "mse", "adam", scheduler="cosine", callbacks=[fl.EarlyStopping("val_loss")], **settings)


def _without_time(history):
    return [{k: v for k, v in h.items() if k != "time"} for h in history]


def test_state_dict_then_load_state_dict_continues_exactly():
    train, val = _data(), _data(24, seed=1)
    full = _trainer(epochs=4)
    full.fit(train, val)

    first = _trainer(epochs=4)
    first.state.target_epochs = 2  # stop halfway, as an interrupted run would
    first.fit(train, val)
    saved = first.state_dict()
    second = _trainer(epochs=4)
    second.load_state_dict(saved)
    assert second.state.seeded and second.state.step == first.state.step
    second.state.target_epochs = 4
    second.fit(train, val)  # continues: no re-seeding, the restored generator and RNGs
    for p, q in zip(full.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    assert _without_time(second.history) == _without_time(full.history)
    assert second.callbacks[0].best == full.callbacks[0].best  # callback state travelled too


def test_state_dict_is_plain_data_and_tensors():
    t = _trainer(epochs=1)
    t.fit(_data(), _data(24, seed=1))
    sd = t.state_dict()
    assert set(sd) == {"config", "config_hash", "model", "optimizer", "scheduler", "scaler", "train_state", "rng",
                       "callbacks", "history", "should_stop", "stop_reason"}
    assert set(sd["train_state"]) >= {"epoch", "batch", "step", "epoch_lr", "outputs", "grad_norms", "seeded",
                                      "epoch_generator_state", "epoch_losses", "epoch_sizes", "epoch_time"}
    from fitloop.checkpoint_format import serialize  # would raise on anything that needs a pickle

    assert len(serialize(sd)) > 1000


def test_load_state_dict_refuses_a_different_model_and_foreign_callbacks():
    t = _trainer(epochs=1)
    t.fit(_data(), _data(24, seed=1))
    sd = t.state_dict()
    other = fl.Trainer(nn.Linear(3, 1), "mse", "adam", quiet=True)
    with pytest.raises(ValueError, match=r"the saved weights do not fit this model"):
        other.load_state_dict(sd)
    no_callbacks = fl.Trainer(_trainer().model, "mse", "adam", scheduler="cosine", quiet=True)
    with pytest.raises(fl.ResumeMismatchError, match=r"state for callback EarlyStopping \(#1\)"):
        no_callbacks.load_state_dict(sd)
    no_callbacks.load_state_dict(sd, strict=False)  # drops it
    no_scheduler = fl.Trainer(_trainer().model, "mse", "adam", quiet=True, callbacks=[fl.EarlyStopping()])
    with pytest.raises(fl.ResumeMismatchError, match="written with a scheduler, this trainer has none"):
        no_scheduler.load_state_dict(sd)


def test_every_attribute_is_created_in_init():
    fresh = _trainer(epochs=1, accumulate=2)
    names = set(vars(fresh))
    t = _trainer(epochs=1, accumulate=2)
    t.fit(_data(), _data(24, seed=1))
    t.evaluate(_data(24, seed=2))
    t.predict(_data(8)[0])
    t.lr_find(_data(), num_steps=5)
    t.state_dict()
    assert set(vars(t)) == names
    assert set(vars(t.state)) == set(vars(fl.TrainState()))


def test_optimizer_step_event_fires_once_per_accumulation_group_and_exceptions_are_announced():
    seen = []

    class Watch(fl.Callback):
        def on_optimizer_step(self, trainer, step):
            seen.append((trainer.state.batch, step))

        def on_exception(self, trainer, error):
            seen.append(type(error).__name__)

    t = fl.Trainer(nn.Linear(3, 1), "mse", "sgd", callbacks=[Watch()], epochs=1, batch_size=8, accumulate=3,
                   quiet=True)
    t.fit(_data(40))  # 5 batches: groups of 3 and 2
    assert seen == [(3, 1), (5, 2)]

    class Boom(fl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            raise RuntimeError("boom")

    seen.clear()
    t = fl.Trainer(nn.Linear(3, 1), "mse", "sgd", callbacks=[Boom(), Watch()], epochs=2, batch_size=40, quiet=True)
    with pytest.raises(RuntimeError, match="boom"):
        t.fit(_data(40))
    assert seen == [(1, 1), "RuntimeError"]


def test_lbfgs_clips_inside_its_closure_and_the_lr_finder_runs_it():
    t = fl.Trainer(nn.Linear(3, 1), "mse", "lbfgs", lr=0.5, epochs=2, batch_size=None, clip_grad_norm=0.01,
                   quiet=True)
    t.fit(_data())
    assert "grad_norm" in t.history[-1] and t.history[-1]["grad_norm"] > 0.01  # the norm before clipping
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    res = t.lr_find(_data(), num_steps=6, start_lr=1e-3, end_lr=1.0)
    assert len(res.lrs) == 6
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("scheduler", ["onecycle", "warmup_cosine", ("plateau", {"patience": 0})])
def test_load_state_dict_continues_exactly_with_schedulers_that_reset_the_lr(scheduler):
    """OneCycle and LambdaLR set the lr (OneCycle: Adam's betas too) when built: a resumed run keeps the
    checkpoint's values, not the schedule's start."""
    train, val = _data(), _data(24, seed=1)

    def make():
        torch.manual_seed(0)
        return fl.Trainer(nn.Linear(3, 1), "mse", "adam", scheduler=scheduler, epochs=3, batch_size=16, lr=0.05,
                          quiet=True, seed=0)

    full = make()
    full.fit(train, val)
    first = make()
    first.state.target_epochs = 1
    first.fit(train, val)
    second = make()
    second.load_state_dict(first.state_dict())
    second.state.target_epochs = 3
    second.fit(train, val)
    assert _without_time(second.history) == _without_time(full.history)
    for p, q in zip(full.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)


def test_a_signal_on_an_epochs_last_step_resumes_the_rest_of_the_run(tmp_path):
    import os
    import signal

    train, val = _data(), _data(24, seed=1)  # 72 rows, batch 16: 5 steps per epoch

    class SignalAt(fl.Callback):
        def on_train_batch_end(self, trainer, step, loss):
            if step == 5:
                os.kill(os.getpid(), signal.SIGINT)

    full = _trainer(epochs=3)
    full.callbacks.pop(0)  # no EarlyStopping in this one
    full.fit(train, val)
    t = _trainer(epochs=3, run_dir=str(tmp_path / "run"))
    t.callbacks[0] = SignalAt()
    with pytest.raises(fl.RunInterrupted):
        t.fit(train, val)
    assert [h["epoch"] for h in t.history] == [1]
    again = _trainer(epochs=3, run_dir=str(tmp_path / "run"))
    again.callbacks[0] = SignalAt()
    again.callbacks[0].on_train_batch_end = lambda *a: None  # no second signal
    again.resume(train, val)
    assert [h["epoch"] for h in again.history] == [1, 2, 3]
    assert _without_time(again.history) == _without_time(full.history)
    for p, q in zip(full.model.parameters(), again.model.parameters()):
        assert torch.equal(p, q)


def test_a_refused_state_changes_nothing():
    t = _trainer(epochs=1)
    t.fit(_data(), _data(24, seed=1))
    sd = t.state_dict()
    bare = fl.Trainer(_trainer().model, "mse", "adam", scheduler="cosine", quiet=True)
    before = {k: v.clone() for k, v in bare.model.state_dict().items()}
    with pytest.raises(fl.ResumeMismatchError):
        bare.load_state_dict(sd)  # the EarlyStopping state has no home
    assert all(torch.equal(v, bare.model.state_dict()[k]) for k, v in before.items())
    assert bare.optimizer.state_dict()["state"] == {} and bare.state.step == 0 and bare.history == []


def test_cleanup_reaches_every_callback_and_handlers_follow_the_callback_list(tmp_path):
    import signal

    class Boom(fl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            raise RuntimeError("boom")

        def on_exception(self, trainer, error):
            raise ValueError("a clean-up that fails")

    prev = signal.getsignal(signal.SIGINT)
    t = _trainer(epochs=2, run_dir=str(tmp_path / "run"))
    t.callbacks[0] = Boom()
    with pytest.raises(ValueError, match="a clean-up that fails"):
        t.fit(_data(), _data(24, seed=1))
    assert signal.getsignal(signal.SIGINT) is prev  # the Checkpointer still restored the handlers
    import json

    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "failed"

    seen = []

    class Late(fl.Callback):
        def on_checkpoint(self, trainer, path):
            seen.append(path)

    ok = _trainer(epochs=1)
    ok.fit(_data(), _data(24, seed=1))
    ok.callbacks.append(Late())  # added after fit: still reached
    ok.notify_checkpoint("x")
    assert seen == ["x"]


def test_the_epoch_grad_norm_leaves_out_skipped_steps():
    """The mean over the applied steps; NaN only when every step of the epoch was skipped."""
    from fitloop.state import finite_mean

    assert finite_mean(torch.tensor([1.0, float("nan"), 3.0, float("inf")])).item() == 2.0
    assert finite_mean(torch.tensor([float("nan")])).isnan()
