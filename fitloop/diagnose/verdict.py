"""The verdict on a run, in plain words: diverged, overfitting, underfitting, plateau or healthy.

Each verdict comes from the history (one dict per epoch: `loss`, `val_loss`, `lr`), the trivial
baseline's training loss (the loss of always predicting the training targets' mean, or the class
frequencies), the epoch whose weights the run kept, and the noise of the validation loss, by the rules
below, checked in this order; the first that holds is the verdict.

**The noise margin.** Two validation losses are told apart only when they differ by more than the noise
of the validation loss: one standard error of the mean validation loss over its rows (`val_se`; the
per-row losses' standard deviation / sqrt(rows), which `verdict_of` measures on in-memory validation rows,
or early stopping's one-standard-error margin when it has one). Without it, `NOISE_SHARE` (10%) of the
lowest validation loss stands in.

1. **diverged**: a training or validation loss is NaN/inf (or fit stopped on one), or the final
   training loss is more than `DIVERGE_RATIO` (3) times the lowest training loss of the run and that
   rise is more than `DIVERGE_SHARE` (10%) of the fall before it (first loss - lowest).
2. **underfitting / plateau** (needs the baseline): the final training loss is at least
   `UNDERFIT_SHARE` (90%) of the baseline loss, or it plateaued high (at least 6 epochs, the last
   third of them lowered it by less than `PLATEAU_FALL` (1%), and it is still at least `PLATEAU_HIGH`
   (50%) of the baseline loss). That alone has two textbook causes: the model is too simple, or the
   data hold no more information. It is **underfitting** only with evidence that more training or more
   capacity would lower the validation loss: a capacity probe (`probe`: a larger model trained briefly
   on the same rows) reached a validation loss lower by more than `PROBE_MARGINS` (2) noise margins (its
   lowest is the best of its epochs, a choice that flatters it), which names the cause; or, over the
   last third of the epochs, the training loss fell by more than 1% and the validation loss too, to its
   lowest at the last epoch (train longer). Without that evidence it is a **plateau**, reported with
   both causes and no advice to grow the model; a probe that did no better says the data are the limit.
   A training loss this high has fitted no noise of its rows, so this rule comes before overfitting.
3. **overfitting** (needs validation data): the model the run kept is clearly worse on the validation
   rows than the best epoch was (its validation loss is above the lowest by more than the noise margin)
   and the training loss kept falling after that best epoch (by more than 1%): typically no early
   stopping, and the validation loss rose after epoch k. A validation loss that rose after epoch k
   while the run kept epoch k (early stopping), or an epoch within the noise of it, is no problem: the
   verdict is healthy and says what happened ("the validation loss rose after epoch 30 (...); early
   stopping kept epoch 30").
4. **The starting fit** (`kept_epoch == 0`): early stopping kept the model the run started from (a
   table run's linear fit): no epoch of training beat it by the margin early stopping asks for. That is
   said in one line, as healthy.
5. **healthy**: the training loss fell, and the validation loss fell too; or the first epoch's validation
   loss, already clearly below the baseline's, stayed the lowest within the noise (learnt in one epoch).

Anything else (a single epoch, a loss that did not fall) is **inconclusive**, naming why. Without
validation data, rules 3, 4 and 5's validation half cannot be decided: the verdict says so in
`not_judged`. Without a baseline (a custom loss, targets fitloop cannot see), rule 2 is not judged.
Only `diverged`, `overfitting` and `underfitting` are problems (`Verdict.problem`).

**Units.** The losses are in the units the model was trained in. A table run trains a regression model
on the standardised target (minus its training mean, over its training standard deviation): it passes
`units`, and the verdict says so.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.batches import in_memory
from ..evaluation import resolved_task
from ..optim import MembersLoss

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["Verdict", "judge", "verdict_of", "baseline_loss", "targets_of", "val_standard_error", "per_row_losses",
           "rows_of",
           "capacity_probe", "KINDS",
           "PROBLEMS", "DIVERGE_RATIO", "DIVERGE_SHARE", "NOISE_SHARE", "UNDERFIT_SHARE", "PLATEAU_FALL",
           "PLATEAU_HIGH", "STANDARDISED"]

KINDS = ("diverged", "overfitting", "underfitting", "plateau", "healthy", "inconclusive")
PROBLEMS = ("diverged", "overfitting", "underfitting")  # the verdicts that ask the user to change something
DIVERGE_RATIO = 3.0   # final training loss / lowest training loss
DIVERGE_SHARE = 0.1   # the rise, as a share of the fall before it
GAP_SHARE = 0.2       # "close": val loss - train loss within this share of the baseline loss (said, not judged)
NOISE_SHARE = 0.10    # the noise margin without a standard error: this share of the lowest val loss
UNDERFIT_SHARE = 0.9  # final train loss / baseline loss
PLATEAU_FALL = 0.01   # relative fall of the training loss over the last third of the epochs
PLATEAU_HIGH = 0.5    # final train loss / baseline loss that counts as high
PLATEAU_MIN_EPOCHS = 6
# a probe's lowest validation loss is the best of its epochs (biased low by that choice): it must beat the
# kept model by this many noise margins to count as evidence that more capacity helps
PROBE_MARGINS = 2.0
# what a table run's regression losses are in (`judge(units=...)`)
STANDARDISED = "standardised target units: the target minus its training mean, over its training std"

SIZE_SEARCH = "`fitloop size-search` (the capacity search)"


@dataclass
class Verdict:
    """What happened in a run, why we think so, and one thing to try.

    Attributes:
        kind: one of `KINDS`: `"diverged"`, `"overfitting"`, `"underfitting"`, `"plateau"`, `"healthy"` or
            `"inconclusive"`.
        reason: what in the history led to the verdict, with the numbers.
        suggestion: one concrete thing to try next; empty when there is nothing to do (the verdict is then
            one line).
        not_judged: the verdicts that could not be decided, each with why (no validation data, no baseline).
        facts: the numbers the rules used (epochs, best_epoch, losses, baseline_loss, lr, kept_epoch,
            kept_val_loss, val_se, margin, units, probe; kept_scores: the starting model's validation
            scores when the run kept it).
    """

    kind: str
    reason: str
    suggestion: str
    not_judged: list[str] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def problem(self) -> bool:
        """Whether the verdict asks the user to change something (`PROBLEMS`)."""
        return self.kind in PROBLEMS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Verdict:
        return cls(d["kind"], d.get("reason", ""), d.get("suggestion", ""), list(d.get("not_judged") or []),
                   dict(d.get("facts") or {}))

    def __str__(self) -> str:
        lines = [f"Verdict: {self.kind}. {self.reason[:1].upper()}{self.reason[1:]}"]
        lines += [f"Suggestion: {self.suggestion}"] if self.suggestion else []  # none: nothing to do, one line
        lines += [f"Not judged: {n}" for n in self.not_judged]
        return "\n".join(lines)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _series(history: list[dict[str, Any]], key: str) -> list[float]:
    return [float(h[key]) for h in history if isinstance(h.get(key), (int, float))]


def judge(history: list[dict[str, Any]], *, baseline_loss: float | None = None, lr: float | None = None,
          kept_epoch: int | None = None, error: BaseException | str | None = None, val_se: float | None = None,
          kept_val_loss: float | None = None, probe: dict[str, Any] | None = None,
          units: str | None = None) -> Verdict:
    """The verdict on a history, by the rules in this module's docstring.

    Args:
        history: one dict per epoch (`Trainer.history`, or the lines of `history.jsonl`).
        baseline_loss: the training loss of the trivial baseline (see `baseline_loss`), or None.
        lr: the learning rate the run used, named in the `diverged` suggestion.
        kept_epoch: the epoch whose weights the model ends with (early stopping restores its best; 0: the
            model the run started from).
        error: the error fit stopped on, if any (a `NonFiniteError` means diverged).
        val_se: the standard error of the validation loss (`val_standard_error`): the noise margin.
        kept_val_loss: the kept model's validation loss when it is not in the history (epoch 0's).
        probe: a capacity probe's result: `{"val_loss": ..., "model": "what it was", "epochs": n}`.
        units: what the losses are in, when not the target's own units (e.g. `STANDARDISED`).

    Returns:
        A `Verdict`.
    """
    loss, val = _series(history, "loss"), _series(history, "val_loss")
    facts = _facts(history, loss, val, baseline_loss, lr, kept_epoch, kept_val_loss, val_se)
    if units:
        facts["units"] = units
    if probe:
        facts["probe"] = dict(probe)
    # with no epoch finished there is no history to tell whether there was validation data: say nothing of it
    not_judged = [] if any("val_loss" in h for h in history) or not history else [
        "overfitting and whether the validation loss stayed close to the training loss: the run had no "
        "validation data (pass val to fit, or keep a validation split)"]
    if baseline_loss is None or not _finite(baseline_loss):
        not_judged.append("underfitting: there is no trivial baseline loss for this loss function or data "
                          "(fitloop computes it for torch.nn losses on in-memory training targets)")
        baseline_loss = None

    def verdict(kind: str, reason: str, suggestion: str) -> Verdict:
        if units and kind not in ("inconclusive",) and loss:
            reason = reason.rstrip(".") + f"; losses in {units}."
        return Verdict(kind, reason, suggestion, not_judged, facts)

    diverged = _diverged(history, loss, error)
    if diverged:
        return verdict("diverged", diverged, _lr_advice(lr))
    if not loss:
        return verdict("inconclusive", "no epoch finished, so there is no history to judge.",
                       "Train for at least a few epochs.")
    high = _high(loss, baseline_loss) if baseline_loss is not None else None
    if high:  # a training loss that stays high has fitted no noise of its rows: not overfitting, whatever val did
        return verdict(*_capacity(high, loss, val, facts))
    if val:
        over = _overfitting(loss, val, facts)
        if over:
            return verdict("overfitting", over, _overfit_advice(facts))
    if val and facts.get("kept_epoch") == 0:
        return verdict("healthy", *_kept_start(facts))
    return verdict(*_trend(len(history), loss, val, baseline_loss, facts))


def _facts(history: list[dict[str, Any]], loss: list[float], val: list[float], baseline_loss: float | None,
           lr: float | None, kept_epoch: int | None, kept_val_loss: float | None,
           val_se: float | None) -> dict[str, Any]:
    """The numbers the verdict rests on (`Verdict.facts`)."""
    epochs = len(history)
    facts: dict[str, Any] = {"epochs": epochs, "baseline_loss": baseline_loss, "lr": lr}
    if loss:
        facts.update(first_loss=loss[0], final_loss=loss[-1], min_loss=min(loss))
    # kept_epoch 0: early stopping kept the initial weights (no epoch beat the model it started as)
    facts["kept_epoch"] = kept_epoch if kept_epoch is not None else (history[-1].get("epoch", epochs) if history
                                                                      else None)
    facts["restored"] = kept_epoch is not None  # early stopping put the weights it chose back
    if val:
        k = min(range(len(val)), key=val.__getitem__)
        facts.update(final_val_loss=val[-1], min_val_loss=val[k], best_epoch=history[k].get("epoch", k + 1))
        kept_row = next((h for h in history if h.get("epoch") == facts["kept_epoch"] and "val_loss" in h), None)
        kept = float(kept_row["val_loss"]) if kept_row is not None else kept_val_loss
        facts["kept_val_loss"] = kept if _finite(kept) else val[-1]
        se = val_se if _finite(val_se) and val_se > 0 else None  # type: ignore[operator]
        facts["val_se"] = se
        facts["margin"] = se if se is not None else NOISE_SHARE * abs(val[k])
    return facts


def _trend(epochs: int, loss: list[float], val: list[float], baseline_loss: float | None,
           facts: dict[str, Any]) -> tuple[str, str, str]:
    """Rule 5 once rules 1-4 did not hold: `(kind, reason, suggestion)`, healthy or inconclusive."""
    if epochs < 2:
        return "inconclusive", "one epoch is too few to see a trend.", "Train for more epochs."
    if loss[-1] >= loss[0]:
        return ("inconclusive", f"the training loss did not fall ({loss[0]:.4g} -> {loss[-1]:.4g}).",
                "Check the learning rate (try fitloop's lr_find) and that the targets match the loss.")
    if val and _rose_and_kept(facts):
        return _rose_and_kept(facts)  # type: ignore[return-value]
    if val and min(val) >= val[0] and baseline_loss is not None and val[0] < baseline_loss - facts["margin"]:
        return _learnt_at_once(loss, val, baseline_loss, facts)
    if val and min(val) >= val[0]:
        return ("inconclusive", f"the training loss fell ({loss[0]:.4g} -> {loss[-1]:.4g}) but the "
                f"validation loss did not ({val[0]:.4g} -> {val[-1]:.4g}).",
                "Check that the validation data comes from the same distribution as the training data.")
    reason = f"the training loss fell from {loss[0]:.4g} to {loss[-1]:.4g}"
    if baseline_loss is not None:
        reason += f" (the trivial baseline's is {baseline_loss:.4g})"
    if val:
        reason += f", and the validation loss fell to {val[-1]:.4g}"
        scale = baseline_loss if baseline_loss else (loss[0] if loss[0] > 0 else 1.0)
        if val[-1] - loss[-1] <= GAP_SHARE * scale:  # a description, not a rule: a gap alone is no problem
            reason += f" and stayed within {GAP_SHARE:g} x {scale:.4g} of it"
    return ("healthy", reason + ".", "Nothing to fix. To go further, try more epochs or a bigger model, "
            "and watch that the validation loss keeps up.")


def _learnt_at_once(loss: list[float], val: list[float], baseline_loss: float,
                    facts: dict[str, Any]) -> tuple[str, str, str]:
    """Rule 5 when the first epoch's validation loss, already clearly below the trivial baseline's, was the
    lowest and later epochs stayed within the noise of it (rule 3 did not hold): what the rows allow was
    learnt in the first epoch, and the training loss's further fall did not carry over to new rows."""
    return ("healthy", f"the validation loss was lowest after the first epoch ({val[0]:.4g}; the trivial "
            f"baseline's is {baseline_loss:.4g}) and later epochs stayed within the noise of it (the last, "
            f"{val[-1]:.4g}, is within {_margin_words(facts)}); the training loss fell further ({loss[0]:.4g} -> "
            f"{loss[-1]:.4g}) without improving it: the model learnt what these rows allow in its first epoch.",
            "Nothing to fix: the model kept is as good on the validation rows as any epoch of the run. More "
            "informative features or more rows could lower the validation loss further.")


def _rose_and_kept(facts: dict[str, Any]) -> tuple[str, str, str] | None:
    """Overfitting that the run already dealt with: the validation loss rose after its best epoch by more
    than the noise, and the model kept is that epoch or one within the noise of it (rule 3 did not hold)."""
    best, kept = facts["best_epoch"], facts["kept_epoch"]
    if best >= facts["epochs"] or facts["final_val_loss"] <= facts["min_val_loss"] + facts["margin"]:
        return None
    who = "early stopping kept" if facts["restored"] else "the run kept"
    near = "" if kept == best else f" (validation loss {facts['kept_val_loss']:.4g}, within the noise of the best)"
    reason = (f"the validation loss rose after epoch {best} ({facts['min_val_loss']:.4g} -> "
              f"{facts['final_val_loss']:.4g}); {who} epoch {kept}{near}. The model began to fit its training "
              f"rows' noise after that epoch, and the run did not keep those weights")
    return ("healthy", reason + ".", "Nothing to fix: the model kept is as good on the validation rows as any "
            "epoch of the run. Regularisation or more data could lower the validation loss further.")


def _margin_words(facts: dict[str, Any]) -> str:
    """How the noise margin was set, for the reason."""
    if facts.get("val_se") is not None:
        return f"one standard error of the validation loss, {facts['margin']:.3g}"
    return f"{NOISE_SHARE:.0%} of the lowest validation loss, {facts['margin']:.3g}"


def _kept_start(facts: dict[str, Any]) -> tuple[str, str]:
    """Rule 4, in one line (and nothing to fix): the run kept the model it started from."""
    return (f"kept the model the run started from (epoch 0; a table run's linear fit): no epoch of training beat "
            f"its validation loss {facts['kept_val_loss']:.4g} by more than the noise (the lowest, "
            f"{facts['min_val_loss']:.4g} at epoch {facts['best_epoch']}, is within {_margin_words(facts)}).",
            "Nothing to fix.")


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


def _overfitting(loss: list[float], val: list[float], facts: dict[str, Any]) -> str | None:
    """Rule 3: the kept model's validation loss is clearly (by more than the margin) above the lowest."""
    kept, low, best = facts["kept_val_loss"], facts["min_val_loss"], facts["best_epoch"]
    k = best - 1 if 0 < best <= len(loss) else len(loss) - 1
    # the training loss must have kept falling after the best epoch: a validation loss that wobbles while the
    # training loss stands still is noise or an unsteady step, not a model fitting its training rows' noise
    if kept - low <= facts["margin"] or loss[k] - loss[-1] <= PLATEAU_FALL * abs(loss[k]):
        return None
    rose = (f"the validation loss reached its minimum {low:.4g} at epoch {best} and rose after it (to {val[-1]:.4g})"
            f" while the training loss kept falling ({loss[k]:.4g} -> {loss[-1]:.4g})")
    return (f"{rose}; the model keeps epoch {facts['kept_epoch']}, whose validation loss {kept:.4g} is worse than "
            f"the lowest by {kept - low:.4g}, more than the noise ({_margin_words(facts)}).")


def _high(loss: list[float], base: float) -> str | None:
    """Rule 2's condition: the training loss is not clearly below the baseline, or it plateaued high."""
    if loss[-1] >= UNDERFIT_SHARE * base:
        return (f"the final training loss {loss[-1]:.4g} is not clearly better than the trivial baseline's "
                f"{base:.4g} (predicting the mean or the majority class; at least {UNDERFIT_SHARE:.0%} of it)")
    n = len(loss)
    if n >= PLATEAU_MIN_EPOCHS and loss[-1] >= PLATEAU_HIGH * base:
        start = loss[n - max(2, n // 3) - 1]
        if start - loss[-1] < PLATEAU_FALL * abs(start):
            return (f"the training loss plateaued high: {start:.4g} -> {loss[-1]:.4g} over the last "
                    f"{max(2, n // 3)} epochs (less than {PLATEAU_FALL:.0%}), still {loss[-1] / base:.0%} of the "
                    f"trivial baseline's {base:.4g}")
    return None


def _still_falling(loss: list[float], val: list[float], facts: dict[str, Any]) -> bool:
    """More training would likely help: over the last third of the epochs the training loss fell by more than
    `PLATEAU_FALL`, and the validation loss (when there is one) too, to its lowest at the last epoch."""
    n = len(loss)
    if n < 2:
        return False
    start = n - max(2, n // 3) - 1 if n > 2 else 0
    if loss[start] - loss[-1] <= PLATEAU_FALL * abs(loss[start]):
        return False
    if not val:
        return True
    # a trend of the same validation rows, epoch to epoch: not held to the noise margin, which is for telling two
    # models apart (the rows' own spread would hide a steady fall over a few epochs)
    return facts.get("best_epoch") == facts.get("epochs") and len(val) == n and \
        val[start] - val[-1] > PLATEAU_FALL * abs(val[start])


def _capacity(high: str, loss: list[float], val: list[float], facts: dict[str, Any]) -> tuple[str, str, str]:
    """Rule 2: underfitting with evidence (still falling, or a probe that did better), else a plateau."""
    probe = facts.get("probe")
    still = _still_falling(loss, val, facts)
    if probe and val and _finite(probe.get("val_loss")):
        what = f"a larger model ({probe.get('model', 'the probe')}, {probe.get('epochs', '?')} epochs)"
        gain = facts["kept_val_loss"] - float(probe["val_loss"])
        if gain > PROBE_MARGINS * facts["margin"]:  # the stronger evidence: it names the cause
            return ("underfitting", f"{high}; {what} reached a validation loss of {probe['val_loss']:.4g}, lower "
                    f"than this run's {facts['kept_val_loss']:.4g} by more than {PROBE_MARGINS:g} x the noise "
                    f"({_margin_words(facts)}): the model is too simple for the data.",
                    f"Use a larger model, like the probe's ({probe.get('model', 'larger')}), or "
                    f"{SIZE_SEARCH} to pick its size.")
        if not still:
            return ("plateau", f"{high}; {what} did no better on the validation rows ({probe['val_loss']:.4g} "
                    f"against {facts['kept_val_loss']:.4g}): the data likely hold no more information about the "
                    "target.", "A bigger model will not help. More informative features or cleaner targets could; "
                    "the model is likely as good as these inputs allow.")
    if still:
        return ("underfitting", f"{high}, and it was still falling when the run ended (the validation loss "
                "too): more training would likely lower both.",
                f"Train for more epochs (this run trained {facts['epochs']}; e.g. `--epochs {2 * facts['epochs']}`).")
    return ("plateau", f"{high}. Two textbook causes fit this: the model is too simple for the data, or the data "
            "hold no more information about the target (noise the inputs cannot explain).",
            f"Nothing here says which. A larger model that lowers the validation loss would show the first "
            f"({SIZE_SEARCH} compares sizes on the validation rows); if none does, the inputs are the limit, "
            f"and more informative features, not a bigger model, would help.")


def _lr_advice(lr: float | None) -> str:
    if lr:
        return (f"Lower the learning rate tenfold: lr={lr / 10:.3g} (this run used {lr:.3g}); "
                f"`--lr {lr / 10:.3g}` in the CLI. Gradient clipping (clip_grad_norm=1.0) also helps.")
    return "Lower the learning rate tenfold; gradient clipping (clip_grad_norm=1.0) also helps."


def _overfit_advice(facts: dict[str, Any]) -> str:
    best, kept = facts.get("best_epoch"), facts.get("kept_epoch")
    rest = ("add regularisation (weight_decay=1e-4, dropout=0.1, input_noise=0.05); get more data; or use a "
            "smaller model.")
    if facts.get("restored"):  # early stopping's margin kept an earlier epoch over a clearly lower minimum
        which = "its initial weights (epoch 0, before any training)" if kept == 0 else f"the weights of epoch {kept}"
        return (f"Early stopping kept {which}, but epoch {best} was clearly better: lower early stopping's "
                f"margin (rel_delta) so it keeps the best epoch; {rest}")
    return (f"The model keeps the weights of epoch {kept}; the best were epoch {best}'s. Use early stopping "
            f"(fl.EarlyStopping(patience=5), `--early-stopping 5`) to keep the best epoch's weights; {rest}")


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


def rows_of(data: Any) -> tuple[Any, Any] | None:
    """In-memory `(X, y)` rows of `data` (a tuple, a `Split`, a `TensorDataset`, a plain `DataLoader` over
    one), else None: other data is not read again just to judge a run."""
    memory = in_memory(data) if isinstance(data, (Dataset, DataLoader)) else None
    if memory is not None:
        return (memory[0].X, memory[0].y) if memory[0].y is not None else None
    if hasattr(data, "X") and hasattr(data, "y"):
        return (data.X, data.y) if data.y is not None else None
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(v, torch.Tensor) for v in data):
        return data[0], data[1]
    return None


def val_standard_error(trainer: Trainer, rows: Any) -> float:
    """The standard error of the mean validation loss over its rows (`rows`: in-memory `(X, y)`): the
    per-row losses' standard deviation over the square root of the row count, with the trainer's model as
    it is. For losses with a `reduction` (mse, cross-entropy, ...; a `MembersLoss` by the loss it wraps); 0 for
    others or fewer than 2 rows."""
    losses = per_row_losses(trainer, rows)
    if losses is None or len(losses) < 2:
        return 0.0
    return float(losses.std() / len(losses) ** 0.5)


def per_row_losses(trainer: Trainer, rows: Any) -> torch.Tensor | None:
    """The loss of each of the in-memory rows `(X, y)` (float64), with the trainer's model as it is, for losses
    with a `reduction` (a `MembersLoss` by the loss it wraps, on the ensemble's output); None for others."""
    fn: Any = trainer.loss_fn  # a torch loss module when it has a `reduction`
    fn = fn.base if isinstance(fn, MembersLoss) else fn  # scored on the ensemble's output (eval mode)
    X, y = rows
    if not isinstance(getattr(fn, "reduction", None), str):
        return None
    per_row = copy.copy(fn)
    per_row.reduction = "none"
    out = trainer.predict(X, output="raw")
    with torch.no_grad():
        target = y.to(out.device)
        target = target.view_as(out) if target.is_floating_point() and out.shape != target.shape else target
        return per_row(out.float(), target).reshape(len(X), -1).sum(1).double().cpu()


def _stopper(trainer: Trainer) -> Any:
    """The run's early stopping (by duck typing: a callback that restores its best epoch), or None."""
    return next((cb for cb in trainer.callbacks if getattr(cb, "restore_best_weights", False)
                 and hasattr(cb, "best_epoch") and hasattr(cb, "from_start")), None)


def _noise(trainer: Trainer, stopper: Any) -> float | None:
    """The validation loss's standard error: early stopping's one-standard-error margin when it has one,
    else measured on in-memory validation rows (one prediction over them), else None."""
    if stopper is not None and getattr(stopper, "start_margin", 0.0) > 0:
        return float(stopper.start_margin)
    rows = rows_of(trainer.val_data) if trainer.history and "val_loss" in trainer.history[-1] else None
    if rows is None:
        return None
    try:
        return val_standard_error(trainer, rows) or None
    except (RuntimeError, ValueError, TypeError):  # a loss or model that does not take the rows per row
        return None


def _margin_matters(history: list[dict[str, Any]], kept: int | None, kept_val: float | None) -> bool:
    """Whether any rule will compare validation losses (so the noise margin is worth a pass over the
    validation rows): the loss rose above its lowest, or the kept model is not the lowest epoch."""
    val = _series(history, "val_loss")
    if not val:
        return False
    low = min(val)
    kept_row = next((h for h in history if h.get("epoch") == kept and "val_loss" in h), None)
    kept_loss = float(kept_row["val_loss"]) if kept_row is not None else kept_val
    return val[-1] > low or (kept_loss is not None and kept_loss > low)


def verdict_of(trainer: Trainer, error: BaseException | None = None, *, probe: dict[str, Any] | None = None,
               units: str | None = None) -> Verdict:
    """The verdict on `trainer`'s history, its baseline loss computed from its training targets, its noise
    margin from the validation rows, the kept epoch from its early stopping.

    Args:
        trainer: the trainer after `fit`.
        error: the error fit stopped on, if any.
        probe: a capacity probe's result (`capacity_probe`), the evidence `underfitting` needs on a plateau.
        units: what the losses are in, when not the target's own units (`STANDARDISED`).
    """
    y = targets_of(trainer.train_data)
    task = resolved_task(trainer.task)
    if trainer.task == "classification" and y is not None and not y.is_floating_point():
        task = "multiclass"
    fn = trainer.loss_fn  # only torch's own losses: a user's loss may count or log its calls
    fn = fn.base if isinstance(fn, MembersLoss) else fn  # the loss it wraps
    torch_loss = (getattr(fn, "__module__", None) or type(fn).__module__).startswith("torch.nn")
    base = baseline_loss(trainer.compute_loss, y.to(trainer.device), task) if torch_loss and y is not None else None
    lr = trainer.config.lr or (trainer.history[0].get("lr") if trainer.history else None)
    stopper = _stopper(trainer)
    kept = stopper.best_epoch if stopper is not None and (stopper.best_epoch or stopper.from_start) else None
    kept_val = float(stopper.best) if kept == 0 else None
    kept_scores = dict(getattr(stopper, "start_logs", None) or {}) if kept == 0 else None
    needed = _margin_matters(trainer.history, kept, kept_val) or probe is not None
    se = _noise(trainer, stopper) if error is None and torch_loss and needed else None
    verdict = judge(trainer.history, baseline_loss=base, lr=lr, kept_epoch=kept, error=error, val_se=se,
                    kept_val_loss=kept_val, probe=probe, units=units)
    if kept_scores:  # the start's scores: epoch 0 has no line in the history (`fitloop runs` shows them)
        verdict.facts["kept_scores"] = kept_scores
    return verdict


def capacity_probe(trainer: Trainer, model: torch.nn.Module, epochs: int = 20, optimizer: Any = "adam"
                   ) -> dict[str, Any]:
    """Train `model` (larger than the trainer's) briefly on the trainer's own training and validation
    data, with its loss and settings (`optimizer` by name, as the Trainer takes it), and return its lowest
    validation loss: the evidence `judge` needs to call a plateau underfitting (the probe did better) or
    the data's limit (it did not).

    Costs `epochs` epochs of the larger model, so it runs only when asked: `verdict_of(trainer,
    probe=capacity_probe(trainer, bigger))`.

    Returns:
        `{"val_loss": lowest, "epoch": at, "epochs": epochs, "model": "ClassName, N parameters"}`.
    """
    # quiet, no run directory, and no guards: the run itself already checked (and warned about) these rows
    config = dataclasses.replace(trainer.config, epochs=epochs, quiet=True, run_dir=None, guards=False)
    probe = type(trainer)(model, trainer.loss_fn, optimizer, config=config)  # a Trainer like the run's
    probe.fit(trainer.train_data, trainer.val_data)
    best = min(probe.history, key=lambda h: h["val_loss"])
    size = sum(p.numel() for p in model.parameters())
    return {"val_loss": float(best["val_loss"]), "epoch": best["epoch"], "epochs": epochs,
            "model": f"{type(model).__name__}, {size:,} parameters"}
