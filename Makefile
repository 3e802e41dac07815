# Every target sets itself up: a virtual environment in .venv, the dependencies, the generated stubs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/relay/v1/*.proto)
GEN_STAMP := relay/v1/.generated

.PHONY: run test lint gen buf-lint ops-lint system-tools bench load chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The one command that generates the Python stubs from protos/ (they are not committed).
gen: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=. --grpc_python_out=. --pyi_out=. $(PROTOS)
	touch $(GEN_STAMP)

node_modules/.bin/buf:
	npm install --no-audit --no-fund --silent @bufbuild/buf@1.75.0

buf-lint: node_modules/.bin/buf
	node_modules/.bin/buf lint

# Alert rules: checked and unit-tested by promtool (Debian's prometheus package, installed when missing).
ops-lint:
	bash ops/ensure-prometheus.sh
	promtool check rules ops/prometheus/alerts.yml
	promtool test rules ops/prometheus/alerts_test.yml ops/prometheus/alerts_stalled_test.yml

lint: gen buf-lint ops-lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Runs Relay: JobService and MigrationController on $${RELAY_LISTEN:-127.0.0.1:50051}.
run: gen
	$(VENV)/bin/relay serve

# System packages the tests use: redis-server for the private test Redis, chromium for the console's
# browser tests (Debian's packages; Playwright drives the system chromium, it downloads no browser).
system-tools:
	@command -v redis-server >/dev/null || { echo "installing redis-server"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }
	@command -v chromium >/dev/null || { echo "installing chromium"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Runs the whole test suite (lint, buf lint, unit, integration against a private Redis).
test: lint system-tools
	$(VENV)/bin/pytest $(PYTEST_ARGS)

bench: gen
	$(PY) -m bench.run_all

load: gen
	$(PY) -m bench.load --duration 300

chaos: gen
	$(PY) -m bench.chaos --duration 300

clean:
	rm -rf $(VENV) node_modules relay/v1/*_pb2*.py relay/v1/*_pb2*.pyi $(GEN_STAMP)
