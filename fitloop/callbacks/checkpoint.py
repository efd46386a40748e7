"""The run directory as a callback: checkpoints, exact resume, signals, status, the final bundle.

A run directory holds everything a run produced::

    runs/exp1/
      config.json       the resolved TrainConfig and its fingerprint
      run.json          status (running / finished / failed / interrupted), versions, timings, the verdict
      history.jsonl     one JSON line per epoch, appended and flushed as it goes
      history.csv       the same epochs' scalar values as CSV (rewritten with the jsonl on resume)
      splits.json       the row indices of the train/val splits (when the data carries them)
      checkpoints/      ckpt-000001-e1-s12.safetensors ..., `latest` and `best` pointer files
      model/            the final model bundle (model.safetensors + fitloop.json)

`Trainer(..., run_dir=...)` adds a `Checkpointer` as its last callback. It uses the public events
only: `on_fit_start` writes the directory (or continues it on resume) and installs SIGINT/SIGTERM
handlers; `on_optimizer_step` writes the every-N-steps checkpoints and, after a signal, a last
checkpoint before the run stops; `on_epoch_end` appends the history line and writes the epoch's
checkpoint (keep-last-K plus the best); `on_fit_end` writes the bundle (after EarlyStopping has
restored its best weights) or, after a signal, raises `RunInterrupted`; `on_exception` records a
failure. A checkpoint is `Trainer.state_dict()` plus the data fingerprint, in the format of
`fitloop.checkpoint_format`. Every file is written atomically, so a crash leaves the old file or
the new one; resuming picks the newest checkpoint that loads and verifies.

The `Checkpointer` composes three parts, each with one job: `RunDirectory` (the files,
`fitloop.callbacks.run_directory`), `SavePolicy` (when to checkpoint, which checkpoints to keep,
`fitloop.callbacks.save_policy`) and `SignalHandler` (SIGINT/SIGTERM, `fitloop.callbacks.signals`);
the checks before a resume are `fitloop.callbacks.resume`.
With several processes it agrees with the other ranks through `DistributedSync`, by the interface in
`fitloop.callbacks.agreement`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from .._fastpath import unwrap_model
from ..checkpoint_format import checkpoint_name
from ..distributed import is_main_process, world_size
from ..distributed.group import barrier
from ..distributed.ranks import add_rank_states, restore_rank_state
from ..files import versions
from ..step import NonFiniteError
from ..step.functions import first_nonfinite_of
from .agreement import LocalRequests
from .base import Callback
from .fingerprints import data_fingerprint
from .resume import load_for_resume
from .run_directory import RunDirectory, now, resolve_run_dir
from .save_policy import SavePolicy
from .signals import EXIT_SIGINT, EXIT_SIGTERM, REPEAT_SECONDS, RunInterrupted, SignalHandler
from .verdict import verdict_in

if TYPE_CHECKING:
    from ..config import TrainConfig
    from ..trainer import Trainer

__all__ = ["Checkpointer", "RunInterrupted", "data_fingerprint", "EXIT_SIGINT", "EXIT_SIGTERM", "REPEAT_SECONDS"]


class Checkpointer(Callback):
    """Writes a run directory and its checkpoints, through the callback events.

    Created by `Trainer(..., run_dir=...)`; `run_dir=True` or `"auto"` picks `runs/<timestamp>`.
    `config` supplies `checkpoint_every_steps`, `checkpoint_every_seconds`, `checkpoint_every_epochs`,
    `keep_last`, `monitor` and `mode`; `config.run_dir` is set to the resolved directory. While `fit`
    runs, the directory is locked for this process (`fitloop.runlock`).

    Attributes:
        dir: the run directory.
        run_info: fields run.json holds from the start (`fitloop train` adds the data, target, task and
            rows), so that an interrupted or failed run still says what it trained on.
        last_path: the last checkpoint written (or resumed from).
    """

    def __init__(self, run_dir: str | os.PathLike | bool, config: TrainConfig):
        self.dir = resolve_run_dir(run_dir)
        config.run_dir = str(self.dir)
        self.config = config
        self.run = RunDirectory(self.dir)
        self.policy = SavePolicy(config)
        self.signals = SignalHandler()
        self.run_info: dict[str, Any] = {}
        self.last_path: Path | None = None
        self._resuming: dict[str, Any] | None = None  # the checkpoint a resume continues from
        self._started = self._finished = False
        self._data_fp: dict[str, Any] | None = None

    @property
    def ckpt_dir(self) -> Path:
        """The run's `checkpoints/` folder."""
        return self.run.checkpoints

    @property
    def best(self) -> dict[str, Any] | None:
        """`{"name", "value", "monitor", "epoch"}` of the best checkpoint so far, or None."""
        return self.policy.best

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.policy.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.best = state.get("best")

    # ---- the agreement with the other ranks (fitloop.callbacks.agreement, called by DistributedSync)

    def local_requests(self) -> LocalRequests:
        """This rank's caught signal and whether its clock says a time-based checkpoint is due."""
        return LocalRequests(signal=self.signals.pending, save_due=self.policy.time_due())

    def apply_agreed(self, *, save: bool, signal: int | None) -> None:
        """Every rank agreed: checkpoint at this step (or epoch end) when `save`; after `signal`, checkpoint
        and stop."""
        if save:
            self.policy.agree_save()
        if signal is not None:
            self.signals.agree(signal)

    # ---- resume

    @classmethod
    def attach(cls, trainer: Trainer, run_dir: str | os.PathLike | None, checkpoint: str | None = None
               ) -> Checkpointer:
        """The trainer's Checkpointer for `run_dir` (by default the directory `checkpoint` is in),
        replacing one for another directory; appended last to `trainer.callbacks`."""
        if run_dir is None and checkpoint is not None:
            run_dir = Path(checkpoint).resolve().parent.parent
        if run_dir is None:
            raise ValueError("resume: pass run_dir= (or build the Trainer with run_dir=...).")
        mine = [cb for cb in trainer.callbacks if isinstance(cb, cls)]
        if mine and Path(mine[0].dir).resolve() == Path(run_dir).resolve():
            return mine[0]
        trainer.callbacks = [cb for cb in trainer.callbacks if not isinstance(cb, cls)]
        attached = cls(run_dir, trainer.config)
        trainer.callbacks.append(attached)
        return attached

    def prepare_resume(self, trainer: Trainer, train: Any, val: Any = None, *, checkpoint: str | None = None,
                       force: bool = False) -> dict[str, Any]:
        """Load the checkpoint to continue from (the newest good one, or `checkpoint`) and check that
        `trainer`, its config and the data fit it. Returns the checkpoint's state for
        `Trainer.load_state_dict`, after which `continue_from` marks the resume.

        Raises:
            CheckpointError: no loadable checkpoint (never a silent fresh start).
            ResumeMismatchError: config or data changed (unless `force`).
            ValueError: the model's parameter shapes differ from the checkpoint's.
        """
        self.run.cleanup_temps()
        ck = load_for_resume(self.dir, trainer, train, val, checkpoint=checkpoint, force=force)
        if "checkpointer" in ck and not any(c["class"] == type(self).__name__ for c in ck["callbacks"]):
            ck["callbacks"].append({"class": type(self).__name__, "state": ck["checkpointer"]})  # fitloop <= 0.1
        return ck

    def continue_from(self, ck: dict[str, Any]) -> None:
        """The Trainer has loaded `ck` (from `prepare_resume`): the next `on_fit_start` continues this
        directory instead of refusing it as already used."""
        self._resuming = ck

    # ---- events

    def on_fit_start(self, trainer: Trainer) -> None:
        self.run.lock()  # one live process per run directory (fitloop.runlock)
        self.run.cleanup_temps()
        self.signals.install()
        if self._resuming is not None:
            ck, self._resuming = self._resuming, None
            self.last_path = Path(ck["_path"])
            self.policy.last_saved_step = trainer.state.step
            self.run.continue_run(self.last_path, trainer.history)
            restore_rank_state(trainer, ck)  # several processes: each rank's RNGs and part of the epoch
        else:
            if self.run.holds_a_run():
                self.signals.restore()
                raise FileExistsError(f"{self.dir}: this run directory already holds a run. Continue it "
                                      "with trainer.resume(train, val), or pick another run_dir "
                                      "(or run_dir='auto').")
            self.run.create(trainer.config, trainer.train_data, trainer.val_data, self.run_info)
        self._data_fp = {"train": data_fingerprint(trainer.train_data), "val": data_fingerprint(trainer.val_data)}
        self.policy.restart_clock()
        state = trainer.state
        self.run.start_session(status="running", run_dir=str(self.dir), versions=versions(), pid=os.getpid(),
                               started=now(), ended=None, exit_code=None, message=None,
                               epoch=state.epoch, step=state.step, target_epochs=state.target_epochs)
        self._started, self._finished = True, False

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        """Checkpoint every N optimizer steps (or when the time-based one is due); after a signal,
        checkpoint and stop the run."""
        if self.signals.signal is not None:
            if trainer.state.batch < trainer.steps_per_epoch:  # at the epoch's end on_epoch_end saves and stops
                self.save(trainer)
                self._stop(trainer)
            return
        # with several processes each rank's clock differs: the time-based checkpoint is the agreed one
        if self.policy.due_at_step(step, agreed_only=trainer.strategy is not None):
            self.save(trainer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        state = trainer.state
        self.run.append_history(logs, trainer.history)
        last = state.epoch >= state.target_epochs or trainer.should_stop
        due = self.policy.due_at_epoch_end(state.epoch, last=last)
        if self.signals.signal is not None or due:
            self.save(trainer, logs)
        if self.signals.signal is not None:
            self._stop(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        """The final bundle (this callback runs last, so EarlyStopping's best weights are the ones
        saved), or after a signal the interrupted status and `RunInterrupted`."""
        self.signals.restore()
        self.run.release()
        if self.signals.signal is not None:
            self._interrupted(trainer)
        trainer.save(str(self.dir / "model"), extra={"run_dir": str(self.dir)})
        self._finish(trainer, "finished", message=trainer.stop_reason, exit_code=0)

    def _interrupted(self, trainer: Trainer) -> NoReturn:
        """After a signal: run.json says "interrupted", rank 0 prints how to resume; raises `RunInterrupted`."""
        code, state = self.signals.exit_code, trainer.state
        msg = (f"Run interrupted by {self.signals.name} at epoch {state.epoch + 1}, batch "
               f"{state.batch} (global step {state.step}); checkpoint written to {self.last_path}. Resume with "
               "the same Trainer arguments and data: trainer.resume(train, val) "
               f"(run_dir={str(self.dir)!r}), "
               f"or (with the CLI) `fitloop resume {self.dir}`. Exit code {code}.")
        self._finish(trainer, "interrupted", message=msg, exit_code=code)
        if is_main_process():
            print(msg, file=sys.stderr, flush=True)
        raise RunInterrupted(code, msg)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.signals.restore()
        if self._started and not self._finished:
            status = "interrupted" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "failed"
            self._finish(trainer, status, message=f"{type(error).__name__}: {error}")
        self.run.release()

    # ---- checkpoints

    def save(self, trainer: Trainer, logs: dict[str, Any] | None = None) -> Path:
        """Write a checkpoint now (atomically), update `latest`/`best`, prune old ones."""
        state = trainer.state
        self._refuse_nonfinite(trainer)
        name = checkpoint_name(self.run.next_seq(), state.epoch, state.step)
        self.policy.update_best(name, logs, state.epoch)
        content = {**trainer.state_dict(), "versions": versions(), "created": now(), "data": self._data_fp,
                   "logs": logs}
        if world_size() > 1:  # a checkpoint of all ranks: each one's own state, FSDP's shards; rank 0 writes
            add_rank_states(trainer, content, self.ckpt_dir / name)
        path = self.run.write_checkpoint(name, content, best=self.policy.is_best(name))
        barrier()  # no rank goes on (or reads it) before the checkpoint is complete
        self.last_path = path
        self.policy.saved(state.step)
        self.run.prune(self.policy.to_keep)
        self.run.write_info(epoch=state.epoch, step=state.step, last_checkpoint=name, elapsed_s=self.run.elapsed())
        trainer.notify_checkpoint(str(path))
        return path

    def _refuse_nonfinite(self, trainer: Trainer) -> None:
        """Raise `NonFiniteError` rather than write a checkpoint with a NaN/inf parameter."""
        named = list(unwrap_model(trainer.model).named_parameters())
        bad = first_nonfinite_of([name for name, _ in named], [p.detach() for _, p in named])
        if bad is not None:
            state = trainer.state
            raise NonFiniteError(f"Not writing a checkpoint at epoch {state.epoch + 1}, global step {state.step}: "
                                 f"parameter {bad!r} is not finite. The last good checkpoint "
                                 f"({self.last_path}) was kept. Try a lower learning rate.")

    # ---- the end of a session

    def _stop(self, trainer: Trainer) -> None:
        """After a signal, once its checkpoint is written (so the checkpoint does not record this stop)."""
        trainer.should_stop = True
        trainer.stop_reason = f"interrupted by {self.signals.name}"

    def _finish(self, trainer: Trainer, status: str, **changes: Any) -> None:
        self._finished = True
        self.run.write_info(status=status, ended=now(), epoch=trainer.state.epoch, step=trainer.state.step,
                            elapsed_s=self.run.elapsed(), verdict=verdict_in(trainer), **changes)
