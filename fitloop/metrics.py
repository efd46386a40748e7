"""Task metrics, computed once per pass over the data from the outputs gathered on the device.

The training loop never syncs per step for metrics: it keeps each batch's detached output and
target, and `MetricSet.compute` runs torchmetrics once on the concatenation at the end of the
epoch. torchmetrics is imported on first use (its import costs about 2 s).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch

__all__ = ["MetricSet", "normalize_task"]


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

    def __init__(self, task: str, user: Sequence | Mapping[str, object] | None = None):
        self.task = task
        if user is None:
            user = {}
        elif not isinstance(user, Mapping):
            user = {_metric_name(m): m for m in user}
        self.user: dict[str, object] = dict(user)

    def compute(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Metrics of `out` against `y` as 0-d tensors (the confusion matrix as a 2-d tensor)."""
        import torchmetrics.functional as F  # lazy: heavy import

        out = out.detach().float()
        res: dict[str, torch.Tensor] = {}
        if self.task == "regression":
            y = y.float().view_as(out) if y.numel() == out.numel() else y.float()
            res["mse"] = F.mean_squared_error(out, y)
            res["rmse"] = res["mse"].sqrt()
            res["mae"] = F.mean_absolute_error(out, y)
            if len(out) > 1:
                o2, y2 = (out, y) if out.ndim > 1 else (out[:, None], y[:, None])
                res["r2"] = F.r2_score(o2, y2, multioutput="uniform_average")
        elif self.task == "binary":
            logits = out.reshape(-1) if out.numel() == len(out) else out[:, -1]
            target = y.reshape(-1).long()
            # Logits, not probabilities: threshold 0.5 on sigmoid(logit) == logit > 0.
            preds = (logits > 0).long()
            res["accuracy"] = (preds == target).float().mean()
            kw = {"task": "binary", "validate_args": False}  # our own tensors: skip the checks (2x faster)
            res["f1"] = F.f1_score(preds, target, **kw)
            res["precision"] = F.precision(preds, target, **kw)
            res["recall"] = F.recall(preds, target, **kw)
            res["confusion_matrix"] = F.confusion_matrix(preds, target, **kw)
        elif self.task == "multiclass":
            nc = out.shape[-1]
            target = y.argmax(-1) if y.shape == out.shape and y.is_floating_point() else y.long()
            preds = out.argmax(-1)
            kw = {"task": "multiclass", "num_classes": nc, "validate_args": False}
            res["accuracy"] = (preds == target).float().mean()
            res["f1"] = F.f1_score(preds, target, average="macro", **kw)
            res["precision"] = F.precision(preds, target, average="macro", **kw)
            res["recall"] = F.recall(preds, target, average="macro", **kw)
            res["confusion_matrix"] = F.confusion_matrix(preds, target, **kw)
        for name, m in self.user.items():
            res[name] = _user_metric(m, out, y)
        return res


def _metric_name(m) -> str:
    name = getattr(m, "__name__", None) or type(m).__name__
    return name.lower()


def _user_metric(m, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if hasattr(m, "update") and hasattr(m, "compute") and hasattr(m, "reset"):  # torchmetrics Metric
        m = m.to(out.device)
        m.reset()
        m.update(out, y)
        v = m.compute()
        m.reset()
    else:
        v = m(out, y)
    return torch.as_tensor(v, dtype=torch.float32) if not isinstance(v, torch.Tensor) else v.detach()


def to_python(v):
    """A metric value as a float, or a nested list for a matrix (JSON-friendly)."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.ndim == 0 else v.tolist()
    return v


MetricFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
