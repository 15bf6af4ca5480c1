# The two Quickstart commands: `make study` (the main job) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
N_TRIALS ?= 6
WORKLOAD ?= chatbot

.PHONY: setup study test test-unit lint bench-estimate

setup:
	./scripts/bootstrap.sh

study: setup
	$(PY) -m vtune study --workload $(WORKLOAD) --n-trials $(N_TRIALS)

test: setup
	$(PY) -m pytest -q -rs --durations=30 tests

test-unit: setup
	$(PY) -m pytest -q -rs -m "not e2e" tests

lint: setup
	$(VENV)/bin/ruff check vtune tests benchmarks
	$(VENV)/bin/mypy

bench-estimate: setup
	$(PY) benchmarks/bench_estimate.py
