# Developer entry points. Every target that needs Python depends on the venv stamp,
# so a fresh clone needs nothing but python3 and make.

VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# Header written at the top of constraints.txt by `make lock`.
LOCK_HEADER := \# Exact versions the service is tested with; pip uses them as constraints (pip install -c constraints.txt ...).\n\# Generated; do not edit by hand. Regenerate from a fresh virtualenv with: make lock

.DEFAULT_GOAL := help
.PHONY: help install run migrate test bench bench-smoke lock clean

help: ## List the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'

# Re-installs whenever the declared or pinned dependencies change.
$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev]'
	touch $@

install: $(STAMP) ## Create .venv and install the app with dev extras (pinned)

run: $(STAMP) ## Apply migrations, then serve (HOST/PORT from the environment)
	$(PY) -m app migrate && $(PY) -m app serve

migrate: $(STAMP) ## Apply database migrations (alembic upgrade head)
	$(PY) -m app migrate

test: $(STAMP) ## Run the test suite (extra pytest options: PYTEST_ARGS=...)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

bench: $(STAMP) ## Run the benchmarks
	$(PY) -m bench

bench-smoke: $(STAMP) ## Run a short benchmark pass (checks the harness works)
	$(PY) -m bench --smoke

# A throwaway venv, so the pins reflect pyproject.toml alone and not what has
# accumulated in .venv. Leaves .venv alone; the next `make install` re-syncs it.
lock: ## Re-resolve dependencies into constraints.txt from a fresh venv
	set -eu; tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	python3 -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/pip" install -q --upgrade pip; \
	"$$tmp/venv/bin/pip" install -q -e '.[dev]'; \
	{ printf '$(LOCK_HEADER)\n'; \
	  "$$tmp/venv/bin/pip" freeze --exclude-editable \
	    | grep -v -i -E '^(pip|setuptools|wheel|forge-realtime|forge_realtime)([ =@]|$$)'; \
	} > "$$tmp/constraints.txt"; \
	mv "$$tmp/constraints.txt" constraints.txt
	@echo "constraints.txt updated; review with: git diff constraints.txt"

clean: ## Remove the venv, caches and build leftovers (keeps var/, the local data)
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -not -path './.git/*' -exec rm -rf {} +
