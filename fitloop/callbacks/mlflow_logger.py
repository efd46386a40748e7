"""MLflowLogger: an MLflow run per training run (params, per-epoch metrics, the bundle as an artifact).

Needs `pip install 'fitloop[mlflow]'` (the light mlflow-skinny package). The shared pieces (which
values are logged, the params, the gradient norm) are in `fitloop.callbacks.loggers`.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..distributed import is_main_process
from ..extras import require
from .base import Callback
from .loggers import GradNorm, run_params, scalar_logs

if TYPE_CHECKING:
    from ..trainer import Trainer

__all__ = ["MLflowLogger"]


def _tracking_uri(uri: str) -> str:
    """A plain directory (``./mlruns``, as `mlflow ui --backend-store-uri` takes it) as a ``file:`` URI;
    anything with a scheme (``http://``, ``file:``, ``databricks``, ``sqlite:///``) as given."""
    if "://" in uri or ":" in uri.split("/", 1)[0] or uri == "databricks":
        return uri
    return Path(uri).expanduser().resolve().as_uri()


def _mlflow_client(uri: str) -> Any:
    if uri.startswith("file:"):
        # MLflow 3 refuses its file store unless asked; a local file store is this logger's default.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


class MLflowLogger(Callback):
    """An MLflow run: the settings as params, per-epoch metrics, the model bundle as an artifact.

    Metrics keep their `logs` names (`loss`, `val_loss`, `accuracy`, `val_accuracy`, `lr`,
    `grad_norm`, `time`) with the epoch as the step. At the end of `fit` the bundle
    (`trainer.save`) is logged as the artifact `model/` (list this logger after `EarlyStopping`
    so the restored best weights are the ones logged) and the run is marked FINISHED; a failed
    or interrupted fit marks it FAILED or KILLED. A resume (the run id is in the checkpoint)
    continues the same run without logging an epoch twice. Needs `pip install 'fitloop[mlflow]'`.

    Args:
        tracking_uri: where runs are stored; default `$MLFLOW_TRACKING_URI`, else the local file
            store `./mlruns` (as an absolute `file:` URI).
        experiment: the experiment's name (created when missing).
        run_name: default: the run directory's name, else MLflow's generated one.
        log_model: log the bundle at the end of `fit`.
        grad_norm: `"last"`, `"mean"` or `"off"` (see `GradNorm`) when clipping does not measure it.
        params: extra params to record; tags: extra run tags.

    Raises:
        MissingExtraError: mlflow (mlflow-skinny) is not installed.
    """

    def __init__(self, tracking_uri: str | None = None, experiment: str = "fitloop", run_name: str | None = None,
                 *, log_model: bool = True, grad_norm: str = "last", params: dict[str, Any] | None = None,
                 tags: dict[str, str] | None = None):
        require("mlflow", "mlflow", "MLflowLogger", package="mlflow-skinny")
        self.tracking_uri = _tracking_uri(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "mlruns")
        self.experiment, self.run_name, self.log_model = experiment, run_name, log_model
        self.params, self.tags = dict(params or {}), dict(tags or {})
        self.grad_norm = GradNorm(grad_norm)
        self.run_id: str | None = None
        self.client: Any = None
        self._logged_upto = 0

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id") or self.run_id
        self.tracking_uri = state.get("tracking_uri") or self.tracking_uri

    def on_fit_start(self, trainer: Trainer) -> None:
        if not is_main_process():
            return
        self.client = client = _mlflow_client(self.tracking_uri)
        if self.run_id is None:
            try:
                exp = client.get_experiment_by_name(self.experiment)
                exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
            except Exception as e:  # noqa: BLE001 - MlflowException, a refused connection: the URI is wrong
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
                raise ValueError(f"MLflow: cannot use the tracking URI {self.tracking_uri!r}: {first}. Set "
                                 "MLFLOW_TRACKING_URI to a running server (http://HOST:5000) or a local directory "
                                 "(./mlruns), or train without MLflow logging.") from e
            run_dir = trainer.config.run_dir
            tags = {**({"fitloop.run_dir": str(Path(run_dir).resolve())} if run_dir else {}), **self.tags}
            name = self.run_name or (Path(run_dir).name if run_dir else None)
            self.run_id = client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            self._log_params(run_params(trainer, self.params))
            self._logged_upto = 0
        else:  # a resume, or another fit of this Trainer: the same run, from the epoch after the last logged
            client.update_run(self.run_id, status="RUNNING")
            logged = client.get_metric_history(self.run_id, "loss")
            self._logged_upto = max((m.step for m in logged), default=0)

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def on_optimizer_step(self, trainer: Trainer, step: int) -> None:
        if self.client is not None:
            self.grad_norm.step(trainer)

    def on_epoch_end(self, trainer: Trainer, epoch: int, logs: dict[str, Any]) -> None:
        if self.client is None:
            return
        values = self.grad_norm.epoch_values(logs)  # every epoch: it also starts the next epoch's norm
        if epoch > self._logged_upto:  # after a resume, the epochs the run already has are not logged twice
            self.log_metrics(values, step=epoch)
            self._logged_upto = epoch

    def log_metrics(self, metrics: dict[str, Any], step: int = 0) -> None:
        """Log numeric `metrics` to the run at `step` (e.g. the test metrics after `fit`)."""
        from mlflow.entities import Metric  # the `mlflow` extra

        if self.run_id is None or not is_main_process():
            return
        client = self.client or _mlflow_client(self.tracking_uri)
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in scalar_logs(metrics).items()]
        for i in range(0, len(items), 1000):
            client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifacts(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file or a directory's files to the run (under `artifact_path`)."""
        if self.run_id is None or not is_main_process():
            return
        client = self.client or _mlflow_client(self.tracking_uri)
        if Path(path).is_dir():
            client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            client.log_artifact(self.run_id, str(path), artifact_path)

    def on_fit_end(self, trainer: Trainer) -> None:
        if self.client is None:
            return
        if self.log_model:
            with tempfile.TemporaryDirectory() as tmp:
                bundle = trainer.save(str(Path(tmp) / "model"), extra={"mlflow_run_id": self.run_id})
                self.log_artifacts(bundle, "model")
        self.client.set_terminated(self.run_id, "FINISHED")

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if self.client is not None and self.run_id is not None:
            status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
            self.client.set_terminated(self.run_id, status)
