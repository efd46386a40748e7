"""examples/digits_mlp.py runs, reaches test accuracy >= 0.95 and prints the test metrics."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # about 10 s on 2 CPU cores
def test_digits_mlp_example():
    pytest.importorskip("sklearn")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "digits_mlp.py")], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Test metrics:" in proc.stdout and "OK: test accuracy" in proc.stdout
    assert "Stopped: early stopping" in proc.stdout or "Epoch 60/60" in proc.stdout
