"""The report's plots, drawn with matplotlib's Agg canvas (the `plot` extra), as PNG bytes.

    loss          train against validation loss per epoch, the best epoch marked
    lr            the learning rate per epoch, only when it changes during the run (a constant lr is one
                  line of text in the page: `constant_lr`)
    metrics       each metric per epoch, train against validation
    confusion     classification: the confusion matrix on the test split
    predicted     regression: predicted against actual on the test split
    residuals     regression: residual (actual - predicted) against predicted

matplotlib is imported inside `make_plots` (never at `import fitloop`), and figures are drawn on
their own `FigureCanvasAgg` without touching pyplot's global backend.
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING, Any

from ..extras import require

if TYPE_CHECKING:
    from .data import ReportData

__all__ = ["make_plots", "PLOT_TITLES", "require_matplotlib", "constant_lr"]

PLOT_TITLES = {
    "loss": "Loss: train against validation",
    "metrics": "Metrics per epoch",
    "lr": "Learning rate",
    "confusion": "Confusion matrix",
    "predicted": "Predicted against actual",
    "residuals": "Residuals",
}
NOT_METRICS = {"epoch", "loss", "lr", "time", "grad_norm", "skipped_steps", "confusion_matrix"}
TRAIN, VAL, BEST = "#1f77b4", "#ff7f0e", "#2ca02c"


def require_matplotlib() -> None:
    """Raise `MissingExtraError` (an ImportError) naming the pip command when matplotlib is missing."""
    require("matplotlib", "plot", "the report's plots")


def _figure(w: float = 6.4, h: float = 3.8) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # the `plot` extra
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for i, h in enumerate(history):
        v = h.get(key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            xs.append(int(h.get("epoch", i + 1)))
            ys.append(float(v))
    return xs, ys


def _log_if_wide(ax: Any, values: list[float]) -> None:
    pos = [v for v in values if v > 0]
    if pos and len(pos) == len(values) and max(pos) / min(pos) > 100:
        ax.set_yscale("log")


def _marker(n: int) -> str | None:
    return "o" if n <= 30 else None


def loss_plot(d: ReportData) -> bytes | None:
    ex, train = _series(d.history, "loss")
    vx, val = _series(d.history, "val_loss")
    if not train and not val:
        return None
    fig = _figure(5.2, 3.6)
    ax = fig.add_subplot()
    if train:
        ax.plot(ex, train, color=TRAIN, marker=_marker(len(ex)), label="train loss")
    if val:
        ax.plot(vx, val, color=VAL, marker=_marker(len(vx)), label="validation loss")
    if d.best_epoch is not None:
        ax.axvline(d.best_epoch, color=BEST, linestyle="--", label=f"best epoch ({d.best_epoch})")
        ys = dict(zip(vx, val)) if val else dict(zip(ex, train))
        if d.best_epoch in ys:
            ax.plot([d.best_epoch], [ys[d.best_epoch]], marker="*", markersize=14, color=BEST)
    _log_if_wide(ax, train + val)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss ({d.loss_units} units)" if d.loss_units else "loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def metric_names(history: list[dict[str, Any]]) -> list[str]:
    """The metrics a history holds per epoch (train names, plus those only validated)."""
    names: list[str] = []
    for h in history:
        for k, v in h.items():
            base = k.removeprefix("val_")
            if base not in NOT_METRICS and isinstance(v, (int, float)) and base not in names:
                names.append(base)
    return names


def metrics_plot(d: ReportData) -> bytes | None:
    names = metric_names(d.history)[:6]
    if not names:
        return None
    cols = 2 if len(names) in (2, 4) else min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = _figure(3.5 * cols, 2.6 * rows)
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for key, color, label in ((name, TRAIN, "train"), (f"val_{name}", VAL, "validation")):
            xs, ys = _series(d.history, key)
            if ys:
                ax.plot(xs, ys, color=color, marker=_marker(len(xs)), label=label)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    return _png(fig)


def constant_lr(history: list[dict[str, Any]]) -> float | None:
    """The learning rate when every epoch of `history` logged the same one; None when it changed or was not
    logged. A constant lr is said in one line of text rather than drawn: a flat line says no more."""
    _, ys = _series(history, "lr")
    return ys[0] if ys and max(ys) == min(ys) else None


def lr_plot(d: ReportData) -> bytes | None:
    xs, ys = _series(d.history, "lr")
    if not ys or constant_lr(d.history) is not None:
        return None
    fig = _figure(5.2, 3.6)
    ax = fig.add_subplot()
    ax.plot(xs, ys, color=TRAIN, marker=_marker(len(xs)), drawstyle="steps-post" if len(xs) > 1 else "default")
    if min(ys) > 0 and max(ys) / min(ys) > 10:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("lr (the epoch's last step)")
    ax.grid(alpha=0.3)
    return _png(fig)


def confusion_plot(d: ReportData) -> bytes | None:
    cm = d.confusion
    if not cm:
        return None
    n = len(cm)
    labels = [str(c) for c in (d.classes or range(n))][:n]
    size = min(9.0, 3.0 + 0.45 * n)
    fig = _figure(size + 1.2, size)
    ax = fig.add_subplot()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    top = max((v for row in cm for v in row), default=0)
    if n <= 20:
        for i, row in enumerate(cm):
            for j, v in enumerate(row):
                ax.text(j, i, str(v), ha="center", va="center", color="white" if v > top / 2 else "black")
    ax.set_xticks(range(n), labels, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{d.split or 'test'} split: {sum(map(sum, cm))} rows")
    return _png(fig)


def _scatter(d: ReportData, residuals: bool) -> bytes | None:
    """Regression on the test split: predicted against actual, or the residuals against predicted."""
    if d.is_classification or not d.y_true or d.y_pred is None:
        return None
    y, p = [float(v) for v in d.y_true], [float(v) for v in d.y_pred]
    fig = _figure(5.0, 4.6)
    ax = fig.add_subplot()
    if residuals:
        ax.scatter(p, [a - b for a, b in zip(y, p)], s=12, alpha=0.6, color=VAL)
        ax.axhline(0.0, color="gray", linestyle="--", label="residual 0")
        ax.set_xlabel("predicted")
        ax.set_ylabel("residual (actual - predicted)")
    else:
        ax.scatter(y, p, s=12, alpha=0.6, color=TRAIN)
        lo, hi = min(min(y), min(p)), max(max(y), max(p))
        ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", label="predicted = actual")
        ax.set_xlabel("actual")
        ax.set_ylabel("predicted")
    ax.set_title(f"{d.split or 'test'} split: {len(y)} rows")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def predicted_plot(d: ReportData) -> bytes | None:
    return _scatter(d, residuals=False)


def residuals_plot(d: ReportData) -> bytes | None:
    return _scatter(d, residuals=True)


PLOTS = {"loss": loss_plot, "lr": lr_plot, "metrics": metrics_plot, "confusion": confusion_plot,
         "predicted": predicted_plot, "residuals": residuals_plot}


def make_plots(d: ReportData) -> dict[str, bytes]:
    """Every plot the data allows, as `{name: PNG bytes}`; what cannot be drawn is added to `d.absent`.

    Raises:
        ImportError: matplotlib is missing (naming `pip install 'fitloop[plot]'`).
    """
    require_matplotlib()
    out: dict[str, bytes] = {}
    for name, draw in PLOTS.items():
        if (name == "confusion" and not d.is_classification) or (name in ("predicted", "residuals")
                                                                and d.is_classification):
            continue
        png = draw(d)
        if png is not None:
            out[name] = png
        elif name == "lr" and constant_lr(d.history) is not None:
            continue  # not missing: the page gives the value in a line of text
        elif name in ("confusion", "predicted", "residuals"):
            d.absent.append(f"{PLOT_TITLES[name].lower()} plot: no test-split predictions")
        elif name != "metrics" and d.history:
            d.absent.append(f"{PLOT_TITLES[name].lower()} plot: the history has no values for it")
    return out
