# ruff: noqa: E501  (markdown prose in f-strings)
"""Fast-path study on W2 (``python -m bench.studies.fastpath``): how close can a compiled step get to 0.5x the hand loop?

W2 = MLP 8-16-10-1, batch 64, Adam lr 1e-3, MSE, at 1 intra-op thread.  Every candidate trains its own copy of
the same model (seed 0) on the same batch stream (one ``randperm``, full batches of 64, ``X[idx]`` gathered every
step) and accumulates the loss in a tensor every step like the hand loop.  Per round and per candidate
(interleaved, order rotated per round): ``--warmup`` steps untimed, then ``--steps`` timed steps; the candidate's
steady-state us/step is the median over rounds and its ratio is the median of per-round ratios to the hand loop
timed in the same round.  Compile time = wall of round 0's warm-up minus warm-up steps at the steady rate.

Candidates
  hand           eager loop, default (foreach) Adam                      -- the baseline
  hand_fused     eager loop, fused Adam
  compile_model  torch.compile(model) + fused Adam (what fl.Trainer(compile=True) does)
  compile_max    torch.compile(model, mode="max-autotune-no-cudagraphs") + fused Adam
  step_graph     whole step in ONE graph: torch.compile(fn) of gather + forward + loss + autograd.grad + fused
                 Adam step (torch._dynamo.config.trace_autograd_ops=True; tensor lr)
  func_step      torch.func.grad_and_value(functional_call) + functional Adam, compiled (one graph)
  step_graph_kK  K steps per Python call: the step_graph body unrolled K times on K consecutive batches
  func_step_kK   the same for func_step

The final-loss check: validation MSE (20k rows) after round 0 (warmup + steps steps, identical batches), as the
absolute difference to the eager hand loop.

Artefact reuse: the study runs with TORCHINDUCTOR_CACHE_DIR set to a fresh folder (cold FX-graph / AOTAutograd
caches); then a second process (``--compile-only``) compiles the same candidates against the same folder.

Finally a torch.profiler breakdown of the eager hand loop + fused Adam (where the eager floor is).
Writes bench/studies/FASTPATH.md and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__" and "--compile-only" not in sys.argv and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fitloop_fastpath_inductor_")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.func import functional_call, grad_and_value  # noqa: E402

from bench.workloads import SEED, WORKLOADS  # noqa: E402

WL = WORKLOADS["W2"]
BS = 64
LR = 1e-3


def _data():
    (Xtr, ytr), (Xv, yv) = WL.data()
    n = len(Xtr)
    n_full = (n // BS) // 8 * 8  # a multiple of 8 full batches: no ragged last batch, k-step groups never wrap
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SEED))
    idx_all = perm[: n_full * BS].view(n_full, BS).contiguous()
    return Xtr, ytr, Xv, yv, idx_all


# ------------------------------------------------------------------------------------------ candidates


class Candidate:
    """One training state (model, optimizer, step position) + a ``run(n)`` that does n steps."""

    k = 1  # steps per call
    compiled = False

    def __init__(self, data):
        self.X, self.y, self.Xv, self.yv, self.idx_all = data
        self.model = WL.model(SEED)
        self.model.train()
        self.params = list(self.model.parameters())
        self.tot = torch.zeros(())
        self.s = 0
        self.setup()

    def setup(self):
        pass

    def next_idx(self, k=1):
        n = len(self.idx_all)
        i = self.s % n
        self.s += k
        return self.idx_all[i] if k == 1 else self.idx_all[i : i + k]

    @torch.no_grad()
    def val_loss(self) -> float:
        return float(F.mse_loss(self.model(self.Xv), self.yv))


class Hand(Candidate):
    fused = False

    def setup(self):
        self.fwd = self.model
        self.opt = torch.optim.Adam(self.params, lr=LR, fused=self.fused or None)

    def run(self, n):
        X, y, fwd, opt, tot = self.X, self.y, self.fwd, self.opt, self.tot
        for _ in range(n):
            idx = self.next_idx()
            xb, yb = X[idx], y[idx]
            loss = F.mse_loss(fwd(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot.add_(loss.detach())


class HandFused(Hand):
    fused = True


class CompileModel(Hand):
    fused = True
    compiled = True
    mode = None

    def setup(self):
        super().setup()
        self.fwd = torch.compile(self.model, mode=self.mode)


class CompileMax(CompileModel):
    mode = "max-autotune-no-cudagraphs"


class StepGraph(Candidate):
    """Gather + forward + loss + backward (autograd.grad) + fused Adam step, compiled as one function."""

    compiled = True
    k = 1

    def setup(self):
        torch._dynamo.config.trace_autograd_ops = True
        self.opt = torch.optim.Adam(self.params, lr=torch.tensor(LR), fused=True)
        params, opt, model, k = self.params, self.opt, self.model, self.k

        def one(X, y, idx, tot):
            xb, yb = X[idx], y[idx]
            loss = F.mse_loss(model(xb), yb)
            tot.add_(loss.detach())
            grads = torch.autograd.grad(loss, params)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            for p in params:
                p.grad = None

        if k == 1:
            self.fn = torch.compile(one)
        else:
            def many(X, y, idxs, tot):
                for j in range(k):
                    one(X, y, idxs[j], tot)

            self.fn = torch.compile(many)

    def run(self, n):
        assert n % self.k == 0
        X, y, tot, fn = self.X, self.y, self.tot, self.fn
        for _ in range(n // self.k):
            fn(X, y, self.next_idx(self.k), tot)


def _make_k(k):
    return type(f"StepGraphK{k}", (StepGraph,), {"k": k})


class FuncStep(Candidate):
    """torch.func.grad_and_value over functional_call + Adam written out (torch's formula), compiled."""

    compiled = True

    def setup(self):
        model = self.model
        names = [n for n, _ in model.named_parameters()]
        pd = {n: p.detach() for n, p in model.named_parameters()}  # views: in-place updates reach the model
        m = {n: torch.zeros_like(p) for n, p in pd.items()}
        v = {n: torch.zeros_like(p) for n, p in pd.items()}
        step = torch.zeros(())
        b1, b2, eps, lr = 0.9, 0.999, 1e-8, LR

        def loss_of(p, xb, yb):
            return F.mse_loss(functional_call(model, p, (xb,)), yb)

        def one(X, y, idx, tot):
            xb, yb = X[idx], y[idx]
            grads, loss = grad_and_value(loss_of)(pd, xb, yb)
            tot.add_(loss)
            step.add_(1)
            bc1 = 1 - b1**step
            bc2 = 1 - b2**step
            for n_ in names:
                g = grads[n_]
                m[n_].lerp_(g, 1 - b1)
                v[n_].mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v[n_].sqrt() / bc2.sqrt()).add_(eps)
                pd[n_].sub_((lr / bc1) * m[n_] / denom)

        if self.k == 1:
            self.fn = torch.compile(one)
        else:
            k = self.k

            def many(X, y, idxs, tot):
                for j in range(k):
                    one(X, y, idxs[j], tot)

            self.fn = torch.compile(many)

    def run(self, n):
        assert n % self.k == 0
        X, y, tot, fn = self.X, self.y, self.tot, self.fn
        for _ in range(n // self.k):
            fn(X, y, self.next_idx(self.k), tot)


CANDIDATES = {
    "hand": Hand,
    "hand_fused": HandFused,
    "compile_model": CompileModel,
    "compile_max": CompileMax,
    "step_graph": StepGraph,
    "func_step": FuncStep,
    "step_graph_k4": _make_k(4),
    "step_graph_k8": _make_k(8),
    "func_step_k4": type("FuncStepK4", (FuncStep,), {"k": 4}),
    "func_step_k8": type("FuncStepK8", (FuncStep,), {"k": 8}),
}


def _graph_count(name, data) -> str:
    """Dynamo graphs / breaks for one call of the candidate's compiled function (fresh instance)."""
    cls = CANDIDATES[name]
    if not issubclass(cls, (StepGraph, FuncStep)):
        return "fwd + bwd graph, optimizer eager" if cls.compiled else "eager"
    c = cls(data)
    k = c.k
    idx = c.next_idx(k)
    orig = c.fn._torchdynamo_orig_callable if hasattr(c.fn, "_torchdynamo_orig_callable") else None
    if orig is None:
        return "?"
    torch._dynamo.reset()
    ex = torch._dynamo.explain(orig)(c.X, c.y, idx, c.tot)
    torch._dynamo.reset()
    return f"{ex.graph_count} graph(s), {ex.graph_break_count} break(s)"


# ------------------------------------------------------------------------------------------ measuring


def _time(c: Candidate, n: int) -> float:
    t0 = time.perf_counter()
    c.run(n)
    return time.perf_counter() - t0


def _inductor_warm():
    """Pay inductor's import / first-use cost once, so that it is not charged to the first candidate."""
    t0 = time.perf_counter()
    f = torch.compile(lambda a: (a * 2).sum())
    f(torch.randn(3))
    return time.perf_counter() - t0


def study(names, rounds, warmup, steps):
    data = _data()
    warm_s = _inductor_warm()
    cands = {n: CANDIDATES[n](data) for n in names}
    us = {n: [] for n in names}
    ratio = {n: [] for n in names}
    first = {}
    compile_s = {}
    val = {}
    for r in range(rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        per = {}
        for n in order:
            c = cands[n]
            tw = _time(c, c.k) if r == 0 else 0.0  # first call: compile
            if r == 0:
                first[n] = tw
            tw += _time(c, warmup - c.k)
            dt = _time(c, steps)
            per[n] = dt / steps * 1e6
            if r == 0:
                compile_s[n] = max(0.0, tw - warmup * dt / steps)
                val[n] = c.val_loss()
        for n in names:
            us[n].append(per[n])
            ratio[n].append(per[n] / per["hand"])
        print(f"round {r}: " + "  ".join(f"{n}={per[n]:.1f}" for n in names), flush=True)
    out = {}
    for n in names:
        out[n] = {
            "us_per_step": statistics.median(us[n]),
            "us_all": [round(x, 1) for x in us[n]],
            "ratio": statistics.median(ratio[n]),
            "compile_s": compile_s[n] if CANDIDATES[n].compiled else None,
            "first_call_s": first[n],
            "val_loss": val[n],
            "loss_diff": abs(val[n] - val["hand"]),
        }
    return out, warm_s


def compile_only(names, warmup):
    """Second process: same candidates, same cache dir; compile time = warm-up wall - warm-up at steady rate."""
    data = _data()
    warm_s = _inductor_warm()
    res = {}
    for n in names:
        c = CANDIDATES[n](data)
        if not c.compiled:
            continue
        tw = _time(c, c.k) + _time(c, warmup - c.k)
        dt = _time(c, 400)
        res[n] = max(0.0, tw - warmup * dt / 400)
    return {"compile_s": res, "inductor_warm_s": warm_s}


# -------------------------------------------------------------------------------------------- profile


def profile_eager(steps=200):
    from torch.profiler import ProfilerActivity, profile, record_function

    data = _data()
    c = HandFused(data)
    c.run(200)
    X, y, model, opt, tot = c.X, c.y, c.model, c.opt, c.tot
    unprof = _time(c, 2000) / 2000 * 1e6

    def loop():
        for _ in range(steps):
            with record_function("P:data"):
                idx = c.next_idx()
                xb, yb = X[idx], y[idx]
            with record_function("P:forward"):
                loss = F.mse_loss(model(xb), yb)
            with record_function("P:zero_grad"):
                opt.zero_grad(set_to_none=True)
            with record_function("P:backward"):
                loss.backward()
            with record_function("P:optimizer"):
                opt.step()
            with record_function("P:accum"):
                tot.add_(loss.detach())

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        loop()
        wall = (time.perf_counter() - t0) / steps * 1e6
    evs = prof.events()
    phases = {}
    top_ops = {}

    def phase_of(e):
        p = e
        while p is not None:
            if p.name.startswith("P:"):
                return p.name[2:]
            p = p.cpu_parent
        return None

    for e in evs:
        ph = phase_of(e)
        if ph is None:
            continue
        d = phases.setdefault(ph, {"range_us": 0.0, "op_self_us": 0.0, "fw_us": 0.0, "glue_us": 0.0, "n_ops": 0})
        if e.name.startswith("P:"):
            d["range_us"] += e.cpu_time_total
            d["glue_us"] += e.self_cpu_time_total  # Python inside the range, not inside any op or torch range
        elif e.name.startswith("aten::"):
            d["op_self_us"] += e.self_cpu_time_total
            d["n_ops"] += 1
        else:  # torch's own ranges: Optimizer.step#Adam.step, autograd engine / node ranges
            d["fw_us"] += e.self_cpu_time_total
        top_ops[e.name] = top_ops.get(e.name, 0.0) + e.self_cpu_time_total
    for d in phases.values():
        for k_ in ("range_us", "op_self_us", "fw_us", "glue_us"):
            d[k_] /= steps
        d["n_ops"] /= steps
    in_ranges = sum(d["range_us"] for d in phases.values())
    top = sorted(top_ops.items(), key=lambda kv: -kv[1])[:12]
    return {
        "unprofiled_us": unprof,
        "profiled_wall_us": wall,
        "phases": phases,
        "between_ranges_us": wall - in_ranges,
        "top_ops": [(k_, v / steps) for k_, v in top],
    }


# -------------------------------------------------------------------------------------------- report


def render(res, second, warm1, graphs, prof, args) -> str:
    L = []
    L.append("## Fast path study (W2, 1 intra-op thread)")
    L.append("")
    L.append(
        f"`python -m bench.studies.fastpath` (torch {torch.__version__}, {os.cpu_count()} CPU cores, shared): W2 "
        f"(8-16-10-1 MLP, batch 64, Adam lr 1e-3, MSE), same seed and same batch stream for every candidate. "
        f"Steady state = {args.steps} timed steps after {args.warmup} warm-up steps, median of {args.rounds} "
        f"interleaved rounds; ratio = median of per-round ratios to `hand` timed in the same round. Compile s = "
        f"round-0 warm-up wall minus warm-up at the steady rate (includes recompiles); 2nd process = the same in "
        f"a new process with the same `TORCHINDUCTOR_CACHE_DIR` (FX graph cache + AOTAutogradCache warm; Dynamo "
        f"tracing is redone). Inductor first-use (import) cost, paid once per process, excluded: "
        f"{warm1:.1f} s (1st process), {second.get('inductor_warm_s', float('nan')):.1f} s (2nd). Loss diff = "
        f"|val MSE - hand's val MSE| after {args.warmup + args.steps} identical steps."
    )
    L.append("")
    L.append("| candidate | graphs | compile s | 2nd-process compile s | us/step | ratio to hand | val MSE | loss diff |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|")
    for n, r in res.items():
        cs = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        c2 = second["compile_s"].get(n)
        c2s = f"{c2:.1f}" if c2 is not None else "-"
        L.append(
            f"| {n} | {graphs.get(n, '-')} | {cs} | {c2s} | {r['us_per_step']:.1f} | {r['ratio']:.2f}x | "
            f"{r['val_loss']:.6f} | {r['loss_diff']:.1e} |"
        )
    L.append("")
    L.append("Per-round us/step: " + "; ".join(f"{n} {r['us_all']}" for n, r in res.items()))
    L.append("")
    L.append("### Profile of the eager step (hand loop + fused Adam, torch.profiler CPU, 200 steps)")
    L.append("")
    L.append(
        f"Unprofiled: {prof['unprofiled_us']:.1f} us/step; under the profiler: {prof['profiled_wall_us']:.1f} "
        f"us/step (the profiler roughly doubles per-op cost, so read the split as proportions). Per step, per "
        f"phase: ATen self = time inside `aten::` ops (kernel + per-op dispatch); torch ranges = self time of "
        f"torch's own non-ATen ranges (`Optimizer.step` Python, autograd engine/node bookkeeping); outside ops = "
        f"time in the phase but in no op or range (user Python, nn.Module __call__; in backward mostly the C++ "
        f"autograd engine)."
    )
    L.append("")
    L.append("| phase | wall us | ATen self us | torch ranges us | outside ops us | aten ops/step |")
    L.append("|---|---:|---:|---:|---:|---:|")
    tot_w = tot_o = tot_g = tot_n = tot_f = 0.0
    for ph in ("data", "forward", "zero_grad", "backward", "optimizer", "accum"):
        d = prof["phases"].get(ph)
        if not d:
            continue
        tot_w += d["range_us"]
        tot_o += d["op_self_us"]
        tot_g += d["glue_us"]
        tot_n += d["n_ops"]
        tot_f += d["fw_us"]
        L.append(f"| {ph} | {d['range_us']:.1f} | {d['op_self_us']:.1f} | {d['fw_us']:.1f} | {d['glue_us']:.1f} | "
                 f"{d['n_ops']:.0f} |")
    L.append(f"| loop (between phases) | {prof['between_ranges_us']:.1f} | - | - | {prof['between_ranges_us']:.1f} | - |")
    L.append(f"| **total** | {tot_w + prof['between_ranges_us']:.1f} | {tot_o:.1f} | {tot_f:.1f} | "
             f"{tot_g + prof['between_ranges_us']:.1f} | {tot_n:.0f} |")
    L.append("")
    L.append("Top ops by self time (us/step): " + ", ".join(f"`{k}` {v:.1f}" for k, v in prof["top_ops"]))
    L.append("")
    return "\n".join(L)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--only", default=",".join(CANDIDATES))
    ap.add_argument("--compile-only", action="store_true")
    ap.add_argument("--no-second", action="store_true")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).with_name("FASTPATH.md")))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = [n for n in args.only.split(",") if n]
    if "hand" not in names:
        names.insert(0, "hand")
    if args.compile_only:
        print("JSON:" + json.dumps(compile_only(names, args.warmup)))
        return
    print(f"TORCHINDUCTOR_CACHE_DIR={os.environ.get('TORCHINDUCTOR_CACHE_DIR')}", flush=True)
    data = _data()
    graphs = {}
    res, warm1 = study(names, args.rounds, args.warmup, args.steps)
    second = {"compile_s": {}}
    if not args.no_second:
        p = subprocess.run([sys.executable, "-m", "bench.studies.fastpath", "--compile-only", "--only", ",".join(names),
                            "--warmup", str(args.warmup)], capture_output=True, text=True, env=os.environ.copy())
        line = [ln for ln in p.stdout.splitlines() if ln.startswith("JSON:")]
        if line:
            second = json.loads(line[-1][5:])
        else:
            print(p.stderr[-3000:])
    for n in names:
        try:
            graphs[n] = _graph_count(n, data)
        except Exception as e:  # noqa: BLE001
            graphs[n] = f"explain failed: {type(e).__name__}"
    prof = profile_eager() if not args.no_profile else {"unprofiled_us": 0, "profiled_wall_us": 0, "phases": {},
                                                          "between_ranges_us": 0, "top_ops": []}
    md = render(res, second, warm1, graphs, prof, args)
    out = Path(args.out)
    if out.exists() and "### Conclusion" in out.read_text():  # keep the hand-written conclusion
        md += "\n" + out.read_text()[out.read_text().index("### Conclusion"):].rstrip("\n")
    print(md)
    print("JSON:" + json.dumps({"res": res, "second": second, "prof": prof}, default=str))
    Path(args.out).write_text(md + "\n")


if __name__ == "__main__":
    main()
