"""SIGINT and SIGTERM during a fit: a request to write a checkpoint and stop, not an abrupt end.

The run-directory callback (`fitloop.callbacks.checkpoint.Checkpointer`) installs a `SignalHandler` for
the length of `fit`. The first signal becomes a request: the run finishes its step, writes a checkpoint
and ends with `RunInterrupted` (exit code 130 for SIGINT, 143 for SIGTERM). A second signal soon after
is the same request delivered twice; a later one stops at once (the last checkpoint is intact).
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

from ..distributed import is_main_process, world_size

__all__ = ["SignalHandler", "RunInterrupted", "EXIT_SIGINT", "EXIT_SIGTERM", "REPEAT_SECONDS"]

EXIT_SIGINT = 130   # 128 + SIGINT, the shell convention
EXIT_SIGTERM = 143  # 128 + SIGTERM
REPEAT_SECONDS = 1.0  # a second signal this soon after the first is the same request (see `SignalHandler`)


class RunInterrupted(SystemExit):
    """Raised by `fit` after SIGINT/SIGTERM once the checkpoint is written.

    A `SystemExit`, so an uncaught one ends the process with `code` (130 for SIGINT, 143 for
    SIGTERM) and no traceback; catch it to continue in-process.
    """

    def __init__(self, code: int, message: str):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SignalHandler:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop, while installed.

    With one process the first signal is acted on at once: `signal` is set. With several, every rank
    must stop at the same step, so the signal is only `pending` on the rank that caught it until
    `agree` says that the ranks agreed on it (at `DistributedSync`'s next agreement point).

    Attributes:
        signal: the signal the run stops for (with several processes: the agreed one), or None.
        pending: a signal caught on this rank that the ranks have not agreed on yet, or None.
    """

    def __init__(self) -> None:
        self.signal: int | None = None
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}  # the handlers to put back
        self._first_at = 0.0  # when the first signal came (time.monotonic)

    def install(self) -> None:
        """Forget any earlier request and catch SIGINT/SIGTERM (Python allows that only in the main thread)."""
        self.signal = self.pending = None
        self._first_at = 0.0
        if threading.current_thread() is threading.main_thread() and not self._previous:
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        """Put back the handlers that were there before `install`."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def agree(self, signum: int) -> None:
        """Every rank acts on `signum` (a rank caught it): the run checkpoints at this step and stops."""
        self.signal, self.pending = signum, None

    @property
    def name(self) -> str:
        """The signal's name (`"SIGINT"`, `"SIGTERM"`), for messages."""
        return signal.Signals(self.signal or signal.SIGINT).name

    @property
    def exit_code(self) -> int:
        """The process's exit code for the signal the run stops for (the shell's 128 + the signal)."""
        return EXIT_SIGINT if self.signal == signal.SIGINT else EXIT_SIGTERM

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signal is not None or self.pending is not None:  # a second signal: stop now
            if time.monotonic() - self._first_at < REPEAT_SECONDS:
                return  # the same request delivered twice: a terminal's Ctrl-C reaches every process of the
                # job, and torchrun's agent forwards its own copy to each worker a moment later
            if signum == signal.SIGINT:  # (the last checkpoint is intact)
                raise KeyboardInterrupt
            raise SystemExit(EXIT_SIGTERM)
        self._first_at = time.monotonic()
        if world_size() > 1:
            self.pending = signum  # every rank stops at the same step: DistributedSync agrees on it
        else:
            self.signal = signum
        if is_main_process():
            print(f"\n{signal.Signals(signum).name} received: finishing the current step, then writing a "
                  "checkpoint (send it again to stop at once).", file=sys.stderr, flush=True)
