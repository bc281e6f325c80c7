# Two commands a new user needs: `make demo` and `make test`. Both build .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
# Pinned so pip takes the wheels this machine keeps on disk instead of downloading gigabytes.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Tests run in two processes; each keeps one thread so they do not fight over the two cores.
PYTEST_WORKERS ?= 2

.PHONY: coverage demo test lint format bench clean browser

$(VENV)/bin/activate:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

# Re-install when the project's dependencies change. --no-compile: byte-compiling all of
# torch at install time takes about a minute; Python compiles what it imports instead.
$(VENV)/.installed-demo: pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install --no-compile $(TORCH_PINS) -e '.[demo,vision,introspect]'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(VENV)/bin/activate
	$(PY) -m pip install --no-compile $(TORCH_PINS) -e '.[test]'
	# LXT 2.1 (AttnLRP's reference implementation) for tests/test_modern_lxt.py: its rules
	# need only torch; its declared dependencies (transformers, bitsandbytes...) are left out.
	$(PY) -m pip install --no-compile --no-deps lxt==2.1
	touch $@

demo: $(VENV)/.installed-demo
	$(VENV)/bin/innspect demo --out innspect-demo

# The report and demo pages are checked in a real headless browser: Debian's chromium,
# installed once (as root, as on CI's machine); skipped when a browser is already there.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" != 0 ]; then echo "make test needs chromium: run as root or install it (apt-get install chromium)" >&2; exit 1; fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

test: $(VENV)/.installed-test browser lint
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(PYTEST_WORKERS) tests

# ruff (lint and format), then import-linter: each folder of src/innspect imports only the
# folders below it and no modules import each other in a circle (pyproject.toml).
lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports --no-cache --no-logo

format: $(VENV)/.installed-test
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

# Read when make starts, before the environment is set up, so the results report the whole time.
BENCH_STARTED := $(shell date +%s)

bench: $(VENV)/.installed-test
	$(PY) benchmarks/run.py --started-at $(BENCH_STARTED)

# Which torchvision model each method explains (docs/coverage.md); minutes, not in make test.
coverage: $(VENV)/.installed-test
	$(PY) benchmarks/model_coverage.py --out docs/coverage.md
	$(PY) benchmarks/text_coverage.py --out docs/coverage.md

clean:
	rm -rf $(VENV) innspect-demo .pytest_cache
