# sparkplane: `make run` starts the local control plane, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint format setup java cosmos-emulator airflow-venv bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet ".[dev,spark]"
	touch $(STAMP)

setup: $(STAMP) java cosmos-emulator airflow-venv

# Spark needs Java 17+; install it where it is missing (Debian/Ubuntu).
java:
	@if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then \
		echo "installing Java 17 (openjdk-17-jre-headless)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	fi

# The Cosmos DB stand-in (@vercel/cosmosdb-server) the store contract suite runs against
# (tests/contract/conftest.py starts it). Needs Node.js 20+ and npm; without them the cosmos
# contract tests skip, except in CI (CI=true), where this target fails instead.
COSMOS_SERVER := tools/cosmosdb-server
COSMOS_STAMP := $(COSMOS_SERVER)/node_modules/.package-lock.json

cosmos-emulator: $(COSMOS_STAMP)

$(COSMOS_STAMP): $(COSMOS_SERVER)/package.json $(COSMOS_SERVER)/package-lock.json
	@if ! command -v npm >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Node.js and npm"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	fi
	@if command -v npm >/dev/null; then \
		echo "npm ci --prefix $(COSMOS_SERVER)"; \
		npm ci --prefix $(COSMOS_SERVER) --no-audit --no-fund --loglevel=error && touch $@; \
	elif [ -n "$$CI" ] && [ "$$CI" != "false" ]; then \
		echo "npm not found: Node.js 20+ and npm are needed for the Cosmos DB contract tests"; \
		exit 1; \
	else \
		echo "npm not found: the Cosmos DB contract tests will skip (install Node.js 20+)"; \
	fi

# Apache Airflow with its Databricks provider, in a venv of its own: it pins far more than the
# project's .venv can hold. tests/integration/test_airflow.py drives the control plane with it
# (a subprocess), and skips without it, except in CI (CI=true), where it fails instead.
AIRFLOW_VENV := .venv-airflow
AIRFLOW_REQS := tools/airflow/requirements.txt
AIRFLOW_CONSTRAINTS := tools/airflow/constraints.txt
AIRFLOW_STAMP := $(AIRFLOW_VENV)/.installed

airflow-venv: $(AIRFLOW_STAMP)

$(AIRFLOW_STAMP): $(AIRFLOW_REQS) $(AIRFLOW_CONSTRAINTS)
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet -r $(AIRFLOW_REQS) -c $(AIRFLOW_CONSTRAINTS)
	touch $@

run: setup
	$(PY) -m devhost

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	$(PY) -m bench.control_plane --clusters 1000 --json bench/out/control_plane.json

clean:
	rm -rf .sparkplane bench/out .pytest_cache .ruff_cache
