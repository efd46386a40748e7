"""fitloop.step: the one training step. Accumulation over micro-batches (equal to one big batch),
clipping by norm or by value (the norm is logged), the penalty and noise helpers, and the step used on
its own (as the LR finder does) equal to a hand-written step.

The step's pieces (fitloop.step.functions) are checked against torch's own clipping, and each path that
composes them (the eager step with the fast path on and off, the closure step of LBFGS) against a
hand-written step, for clipping by norm, clipping by value and a NaN batch. tests/test_compiled.py
compares the compiled step with the eager one.
"""

import copy

import pytest
import torch
from helpers import params_of, regression_data, trainer_for
from torch import nn

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


# ---------------------------------------------------------------------------------- the step on its own


def test_penalty_and_input_noise_helpers():
    from fitloop.step import add_input_noise, penalty

    ps = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0]])]
    assert penalty(ps, "l2", 0.5).item() == 0.5 * (1 + 4 + 9)
    assert penalty(ps, "l1", 2.0).item() == 2.0 * (1 + 2 + 3)
    ints = torch.arange(4)
    assert add_input_noise(ints, 0.1) is ints  # integer inputs (embeddings) are never noised
    x = torch.zeros(3)
    assert add_input_noise(x, 0.0) is x
    torch.manual_seed(0)
    noisy = add_input_noise(x, 0.5)
    torch.manual_seed(0)
    assert torch.equal(noisy, 0.5 * torch.randn(3))


def test_a_single_training_step_equals_a_hand_written_one():
    import fitloop as fl
    from fitloop.step import TrainingStep

    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    hand = copy.deepcopy(model)
    t = fl.Trainer(model, "mse", "sgd", lr=0.1, quiet=True, penalty=("l2", 0.01), clip_grad_norm=0.5)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    loss, out = TrainingStep(t, schedule=False)(x, y)
    opt = torch.optim.SGD(hand.parameters(), lr=0.1)
    hand_loss = nn.functional.mse_loss(hand(x), y)
    (hand_loss + 0.01 * sum(p.pow(2).sum() for p in hand.parameters())).backward()
    torch.nn.utils.clip_grad_norm_(list(hand.parameters()), 0.5)
    opt.step()
    assert torch.equal(loss, hand_loss.detach()) and out.shape == (8, 1)
    for p, q in zip(model.parameters(), hand.parameters()):
        assert torch.equal(p, q)
    assert t.state.step == 1 and len(t.state.grad_norms) == 1


# ---------------------------------------------------------------------------------- the step's pieces


def _grads(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    (model(10 * torch.randn(16, 3)) ** 2).mean().backward()
    return model


def test_clip_is_torchs_clip_grad_norm_and_clip_grad_value_exactly():
    from fitloop.step.functions import clip

    for max_norm, max_value in [(0.05, None), (1e6, None), (None, 0.01), (0.05, 0.01), (None, None)]:
        ref, mine = _grads(), _grads()
        ref_params = list(ref.parameters())
        norm = torch.nn.utils.get_total_norm([p.grad for p in ref_params])
        if max_norm:
            norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
        if max_value:
            torch.nn.utils.clip_grad_value_(ref_params, max_value)
        clipped, my_norm = clip([p.grad for p in mine.parameters()], max_norm, max_value)
        for p, g in zip(ref_params, clipped):
            assert torch.equal(p.grad, g), (max_norm, max_value)
        if max_norm or max_value:
            assert torch.equal(my_norm, norm)
        else:
            assert my_norm is None


@pytest.mark.parametrize("fast", ["1", "0"])
def test_clip_in_place_is_torchs_clipping_exactly_and_keeps_the_tensors(fast, monkeypatch):
    """`clip_` with the public per-tensor edits and with the fast path's foreach kernels: the same values as
    torch's clip_grad_norm_ / clip_grad_value_ (and as the out-of-place `clip`), in the same tensors."""
    from fitloop import _fastpath
    from fitloop.step.functions import clip, clip_

    monkeypatch.setenv("FITLOOP_FASTPATH", fast)
    kernels = dict(scale=_fastpath.scale_grads(), clamp=_fastpath.clamp_grads())
    for max_norm, max_value in [(0.05, None), (1e6, None), (None, 0.01), (0.05, 0.01), (None, None)]:
        ref, mine, out_of_place = _grads(), _grads(), _grads()
        ref_params = list(ref.parameters())
        norm = torch.nn.utils.get_total_norm([p.grad for p in ref_params])
        if max_norm:
            norm = torch.nn.utils.clip_grad_norm_(ref_params, max_norm)
        if max_value:
            torch.nn.utils.clip_grad_value_(ref_params, max_value)
        grads = [p.grad for p in mine.parameters()]
        pointers = [g.data_ptr() for g in grads]
        my_norm = clip_(grads, max_norm, max_value, **kernels)
        clipped, _ = clip([p.grad for p in out_of_place.parameters()], max_norm, max_value)
        for p, q, g, ptr, c in zip(ref_params, mine.parameters(), grads, pointers, clipped):
            assert q.grad is g and g.data_ptr() == ptr
            assert torch.equal(p.grad, g) and torch.equal(c, g), (max_norm, max_value)
        if max_norm or max_value:
            assert torch.equal(my_norm, norm)
        else:
            assert my_norm is None


def test_the_nonfinite_check_pieces():
    from fitloop.step.functions import all_finite, finite_flags, first_nonfinite, loss_is_finite

    ok, bad = torch.ones(3), torch.tensor([1.0, float("nan")])
    assert finite_flags([ok, bad, ok.double()]).tolist() == [True, False, True]
    for limit in (0, 1 << 20):  # tensor by tensor, or one concatenated copy
        assert not all_finite([ok, bad], concat_limit=limit)
        assert all_finite([ok, ok], concat_limit=limit)
    assert not all_finite([torch.tensor(float("inf"))])
    assert first_nonfinite(["a", "b", "c"], [True, False, False]) == "b"
    assert first_nonfinite(["a"], [True]) is None
    assert loss_is_finite(torch.tensor(1.0)) and not loss_is_finite(torch.tensor(float("-inf")))


def test_the_nonfinite_check_takes_tensors_on_several_devices():
    """A model split over devices: the flags are gathered on the first tensor's device (the meta device
    stands in for a second one here)."""
    from fitloop.step.functions import all_finite, finite_flags

    meta, cpu = torch.ones(2, device="meta"), torch.ones(3)
    assert finite_flags([meta, cpu]).device.type == "meta" and finite_flags([meta, cpu]).shape == (2,)
    assert all_finite([meta, cpu]).device.type == "meta"
    assert finite_flags([]).shape == (0,)


def test_first_nonfinite_of_names_the_first_bad_tensor():
    from fitloop.step.functions import first_nonfinite_of

    ok, bad = torch.ones(3), torch.tensor([1.0, float("inf")])
    assert first_nonfinite_of(["a", "b", "c"], [ok, bad, bad]) == "b"
    assert first_nonfinite_of(["a", "b"], [ok, ok]) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_nonfinite_check_on_cuda_and_cpu_together():
    from fitloop.step.functions import all_finite, finite_flags, first_nonfinite

    tensors = [torch.ones(2, device="cuda"), torch.tensor([1.0, float("nan")]), torch.ones(3, device="cuda")]
    assert finite_flags(tensors).tolist() == [True, False, True]
    assert not all_finite(tensors) and all_finite([tensors[0], torch.ones(1)])
    assert first_nonfinite(["a", "b", "c"], finite_flags(tensors).tolist()) == "b"


# ---------------------------------------------------------------------------------- every path, by hand


PATHS = {  # the eager step with the fast path on and off, and LBFGS's closure step
    "eager": ("sgd", "1"), "eager-fastpath-off": ("sgd", "0"), "closure": ("lbfgs", "1"),
    "closure-fastpath-off": ("lbfgs", "0"),
}
CLIPS = {"norm": dict(clip_grad_norm=0.05), "value": dict(clip_grad_value=0.01),
         "norm+value": dict(clip_grad_norm=0.05, clip_grad_value=0.01)}


def _hand_step(model, optimizer, x, y, clips):
    """One step written with torch only: MSE, clip_grad_norm_ then clip_grad_value_, step."""
    params = list(model.parameters())

    def closure():
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        if "clip_grad_norm" in clips:
            torch.nn.utils.clip_grad_norm_(params, clips["clip_grad_norm"])
        if "clip_grad_value" in clips:
            torch.nn.utils.clip_grad_value_(params, clips["clip_grad_value"])
        return loss

    if isinstance(optimizer, torch.optim.LBFGS):
        return optimizer.step(closure)
    loss = closure()
    optimizer.step()
    return loss


@pytest.mark.parametrize("clips", list(CLIPS))
@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_clips_as_torch_does(path, clips, monkeypatch):
    import fitloop as fl
    from fitloop.step import TrainingStep

    optimizer, fast = PATHS[path]
    monkeypatch.setenv("FITLOOP_FASTPATH", fast)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    hand = copy.deepcopy(model)
    t = fl.Trainer(model, "mse", optimizer, lr=0.1, quiet=True, **CLIPS[clips])
    hand_opt = type(t.optimizer)(hand.parameters(), lr=0.1)
    step = TrainingStep(t, schedule=False)
    for i in range(3):
        x, y = 10 * torch.randn(8, 3), torch.randn(8, 1)
        loss, _ = step(x, y)
        hand_loss = _hand_step(hand, hand_opt, x, y, CLIPS[clips])
        assert torch.equal(loss, hand_loss.detach()), i
        for p, q in zip(model.parameters(), hand.parameters()):
            assert torch.equal(p, q), (i, path, clips)
    assert t.state.step == 3 and len(t.state.grad_norms) == 3  # one norm per step (LBFGS: its first evaluation)


@pytest.mark.parametrize("clips", list(CLIPS))
@pytest.mark.parametrize("fast", ["1", "0"])
def test_the_eager_step_clips_the_gradients_in_place(fast, clips, monkeypatch):
    """The optimizer steps on the very tensors backward wrote (same object, same storage): DDP's bucket
    views, FSDP's DTensor gradients and users' gradient hooks rely on `.grad` keeping its identity."""
    import fitloop as fl
    from fitloop.step import TrainingStep

    monkeypatch.setenv("FITLOOP_FASTPATH", fast)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    t = fl.Trainer(model, "mse", "sgd", lr=0.1, quiet=True, **CLIPS[clips])
    after_backward, at_step = [], []
    for p in model.parameters():
        p.register_post_accumulate_grad_hook(lambda p: after_backward.append((p.grad, p.grad.data_ptr())))
    t.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: at_step.extend((p.grad, p.grad.data_ptr()) for p in model.parameters()))
    TrainingStep(t, schedule=False)(10 * torch.randn(8, 3), torch.randn(8, 1))
    assert t.state.step == 1 and len(t.state.grad_norms) == 1 and len(at_step) == 4
    by_param = {id(g): (g, ptr) for g, ptr in after_backward}
    for grad, ptr in at_step:
        assert by_param[id(grad)][0] is grad and by_param[id(grad)][1] == ptr


@pytest.mark.parametrize("path", list(PATHS))
def test_every_path_skips_a_nan_batch_without_touching_anything(path, monkeypatch):
    import fitloop as fl
    from fitloop.step import TrainingStep

    optimizer, fast = PATHS[path]
    monkeypatch.setenv("FITLOOP_FASTPATH", fast)
    torch.manual_seed(0)
    t = fl.Trainer(nn.Linear(3, 1), "mse", optimizer, lr=0.1, quiet=True, clip_grad_norm=0.5, on_nonfinite="skip")
    step = TrainingStep(t, schedule=False)
    step(torch.randn(8, 3), torch.randn(8, 1))  # a good step first: the optimizer has state
    params = params_of(t.model)
    opt_state = copy.deepcopy(t.optimizer.state_dict())
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    loss, _ = step(x, torch.randn(8, 1))
    assert loss.isnan()
    assert all(torch.equal(p, q) for p, q in zip(t.model.parameters(), params))
    assert repr(t.optimizer.state_dict()) == repr(opt_state)  # LBFGS: left before it changed its state
    assert t.state.step == 1 and t.state.skipped_steps == 1
    assert all(p.grad is None for p in t.model.parameters())


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_a_nan_batch_stops_the_eager_step_and_the_closure_step_at_the_epoch_end(optimizer):
    """On the CPU the eager step checks every step; LBFGS's closure step is checked per step only to skip
    (a run that stops, stops at the epoch's end: tests/test_trainer.py)."""
    import fitloop as fl
    from fitloop.step import NonFiniteError, TrainingStep

    t = fl.Trainer(nn.Linear(3, 1), "mse", optimizer, lr=0.1, quiet=True, clip_grad_value=0.5)
    x = torch.randn(8, 3)
    x[0, 0] = float("nan")
    step = TrainingStep(t, schedule=False)
    if optimizer == "sgd":
        with pytest.raises(NonFiniteError, match="the loss is nan"):
            step(x, torch.randn(8, 1))
        assert t.state.step == 0
    else:
        assert not step.check_every_step
        step(x, torch.randn(8, 1))
        with pytest.raises(NonFiniteError, match="after epoch 0: the epoch's loss is nan"):
            step.check_epoch_loss(float("nan"))
