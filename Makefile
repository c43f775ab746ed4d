# Developer entry points. Every target that needs Python depends on the venv stamp,
# so a fresh clone needs nothing but python3 and make.

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
BENCH_ARGS ?=
# The publisher package (forge-realtime-publisher): the service depends on it and finds it here,
# installed editable in the same pip call as the service (it is on no package index).
PUBLISHER := clients/python
PYTEST_ARGS ?=
# Header written at the top of constraints.txt by `make lock`.
LOCK_HEADER := \# Exact versions the service is tested with; pip uses them as constraints (pip install -c constraints.txt ...).\n\# Generated; do not edit by hand. Regenerate from a fresh virtualenv with: make lock

# The browser client (clients/js): its npm packages, installed exactly from package-lock.json.
JS := clients/js
JS_STAMP := $(JS)/node_modules/.package-lock.json
NPM := $(shell command -v npm 2>/dev/null)

.DEFAULT_GOAL := help
.PHONY: help install run migrate lint test test-js client bench bench-smoke lock clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

# Re-installs whenever the declared or pinned dependencies change.
$(STAMP): pyproject.toml constraints.txt $(PUBLISHER)/pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e './$(PUBLISHER)[http]' -e '.[dev,tracing]'
	touch $@

install: $(STAMP) ## Create .venv and install the app with dev extras (pinned)

# The benchmark's extras (python-socketio, matplotlib, py-spy); the test suite runs the bench smoke.
$(BENCH_STAMP): $(STAMP)
	$(PIP) install -q -c constraints.txt -e './$(PUBLISHER)[http]' -e '.[dev,bench,tracing]'
	touch $@

run: $(STAMP) ## Apply migrations, then serve (HOST/PORT from the environment)
	$(PY) -m app migrate && $(PY) -m app serve

migrate: $(STAMP) ## Apply database migrations (alembic upgrade head)
	$(PY) -m app migrate

$(JS_STAMP): $(JS)/package.json $(JS)/package-lock.json
	npm ci --prefix $(JS) --no-audit --no-fund
	touch $@

client: $(JS_STAMP) ## Type-check and build the JS client (clients/js/dist) and the demo page's bundle (app/static/demo/demo.js)
	npm run build --prefix $(JS)

test-js: $(JS_STAMP) ## The JS client's unit tests (node:test), a check that the committed demo bundle is current, and its npm pack installed, imported and type-checked in fresh apps
	npm test --prefix $(JS)
	npm run test:package --prefix $(JS)

# ruff's rules and mypy's strictness are set in pyproject.toml ([tool.ruff], [tool.mypy]); the
# publisher package's in its own (ruff finds it for its files; mypy runs from its directory, strict).
lint: $(STAMP) ## Lint (ruff: app, bench, tests, migrations, examples, clients/python) and type-check app/ and the publisher package (mypy)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy app
	cd $(PUBLISHER) && $(CURDIR)/$(VENV)/bin/mypy

# The JS client's unit tests first (skipped, saying so, where npm is missing; CI=true fails then),
# then the lint and type gates, then pytest, whose browser tests use the client's node_modules.
test: $(STAMP) $(BENCH_STAMP) ## Run the test suite: the JS client's, lint, then pytest (extra pytest options: PYTEST_ARGS=...)
ifneq ($(NPM),)
	$(MAKE) --no-print-directory test-js
else
	@echo "SKIPPED: the JS client's unit tests (npm not found; install Node.js 20)"; test "$$CI" != true
endif
	$(MAKE) --no-print-directory lint
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: $(BENCH_STAMP) ## Run every benchmark (about 90 min with scale+storm at 100,000; BENCH_ARGS=... e.g. --scale-n 20000); writes bench/results/
	$(PY) -m bench $(BENCH_ARGS)

bench-smoke: $(BENCH_STAMP) ## Every scenario x system at tiny N (< 3 min): checks the harness produces numbers
	$(PY) -m bench --smoke $(BENCH_ARGS)

# A throwaway venv, so the pins reflect pyproject.toml alone and not what has
# accumulated in .venv. Leaves .venv alone; the next `make install` re-syncs it.
lock: ## Re-resolve dependencies into constraints.txt from a fresh venv
	set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	python3 -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q --upgrade pip; \
	"$$tmp/venv/bin/pip" install -q -e './$(PUBLISHER)[http]' -e '.[dev,bench,tracing]'; \
	{ printf '$(LOCK_HEADER)\n'; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable \
	    | grep -v -i -E '^(pip|setuptools|wheel|forge-realtime|forge_realtime|forge-realtime-publisher|forge_realtime_publisher)([ =@]|$$)'; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt
	@echo "constraints.txt updated; review with: git diff constraints.txt"

clean: ## Remove the venv, caches and build leftovers (keeps var/, the local data)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
