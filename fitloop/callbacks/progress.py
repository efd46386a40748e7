"""ProgressPrinter: a live rich bar per epoch in a terminal, one plain line per epoch elsewhere.

In a terminal (or a Jupyter notebook with ipywidgets) each epoch gets a bar with the batches done,
the ETA, the running loss and samples/s, and each epoch's end prints a one-line summary above it
(loss, val_loss, the key metric, lr, time). Anywhere else (CI, a pipe, a log file, a notebook without
ipywidgets) there is no bar and no control characters: one plain line per epoch at the print cadence.

The bar costs no host sync per step: a batch only reads the clock, and the displayed loss (the epoch's
row-weighted mean so far, read from `trainer.state.epoch_losses`) is computed when the refresh timer
fires, a few times a second at most. Only the main process prints (`fitloop.distributed`).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from typing import IO, TYPE_CHECKING, Any

import torch

from ..distributed import is_main_process
from .base import Callback

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["ProgressPrinter", "format_logs", "progress_mode"]

# A terminal run of at most this many epochs prints every epoch's summary by default (longer runs
# follow the plain cadence, so the 5000-epoch tutorial fit does not print 5000 lines).
EVERY_EPOCH_UP_TO = 100


def progress_mode(stream: IO[str] | None = None) -> str:
    """Whether a live bar can be drawn on `stream`.

    A bar needs a terminal that understands control characters (a TTY whose `TERM` is not `dumb`),
    or a Jupyter notebook with `ipywidgets` installed. `FORCE_COLOR` and the like do not count: a CI
    log that forces colours still gets plain lines.

    Args:
        stream: the file the progress goes to (default `sys.stdout`).

    Returns:
        `"bar"` or `"lines"`.
    """
    stream = stream or sys.stdout
    if "IPython" in sys.modules and _in_jupyter():
        return "bar" if importlib.util.find_spec("ipywidgets") is not None else "lines"
    return "bar" if _isatty(stream) and os.environ.get("TERM", "").lower() not in ("dumb", "unknown") else "lines"


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed file
        return False


def _in_jupyter() -> bool:
    from rich.console import Console  # here: only a bar needs rich, and a quiet or piped run skips its import

    return Console().is_jupyter


class ProgressPrinter(Callback):
    """Shows the training as it goes: a live bar in a terminal, plain lines elsewhere.

    The Trainer adds one unless `quiet=True` (pass `print_every=` to set its cadence).

    Args:
        every: print the summary of epochs 1-3, every `every`-th and the last (with `every=500`
            the classic tutorial's `if epoch <= 3 or epoch % 500 == 0`). `None`: about ten lines;
            in a terminal, every epoch of runs up to 100 epochs.
        stream: where to write (default: `sys.stdout` at the time of the fit).
        bar: `True`/`False` forces the live bar on or off; `None` draws it where `progress_mode`
            says it can be drawn.
        refresh_per_second: how often the bar (and its loss, one host sync) is refreshed at most.

    Example:
        >>> fl.Trainer(model, epochs=20, quiet=True, callbacks=[fl.ProgressPrinter(every=5)])
    """

    def __init__(self, every: int | None = None, stream: IO[str] | None = None, *, bar: bool | None = None,
                 refresh_per_second: float = 4.0):
        if every is not None and every < 1:
            raise ValueError(f"ProgressPrinter: every must be >= 1, got {every}.")
        if refresh_per_second <= 0:
            raise ValueError(f"ProgressPrinter: refresh_per_second must be > 0, got {refresh_per_second}.")
        self.every = every
        self.stream = stream
        self.bar = bar
        self.interval = 1.0 / refresh_per_second
        self.mode: str | None = None     # "bar", "lines", or None (not the main process): decided per fit
        self._every = 1
        self._progress: Any = None       # the rich Progress while a bar is shown
        self._task: Any = None
        self._next = 0.0                 # the refresh timer: perf_counter() of the next refresh
        self._epoch_t0 = 0.0
        self._batch0 = 0                 # batches already done when this session's epoch started
        self._seen = 0                   # epoch_losses already summed into the running loss
        self._rows0 = 0                  # rows of the epoch done before this session
        self._loss_sum = 0.0
        self._rows = 0

    # ---- events

    def on_fit_start(self, trainer: Trainer) -> None:
        stream = self.stream or sys.stdout
        if not is_main_process():
            self.mode = None
            return
        self.mode = ("bar" if self.bar else "lines") if self.bar is not None else progress_mode(stream)
        epochs = trainer.target_epochs
        if self.every is not None:
            self._every = self.every
        elif self.mode == "bar" and epochs <= EVERY_EPOCH_UP_TO:
            self._every = 1
        else:
            self._every = max(1, epochs // 10)
        if self.mode == "bar":
            self._start_bar(stream)
            self._start_epoch(trainer)  # a resume may continue an epoch (no on_epoch_start for it)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if self._progress is not None:
            self._start_epoch(trainer)

    def on_train_batch_end(self, trainer: Trainer, step: int, loss: Any) -> None:
        if self._progress is None:
            return
        now = time.perf_counter()
        last = trainer.state.batch == trainer.steps_per_epoch
        if now >= self._next or (last and now - self._epoch_t0 >= self.interval):  # a long epoch: show its end
            self._refresh(trainer, now, status="validating" if last and trainer.val_data is not None else "")

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.mode is None:
            return
        if epoch <= 3 or epoch % self._every == 0 or epoch >= trainer.target_epochs or trainer.should_stop:
            line = format_logs(epoch, trainer.target_epochs, logs)
            if self._progress is not None:  # printing redraws the bar: show the finished epoch on it
                loss = logs.get("loss")
                self._progress.update(self._task, description=self._description(trainer, epoch),
                                      completed=trainer.steps_per_epoch, total=trainer.steps_per_epoch,
                                      info=f"loss {loss:.4g}" if isinstance(loss, float) else "")
                self._progress.refresh()  # the bar drawn under the line is this epoch's, not the last redraw's
                self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            else:
                print(line, file=self.stream or sys.stdout, flush=True)

    def on_fit_end(self, trainer: Trainer) -> None:
        self._stop_bar()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self._stop_bar()  # the traceback prints below a clean screen

    # ---- the bar

    def _start_bar(self, stream: IO[str]) -> None:
        # rich is imported here: the Trainer imports this module, and a quiet or piped run draws no bar
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        # In a notebook rich draws the bar in a widget that it updates in place, and prints become outputs of
        # their own: no terminal control codes there (they would show as stray escapes), and no routing of
        # stdout through the bar (rich's Jupyter display writes to stdout itself: it would recurse).
        notebook = "IPython" in sys.modules and _in_jupyter()
        console = Console(file=stream, force_terminal=None if notebook else True, highlight=False)
        # few columns, no markup to parse: a redraw costs well under a millisecond
        # While the bar is live, prints go above it; stdout/stderr are routed through it only when they are
        # terminals themselves, so `2> errors.log` still gets the warnings.
        self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("{task.fields[info]}", markup=False),
                                  console=console, auto_refresh=False, transient=True,
                                  redirect_stdout=not notebook and (stream is sys.stdout or _isatty(sys.stdout)),
                                  redirect_stderr=not notebook and _isatty(sys.stderr))
        self._task = self._progress.add_task("", total=None, info="")
        self._progress.start()
        self._next = 0.0

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = self._task = None

    def _start_epoch(self, trainer: Trainer) -> None:
        """This session's part of the epoch starts now (at its start, or where a resume continues it)."""
        st = trainer.state
        self._epoch_t0 = time.perf_counter()
        self._batch0, self._seen, self._rows0 = st.batch, 0, sum(st.epoch_sizes)
        self._loss_sum, self._rows = 0.0, 0
        if self._progress is not None:  # the next redraw names this epoch, however short the last one was
            self._progress.update(self._task, description=self._description(trainer, st.epoch + 1),
                                  completed=st.batch, total=trainer.steps_per_epoch, info="")

    def _refresh(self, trainer: Trainer, now: float, status: str = "") -> None:
        """Redraw the bar: the only place the progress display reads a loss (one host sync)."""
        self._next = now + self.interval
        st = trainer.state
        new, sizes = st.epoch_losses[self._seen:], st.epoch_sizes[self._seen:]
        if new:
            stacked = torch.stack(new).float()
            if sizes.count(sizes[0]) == len(sizes):  # equal batches: no weights tensor to build
                self._loss_sum += float(stacked.sum()) * sizes[0]
            else:
                self._loss_sum += float((stacked * torch.tensor(sizes, dtype=stacked.dtype,
                                                                device=stacked.device)).sum())
            self._rows += sum(sizes)
            self._seen += len(new)
        done, total = st.batch, trainer.steps_per_epoch
        elapsed = max(now - self._epoch_t0, 1e-9)
        batches = done - self._batch0
        info = []
        if batches > 0:
            info.append(f"eta {_clock((total - done) * elapsed / batches)}")
        if self._rows:
            info.append(f"loss {self._loss_sum / self._rows:.4g}")
        if batches > 0:
            info.append(f"{(self._rows - self._rows0) / elapsed:,.0f} samples/s")
        self._progress.update(self._task, description=self._description(trainer, st.epoch + 1),
                              completed=done, total=total, info="  ".join([*info, status] if status else info))
        self._progress.refresh()

    @staticmethod
    def _description(trainer: Trainer, epoch: int) -> str:
        return f"Epoch {epoch:>{len(str(trainer.target_epochs))}}/{trainer.target_epochs}"


def _clock(seconds: float) -> str:
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# The values an epoch line shows (the key metric: accuracy or R2); the history keeps everything.
HEADLINE = ("loss", "accuracy", "r2", "grad_norm", "skipped_steps")


def format_logs(epoch: int, epochs: int, logs: dict[str, Any]) -> str:
    """One epoch's summary line: `Epoch 3/10  loss 0.41  accuracy 0.87  val_loss ...  lr 0.001  (0.52s)`."""
    width = len(str(epochs))
    parts = [f"Epoch {epoch:>{width}}/{epochs}"]
    for k, v in logs.items():
        if k.removeprefix("val_") not in HEADLINE or not isinstance(v, (int, float)):
            continue
        parts.append(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}")
    if "lr" in logs:
        parts.append(f"lr {logs['lr']:.3g}")
    parts.append(f"({logs.get('time', 0.0):.2f}s)")
    return "  ".join(parts)
