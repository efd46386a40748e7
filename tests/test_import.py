"""Import cost: `import fitloop` pulls in none of the heavy optional libraries."""

import subprocess
import sys


def test_import_is_light():
    code = ("import sys, fitloop; heavy = [m for m in ('torchmetrics', 'matplotlib', 'sklearn') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
