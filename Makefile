# Every target sets itself up: a virtual environment in .venv, the dependencies, the generated stubs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTOS := $(wildcard protos/relay/v1/*.proto)
GEN_STAMP := relay/v1/.generated

.PHONY: run test lint gen buf-lint buf-breaking ops-lint system-tools bench load chaos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The Python stubs from protos/ (never committed). Every install makes them (setup.py's build hook:
# `pip install .`, `pip install -e .`, `pip wheel .`); this target regenerates them in the source tree
# after a .proto changes, with the same code and the same pinned grpcio-tools.
gen: $(GEN_STAMP)

$(GEN_STAMP): $(PROTOS) $(STAMP) setup.py
	$(PY) setup.py -q gen_stubs
	touch $(GEN_STAMP)

node_modules/.bin/buf:
	npm install --no-audit --no-fund --silent @bufbuild/buf@1.75.0

buf-lint: node_modules/.bin/buf
	node_modules/.bin/buf lint

# The contract against the previous commit (BUF_AGAINST_REF=<ref> for another); skipped, saying so,
# where there is no previous commit (a shallow clone).
buf-breaking: node_modules/.bin/buf
	bash .ci/buf-breaking.sh

# Alert rules: checked and unit-tested by promtool (Debian's prometheus package, installed when missing).
ops-lint:
	bash ops/ensure-prometheus.sh
	promtool check rules ops/prometheus/alerts.yml
	promtool test rules ops/prometheus/alerts_test.yml ops/prometheus/alerts_stalled_test.yml

lint: gen buf-lint buf-breaking ops-lint
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

# TOPOLOGY=cluster puts the new layout on a private Redis Cluster (the legacy layout stays on one Redis).
TOPOLOGY ?= single

load: gen
	$(PY) -m bench.load --duration 300 --topology $(TOPOLOGY)

chaos: gen
	$(PY) -m bench.chaos --duration 300 --topology $(TOPOLOGY)

clean:
	rm -rf $(VENV) node_modules relay/v1/*_pb2*.py relay/v1/*_pb2*.pyi $(GEN_STAMP)
