"""One SparkSession for the whole run; AWS calls never leave this machine.

The folder a test lives in is its marker: tests/unit, tests/integration (moto), tests/e2e.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before any boto3 client or Spark JVM exists, so executors inherit them too.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("SPARK_MASTER", "local[2]")
# The tests' frames hold a few rows, and GX runs dozens of distinct small queries a dataset:
# compiling each to Java (whole-stage code generation) costs more than it saves there (about a
# sixth of a corpus run's time). Results are the same either way; the jobs keep it on in use.
os.environ.setdefault(
    "PYSPARK_SUBMIT_ARGS", "--conf spark.sql.codegen.wholeStage=false pyspark-shell"
)


def pytest_report_header() -> str:
    """Which Spark the run is on: `make test` runs the job tests on two (see the Makefile)."""
    from importlib.metadata import version

    return f"pyspark {version('pyspark')}"


@pytest.fixture(scope="session")
def spark():
    from ecom_pipeline.adapters.spark import get_spark

    session = get_spark("ecom-pipeline-tests", shuffle_partitions=2)
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _json_logs_to_this_tests_stderr():
    """A test that ran a command left the log handler on its own captured stderr, which pytest
    closes after it: point the handler at this test's stderr."""
    from ecom_pipeline.core import logs

    logs.configure()


LEVELS = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        level = Path(item.path).parent.name
        if level in LEVELS:
            item.add_marker(getattr(pytest.mark, level))


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    """No AWS credentials anywhere: not in the environment, files, a container or EC2."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
