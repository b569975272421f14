# voxgate — `make run` starts the server, `make test` runs the test suite.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# exact versions of the dependencies verified with the test suite (redis, psycopg, aiohttp)
CONSTRAINTS := constraints.txt
PYTEST_ARGS ?=

.PHONY: run test lint bench install install-test debian-test-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml $(CONSTRAINTS) | $(PY)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(CONSTRAINTS) $(VENV)/.installed
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

## run: start voxgate on its embedded defaults (SQLite in ./data, local voice provider, 127.0.0.1:8080)
run: $(VENV)/.installed
	$(VENV)/bin/voxgate serve

## debian-test-deps: Debian packages the tests drive (Chromium, coturn), installed when missing
debian-test-deps:
	@bash scripts/debian-deps.sh chromium:chromium turnserver:coturn node:nodejs npm:npm

## test: install test dependencies, start Redis if it is down, run the whole suite
test: $(VENV)/.installed-test debian-test-deps
	@bash scripts/test-services.sh
	@bash scripts/js-bundle.sh
	$(PY) -m pytest $(PYTEST_ARGS)

## lint: ruff (style, imports, likely bugs) and mypy (types) over the code; CI runs it before the tests
lint: $(VENV)/.installed-test
	$(PY) -m ruff check voxgate tests bench
	$(PY) -m mypy voxgate

## bench: the benchmark suite (by hand, not in CI); writes docs/benchmarks.md
bench: $(VENV)/.installed-test
	@bash scripts/debian-deps.sh nginx:nginx
	$(PY) -m bench.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
