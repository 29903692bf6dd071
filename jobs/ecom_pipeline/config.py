"""Run-time configuration shared by every job: which bucket, tables, topic and AWS endpoint."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ecom_pipeline.aws import AwsSettings
from ecom_pipeline.contract import CATEGORY_TABLE, LOCK_TABLE, ORDER_TABLE
from ecom_pipeline.lock import DEFAULT_LEASE_S as DEFAULT_LOCK_LEASE_S
from ecom_pipeline.lock import DEFAULT_WAIT_S as DEFAULT_LOCK_WAIT_S
from ecom_pipeline.storage import BucketStore, FileStore, Store, file_root

# Data roots the jobs read and write directly with Spark (direct I/O mode).
DATA_ROOT_SCHEMES = ("s3", "file")


def bucket_data_root(bucket: str) -> str:
    """The data root of a bucket in direct mode: Spark reads ``s3://`` (EMRFS on EMR)."""
    return f"s3://{bucket}"


# Environment variables the jobs read (the task definition sets them).
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


@dataclass(frozen=True)
class PipelineConfig:
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
    def direct_io(self) -> bool:
        """Spark reads and writes the bulk data at the store's URIs (nothing staged locally)."""
        return self.data_root is not None

    def store(self) -> Store:
        """Where the data and the jobs' metadata live (one object per job run)."""
        if self.data_root is not None and self.data_root.startswith("file:"):
            return FileStore(self.data_root)
        return BucketStore(self.bucket, self.aws)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> PipelineConfig:
        """Read the variables of :data:`ENVIRONMENT` (and AWS_REGION, AWS_ENDPOINT_URL) from
        ``environ`` (default: the process's); keyword arguments that are not None win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "bucket": env.get(ENVIRONMENT["bucket"], ""),
            "aws": AwsSettings.from_env(env),
            "category_table": env.get(ENVIRONMENT["category_table"], CATEGORY_TABLE),
            "order_table": env.get(ENVIRONMENT["order_table"], ORDER_TABLE),
            "lock_table": env.get(ENVIRONMENT["lock_table"], LOCK_TABLE),
            "topic_arn": env.get(ENVIRONMENT["topic_arn"]) or None,
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
        """The container environment that makes a job see this configuration."""
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

    def with_work_dir(self, work_dir: Path) -> PipelineConfig:
        return replace(self, work_dir=work_dir)
