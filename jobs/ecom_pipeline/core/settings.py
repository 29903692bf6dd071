"""Settings: every environment variable the pipeline reads, read once into typed objects.

:data:`VARIABLES` names each variable, its default and who reads it (``docs/settings.md`` is
generated from it and a test keeps the page in step). Nothing else in the package reads the
environment: a process builds :class:`Settings` (the jobs, the command line) or
:class:`TriggerSettings` (the Lambda) once, from its environment, and passes it down.
Pure Python: the trigger Lambda ships this module.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ecom_pipeline.core.contract import CATEGORY_TABLE, LOCK_TABLE, ORDER_TABLE
from ecom_pipeline.core.planning import (
    DEFAULT_INCOMING_PREFIX,
    KPI_RETRY_WAIT_ENV,
    KPI_RETRY_WAIT_S,
    kpi_retry_wait_from,
    normalise_prefix,
)
from ecom_pipeline.core.tiers import MAX_BATCH_BYTES_ENV, default_max_batch_bytes

DEFAULT_REGION = "us-east-1"
DEFAULT_SHUFFLE_PARTITIONS = 8
# How long a KPI run's lease on the curated store lasts without renewal, and how long a run
# waits for another run's lease before it gives up (exit 4: the orchestrator retries).
DEFAULT_LOCK_LEASE_S = 120.0  # a run that dies leaves the lock free after this long
DEFAULT_LOCK_WAIT_S = 900.0

# The run id of jobs started by hand (no EXECUTION_ID): their validate and compute-kpis meet.
MANUAL_RUN = "manual"

# Data roots the jobs read and write directly with Spark (direct I/O mode).
DATA_ROOT_SCHEMES = ("s3", "file")


@dataclass(frozen=True)
class Variable:
    """One environment variable: what it means, its default, and who reads it."""

    name: str
    default: str
    meaning: str
    read_by: str


JOBS = "jobs (validate, compute-kpis, move-batch), kpis, replay"
TRIGGER = "trigger Lambda"
SPARK = "jobs (Spark session)"

VARIABLES: tuple[Variable, ...] = (
    Variable("PIPELINE_BUCKET", "(required)", "the data bucket", JOBS),
    Variable("CATEGORY_TABLE", CATEGORY_TABLE, "category KPI table", JOBS),
    Variable("ORDER_TABLE", ORDER_TABLE, "order KPI table", JOBS),
    Variable("LOCK_TABLE", LOCK_TABLE, "the curated store's lease lock table", "compute-kpis"),
    Variable("NOTIFY_TOPIC_ARN", "(none)", "SNS topic of the notices", f"{JOBS}; {TRIGGER}"),
    Variable(
        "PIPELINE_WORK_DIR",
        "<tmp>/ecom-pipeline",
        "local scratch folder of the staged mode",
        JOBS,
    ),
    Variable(
        "PIPELINE_DATA_ROOT",
        "(unset: staged)",
        "direct I/O: Spark reads and writes the data at s3://BUCKET or file:///DIR",
        JOBS,
    ),
    Variable(
        "KPI_LOCK_LEASE_S",
        f"{DEFAULT_LOCK_LEASE_S:g}",
        "seconds a KPI run's lease lasts without renewal",
        "compute-kpis",
    ),
    Variable(
        "KPI_LOCK_WAIT_S",
        f"{DEFAULT_LOCK_WAIT_S:g}",
        "seconds a KPI run waits for another run's lease",
        "compute-kpis",
    ),
    Variable("EXECUTION_ID", "(none)", "the Step Functions execution that started the task", JOBS),
    Variable("AWS_REGION", DEFAULT_REGION, "AWS region (else AWS_DEFAULT_REGION)", "everything"),
    Variable(
        "AWS_DEFAULT_REGION", DEFAULT_REGION, "AWS region when AWS_REGION is unset", "everything"
    ),
    Variable("AWS_ENDPOINT_URL", "(none: AWS)", "an AWS endpoint, e.g. an emulator", "everything"),
    Variable("AWS_PROFILE", "(none)", "named AWS profile", "kpis"),
    Variable(
        "STATE_MACHINE_ARN", "(required)", "the pipeline's state machine", f"{TRIGGER}; replay"
    ),
    Variable(
        "INCOMING_PREFIX",
        DEFAULT_INCOMING_PREFIX,
        "where batches land in the bucket",
        TRIGGER,
    ),
    Variable(
        MAX_BATCH_BYTES_ENV,
        "the largest tier's limit",
        "largest batch (bytes of dataset files) accepted",
        TRIGGER,
    ),
    Variable(
        KPI_RETRY_WAIT_ENV,
        str(KPI_RETRY_WAIT_S),
        "seconds before a KPI task that exited 4 is retried (1 to 3600)",
        f"{TRIGGER}; replay",
    ),
    Variable("SPARK_MASTER", "local[*]", "Spark master outside spark-submit", SPARK),
    Variable("SPARK_DRIVER_MEMORY", "(Spark's: 1g)", "driver heap, e.g. 4915m", SPARK),
    Variable(
        "SPARK_SHUFFLE_PARTITIONS",
        str(DEFAULT_SHUFFLE_PARTITIONS),
        "spark.sql.shuffle.partitions",
        SPARK,
    ),
    Variable("SPARK_EVENT_LOG_DIR", "(off)", "a folder for Spark's event log (profiling)", SPARK),
    Variable("SPARK_UI_ENABLED", "false", "Spark's web UI", SPARK),
    Variable("SPARK_LOG_LEVEL", "ERROR", "Spark's own log level", SPARK),
)

# The job settings' fields and the variables they come from.
ENVIRONMENT = {
    "bucket": "PIPELINE_BUCKET",
    "category_table": "CATEGORY_TABLE",
    "order_table": "ORDER_TABLE",
    "lock_table": "LOCK_TABLE",
    "topic_arn": "NOTIFY_TOPIC_ARN",
    "work_dir": "PIPELINE_WORK_DIR",
    "data_root": "PIPELINE_DATA_ROOT",
    "lock_lease_s": "KPI_LOCK_LEASE_S",
    "lock_wait_s": "KPI_LOCK_WAIT_S",
}


class ConfigError(ValueError):
    """Settings missing or wrong: the command line or environment must change."""


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


@dataclass(frozen=True)
class AwsSettings:
    """Where AWS is: real AWS, or an emulator reached through an endpoint URL. Picklable, so
    Spark executors can build their own clients from it (``adapters.aws.client``)."""

    region: str = DEFAULT_REGION
    endpoint_url: str | None = None
    profile: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> AwsSettings:
        env = _environ(environ)
        values: dict[str, Any] = {
            "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            "endpoint_url": env.get("AWS_ENDPOINT_URL") or None,
            "profile": env.get("AWS_PROFILE") or None,
        }
        values.update({k: v for k, v in overrides.items() if v})
        return cls(**values)

    def region_given(self, environ: Mapping[str, str] | None = None) -> bool:
        """Whether the region was chosen (not the default): a profile's region may apply."""
        env = _environ(environ)
        return bool(env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION"))


@dataclass(frozen=True)
class SparkSettings:
    """How a job's SparkSession is built (``adapters.spark.get_spark``)."""

    master: str | None = None
    driver_memory: str | None = None
    shuffle_partitions: int = DEFAULT_SHUFFLE_PARTITIONS
    event_log_dir: Path | None = None
    ui_enabled: bool = False
    log_level: str = "ERROR"
    # spark-submit starts the driver with PYSPARK_GATEWAY_PORT set and its own --master.
    under_spark_submit: bool = False
    python: str = sys.executable

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SparkSettings:
        env = _environ(environ)
        partitions = env.get("SPARK_SHUFFLE_PARTITIONS") or str(DEFAULT_SHUFFLE_PARTITIONS)
        try:
            shuffle_partitions = int(partitions)
        except ValueError:
            raise ConfigError(
                f"SPARK_SHUFFLE_PARTITIONS must be a whole number, got {partitions!r}"
            ) from None
        return cls(
            master=env.get("SPARK_MASTER") or None,
            driver_memory=env.get("SPARK_DRIVER_MEMORY") or None,
            shuffle_partitions=shuffle_partitions,
            event_log_dir=Path(env["SPARK_EVENT_LOG_DIR"])
            if env.get("SPARK_EVENT_LOG_DIR")
            else None,
            ui_enabled=env.get("SPARK_UI_ENABLED", "false").lower() == "true",
            log_level=env.get("SPARK_LOG_LEVEL") or "ERROR",
            under_spark_submit="PYSPARK_GATEWAY_PORT" in env,
        )


def bucket_data_root(bucket: str) -> str:
    """The data root of a bucket in direct mode: Spark reads ``s3://`` (EMRFS on EMR)."""
    return f"s3://{bucket}"


def file_root(root: str | Path) -> Path:
    """The directory of a ``file:///abs/path`` URI (or an absolute path)."""
    text = str(root)
    if text.startswith("file:"):
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"a file:// data root names no host: {text!r}")
        text = unquote(parts.path)
    path = Path(text)
    if not path.is_absolute():
        raise ValueError(f"a file data root must be absolute: {text!r}")
    return Path(os.path.normpath(path))


@dataclass(frozen=True)
class Settings:
    """What a job needs to know: the bucket, tables, topic, scratch space, AWS and Spark."""

    bucket: str
    aws: AwsSettings = field(default_factory=AwsSettings)
    category_table: str = CATEGORY_TABLE
    order_table: str = ORDER_TABLE
    lock_table: str = LOCK_TABLE
    lock_lease_s: float = DEFAULT_LOCK_LEASE_S
    lock_wait_s: float = DEFAULT_LOCK_WAIT_S
    topic_arn: str | None = None
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "ecom-pipeline")
    # None: staged mode (boto3 to and from work_dir, Spark on local files). A Hadoop URI
    # (s3://<bucket> or file:///dir): direct mode, Spark reads and writes the data there.
    data_root: str | None = None
    execution_id: str | None = None
    spark: SparkSettings = field(default_factory=SparkSettings)

    def __post_init__(self) -> None:
        if self.data_root is None:
            if not self.bucket:
                raise ConfigError(f"no bucket: set {ENVIRONMENT['bucket']} or pass --bucket")
            return
        scheme = self.data_root.split(":", 1)[0] if ":" in self.data_root else ""
        if scheme not in DATA_ROOT_SCHEMES:
            raise ConfigError(
                f"{ENVIRONMENT['data_root']} must be s3://<bucket> or file:///<absolute dir>, "
                f"got {self.data_root!r}"
            )
        if scheme == "s3":
            bucket = self.data_root[len("s3://") :].rstrip("/")
            if not bucket or "/" in bucket:
                raise ConfigError(
                    f"{ENVIRONMENT['data_root']} must be a whole bucket, s3://<bucket>, "
                    f"got {self.data_root!r}"
                )
            if self.bucket and self.bucket != bucket:
                raise ConfigError(
                    f"{ENVIRONMENT['data_root']} {self.data_root!r} names another bucket "
                    f"than {ENVIRONMENT['bucket']} {self.bucket!r}"
                )
            object.__setattr__(self, "bucket", bucket)
        else:
            try:
                file_root(self.data_root)
            except ValueError as e:
                raise ConfigError(f"{ENVIRONMENT['data_root']}: {e}") from e

    @property
    def run_id(self) -> str:
        """The run a job belongs to: its Step Functions execution's name, or MANUAL_RUN for a
        command run by hand. A run's staged rows are kept apart from every other run's."""
        return self.execution_id.rsplit(":", 1)[-1] if self.execution_id else MANUAL_RUN

    @property
    def direct_io(self) -> bool:
        """Spark reads and writes the bulk data at the store's URIs (nothing staged locally)."""
        return self.data_root is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read the variables of :data:`VARIABLES` from ``environ`` (default: the process's);
        keyword arguments that are not None win."""
        env = _environ(environ)
        values: dict[str, Any] = {
            "bucket": env.get(ENVIRONMENT["bucket"], ""),
            "aws": AwsSettings.from_env(env),
            "category_table": env.get(ENVIRONMENT["category_table"], CATEGORY_TABLE),
            "order_table": env.get(ENVIRONMENT["order_table"], ORDER_TABLE),
            "lock_table": env.get(ENVIRONMENT["lock_table"], LOCK_TABLE),
            "topic_arn": env.get(ENVIRONMENT["topic_arn"]) or None,
            "execution_id": env.get("EXECUTION_ID") or None,
            "spark": SparkSettings.from_env(env),
        }
        for name in ("lock_lease_s", "lock_wait_s"):
            if env.get(ENVIRONMENT[name]):
                try:
                    values[name] = float(env[ENVIRONMENT[name]])
                except ValueError:
                    raise ConfigError(
                        f"{ENVIRONMENT[name]} must be a number of seconds, "
                        f"got {env[ENVIRONMENT[name]]!r}"
                    ) from None
        if env.get(ENVIRONMENT["work_dir"]):
            values["work_dir"] = Path(env[ENVIRONMENT["work_dir"]])
        values["data_root"] = env.get(ENVIRONMENT["data_root"]) or None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The container environment that makes a job see these settings."""
        env = {
            ENVIRONMENT["bucket"]: self.bucket,
            ENVIRONMENT["category_table"]: self.category_table,
            ENVIRONMENT["order_table"]: self.order_table,
            ENVIRONMENT["lock_table"]: self.lock_table,
            ENVIRONMENT["lock_lease_s"]: f"{self.lock_lease_s:g}",
            ENVIRONMENT["lock_wait_s"]: f"{self.lock_wait_s:g}",
            ENVIRONMENT["work_dir"]: str(self.work_dir),
            "AWS_REGION": self.aws.region,
        }
        if self.topic_arn:
            env[ENVIRONMENT["topic_arn"]] = self.topic_arn
        if self.aws.endpoint_url:
            env["AWS_ENDPOINT_URL"] = self.aws.endpoint_url
        if self.data_root:
            env[ENVIRONMENT["data_root"]] = self.data_root
        return env

    def with_work_dir(self, work_dir: Path) -> Settings:
        return replace(self, work_dir=work_dir)


def kpi_tables(environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(category table, order table) for a reader that needs no bucket (``kpis``)."""
    env = _environ(environ)
    return (
        env.get(ENVIRONMENT["category_table"]) or CATEGORY_TABLE,
        env.get(ENVIRONMENT["order_table"]) or ORDER_TABLE,
    )


def execution_id_from(environ: Mapping[str, str] | None = None) -> str | None:
    """The Step Functions execution that started this process, for every log line."""
    return _environ(environ).get("EXECUTION_ID") or None


@dataclass(frozen=True)
class TriggerSettings:
    """What the trigger Lambda needs (and ``replay``, which starts executions the same way)."""

    state_machine_arn: str
    incoming_prefix: str = DEFAULT_INCOMING_PREFIX
    topic_arn: str | None = None
    max_batch_bytes: int = field(default_factory=default_max_batch_bytes)
    kpi_retry_wait_s: int = KPI_RETRY_WAIT_S
    # How long intake waits for a run that has settled its files to end (its last state is a
    # notice), within the Lambda's 60 s timeout; past it the event is retried.
    end_wait_s: float = 40.0

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, state_machine_arn: str | None = None
    ) -> TriggerSettings:
        env = _environ(environ)
        arn = state_machine_arn or env.get("STATE_MACHINE_ARN", "")
        if not arn:
            raise ConfigError("STATE_MACHINE_ARN is not set")
        text = env.get(MAX_BATCH_BYTES_ENV) or str(default_max_batch_bytes())
        try:
            max_batch_bytes = int(text)
        except ValueError:
            raise ConfigError(f"{MAX_BATCH_BYTES_ENV} must be a number of bytes") from None
        try:
            kpi_retry_wait_s = kpi_retry_wait_from(env)
        except ValueError as error:
            raise ConfigError(str(error)) from error
        return cls(
            state_machine_arn=arn,
            incoming_prefix=normalise_prefix(env.get("INCOMING_PREFIX", DEFAULT_INCOMING_PREFIX)),
            topic_arn=env.get("NOTIFY_TOPIC_ARN") or None,
            max_batch_bytes=max_batch_bytes,
            kpi_retry_wait_s=kpi_retry_wait_s,
        )
