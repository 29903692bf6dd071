# Fresh machine: Python 3.11 and Java 17. Every target creates .venv/ on first use and reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint install system-deps clean bench deploy destroy

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the bench extra too: the tests check the benchmark's DuckDB and pandas KPIs
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

install: $(STAMP)

# What the end-to-end tests need besides Python: Java 17 for Spark, Chromium for the browser
# tests (installed with apt-get when this runs as root on Debian, else named and refused).
system-deps:
	@bash .ci/system-deps

BENCH_ARGS ?=

# Spark jobs against DuckDB and pandas on 100k/1M/10M items (20-40 minutes; see docs/benchmark.md).
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

demo: $(STAMP)
	$(BIN)/ecom-pipeline demo --out demo-out

# The everyday loop: lint, the import contracts and the unit tests (a few minutes).
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m unit

# Everything CI runs: lint, the import contracts, unit, integration (moto) and end-to-end tests.
test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

# The stack on AWS (docs/deploy.md): its variables come from the environment, e.g.
#   VPC_ID=vpc-... SUBNET_A=subnet-... SUBNET_B=subnet-... ARTIFACT_BUCKET=... make deploy
# No venv needed: the scripts use the AWS CLI, Docker and a plain python3 for the Lambda zip.
deploy:
	bash infra/deploy.sh

# Deletes the stack and prints what it keeps (the data bucket, the KPI tables) and how to delete it.
destroy:
	bash infra/destroy.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
