"""The command line's default training budget (`training_budget`), the still-improving note, the time
limit, and the MLP's linear skip path (old bundles without it load and predict the same)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tablefiles import write_rows

import fitloop as fl
from fitloop.callbacks import TimeLimit
from fitloop.tabular.config import (
    CHECKPOINTS_PER_RUN,
    MAX_EPOCHS,
    MIN_EPOCHS,
    MIN_PATIENCE,
    PATIENCE_STEPS,
    parse_set,
    resolve_run_config,
    training_budget,
)
from fitloop.tabular.pipeline import train_table
from fitloop.tabular.training import still_improving

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ the budget


@pytest.mark.parametrize("rows, spe, epochs", [
    (210, 4, 750),           # a small table: 4 steps an epoch, 750 epochs make the 3000 steps
    (1000, 16, 188),         # ceil(3000 / 16)
    (14, 1, MAX_EPOCHS),     # a tiny one: capped
    (1_000_000, 15625, MIN_EPOCHS),  # a large one: at least MIN_EPOCHS
])
def test_default_budget_counts_optimizer_steps(rows, spe, epochs):
    cfg = resolve_run_config({"model.kind": "mlp"})  # the plain MLP's recipe: batch 64 whatever the rows
    b = training_budget(cfg, rows)
    assert (b.steps_per_epoch, b.epochs) == (spe, epochs)
    # patience: about PATIENCE_STEPS optimizer steps without a better val_loss (issue 24: not a quarter of the
    # epochs, which waited 375 epochs on the wine table)
    assert b.patience == max(MIN_PATIENCE, math.ceil(PATIENCE_STEPS / spe))
    assert b.checkpoint_every_epochs == max(1, epochs // CHECKPOINTS_PER_RUN)
    assert b.decided == ["train.epochs", "train.early_stopping", "train.checkpoint_every_epochs"]
    b.apply(cfg)
    assert (cfg.train.epochs, cfg.train.early_stopping) == (epochs, b.patience)
    assert f"{epochs} epochs x {spe} step{'s' if spe > 1 else ''} = " in b.describe()


@pytest.mark.parametrize("rows, world, batch, spe, epochs", [
    (125, 1, 32, 4, 750),         # the wine table: at least 32 rows a batch
    (210, 1, 53, 4, 750),         # a quarter of the rows
    (1000, 1, 250, 4, 750),
    (100_000, 1, 256, 391, 10),   # the recipe's 256
    (1000, 2, 125, 4, 750),       # each of 2 processes takes a batch a step
])
def test_tabm_cuts_its_recipe_batch_on_small_tables(rows, world, batch, spe, epochs):
    cfg = resolve_run_config({})
    b = training_budget(cfg, rows, world)
    assert (b.batch_size, b.steps_per_epoch, b.epochs) == (batch, spe, epochs)
    assert ("train.batch_size" in b.decided) == (batch != 256)
    # the patience: about 100 steps, at least 10 epochs, but that minimum at most about 1,000 steps
    assert b.patience == (3 if rows == 100_000 else 25)  # ceil(1000 / 391); else ceil(100 / 4)
    b.apply(cfg)
    assert cfg.train.batch_size == batch
    given = training_budget(resolve_run_config({"train.batch_size": 256}), rows, world)  # the user's batch stays
    assert given.batch_size == 256 and "train.batch_size" not in given.decided


def test_budget_follows_budget_steps_accumulation_and_batch_size():
    mlp = {"model.kind": "mlp"}
    assert training_budget(resolve_run_config({**mlp, "train.budget_steps": 600}), 210).epochs == 150
    # accumulation: optimizer steps, not batches, are counted
    assert training_budget(resolve_run_config({**mlp, "train.accumulate": 2}), 256).steps_per_epoch == 2
    # a batch size the user gave changes the steps per epoch, and the epochs with them (either kind)
    b = training_budget(resolve_run_config({"train.batch_size": 32}), 210)
    assert (b.steps_per_epoch, b.epochs) == (7, 429)
    full = training_budget(resolve_run_config(parse_set(["train.batch_size=none"])), 210)
    assert (full.batch_size, full.steps_per_epoch, full.epochs) == (None, 1, MAX_EPOCHS)


def test_the_budget_counts_the_steps_of_every_process():
    """Under --nproc N each step takes batch_size rows on each of N processes: N times fewer steps an epoch,
    and the epochs scale up so the run still makes about budget_steps optimizer steps."""
    one, two = (training_budget(resolve_run_config({"model.kind": "mlp"}), 1400, world) for world in (1, 2))
    assert (one.steps_per_epoch, one.epochs) == (22, 137) and (two.steps_per_epoch, two.epochs) == (11, 273)
    assert "batch 64 x 2 processes, 1400 training rows" in two.describe()


def test_settings_the_user_gave_always_win(tmp_path):
    flags = {"train.epochs": 50, "train.early_stopping": 5, "train.batch_size": 64}
    b = training_budget(resolve_run_config(flags), 210)
    assert (b.epochs, b.patience, b.decided) == (50, 5, ["train.checkpoint_every_epochs"])
    assert "(as set)" in b.describe()
    off = training_budget(resolve_run_config({"train.early_stopping": 0}), 210)
    assert off.patience is None and off.epochs == 750 and "no early stopping" in off.describe()
    # from a TOML file or --set just as from a flag; a saved config.toml therefore reruns the same budget
    toml = tmp_path / "run.toml"
    toml.write_text("[train]\nepochs = 40\ncheckpoint_every_epochs = 3\nbatch_size = 64\n")
    from fitloop.tabular.config import load_toml

    b = training_budget(resolve_run_config(load_toml(str(toml)), parse_set(["train.early_stopping=7"])), 210)
    assert (b.epochs, b.patience, b.checkpoint_every_epochs, b.decided) == (40, 7, 3, [])


# ------------------------------------------------------------------------------------- still improving


def _hist(val_losses):
    return [{"epoch": i + 1, "loss": v, "val_loss": v} for i, v in enumerate(val_losses)]


def test_still_improving_note_only_when_the_best_epoch_is_the_last():
    note = still_improving(_hist([3.0, 2.0, 1.0]), None)
    assert note is not None and "still improving" in note and "--epochs 6" in note
    assert still_improving(_hist([3.0, 1.0, 2.0]), "early stopping at epoch 3: ...") is None
    assert still_improving([{"epoch": 1, "loss": 1.0}], None) is None  # no val rows: nothing to judge by
    timed = still_improving(_hist([3.0, 2.0]), "time limit at epoch 2: training took 9.0s >= max_time 5s")
    assert timed is not None and "--max-time" in timed
    # the weights kept decide: early stopping kept epoch 2 (a near-tie) or the initial model (epoch 0)
    assert still_improving(_hist([3.0, 2.0, 1.99]), None, kept=2) is None
    assert still_improving(_hist([3.0, 2.0, 1.99]), None, kept=0) is None
    assert still_improving(_hist([3.0, 2.0, 1.0]), None, kept=3) is not None


def test_run_json_and_summary_say_the_model_was_still_improving(tmp_path, capsys):
    # 5 epochs of a learnable linear table: the val loss falls every epoch (from a random start: the
    # default linear start would already be the exact fit)
    rows = [[f"{a:.3f}", f"{b:.3f}", f"{2 * a - b:.3f}"] for a, b in
            ((math.sin(i), math.cos(3 * i)) for i in range(120))]
    path = write_rows(tmp_path / "lin.csv", ["a", "b", "y"], rows)
    cfg = resolve_run_config({"data.path": str(path), "data.target": "y", "train.epochs": 5, "train.quiet": True,
                              "model.linear_init": False, "model.kind": "mlp"})  # the MLP's loss falls smoothly
    r = train_table(cfg, out=tmp_path / "run")
    run = json.loads((r.run_dir / "run.json").read_text())
    assert run["still_improving"] is True and run["epochs"] == 5
    assert r.still_improving is not None and "--epochs 10" in r.still_improving
    assert run["budget"]["epochs"] == 5 and "train.epochs" not in run["budget"]["decided"]
    from fitloop.cli.commands import make_console, print_summary

    print_summary(make_console(), r)
    assert "the model was still improving" in capsys.readouterr().out.replace("\n", " ")


# ------------------------------------------------------------------------------------------ time limit


def test_time_limit_stops_after_the_epoch_that_reached_it(monkeypatch):
    clock = iter(range(0, 10_000))  # one "second" per reading
    monkeypatch.setattr("fitloop.callbacks.time_limit._clock", lambda: float(next(clock)))
    X, y = torch.randn(32, 2), torch.randn(32)
    limit = TimeLimit(3)
    trainer = fl.Trainer(torch.nn.Linear(2, 1), epochs=100, quiet=True, callbacks=[limit])
    trainer.fit((X, y))
    assert trainer.epoch == 3 and trainer.stop_reason.startswith("time limit at epoch 3")
    assert limit.state_dict()["elapsed"] == 3.0
    with pytest.raises(ValueError, match="seconds must be > 0"):
        TimeLimit(0)


# ---------------------------------------------------------------------------------------- skip path


def test_skip_mlp_adds_a_linear_path():
    torch.manual_seed(0)
    m = fl.build_mlp(fl.MLPSpec(5, hidden=[8], out_features=2, skip=True))
    assert isinstance(m, fl.models.SkipMLP) and m.skip.bias is None
    assert sorted(m.state_dict()) == ["mlp.0.bias", "mlp.0.weight", "mlp.2.bias", "mlp.2.weight", "skip.weight"]
    x = torch.randn(4, 5)
    assert torch.equal(m(x), m.mlp(x) + x @ m.skip.weight.T)
    # no hidden layers: already linear, a plain Sequential
    assert isinstance(fl.build_mlp(fl.MLPSpec(5, hidden=[], skip=True)), torch.nn.Sequential)


def test_a_bundle_saved_without_the_skip_field_loads_and_predicts_identically(tmp_path):
    torch.manual_seed(0)
    model = fl.build_mlp(fl.MLPSpec(3, hidden=[4], out_features=1))
    fl.bundle.save_bundle(model, tmp_path / "old")
    meta_path = tmp_path / "old" / "fitloop.json"
    meta = json.loads(meta_path.read_text())
    del meta["spec"]["skip"]  # what fitloop wrote before the field existed
    meta_path.write_text(json.dumps(meta))
    loaded = fl.bundle.load(tmp_path / "old")
    assert isinstance(loaded, torch.nn.Sequential) and loaded.spec.skip is False
    x = torch.randn(6, 3)
    assert torch.equal(loaded(x), model.eval()(x))
    # and a skip model round-trips
    skip = fl.build_mlp(fl.MLPSpec(3, hidden=[4], out_features=1, skip=True))
    fl.bundle.save_bundle(skip, tmp_path / "new")
    again = fl.bundle.load(tmp_path / "new")
    assert isinstance(again, fl.models.SkipMLP) and torch.equal(again(x), skip.eval()(x))


# ------------------------------------------------------------------------------------------- start-up


@pytest.mark.slow
def test_train_and_predict_never_import_torch_dynamo(tmp_path):
    """torch._dynamo costs 1.2 s of start-up: a default run trains, checkpoints and predicts without it."""
    rows = [[str(i % 7), str((i * 3) % 5), str(i % 2)] for i in range(40)]
    data = write_rows(tmp_path / "t.csv", ["a", "b", "y"], rows)
    code = ("import sys; from fitloop.cli.app import main; "
            f"rc = main(['train', {str(data)!r}, '--target', 'y', '--epochs', '3', '--out', {str(tmp_path / 'r')!r}, "
            "'-q']); "
            f"rc += main(['predict', {str(tmp_path / 'r')!r}, {str(data)!r}, '-o', {str(tmp_path / 'p.csv')!r}]); "
            "print(rc, 'torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert out.stdout.split()[-2:] == ["0", "False"], out.stdout + out.stderr


def test_early_stopping_rel_delta_keeps_the_earlier_epoch_on_near_ties():
    class Fake:
        should_stop, stop_reason = False, None

        class model:  # noqa: N801 - a stand-in with what EarlyStopping reads
            @staticmethod
            def state_dict():
                return {}

    stopper = fl.EarlyStopping(patience=10, rel_delta=0.05)
    for epoch, v in enumerate([1.0, 0.97, 0.96, 0.94], start=1):  # 0.97, 0.96: within 5% of 1.0
        stopper.on_epoch_end(Fake(), epoch, {"val_loss": v})
    assert (stopper.best_epoch, stopper.best) == (4, 0.94)  # 0.94 is 6% better: it counts
    plain = fl.EarlyStopping(patience=10)
    plain.on_epoch_end(Fake(), 1, {"val_loss": 1.0})
    plain.on_epoch_end(Fake(), 2, {"val_loss": 0.99})
    assert plain.best_epoch == 2
    with pytest.raises(ValueError, match="rel_delta must be in"):
        fl.EarlyStopping(rel_delta=1.0)


def test_resume_of_a_run_written_before_the_new_settings_keeps_the_old_model(tmp_path):
    """A config.toml without `model.skip` & co. (fitloop before issue 15) resumes as it was: a plain MLP."""
    from fitloop.tabular.pipeline import resume_run

    rows = [[f"{math.sin(i):.3f}", f"{math.cos(i):.3f}", f"{math.sin(2 * i):.3f}"] for i in range(60)]
    data = write_rows(tmp_path / "t.csv", ["a", "b", "y"], rows)
    cfg = resolve_run_config({"data.path": str(data), "data.target": "y", "train.epochs": 2,
                              "train.early_stopping": 0, "train.quiet": True, "model.kind": "mlp"})
    new_keys = ("kind", "k", "embedding", "d_embedding", "n_bins", "skip", "linear_init", "early_stopping_rel_delta",
                "max_time", "budget_steps")
    old_toml = "".join(line for line in cfg.to_toml().splitlines(keepends=True)
                       if line.split("=")[0].strip() not in new_keys)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.toml").write_text(old_toml)  # killed before anything else was written
    r = resume_run(run)
    meta = json.loads((run / "model" / "fitloop.json").read_text())
    assert meta["spec"]["skip"] is False and r.epochs_run == 2
    assert r.parameters == (2 * 64 + 64) + (64 * 32 + 32) + (32 + 1)  # no linear path
