"""Tests for fitloop.tabular.config: TOML files, --set, flags, resolve_run_config, ConfigError, config.toml."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
from tablefiles import sklearn_csv

from fitloop.cli import main
from fitloop.tabular.config import (
    ConfigError,
    RunConfig,
    load_toml,
    parse_set,
    parse_value,
    resolve_run_config,
    tomllib_module,
)

tomllib = tomllib_module()
ROOT = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ TOML, flags and --set


def test_config_file_set_and_flags_are_one_path(tmp_path, capsys):
    data = sklearn_csv(tmp_path, "wine")
    toml = tmp_path / "run.toml"
    toml.write_text(f'[data]\npath = "{data}"\ntarget = "target"\ndrop = ["row_id"]\n\n'
                    '[model]\nhidden = [16]\n\n[train]\nepochs = 2\nquiet = true\n')
    out = tmp_path / "a"
    code, _, err = run_cli(capsys, "train", "--config", toml, "--set", "train.lr=0.01", "--set",
                           "model.dropout=0.1", "--out", out)
    assert code == 0, err
    saved = tomllib.loads((out / "config.toml").read_text())
    assert saved["train"]["lr"] == 0.01 and saved["model"] == {"kind": "tabm", "hidden": [16], "activation": "relu",
                                                      "dropout": 0.1, "k": 8, "embedding": "piecewise",
                                                      "d_embedding": 8, "n_bins": 16, "skip": True,
                                                      "linear_init": True, "ridge": "gcv", "logistic_c": 1.0}
    assert saved["data"]["drop"] == ["row_id"]
    # the same settings as flags resolve to the same config
    out2 = tmp_path / "b"
    code, _, err = run_cli(capsys, "train", data, "--target", "target", "--drop", "row_id", "--hidden", "16",
                           "--epochs", "2", "--lr", "0.01", "--dropout", "0.1", "--quiet", "--out", out2)
    assert code == 0, err
    assert (out2 / "config.toml").read_text() == (out / "config.toml").read_text()
    # and the saved config reruns the run
    assert resolve_run_config(load_toml(out / "config.toml")) == resolve_run_config(load_toml(out2 / "config.toml"))


def test_set_values_and_unknown_keys():
    cfg = resolve_run_config(parse_set(["train.batch_size=none", "model.hidden=[8, 4]", "data.drop=a,b",
                                        "train.optimizer=sgd", "train.optimizer_kwargs={momentum = 0.9}"]))
    assert cfg.train.batch_size is None and cfg.model.hidden == [8, 4] and cfg.data.drop == ["a", "b"]
    assert cfg.train.optimizer == "sgd" and cfg.train.optimizer_kwargs == {"momentum": 0.9}
    assert cfg.train.trainer_config().optimizer_kwargs == {"momentum": 0.9}
    with pytest.raises(ConfigError, match=r"unknown setting 'train\.lrr'\. Did you mean 'train\.lr'\?"):
        resolve_run_config(parse_set(["train.lrr=0.1"]))
    with pytest.raises(ConfigError, match=r"train\.epochs: got 'ten'"):
        resolve_run_config(parse_set(["train.epochs=ten"]))
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_set(["lr=0.1"])


def test_parse_value_uses_toml_literals():
    assert parse_value("0.01") == 0.01 and parse_value("true") is True and parse_value("[64, 32]") == [64, 32]
    assert parse_value('"x y"') == "x y" and parse_value("adamw") == "adamw" and parse_value(" none ") == "none"


def test_later_layers_win_and_strings_are_coerced():
    cfg = resolve_run_config({"train.lr": 0.1, "model.hidden": "8,4"}, {"train.lr": 0.2, "data.split": "0.8,0.2"})
    assert cfg.train.lr == 0.2 and cfg.model.hidden == [8, 4] and cfg.data.split == [0.8, 0.2]
    with pytest.raises(ConfigError, match=r"unknown setting 'trian\.lr'\. Did you mean 'train\.lr'\?"):
        resolve_run_config({"trian.lr": 0.1})
    with pytest.raises(ConfigError, match=r"train\.shuffle: got 3 \(int\); expected true or false"):
        resolve_run_config({"train.shuffle": 3})


def test_load_toml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_toml(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[train\nlr = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(str(bad))
    bad.write_text("[trian]\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"unknown section \[trian\]\. Did you mean \[train\]\?"):
        load_toml(str(bad))
    bad.write_text("data = 3\n")
    with pytest.raises(ConfigError, match=r"'data' must be a section \(\[data\]\)"):
        load_toml(str(bad))


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("overrides", "message"), [
    ({"data.split": [0.7, 0.2, 0.2]},
     "data.split (--split) must sum to 1, got [0.7, 0.2, 0.2], which add up to 1.1, not 1"),
    ({"data.split": [1.0]}, "data.split (--split): got [1.0]; pass 2 or 3 fractions (train, val[, test])"),
    ({"data.split": [0.0, 1.0]}, "data.split (--split): got [0.0, 1.0]; each fraction must be >= 0 and the train"),
    ({"data.task": "ranking"}, "data.task: got 'ranking'; choose 'classification' or 'regression'."),
    ({"data.max_categories": 0}, "data.max_categories: got 0; pass a whole number >= 1."),
    ({"model.hidden": [8, 0]}, "model.hidden (--hidden): layer sizes must be >= 1, got [8, 0]."),
    ({"model.activation": "relux"}, "model.activation: unknown activation 'relux'; choose one of ['elu', 'gelu'"),
    ({"model.dropout": 1.0}, "model.dropout: dropout must be in [0, 1), got 1.0."),
    ({"train.early_stopping": -1}, "train.early_stopping: got -1; pass a patience >= 0"),
    ({"train.epochs": -1}, "train.epochs: got -1"),
])
def test_validation_names_the_setting(overrides, message):
    with pytest.raises(ConfigError) as e:
        resolve_run_config(overrides)
    assert message in str(e.value)


def test_the_cli_and_the_library_share_their_checks():
    """`[model]` and `MLPSpec` check the same activations; `data.split` and `fl.split` the same fractions."""
    import torch

    import fitloop as fl
    from fitloop.models import ACTIVATIONS

    with pytest.raises(ConfigError) as e:
        resolve_run_config({"model.activation": "nope"})
    assert str(sorted(ACTIVATIONS)) in str(e.value)
    with pytest.raises(ValueError, match=str(sorted(ACTIVATIONS)).replace("[", r"\[")):
        fl.MLPSpec(3, [4], 1, activation="nope")
    for name in ACTIVATIONS:
        assert resolve_run_config({"model.activation": name}).model.activation == name
    with pytest.raises(ValueError, match=r"fractions must sum to 1, got \(0\.7, 0\.2, 0\.2\), which add up to 1\.1"):
        fl.split(torch.zeros(10, 1), fractions=(0.7, 0.2, 0.2))


def test_resolving_a_config_does_not_import_torch():
    """`fitloop --help` and config errors stay fast: the run config is plain Python."""
    code = ("import sys; import fitloop.cli; from fitloop.tabular.config import resolve_run_config, ConfigError\n"
            "cfg = resolve_run_config({'data.path': 'x.csv', 'data.target': 'y', 'model.activation': 'gelu'})\n"
            "cfg.to_toml()\n"
            "try:\n    resolve_run_config({'model.dropout': 2.0})\nexcept ConfigError:\n    pass\n"
            "print([m for m in ('torch', 'pyarrow', 'numpy', 'rich') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------ config.toml


def test_to_toml_roundtrip_and_none_settings(tmp_path):
    cfg = resolve_run_config({"data.path": "d.csv", "data.target": "y", "data.drop": ["a"], "train.batch_size": None,
                              "train.optimizer_kwargs": {"momentum": 0.9, "nesterov": True},
                              "train.penalty": ["l2", 1e-4], "train.clip_grad_norm": math.inf, "train.lr": 3e-3})
    text = cfg.to_toml()
    assert text.startswith("# fitloop run configuration (resolved: defaults < --config file < flags < --set).\n")
    saved = tomllib.loads(text)
    assert set(saved) == set(RunConfig.SECTIONS)
    # None where the default is something else is written as "none"; None by default is left out
    assert saved["train"]["batch_size"] == "none"
    assert "seed" not in saved["data"] and "task" not in saved["data"] and "loss" not in saved["train"]
    assert saved["train"]["optimizer_kwargs"] == {"momentum": 0.9, "nesterov": True}
    assert saved["train"]["penalty"] == ["l2", 1e-4] and saved["train"]["clip_grad_norm"] == math.inf
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    again = resolve_run_config(load_toml(str(path)))
    assert again == cfg and again.train.batch_size is None and again.train.penalty == ("l2", 1e-4)
    assert again.to_toml() == text
