"""Greedy ensemble selection (Caruana et al. 2004) over finished table runs, saved as a run directory.

    path = build_ensemble(["tune/trials/0000", "tune/trials/0001", "tune/trials/0002"], "tune/ensemble")
    fitloop.tabular.load_run(path).predict("new.csv")    # `fitloop predict`, `serve` and `export` read it too

The runs must share their data, split and preprocessing (as the trials of one study do): each member
predicts the validation rows its run held out (re-read from the data file by the row indices in
`splits.json`), and the ensemble starts empty and adds, with replacement, the run whose addition gives the
lowest validation loss: log-loss of the averaged probabilities for classification, mean squared error in the
target's units for regression. The round with the lowest loss is kept, so the ensemble is never worse on the
validation rows than the best run alone. A run picked k times of n gets the weight k/n.

The result is a run directory like `fitloop train`'s: `model/` holds an `EnsembleSpec` bundle (safetensors +
JSON, no pickle) with the runs' preprocessor, `metrics.json` the ensemble's held-out metrics, `run.json` the
members, their weights and validation losses, and `config.toml`/`splits.json` the first member's, so export
verifies on the same test rows.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from ..bundle import save_bundle
from ..callbacks.run_directory import now
from ..config import RUN_FORMAT
from ..files import versions, write_json_atomic
from ..models import Ensemble, EnsembleSpec, MLPSpec
from ..outputs import check_out_dir, clear_run_dir
from ..runlock import hold_run_dir
from ..tabm import TabMSpec
from ..tune.ensemble import DEFAULT_ROUNDS, Selection, greedy_selection
from .columns import Table
from .config import load_toml, resolve_run_config
from .preprocess import transform_table
from .reading import signless_zero
from .runs import LoadedRun, baseline_outputs, load_run, score, unscale

__all__ = ["build_ensemble", "EnsembleError"]

# the ensemble module clamps probabilities at float32's smallest normal number before the log: so does the loss
_TINY = torch.finfo(torch.float32).tiny
# what must be equal in every member's bundle for their predictions to be averaged (the table info's keys)
_SHARED_INFO = ("task", "target", "id", "classes", "feature_names", "target_scaling")


class EnsembleError(ValueError):
    """The runs cannot be ensembled (different data, split or preprocessing; no validation rows)."""


# ----------------------------------------------------------------------------------------------- members


def _load_members(run_dirs: Sequence[str | os.PathLike]) -> list[LoadedRun]:
    """Each finished run, once (a directory named twice counts once); only MLP and TabM runs can be members."""
    unique = list(dict.fromkeys(Path(d).resolve() for d in run_dirs))
    if not unique:
        raise EnsembleError("build_ensemble: no run directories given.")
    runs = [load_run(d) for d in unique]  # NotARunError names a directory that is not a finished run
    for run in runs:
        if not isinstance(getattr(run.model, "spec", None), (MLPSpec, TabMSpec)):
            raise EnsembleError(f"{run.path}: its model is a {type(run.model).__name__}, not an MLP or TabM run; an "
                                f"ensemble's members are `fitloop train` (or tune trial) runs.")
    return runs


def _split_of(run: LoadedRun) -> dict[str, Any]:
    try:
        return json.loads((run.path / "splits.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise EnsembleError(f"{run.path}: cannot read its splits.json ({e}); the validation rows are unknown.") \
            from None


def _check_compatible(runs: list[LoadedRun]) -> dict[str, Any]:
    """Refuse runs whose predictions cannot be averaged: a different preprocessor, target info or split.

    Returns:
        The first run's split (`splits.json`).
    """
    first, split = runs[0], _split_of(runs[0])
    pre = {k: v for k, v in first.preprocessor.to_dict().items() if k != "notes"}
    for run in runs[1:]:
        other = {k: v for k, v in run.preprocessor.to_dict().items() if k != "notes"}
        different = [k for k in pre if pre[k] != other.get(k)]
        different += [f"table info {k!r}" for k in _SHARED_INFO if first.info.get(k) != run.info.get(k)]
        if _split_of(run) != split:
            different.append("the split (splits.json)")
        if different:
            raise EnsembleError(f"{run.path} and {first.path} do not share their preprocessing ({', '.join(different)} "
                                f"differ), so their predictions cannot be averaged. Ensemble runs trained on the "
                                f"same data with the same split seed and preprocessing (the trials of one study).")
    if not split.get("val"):
        raise EnsembleError(f"{first.path}: the runs hold out no validation rows, and ensemble selection chooses on "
                            f"them; train with a validation part (e.g. --split 0.7,0.15,0.15).")
    return split


def _read_rows(run: LoadedRun, data: pa.Table | None) -> tuple[pa.Table, str | None]:
    """The run's data rows as its split indexes them (rows with a missing target removed), and the file."""
    cfg = resolve_run_config(load_toml(str(run.path / "config.toml"))).data
    if data is None and not cfg.path:
        raise EnsembleError(f"{run.path}: the run trained on a table in memory; pass that table again "
                            f"(build_ensemble(..., data=TABLE)).")
    target = run.info["target"]
    if data is not None:
        table = Table.from_arrow(data, target, task=cfg.task, drop=cfg.drop, id=cfg.id,
                                 max_categories=cfg.max_categories)
    else:
        table = Table.read(str(cfg.path), target=target, task=cfg.task, drop=cfg.drop, id=cfg.id,
                           encoding=cfg.encoding, max_categories=cfg.max_categories, delimiter=cfg.delimiter,
                           decimal=run.info.get("decimal"))
    return signless_zero(table.data, target), cfg.path  # -0.0 is the class 0.0, as training read it


def _encoded(run: LoadedRun, rows: pa.Table, indices: list[int], name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One split's encoded inputs and targets (class indices, or values in the target's units)."""
    if indices and max(indices) >= rows.num_rows:
        raise EnsembleError(f"{run.path}: its data now has {rows.num_rows} rows, fewer than its {name} split "
                            f"needs; the data file changed since the runs were trained.")
    enc = transform_table(run.preprocessor, rows.take(pa.array(indices, pa.int64())))
    if enc.y is None:
        raise EnsembleError(f"{run.path}: the {name} rows have no target values.")
    return enc.X, enc.y


def _predictions(run: LoadedRun, X: torch.Tensor) -> torch.Tensor:
    """What the ensemble averages: class probabilities, or values in the target's units (float64)."""
    out = run.outputs(X).double()
    if run.task == "classification":
        return torch.softmax(out, -1)
    return unscale(out.reshape(-1), run.info["target_scaling"])


def _loss_function(task: str, y: torch.Tensor) -> Callable[[torch.Tensor], float]:
    """The validation loss of a mean prediction: log-loss (classification) or MSE in the target's units."""
    if task == "classification":
        labels = y.long()
        return lambda p: float(torch.nn.functional.nll_loss(torch.log(p.clamp_min(_TINY)), labels))
    values = y.double().reshape(-1)
    return lambda v: float(((v - values) ** 2).mean())


# ----------------------------------------------------------------------------------------------- the bundle


def _ensemble_model(runs: list[LoadedRun], counts: list[int]) -> tuple[Ensemble, list[int]]:
    """The Ensemble of the picked runs (most picks first), with their weights; and the runs' indices."""
    chosen = sorted((i for i, c in enumerate(counts) if c), key=lambda i: -counts[i])  # stable: ties keep order
    average = "probabilities" if runs[0].task == "classification" else "outputs"
    spec = EnsembleSpec([runs[i].model.spec for i in chosen], [counts[i] for i in chosen], average)
    model = Ensemble(spec)
    for member, i in zip(model.members, chosen):
        member.load_state_dict(runs[i].model.state_dict())
    return model.eval(), chosen


def _check_out(out_dir: str | os.PathLike, runs: list[LoadedRun], data_file: str | None, overwrite: bool) -> Path:
    target = Path(out_dir).resolve()
    for run in runs:
        if target == run.path or target in run.path.parents:
            raise EnsembleError(f"{out_dir}: holds the member run {run.path}; write the ensemble to a directory of "
                                f"its own, e.g. {run.path.parent / 'ensemble'}.")
    return check_out_dir(out_dir, overwrite=overwrite, inputs=[data_file], what="the ensemble")


def _metrics(run: LoadedRun, model: Ensemble, split: tuple[torch.Tensor, torch.Tensor] | None,
             name: str | None) -> dict[str, Any]:
    """metrics.json: the ensemble's metrics on the held-out split, next to the trivial baseline's."""
    info = run.info
    if split is None:
        return {"split": None, "rows": 0, "metrics": {}, "baseline": {}, "baseline_kind": info["baseline_kind"]}
    X, y = split
    with torch.inference_mode():
        raw = model(X)
    scaling = info.get("target_scaling")
    return {"split": name, "rows": len(y), "metrics": score(run.task, raw, y, scaling),
            "baseline": score(run.task, baseline_outputs(run.task, info, len(y)), y, scaling),
            "baseline_kind": info["baseline_kind"]}


def _run_info(runs: list[LoadedRun], chosen: list[int], selection: Selection, member_losses: list[float],
              rows: dict[str, int], parameters: int) -> dict[str, Any]:
    """run.json: a finished run of kind "ensemble", with its members, weights and validation losses."""
    first = runs[0]
    total = sum(selection.counts)
    metric = "log_loss" if first.task == "classification" else "mse"
    config = json.loads((first.path / "run.json").read_text(encoding="utf-8"))
    stamp = now()
    return {
        "format": RUN_FORMAT, "format_version": 1, "kind": "ensemble", "created": stamp, "updated": stamp,
        "status": "finished", "versions": versions(),
        **{k: config.get(k) for k in ("data", "data_in_memory", "target", "task", "inputs", "features")
           if k in config},
        "rows": rows, "parameters": parameters,
        "ensemble": {
            "method": "greedy ensemble selection with replacement (Caruana et al. 2004) on the validation rows",
            "metric": f"val_{metric}", "rounds": len(selection.history), "val_loss": selection.loss,
            "best_member_val_loss": min(member_losses), "history": selection.history,
            "members": [{"run": str(runs[i].path), "weight": selection.counts[i] / total,
                         "picks": selection.counts[i], "val_loss": member_losses[i]} for i in chosen],
            "candidates": [{"run": str(run.path), "val_loss": loss} for run, loss in zip(runs, member_losses)],
        },
    }


def _write(out: Path, runs: list[LoadedRun], model: Ensemble, metrics: dict[str, Any], info: dict[str, Any]) -> None:
    """The run directory, run.json last: until it is there, the directory is no finished run."""
    first = runs[0]
    with hold_run_dir(out):
        clear_run_dir(out)
        for name in ("config.toml", "splits.json"):  # the data and split the members share: export re-reads them
            shutil.copyfile(first.path / name, out / name)
        meta = {"preprocessor": first.preprocessor.to_dict(), "table": first.info}
        save_bundle(model, out / "model", meta=meta)
        write_json_atomic(out / "metrics.json", metrics)
        write_json_atomic(out / "run.json", {**info, "run_dir": str(out)})


def build_ensemble(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                   rounds: int = DEFAULT_ROUNDS, max_members: int | None = None, overwrite: bool = False,
                   data: pa.Table | None = None) -> Path:
    """Choose an ensemble of finished table runs on their validation rows, and save it as a run directory.

    Args:
        run_dirs: run directories (`fitloop train` runs, or a study's trials) trained on the same data with the
            same split and preprocessing.
        out_dir: the ensemble's run directory (new or empty, or a fitloop run directory with `overwrite`).
        rounds: greedy selection's picks (with replacement); the round with the lowest validation loss is kept.
        max_members: only the `max_members` runs with the lowest validation loss of their own are candidates
            (None: every run), so the bundle holds at most that many models.
        overwrite: replace a run directory at `out_dir`.
        data: the table the runs were trained on, when they trained on a table in memory (no data file).

    Returns:
        `out_dir`: open it with `fitloop.tabular.load_run`, or `fitloop predict/serve/export` it.

    Raises:
        EnsembleError: the runs do not share data, split and preprocessing, or hold out no validation rows.
        NotARunError: a directory is not a finished run.
        OutputPathError: `out_dir` may not be written (it holds other files, or a run without `overwrite`).
    """
    if max_members is not None and max_members < 1:
        raise EnsembleError(f"build_ensemble: max_members={max_members}; give at least 1 (or None for all runs).")
    runs = _load_members(run_dirs)
    split = _check_compatible(runs)
    rows, data_file = _read_rows(runs[0], data)
    out = _check_out(out_dir, runs, data_file, overwrite)
    X_val, y_val = _encoded(runs[0], rows, split["val"], "val")
    loss_of = _loss_function(runs[0].task, y_val)
    predictions = [_predictions(run, X_val) for run in runs]
    member_losses = [loss_of(p) for p in predictions]
    # the candidates, in the caller's order (ties go to the earlier run)
    pool = sorted(sorted(range(len(runs)), key=member_losses.__getitem__)[:max_members])
    runs, predictions = [runs[i] for i in pool], [predictions[i] for i in pool]
    member_losses = [member_losses[i] for i in pool]
    selection = greedy_selection(predictions, loss_of, rounds)
    model, chosen = _ensemble_model(runs, selection.counts)
    held_out = "test" if split.get("test") else None
    test = _encoded(runs[0], rows, split["test"], "test") if held_out else None
    counts = {name: len(split[name]) for name in ("train", "val", "test") if split.get(name)}
    parameters = sum(p.numel() for p in model.parameters())
    info = _run_info(runs, chosen, selection, member_losses, counts, parameters)
    _write(out, runs, model, _metrics(runs[0], model, test, held_out), info)
    return out
