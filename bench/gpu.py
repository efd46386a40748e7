"""GPU section of the benchmark (runs only when CUDA is present): W2 and W4 with the data resident on the GPU.

Arms: `hand` (randperm on the device + index slicing, torch's default optimizer: foreach on CUDA), `hand_fused`
(`fused=True`), `fitloop` (`fl.Trainer(..., device="cuda")` with default settings). Each timed run ends with
`torch.cuda.synchronize()`. Interleaved rounds, ratio to `hand` within each round.
"""

from __future__ import annotations

import statistics as st
import time

import torch

from .workloads import SEED, WORKLOADS, Workload, loss_fn, make_optimizer

GPU_WORKLOADS = ("W2", "W4")


def _on(dev, data):
    (Xtr, ytr), val = data
    return (Xtr.to(dev), ytr.to(dev)), (None if val is None else (val[0].to(dev), val[1].to(dev)))


def hand(wl: Workload, model, data, fused: bool = False) -> float:
    (Xtr, ytr), val = data
    lf, n, bs = loss_fn(wl.loss), len(Xtr), wl.bs
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    opt = make_optimizer(wl, model.parameters(), fused=fused)
    g = torch.Generator(device=Xtr.device).manual_seed(SEED)
    for _ in range(wl.epochs):
        total = torch.zeros((), device=Xtr.device)
        perm = torch.randperm(n, generator=g, device=Xtr.device)
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            loss = lf(model(Xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total.add_(loss.detach())
        if val is not None:
            with torch.inference_mode():
                model.eval()
                lf(model(val[0]), val[1])
                model.train()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def fitloop(wl: Workload, model, data) -> float:
    import fitloop as fl

    (Xtr, ytr), val = data
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    trainer = fl.Trainer(model, loss=wl.loss, optimizer=wl.optimizer, lr=wl.lr, epochs=wl.epochs,
                         batch_size=wl.bs, seed=SEED, device="cuda", quiet=True)
    trainer.fit((Xtr, ytr), val)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


ARMS = {"hand": lambda wl, m, d: hand(wl, m, d), "hand_fused": lambda wl, m, d: hand(wl, m, d, fused=True),
        "fitloop": fitloop}


def run(rounds: int, log) -> dict:
    dev = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(0), "workloads": {}}
    for name in GPU_WORKLOADS:
        wl = WORKLOADS[name]
        data = _on(dev, wl.data())
        for fn in ARMS.values():  # warm-up: CUDA context, kernels, allocator
            fn(wl, wl.model().to(dev), data)
        times = {a: [] for a in ARMS}
        for r in range(rounds):
            for a, fn in ARMS.items():
                times[a].append(fn(wl, wl.model().to(dev), data))
            log(f"  GPU {name} round {r + 1}/{rounds}: " + ", ".join(f"{a}={times[a][-1]:.3f}s" for a in ARMS))
        out["workloads"][name] = {
            "title": wl.title, "steps": wl.steps,
            "rows": [{"arm": a, "median_s": st.median(ts),
                      "ratio_hand": st.median([t / h for t, h in zip(ts, times["hand"])]),
                      "us_step": st.median(ts) / wl.steps * 1e6} for a, ts in times.items()]}
    return out


def render(res: dict) -> list[str]:
    L = ["## GPU (data resident on the device)\n", f"Device: {res['device']}.\n"]
    for name, w in res["workloads"].items():
        L.append(f"### {name}: {w['title']}\n")
        L.append("| arm | median s | ratio to hand | µs/step |")
        L.append("|---|---|---|---|")
        L += [f"| `{r['arm']}` | {r['median_s']:.3f} | {r['ratio_hand']:.2f} | {r['us_step']:.1f} |" for r in w["rows"]]
        L.append("")
    return L
