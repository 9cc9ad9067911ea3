# Two commands: `make run` serves the demo, `make test` runs every test (pytest, then node).
# Each creates .venv and installs the pinned requirements the first time.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench

run: $(VENV)/.runtime
	$(BIN)/gunicorn app:app

test: $(VENV)/.dev
	$(BIN)/python -m pytest
	@if command -v node >/dev/null; then node --test tests/js/; \
	elif [ -n "$$CI" ]; then echo "node is missing: CI must run the JS tests" >&2; exit 1; \
	else echo "node is not installed: skipped the JS stream-parser tests"; fi

lint: $(VENV)/.dev
	$(BIN)/ruff check .

$(VENV)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime
