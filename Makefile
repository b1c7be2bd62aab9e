# The same commands for people and CI. Only Python 3.11 and make are needed.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format schemas install clean bench bench-ingest bench-identity

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
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

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

schemas: $(STAMP)
	$(BIN)/tierflow schemas export

bench: bench-ingest bench-identity  ## every benchmark (prints numbers; see docs/benchmarks.md)

bench-ingest: $(STAMP)
	$(BIN)/python -m bench.ingest

bench-identity: $(STAMP)
	$(BIN)/python -m bench.identity

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
