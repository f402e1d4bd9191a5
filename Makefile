# Targets the README uses. Everything runs from the virtual environment in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-unit lint typecheck demo

install: $(STAMP)

# Re-installs only when the dependency pins change (the stamp is newer otherwise).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install -c constraints.txt -e ".[test,dev]"
	touch $@

test: install
	$(BIN)/pytest tests $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

demo: install
	$(BIN)/saga demo
