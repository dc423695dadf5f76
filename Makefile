# One command each: `make test`, `make demo`, `make watch` and `make bench` do all the set-up they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint install clean demo watch bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

demo: $(STAMP)
	$(BIN)/agentguard demo

watch: $(STAMP)
	$(BIN)/agentguard watch

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]' || echo "some bench-only tools did not install; their rows will say so"
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) .pytest_cache
