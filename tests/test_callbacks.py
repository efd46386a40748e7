"""Callbacks: the exact event order, complete logs, stopping by flag, EarlyStopping."""

import pytest
import torch
from torch import nn

import fitloop as fl


def regression_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(n, generator=g)
    return X, y


class Recorder(fl.Callback):
    """Records every event with its arguments (and a copy of the logs it saw)."""

    def __init__(self):
        self.events = []
        self.seen_logs = []

    def on_fit_start(self, trainer):
        self.events.append(("on_fit_start",))

    def on_epoch_start(self, trainer, epoch):
        self.events.append(("on_epoch_start", epoch))

    def on_train_batch_end(self, trainer, step, loss):
        assert isinstance(loss, torch.Tensor)
        self.events.append(("on_train_batch_end", step))

    def on_optimizer_step(self, trainer, step):
        self.events.append(("on_optimizer_step", step))

    def on_validation_end(self, trainer, logs):
        self.events.append(("on_validation_end", logs["epoch"]))
        self.seen_logs.append(("validation", dict(logs)))

    def on_epoch_end(self, trainer, epoch, logs):
        self.events.append(("on_epoch_end", epoch))
        self.seen_logs.append(("epoch", dict(logs)))

    def on_checkpoint(self, trainer, path):
        self.events.append(("on_checkpoint", path))

    def on_fit_end(self, trainer):
        self.events.append(("on_fit_end",))


class FakeCheckpointer(fl.Callback):
    """Stands in for the run-directory callback: writes nothing, announces a checkpoint each epoch."""

    def on_epoch_end(self, trainer, epoch, logs):
        trainer.notify_checkpoint(f"ckpt/epoch-{epoch}")


def make_trainer(callbacks, **kw):
    model = nn.Linear(3, 1)
    settings = dict(epochs=2, batch_size=32, lr=0.01, quiet=True, seed=0)
    settings.update(kw)
    return fl.Trainer(model, loss="mse", optimizer="sgd", callbacks=callbacks, **settings)


def test_exact_event_order_two_epochs():
    rec = Recorder()
    trainer = make_trainer([rec, FakeCheckpointer()])
    X, y = regression_data(64)
    trainer.fit((X, y), regression_data(32, seed=1))
    assert rec.events == [
        ("on_fit_start",),
        ("on_epoch_start", 1),
        ("on_train_batch_end", 1),
        ("on_optimizer_step", 1),
        ("on_train_batch_end", 2),
        ("on_optimizer_step", 2),
        ("on_validation_end", 1),
        ("on_epoch_end", 1),
        ("on_checkpoint", "ckpt/epoch-1"),
        ("on_epoch_start", 2),
        ("on_train_batch_end", 3),
        ("on_optimizer_step", 3),
        ("on_train_batch_end", 4),
        ("on_optimizer_step", 4),
        ("on_validation_end", 2),
        ("on_epoch_end", 2),
        ("on_checkpoint", "ckpt/epoch-2"),
        ("on_fit_end",),
    ]


def test_no_validation_end_without_validation_data():
    rec = Recorder()
    make_trainer([rec], epochs=1).fit(regression_data(64))
    names = [e[0] for e in rec.events]
    assert "on_validation_end" not in names
    assert names == ["on_fit_start", "on_epoch_start", "on_train_batch_end", "on_optimizer_step",
                     "on_train_batch_end", "on_optimizer_step", "on_epoch_end", "on_fit_end"]


def test_logs_complete_before_first_callback_and_shared():
    class Peek(fl.Callback):
        def __init__(self):
            self.keys = []

        def on_validation_end(self, trainer, logs):
            self.keys.append(set(logs))
            logs["extra_from_first"] = 1.0  # a later callback (and on_epoch_end) sees it

    peek, rec = Peek(), Recorder()
    trainer = make_trainer([peek, rec], epochs=2, clip_grad_norm=10.0)
    trainer.fit(regression_data(64), regression_data(32, seed=1))
    required = {"epoch", "loss", "mse", "rmse", "mae", "r2", "val_loss", "val_mse", "val_rmse", "val_mae",
                "val_r2", "lr", "time", "grad_norm"}
    for keys in peek.keys:
        assert required <= keys
    kinds = [k for k, _ in rec.seen_logs]
    assert kinds == ["validation", "epoch", "validation", "epoch"]
    for _, logs in rec.seen_logs:
        assert "extra_from_first" in logs
        assert all(not isinstance(v, torch.Tensor) for v in logs.values())  # plain floats
    # The logs are the history records.
    assert trainer.history[-1] is not None and trainer.history[-1]["epoch"] == 2
    assert "extra_from_first" in trainer.history[-1]


def test_callback_stops_by_flag_without_raising():
    class StopAfterFirst(fl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            trainer.should_stop = True
            trainer.stop_reason = "enough"

    rec = Recorder()
    trainer = make_trainer([StopAfterFirst(), rec], epochs=5)
    history = trainer.fit(regression_data(64))
    assert len(history) == 1
    assert trainer.stop_reason == "enough"
    assert rec.events[-1] == ("on_fit_end",)


def test_non_callback_rejected():
    with pytest.raises(TypeError, match="Callback"):
        make_trainer([object()])


# ---------------------------------------------------------------------------------- EarlyStopping


class Scripted(fl.Callback):
    """Writes a scripted value into the logs before EarlyStopping reads them."""

    def __init__(self, values):
        self.values = list(values)

    def on_epoch_end(self, trainer, epoch, logs):
        logs["val_score"] = self.values[epoch - 1]


def test_early_stopping_patience_min_delta_and_reason(capsys):
    # Improvements smaller than min_delta do not count.
    values = [1.0, 0.5, 0.45, 0.48, 0.3, 0.2]
    stopper = fl.EarlyStopping("val_score", mode="min", patience=2, min_delta=0.1, restore_best_weights=False)
    trainer = make_trainer([Scripted(values), stopper], epochs=6, quiet=False)
    history = trainer.fit(regression_data(64))
    # best 0.5 at epoch 2; epochs 3 (0.45: by less than 0.1) and 4 do not improve -> stop after epoch 4
    assert len(history) == 4
    assert stopper.best == 0.5 and stopper.best_epoch == 2 and stopper.stopped_epoch == 4
    assert trainer.stop_reason == stopper.reason
    assert "val_score did not improve" in stopper.reason and "epoch 2" in stopper.reason
    assert "Stopped: early stopping at epoch 4" in capsys.readouterr().out


def test_early_stopping_mode_inferred_for_accuracy():
    assert fl.EarlyStopping("val_accuracy").mode == "max"
    assert fl.EarlyStopping("val_r2").mode == "max"
    assert fl.EarlyStopping("val_loss").mode == "min"
    assert fl.EarlyStopping().restore_best_weights is True
    with pytest.raises(ValueError, match="mode"):
        fl.EarlyStopping(mode="up")


def test_early_stopping_missing_monitor_is_a_clear_error():
    with pytest.raises(KeyError, match="val_loss"):
        make_trainer([fl.EarlyStopping("val_loss")], epochs=1).fit(regression_data(64))


def test_early_stopping_restores_best_weights():
    values = [3.0, 1.0, 2.0, 2.5, 2.7]
    snapshots = {}

    class Snap(fl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            snapshots[epoch] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    stopper = fl.EarlyStopping("val_score", patience=2)
    trainer = make_trainer([Scripted(values), Snap(), stopper], epochs=5, lr=0.05)
    trainer.fit(regression_data(64))
    assert stopper.best_epoch == 2 and stopper.stopped_epoch == 4
    final = trainer.model.state_dict()
    for k in final:
        assert torch.equal(final[k], snapshots[2][k])
        assert not torch.equal(final[k], snapshots[4][k])


def test_early_stopping_restore_off_keeps_last_weights():
    last = {}

    class Snap(fl.Callback):
        def on_epoch_end(self, trainer, epoch, logs):
            last.update({k: v.clone() for k, v in trainer.model.state_dict().items()})

    stopper = fl.EarlyStopping("val_score", patience=1, restore_best_weights=False)
    trainer = make_trainer([Scripted([1.0, 2.0, 3.0]), Snap(), stopper], epochs=3, lr=0.05)
    trainer.fit(regression_data(64))
    assert stopper.stopped_epoch == 2 and len(trainer.history) == 2
    assert all(torch.equal(last[k], v) for k, v in trainer.model.state_dict().items())


def test_early_stopping_state_dict_round_trip():
    stopper = fl.EarlyStopping("val_score", patience=3)
    make_trainer([Scripted([1.0, 0.5]), stopper], epochs=2).fit(regression_data(64))
    other = fl.EarlyStopping("val_score", patience=3)
    other.load_state_dict(stopper.state_dict())
    assert (other.best, other.best_epoch, other.wait) == (0.5, 2, 0)
