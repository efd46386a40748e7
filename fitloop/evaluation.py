"""Evaluation and inference over a batch source, in eval mode: what `Trainer.evaluate`,
`Trainer.predict` and each epoch's validation run. Uses the Trainer's public surface only
(`model`, `eval_step`, `compute_loss`, `metrics`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from .metrics import normalize_task
from .step.batches import BatchSource, ShardedBatchSource

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["run_eval", "evaluate_batches", "as_predictions", "resolved_task", "EvalCheck"]

EvalCheck = Callable[["Trainer", torch.Tensor, torch.Tensor], None]
"""`(trainer, outputs, targets)`: checks of the whole data's outputs and targets before its loss."""


def run_eval(trainer: Trainer, batches: BatchSource, *,
             inference: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's outputs (and the targets, when the data has them) over every batch, in eval mode
    under `no_grad` (or `inference_mode`); the model's train/eval mode is restored after."""
    model = trainer.model
    was_training = model.training
    model.eval()
    outs, ys = [], []
    try:
        with torch.inference_mode() if inference else torch.no_grad():
            for x, y in batches.epoch(None):
                outs.append(trainer.eval_step((x, y)))
                if y is not None:
                    ys.append(y)
    finally:
        model.train(was_training)
    out, y = torch.cat(outs), (torch.cat(ys) if ys else None)
    if isinstance(batches, ShardedBatchSource):  # several processes: every rank's rows, in the data's order
        return batches.gather(out, y)
    return out, y


def evaluate_batches(trainer: Trainer, batches: BatchSource, prefix: str = "", *,
                     check: EvalCheck | None = None) -> dict[str, Any]:
    """`loss` and the task metrics (tensors), each key prefixed with `prefix` (`"val_"`). `check` sees the
    whole data's outputs and targets first: `Trainer.evaluate` passes the guards' class-target and
    loss-shape checks (`fitloop.diagnose.checks.eval_checks`); the fit's validation was checked at its
    first step."""
    out, y = run_eval(trainer, batches)
    if y is None:
        raise ValueError("evaluate: the data has no targets (y); use predict() for unlabelled data.")
    if check is not None:
        check(trainer, out, y)
    with torch.no_grad():
        res: dict[str, Any] = {"loss": trainer.compute_loss(out, y)}
        res.update(trainer.metrics.compute(out, y))
    return {prefix + k: v for k, v in res.items()}


def resolved_task(task: str, out: torch.Tensor | None = None) -> str:
    """`"classification"` made concrete by the output width: binary for one column, else multiclass."""
    if task != "classification":
        return task
    width = out.shape[-1] if out is not None and out.ndim > 1 else 1
    return normalize_task(task, width)  # type: ignore[return-value]


def as_predictions(out: torch.Tensor, task: str, output: str) -> torch.Tensor:
    """Raw outputs as `output`: `"raw"`, `"class"` (indices) or `"proba"` (class probabilities)."""
    out = out.float()
    if output == "raw":
        return out.cpu()
    task = resolved_task(task, out)
    if task == "regression":
        raise ValueError("predict: output='class'/'proba' is for classification; this model does regression.")
    if task == "binary":
        p = torch.sigmoid(out.reshape(-1))
        return (p > 0.5).long().cpu() if output == "class" else torch.stack([1 - p, p], 1).cpu()
    return out.argmax(-1).cpu() if output == "class" else out.softmax(-1).cpu()
