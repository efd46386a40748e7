"""Guards against silent training bugs, checked at the start of each fit (before the first step).

    loss_shapes    an output and a target that the loss would broadcast: (N, 3) against (N, 2) is an error
                   naming both shapes. (N, 1) against (N,) (or the reverse) is matched, as
                   `Trainer.compute_loss` always did: the target is viewed as the output's shape.
    class_targets  float targets where class indices are expected, negative labels, labels >= the model's
                   number of outputs (errors, with the bad values and their row positions, found on the host:
                   the same message on CPU and CUDA, never a device-side assert); a model with more
                   outputs than the data has classes (a warning).
    leakage        rows of X found in both train and val (`check_leakage`: also test, where `fl.split` and
                   `fitloop train` see it): a warning with counts, or an error with `{"leakage": "error"}`.
    unscaled       feature columns whose scales (root mean square) differ by more than 100x: a warning
                   suggesting standardisation.
    divergence     a loss that rises for several steps in a row among the first steps: a warning with a
                   suggested lr. Only the first `DIVERGENCE_STEPS` steps are read (one host sync each), so a
                   long run pays nothing after them.

Every guard is on by default and is switched off on its own with `guards={"leakage": False, ...}` (a
`TrainConfig` setting), or all together with `guards=False`. The guards read the Trainer's public surface
(`train_data`, `val_data`, `loss_fn`, `task`, `config`): leakage and scales from `GuardCallback.on_fit_start`
(which runs before the Trainer's own progress and checkpoint callbacks, so a guard that raises leaves no run
behind), loss shapes and class targets from the fit's first `TrainingStep` call, between its forward pass and
its loss (`checks.first_step_checks`: no extra forward pass, nothing applied yet), divergence from
`on_train_batch_end`. The checks themselves are plain functions in `fitloop.data.checks` (no Trainer);
`fitloop.diagnose.checks` holds the first-step and `Trainer.evaluate` checks that run them on a fit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from ..callbacks.base import Callback
from ..data.checks import check_leakage, check_scales, data_tensors, guard_settings, warn

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["GuardCallback", "DIVERGENCE_STEPS"]

DIVERGENCE_STEPS = 20  # early steps the divergence guard reads; none after them
RISING_STEPS = 5  # consecutive rises that count as diverging (together with a doubled loss)


# ------------------------------------------------------------------------------------- the callback


class GuardCallback(Callback):
    """Runs the leakage and scale guards at the start of each fit and watches the first steps' loss (the
    loss-shape and class-target guards run in the fit's first training step: `first_step_checks`).

    The Trainer adds it after the user's callbacks and before its own `ProgressPrinter` and
    `Checkpointer`. It keeps no state in checkpoints.
    """

    def __init__(self, guards: dict[str, Any] | bool = True):
        self.settings = guard_settings(guards)
        self._watch: list[float] | None = None  # losses of the first steps, while watching

    def on_fit_start(self, trainer: Trainer) -> None:
        s = self.settings
        self._watch = [] if s["divergence"] else None
        if s["leakage"]:
            check_leakage({"train": trainer.train_data, "val": trainer.val_data}, mode=s["leakage"])
        X = data_tensors(trainer.train_data)[0]
        if s["unscaled"] and X is not None:
            msg = check_scales(X)
            if msg:
                warn(msg)

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        watch = self._watch
        if watch is None:  # not watching (off, or past the first steps): nothing read, no sync
            return
        watch.append(float(loss))  # a host sync, but only for the first DIVERGENCE_STEPS steps of the fit
        if len(watch) >= DIVERGENCE_STEPS:
            self._watch = None
        tail = watch[-(RISING_STEPS + 1):]
        rising = len(tail) == RISING_STEPS + 1 and all(b > a for a, b in zip(tail, tail[1:]))
        if rising and math.isfinite(tail[-1]) and tail[-1] > 2 * min(watch):
            self._watch = None  # one warning per fit
            lr = float(trainer.optimizer.param_groups[0]["lr"])
            warn(f"divergence: the training loss rose for {RISING_STEPS} steps in a row, from {tail[0]:.4g} to "
                  f"{tail[-1]:.4g}, in the first {len(watch)} steps (lr {lr:g}). The lr is probably too high: "
                  f"try lr={lr / 10:g} (or trainer.lr_find(train)); check that the inputs are scaled. "
                  "(guards={'divergence': False} switches this off.)")
