# Two commands do everything on a fresh machine with only Python 3.11+:
#   make up    - create .venv, install DuckMesh (run-time dependencies only), start it (embedded
#                PostgreSQL + local object store); the `duckmesh` command is then .venv/bin/duckmesh
#   make test  - add the dev tools (and Debian's chromium for the console's browser test), run lint,
#                type and import checks and the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev

.PHONY: up test check lint browser bench bench-quick clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(DEV)

up: $(RUNTIME)
	$(BIN)/duckmesh up

# The console's browser test drives Debian's chromium (Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

lint: $(DEV)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint browser
	$(BIN)/pytest -q -p no:cacheprovider

# The benchmark suite (bench/README.md): real processes + PostgreSQL on 127.0.0.1 -> bench/REPORT.md.
bench: $(DEV)
	$(BIN)/python bench/run.py

# Smoke run: tiny sizes, one repetition, every section -> bench/results/REPORT-quick.md.
bench-quick: $(DEV)
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .duckmesh .pytest_cache .mypy_cache .ruff_cache
