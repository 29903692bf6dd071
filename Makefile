# Fresh machine: Python 3.11 and Java 17. `make demo` and `make test` create .venv/ on first use
# and reuse it afterwards.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean bench

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the bench extra too: the tests check the benchmark's DuckDB and pandas KPIs
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

BENCH_ARGS ?=

# Spark jobs against DuckDB and pandas on 100k/1M/10M items (20-40 minutes; see README "Benchmark").
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/ecom-pipeline demo --out demo-out

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
