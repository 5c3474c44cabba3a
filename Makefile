PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/raymlops run pipelines/digits.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -v --timeout=1500 tests

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check raymlops tests benchmarks jobs
	$(BIN)/ruff format --check raymlops tests benchmarks jobs
	$(BIN)/mypy raymlops

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) raymlops-store .pytest_cache .mypy_cache .ruff_cache
