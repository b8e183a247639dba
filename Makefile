# One virtualenv, built on first use; every target installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-trial lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[test,speedups,cluster,examples]'
	touch $(STAMP)

# The log's "demo page:" line says where to point a browser.
run: $(STAMP)
	@echo "demo: open http://localhost:$${PORT:-8080}/ in two tabs (the log below says the exact URL)"
	$(BIN)/twistd -n --pidfile= signaling $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-trial: $(STAMP)
	$(BIN)/python -m twisted.trial tests

# Lint rules and formatting in pyproject.toml ([tool.ruff]); "ruff format ."
# fixes what the second command finds.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The benchmark against the naive relay (docs/performance.rst); needs Node
# and npm. BENCH_ARGS=--full for the long run, e.g. --scenarios relay --repeat 3.
BENCH_ARGS ?=

bench/node_modules/.installed: bench/package.json
	cd bench && npm install --no-audit --no-fund --silent
	touch $@

bench: $(STAMP) bench/node_modules/.installed
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) _trial_temp .pytest_cache *.egg-info twisted/plugins/dropin.cache
