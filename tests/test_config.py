"""fitloop.config.TrainConfig: unknown settings, every validation message, to_dict, fingerprint."""

import dataclasses
import json

import pytest
from helpers import exactly

from fitloop.config import TrainConfig

# ---------------------------------------------------------------- from_kwargs


def test_defaults_are_valid_and_documented_values():
    cfg = TrainConfig()
    cfg.validate()
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.precision, cfg.monitor, cfg.mode) == (
        10, 64, 1e-3, "fp32", "val_loss", "min")


def test_from_kwargs_unknown_setting_suggests_and_lists_the_settings():
    valid = ", ".join(sorted(f.name for f in dataclasses.fields(TrainConfig)))
    with pytest.raises(TypeError, match=exactly(
            f"Trainer got an unknown setting 'epoch'. Did you mean 'epochs'? Valid settings: {valid}.")):
        TrainConfig.from_kwargs(epoch=3)
    with pytest.raises(TypeError, match=exactly(
            f"Trainer got an unknown setting 'clip_norm'. Did you mean 'clip_grad_norm'? Valid settings: {valid}.")):
        TrainConfig.from_kwargs(clip_norm=1.0)
    with pytest.raises(TypeError, match=exactly(f"Trainer got an unknown setting 'zzzz'. Valid settings: {valid}.")):
        TrainConfig.from_kwargs(zzzz=1)  # nothing close: no suggestion


def test_from_kwargs_applies_over_a_base_without_changing_it():
    base = TrainConfig(epochs=3, lr=0.1, optimizer_kwargs={"momentum": 0.9})
    cfg = TrainConfig.from_kwargs(base, lr=0.5, batch_size=None)
    assert (cfg.epochs, cfg.lr, cfg.batch_size, cfg.optimizer_kwargs) == (3, 0.5, None, {"momentum": 0.9})
    assert (base.lr, base.batch_size) == (0.1, 64)
    cfg.optimizer_kwargs["momentum"] = 0.0
    assert base.optimizer_kwargs == {"momentum": 0.9}  # a copy, not shared
    assert TrainConfig.from_kwargs(epochs=2) == TrainConfig(epochs=2)


def test_from_kwargs_validates():
    with pytest.raises(ValueError, match=exactly("epochs: got -1; pass a whole number >= 0.")):
        TrainConfig.from_kwargs(epochs=-1)


# ---------------------------------------------------------------- validate


BAD = [
    ({"epochs": -1}, "epochs: got -1; pass a whole number >= 0."),
    ({"epochs": 2.5}, "epochs: got 2.5; pass a whole number >= 0."),
    ({"batch_size": 0}, "batch_size: got 0; pass a whole number >= 1, or None for full-batch training."),
    ({"batch_size": 8.0}, "batch_size: got 8.0; pass a whole number >= 1, or None for full-batch training."),
    ({"lr": 0}, "lr: got 0; pass a learning rate > 0, e.g. lr=1e-3."),
    ({"lr": -0.1}, "lr: got -0.1; pass a learning rate > 0, e.g. lr=1e-3."),
    ({"lr": "0.1"}, "lr: got '0.1'; pass a learning rate > 0, e.g. lr=1e-3."),
    ({"accumulate": 0}, "accumulate: got 0; pass a whole number >= 1 (micro-batches per optimizer step)."),
    ({"accumulate": 1.5}, "accumulate: got 1.5; pass a whole number >= 1 (micro-batches per optimizer step)."),
    ({"precision": "fp8"}, "precision: got 'fp8'; choose one of ('fp32', 'bf16', 'fp16')."),
    ({"precision": "float16"}, "precision: got 'float16'; choose one of ('fp32', 'bf16', 'fp16')."),
    ({"task": "ranking"}, "task: got 'ranking'; choose 'regression', 'binary', 'multiclass' or 'classification'."),
    ({"penalty": ("l3", 0.1)}, "penalty: got ('l3', 0.1); pass ('l1', strength) or ('l2', strength), "
                               "e.g. ('l2', 1e-4)."),
    ({"penalty": ("l2", -1.0)}, "penalty: got ('l2', -1.0); pass ('l1', strength) or ('l2', strength), "
                                "e.g. ('l2', 1e-4)."),
    ({"penalty": ("l2", float("nan"))}, "penalty: got ('l2', nan); pass ('l1', strength) or ('l2', strength), "
                                        "e.g. ('l2', 1e-4)."),
    ({"penalty": ("l2",)}, "penalty: got ('l2',); pass ('l1', strength) or ('l2', strength), e.g. ('l2', 1e-4)."),
    ({"input_noise": -0.1}, "input_noise: got -0.1; pass a standard deviation >= 0."),
    ({"clip_grad_norm": 0}, "clip_grad_norm: got 0; pass a value > 0, or None to turn clipping off."),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm: got -1.0; pass a value > 0, or None to turn clipping off."),
    ({"clip_grad_value": 0.0}, "clip_grad_value: got 0.0; pass a value > 0, or None to turn clipping off."),
    ({"mode": "maximum"}, "mode: got 'maximum'; choose 'min' or 'max'."),
    ({"on_nonfinite": "ignore"}, "on_nonfinite: got 'ignore'; choose 'stop' or 'skip'."),
    ({"scheduler_interval": "batch"}, "scheduler_interval: got 'batch'; choose 'step' or 'epoch'."),
    ({"checkpoint_every_steps": 0}, "checkpoint_every_steps: got 0; pass a whole number >= 1 or None."),
    ({"keep_last": 0}, "keep_last: got 0; keep at least 1 checkpoint."),
    ({"compile": "graph"}, "compile: got 'graph'; pass True or 'model' (compile the model), 'step' (compile the "
                           "whole training step) or False."),
    ({"threads": 0}, "threads: got 0; pass a whole number >= 1 or None."),
    # wrong types get the same messages, not a bare TypeError from a comparison
    ({"epochs": True}, "epochs: got True; pass a whole number >= 0."),
    ({"penalty": ("l2", "abc")}, "penalty: got ('l2', 'abc'); pass ('l1', strength) or ('l2', strength), "
                                 "e.g. ('l2', 1e-4)."),
    ({"input_noise": "x"}, "input_noise: got 'x'; pass a standard deviation >= 0."),
    ({"clip_grad_norm": "1"}, "clip_grad_norm: got '1'; pass a value > 0, or None to turn clipping off."),
    ({"checkpoint_every_steps": 2.5}, "checkpoint_every_steps: got 2.5; pass a whole number >= 1 or None."),
    ({"keep_last": 1.5}, "keep_last: got 1.5; keep at least 1 checkpoint."),
    ({"compile": 1}, "compile: got 1; pass True or 'model' (compile the model), 'step' (compile the "
                     "whole training step) or False."),
    ({"threads": "2"}, "threads: got '2'; pass a whole number >= 1 or None."),
    ({"threads": 1.5}, "threads: got 1.5; pass a whole number >= 1 or None."),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[f"{next(iter(k))}={next(iter(k.values()))!r}" for k, _ in BAD])
def test_each_bad_setting_is_refused_with_its_message(kwargs, message):
    with pytest.raises(ValueError, match=exactly(message)):
        TrainConfig(**kwargs)
    cfg = TrainConfig()  # validate() also checks a config changed after construction
    for k, v in kwargs.items():
        setattr(cfg, k, v)
    with pytest.raises(ValueError, match=exactly(message)):
        cfg.validate()


def test_every_validated_setting_has_a_bad_value_above():
    validated = {"epochs", "batch_size", "lr", "accumulate", "precision", "task", "penalty", "input_noise",
                 "clip_grad_norm", "clip_grad_value", "mode", "on_nonfinite", "scheduler_interval",
                 "checkpoint_every_steps", "keep_last", "compile", "threads"}
    assert {next(iter(k)) for k, _ in BAD} == validated


@pytest.mark.parametrize("kwargs", [
    {"epochs": 0}, {"batch_size": None}, {"batch_size": 1}, {"lr": None}, {"lr": 1}, {"precision": "bf16"},
    {"precision": "fp16"}, {"task": "classification"}, {"task": None}, {"penalty": None}, {"penalty": ("l1", 0)},
    {"input_noise": 0.0}, {"clip_grad_norm": None}, {"clip_grad_value": 1e-9}, {"mode": "max"},
    {"on_nonfinite": "skip"}, {"scheduler_interval": "step"}, {"scheduler_interval": None},
    {"checkpoint_every_steps": 1}, {"keep_last": 1}, {"compile": True}, {"compile": "model"}, {"compile": "step"},
    {"threads": None}, {"threads": 1},
])
def test_edge_values_that_are_valid(kwargs):
    TrainConfig(**kwargs).validate()


def test_penalty_is_normalised_to_a_name_and_float_pair():
    assert TrainConfig(penalty=["l2", 1]).penalty == ("l2", 1.0)
    assert isinstance(TrainConfig(penalty=("l1", 1)).penalty[1], float)


# ---------------------------------------------------------------- to_dict, fingerprint


def test_to_dict_has_every_field_is_json_and_round_trips():
    cfg = TrainConfig(epochs=3, penalty=("l2", 0.01), optimizer_kwargs={"momentum": 0.9}, compile="step")
    d = cfg.to_dict()
    assert list(d) == [f.name for f in dataclasses.fields(TrainConfig)]
    assert d["penalty"] == ["l2", 0.01] and d["optimizer_kwargs"] == {"momentum": 0.9} and d["epochs"] == 3
    assert json.loads(json.dumps(d)) == d
    assert TrainConfig(**d) == cfg
    d["optimizer_kwargs"]["momentum"] = 0.0
    assert cfg.optimizer_kwargs == {"momentum": 0.9}  # a copy
    assert TrainConfig().to_dict()["penalty"] is None


def test_fingerprint_is_a_stable_short_hash():
    fp = TrainConfig().fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert TrainConfig().fingerprint() == fp


@pytest.mark.parametrize("kwargs", [{"quiet": True}, {"print_every": 5}, {"run_dir": "runs/x"}, {"device": "cpu"},
                                    {"num_workers": 4}, {"epochs": 99}])
def test_fingerprint_ignores_what_does_not_change_the_result(kwargs):
    assert TrainConfig(**kwargs).fingerprint() == TrainConfig().fingerprint()


@pytest.mark.parametrize("kwargs", [{"lr": 0.01}, {"lr": None}, {"batch_size": 32}, {"seed": 1},
                                    {"penalty": ("l2", 0.1)}, {"optimizer_kwargs": {"momentum": 0.9}},
                                    {"precision": "bf16"}, {"accumulate": 2}])
def test_fingerprint_changes_with_what_changes_the_result(kwargs):
    assert TrainConfig(**kwargs).fingerprint() != TrainConfig().fingerprint()


def test_fingerprint_ignore_list_can_be_given():
    a, b = TrainConfig(lr=0.1), TrainConfig(lr=0.2)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint(ignore=("lr",)) == b.fingerprint(ignore=("lr",))
    assert TrainConfig(epochs=1).fingerprint(ignore=()) != TrainConfig(epochs=2).fingerprint(ignore=())
