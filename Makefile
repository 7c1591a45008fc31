# sparkplane: `make run` starts the local control plane, `make test` runs every test.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: node run spark-cds test test-fast lint format requirements autoscaling-plots setup java chromium console-screenshots cosmos-emulator azurite airflow-venv bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is needed ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,spark,local]"
	touch $(STAMP)

# Everything the tests and `make run` need. The two venvs, the two npm packages and the Spark
# class-data-sharing archives (once the venv and Java are there) are made at once (make -j, each
# target's output kept together); the apt-get installs (java, chromium, node) run one after
# another, as dpkg takes one at a time.
SETUP := $(STAMP) java chromium cosmos-emulator azurite airflow-venv spark-cds
setup:
	@$(MAKE) --no-print-directory -j 6 --output-sync=target $(SETUP)

# Spark needs Java 17+; install it where it is missing (Debian/Ubuntu).
java:
	@if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then \
		echo "installing Java 17 (openjdk-17-jre-headless)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null; \
	fi

# The console's browser tests (tests/browser/) drive the system's Chromium with Playwright for
# Python (Playwright's own browser download is not used): installed where it is missing
# (Debian/Ubuntu, as root); without it the tests skip, except in CI (CI=true), where the target
# fails instead.
chromium: | java
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			echo "installing Chromium (chromium)"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		fi; \
	fi
	@if command -v chromium >/dev/null || command -v chromium-browser >/dev/null; then :; \
	elif [ -n "$$CI" ] && [ "$$CI" != "false" ]; then \
		echo "chromium not found: the console's browser tests need it"; \
		exit 1; \
	else \
		echo "chromium not found: the console's browser tests will skip (install chromium)"; \
	fi

# The console's screenshots in docs/console/ (docs/console.md shows them), taken by its tests.
console-screenshots: $(STAMP) chromium
	SPARKPLANE_CONSOLE_SCREENSHOTS=1 $(VENV)/bin/pytest -q tests/browser

# Node.js and npm, installed where they are missing (Debian/Ubuntu, as root), after the other
# apt-get installs.
node: | chromium
	@if ! command -v npm >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		echo "installing Node.js and npm"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null; \
	fi

# `npm ci` of the Node.js package in directory $(1) (for $(2)); without npm (see `node`) the
# tests that need the package skip, except in CI (CI=true), where the target fails instead.
define npm_ci
	@if command -v npm >/dev/null; then \
		echo "npm ci --prefix $(1)"; \
		npm ci --prefix $(1) --no-audit --no-fund --loglevel=error && touch $@; \
	elif [ -n "$$CI" ] && [ "$$CI" != "false" ]; then \
		echo "npm not found: Node.js 20+ and npm are needed for $(2)"; \
		exit 1; \
	else \
		echo "npm not found: $(2) will skip (install Node.js 20+)"; \
	fi
endef

# The Cosmos DB stand-in (@vercel/cosmosdb-server) the store contract suite runs against
# (tests/contract/conftest.py starts it).
COSMOS_SERVER := tools/cosmosdb-server
COSMOS_STAMP := $(COSMOS_SERVER)/node_modules/.package-lock.json

cosmos-emulator: $(COSMOS_STAMP)

$(COSMOS_STAMP): $(COSMOS_SERVER)/package.json $(COSMOS_SERVER)/package-lock.json | node
	$(call npm_ci,$(COSMOS_SERVER),the Cosmos DB contract tests)

# Azurite (npm azurite), the Blob Storage emulator the file-store contract suite runs against
# (tests/contract/conftest.py starts azurite-blob).
AZURITE := tools/azurite
AZURITE_STAMP := $(AZURITE)/node_modules/.package-lock.json

azurite: $(AZURITE_STAMP)

$(AZURITE_STAMP): $(AZURITE)/package.json $(AZURITE)/package-lock.json | node
	$(call npm_ci,$(AZURITE),the Blob Storage (Azurite) contract tests)

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
	$(PY) -m sparkplane_cli up

# Class-data-sharing archives for the JVMs of local Spark nodes (master, worker, Spark Connect
# server, executor), under .sparkplane/cds/ with one directory per Spark and Java version (a new
# version builds its own; an existing one is kept). Nodes start without them, about twice as
# slowly (docs/local-spark.md).
spark-cds: $(STAMP) | java
	$(PY) -c 'from shared.adapters.local_spark.cds import main; main()'

# Workers of the test run (pytest-xdist): a module's tests stay on one worker, real-Spark
# tests keep to two of them (tests/conftest.py, SPARK_LANES), the others take the rest.
# Bytecode caches are written even where the environment turns them off (PYTHONDONTWRITEBYTECODE):
# the run starts hundreds of Python processes on the same sources (workers, devhosts, CLIs), and
# without the caches each compiles them again (docs/testing.md).
TEST_WORKERS ?= 5
PYTEST := PYTHONDONTWRITEBYTECODE= $(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadgroup

# setup builds the archives (spark-cds) too: the Spark tests' JVMs then start about twice as
# fast, which saves far more than the archives cost to build (measured in docs/testing.md).
# The linters need only the venv: they run alongside the rest of setup (mypy without its cache
# takes about 14 s of CPU), and the tests start once both are done.
test:
	@$(MAKE) --no-print-directory -j 6 --output-sync=target $(SETUP) lint
	$(PYTEST)

# Everything but the tests that start real Spark processes: the developer's loop.
test-fast: setup
	$(PYTEST) -m "not spark"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# requirements.txt (the Function App's pinned dependencies) from pyproject.toml and this venv.
requirements: $(STAMP)
	$(PY) tools/requirements.py

# The simulator's plots shown in docs/autoscaling.md.
PLOT_TRACES := bursty-s0 office-hours-s0
autoscaling-plots: $(STAMP)
	for t in $(PLOT_TRACES); do \
		$(PY) -m bench.autoscale --quick --summary-only --plot docs/autoscaling/$$t.png --plot-trace $$t || exit 1; \
	done

bench: setup
	$(PY) -m bench.control_plane --clusters 1000 --json bench/out/control_plane.json

clean:
	rm -rf .sparkplane bench/out .pytest_cache .ruff_cache
