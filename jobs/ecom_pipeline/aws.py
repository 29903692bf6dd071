"""Where AWS is: real AWS, or an emulator reached through an endpoint URL."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True)
class AwsSettings:
    """Picklable, so Spark executors can build their own clients from it."""

    region: str = DEFAULT_REGION
    endpoint_url: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AwsSettings:
        env = os.environ if environ is None else environ
        return cls(
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        )

    def client(self, service: str, *, max_attempts: int = 5) -> Any:
        """A boto3 client with adaptive retries (throttling backs off with jitter)."""
        config = Config(retries={"max_attempts": max_attempts, "mode": "adaptive"})
        kwargs: dict[str, Any] = {"region_name": self.region, "config": config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
            # An emulator accepts any credentials; executors may not inherit the driver's.
            kwargs.setdefault("aws_access_key_id", os.environ.get("AWS_ACCESS_KEY_ID", "testing"))
            kwargs.setdefault(
                "aws_secret_access_key", os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")
            )
        return boto3.session.Session().client(service, **kwargs)
