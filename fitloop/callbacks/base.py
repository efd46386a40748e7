"""The callback events: a few named hooks, dispatched by `Trainer.fit` in a visible loop.

Events, in the order a run fires them::

    on_fit_start(trainer)
    for each epoch:
        on_epoch_start(trainer, epoch)              epoch counts from 1 (not repeated when a resume
                                                    continues an epoch)
        for each batch:
            on_train_batch_end(trainer, step, loss) after every training batch; loss is a tensor
            on_optimizer_step(trainer, step)        after the batch that ends an optimizer step (the
                                                    last micro-batch of an accumulation group; also
                                                    when a NaN/inf step was skipped)
        on_validation_end(trainer, logs)            only when fit() was given validation data
        on_epoch_end(trainer, epoch, logs)          the same logs dict
    on_fit_end(trainer)                             also after an early stop
    on_exception(trainer, error)                    whenever fit raises: in the loop, or in a callback
                                                    (RunInterrupted from on_fit_end after a signal too);
                                                    every callback gets it, even if one of them raises
    on_checkpoint(trainer, path)                    whenever a checkpoint was written (by the
                                                    run-directory callback, during the events above)

For each event the Trainer calls the callbacks in list order: the user's, then its own
`VerdictReporter` and `ProgressPrinter`, then the run directory's `Checkpointer`, so a checkpoint
sees what every other callback did in the same event (and `run.json` gets the verdict). The
epoch's `logs` dict is complete before the first callback runs: `epoch`, `loss` and train metrics,
`val_loss` and `val_` metrics when validating, `lr`, `time`, and `grad_norm` when clipping. It is
the dict stored in `trainer.history`.

A callback asks the run to stop by setting `trainer.should_stop = True` (and `trainer.stop_reason`),
never by raising. Set in `on_epoch_end` (or validation), the run stops after that epoch's events;
set during an epoch (`on_train_batch_end`, `on_optimizer_step`), it stops after that batch,
without an epoch record, and `on_fit_end` runs.

A callback's `state_dict()` goes into every checkpoint (plain data and tensors), and
`load_state_dict()` gets it back on resume.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..checkpoint_format import ResumeMismatchError

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["Callback", "EVENTS", "overrides", "handlers", "dispatch", "callback_states", "load_callback_states"]

EVENTS = ("on_fit_start", "on_epoch_start", "on_train_batch_end", "on_optimizer_step", "on_validation_end",
          "on_epoch_end", "on_fit_end", "on_exception", "on_checkpoint")


class Callback:
    """Base class: override the events you need; each default does nothing.

    Example:
        >>> class PrintLR(fl.Callback):
        ...     def on_epoch_end(self, trainer, epoch, logs):
        ...         print(epoch, logs["lr"])
    """

    def on_fit_start(self, trainer: Trainer) -> None: ...

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        """`loss` is the step's loss as a tensor: reading it as a float syncs the device."""

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        """After an optimizer step: `trainer.state` can be checkpointed and resumed from here. On the
        epoch's last batch the epoch is not yet closed (`state.batch == trainer.steps_per_epoch`)."""

    def on_validation_end(self, trainer: Trainer, logs: dict[str, Any]) -> None: ...

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None: ...

    def on_checkpoint(self, trainer: Trainer, path: str) -> None: ...

    def on_fit_end(self, trainer: Trainer) -> None: ...

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """`fit` is raising `error` (after which it propagates); clean up here."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def overrides(cb: Callback, event: str) -> bool:
    """Whether `cb` implements `event` (so the Trainer skips no-op hooks on the hot path)."""
    return getattr(type(cb), event, None) is not getattr(Callback, event)


def handlers(callbacks: list[Callback], event: str) -> list[Any]:
    """The bound `event` methods of the callbacks that implement it, in list order."""
    return [getattr(cb, event) for cb in callbacks if overrides(cb, event)]


def dispatch(handlers: list[Any], event: str, trainer: Trainer, *args: Any) -> None:
    """Call each handler. For `on_exception` (clean-up) every handler runs even after one raised; the
    first such error is raised after them."""
    if event != "on_exception":
        for handler in handlers:
            handler(trainer, *args)
        return
    errors = []
    for handler in handlers:
        try:
            handler(trainer, *args)
        except BaseException as e:
            errors.append(e)
    if errors:
        raise errors[0]


def callback_states(callbacks: list[Callback]) -> list[dict[str, Any]]:
    """Each callback's `state_dict()`, with its class name, in list order (for checkpoints)."""
    return [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in callbacks]


def load_callback_states(callbacks: list[Callback], saved: list[dict[str, Any]], *, strict: bool = True,
                         dry_run: bool = False) -> None:
    """Give saved states back to `callbacks`, matched by class name and occurrence (`dry_run`: only check).

    Raises:
        ResumeMismatchError: with `strict`, a saved non-empty state whose callback is missing.
    """
    def keyed(items: Any) -> dict[tuple[str, int], Any]:
        seen: dict[str, int] = {}
        out = {}
        for name, obj in items:
            seen[name] = seen.get(name, -1) + 1
            out[(name, seen[name])] = obj
        return out

    mine = keyed((type(cb).__name__, cb) for cb in callbacks)
    theirs = keyed((s["class"], s["state"]) for s in saved)
    missing = next((key for key, state in theirs.items() if key not in mine and state), None)
    if missing is not None and strict:  # checked before any state is loaded
        raise ResumeMismatchError(f"the checkpoint has state for callback {missing[0]} (#{missing[1] + 1}) but "
                                  "this trainer has no such callback; pass the same callbacks, or "
                                  "force=True to drop its state.")
    if dry_run:
        return
    for key, state in theirs.items():
        if key in mine:
            mine[key].load_state_dict(state)

