# Hedgerow — two commands do everything on a fresh Debian machine:
#   make demo   the whole fleet on this machine with the examples applied
#   make test   lint, type-check, import contracts, CRD drift and the whole test suite
# Everything else here is a step of those two.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= .demo
PYTEST_ARGS ?=
# make test runs the suite on this many pytest-xdist workers, a test module per worker at
# a time, the e2e modules first and together on one worker (tests/conftest.py says why).
# The tests mostly wait on real services, so more workers than the 2 cores pay; README.
TEST_WORKERS ?= 3

.PHONY: help setup system venv gate image apiserver lint crds check-crds test unit bench demo demo-down clean

help:
	@echo "make demo        the fleet on this machine: API server, broker, controller, 3 agents, examples/"
	@echo "make demo-down   stop everything make demo started and remove .demo/"
	@echo "make test        everything CI runs (installs what it needs first)"
	@echo "make unit        only the fast tests (no API server, Docker or broker)"
	@echo "make bench       run every benchmark (python -m bench lists them)"
	@echo "make crds        regenerate crds/ from the models in hedgerow.core"
	@echo "make gate        build the agent's hedgerow-gate (edge-agent/gate/; setpriv without it)"

setup: system venv gate image apiserver

system:
	@scripts/setup-system.sh

venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

# The agent's first program of every step it starts as another user (gate/gate.c),
# compiled for this machine by the same command a device runs after `pip install`.
GATE := edge-agent/gate/hedgerow-gate
gate: $(GATE)
$(GATE): edge-agent/gate/gate.c edge-agent/gatebuild.py | venv
	@$(VENV)/bin/hedgerow agent build-gate --out $@ >/dev/null

image: system venv
	@scripts/build-test-image.sh
	@scripts/build-ipc-test-image.sh hedgerow/ipc-python:latest $(VENV)

apiserver:
	@tests/apiserver/build.sh >/dev/null

lint: venv
	$(VENV)/bin/ruff check core controller edge-agent streams src tests bench
	$(VENV)/bin/mypy -p hedgerow
	$(VENV)/bin/mypy bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hedgerow crds --check

crds: venv
	$(VENV)/bin/hedgerow crds

test: setup lint
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

unit: venv
	$(VENV)/bin/pytest tests/core tests/test_cli.py $(PYTEST_ARGS)

bench: setup
	$(PY) -m bench all

demo: setup
	@scripts/demo.sh up "$(DEMO_DIR)"

demo-down:
	@scripts/demo.sh down "$(DEMO_DIR)"

clean: demo-down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache $(GATE)
