"""A dry run: every decision of a table run in words (`describe_plan`), and the editable, commented
config.toml that trains exactly that run (`commented_toml`); nothing is trained.

    plan = describe_plan(cfg)                                   # fitloop.tabular.dry_run(...) from Python
    text = commented_toml(plan, "fitloop train data.csv --target price --dry-run")
    check_round_trip(text, plan.cfg)                            # loads back to the same settings

The decisions come from `fitloop.tabular.plan.plan_run`, the function `fitloop train` itself decides
with (column kinds and task from `fitloop.tabular.columns.Table`, the split, the `Preprocessor` fitted on the
training rows, the model spec, the loss, early stopping); this module only describes them. The
config file holds the resolved settings, so loading it gives back the same `RunConfig` (checked
before the file is written); data-driven decisions that are not settings are comments.
"""

from __future__ import annotations

import inspect
import json
import math
import re
import textwrap
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..devices import pick_device
from ..models import MLPSpec, build_model
from ..tabm import TabMSpec
from .config import (
    ConfigError,
    DataSection,
    RunConfig,
    TrainSection,
    dotted_overrides,
    resolve_run_config,
    tomllib_module,
)
from .plan import RunPlan, plan_run
from .preprocess import date_note
from .reading import is_text_type

__all__ = ["DryRun", "describe_plan", "commented_toml", "check_round_trip"]

_SHOWN_WHEN_UNSET = {("data", "task"), ("train", "loss")}
_MODEL_DOCS = {"hidden": "hidden layer sizes, input to output ([] = a linear model)",
               "activation": "activation between layers: relu, gelu, silu, tanh, ...",
               "dropout": "dropout probability after each hidden layer",
               "skip": "a linear path from the inputs to the outputs beside the hidden layers",
               "linear_init": "start that path at a linear model fitted to the training rows (the MLP's output at 0)",
               "ridge": "regression: that fit's L2 penalty, relative to the mean squared input; gcv = "
                        "chosen by generalized cross-validation on the training rows",
               "logistic_c": "classification: start at the logistic-regression fit with this inverse L2 strength "
                             "(scikit-learn's C); none = the ridge fit of one-hot classes"}


@dataclass
class DryRun:
    """What `fitloop train` would do with a config: the `RunPlan`'s decisions, in words.

    Attributes:
        cfg: the resolved configuration (`data.path` made absolute, as a real run records it).
        rows: rows of the table (after dropping rows with a missing target).
        n_columns: columns of the file.
        columns: one dict per column of the file: name, type, missing, decision, reason.
        task: the task (classification or regression).
        task_reason: why the task is what it is.
        classes: the class labels (classification).
        splits: rows per split.
        stratified: whether the split keeps the class proportions.
        model: the model's description (`MLP 13 -> 64 -> 32 -> 3`).
        parameters: the model's parameter count.
        loss: the loss the run would train with.
        early_stopping: the epochs without a better validation loss after which training would stop (None: never).
        device: the device the run would train on.
        steps_per_epoch: optimizer steps per epoch.
        notes: what was dropped or switched off.
        seconds: {"load": s, "decide": s}.
    """

    cfg: RunConfig
    rows: int
    n_columns: int
    columns: list[dict[str, Any]]
    task: str
    task_reason: str
    classes: list[Any] | None
    splits: dict[str, int]
    stratified: bool
    model: str
    parameters: int
    loss: str
    early_stopping: int | None
    device: str
    steps_per_epoch: int
    notes: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def describe_plan(cfg: RunConfig, world: int | None = None, data: pa.Table | None = None) -> DryRun:
    """Take every decision `train_table(cfg)` would take (through `plan_run`), and train nothing.

    Args:
        cfg: the resolved configuration (`data.path` is made absolute, as a real run records it).
        world: the processes that would train (`plan_run`'s `world`).
        data: the rows as a ``pyarrow.Table`` in memory, instead of the file `cfg.data.path`.

    Raises:
        ConfigError, TableError, ValueError: what the real run would raise on the same settings and data.
    """
    t0 = time.perf_counter()
    plan = plan_run(cfg, world=world, data=data)
    table, pre = plan.table, plan.preprocessor
    if data is None:  # as train_table records it
        cfg.data.path = str(Path(str(cfg.data.path)).resolve())
    kept = {f["name"]: f for f in pre.features}
    columns = []
    for name in table.columns:
        col = table.data.column(name)
        missing = col.null_count + (int(pc.sum(pc.is_nan(col)).as_py() or 0) if _is_float(col) else 0)
        decision, reason = _column_decision(name, table, pre, kept.get(name))
        columns.append({"name": name, "type": str(col.type), "missing": missing, "decision": decision,
                        "reason": reason})
    tcol = table.data.column(table.target)
    facts = f"{table.target!r}: {tcol.type}, {pc.count_distinct(tcol).as_py():,} distinct values"
    task_reason = f"set by data.task (--task); {facts}" if cfg.data.task else f"inferred from {facts}"
    spec = plan.spec
    model = build_model(spec)  # the real builder: the same layers, so the same parameter count
    desc = describe_spec(spec)
    if spec.skip and spec.hidden:  # the linear path beside it (and where it starts)
        desc += " + linear skip" + (f" (starts at {_linear_start(cfg, plan)})" if cfg.model.linear_init
                                    else "")
    n_train = len(plan.rows["train"])
    bs = cfg.train.batch_size
    return DryRun(cfg, len(table), len(table.columns), columns, table.task, task_reason, table.classes,
                  {k: len(v) for k, v in plan.rows.items()}, table.task == "classification", desc,
                  sum(p.numel() for p in model.parameters()), plan.loss, plan.early_stopping,
                  f"{cfg.train.device} -> {pick_device(cfg.train.device)}",
                  plan.budget.steps_per_epoch if plan.budget is not None else
                  (1 if bs is None else math.ceil(n_train / bs)), plan.notes,
                  {"load": plan.load_seconds, "decide": time.perf_counter() - t0 - plan.load_seconds})


def _linear_start(cfg: RunConfig, plan: RunPlan) -> str:
    """Where the linear path starts (`fitloop.tabular.training.start_linear_path`), and early stopping's epoch 0."""
    m, t = cfg.model, cfg.train
    if plan.table.task == "classification" and m.logistic_c is not None:
        where = f"the logistic-regression fit, C={m.logistic_c:g}"
    else:
        where = "the ridge fit, " + ("penalty by GCV on the training rows" if m.ridge == "gcv"
                                     else f"ridge={float(m.ridge):g}")
    if t.early_stopping_from_start and plan.early_stopping:
        if t.early_stopping_paired:
            rule = ", replaced only by an epoch better by 1 standard error of the per-row differences"
        else:
            rule = ", replaced only by an epoch 1 standard error better" if t.early_stopping_se else ""
        where += "; early stopping's epoch 0" + rule
    return where


def _is_float(col: Any) -> bool:
    return bool(pa.types.is_floating(col.type))


def _column_decision(name: str, table: Any, pre: Any, spec: dict[str, Any] | None) -> tuple[str, str]:
    """(what the run does with the column, why): read off the Table's and the Preprocessor's decisions."""
    kind = table.kinds.get(name)
    if name == table.target:
        return "target", f"{table.task} target"
    if name == table.id:
        return "id", "row id (--id): not a feature, copied into the predictions"
    if name in table.drop:
        return "dropped", "as requested (--drop)"
    if kind == "empty":
        return "dropped", "all values missing"
    if kind == "other":
        return "dropped", f"unsupported type {table.data.column(name).type}"
    if name in pre.dropped:
        return "dropped", pre.dropped[name]
    if kind == "date":
        return _date_decision(name, pre)
    if spec is None:  # pragma: no cover - every feature column is kept or in pre.dropped
        return "dropped", "not used"
    if spec["kind"] == "categorical":
        return _categorical_decision(spec)
    t = table.data.column(name).type
    why = ("bool: true/false as 1/0" if kind == "bool" else
           "numeric: text that parses as numbers" if is_text_type(t) else f"numeric: {t}")
    what = f"standardized (train mean {spec['mean']:.4g}, std {spec['std']:.4g})"
    if spec["missing"]:
        what += f"; missing -> train median {spec['median']:.4g} + {name}__missing indicator"
    return what, why


def _date_decision(name: str, pre: Any) -> tuple[str, str]:
    """A date column's numeric features (`fitloop.tabular.preprocess.date_specs`), and why."""
    parts = [f for f in pre.features if f.get("source") == name]
    if not parts:  # pragma: no cover - a date column is kept or in pre.dropped
        return "dropped", "not used"
    what = f"{len(parts)} numbers (" + ", ".join(f["part"] for f in parts) + "), standardized"
    if parts[0]["missing"]:
        what += f"; missing -> train median + {parts[0]['name']}__missing indicator"
    return what, "date: " + date_note(name, parts).split(": ", 2)[2]


def _categorical_decision(spec: dict[str, Any]) -> tuple[str, str]:
    """A kept text column's one-hot slots, and why: all its training values, or its most frequent ones
    (``others``: the values beyond them, which share the <unknown> slot)."""
    k, others = len(spec["categories"]), int(spec.get("others") or 0)
    slots = f"{k} + <unknown>" + (" + <missing>" if spec["missing"] else "")
    if others:
        return (f"one-hot ({slots}: the {k} most frequent values)",
                f"categorical: kept the {k} most frequent of {k + others:,} values; the rest share one slot")
    return f"one-hot ({slots})", f"categorical: {k} distinct strings in the training rows"


# ------------------------------------------------------------------------------------------ the file


def _attribute_docs(*classes: type) -> dict[str, str]:
    """`name: text` entries of the classes' Google-style `Attributes:` sections (the first class wins)."""
    out: dict[str, str] = {}
    for cls in classes:
        key, inside = None, False
        for line in (inspect.getdoc(cls) or "").splitlines():
            if line.strip() == "Attributes:":
                inside = True
                continue
            if not inside:
                continue
            m = re.match(r"^    (\w+): (.*)$", line)
            if m:
                key = m[1] if m[1] not in out else None
                if key:
                    out[key] = m[2]
            elif key and line.startswith("        "):
                out[key] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                break
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v) if not (isinstance(v, float) and not math.isfinite(v)) else \
            ("nan" if math.isnan(v) else ("inf" if v > 0 else "-inf"))
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise ConfigError(f"cannot write {v!r} ({type(v).__name__}) to a TOML file.")


def _comment(text: str, indent: str = "") -> list[str]:
    return textwrap.wrap(text, 116, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}#   ")


def commented_toml(plan: DryRun, command: str | None = None) -> str:
    """The plan's configuration as TOML, every key with its meaning and the data-driven decisions as
    comments. Loading it gives back `plan.cfg` (`check_round_trip` checks)."""
    docs = {"data": _attribute_docs(DataSection), "model": _MODEL_DOCS,
            "train": _attribute_docs(TrainSection, *TrainSection.__mro__[1:2])}
    out = ["# fitloop run configuration, written by `fitloop train --dry-run`: every setting of the run, resolved",
           "# (defaults < --config file < flags < --set), with what fitloop decided from the data as comments.",
           "# Edit it, then train exactly this run with:  fitloop train --config THIS_FILE [--out RUN_DIR]"]
    if command:
        out += _comment(f"planned with: {command}")
    values = plan.cfg.to_dict()
    for section in RunConfig.SECTIONS:
        out += _section_lines(plan, section, values[section], docs[section])
    return "\n".join(out) + "\n"


def _decisions(plan: DryRun) -> dict[tuple[str, str], list[str]]:
    """What was decided from the data next to a setting, as `-> ...` comments under its key."""
    s = plan.splits
    return {
        ("data", "path"): [f"{plan.rows:,} rows x {plan.n_columns} columns"],
        ("data", "split"): [", ".join(f"{k} {v:,}" for k, v in s.items()) + " rows"
                            + (" (stratified by class)" if plan.stratified else "")],
        ("train", "batch_size"): [f"{plan.steps_per_epoch:,} steps per epoch"],
        ("train", "device"): [f"{plan.device} on this machine"],
        ("train", "early_stopping"): ([] if plan.early_stopping or not plan.cfg.train.early_stopping
                                      else ["off for this run: there is no validation split"]),
    }


def _section_lines(plan: DryRun, section: str, values: dict[str, Any], docs: dict[str, str]) -> list[str]:
    """One `[section]`: each key with its meaning, the decisions about it and its value; tables last."""
    out = ["", f"[{section}]"]
    if section == "model":
        out += _comment(f"decided: {plan.model}, {plan.parameters:,} parameters"
                        + (f"; {len(plan.classes)} outputs, one per class" if plan.classes else ""))
    decisions = _decisions(plan)
    inline: list[str] = []
    defaults = {f.name: f for f in fields(type(getattr(plan.cfg, section)))}
    for key, v in values.items():
        if isinstance(v, dict):  # tables go after the section's keys
            inline += ["", *_comment(f"{key}: {docs.get(key, '')}"), f"[{section}.{key}]",
                       *(f"{k} = {_toml_value(x)}" for k, x in v.items())]
            continue
        out.append("")
        unset = v is None and defaults[key].default is None and (section, key) not in _SHOWN_WHEN_UNSET
        if key in docs:
            out += _comment(f"{key}: {docs[key]}" + (" (Not set.)" if unset else ""))
        for d in decisions.get((section, key), []):
            out += _comment(f"-> {d}")
        out += _value_lines(plan, section, key, v, unset)
        if section == "data" and key == "drop":
            out += ["#", "# what the run does with each column (change it with drop, id, max_categories):"]
            width = max(len(c["name"]) for c in plan.columns)
            for c in plan.columns:
                out.append(f"#   {c['name']:<{width}}  {c['decision']}  [{c['reason']}]")  # one line each
    return out + inline


def _value_lines(plan: DryRun, section: str, key: str, v: Any, unset: bool) -> list[str]:
    """`key = value`; an unset task or loss as the commented-out value the run would use."""
    if section == "data" and key == "task" and v is None:
        return [*_comment(f"-> {plan.task!r}, {plan.task_reason}; uncomment to force it:"),
                f"# task = {_toml_value(plan.task)}"]
    if section == "train" and key == "loss" and v is None:
        return [f"# loss = {_toml_value(plan.loss)}   # the default for {plan.task}"]
    if v is None:
        return [] if unset else [f'{key} = "none"']
    return [f"{key} = {_toml_value(v)}"]


def check_round_trip(text: str, cfg: RunConfig) -> None:
    """The written file must load back to the same settings: otherwise `--config` would train another run."""
    back = resolve_run_config(dotted_overrides(tomllib_module().loads(text), "dry-run config"))
    if back.to_dict() != cfg.to_dict():
        raise RuntimeError("the dry-run config does not load back to the same settings (a fitloop bug).")


def describe_spec(spec: MLPSpec | TabMSpec) -> str:
    """A model spec in words: `MLP 13 -> 64 -> 32 -> 3 (relu)`, or `TabM, 8 members: 13 inputs (10 numbers:
    piecewise-linear embeddings, 16 bins, width 8) -> 256 -> 256 -> 3 (relu, dropout 0.1)`."""
    extra = f", dropout {spec.dropout:g}" if spec.dropout else ""
    if isinstance(spec, MLPSpec):
        sizes = [spec.in_features, *spec.hidden, spec.out_features]
        return "MLP " + " -> ".join(map(str, sizes)) + f" ({spec.activation}{extra})"
    numbers = ""
    if spec.embedded:
        how = {"piecewise": f"piecewise-linear embeddings, {spec.n_bins} bins",
               "periodic": f"periodic embeddings, {spec.n_bins} frequencies"}[spec.embedding]
        numbers = f" ({len(spec.numeric)} numbers: {how}, width {spec.d_embedding})"
    layers = " -> ".join(map(str, [*spec.hidden, spec.out_features]))
    return f"TabM, {spec.k} members: {spec.in_features} inputs{numbers} -> {layers} ({spec.activation}{extra})"
