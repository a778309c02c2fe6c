# Two commands do everything on a fresh machine with only Python 3.11+:
#   make up    - create .venv, install, start DuckMesh (embedded PostgreSQL + local object store)
#   make test  - create .venv, install, run lint, type and import checks and the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test check lint bench bench-quick clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

up: $(STAMP)
	$(BIN)/duckmesh up

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest -q -p no:cacheprovider

# The benchmark suite (bench/README.md): real processes + PostgreSQL on 127.0.0.1 -> bench/REPORT.md.
bench: $(STAMP)
	$(BIN)/python bench/run.py

# Smoke run: tiny sizes, one repetition, every section -> bench/results/REPORT-quick.md.
bench-quick: $(STAMP)
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) .duckmesh .pytest_cache .mypy_cache .ruff_cache
