"""The progress display in a real Jupyter kernel: a notebook run by nbclient, its outputs checked.

Without ipywidgets a notebook gets plain epoch lines; with it, rich's live bar (a widget updated in place)
and the epoch lines as outputs of their own. Either way: no error, and no terminal control codes in any
output (a notebook shows them as stray escapes). `ProgressPrinter(bar=True)` asks for the bar even where
ipywidgets is missing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install 'fitloop[test]')")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install 'fitloop[test]')")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (pip install 'fitloop[test]')")

ROOT = Path(__file__).resolve().parents[1]
KERNEL = "fitloop-test-python"

SETUP = """\
import importlib.util
import torch
import fitloop as fl
torch.manual_seed(0)
X = torch.randn(256, 3)
y = X @ torch.tensor([1.0, -2.0, 0.5])
print("ipywidgets:", importlib.util.find_spec("ipywidgets") is not None)
"""
DEFAULT = """\
trainer = fl.Trainer(torch.nn.Linear(3, 1), loss="mse", optimizer="adam", lr=0.05, epochs=3, batch_size=32)
history = trainer.fit((X[:200], y[:200]), (X[200:], y[200:]))
"""
FORCED_BAR = """\
trainer = fl.Trainer(torch.nn.Linear(3, 1), loss="mse", optimizer="adam", lr=0.05, epochs=3, batch_size=32,
                     quiet=True, callbacks=[fl.ProgressPrinter(bar=True)])
history = trainer.fit((X[:200], y[:200]), (X[200:], y[200:]))
"""


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernel spec for this interpreter, in a temporary Jupyter data directory (nothing written outside
    tmp_path: Jupyter's and IPython's directories are all pointed there)."""
    for name, sub in (("JUPYTER_DATA_DIR", "data"), ("JUPYTER_RUNTIME_DIR", "runtime"),
                      ("JUPYTER_CONFIG_DIR", "config"), ("IPYTHONDIR", "ipython")):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(name, str(tmp_path / sub))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    spec = tmp_path / "data" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fitloop test", "language": "python"}))
    return KERNEL


def _texts(cell) -> list[str]:
    """Every text an output of the cell carries: streams, and the plain and HTML forms of displays."""
    texts = []
    for out in cell.outputs:
        if out["output_type"] == "stream":
            texts.append(out["text"])
        elif out["output_type"] in ("display_data", "execute_result"):
            texts += [v for k, v in out["data"].items() if k.startswith("text/")]
    return texts


@pytest.mark.slow
def test_the_progress_in_a_notebook_has_no_errors_and_no_control_codes(kernel_name, tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in (SETUP, DEFAULT, FORCED_BAR)])
    nbclient.NotebookClient(nb, kernel_name=kernel_name, timeout=180, allow_errors=True,
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    setup, default, forced = nb.cells
    widgets = "ipywidgets: True" in "".join(_texts(setup))
    for cell in (setup, default, forced):
        errors = [o for o in cell.outputs if o["output_type"] == "error"]
        assert not errors, "\n".join(errors[0]["traceback"])
        text = "".join(_texts(cell))
        assert "\x1b" not in text and "\r" not in text, repr(text)  # no control codes, no carriage returns
    for cell in (default, forced):
        text = "".join(_texts(cell))
        for epoch in (1, 2, 3):
            assert f"Epoch {epoch}/3  loss " in text, text  # each epoch's summary line, once shown
        bars = [o for o in cell.outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        # the live bar: rich's widget, updated in place (one output), where ipywidgets is installed
        assert len(bars) == (1 if widgets else 0), cell.outputs
    assert "Verdict:" in "".join(_texts(default))
