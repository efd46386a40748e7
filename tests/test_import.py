"""Import cost: `import fitloop` pulls in none of the heavy optional libraries."""

import subprocess
import sys


def test_import_is_light():
    code = ("import sys, fitloop; heavy = [m for m in ('torchmetrics', 'matplotlib', 'sklearn') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_trainer_does_not_import_pyarrow_dataset():
    """`pyarrow.dataset` imports pandas where pandas is installed (0.3 s): only a streamed source's plan needs it."""
    code = "import sys, fitloop; fitloop.Trainer; fitloop.split; fitloop.load; print('pyarrow.dataset' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
