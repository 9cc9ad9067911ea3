# Two commands: `make run` serves the demo, `make test` runs every test (pytest, then node).
# Each creates .venv and installs the pinned requirements the first time.
# `make nginx`, next to `make run`, puts nginx.conf in front (docs/nginx.md: Run it).
# `make bench` runs the full benchmark, `make bench-smoke` a small one; extra options go in
# BENCH_ARGS, e.g. make bench BENCH_ARGS="--scenarios streams".
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PEER := bench/peers/express
# Debian keeps nginx in /usr/sbin, which is not on a normal user's PATH.
NGINX ?= $(or $(shell command -v nginx),/usr/sbin/nginx)

.PHONY: run test lint bench bench-smoke nginx screenshot

run: $(VENV)/.runtime
	$(BIN)/gunicorn app:app

test: $(VENV)/.dev
	$(BIN)/python -m pytest
	@if command -v node >/dev/null; then node --test tests/js/; \
	elif [ -n "$$CI" ]; then echo "node is missing: CI must run the JS tests" >&2; exit 1; \
	else echo "node is not installed: skipped the JS stream-parser tests"; fi

lint: $(VENV)/.dev
	$(BIN)/ruff check .

# docs/page.png, the README's picture, taken by a browser test against real gunicorn.
screenshot: $(VENV)/.dev
	UPDATE_SCREENSHOT=1 $(BIN)/python -m pytest -q tests/test_browser.py -k screenshot

# http://127.0.0.1:8080 and https://127.0.0.1:8443 (HTTP/2); Ctrl-C stops it.
nginx: .nginx/localhost.crt
	$(NGINX) -p "$(CURDIR)" -c nginx.conf -g 'daemon off;'

# A self-signed certificate for trying HTTP/2 locally; the browser will warn once.
.nginx/localhost.crt:
	mkdir -p .nginx
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
	  -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
	  -keyout .nginx/localhost.key -out .nginx/localhost.crt

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
