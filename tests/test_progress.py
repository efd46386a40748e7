"""Live progress (callbacks/progress.py): the rich bar in a terminal, plain lines elsewhere, quiet."""

from __future__ import annotations

import importlib.util
import io
import os
import pty
import re
import sys
import threading
import types

import pytest
import torch

import fitloop as fl
from fitloop.callbacks import progress
from fitloop.cli import main

WINE = os.path.join(os.path.dirname(fl.__file__), "datasets", "wine.csv")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but \t and \n


def _data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    return X, X @ torch.tensor([[1.0], [-2.0], [0.5]])


def _trainer(callbacks=(), **kw):
    torch.manual_seed(0)
    settings = dict(epochs=3, batch_size=16, lr=0.05, seed=0)
    settings.update(kw)
    return fl.Trainer(torch.nn.Linear(3, 1), "mse", "adam", callbacks=list(callbacks), **settings)


def _epochs(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"^Epoch +(\d+)/", text, flags=re.M)]


def test_plain_lines_follow_the_cadence_with_no_control_characters():
    buf = io.StringIO()
    _trainer([fl.ProgressPrinter(stream=buf)], epochs=25, quiet=True).fit(_data(), _data(40, 1))
    text = buf.getvalue()
    assert _epochs(text) == [1, 2, 3, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 25]  # every 25 // 10 = 2nd
    assert not CONTROL.search(text)
    first = text.splitlines()[0]
    assert re.fullmatch(r"Epoch  1/25  loss \S+  r2 \S+  val_loss \S+  val_r2 \S+  lr 0\.05  \(\d+\.\d\ds\)", first)


def test_the_trainers_own_printer_writes_plain_lines_when_stdout_is_a_pipe(capsys):
    _trainer(epochs=2).fit(_data())
    out, err = capsys.readouterr()
    assert _epochs(out) == [1, 2] and not CONTROL.search(out) and err == ""


def test_quiet_prints_nothing(capsys):
    X, y = _data()
    Xv, yv = _data(20, 1)
    t = _trainer([fl.EarlyStopping("val_loss", patience=1)], epochs=30, lr=5.0, quiet=True)
    t.fit((X, y), (Xv, yv + 5))  # (rows of its own: no leakage warning, which quiet leaves to `warnings`)
    assert t.stop_reason is not None  # early stopping, which prints unless quiet
    assert capsys.readouterr() == ("", "")


def test_cli_quiet_prints_nothing(tmp_path, capsys):
    assert main(["train", WINE, "--target", "cultivar", "--epochs", "2", "--quiet", "--out",
                 str(tmp_path / "run")]) == 0
    assert capsys.readouterr() == ("", "")
    assert (tmp_path / "run" / "history.csv").is_file()
    # train.quiet from a config file or --set is the same as the flag
    assert main(["train", WINE, "--target", "cultivar", "--epochs", "1", "--set", "train.quiet=true", "--out",
                 str(tmp_path / "run2")]) == 0
    assert capsys.readouterr() == ("", "")


def test_only_the_main_process_prints(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    buf = io.StringIO()
    _trainer([fl.ProgressPrinter(stream=buf, bar=False)], quiet=True).fit(_data())
    assert buf.getvalue() == ""


def _in_a_pty(monkeypatch, run) -> str:
    """What `run(tty)` writes to a pseudo-terminal (read as it is written), as text."""
    monkeypatch.setenv("TERM", "xterm-256color")
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def drain():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with os.fdopen(slave, "w", encoding="utf-8", closefd=True) as tty:
        run(tty)
    reader.join(timeout=5)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace")


def test_bar_in_a_pseudo_terminal(monkeypatch):
    """Under a pty the bar is drawn (control characters, batches, ETA, loss, samples/s) and every epoch
    ends with its summary line."""
    def run(tty):
        assert progress.progress_mode(tty) == "bar"
        printer = fl.ProgressPrinter(stream=tty, refresh_per_second=1e6)  # redraw at every batch
        _trainer([printer], quiet=True, epochs=3, batch_size=8).fit(_data(400), _data(40, 1))
        assert printer.mode == "bar"

    text = _in_a_pty(monkeypatch, run)
    assert "\x1b[" in text and "samples/s" in text and "eta " in text and re.search(r"loss \d", text)
    assert re.search(r"(?<!\d)50/50(?!\d)", text) and "Epoch 1/3" in text and "validating" in text
    lines = re.findall(r"Epoch (\d)/3  loss [^\r\n]*\(\d+\.\d\ds\)", text)
    assert lines == ["1", "2", "3"]


def test_the_bar_names_the_current_epoch_even_when_epochs_are_shorter_than_its_timer(monkeypatch):
    def run(tty):
        printer = fl.ProgressPrinter(stream=tty, refresh_per_second=1e-6)  # the timer fires once, at the start
        _trainer([printer], quiet=True, epochs=3, batch_size=8).fit(_data(400), _data(40, 1))

    frames = re.findall(r"Epoch (\d)/3 [^\r\n]*?50/50", _in_a_pty(monkeypatch, run))  # redrawn under each line
    assert {"2", "3"} <= set(frames), frames


def test_the_bar_reads_the_loss_only_when_its_timer_fires(monkeypatch):
    """No host sync per step: with a long refresh interval the loss is read once in 3 epochs, and the
    displayed running loss is the epoch's row-weighted loss."""
    refreshes = []
    real = progress.ProgressPrinter._refresh

    def spy(self, trainer, now, status=""):
        refreshes.append(trainer.state.batch)
        real(self, trainer, now, status)

    monkeypatch.setattr(progress.ProgressPrinter, "_refresh", spy)
    monkeypatch.setattr(progress.ProgressPrinter, "_start_bar", lambda self, stream: _fake_bar(self))
    printer = fl.ProgressPrinter(bar=True, refresh_per_second=1e-6)
    _trainer([printer], quiet=True, epochs=3, batch_size=16).fit(_data(100))  # 7 batches, the last of 4 rows
    assert refreshes == [1]

    class Check(fl.ProgressPrinter):
        def on_epoch_end(self, trainer, epoch, logs):
            self._refresh(trainer, 0.0)
            seen.append((self._loss_sum / self._rows, logs["loss"]))

    seen: list[tuple[float, float]] = []
    _trainer([Check(bar=True)], quiet=True, epochs=2, batch_size=16).fit(_data(100))
    assert len(seen) == 2 and all(running == pytest.approx(loss, rel=1e-6) for running, loss in seen)


def _fake_bar(printer):
    class FakeProgress:
        console = types.SimpleNamespace(print=lambda *a, **k: None)

        def update(self, *a, **k): ...

        def refresh(self): ...

        def stop(self): ...

    printer._progress, printer._task = FakeProgress(), 0


def test_mode_detection(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        assert progress.progress_mode(tty) == "lines"  # a dumb terminal understands no control characters
        monkeypatch.setenv("TERM", "xterm")
        assert progress.progress_mode(tty) == "bar"
    os.close(master)
    monkeypatch.setenv("FORCE_COLOR", "1")  # CI logs that force colours still get plain lines
    assert progress.progress_mode(io.StringIO()) == "lines"
    # Jupyter: a bar with ipywidgets, else plain lines
    monkeypatch.setitem(sys.modules, "IPython", types.ModuleType("IPython"))
    monkeypatch.setattr(progress, "_in_jupyter", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "ipywidgets" else real(name))
    assert progress.progress_mode(io.StringIO()) == "lines"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object() if name == "ipywidgets" else None)
    assert progress.progress_mode(io.StringIO()) == "bar"


def test_bad_arguments():
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        fl.ProgressPrinter(every=0)
    with pytest.raises(ValueError, match="refresh_per_second must be > 0"):
        fl.ProgressPrinter(refresh_per_second=0)
