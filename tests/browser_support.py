"""Rendering a self-contained HTML page in headless Chromium for the report tests: the load errors, every
image's decoded size and the console lines, read back from a probe injected into the page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
NO_CHROMIUM = ("Chromium is not installed (Debian: apt-get install -y chromium); `.ci/run` installs it, so CI "
               "renders the report")
PROBE = """<script>window.__errors=[];
window.addEventListener('error',function(e){window.__errors.push(String(e.message||(e.target&&e.target.id)||'error'))},true);
window.addEventListener('load',function(){var r={errors:window.__errors,images:[].map.call(document.images,
function(i){return [i.id,i.naturalWidth,i.naturalHeight]})};var p=document.createElement('pre');p.id='probe';
p.textContent=JSON.stringify(r);document.body.appendChild(p);});</script>"""


def render(html: str, workdir: Path) -> dict[str, Any]:
    """Load `html` (written with the probe to `workdir/probe.html`) in headless Chromium.

    Returns:
        `errors` (load errors), `images` (`[id, naturalWidth, naturalHeight]` each) and `console` (the
        console lines Chromium logged).
    """
    assert CHROMIUM is not None, NO_CHROMIUM
    page = workdir / "probe.html"
    page.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout)
    assert m, f"the page did not finish loading: {proc.stderr[-2000:]}"
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    result["console"] = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return result
