# fitloop: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow docs bench lint typecheck clean venv

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first (CPU build pinned; override with `make test TORCH=torch`), then the project.
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

# `fitloop train` on the wine table shipped in the package (`fitloop demo` is the same command).
DEMO_DATA = $$($(PY) -c "import fitloop.cli as c; print(c.demo_data_path())")
demo: $(STAMP)
	$(VENV)/bin/fitloop train "$(DEMO_DATA)" --target cultivar --out runs/demo --overwrite

# The core trainer tests run a second time with every private-torch shortcut off (fitloop/_fastpath.py).
# `make test` is the default suite (under 15 minutes on 2 cores); the tests marked slow (real kills, several
# processes, servers, notebooks, Chromium) run with `make test-slow`, and CI (.ci/run) runs both.
CORE_TESTS = tests/test_trainer.py tests/test_step.py tests/test_state.py tests/test_callbacks.py tests/test_regularisation.py
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(MAKE) docs
	$(PY) -m pytest -m "not slow"
	FITLOOP_FASTPATH=0 $(PY) -m pytest $(CORE_TESTS)

test-slow: $(STAMP)
	$(PY) -m pytest -m slow

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a broken link, anchor or API reference fails.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# A few minutes: the compiled-step study (bench/COMPILED.md), then 3 interleaved rounds of W1-W4 (+ compile
# arm), import time, memory. The slower side studies (threads, fused optimizers, loop details) run with
# `$(PY) -m bench`; their last results are kept. The finished one-off studies (bench/studies/README.md) rerun
# by hand, e.g. `$(PY) -m bench.studies.fastpath`.
bench: $(STAMP)
	$(PY) -m bench.compiled --rounds 3
	$(PY) -m bench.progress --rounds 5
	$(PY) -m bench --rounds 3 --no-studies --compile-arm

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy on the package (settings in pyproject.toml [tool.mypy]).
typecheck: $(STAMP)
	$(VENV)/bin/mypy

clean:
	rm -rf runs site .pytest_cache .ruff_cache .mypy_cache build *.egg-info
