"""Settings: read once from the environment, defined in one place, documented from the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docs_tables import settings_table_markdown
from ecom_pipeline.core.settings import (
    DEFAULT_SHUFFLE_PARTITIONS,
    VARIABLES,
    AwsSettings,
    ConfigError,
    Settings,
    SparkSettings,
    TriggerSettings,
)
from ecom_pipeline.core.tiers import default_max_batch_bytes

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "jobs" / "ecom_pipeline"
SETTINGS_PAGE = ROOT / "docs" / "settings.md"
# Reading the environment: os.environ.get / os.getenv / environ[...] / "X" in os.environ.
READS = re.compile(
    r"(os\.getenv\(|os\.environ\.get\(|os\.environ\[[^\]]+\](?!\s*=)|in os\.environ\b|"
    r"\benv(iron)?\.get\(\s*\"[A-Z_]+\")"
)
# Where the environment may be read besides the settings: boto3-style credentials for an
# emulator, and run-local saving and restoring what it sets for the Lambda handler.
ALLOWED = {
    "adapters/aws.py": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "local/run_local.py": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "<a name in a variable>"},
}


def test_docs_settings_page_lists_every_variable_as_the_code_defines_it():
    assert settings_table_markdown() in SETTINGS_PAGE.read_text(encoding="utf-8")


def test_only_the_settings_module_reads_the_environment():
    offenders = []
    for path in sorted([*PACKAGE.rglob("*.py"), ROOT / "lambda" / "trigger.py"]):
        relative = path.relative_to(PACKAGE).as_posix() if PACKAGE in path.parents else path.name
        if relative == "core/settings.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not READS.search(line) or line.lstrip().startswith(("#", '"""')):
                continue
            names = set(re.findall(r"[\"']([A-Z_]+)[\"']", line)) or {"<a name in a variable>"}
            if not names <= ALLOWED.get(relative, set()):
                offenders.append(f"{relative}:{number}: {line.strip()}")
    assert offenders == []


def test_every_variable_the_settings_read_is_documented():
    source = (PACKAGE / "core" / "settings.py").read_text(encoding="utf-8")
    read = set(re.findall(r"env(?:\.get\(|\[)\s*\"([A-Z_]+)\"", source))
    documented = {v.name for v in VARIABLES}
    assert read - {"PYSPARK_GATEWAY_PORT"} <= documented
    assert len(documented) == len(VARIABLES)  # no variable twice


def test_job_settings_from_the_environment():
    settings = Settings.from_env(
        {
            "PIPELINE_BUCKET": "data",
            "CATEGORY_TABLE": "cats",
            "ORDER_TABLE": "orders",
            "NOTIFY_TOPIC_ARN": "arn:aws:sns:eu-west-1:1:t",
            "KPI_LOCK_LEASE_S": "30",
            "EXECUTION_ID": "arn:aws:states:eu-west-1:1:execution:sm:b1",
            "AWS_DEFAULT_REGION": "eu-west-1",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
            "SPARK_DRIVER_MEMORY": "4915m",
            "SPARK_SHUFFLE_PARTITIONS": "16",
            "SPARK_MASTER": "local[2]",
        }
    )
    assert (settings.bucket, settings.category_table, settings.order_table) == (
        "data",
        "cats",
        "orders",
    )
    assert settings.lock_lease_s == 30.0
    assert settings.execution_id.endswith(":b1")
    assert settings.aws == AwsSettings(region="eu-west-1", endpoint_url="http://127.0.0.1:5000")
    assert settings.spark.driver_memory == "4915m"
    assert settings.spark.shuffle_partitions == 16
    assert settings.spark.master == "local[2]"
    assert not settings.spark.under_spark_submit


def test_flags_win_over_the_environment():
    settings = Settings.from_env({"PIPELINE_BUCKET": "env-bucket"}, bucket="flag-bucket")
    assert settings.bucket == "flag-bucket"
    assert AwsSettings.from_env({"AWS_REGION": "eu-west-1"}, region="us-west-2").region == (
        "us-west-2"
    )


def test_spark_defaults_and_a_wrong_number():
    assert SparkSettings.from_env({}).shuffle_partitions == DEFAULT_SHUFFLE_PARTITIONS
    assert SparkSettings.from_env({"PYSPARK_GATEWAY_PORT": "1"}).under_spark_submit
    with pytest.raises(ConfigError, match="SPARK_SHUFFLE_PARTITIONS"):
        SparkSettings.from_env({"SPARK_SHUFFLE_PARTITIONS": "many"})
    with pytest.raises(ConfigError, match="KPI_LOCK_WAIT_S"):
        Settings.from_env({"PIPELINE_BUCKET": "b", "KPI_LOCK_WAIT_S": "soon"})


def test_trigger_settings():
    arn = "arn:aws:states:us-east-1:1:stateMachine:sm"
    settings = TriggerSettings.from_env({"STATE_MACHINE_ARN": arn, "INCOMING_PREFIX": "in"})
    assert settings.incoming_prefix == "in/"
    assert settings.max_batch_bytes == default_max_batch_bytes()
    with pytest.raises(ConfigError, match="STATE_MACHINE_ARN"):
        TriggerSettings.from_env({})
    with pytest.raises(ConfigError, match="MAX_BATCH_BYTES"):
        TriggerSettings.from_env({"STATE_MACHINE_ARN": arn, "MAX_BATCH_BYTES": "big"})
    with pytest.raises(ConfigError, match="KPI_RETRY_WAIT_S"):
        TriggerSettings.from_env({"STATE_MACHINE_ARN": arn, "KPI_RETRY_WAIT_S": "0"})
