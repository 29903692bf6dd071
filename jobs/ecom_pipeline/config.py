"""Run-time configuration shared by every job: which bucket, tables, topic and AWS endpoint."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ecom_pipeline.aws import AwsSettings
from ecom_pipeline.contract import CATEGORY_TABLE, ORDER_TABLE


class ConfigError(ValueError):
    """Settings missing or wrong: the command line or environment must change."""


@dataclass(frozen=True)
class PipelineConfig:
    bucket: str
    aws: AwsSettings = field(default_factory=AwsSettings)
    category_table: str = CATEGORY_TABLE
    order_table: str = ORDER_TABLE
    topic_arn: str | None = None
    work_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "ecom-pipeline")

    @classmethod
    def from_env(cls, **overrides: Any) -> PipelineConfig:
        """Read PIPELINE_BUCKET, CATEGORY_TABLE, ORDER_TABLE, NOTIFY_TOPIC_ARN, PIPELINE_WORK_DIR,
        AWS_REGION and AWS_ENDPOINT_URL; keyword arguments that are not None win."""
        values: dict[str, Any] = {
            "bucket": os.environ.get("PIPELINE_BUCKET", ""),
            "aws": AwsSettings.from_env(),
            "category_table": os.environ.get("CATEGORY_TABLE", CATEGORY_TABLE),
            "order_table": os.environ.get("ORDER_TABLE", ORDER_TABLE),
            "topic_arn": os.environ.get("NOTIFY_TOPIC_ARN") or None,
        }
        if os.environ.get("PIPELINE_WORK_DIR"):
            values["work_dir"] = Path(os.environ["PIPELINE_WORK_DIR"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values["bucket"]:
            raise ConfigError("no bucket: set PIPELINE_BUCKET or pass --bucket")
        return cls(**values)

    def with_work_dir(self, work_dir: Path) -> PipelineConfig:
        return replace(self, work_dir=work_dir)
