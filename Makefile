# Two commands: `make run` serves the demo, `make test` runs every test.
# Each creates .venv and installs the pinned requirements the first time.
# `make bench` runs the full benchmark (notes/README-bench.md), `make bench-smoke` a small one;
# extra options go in BENCH_ARGS, e.g. make bench BENCH_ARGS="--scenarios streams".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEER := bench/peers/express

.PHONY: run test lint bench bench-smoke

run: $(VENV)/.runtime
	$(BIN)/gunicorn app:app

test: $(VENV)/.dev
	$(BIN)/python -m pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .

bench: $(VENV)/.bench $(PEER)/node_modules/.package-lock.json
	$(BIN)/python bench/run.py $(BENCH_ARGS)

bench-smoke: $(VENV)/.bench $(PEER)/node_modules/.package-lock.json
	$(BIN)/python bench/run.py --smoke $(BENCH_ARGS)

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime

$(VENV)/.bench: $(VENV)/.runtime bench/requirements.txt
	$(BIN)/pip install -q -r bench/requirements.txt
	touch $@

# npm ci installs exactly package-lock.json's tree, and only when it changed.
$(PEER)/node_modules/.package-lock.json: $(PEER)/package-lock.json
	cd $(PEER) && npm ci --no-audit --no-fund
