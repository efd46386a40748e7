"""The verdict on a run, in plain words: diverged, overfitting, underfitting or healthy.

Each verdict comes from the history (one dict per epoch: `loss`, `val_loss`, `lr`) and the trivial
baseline's training loss (the loss of always predicting the training targets' mean, or the class
frequencies), by the rules below, checked in this order; the first that holds is the verdict. `S` is
the scale of the losses: the baseline loss when it is known, else the first epoch's training loss.

1. **diverged**: a training or validation loss is NaN/inf (or fit stopped on one), or the final
   training loss is more than `DIVERGE_RATIO` (3) times the lowest training loss of the run and that
   rise is more than `DIVERGE_SHARE` (10%) of the fall before it (first loss - lowest).
2. **overfitting** (needs validation data): the validation loss reached its minimum at epoch k before
   the last epoch; afterwards the training loss kept falling (final < at epoch k) while the final
   validation loss is more than `OVERFIT_RISE` (10%) above that minimum. Or the final validation loss
   is more than `GAP_SHARE` (0.2) x S above the final training loss (the gap rule).
3. **underfitting** (needs the baseline): the final training loss is at least `UNDERFIT_SHARE` (90%)
   of the baseline loss (not clearly better than predicting the mean / the majority class), or it
   plateaued high: at least 6 epochs, the last third of them lowered the training loss by less than
   `PLATEAU_FALL` (1%), and it is still at least `PLATEAU_HIGH` (50%) of the baseline loss.
4. **healthy**: the training loss fell (final < first), and the validation loss fell too (final <
   first) and stayed close to it (within `GAP_SHARE` x S), which rule 2 already checked.

Anything else (a single epoch, a loss that did not fall) is **inconclusive**, naming why. Without
validation data, rules 2 and 4's validation half cannot be decided: the verdict says so in
`not_judged`. Without a baseline (a custom loss, targets fitloop cannot see), rule 3 is not judged.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.batches import in_memory
from ..evaluation import resolved_task

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["Verdict", "judge", "verdict_of", "baseline_loss", "targets_of", "KINDS", "DIVERGE_RATIO", "DIVERGE_SHARE",
           "OVERFIT_RISE", "GAP_SHARE", "UNDERFIT_SHARE", "PLATEAU_FALL", "PLATEAU_HIGH"]

KINDS = ("diverged", "overfitting", "underfitting", "healthy", "inconclusive")
DIVERGE_RATIO = 3.0   # final training loss / lowest training loss
DIVERGE_SHARE = 0.1   # the rise, as a share of the fall before it
OVERFIT_RISE = 0.10   # final val loss above its minimum, relative
GAP_SHARE = 0.2       # final val loss - final train loss, in units of S
UNDERFIT_SHARE = 0.9  # final train loss / baseline loss
PLATEAU_FALL = 0.01   # relative fall of the training loss over the last third of the epochs
PLATEAU_HIGH = 0.5    # final train loss / baseline loss that counts as high
PLATEAU_MIN_EPOCHS = 6

SIZE_SEARCH = "`fitloop size-search` (the capacity search)"


@dataclass
class Verdict:
    """What happened in a run, why we think so, and one thing to try.

    Attributes:
        kind: `"diverged"`, `"overfitting"`, `"underfitting"`, `"healthy"` or `"inconclusive"`.
        reason: what in the history led to the verdict, with the numbers.
        suggestion: one concrete thing to try next.
        not_judged: the verdicts that could not be decided, each with why (no validation data, no baseline).
        facts: the numbers the rules used (epochs, best_epoch, losses, baseline_loss, lr, kept_epoch).
    """

    kind: str
    reason: str
    suggestion: str
    not_judged: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(d["kind"], d.get("reason", ""), d.get("suggestion", ""), list(d.get("not_judged") or []),
                   dict(d.get("facts") or {}))

    def __str__(self) -> str:
        lines = [f"Verdict: {self.kind}. {self.reason[:1].upper()}{self.reason[1:]}", f"Suggestion: {self.suggestion}"]
        lines += [f"Not judged: {n}" for n in self.not_judged]
        return "\n".join(lines)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    return [float(h[key]) for h in history if isinstance(h.get(key), (int, float))]


def judge(history: list[dict[str, Any]], *, baseline_loss: float | None = None, lr: float | None = None,
          kept_epoch: int | None = None, error: BaseException | str | None = None) -> Verdict:
    """The verdict on a history, by the rules in this module's docstring.

    Args:
        history: one dict per epoch (`Trainer.history`, or the lines of `history.jsonl`).
        baseline_loss: the training loss of the trivial baseline (see `baseline_loss`), or None.
        lr: the learning rate the run used, named in the `diverged` suggestion.
        kept_epoch: the epoch whose weights the model ends with (early stopping restores its best).
        error: the error fit stopped on, if any (a `NonFiniteError` means diverged).

    Returns:
        A `Verdict`.
    """
    loss, val = _series(history, "loss"), _series(history, "val_loss")
    facts = _facts(history, loss, val, baseline_loss, lr, kept_epoch)
    # with no epoch finished there is no history to tell whether there was validation data: say nothing of it
    not_judged = [] if any("val_loss" in h for h in history) or not history else [
        "overfitting and whether the validation loss stayed close to the training loss: the run had no "
        "validation data (pass val to fit, or keep a validation split)"]
    if baseline_loss is None or not _finite(baseline_loss):
        not_judged.append("underfitting: there is no trivial baseline loss for this loss function or data "
                          "(fitloop computes it for torch.nn losses on in-memory training targets)")
        baseline_loss = None

    def verdict(kind: str, reason: str, suggestion: str) -> Verdict:
        return Verdict(kind, reason, suggestion, not_judged, facts)

    diverged = _diverged(history, loss, error)
    if diverged:
        return verdict("diverged", diverged, _lr_advice(lr))
    if not loss:
        return verdict("inconclusive", "no epoch finished, so there is no history to judge.",
                       "Train for at least a few epochs.")
    scale = baseline_loss if baseline_loss else (loss[0] if loss[0] > 0 else 1.0)
    if val:
        over = _overfitting(history, loss, val, scale)
        if over:
            return verdict("overfitting", over, _overfit_advice(facts))
    if baseline_loss is not None:
        under = _underfitting(loss, baseline_loss)
        if under:
            return verdict("underfitting", under, _underfit_advice(loss))
    return verdict(*_trend(len(history), loss, val, baseline_loss, scale))


def _facts(history: list[dict[str, Any]], loss: list[float], val: list[float], baseline_loss: float | None,
           lr: float | None, kept_epoch: int | None) -> dict[str, Any]:
    """The numbers the verdict rests on (`Verdict.facts`)."""
    epochs = len(history)
    facts: dict[str, Any] = {"epochs": epochs, "baseline_loss": baseline_loss, "lr": lr}
    if loss:
        facts.update(first_loss=loss[0], final_loss=loss[-1], min_loss=min(loss))
    if val:
        k = min(range(len(val)), key=val.__getitem__)
        facts.update(final_val_loss=val[-1], min_val_loss=val[k], best_epoch=history[k].get("epoch", k + 1))
    # kept_epoch 0: early stopping kept the initial weights (no epoch beat the model it started as)
    facts["kept_epoch"] = kept_epoch if kept_epoch is not None else (history[-1].get("epoch", epochs) if history
                                                                      else None)
    facts["restored"] = kept_epoch is not None  # early stopping put the weights it chose back
    return facts


def _trend(epochs: int, loss: list[float], val: list[float], baseline_loss: float | None,
           scale: float) -> tuple[str, str, str]:
    """Rule 4 once rules 1-3 did not hold: `(kind, reason, suggestion)`, healthy or inconclusive."""
    if epochs < 2:
        return "inconclusive", "one epoch is too few to see a trend.", "Train for more epochs."
    if loss[-1] >= loss[0]:
        return ("inconclusive", f"the training loss did not fall ({loss[0]:.4g} -> {loss[-1]:.4g}).",
                "Check the learning rate (try fitloop's lr_find) and that the targets match the loss.")
    if val and val[-1] >= val[0]:
        return ("inconclusive", f"the training loss fell ({loss[0]:.4g} -> {loss[-1]:.4g}) but the "
                f"validation loss did not ({val[0]:.4g} -> {val[-1]:.4g}).",
                "Check that the validation data comes from the same distribution as the training data.")
    reason = f"the training loss fell from {loss[0]:.4g} to {loss[-1]:.4g}"
    if baseline_loss is not None:
        reason += f" (the trivial baseline's is {baseline_loss:.4g})"
    if val:
        reason += (f", and the validation loss fell to {val[-1]:.4g} and stayed within {GAP_SHARE:g} x "
                   f"{scale:.4g} of it")
    return ("healthy", reason + ".", "Nothing to fix. To go further, try more epochs or a bigger model, "
            "and watch that the validation loss keeps up.")


def _diverged(history: list[dict[str, Any]], loss: list[float], error: BaseException | str | None) -> str | None:
    name = error if isinstance(error, str) else type(error).__name__ if error is not None else None
    if name == "NonFiniteError":
        return f"training stopped on a NaN/inf value ({error})." if not isinstance(error, str) else \
            "training stopped on a NaN/inf loss or gradient."
    for h in history:
        for key in ("loss", "val_loss"):
            if key in h and not _finite(h[key]):
                return f"the {'validation' if key == 'val_loss' else 'training'} loss is {h[key]} at epoch " \
                       f"{h.get('epoch')}."
    if len(loss) >= 2:
        low = min(loss)
        rise, fall = loss[-1] - low, loss[0] - low
        if loss[-1] > DIVERGE_RATIO * low and rise > DIVERGE_SHARE * fall:
            at = loss.index(low) + 1
            return (f"the training loss rose sharply: from {low:.4g} at epoch {at} to {loss[-1]:.4g} at the end "
                    f"(more than {DIVERGE_RATIO:g}x).")
    return None


def _overfitting(history: list[dict[str, Any]], loss: list[float], val: list[float], scale: float) -> str | None:
    k = min(range(len(val)), key=val.__getitem__)
    epoch_k = history[k].get("epoch", k + 1)
    if k < len(val) - 1 and len(loss) == len(val) and loss[-1] < loss[k] and val[-1] > (1 + OVERFIT_RISE) * val[k]:
        return (f"the validation loss reached its minimum {val[k]:.4g} at epoch {epoch_k}; afterwards the training "
                f"loss kept falling ({loss[k]:.4g} -> {loss[-1]:.4g}) while the validation loss rose to "
                f"{val[-1]:.4g} (more than {OVERFIT_RISE:.0%} above its minimum).")
    gap = val[-1] - loss[-1]
    if gap > GAP_SHARE * scale:
        return (f"the final validation loss {val[-1]:.4g} is far above the final training loss {loss[-1]:.4g} "
                f"(a gap of {gap:.4g}, more than {GAP_SHARE:g} x {scale:.4g}).")
    return None


def _underfitting(loss: list[float], base: float) -> str | None:
    if loss[-1] >= UNDERFIT_SHARE * base:
        return (f"the final training loss {loss[-1]:.4g} is not clearly better than the trivial baseline's "
                f"{base:.4g} (predicting the mean or the majority class; at least {UNDERFIT_SHARE:.0%} of it).")
    n = len(loss)
    if n >= PLATEAU_MIN_EPOCHS and loss[-1] >= PLATEAU_HIGH * base:
        start = loss[n - max(2, n // 3) - 1]
        if start - loss[-1] < PLATEAU_FALL * abs(start):
            return (f"the training loss plateaued high: {start:.4g} -> {loss[-1]:.4g} over the last {max(2, n // 3)} "
                    f"epochs (less than {PLATEAU_FALL:.0%}), still {loss[-1] / base:.0%} of the trivial baseline's "
                    f"{base:.4g}.")
    return None


def _lr_advice(lr: float | None) -> str:
    if lr:
        return (f"Lower the learning rate tenfold: lr={lr / 10:.3g} (this run used {lr:.3g}); "
                f"`--lr {lr / 10:.3g}` in the CLI. Gradient clipping (clip_grad_norm=1.0) also helps.")
    return "Lower the learning rate tenfold; gradient clipping (clip_grad_norm=1.0) also helps."


def _overfit_advice(facts: dict[str, Any]) -> str:
    best, kept = facts.get("best_epoch"), facts.get("kept_epoch")
    rest = ("add regularisation (weight_decay=1e-4, dropout=0.1, input_noise=0.05); get more data; or use a "
            "smaller model.")
    if facts.get("restored") and kept == best:
        return (f"The model keeps the weights of epoch {kept} (the best, restored by early stopping). To do "
                f"better, {rest}")
    if facts.get("restored"):  # early stopping's margin kept an earlier epoch over a slightly lower minimum
        which = "its initial weights (epoch 0, before any training)" if kept == 0 else f"the weights of epoch {kept}"
        return (f"Early stopping kept {which}: the lowest validation loss, at epoch {best}, was not lower by "
                f"the margin early stopping asks for. To make training pay off, {rest}")
    return (f"The model keeps the weights of epoch {kept}; the best were epoch {best}'s. Use early stopping "
            f"(fl.EarlyStopping(patience=5), `--early-stopping 5`) to keep the best epoch's weights; {rest}")


def _underfit_advice(loss: list[float]) -> str:
    still = len(loss) >= 2 and loss[-1] < loss[-2] * (1 - PLATEAU_FALL)
    first = "The loss was still falling at the end: train for more epochs first. " if still else ""
    return (f"{first}Two possible reasons: the model is too simple for the data, or the inputs carry no "
            "information about the target. To tell them apart, train a bigger model (e.g. hidden=[256, 128], "
            "`--hidden 256,128`): if the training loss then drops well below the baseline, the model was too "
            f"small; if it does not, the inputs do not predict the target. {SIZE_SEARCH} runs that comparison "
            "over several sizes.")


# --------------------------------------------------------------------------- from a Trainer


def baseline_loss(loss_fn: Any, y: Any, task: str) -> float | None:
    """The training loss of the trivial model: the targets' mean (regression) or their class
    frequencies as logits (classification), scored with the run's own loss function.

    Returns None when it cannot be computed (unlabelled data, a loss that rejects the constant output).
    """
    if not isinstance(y, torch.Tensor) or y.numel() == 0:
        return None
    try:
        with torch.no_grad():
            if task == "multiclass" and not y.is_floating_point():
                y = y.long().reshape(-1)
                prior = torch.bincount(y.cpu(), minlength=int(y.max()) + 1).double() / len(y)
                out = torch.log(prior.clamp_min(1e-12)).float().expand(len(y), -1).to(y.device)
            elif task == "binary":
                p = float(y.float().mean().clamp(1e-6, 1 - 1e-6))
                out = torch.full(y.shape, math.log(p / (1 - p)), device=y.device)
            else:
                y = y.float()
                out = y.mean(0, keepdim=True).expand_as(y)
            value = float(loss_fn(out, y))
    except Exception:  # noqa: BLE001 - a user loss that does not take a constant output: no baseline
        return None
    return value if math.isfinite(value) else None


def targets_of(data: Any) -> Any:
    """The targets of in-memory training data, else None (another Dataset is not read).

    In memory: `(X, y)`, a `Split`, and what the Trainer batches as tensors too (`fitloop.data.batches.in_memory`):
    a `TensorDataset` of `(X, y)`, a `Subset` of one, a default-collate `DataLoader` over one (its tensors).
    """
    memory = in_memory(data) if isinstance(data, (Dataset, DataLoader)) else None
    if memory is not None:
        return memory[0].y
    y = getattr(data, "y", None)
    if y is None and isinstance(data, (tuple, list)) and len(data) == 2:
        y = data[1]
    if y is not None and not hasattr(y, "numel"):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError):
            return None
    return y


def verdict_of(trainer: Trainer, error: BaseException | None = None) -> Verdict:
    """The verdict on `trainer`'s history, its baseline loss computed from its training targets."""
    y = targets_of(trainer.train_data)
    task = resolved_task(trainer.task)
    if trainer.task == "classification" and y is not None and not y.is_floating_point():
        task = "multiclass"
    fn = trainer.loss_fn  # only torch's own losses: a user's loss may count or log its calls
    torch_loss = (getattr(fn, "__module__", None) or type(fn).__module__).startswith("torch.nn")
    base = baseline_loss(trainer.compute_loss, y.to(trainer.device), task) if torch_loss and y is not None else None
    lr = trainer.config.lr or (trainer.history[0].get("lr") if trainer.history else None)
    kept = next((getattr(cb, "best_epoch", 0) for cb in trainer.callbacks  # EarlyStopping, by duck typing
                 if getattr(cb, "restore_best_weights", False)
                 and (getattr(cb, "best_epoch", 0) or getattr(cb, "from_start", False))), None)
    return judge(trainer.history, baseline_loss=base, lr=lr, kept_epoch=kept, error=error)
