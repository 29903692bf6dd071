# Fresh machine: Python 3.11 and Java 17. Every target creates .venv/ on first use and reuses it.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# checkov (the security scan of infra/template.yaml and docker/Dockerfile) pins boto3 1.35, which
# the project's boto3~=1.44 excludes, so it cannot be in the dev extra: it gets a venv of its own
# inside .venv, and tests/unit/test_infra.py runs it from there.
CHECKOV_VERSION := 3.3.30
CHECKOV := $(VENV)/checkov/bin/checkov
CHECKOV_STAMP := $(VENV)/checkov/.installed-$(CHECKOV_VERSION)

# The jobs on the Spark of the EMR Serverless route too (emr-spark-8.0.0 runs Spark 4.0.2): a venv
# of its own with that pyspark, running the job, KPI and validation tests (docs/deploy.md).
SPARK40 := 4.0.2
SPARK40_VENV := $(VENV)/spark40
SPARK40_STAMP := $(SPARK40_VENV)/.installed-$(SPARK40)
SPARK40_TESTS := tests/unit/test_kpis.py tests/unit/test_validation_rules.py \
	tests/unit/test_curated.py tests/integration/test_jobs_cli.py

.PHONY: demo test test-fast test-spark40 lint install system-deps clean bench deploy destroy

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# the bench extra too: the tests check the benchmark's DuckDB and pandas KPIs
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

$(CHECKOV_STAMP):
	test -x $(VENV)/checkov/bin/python || $(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $(CHECKOV_STAMP)

$(SPARK40_STAMP): setup.cfg pyproject.toml
	test -x $(SPARK40_VENV)/bin/python || $(PYTHON) -m venv $(SPARK40_VENV)
	$(SPARK40_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(SPARK40_VENV)/bin/python -m pip install --quiet -e '.[dev,bench]' 'pyspark==$(SPARK40)'
	touch $(SPARK40_STAMP)

install: $(STAMP) $(CHECKOV_STAMP)

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
test-fast: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -m unit

# Everything CI runs: lint, the import contracts, unit, integration (moto) and end-to-end tests.
test: $(STAMP) $(CHECKOV_STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/python -m pytest
	$(MAKE) test-spark40

test-spark40: $(SPARK40_STAMP)
	$(SPARK40_VENV)/bin/python -m pytest $(SPARK40_TESTS)

# The stack on AWS (docs/deploy.md): its variables come from the environment, e.g.
#   VPC_ID=vpc-... SUBNET_A=subnet-... SUBNET_B=subnet-... ARTIFACT_BUCKET=... make deploy
# No venv needed: the scripts use the AWS CLI, Docker and a plain python3 for the Lambda zip.
deploy:
	bash infra/deploy.sh

# Deletes the stack and prints what it keeps (the data bucket, the KPI tables) and how to delete it.
destroy:
	bash infra/destroy.sh

lint: $(STAMP) $(CHECKOV_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation dockerfile \
		-f infra/template.yaml -f docker/Dockerfile

clean:
	rm -rf $(VENV) demo-out .pytest_cache .ruff_cache
