"""Task metrics, computed once per pass over the data from the outputs gathered on the device.

The training loop never syncs per step for metrics: it keeps each batch's detached output and
target, and `MetricSet.compute` reduces the concatenation once at the end of the epoch: a confusion
matrix (one `bincount`) for classification, a few sums for regression, in float64.

The built-in metrics are these few reductions rather than torchmetrics calls: importing torchmetrics
costs about 2 s and 100 MB of memory (it pulls in scipy.signal and matplotlib), which doubled a small
run's peak memory and delayed the first epoch's end. The values match scikit-learn's (tested);
torchmetrics `Metric` objects still work as user metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, TypeGuard, cast

import torch

__all__ = ["MetricSet", "normalize_task"]


class StatefulMetric(Protocol):
    """What fitloop uses of a torchmetrics `Metric` (checked by duck typing: torchmetrics is never imported)."""

    def to(self, device: torch.device) -> StatefulMetric: ...

    def reset(self) -> None: ...

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None: ...

    def compute(self) -> Any: ...


MetricCallable = Callable[[torch.Tensor, torch.Tensor], torch.Tensor | float]
# A user metric: a callable `(output, target) -> tensor | float`, or a torchmetrics-like stateful object.
UserMetric = MetricCallable | StatefulMetric


def normalize_task(task: str | None, out_features: int | None = None) -> str | None:
    """Map `"classification"` to `"binary"` or `"multiclass"` given the model's output width."""
    if task == "classification":
        return "binary" if out_features == 1 else "multiclass"
    return task


class MetricSet:
    """The default metrics of a task plus user metrics.

    Classification: accuracy, macro F1, macro precision, macro recall and the confusion matrix.
    Regression: MSE, RMSE, MAE and R2.

    Args:
        task: `"regression"`, `"binary"` or `"multiclass"`.
        user: extra metrics: callables `(output, target) -> tensor | float`, or torchmetrics
            `Metric` objects, as a list or a `{name: metric}` dict.
    """

    def __init__(self, task: str, user: Sequence[UserMetric] | Mapping[str, UserMetric] | None = None) -> None:
        self.task = task
        if user is None:
            user = {}
        elif not isinstance(user, Mapping):
            user = {_metric_name(m): m for m in user}
        self.user: dict[str, UserMetric] = dict(user)

    def compute(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of `out` against `y` as 0-d tensors (the confusion matrix as a 2-d tensor).

        An output with a members axis, `(N, k, outputs)` against `N` targets (a `fitloop.tabm.TabM` in
        training mode: the train metrics), is scored on the members' mean output."""
        out = out.detach().float()
        if out.dim() == 3 and len(out) == len(y) and (y.dim() == 1 or y.shape[1:] == out.shape[2:]):
            out = out.mean(1)
        res: dict[str, torch.Tensor] = {}
        if self.task == "regression":
            y = y.detach().float()
            y = y.view_as(out) if y.numel() == out.numel() else y  # user metrics see matching shapes too
            res.update(regression_metrics(out, y))
        elif self.task == "binary":
            logits = out.reshape(-1) if out.numel() == len(out) else out[:, -1]
            # Logits, not probabilities: threshold 0.5 on sigmoid(logit) == logit > 0.
            res.update(classification_metrics((logits > 0).long(), y.reshape(-1).long(), 2, binary=True))
        elif self.task == "multiclass":
            nc = out.shape[-1]
            target = y.argmax(-1) if y.shape == out.shape and y.is_floating_point() else y.long()
            res.update(classification_metrics(out.argmax(-1), target.reshape(-1), nc, binary=False))
        for name, m in self.user.items():
            res[name] = _user_metric(m, out, y)
        return res


def regression_metrics(out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """MSE, RMSE, MAE over all elements; R2 per output column, averaged (scikit-learn's
    `uniform_average`; a constant target column scores 0)."""
    err = (out.double() - y.double())
    res = {"mse": (err * err).mean(), "mae": err.abs().mean()}
    res["rmse"] = res["mse"].sqrt()
    if len(out) > 1:
        e2 = err if err.ndim > 1 else err[:, None]
        y2 = y.double() if y.ndim > 1 else y.double()[:, None]
        ss_res = (e2 * e2).sum(0)
        ss_tot = ((y2 - y2.mean(0)) ** 2).sum(0)
        r2 = torch.where(ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(torch.finfo(torch.float64).tiny),
                         torch.zeros_like(ss_tot))
        res["r2"] = r2.mean()
    return {k: v.float() for k, v in res.items()}


def classification_metrics(preds: torch.Tensor, target: torch.Tensor, num_classes: int, *,
                           binary: bool) -> dict[str, torch.Tensor]:
    """Accuracy, precision, recall, F1 and the confusion matrix (rows: true class, columns: predicted).

    Binary: precision/recall/F1 of the positive class. Multiclass: macro averages over the classes
    that occur in the targets or the predictions (as scikit-learn does); a 0/0 ratio counts as 0.
    """
    c = num_classes
    cm = torch.bincount(target * c + preds, minlength=c * c)[: c * c].view(c, c)
    return confusion_metrics(cm, binary=binary)


def confusion_metrics(cm: torch.Tensor, *, binary: bool) -> dict[str, torch.Tensor]:
    """`classification_metrics` from the confusion matrix alone (rows: true class, columns: predicted), for
    counts summed batch by batch (a streamed evaluation)."""
    cmd = cm.double()
    tp = cmd.diagonal()
    true_n, pred_n = cmd.sum(1), cmd.sum(0)
    div = lambda a, b: torch.where(b > 0, a / b.clamp_min(1), torch.zeros_like(a))
    precision, recall, f1 = div(tp, pred_n), div(tp, true_n), div(2 * tp, true_n + pred_n)
    if binary:
        p, r, f = precision[1], recall[1], f1[1]
    else:
        present = (true_n + pred_n) > 0
        n_present = present.sum().clamp_min(1)
        p, r, f = ((v * present).sum() / n_present for v in (precision, recall, f1))
    acc = tp.sum() / cmd.sum().clamp_min(1)
    return {"accuracy": acc.float(), "f1": f.float(), "precision": p.float(), "recall": r.float(),
            "confusion_matrix": cm}


def _metric_name(m: object) -> str:
    name = getattr(m, "__name__", None) or type(m).__name__
    return name.lower()


def _is_stateful(m: object) -> TypeGuard[StatefulMetric]:
    return hasattr(m, "update") and hasattr(m, "compute") and hasattr(m, "reset")  # torchmetrics Metric


def _user_metric(m: UserMetric, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    v: Any
    if _is_stateful(m):
        m = m.to(out.device)
        m.reset()
        m.update(out, y)
        v = m.compute()
        m.reset()
    else:
        v = cast(MetricCallable, m)(out, y)
    return torch.as_tensor(v, dtype=torch.float32) if not isinstance(v, torch.Tensor) else v.detach()


def to_python(v: torch.Tensor | float) -> float | list[Any]:
    """A metric value as a float, or a nested list for a matrix (JSON-friendly)."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.ndim == 0 else v.tolist()
    return v
