"""The one AWS client factory."""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from ecom_pipeline.core.settings import DEFAULT_REGION, AwsSettings

__all__ = ["DEFAULT_REGION", "AwsSettings", "make_client", "session"]


def session(aws: AwsSettings) -> boto3.session.Session:
    """A boto3 session for ``aws`` (its named profile, if any)."""
    return boto3.session.Session(profile_name=aws.profile)


def make_client(
    aws: AwsSettings,
    service: str,
    *,
    max_attempts: int = 5,
    retry_mode: str = "adaptive",
    boto_session: boto3.session.Session | None = None,
    **config: Any,
) -> Any:
    """A boto3 client with retries (adaptive by default: throttling backs off with jitter).
    ``config`` adds botocore settings, e.g. ``connect_timeout``."""
    settings = Config(retries={"max_attempts": max_attempts, "mode": retry_mode}, **config)
    kwargs: dict[str, Any] = {"region_name": aws.region, "config": settings}
    if aws.endpoint_url:
        kwargs["endpoint_url"] = aws.endpoint_url
        # An emulator accepts any credentials; executors may not inherit the driver's.
        kwargs["aws_access_key_id"] = os.environ.get("AWS_ACCESS_KEY_ID", "testing")
        kwargs["aws_secret_access_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")
    return (boto_session or session(aws)).client(service, **kwargs)
