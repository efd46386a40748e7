"""Capacity search: grow the model until it fits, then shrink it until it stops overfitting.

    grow    from a small MLP, widen it (`widths`, at the first depth), then deepen it at the width reached
            (`depths`), until the training loss reaches `target_loss` or stops improving: a size whose train
            loss is not at least `improve_margin` (relative) below the best so far ends that axis. The last
            size that improved is "the smallest size that fits".
    shrink  if that size's gap (val loss - train loss) is above `gap_tolerance` times its val loss, try smaller
            sizes (halved widths at the same depth, and every smaller size already trained), largest first,
            and take the first whose gap is within tolerance and whose val loss is at most `val_margin`
            (relative) above the best val loss seen; the walk stops at a size whose train loss is above that
            limit (it underfits). When none qualifies, take the size with the smallest relative gap among
            all sizes whose val loss is within the margin.
    verdict when no size beats the trivial baseline (the train mean, or the class prior) on the validation
            loss by `nothing_margin`, there is nothing to learn: `chosen` is None.

Each trial trains a fresh model from the same seed for `epochs` epochs, then measures the train and val
loss in eval mode. Trials are reproducible (the same seed and one CPU thread each) and independent, so
`jobs=N` runs up to N at a time in spawned processes; the decisions only ever read the trials the serial
search would have run (extra, speculative ones are listed but marked unused), so the chosen size does
not depend on `jobs`. Budgets: `max_trials`, `epochs` per trial, `max_seconds` of wall time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..data.checks import check_leakage, guard_settings
from ..devices import pick_device
from ..models import MLPSpec, build_mlp
from ..optim import make_loss
from ..state import seed_everything
from ..trainer import Trainer
from .size_inputs import as_xy, baseline, broken_pool_message, check_arguments, check_features

__all__ = ["SizeTrial", "SizeSearchResult", "size_search"]


@dataclass
class SizeTrial:
    """One trained size: `size` (the MLP's hidden layers as a tuple, or the factory's argument).

    `seconds` is the trial's wall time; the first trial of a process also pays torch's one-time set-up
    of the first fit (about 2-3 s on a busy 2-core machine)."""

    size: Any
    label: str
    params: int
    train_loss: float
    val_loss: float
    seconds: float
    phase: str
    used: bool = True
    state: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def gap(self) -> float:
        """Validation loss minus training loss."""
        return self.val_loss - self.train_loss


@dataclass
class SizeSearchResult:
    """What `size_search` found.

    Attributes:
        trials: every trial in the order run (`used=False`: run ahead in parallel, not read by the rules).
        chosen: the chosen size (hidden layers for MLPs), or None when there is nothing to learn.
        reason: why it was chosen, in one or two sentences.
        nothing_to_learn: no size beat the trivial baseline's validation loss.
        baseline_val_loss: the loss of the trivial prediction on the validation data (None for a custom loss).
        spec: the chosen `MLPSpec` (None for a factory, or nothing chosen).
    """

    trials: list[SizeTrial]
    chosen: Any
    reason: str
    nothing_to_learn: bool
    baseline_val_loss: float | None
    spec: Any = None
    settings: dict[str, Any] = field(default_factory=dict)
    _factory: Callable[[Any], nn.Module] | None = field(default=None, repr=False)

    @property
    def chosen_trial(self) -> SizeTrial | None:
        return next((t for t in self.trials if t.used and t.size == self.chosen), None)

    def model(self) -> nn.Module:
        """The chosen size's trained model (rebuilt from the trial's weights)."""
        trial = self.chosen_trial
        if trial is None or trial.state is None:
            raise ValueError(f"size_search: no model was chosen ({self.reason})")
        model = build_mlp(MLPSpec(**self.spec)) if self.spec else self._factory(trial.size)  # type: ignore[misc]
        model.load_state_dict(trial.state)
        return model

    def table(self) -> str:
        """The trials as a text table, then the chosen size and the reason."""
        rows = [("size", "params", "train loss", "val loss", "gap", "time", "")]
        for t in self.trials:
            mark = "<- chosen" if t.used and t.size == self.chosen else ("(unused)" if not t.used else "")
            rows.append((t.label, f"{t.params:,}", f"{t.train_loss:.4g}", f"{t.val_loss:.4g}", f"{t.gap:+.3g}",
                         f"{t.seconds:.2f}s", mark))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.rjust(w) if 0 < i < 6 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
                 for r in rows] if self.trials else ["(no trials)"]
        chosen = _label(self.chosen) if self.chosen is not None else (
            "nothing (nothing to learn)" if self.nothing_to_learn else "nothing (no trial ran)" if not self.trials
            else "nothing")
        base = "" if self.baseline_val_loss is None else f"baseline val loss {self.baseline_val_loss:.4g}; "
        return "\n".join([*lines, "", f"chosen: {chosen}", f"{base}reason: {self.reason}"])

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON (no weights)."""
        return {"chosen": None if self.chosen is None else list(self.chosen) if isinstance(self.chosen, tuple)
                else self.chosen, "chosen_label": None if self.chosen is None else _label(self.chosen),
                "reason": self.reason, "nothing_to_learn": self.nothing_to_learn,
                "baseline_val_loss": self.baseline_val_loss, "spec": self.spec, "settings": self.settings,
                "trials": [{"size": list(t.size) if isinstance(t.size, tuple) else t.size, "label": t.label,
                            "params": t.params, "train_loss": t.train_loss, "val_loss": t.val_loss, "gap": t.gap,
                            "seconds": t.seconds, "phase": t.phase, "used": t.used} for t in self.trials]}

    def plot(self, path: str | os.PathLike | None = None):
        """Train and validation loss against parameter count (log scale), the chosen size marked and the
        baseline drawn; saved to `path` when given. matplotlib is imported here (`pip install
        'fitloop[plot]'`). Returns the `Figure`."""
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg  # the `plot` extra
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError("size_search plot: matplotlib is not installed; pip install 'fitloop[plot]'") from None
        if not any(t.used for t in self.trials):
            raise ValueError(f"size_search plot: no trial to plot ({self.reason})")
        fig = Figure(figsize=(6, 4))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        used = sorted((t for t in self.trials if t.used), key=lambda t: t.params)
        ax.plot([t.params for t in used], [t.train_loss for t in used], "o-", label="train loss")
        ax.plot([t.params for t in used], [t.val_loss for t in used], "s-", label="val loss")
        if self.baseline_val_loss is not None:
            ax.axhline(self.baseline_val_loss, color="gray", linestyle=":", label="baseline (val)")
        c = self.chosen_trial
        if c is not None:
            ax.axvline(c.params, color="tab:red", linestyle="--", label=f"chosen {c.label}")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel("loss")
        ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(os.fspath(path), dpi=100)
        return fig


def _label(size: Any) -> str:
    if isinstance(size, tuple) and all(isinstance(h, int) for h in size):
        if not size:
            return "linear"
        return f"{size[0]}" if len(size) == 1 else (f"{size[0]}x{len(size)}" if len(set(size)) == 1
                                                    else "-".join(map(str, size)))
    return repr(size)


# ------------------------------------------------------------------------------------------- a trial

_WORKER: dict[str, Any] = {}


def _init_worker(payload: dict[str, Any]) -> None:
    torch.set_num_threads(1)  # one thread per process: N processes share the cores without oversubscribing
    _WORKER.clear()
    _WORKER.update(payload)


def _trial_in_worker(size: Any) -> dict[str, Any]:
    return _run_trial(_WORKER, size)


def _run_trial(p: dict[str, Any], size: Any) -> dict[str, Any]:
    """Train `size` from the seed; the train and val loss measured in eval mode afterwards."""
    t0 = time.perf_counter()
    seed_everything(p["seed"])  # the initial weights follow the seed
    if p["factory"] is not None:
        model = p["factory"](size)
        if not isinstance(model, nn.Module):
            raise TypeError(f"size_search: make_model({size!r}) returned {type(model).__name__}, not an nn.Module.")
    else:
        model = build_mlp(MLPSpec(p["in_features"], list(size), p["out_features"], p["activation"],
                                  dropout=p["dropout"], skip=p["skip"]))
    if p["init"] is not None:
        p["init"](model, *p["train"])
    trainer = Trainer(model, loss=p["loss"], optimizer=p["optimizer"], **{**p["settings"], "epochs": p["epochs"]})
    trainer.fit(p["train"])
    train_loss = float(trainer.evaluate(p["train"])["loss"])
    val_loss = float(trainer.evaluate(p["val"])["loss"])
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return {"params": sum(q.numel() for q in model.parameters()), "train_loss": train_loss, "val_loss": val_loss,
            "seconds": time.perf_counter() - t0, "state": state}


# ------------------------------------------------------------------------------------------- the search


def size_search(train: Any, val: Any, *, make_model: Callable[[Any], nn.Module] | None = None,
                sizes: Sequence[Any] | None = None, loss: Any = None, task: str | None = None,
                optimizer: Any = "adam", widths: Sequence[int] = (4, 8, 16, 32, 64, 128, 256),
                depths: Sequence[int] = (1, 2, 3), activation: str = "relu", dropout: float = 0.0,
                skip: bool = False, init: Callable[..., Any] | None = None, target_loss: float | None = None,
                improve_margin: float = 0.05, gap_tolerance: float = 0.25, val_margin: float = 0.1,
                nothing_margin: float = 0.02, max_trials: int = 16, epochs: int = 30,
                max_seconds: float | None = None, seed: int = 0, jobs: int = 1,
                plot: str | os.PathLike | None = None, **settings: Any) -> SizeSearchResult:
    """Find the size of network the data supports: grow until it fits, shrink until it stops overfitting.

    Args:
        train: the training data: `(X, y)` tensors or arrays, or a `Split` from `fl.split`.
        val: the validation data, in the same form.
        make_model: a factory `size -> nn.Module`; then `sizes` (small to large) is the ladder the search
            walks instead of MLP widths and depths. Must be picklable (a module-level function) for `jobs > 1`.
        sizes: the factory's sizes, smallest first.
        loss: any Trainer loss; default `cross_entropy` for integer targets (or task `"multiclass"`),
            `bce_with_logits` for task `"binary"`, else `mse`.
        task: `"regression"`, `"binary"`, `"multiclass"`; inferred from the loss and targets when None.
        optimizer: any Trainer optimizer (a name or `(name, kwargs)`; picklable for `jobs > 1`).
        widths: the MLP ladder's widths, tried at `depths[0]` hidden layers first.
        depths: the ladder's depths (hidden layers), the deeper ones tried after the widths.
        activation: the MLP's activation (`MLPSpec`).
        dropout: the MLP's dropout (`MLPSpec`).
        skip: the MLP's linear path beside the hidden layers (`MLPSpec`).
        init: called as `init(model, X_train, y_train)` on every freshly built model, after seeding (e.g. to
            start a `SkipMLP`'s linear path at the ridge fit, as `fitloop train` does); picklable for `jobs > 1`.
        target_loss: stop growing once the train loss is at or below it.
        improve_margin: a bigger size must lower the best train loss by this fraction to count as better.
        gap_tolerance: a size does not overfit when `val_loss - train_loss <= gap_tolerance * val_loss`.
        val_margin: shrinking may not raise the val loss more than this fraction above the best one.
        nothing_margin: "nothing to learn" unless the best val loss is this fraction below the baseline's.
        max_trials: the budget of trials in all.
        epochs: epochs per trial.
        max_seconds: the wall-time budget (no new trial starts after it).
        seed: every trial's seed (initial weights, data order).
        jobs: trials run at once, each in its own spawned process with one thread; in a script, call
            size_search under `if __name__ == "__main__":` (the workers import the script).
        plot: a path to save the loss-against-parameters plot to.
        **settings: Trainer settings for every trial (`lr`, `batch_size`, `weight_decay`, `device`, ...).

    Returns:
        A `SizeSearchResult`: `.table()`, `.chosen`, `.reason`, `.model()`, `.plot()`, `.to_dict()`.

    Raises:
        ValueError: a bad argument (named, with the fix), or train and val with different feature counts.
        RuntimeError: a worker process died (`jobs > 1`; most often an unguarded top-level call).

    Example:
        >>> result = fl.size_search(train, val, epochs=40, jobs=2)
        >>> print(result.table())
        >>> model = result.model()          # the chosen size, trained
    """
    check_arguments(make_model, sizes, widths, depths, {"max_trials": max_trials, "epochs": epochs, "jobs": jobs},
                    {"improve_margin": improve_margin, "gap_tolerance": gap_tolerance, "val_margin": val_margin,
                     "nothing_margin": nothing_margin}, max_seconds)
    if "run_dir" in settings:
        raise ValueError("size_search: trials write no run directory; train the chosen size with run_dir=... after.")
    Xtr, ytr = as_xy(train, "train")
    Xva, yva = as_xy(val, "val")
    check_features(Xtr, Xva)
    loss = _default_loss(ytr, task) if loss is None else loss
    loss_fn = make_loss(loss)
    classify = isinstance(loss_fn, (nn.CrossEntropyLoss, nn.NLLLoss)) and ytr.ndim == 1
    out_features = int(max(int(ytr.max()), int(yva.max())) + 1) if classify else (ytr.shape[1] if ytr.ndim == 2 else 1)
    ladder = [(w,) * depths[0] for w in widths] if make_model is None else list(sizes or [])
    trial_settings = _trial_settings({"quiet": True, "seed": seed, **settings}, task, (Xtr, ytr), (Xva, yva))
    payload = {"train": (Xtr, ytr), "val": (Xva, yva), "factory": make_model, "in_features": Xtr.shape[1] if
               Xtr.ndim == 2 else 1, "out_features": out_features, "activation": activation, "dropout": dropout,
               "skip": skip, "init": init, "loss": loss,
               "optimizer": optimizer, "seed": seed, "epochs": epochs, "settings": trial_settings}
    runner = _Runner(payload, jobs, max_trials, max_seconds)
    try:
        chosen, reason = _search(runner, ladder, make_model is None, depths, target_loss, improve_margin,
                                 gap_tolerance, val_margin)
    finally:
        runner.close()
    base = baseline(loss_fn, ytr, yva, out_features)
    used = [t for t in runner.trials if t.used]
    nothing = base is not None and bool(used) and min(t.val_loss for t in used) > base * (1 - nothing_margin)
    if nothing:
        what = "the class prior" if classify else "the train mean"
        chosen, reason = None, (f"nothing to learn: no size beat the trivial baseline ({what}) on validation by "
                                f"{nothing_margin:.0%}: best val loss {min(t.val_loss for t in used):.4g} against "
                                f"{base:.4g}. The inputs may not predict the target.")
    if runner.budget_note and runner.trials:
        reason += f" ({runner.budget_note})"
    spec = None
    if chosen is not None and make_model is None:
        spec = {"in_features": payload["in_features"], "hidden": list(chosen), "out_features": out_features,
                "activation": activation, "dropout": dropout, "skip": skip}
    res = SizeSearchResult(runner.trials, chosen, reason, nothing, base, spec,
                           {"epochs": epochs, "seed": seed, "loss": loss if isinstance(loss, str) else repr(loss),
                            "max_trials": max_trials, "jobs": jobs, "target_loss": target_loss,
                            "improve_margin": improve_margin, "gap_tolerance": gap_tolerance,
                            "val_margin": val_margin, "nothing_margin": nothing_margin},
                           _factory=make_model)
    if plot is not None and used:  # no trial, no plot (the reason says why)
        res.plot(plot)
    return res


def _default_loss(y_train: torch.Tensor, task: str | None) -> str:
    """`cross_entropy` for integer targets (or task "multiclass"), `bce_with_logits` for "binary", else `mse`."""
    classes = task in ("multiclass", "classification") or (task is None and not y_train.is_floating_point())
    return "bce_with_logits" if task == "binary" else ("cross_entropy" if classes else "mse")


def _trial_settings(settings: dict[str, Any], task: str | None, train: tuple[torch.Tensor, torch.Tensor],
                    val: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Every trial's Trainer settings: one CPU thread unless set, the task, and leakage checked here once
    (for the search) and turned off in the trials."""
    cfg = settings.get("config")
    if "threads" not in settings and (cfg is None or cfg.threads is None):
        if pick_device(settings.get("device", cfg.device if cfg is not None else "auto")).type == "cpu":
            settings["threads"] = 1  # the same numbers serially and in parallel workers
    if task is not None:
        settings["task"] = task
    guards = settings.get("guards", cfg.guards if cfg is not None else {})
    if guard_settings(guards)["leakage"]:  # once for the search, not once per trial
        check_leakage({"train": train, "val": val}, mode=guard_settings(guards)["leakage"])
    if isinstance(guards, dict):
        settings["guards"] = {**guards, "leakage": False}
    return settings


class _Runner:
    """Runs trials (cached by size), `jobs` at a time, within the budgets."""

    def __init__(self, payload: dict[str, Any], jobs: int, max_trials: int, max_seconds: float | None):
        self.payload, self.jobs, self.max_trials, self.max_seconds = payload, jobs, max_trials, max_seconds
        self.trials: list[SizeTrial] = []
        self.t0 = time.perf_counter()
        self.budget_note = ""
        self.pool: Any = None
        if jobs > 1:
            try:
                pickle.dumps((payload["factory"], payload["optimizer"], payload["loss"]))
            except Exception as e:  # noqa: BLE001 - any pickling failure means the same fix
                raise ValueError(f"size_search: jobs={jobs} sends make_model, the loss and the optimizer to worker "
                                 f"processes, but they cannot be pickled ({e}); define them at module level, or "
                                 "use jobs=1.") from None

    def find(self, size: Any) -> SizeTrial | None:
        return next((t for t in self.trials if t.size == size), None)

    def out_of_budget(self) -> bool:
        if len(self.trials) >= self.max_trials:
            self.budget_note = self.budget_note or f"stopped at the budget of {self.max_trials} trials"
            return True
        if self.max_seconds is not None and time.perf_counter() - self.t0 >= self.max_seconds:
            self.budget_note = self.budget_note or f"stopped at the wall-time budget of {self.max_seconds:g}s"
            return True
        return False

    def run(self, sizes: list[Any], phase: str) -> list[SizeTrial]:
        """Train the sizes not trained yet (up to `jobs` of them at once); returns a trial per size, in order,
        as far as the budget allows."""
        todo = [s for s in sizes if self.find(s) is None]
        if todo and not self.out_of_budget():
            todo = todo[:self.max_trials - len(self.trials)]
            if self.jobs > 1 and len(todo) > 1:
                if self.pool is None:
                    self.pool = ProcessPoolExecutor(self.jobs, mp_context=mp.get_context("spawn"),
                                                    initializer=_init_worker, initargs=(self.payload,))
                try:
                    results = list(self.pool.map(_trial_in_worker, todo))
                except BrokenProcessPool as e:  # a worker died: most often, an unguarded top-level call
                    raise RuntimeError(broken_pool_message(self.jobs, e)) from None
                except RuntimeError as e:  # in a spawned worker re-running an unguarded script
                    if "bootstrapping phase" not in str(e):
                        raise
                    raise RuntimeError(broken_pool_message(self.jobs, e)) from None
            else:
                results = [_run_trial(self.payload, todo[0])]
                todo = todo[:1]
            for s, r in zip(todo, results):
                self.trials.append(SizeTrial(s, _label(s), r["params"], r["train_loss"], r["val_loss"],
                                             r["seconds"], phase, used=False, state=r["state"]))
        return [t for t in (self.find(s) for s in sizes) if t is not None]

    def walk(self, sizes: list[Any], phase: str, keep_going: Callable[[SizeTrial], bool]) -> None:
        """Visit `sizes` in order, as the serial search would, `jobs` ahead; stop when `keep_going` says so."""
        i = 0
        while i < len(sizes):
            batch = sizes[i:i + self.jobs]
            got = self.run(batch, phase)
            for t in got:
                t.used = True
                if not keep_going(t):
                    return
            if len(got) < len(batch):  # the budget ran out
                return
            i += len(batch)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def _search(r: _Runner, ladder: list[Any], mlp: bool, depths: Sequence[int], target: float | None,
            improve: float, tol: float, val_margin: float) -> tuple[Any, str]:
    """The grow and shrink rules; returns `(chosen size, reason)`."""
    fit, why = _grow(r, ladder, mlp, depths, target, improve)
    if fit is None:
        spent = r.budget_note.replace("stopped at ", "") or "the budget"
        return None, (f"no size was tried: {spent} was spent before the first trial. Raise max_seconds (or "
                      "drop it) to run trials.")
    if fit.gap <= tol * fit.val_loss:
        return fit.size, (f"{why}; its val-train gap {fit.gap:.3g} is within {tol:g} x its val loss, so it does "
                          "not overfit.")
    return _shrink(r, _smaller_sizes(r, ladder, mlp, fit), fit, why, tol, val_margin)


def _grow(r: _Runner, ladder: list[Any], mlp: bool, depths: Sequence[int], target: float | None,
          improve: float) -> tuple[SizeTrial | None, str]:
    """Walk up the ladder (for MLPs: the widths, then the depths at the width reached) while the train loss
    improves; returns the smallest size that fits (None when no trial ran) and why."""
    state: dict[str, Any] = {"best": None, "why": ""}

    def grow(t: SizeTrial) -> bool:
        best = state["best"]
        if target is not None and t.train_loss <= target:
            state["best"] = t
            state["why"] = f"{t.label} is the smallest size whose train loss reaches the target {target:g}"
            state["reached"] = True
            return False
        if best is None or t.train_loss < best.train_loss * (1 - improve):
            state["best"] = t
            return True
        state["why"] = (f"{best.label} is the smallest size that fits: {t.label} did not lower the train loss by "
                        f"{improve:.0%} more ({t.train_loss:.4g} vs {best.train_loss:.4g})")
        return False

    r.walk(ladder, "grow (width)" if mlp else "grow", grow)
    fit: SizeTrial | None = state["best"]
    if fit is None:
        return None, ""
    if mlp and not state.get("reached") and len(depths) > 1 and not r.budget_note:
        width, state["why"] = fit.size[0], ""
        r.walk([(width,) * d for d in depths[1:]], "grow (depth)", grow)
        fit = state["best"]
    if not state["why"]:
        state["why"] = f"{fit.label} is the largest size tried and still improving (the ladder or budget ended)"
    return fit, state["why"]


def _smaller_sizes(r: _Runner, ladder: list[Any], mlp: bool, fit: SizeTrial) -> list[Any]:
    """The sizes below `fit`, largest first: for MLPs, halved widths at the same depth and any smaller size
    already trained; for a factory, the ladder's smaller sizes."""
    if not mlp:
        return ladder[:next(i for i, s in enumerate(ladder) if s == fit.size)][::-1]
    n_in, n_out = r.payload["in_features"], r.payload["out_features"]
    halved, w = [], fit.size[0] // 2
    while w >= 1:
        halved.append((w,) * len(fit.size))
        w //= 2
    pool = set(halved) | {t.size for t in r.trials if t.used}
    smaller = [s for s in pool if _mlp_params(n_in, s, n_out) < fit.params]
    return sorted(smaller, key=lambda s: (-_mlp_params(n_in, s, n_out), s))


def _shrink(r: _Runner, candidates: list[Any], fit: SizeTrial, why: str, tol: float,
            val_margin: float) -> tuple[Any, str]:
    """`fit` overfits: take the largest smaller size whose gap is within tolerance and whose val loss is within
    the margin of the best; failing that, the size with the smallest relative gap within the margin."""
    chosen: dict[str, Any] = {}

    def shrink(t: SizeTrial) -> bool:
        limit = min(x.val_loss for x in r.trials if x.used) * (1 + val_margin)
        if t.train_loss > limit:  # underfits: smaller sizes fit worse still, and val loss rarely beats train loss
            chosen["stop"] = t
            return False
        if t.val_loss > limit:
            return True
        if t.gap <= tol * t.val_loss:
            chosen["size"] = t
            return False
        return True

    r.walk(candidates, "shrink", shrink)
    if "size" in chosen:
        t = chosen["size"]
        return t.size, (f"{why}, but overfits (gap {fit.gap:.3g}); {t.label} is the largest smaller size whose gap "
                        f"{t.gap:.3g} is within {tol:g} x its val loss, its val loss {t.val_loss:.4g} within "
                        f"{val_margin:.0%} of the best.")
    best_val = min(x.val_loss for x in r.trials if x.used)
    ok = [t for t in r.trials if t.used and t.val_loss <= best_val * (1 + val_margin)]
    t = min(ok, key=lambda x: (x.gap / max(x.val_loss, 1e-12), x.params))
    stop = chosen.get("stop")
    tail = f" (the search stopped at {stop.label}, whose train loss is already above that)" if stop else ""
    return t.size, (f"{why}, but overfits (gap {fit.gap:.3g}); no smaller size closed the gap to {tol:g} x its val "
                    f"loss without giving up more than {val_margin:.0%} of the best val loss{tail}, so {t.label} "
                    "has the smallest gap among the sizes within that margin.")


def _mlp_params(n_in: int, hidden: tuple[int, ...], n_out: int) -> int:
    """The parameter count of an MLP (weights and biases), without building it."""
    widths = [n_in, *hidden, n_out]
    return sum((a + 1) * b for a, b in zip(widths, widths[1:]))
