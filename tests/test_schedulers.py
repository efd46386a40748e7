"""Learning-rate schedulers: by instance, name, (name, kwargs) or factory; per-epoch and per-step
intervals; ReduceLROnPlateau on a monitored metric; warmup_cosine and OneCycleLR."""

import pytest
import torch
from helpers import regression_data, trainer_for
from torch import nn

import fitloop as fl
from fitloop.optim import warmup_cosine


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
