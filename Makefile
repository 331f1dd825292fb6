# turnq — one gate: `make check` (lint, types, tests).  `make help` lists targets.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help setup services demo dev check lint fmt types test test-unit clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install turnq with its dev tools

services:  ## start the machine's Postgres and Redis if they are down; install the test tools
	@VENV=$(VENV) ops/scripts/ensure-services.sh

demo: $(STAMP)  ## run the seed conversation through the real queue (embedded Redis/Postgres unless URLs are set)
	$(VENV)/bin/turnq demo

dev: $(STAMP)  ## run everything locally until Ctrl-C
	$(VENV)/bin/turnq dev

lint: $(STAMP)  ## ruff lint + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)  ## format and auto-fix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

types: $(STAMP)  ## mypy --strict on shared/ producer/ workers/
	$(VENV)/bin/mypy

test: $(STAMP) services  ## the whole test suite (real Postgres and Redis on 127.0.0.1)
	$(PY) -m pytest

test-unit: $(STAMP)  ## tests that need no services
	$(PY) -m pytest tests/unit

check: lint types test  ## everything CI runs

clean:  ## remove the venv and local data
	rm -rf $(VENV) .turnq .turnq-test
