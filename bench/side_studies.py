"""Side studies that inform fitloop's defaults (no fitloop needed):

* threads: intra-op threads 1 vs default, on an idle machine and with a competing CPU burner
* fused:   optimizer-step cost of for-loop / foreach / fused Adam and SGD by parameter count (crossover)
* micro:   per-step cost of training-loop details (loss accumulation, zero_grad, batching, ...)
* compile: torch.compile on the W2 hand loop (compile time, steady-state step time)
"""

from __future__ import annotations

import contextlib
import os
import statistics as st
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from .workloads import SEED, WORKLOADS, Workload, _validate, loss_fn, make_optimizer


@contextlib.contextmanager
def cpu_burner(n: int = 1):
    """Spawn n `while True: pass` processes (each eats one core); kill them (by pid) on exit."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    time.sleep(0.3)
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


@contextlib.contextmanager
def num_threads(n: int):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sub(wl: Workload, epochs: int | None = None, n_train: int | None = None) -> Workload:
    """A shorter copy of a workload (same model/optimizer/batch), for the side studies."""
    (Xtr, ytr), val = wl.data()
    if n_train is not None:
        Xtr, ytr = Xtr[:n_train], ytr[:n_train]
    w = Workload(wl.name, wl.title, wl.data_fn, wl.model_fn, wl.loss, wl.optimizer, wl.lr,
                 epochs or wl.epochs, wl.batch_size)
    w._data = ((Xtr, ytr), None if val is None else val)
    return w


def _study_workloads(quick: bool):
    f = 0.5 if quick else 1.0
    return {
        "W1": _sub(WORKLOADS["W1"], epochs=int(1000 * f)),
        "W2": _sub(WORKLOADS["W2"], epochs=1, n_train=int(60_000 * f)),
        "W3": _sub(WORKLOADS["W3"], epochs=int(10 * f)),
        "W4": _sub(WORKLOADS["W4"], epochs=1),
    }


# ------------------------------------------------------------------------------------------ threads


def threads_study(rounds: int = 3, quick: bool = False, log=print) -> dict:
    """us/step of the hand loop with 1 vs default threads, idle vs one competing CPU-burner process."""
    from .workloads import hand_loop

    default = torch.get_num_threads()
    counts = sorted({1, default})
    wls = _study_workloads(quick)
    res: dict = {}
    loads: dict = {}  # 1-min load average when each block starts: other tenants' load shows up here
    for r in range(rounds):  # idle and busy blocks alternate every round, so drift hits both alike
        for cond in (("idle", "busy") if r % 2 == 0 else ("busy", "idle")):
            ctx = cpu_burner(1) if cond == "busy" else contextlib.nullcontext()
            loads.setdefault(cond, []).append(os.getloadavg()[0])
            with ctx:
                for name, wl in wls.items():
                    for t in (counts if r % 2 == 0 else counts[::-1]):
                        with num_threads(t):
                            m = wl.model()
                            res_ = hand_loop(wl, m)
                        res.setdefault((name, cond, t), []).append(res_["time"] / wl.steps * 1e6)
        log(f"  threads study: round {r + 1}/{rounds} done")
    out = {"default_threads": default, "rows": [], "loadavg": {k: st.mean(v) for k, v in loads.items()}}
    for name, wl in wls.items():
        row = {"workload": name, "params": wl.n_params(), "steps": wl.steps}
        for cond in ("idle", "busy"):
            for t in counts:
                row[f"{cond}_t{t}"] = st.median(res[(name, cond, t)])
        out["rows"].append(row)
    return out


def thread_sweep(rounds: int = 3, quick: bool = False, log=print) -> dict:
    """Idle machine: from what model size do the default threads beat 1 thread?  MLP 784-h-h-10,
    batch 64, Adam (fused), fixed steps; us/step for 1 vs default threads."""
    default = torch.get_num_threads()
    widths = [32, 128, 256, 512, 1024]
    X = torch.randn(64, 784)
    y = torch.randint(0, 10, (64,))
    res: dict = {}
    models = {}
    for h in widths:
        torch.manual_seed(SEED)
        models[h] = nn.Sequential(nn.Linear(784, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 10))
    loads = []
    for _ in range(rounds):
        loads.append(os.getloadavg()[0])
        for h, m in models.items():
            steps = max(20, int(2_000_000 / (h * 784 + h * h)))
            if quick:
                steps = max(10, steps // 3)
            opt = torch.optim.Adam(m.parameters(), lr=1e-4, fused=True)
            for t in sorted({1, default}):
                with num_threads(t):
                    for i in range(steps + 3):
                        if i == 3:
                            t0 = time.perf_counter()
                        loss = F.cross_entropy(m(X), y)
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                    res.setdefault((h, t), []).append((time.perf_counter() - t0) / steps * 1e6)
    rows = []
    for h, m in models.items():
        row = {"hidden": h, "params": sum(p.numel() for p in m.parameters()),
               "mflop_step": 3 * 2 * 64 * (784 * h + h * h + h * 10) / 1e6}
        for t in sorted({1, default}):
            row[f"t{t}"] = st.median(res[(h, t)])
        rows.append(row)
    log("  thread sweep done")
    return {"default_threads": default, "rows": rows, "loadavg": st.mean(loads)}


# -------------------------------------------------------------------------------------------- fused


def _fake_params(n_params: int):
    """~n_params split over 3 weight + 3 bias tensors, like a 3-layer MLP."""
    if n_params <= 8:
        shapes = [(1, 1), (1,)]
    else:
        w = max(1, int((n_params / 3) ** 0.5))
        shapes = [(w, w), (w,), (w, w), (w,), (w, w), (w,)]
    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    for p in ps:
        p.grad = torch.randn_like(p) * 1e-3
    return ps


def fused_study(rounds: int = 5, quick: bool = False, log=print, threads: int = 1) -> dict:
    """Time of optimizer.step() alone (us) for the for-loop (torch's CPU default), foreach and fused impls.
    Run at 1 intra-op thread by default: immune to a competing process on a 2-core box, and the crossover
    is decided by small models, which should run single-threaded anyway (see threads study)."""
    with num_threads(threads):
        out = _fused_study(rounds, quick, log)
    out["threads"] = threads
    return out


def _fused_study(rounds, quick, log):
    sizes = [2, 325, 9_610, 100_000, 1_000_000, 1_863_690]
    impls = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    out = {"rows": []}
    cases = (("Adam", torch.optim.Adam, {"lr": 1e-3}), ("SGD", torch.optim.SGD, {"lr": 1e-2}))
    for opt_name, cls, kw in cases:
        for n in sizes:
            ps = _fake_params(n)
            real_n = sum(p.numel() for p in ps)
            iters = 300 if real_n < 200_000 else 30
            if quick:
                iters = max(10, iters // 3)
            times = {k: [] for k in impls}
            opts = {k: cls(ps, **kw, **ikw) for k, ikw in impls.items()}
            for o in opts.values():
                o.step()  # warm-up / state init
            for _ in range(rounds):
                for k, o in opts.items():
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        o.step()
                    times[k].append((time.perf_counter() - t0) / iters * 1e6)
            row = {"optimizer": opt_name, "params": real_n}
            row.update({k: st.median(v) for k, v in times.items()})
            out["rows"].append(row)
        log(f"  fused study: {opt_name} done")
    return out


# -------------------------------------------------------------------------------------------- micro


def _micro_loop(wl: Workload, model, *, accum="add_", set_to_none=True, batching="gather", fused=False,
                foreach=None, val=True) -> float:
    (Xtr, ytr), valdata = wl.data()
    lf = loss_fn(wl.loss)
    n, bs = len(Xtr), wl.bs
    kw = {} if foreach is None else {"foreach": foreach}
    t0 = time.perf_counter()
    opt = make_optimizer(wl, model.parameters(), fused=fused, **kw)
    g = torch.Generator().manual_seed(SEED)
    for _ in range(wl.epochs):
        total = torch.zeros(())
        tot_f = 0.0
        losses = []
        perm = torch.randperm(n, generator=g)
        if batching == "copy":  # one gather per epoch, then zero-copy contiguous views
            Xs, ys = Xtr[perm], ytr[perm]
        for i in range(0, n, bs):
            if batching == "gather":
                idx = perm[i : i + bs]
                xb, yb = Xtr[idx], ytr[idx]
            else:
                xb, yb = Xs[i : i + bs], ys[i : i + bs]
            loss = lf(model(xb), yb)
            opt.zero_grad(set_to_none=set_to_none)
            loss.backward()
            opt.step()
            if accum == "add_":
                total.add_(loss.detach())
            elif accum == "item":
                tot_f += loss.item()
            elif accum == "outofplace":
                total = total + loss.detach()
            elif accum == "list":
                losses.append(loss.detach())
        if accum == "list":
            total = torch.stack(losses).sum()
        if val and valdata is not None:
            _validate(model, valdata, lf)
    return time.perf_counter() - t0


MICRO_VARIANTS = {
    "baseline (hand: gather/step, add_ accum, set_to_none)": {},
    "accum: per-step loss.item()": {"accum": "item"},
    "accum: out-of-place total = total + loss": {"accum": "outofplace"},
    "accum: list.append + stack at epoch end": {"accum": "list"},
    "accum: none (lower bound)": {"accum": "none"},
    "zero_grad(set_to_none=False)": {"set_to_none": False},
    "batching: one shuffled copy/epoch + slice views": {"batching": "copy"},
    "optimizer foreach=True": {"foreach": True},
    "optimizer fused=True": {"fused": True},
    "fused + copy batching + no accum": {"fused": True, "batching": "copy", "accum": "none"},
}


def micro_study(rounds: int = 3, quick: bool = False, log=print, workloads=("W2", "W3"),
                threads: int = 1) -> dict:
    with num_threads(threads):
        out = _micro_study(rounds, quick, log, workloads)
    out["threads"] = threads
    return out


def _micro_study(rounds, quick, log, workloads):
    wls = _study_workloads(quick)
    out = {"workloads": {}}
    for name in workloads:
        wl = wls[name]
        res = {k: [] for k in MICRO_VARIANTS}
        for _ in range(rounds):
            for k, kw in MICRO_VARIANTS.items():
                m = wl.model()
                res[k].append(_micro_loop(wl, m, val=False, **kw) / wl.steps * 1e6)
        b = res[next(iter(MICRO_VARIANTS))]
        base = min(b)
        # noisy shared box: report the median, and the delta of the per-variant minima (timeit-style: the
        # minimum is the run least disturbed by other tenants) next to the median of per-round deltas
        rows = []
        for k, v in res.items():
            rows.append({"variant": k, "us_step": st.median(v), "min_us": min(v),
                         "delta_us": min(v) - base,
                         "delta_med_us": st.median([x - y for x, y in zip(v, b)])})
        out["workloads"][name] = {"steps": wl.steps, "base_us": base, "rows": rows}
        log(f"  micro study: {name} done")
    return out


# ------------------------------------------------------------------------------------------ compile


def compile_study(steps: int = 1500, rounds: int = 3, log=print, threads: int = 1) -> dict:
    """W2 model, fixed batch 64: eager vs torch.compile(model) vs compiled model + optimizer step."""
    with num_threads(threads):
        out = _compile_study(steps, rounds, log)
    out["threads"] = threads
    return out


def _compile_study(steps, rounds, log):
    wl = WORKLOADS["W2"]
    (Xtr, ytr), _ = wl.data()
    bs = 64
    g = torch.Generator().manual_seed(SEED)
    perm = torch.randperm(len(Xtr), generator=g)[: steps * bs]
    Xs, ys = Xtr[perm], ytr[perm]

    def run_eager(model, opt, n):
        t0 = time.perf_counter()
        for i in range(n):
            xb, yb = Xs[i * bs : (i + 1) * bs], ys[i * bs : (i + 1) * bs]
            loss = F.mse_loss(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return time.perf_counter() - t0

    out: dict = {"steps": steps}
    try:
        from torch import _dynamo

        # 1) eager (fused Adam) baseline
        # 2) torch.compile(model): fwd+bwd compiled (AOTAutograd), eager fused optimizer
        # 3) compiled optimizer step (torch.compile(opt.step)) + compiled model
        variants = {}
        _dynamo.reset()
        m_eager = wl.model()
        o_eager = torch.optim.Adam(m_eager.parameters(), lr=1e-3, fused=True)
        variants["eager (fused Adam)"] = (m_eager, o_eager, None)

        m_c = wl.model()
        o_c = torch.optim.Adam(m_c.parameters(), lr=1e-3, fused=True)
        t0 = time.perf_counter()
        mc = torch.compile(m_c, dynamic=False)
        xb = Xs[:bs]
        loss = F.mse_loss(mc(xb), ys[:bs])
        loss.backward()
        o_c.step()
        o_c.zero_grad()
        out["compile_s_model"] = time.perf_counter() - t0
        variants["compile(model), eager fused Adam"] = (mc, o_c, None)

        m_s = wl.model()
        o_s = torch.optim.Adam(m_s.parameters(), lr=1e-3)
        ms = torch.compile(m_s, dynamic=False)

        @torch.compile(fullgraph=False)
        def opt_step():
            o_s.step()

        class _Opt:
            def zero_grad(self, set_to_none=True):
                o_s.zero_grad(set_to_none=set_to_none)

            def step(self):
                opt_step()

        t0 = time.perf_counter()
        loss = F.mse_loss(ms(xb), ys[:bs])
        loss.backward()
        opt_step()
        o_s.zero_grad()
        loss = F.mse_loss(ms(xb), ys[:bs])
        loss.backward()
        opt_step()
        o_s.zero_grad()
        out["compile_s_model_plus_opt"] = time.perf_counter() - t0
        variants["compile(model) + compile(opt.step)"] = (ms, _Opt(), None)

        times = {k: [] for k in variants}
        for _ in range(rounds):
            for k, (m, o, _) in variants.items():
                times[k].append(run_eager(m, o, steps) / steps * 1e6)
        out["rows"] = [{"variant": k, "us_step": st.median(v)} for k, v in times.items()]
    except Exception as e:  # compile needs a working C++ toolchain; report, don't crash the suite
        out["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    log("  compile study done")
    return out
