"""The documentation site (docs/, mkdocs.yml): it builds with --strict, every code example in the guides runs
and prints what the page shows, and the built site works in a headless browser, offline.

The conventions for examples are in tests/docs_support.py. Timings, the temporary directory and the spacing
of tables are the only things normalised before comparing (they differ on every run).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from docs_support import (
    RUNNABLE,
    Block,
    console_commands,
    headless_chromium,
    is_file_title,
    matches,
    mismatch,
    normalise,
    parse_blocks,
    run_fitloop,
    run_python,
    serve_directory,
    write_file,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
# The guides, and the README: its examples follow the same convention (tests/docs_support.py)
GUIDES = sorted(p for p in DOCS.glob("*.md") if p.name != "architecture.md") + [ROOT / "README.md"]
CHROMIUM = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                 if shutil.which(name)), None)
HAS_MKDOCS = all(importlib.util.find_spec(name) for name in ("mkdocs", "material", "mkdocstrings_handlers"))


def all_blocks() -> list[Block]:
    return [block for page in GUIDES for block in parse_blocks(page)]


# --- the examples ---


@pytest.fixture
def restore_environ():
    """An example may set environment variables (MLflowLogger sets MLFLOW_ALLOW_FILE_STORE): put them back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("page", GUIDES, ids=lambda p: p.name)
def test_examples_run_and_print_what_the_page_shows(page, tmp_path, monkeypatch, restore_environ):
    """Every runnable block of the page runs in order in one namespace; shown output equals the real output."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")  # rich's width when stdout is not a terminal: wide enough that no line wraps
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", ["docs-example"])
    namespace: dict = {"__name__": "__docs__"}
    for block in parse_blocks(page):
        if block.skip:
            continue
        if is_file_title(block.title):
            write_file(block, tmp_path)
        elif block.lang == "python":
            printed = run_python(block, namespace)
            if block.output is not None:
                expected, actual = normalise(block.output.code, tmp_path), normalise(printed, tmp_path)
                assert matches(expected, actual), mismatch(block, expected, actual)
        elif block.lang == "console":
            for command in console_commands(block):
                code, printed = run_fitloop(command.argv)
                where = f"{block.where}: fitloop {' '.join(command.argv)}"
                assert code == command.exit_code, f"{where} exited {code}:\n{printed}"
                if command.expected.strip():
                    expected, actual = normalise(command.expected, tmp_path), normalise(printed, tmp_path)
                    assert matches(expected, actual), mismatch(block, expected, actual) + f"({where})"


def skipped_blocks() -> list[Block]:
    return [block for block in all_blocks() if block.skip]


@pytest.mark.parametrize("block", skipped_blocks(), ids=lambda b: b.where)
def test_examples_that_cannot_run_here(block):
    """Each example marked `docs-test: skip` is a runnable kind, says why it cannot run here (a GPU, several
    machines, a server) in words, and is still a well-formed example: valid Python (test_every_example_is_a_
    runnable_kind compiles it), or console lines that each start with a prompt or are comments."""
    assert block.lang in RUNNABLE, f"{block.where}: only python and console blocks are examples to skip"
    assert block.skip is not None and len(block.skip.split()) >= 2, f"{block.where}: say why it cannot run here"
    if block.lang == "console":
        lines = [line for line in block.code.splitlines() if line.strip()]
        assert lines and all(line.startswith(("$ ", "# ")) for line in lines), block.where


def test_every_example_is_a_runnable_kind():
    """A shell example is a ```console block of `$ fitloop` lines (run) or is marked skip with its reason."""
    known = RUNNABLE | {"text", "toml", "csv", "json", ""}
    for block in all_blocks():
        assert block.lang in known, f"{block.where}: ```{block.lang} blocks are neither run nor known"
        if block.lang == "console" and not block.skip:
            console_commands(block)  # raises on a line that is not `$ fitloop ...` or its output
        elif block.lang == "python":
            compile(block.code, block.where, "exec")  # skipped or not, a python example is valid Python
        if block.lang in ("toml", "csv", "json") and not block.skip:
            assert is_file_title(block.title), f'{block.where}: give the file a name: title="run.toml"'


def test_shown_output_follows_a_block_that_prints_it():
    """A ```text title="Output" block must follow a python block directly, or it would never be checked."""
    for page in GUIDES:
        text = page.read_text(encoding="utf-8")
        attached = [block for block in parse_blocks(page) if block.output is not None]
        shown = len(re.findall(r'^\s*```text title="Output"', text, flags=re.M))
        assert len(attached) == shown, f"{page.name}: an Output block does not directly follow a code block"
        for block in attached:
            assert block.lang == "python" and not block.skip, f"{block.where}: only a python example that runs " \
                "has an Output block (a console block shows its output under each `$` line)"


def test_readme_links_point_to_files():
    """The README links to the guides as files (they render on a forge, and the site builds from them)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert targets, "the README links to no guide"
    missing = [t for t in targets if "://" not in t and not (ROOT / t).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"
    assert len(readme.splitlines()) <= 250, "the README stays short: the rest belongs in docs/"


# --- the site ---


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not HAS_MKDOCS:
        pytest.skip(reason="mkdocs-material / mkdocstrings are not installed: pip install -e '.[docs]' (make test "
                           "installs them)")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-4000:]}"
    return out


def test_site_builds_strict_with_every_page(site):
    for name in ["index", "getting-started", "python-api", "cli", "checkpoints", "seeing-training",
                 "scaling-out", "serving-export", "performance", "architecture", "reference/trainer"]:
        assert (site / f"{name}.html").is_file(), name
    trainer = (site / "reference" / "trainer.html").read_text(encoding="utf-8")
    assert "resume" in trainer and "lr_find" in trainer  # the reference is generated from the docstrings


def test_site_needs_nothing_from_the_network(site):
    """No page loads a script, a stylesheet, a font or an image from another host."""
    remote = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=["'](?:https?:)?//""", re.I)
    for page in site.rglob("*.html"):
        found = remote.findall(page.read_text(encoding="utf-8"))
        assert not found, f"{page.relative_to(site)} loads {found[:3]}"
    for css in site.rglob("*.css"):
        assert "fonts.googleapis" not in css.read_text(encoding="utf-8"), css


IMAGES = "JSON.stringify([].map.call(document.images, i => [i.getAttribute('src'), i.complete, i.naturalWidth]))"
SEARCH = """new Promise(done => { let tries = 0; const look = () => {
  const items = document.querySelectorAll('.md-search-result__item');
  if (items.length || ++tries > 100) done(JSON.stringify({count: items.length,
      meta: (document.querySelector('.md-search-result__meta') || {}).textContent,
      first: items.length ? items[0].querySelector('a').getAttribute('href') : null}));
  else setTimeout(look, 100); }; look(); })"""


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install -y chromium); "
                    "`.ci/run` installs it, so CI opens the site")  # in `make test` (issue 21): not marked slow
def test_site_in_headless_chromium(site, tmp_path):
    """Every page loads without console errors, its images decode, and search finds pages offline."""
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob("*.html") if p.name != "404.html")
    with serve_directory(site) as base, headless_chromium(CHROMIUM, tmp_path / "profile") as browser:
        for page in pages:
            browser.navigate(f"{base}/{page}")
            assert browser.errors() == [], f"{page}: {browser.errors()}"
            images = json.loads(browser.evaluate(IMAGES))
            broken = [src for src, complete, width in images if not (complete and width > 0)]
            assert broken == [], f"{page}: images that did not decode: {broken}"
        browser.navigate(f"{base}/index.html?q=resume")
        found = json.loads(browser.evaluate(SEARCH))
        assert found["count"] > 0, f"search for 'resume' found nothing: {found}"
        assert browser.errors() == [], browser.errors()

