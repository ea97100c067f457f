# Spotzee — `make help` lists the targets.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ARGS   ?=

.DEFAULT_GOAL := help
.PHONY: help up test lint format typecheck bench bench-segments bench-journeys bench-processor clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-15s\033[0m %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@ $(VENV)/.installed

up: $(VENV)/.installed ## Create .venv, install, and run the embedded stack (ARGS="--data-dir DIR --port PORT")
	$(BIN)/spotzee up $(ARGS)

test: $(VENV)/.installed-dev ## Create .venv, install dev extras, run the whole test suite
	$(BIN)/pytest $(ARGS)

lint: $(VENV)/.installed-dev ## ruff lint and format check
	$(BIN)/ruff check spotzee tests bench
	$(BIN)/ruff format --check spotzee tests bench

format: $(VENV)/.installed-dev ## Apply ruff formatting and fixes
	$(BIN)/ruff check --fix spotzee tests bench
	$(BIN)/ruff format spotzee tests bench

typecheck: $(VENV)/.installed-dev ## mypy --strict on the package
	$(BIN)/mypy --strict spotzee

bench: $(VENV)/.installed-dev ## Ingestion benchmark: events/s accepted and landed, latency, RSS
	$(BIN)/python bench/ingest.py $(ARGS)

bench-segments: $(VENV)/.installed-dev ## Segments benchmark: backfill time, events/s with 20 segments, membership latency
	$(BIN)/python bench/segments.py $(ARGS)

bench-journeys: $(VENV)/.installed-dev ## Journeys benchmark: event -> email latency, transitions/s; then sends/s per channel (SENDS_ARGS)
	$(BIN)/python bench/journeys.py $(ARGS)
	$(BIN)/python bench/sends.py $(SENDS_ARGS)

bench-processor: $(VENV)/.installed-dev ## Processor cost model: CPU µs per event by stage, in-process (ARGS="--events N --json")
	$(BIN)/python bench/processor.py $(ARGS)

bench-sink: $(VENV)/.installed-dev ## Analytics sink: rows/s from encoded records into chDB, decode vs insert (ARGS="--records N --json")
	$(BIN)/python bench/sink.py $(ARGS)

clean: ## Remove .venv and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
