# The same commands for people and CI. Only Python 3.11 and make are needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format schemas install clean bench bench-ingest bench-identity bench-scoring bench-automation deploy-sync

# pykustomize renders kustomize for tests/deploy (kustomize's Go library inside a PyPI wheel, no
# binary download). It works on 3.11 but declares Requires-Python >=3.14, so it cannot be a dev
# dependency in pyproject.toml; it is installed here, pinned, without its (already pinned) deps.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,rocksdb]'
	$(BIN)/pip install --quiet --no-deps --ignore-requires-python pykustomize==0.1.4
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## install, then run the whole embedded stack with demo traffic
	$(BIN)/tierflow up

test: lint  ## install, lint, then the whole suite (unit, integration, e2e)
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/tierflow schemas check
	$(BIN)/python deploy/sync.py --check

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP)
	$(BIN)/tierflow schemas export

deploy-sync: $(STAMP)  ## regenerate deploy copies: k8s ConfigMap files, Strimzi KafkaTopics, PrometheusRule
	$(BIN)/python deploy/sync.py

bench: bench-ingest bench-identity bench-scoring bench-automation  ## every benchmark (prints numbers; see docs/benchmarks.md)

bench-ingest: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-identity: $(STAMP)
	$(BIN)/python -m bench.identity

bench-automation: $(STAMP)
	$(BIN)/python -m bench.automation

bench-scoring: $(STAMP)
	$(BIN)/python -m bench.scoring_throughput
	$(BIN)/python -m bench.scoring_crash --events 50000

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
