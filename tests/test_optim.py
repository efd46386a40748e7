"""fitloop.optim: losses, optimizers and LR schedulers by name, (name, kwargs), instance or factory;
the messages for bad input; the fused default."""

import math

import pytest
import torch
from helpers import exactly
from torch import nn

import fitloop as fl
from fitloop.optim import (
    LOSSES,
    SCHEDULER_NAMES,
    make_loss,
    make_optimizer,
    make_scheduler,
    optimizer_names,
    task_of_loss,
    warmup_cosine,
)


def params():
    return list(nn.Linear(3, 1).parameters())


def sgd(lr=0.1):
    return torch.optim.SGD(params(), lr=lr)


# ---------------------------------------------------------------- through the Trainer


# SparseAdam needs sparse gradients (nn.Embedding(sparse=True)) and Muon 2-d parameters only:
# both are tested below with models that fit them.
@pytest.mark.parametrize("name", sorted(set(optimizer_names()) - {"sparseadam", "muon"}))
def test_every_torch_optimizer_by_name_trains(name, regression_data):
    X, y = regression_data
    lrs = {"lbfgs": 0.5, "sgd": 0.05, "asgd": 0.05, "adadelta": 10.0, "rprop": 0.01, "adagrad": 0.3, "adafactor": 0.3}
    lr = lrs.get(name, 0.03)
    fl.seed_everything(0)
    tr = fl.Trainer(nn.Linear(3, 1), loss="mse", optimizer=name, lr=lr, epochs=15, batch_size=50, quiet=True)
    hist = tr.fit((X, y))
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.5, name


def test_optimizer_by_instance_and_name_with_kwargs(regression_data):
    X, y = regression_data
    model = nn.Linear(3, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    tr = fl.Trainer(model, optimizer=opt, epochs=1, quiet=True)
    assert tr.optimizer is opt and opt.param_groups[0]["lr"] == 0.1  # the instance keeps its lr
    tr2 = fl.Trainer(nn.Linear(3, 1), optimizer=("sgd", {"momentum": 0.5}), lr=0.2, quiet=True)
    assert tr2.optimizer.param_groups[0]["momentum"] == 0.5 and tr2.optimizer.param_groups[0]["lr"] == 0.2


def test_unknown_loss_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"loss: unknown name 'msee'\. Did you mean 'mse'\?.*Valid names: mse"):
        fl.Trainer(nn.Linear(1, 1), loss="msee")


def test_unknown_optimizer_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"optimizer: unknown name 'adamm'.*Valid names: .*adam.*sgd"):
        fl.Trainer(nn.Linear(1, 1), optimizer="adamm")


def test_sparse_adam_and_muon_with_models_that_fit_them():
    class Bag(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 1, sparse=True)

        def forward(self, idx):
            return self.emb(idx).squeeze(-1)

    idx = torch.arange(10)
    tr = fl.Trainer(Bag(), optimizer="sparseadam", lr=0.1, epochs=30, batch_size=5, quiet=True)
    hist = tr.fit((idx, idx.float()))
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.5
    # Muon orthogonalises 2-d weight updates; a bias-free linear layer is its home ground.
    fl.seed_everything(0)
    X = torch.randn(256, 8)
    W = torch.randn(4, 8)
    tr = fl.Trainer(nn.Linear(8, 4, bias=False), optimizer="muon", lr=0.05, epochs=30, batch_size=64, quiet=True)
    hist = tr.fit((X, X @ W.T))
    assert hist[-1]["loss"] < hist[0]["loss"] * 0.5


def test_adam_is_fused_by_default_sgd_is_not():
    m = nn.Linear(3, 1)
    assert fl.Trainer(m, optimizer="adam", quiet=True).optimizer.defaults["fused"] is True
    assert fl.Trainer(m, optimizer="adamw", fused=False, quiet=True).optimizer.defaults["fused"] in (None, False)
    assert fl.Trainer(m, optimizer="sgd", quiet=True).optimizer.defaults["fused"] in (None, False)
    assert fl.Trainer(m, optimizer=("adam", {"foreach": True}), quiet=True).optimizer.defaults["foreach"] is True



# ---------------------------------------------------------------- losses


def test_make_loss_by_name_is_case_insensitive_and_builds_a_fresh_module():
    for name, cls in LOSSES.items():
        loss = make_loss(name.upper())
        assert type(loss) is cls
    assert make_loss("mse") is not make_loss("mse")


def test_make_loss_passes_a_callable_through():
    fn = lambda out, y: (out - y).abs().sum()
    assert make_loss(fn) is fn
    module = nn.SmoothL1Loss(beta=0.5)
    assert make_loss(module) is module


def test_make_loss_unknown_name_suggests_and_lists_the_names():
    with pytest.raises(ValueError, match=exactly(
            "loss: unknown name 'crossentropy'. Did you mean 'cross_entropy'? Valid names: mse, l1, mae, huber, "
            "smooth_l1, cross_entropy, bce_with_logits; or pass any callable(output, target).")):
        make_loss("crossentropy")
    with pytest.raises(ValueError, match=exactly(
            "loss: unknown name 'zzz'. Valid names: mse, l1, mae, huber, smooth_l1, cross_entropy, "
            "bce_with_logits; or pass any callable(output, target).")):
        make_loss("zzz")  # nothing close: no suggestion


def test_make_loss_rejects_a_non_callable():
    with pytest.raises(TypeError, match=exactly("loss: expected a name or a callable, got int.")):
        make_loss(3)


def test_task_of_loss():
    assert task_of_loss(make_loss("mse")) == "regression"
    assert task_of_loss(make_loss("mae")) == "regression"
    assert task_of_loss(make_loss("huber")) == "regression"
    assert task_of_loss(make_loss("smooth_l1")) == "regression"
    assert task_of_loss(make_loss("cross_entropy")) == "multiclass"
    assert task_of_loss(nn.NLLLoss()) == "multiclass"
    assert task_of_loss(make_loss("bce_with_logits")) == "binary"
    assert task_of_loss(lambda out, y: out.sum()) is None
    assert task_of_loss(nn.KLDivLoss()) is None


# ---------------------------------------------------------------- optimizers


def test_optimizer_names_are_every_torch_optimizer_class():
    names = optimizer_names()
    assert {"adam", "adamw", "sgd", "lbfgs", "rmsprop", "sparseadam"} <= set(names)
    assert "optimizer" not in names
    assert all(isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) for cls in names.values())
    assert names["adamw"] is torch.optim.AdamW and names["sgd"] is torch.optim.SGD


def test_make_optimizer_name_is_case_and_underscore_insensitive():
    assert type(make_optimizer("AdamW", params(), 0.01)) is torch.optim.AdamW
    assert type(make_optimizer("Adam_W", params(), 0.01)) is torch.optim.AdamW
    assert type(make_optimizer("RMSprop", params(), 0.01)) is torch.optim.RMSprop


def test_make_optimizer_name_and_kwargs_pair():
    opt = make_optimizer(("sgd", {"momentum": 0.9}), params(), 0.2)
    assert type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["lr"] == 0.2
    # the pair's kwargs are applied over `kwargs`; both reach the optimizer
    opt = make_optimizer(("sgd", {"momentum": 0.9}), params(), 0.2, kwargs={"momentum": 0.1, "nesterov": True})
    assert opt.param_groups[0]["momentum"] == 0.9 and opt.param_groups[0]["nesterov"] is True


def test_make_optimizer_lr_none_keeps_torch_default():
    assert make_optimizer("sgd", params(), None).param_groups[0]["lr"] == torch.optim.SGD(params()).defaults["lr"]
    assert make_optimizer("adam", params(), None).param_groups[0]["lr"] == 1e-3


def test_make_optimizer_unknown_name_suggests_and_lists_the_names():
    valid = ", ".join(sorted(optimizer_names()))
    with pytest.raises(ValueError, match=exactly(
            f"optimizer: unknown name 'adamm'. Did you mean 'adam'? Valid names: {valid}; "
            "or pass an Optimizer instance.")):
        make_optimizer("adamm", params(), 0.1)


def test_make_optimizer_bad_keyword_names_the_class_and_the_keywords():
    with pytest.raises(TypeError, match=exactly(
            "optimizer 'sgd': SGD.__init__() got an unexpected keyword argument 'betas'. Check the keyword "
            "arguments ['betas', 'lr'] against torch.optim.SGD.")):
        make_optimizer(("sgd", {"betas": (0.9, 0.99)}), params(), 0.1)


def test_make_optimizer_instance_is_used_as_is_and_lr_overrides_every_group():
    a, b = nn.Linear(2, 2), nn.Linear(2, 1)
    opt = torch.optim.SGD([{"params": a.parameters()}, {"params": b.parameters(), "lr": 0.5}], lr=0.1)
    assert make_optimizer(opt, [], None) is opt
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]  # lr=None: the instance keeps its rates
    torch.optim.lr_scheduler.StepLR(opt, step_size=1)  # records each group's initial_lr
    assert make_optimizer(opt, [], 0.02) is opt
    assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.02, 0.02]


def test_make_optimizer_factory_gets_the_params_and_the_lr_override():
    seen = []

    def factory(ps):
        seen.append(ps)
        return torch.optim.SGD(ps, lr=1.0, momentum=0.3)

    ps = params()
    opt = make_optimizer(factory, ps, 0.2)
    assert seen == [ps] and type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["lr"] == 0.2 and opt.param_groups[0]["momentum"] == 0.3
    assert make_optimizer(factory, params(), None).param_groups[0]["lr"] == 1.0


def test_make_optimizer_factory_returning_something_else_is_a_type_error():
    with pytest.raises(TypeError, match=exactly("optimizer: the factory returned list, not a torch Optimizer.")):
        make_optimizer(lambda ps: list(ps), params(), 0.1)


def test_make_optimizer_rejects_other_types():
    with pytest.raises(TypeError, match=exactly(
            "optimizer: expected a name, a (name, kwargs) pair, an Optimizer or a factory, got int.")):
        make_optimizer(42, params(), 0.1)


_HAS_FUSED = sorted(n for n in ("adagrad", "adam", "adamw", "sgd") if n in optimizer_names())


@pytest.mark.parametrize("name", _HAS_FUSED)
def test_fused_by_default_for_adam_and_adamw_only(name):
    """Of the optimizers with a fused kernel, only Adam and AdamW run fused unless asked."""
    opt = make_optimizer(name, params(), 0.01)
    if name in ("adam", "adamw"):
        assert opt.defaults["fused"] is True
    else:
        assert opt.defaults["fused"] in (None, False)
    assert make_optimizer(name, params(), 0.01, fused=True).defaults["fused"] is True  # asked for: on
    assert make_optimizer(name, params(), 0.01, fused=False).defaults["fused"] in (None, False)


@pytest.mark.parametrize("extra", [{"foreach": True}, {"fused": False}])
def test_fused_default_steps_aside_for_the_users_own_choice(extra):
    opt = make_optimizer(("adam", extra), params(), 0.01)
    assert opt.defaults["fused"] in (None, False)
    for k, v in extra.items():
        assert opt.defaults[k] is v


def test_fused_default_never_reaches_an_optimizer_without_the_option():
    opt = make_optimizer("rmsprop", params(), 0.01, fused=True)  # RMSprop has no fused kernel: no error
    assert "fused" not in opt.defaults


# ---------------------------------------------------------------- schedulers


def build(scheduler, opt=None, *, steps_per_epoch=4, epochs=3, interval=None):
    return make_scheduler(scheduler, opt if opt is not None else sgd(), steps_per_epoch=steps_per_epoch,
                          epochs=epochs, interval=interval)


SCHEDULERS = [
    ("step", torch.optim.lr_scheduler.StepLR, "epoch"),
    (("multistep", {"milestones": [1, 2]}), torch.optim.lr_scheduler.MultiStepLR, "epoch"),
    ("exponential", torch.optim.lr_scheduler.ExponentialLR, "epoch"),
    ("cosine", torch.optim.lr_scheduler.CosineAnnealingLR, "epoch"),
    ("plateau", torch.optim.lr_scheduler.ReduceLROnPlateau, "epoch"),
    ("onecycle", torch.optim.lr_scheduler.OneCycleLR, "step"),
    ("warmup_cosine", torch.optim.lr_scheduler.LambdaLR, "step"),
    ("linear", torch.optim.lr_scheduler.LinearLR, "epoch"),
    ("constant", torch.optim.lr_scheduler.ConstantLR, "epoch"),
]


def test_every_scheduler_name_is_in_the_table_below():
    assert sorted(s if isinstance(s, str) else s[0] for s, _, _ in SCHEDULERS) == sorted(SCHEDULER_NAMES)


@pytest.mark.parametrize("scheduler,cls,natural", SCHEDULERS)
def test_every_scheduler_name_and_its_natural_interval(scheduler, cls, natural):
    sched, interval = build(scheduler)
    assert type(sched) is cls and interval == natural


def test_schedules_by_name_count_their_length_in_the_interval_unit():
    assert build("cosine")[0].T_max == 3  # epochs
    assert build("cosine", interval="step")[0].T_max == 12  # optimizer steps
    assert build("linear")[0].total_iters == 3
    assert build("linear", interval="step")[0].total_iters == 12
    assert build("onecycle")[0].total_steps == 12
    assert build("onecycle", interval="epoch")[0].total_steps == 3
    assert build(("cosine", {"T_max": 7}))[0].T_max == 7  # the user's value wins


def test_onecycle_peaks_at_the_optimizers_lr_by_default():
    sched, _ = build("onecycle", sgd(lr=0.3))
    assert sched.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.3)
    sched, _ = build(("onecycle", {"max_lr": 0.05}), sgd(lr=0.3))
    assert sched.optimizer.param_groups[0]["max_lr"] == pytest.approx(0.05)


def test_warmup_cosine_by_name_warmup_epochs_in_steps():
    sched, interval = build(("warmup_cosine", {"warmup_epochs": 1}), steps_per_epoch=4, epochs=3)
    factor = sched.lr_lambdas[0]
    assert interval == "step"
    assert [factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # 4 warmup steps
    assert factor(4) == pytest.approx(1.0) and factor(12) == pytest.approx(0.0, abs=1e-12)


def test_warmup_cosine_factors():
    opt = sgd(lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=2, total_steps=6, min_lr_ratio=0.1)
    factor = sched.lr_lambdas[0]
    cos = lambda progress: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))
    expected = [0.5, 1.0, 1.0, cos(0.25), cos(0.5), cos(0.75), 0.1, 0.1]
    assert [factor(s) for s in range(8)] == pytest.approx(expected)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)  # the first step already warms up


def test_scheduler_instance_and_interval():
    opt = sgd()
    step = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    assert build(step, opt) == (step, "epoch")
    assert build(step, opt, interval="step") == (step, "step")
    cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    assert build(cycle, opt) == (cycle, "step")  # OneCycleLR is defined in steps
    assert build(cycle, opt, interval="epoch") == (cycle, "epoch")  # declared wins


def test_scheduler_factory():
    opt = sgd()
    sched, interval = build(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.5), opt)
    assert type(sched) is torch.optim.lr_scheduler.ExponentialLR and sched.optimizer is opt
    assert interval == "epoch"
    with pytest.raises(TypeError, match=exactly("scheduler: the factory returned int, not a torch LR scheduler.")):
        build(lambda o: 3, opt)


def test_scheduler_rejects_other_types():
    with pytest.raises(TypeError, match=exactly(
            "scheduler: expected a name, a (name, kwargs) pair, a scheduler or a factory, got int.")):
        build(5)


def test_make_scheduler_unknown_name_suggests_and_lists_the_names():
    with pytest.raises(ValueError, match=exactly(
            "scheduler: unknown name 'cosin'. Did you mean 'cosine'? Valid names: step, multistep, exponential, "
            "cosine, plateau, onecycle, warmup_cosine, linear, constant; or pass a scheduler instance.")):
        build("cosin")
    with pytest.raises(ValueError, match=exactly(
            "scheduler: unknown name 'zzz'. Valid names: step, multistep, exponential, cosine, plateau, onecycle, "
            "warmup_cosine, linear, constant; or pass a scheduler instance.")):
        build(("zzz", {}))


def test_bad_scheduler_interval():
    with pytest.raises(ValueError, match=exactly("scheduler_interval: expected 'step' or 'epoch', got 'batch'.")):
        build("step", interval="batch")


def test_monitor_is_an_option_of_plateau_only():
    sched, interval = build(("plateau", {"monitor": "val_accuracy", "mode": "max", "patience": 3}))
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau) and interval == "epoch"
    assert sched.monitor == "val_accuracy" and sched.mode == "max" and sched.patience == 3
    assert not hasattr(build("plateau")[0], "monitor")  # the Trainer then uses the config's monitor
    for name in ("step", "cosine", "onecycle"):
        with pytest.raises(ValueError, match=exactly(
                "scheduler: 'monitor' is an option of 'plateau' (ReduceLROnPlateau) only.")):
            build((name, {"monitor": "val_loss"}))


def test_reduce_on_plateau_per_step_is_refused():
    message = exactly("scheduler: ReduceLROnPlateau steps on a monitored metric once per epoch; "
                      "use scheduler_interval='epoch'.")
    with pytest.raises(ValueError, match=message):
        build("plateau", interval="step")
    opt = sgd()
    with pytest.raises(ValueError, match=message):
        build(torch.optim.lr_scheduler.ReduceLROnPlateau(opt), opt, interval="step")
    with pytest.raises(ValueError, match=message):
        build(lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o), opt, interval="step")
