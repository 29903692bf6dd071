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
