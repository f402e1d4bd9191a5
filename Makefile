# Targets the README uses. Everything runs from the virtual environment in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test test-unit lint typecheck demo dashboards metrics-picture

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
	$(BIN)/mypy deploy/dashboards.py deploy/render_metrics.py

demo: install
	$(BIN)/saga demo

# The Grafana dashboards in deploy/grafana/dashboards are generated from code; a unit test
# fails while the committed JSON differs from what deploy/dashboards.py builds.
dashboards: install
	$(BIN)/python deploy/dashboards.py

# docs/demo-metrics.png from a demo run scraped by a real Prometheus (`apt-get install
# prometheus`). PICTURE_ARGS="--kafka apache" runs it on Apache Kafka (needs Java).
PICTURE_ARGS ?=
metrics-picture: install
	$(BIN)/python deploy/render_metrics.py $(PICTURE_ARGS)
