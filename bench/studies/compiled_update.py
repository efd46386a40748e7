# ruff: noqa: E501  (markdown prose in f-strings)
"""The optimizer update inside a compiled training step: a hand-written Adam vs torch's own optimizer code.

``python -m bench.studies.compiled_update`` (or ``python bench/studies/compiled_update.py``): standalone, it does not import
fitloop. The workload mirrors bench/workloads.py's W2 (MLP 8-16-10-1 with ReLU and Sigmoid, MSE, Adam lr 1e-3,
batch 64, 180k synthetic rows), one intra-op thread (fitloop's setting for small models).

Arms (every one starts from the same seeded initial weights and takes the same batches):

* ``eager fused``: the plain hand loop, zero_grad / forward / loss / backward / ``Adam(fused=True).step()``.
* ``eager single``: the same with ``Adam(foreach=False)`` (torch's single-tensor formula; a 2nd reference).
* ``own formula, 1 graph``: fitloop/compiled_step.py's approach (commit 2e15b57; now fitloop/compiled.py) copied
  here: ONE ``torch.compile(fullgraph=True)`` function taking the parameters, the Adam state tensors and a float64 hyperparameter tensor; gradients by
  ``torch.func.grad`` over ``functional_call``, a NaN/inf check and the hand-written Adam update applied in place,
  masked by ``ok`` (a non-finite step changes nothing).
* ``compile(fwd+loss) + backward + compiled opt.step``: the documented way (tutorial "Compiling the optimizer with
  torch.compile"): the forward and loss compiled, ``loss.backward()``, then ``opt.step()`` inside
  ``@torch.compile(fullgraph=False)``; Adam default (on CPU: single-tensor) and ``foreach=True``.
* ``func.grad graph + compiled opt.step``: gradients (and the NaN/inf flag) from one fullgraph ``torch.func.grad``
  graph, assigned to ``p.grad``, then the compiled ``opt.step()``, skipped when the flag says non-finite (one
  ``bool(ok)``: a cheap read on CPU).
* ``torch.optim.adam.adam in 1 graph``: ONE fullgraph graph like the own-formula arm, but the update is torch's
  public functional ``torch.optim.adam.adam(...)`` (``capturable=True`` so lr may be a tensor and the bias
  corrections stay tensors; single-tensor and foreach). torch's code cannot be masked from inside, so the
  ``masked`` variant runs it on clones and writes back ``torch.where(ok, new, old)``.

Steady state: after 50 identical steps (whose weights are compared with the eager arms'; the first of them
compiles), ``--rounds`` rounds of ``--steps`` steps per arm, arms interleaved and their order rotated every round
(short rounds, many of them: the 2 shared cores have bursts of contention); the ratio to ``eager fused`` is taken
within each round, medians (and quartiles) reported. Cold compile s = the arm's first call in a fresh process with
an empty inductor cache (``--no-cold`` skips these subprocesses, about half the run time); the in-process first
call is order-dependent (caches warmed by earlier arms); "extra" = the 2nd..50th calls' time above the steady
state (a recompile would show there). Finally a batch containing a NaN is fed to each arm: does it leave weights
and optimizer state unchanged? Writes nothing unless ``--out PATH``; about 4-5 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

if __name__ == "__main__" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    # a fresh inductor cache: compile times are cold ones, not disk-cache hits from an earlier run
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fitloop_compiled_update_")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.optim.adam import adam as torch_adam  # noqa: E402

SEED = 0
LR = 1e-3
BETAS = (0.9, 0.999)
EPS = 1e-8
BS = 64
CHECK_STEPS = 50
OUT = Path(__file__).with_name("COMPILED_UPDATE.md")


# ------------------------------------------------------------------------------------ the workload (W2)


def w2_data(n_train: int = 180_000, seed: int = SEED):
    """bench/workloads.py's W2 training data: 8 features, smooth nonlinear target + noise."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + 20_000
    X = torch.randn(n, 8, generator=g)
    w = torch.randn(8, 1, generator=g)
    y = torch.tanh(X @ w) + 0.5 * torch.sin(X[:, :1] * X[:, 1:2]) + 0.1 * torch.randn(n, 1, generator=g)
    perm = torch.randperm(n_train, generator=g)
    return X[:n_train][perm].contiguous(), y[:n_train][perm].contiguous()


def w2_model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 10), nn.Sigmoid(), nn.Linear(10, 1))


def loss_fn(out, y):
    return F.mse_loss(out, y)


_counter = itertools.count()


def _own_code(fn):
    """`fn` with a private code object (dynamo caches graphs per code object), as fitloop/compiled_step.py."""
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_{next(_counter)}")
    return types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)


def _zero_state(opt: torch.optim.Adam, capturable: bool = False):
    """Adam's state exactly as its first step creates it (so every graph arm can run from step 1)."""
    for g in opt.param_groups:
        for p in g["params"]:
            opt.state[p] = {
                "step": torch.zeros((), dtype=torch.float32) if capturable else torch.tensor(0.0, dtype=torch.float32),
                "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
            }


# ------------------------------------------------------------------ the own formula (fitloop's approach)


def _adam(params, grads, states, hp, flags, ok, okf):
    """Copied from fitloop/compiled_step.py: torch.optim.Adam/AdamW's single-tensor update as tensor ops,
    no change at all when not `ok`."""
    lr, b1, b2, eps, wd = hp.unbind()
    amsgrad, maximize, decoupled, has_wd = flags
    keep_b2 = torch.where(ok, b2, torch.ones_like(b2))
    for p, g, (step, m, v, *vmax) in zip(params, grads, states):
        if maximize:
            g = -g
        step.add_(okf.to(step.dtype))
        if has_wd:
            if decoupled:
                p.mul_((1 - lr * wd * okf).to(p.dtype))
            else:
                g = g + wd.to(g.dtype) * p
        m.lerp_(g, ((1 - b1) * okf).to(m.dtype))
        v.mul_(keep_b2.to(v.dtype)).add_(((1 - b2) * okf).to(v.dtype) * g * g)
        stepd = step.to(torch.float64)
        bc1 = 1 - b1 ** stepd
        bc2_sqrt = torch.sqrt(1 - b2 ** stepd)
        if amsgrad:
            torch.maximum(vmax[0], v, out=vmax[0])
            v = vmax[0]
        denom = v.sqrt() / bc2_sqrt.to(v.dtype) + eps.to(v.dtype)
        p.sub_((lr / bc1 * okf).to(p.dtype) * m / denom)


def _grad_fn(model, names):
    def loss_of(pd, x, y):
        loss = loss_fn(torch.func.functional_call(model, pd, (x,)), y)
        return loss, loss.detach()

    def grads_of(params, x, y):
        grads, loss = torch.func.grad(loss_of, has_aux=True)(dict(zip(names, params)), x, y)
        gs = [grads[n] for n in names]
        ok = torch.stack([torch.isfinite(g).all() for g in gs] + [torch.isfinite(loss)]).all()
        return gs, loss, ok

    return grads_of


class Arm:
    """A training step `step(x, y)` on `model`; `fresh` = how many compiled functions it owns."""

    compiled = True
    masks_nonfinite = True

    def __init__(self, model: nn.Module):
        self.model = model
        self.params = [p for p in model.parameters()]
        self.names = [n for n, _ in model.named_parameters()]

    def state(self) -> list[torch.Tensor]:
        return [t for p in self.params for t in self.opt.state[p].values() if isinstance(t, torch.Tensor)]


class EagerFused(Arm):
    name = "eager fused"
    compiled = False
    masks_nonfinite = False
    fused = True

    def __init__(self, model):
        super().__init__(model)
        self.opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS,
                                    **({"fused": True} if self.fused else {"foreach": False}))

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = loss_fn(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss


class EagerSingle(EagerFused):
    name = "eager single"
    fused = False


class OwnGraph(Arm):
    name = "own formula, 1 graph (fitloop)"

    def __init__(self, model):
        super().__init__(model)
        self.opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)
        _zero_state(self.opt)
        names, n = self.names, len(self.names)
        loss_of = _grad_fn(model, names)
        flags = (False, False, False, False)  # amsgrad, maximize, decoupled, has_wd

        def step(tensors, x, y):
            params = tensors[:n]
            states = [tensors[n + 3 * j: n + 3 * j + 3] for j in range(n)]
            hp = tensors[4 * n]
            gs, loss, ok = loss_of(params, x, y)
            okf = ok.to(torch.float64)
            gs = [torch.where(ok, g, torch.zeros((), dtype=g.dtype, device=g.device)) for g in gs]
            _adam(params, gs, states, hp, flags, ok, okf)
            return loss, ok

        self.fn = torch.compile(_own_code(step), fullgraph=True, dynamic=False)
        g = self.opt.param_groups[0]
        hp = torch.tensor((g["lr"], *g["betas"], g["eps"], g["weight_decay"]), dtype=torch.float64)
        st = self.opt.state
        self.tensors = ([p.detach() for p in self.params]
                        + [st[p][k] for p in self.params for k in ("step", "exp_avg", "exp_avg_sq")] + [hp])

    def step(self, x, y):
        return self.fn(self.tensors, x, y)[0]


class CompiledModelStep(Arm):
    name = "compile(fwd+loss) + backward + compiled opt.step, Adam default"
    masks_nonfinite = False
    foreach = None

    def __init__(self, model):
        super().__init__(model)
        self.opt = opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS, foreach=self.foreach)

        def fwd(x, y):
            return loss_fn(model(x), y)

        def opt_step():
            opt.step()

        self.fwd = torch.compile(_own_code(fwd))
        self.opt_step = torch.compile(_own_code(opt_step), fullgraph=False)

    def step(self, x, y):
        self.opt.zero_grad(set_to_none=True)
        loss = self.fwd(x, y)
        loss.backward()
        self.opt_step()
        return loss


class CompiledModelStepForeach(CompiledModelStep):
    name = "compile(fwd+loss) + backward + compiled opt.step, Adam foreach"
    foreach = True


class GradGraphStep(Arm):
    name = "func.grad graph + compiled opt.step (skipped if not finite)"

    def __init__(self, model):
        super().__init__(model)
        self.opt = opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS)

        def opt_step():
            opt.step()

        self.grads = torch.compile(_own_code(_grad_fn(model, self.names)), fullgraph=True, dynamic=False)
        self.opt_step = torch.compile(_own_code(opt_step), fullgraph=False)
        self.detached = [p.detach() for p in self.params]

    def step(self, x, y):
        gs, loss, ok = self.grads(self.detached, x, y)
        for p, g in zip(self.params, gs):
            p.grad = g
        if ok:
            self.opt_step()
        return loss


class FunctionalAdamGraph(Arm):
    name = "torch.optim.adam.adam in 1 graph, single-tensor"
    masks_nonfinite = False
    foreach = False
    masked = False
    float_betas = False  # True: betas as Python floats (bias corrections in float32 under compile)

    def __init__(self, model):
        super().__init__(model)
        self.opt = torch.optim.Adam(model.parameters(), lr=LR, betas=BETAS, eps=EPS, capturable=True)
        _zero_state(self.opt, capturable=True)
        names, n = self.names, len(self.names)
        loss_of = _grad_fn(model, names)
        foreach, masked, float_betas = self.foreach, self.masked, self.float_betas

        def step(tensors, x, y):
            params = tensors[:n]
            steps, ms, vs = tensors[n:2 * n], tensors[2 * n:3 * n], tensors[3 * n:4 * n]
            lr, b1, b2 = tensors[4 * n:]  # float64 0-d tensors, like fitloop's hyperparameter vector
            if float_betas:
                b1, b2 = BETAS
            gs, loss, ok = loss_of(params, x, y)
            if masked:
                targets = (params, steps, ms, vs)
                params, steps, ms, vs = ([t.clone() for t in ts] for ts in targets)
            torch_adam(params, gs, ms, vs, [], steps, foreach=foreach, capturable=True, amsgrad=False,
                       beta1=b1, beta2=b2, lr=lr, weight_decay=0.0, eps=EPS, maximize=False)
            if masked:
                for old_ts, new_ts in zip(targets, (params, steps, ms, vs)):
                    for old, new in zip(old_ts, new_ts):
                        old.copy_(torch.where(ok, new, old))
            return loss, ok

        self.fn = torch.compile(_own_code(step), fullgraph=True, dynamic=False)
        st = self.opt.state
        hp = [torch.tensor(v, dtype=torch.float64) for v in (LR, *BETAS)]
        self.tensors = ([p.detach() for p in self.params]
                        + [st[p][k] for k in ("step", "exp_avg", "exp_avg_sq") for p in self.params] + hp)

    def step(self, x, y):
        return self.fn(self.tensors, x, y)[0]


class FunctionalAdamGraphForeach(FunctionalAdamGraph):
    name = "torch.optim.adam.adam in 1 graph, foreach"
    foreach = True


class FunctionalAdamGraphMasked(FunctionalAdamGraph):
    name = "torch.optim.adam.adam in 1 graph, single-tensor, masked (clones + where)"
    masks_nonfinite = True
    masked = True


class FunctionalAdamGraphFloatBetas(FunctionalAdamGraph):
    name = "torch.optim.adam.adam in 1 graph, single-tensor, betas as Python floats"
    float_betas = True


ARMS = [EagerFused, EagerSingle, OwnGraph, CompiledModelStep, CompiledModelStepForeach, GradGraphStep,
        FunctionalAdamGraph, FunctionalAdamGraphForeach, FunctionalAdamGraphMasked, FunctionalAdamGraphFloatBetas]


# ----------------------------------------------------------------------------------------------- run


def _graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


def run(steps: int, rounds: int) -> dict:
    torch.set_num_threads(1)
    X, Y = w2_data()
    nb = len(X) // BS
    batches = [(X[i * BS:(i + 1) * BS], Y[i * BS:(i + 1) * BS]) for i in range(nb)]

    t0 = time.perf_counter()  # inductor's one-time start-up, charged to no arm
    torch.compile(lambda a: a * 2 + 1, fullgraph=True)(torch.ones(3))
    startup = time.perf_counter() - t0

    arms, res = [], {}
    for cls in ARMS:
        arm = cls(w2_model())
        r = res[cls.name] = {"cls": cls, "error": None, "times": [], "ratios": []}
        g0 = _graphs()
        call_t = []
        try:
            for x, y in batches[:CHECK_STEPS]:
                t = time.perf_counter()
                arm.step(x, y)
                call_t.append(time.perf_counter() - t)
        except Exception as e:  # an arm that does not compile is a result, not a crash
            r["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            print(f"{cls.name}: FAILED {r['error']}", file=sys.stderr, flush=True)
            continue
        r["call_t"] = call_t
        r["graphs_warm"] = _graphs() - g0
        r["weights"] = [p.detach().clone() for p in arm.params]
        arms.append(arm)
        print(f"{cls.name}: first call {call_t[0]:.2f} s, graphs {r['graphs_warm']}", file=sys.stderr, flush=True)

    ref = {n: res[n]["weights"] for n in (EagerFused.name, EagerSingle.name)}
    for r in res.values():
        if r["error"] is None:
            r["dw"] = {k: max(float((a - b).abs().max()) for a, b in zip(r["weights"], w)) for k, w in ref.items()}

    g_start = _graphs()
    for rd in range(rounds):
        order = arms[rd % len(arms):] + arms[:rd % len(arms)]
        start = CHECK_STEPS + rd * steps
        per = {}
        for arm in order:
            bs_ = [batches[(start + i) % nb] for i in range(steps)]
            t = time.perf_counter()
            for x, y in bs_:
                arm.step(x, y)
            per[arm.name] = (time.perf_counter() - t) / steps
        for name, v in per.items():
            res[name]["times"].append(v)
            res[name]["ratios"].append(v / per[EagerFused.name])
        if (rd + 1) % 10 == 0 or rd == 0:
            print(f"round {rd + 1}: " + ", ".join(f"{n.split(',')[0][:24]}={v * 1e6:.0f}us" for n, v in per.items()),
                  file=sys.stderr, flush=True)
    recompiles = _graphs() - g_start

    # a batch with a NaN: does the step leave weights and optimizer state unchanged?
    xn = batches[0][0].clone()
    xn[0, 0] = float("nan")
    for arm in arms:
        before = [t.clone() for t in arm.params + arm.state()]
        arm.step(xn, batches[0][1])
        after = arm.params + arm.state()
        res[arm.name]["nan_safe"] = all(torch.equal(a, b) for a, b in zip(before, after))

    for r in res.values():
        if r["error"] is None:
            steady = statistics.median(r["times"])
            r["steady"] = steady
            r["compile_s"] = r["call_t"][0]
            r["extra_s"] = max(0.0, sum(r["call_t"][1:]) - (len(r["call_t"]) - 1) * steady)
    return {"res": res, "startup": startup, "recompiles_timed": recompiles, "steps": steps, "rounds": rounds}


def cold_compile(index: int) -> dict:
    """In a fresh process (the parent gives it an empty inductor cache): the arm's first call, after a trivial
    compile has paid inductor's one-time start-up."""
    torch.set_num_threads(1)
    X, Y = w2_data()
    t0 = time.perf_counter()
    torch.compile(lambda a: a * 2 + 1, fullgraph=True)(torch.ones(3))
    startup = time.perf_counter() - t0
    arm = ARMS[index](w2_model())
    calls = []
    for i in range(3):
        t0 = time.perf_counter()
        arm.step(X[i * BS:(i + 1) * BS], Y[i * BS:(i + 1) * BS])
        calls.append(time.perf_counter() - t0)
    return {"startup": startup, "calls": calls}


def cold_compiles() -> dict:
    out = {}
    for i, cls in enumerate(ARMS):
        if not cls.compiled:
            continue
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=tempfile.mkdtemp(prefix="fitloop_compiled_update_cold_"))
        try:
            p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cold-compile", str(i)], env=env,
                               capture_output=True, text=True, timeout=600)
            out[cls.name] = json.loads(p.stdout.strip().splitlines()[-1])
        except Exception as e:
            out[cls.name] = {"error": f"{type(e).__name__}: {e}"[:200]}
        c = out[cls.name]
        print(f"cold compile {cls.name}: {c.get('calls', c)}", file=sys.stderr, flush=True)
    return out


def render(out: dict) -> str:
    res = out["res"]
    lines = [
        f"torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores (shared), "
        f"torch.set_num_threads(1); W2-like workload (MLP 8-16-10-1, MSE, batch {BS}, Adam lr {LR}); "
        f"{out['rounds']} rounds x {out['steps']} steps per arm, interleaved; inductor start-up (a trivial compile, "
        f"charged to no arm) {out['startup']:.1f} s; graphs compiled during the timed rounds: {out['recompiles_timed']}.",
        "",
        f"| arm | median us/step | best round us/step | ratio to eager fused, median [quartiles] | cold compile s | in-process 1st call s "
        f"| extra s (calls 2-{CHECK_STEPS}) "
        f"| graphs | max abs dw vs eager fused / single after {CHECK_STEPS} steps | NaN batch changes nothing |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for name, r in res.items():
        if r["error"] is not None:
            lines.append(f"| {name} | failed: {r['error']} | | | | | | | | |")
            continue
        rs = r["ratios"]
        q1, _, q3 = statistics.quantiles(rs, n=4) if len(rs) > 1 else (rs[0], 0, rs[0])
        comp = f"{r['compile_s']:.1f}" if r["cls"].compiled else "-"
        c = out.get("cold", {}).get(name, {})
        cold = f"{c['calls'][0]:.1f}" if "calls" in c else ("-" if not r["cls"].compiled else "n/a")
        extra = f"{r['extra_s']:.2f}" if r["cls"].compiled else "-"
        graphs = str(r["graphs_warm"]) if r["cls"].compiled else "-"
        dw = r["dw"]
        lines.append(
            f"| {name} | {r['steady'] * 1e6:.0f} | {min(r['times']) * 1e6:.0f} | {statistics.median(rs):.2f}x [{q1:.2f}-{q3:.2f}] "
            f"| {cold} | {comp} "
            f"| {extra} | {graphs} | {dw[EagerFused.name]:.1e} / {dw[EagerSingle.name]:.1e} "
            f"| {'yes' if r['nan_safe'] else 'no'} |")
    if out.get("cold"):
        cs = [c for c in out["cold"].values() if "calls" in c]
        lines += ["", "Cold compile s: the arm's first call in a fresh process with an empty inductor cache, after a "
                  "trivial compile paid inductor's start-up (median "
                  f"{statistics.median(c['startup'] for c in cs):.1f} s there); its 2nd and 3rd calls took at most "
                  f"{max(max(c['calls'][1:]) for c in cs) * 1e3:.1f} ms (no recompile). In-process 1st call: the same "
                  "in the timing process, where arms compiled earlier have warmed caches (order-dependent)."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50, help="timed steps per arm per round")
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--out", type=Path, default=None, help="write the table here (markdown)")
    ap.add_argument("--no-cold", action="store_true", help="skip the per-arm cold-compile subprocesses")
    ap.add_argument("--cold-compile", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.cold_compile is not None:
        print(json.dumps(cold_compile(a.cold_compile)))
        return
    out = run(a.steps, a.rounds)
    if not a.no_cold:
        out["cold"] = cold_compiles()
    table = render(out)
    print(table)
    if a.out:
        a.out.write_text(table)


if __name__ == "__main__":
    main()
