"""S3-triggered Lambda: when a batch's marker lands, start one state machine execution for it.

The deployment zip holds this file plus the package's pure-Python core (``ecom_pipeline/core/``);
the decisions live in ``ecom_pipeline.core.intake``. Settings: ``core.settings.TriggerSettings``
(docs/settings.md). IAM: s3:ListBucket and s3:ListBucketVersions on the bucket (prefix
incoming/), s3:GetObject and s3:GetObjectVersion on incoming/* and results/*, s3:PutObject on
results/* (each run's upload list), states:StartExecution on the state machine,
states:DescribeExecution on its executions, sns:Publish on the topic.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any

import boto3

from ecom_pipeline.core import logs
from ecom_pipeline.core.intake import Intake
from ecom_pipeline.core.planning import parse_s3_event
from ecom_pipeline.core.settings import ConfigError, TriggerSettings

log = logs.stdout_logger("ecom_pipeline.trigger")


@functools.cache
def _intake() -> Intake:
    """Settings and clients, made once per Lambda container on the first invocation."""
    return Intake(
        TriggerSettings.from_env(),
        s3=boto3.client("s3"),
        sfn=boto3.client("stepfunctions"),
        sns=boto3.client("sns"),
        log=logs.FieldsAdapter(log),
    )


def handler(event: dict[str, Any], context: Any) -> dict[str, list[str]]:
    request = logs.FieldsAdapter(log, {"aws_request_id": getattr(context, "aws_request_id", None)})
    try:
        intake = _intake()
    except ConfigError as error:
        request.error("configuration error", extra={"error": str(error)})
        raise RuntimeError(str(error)) from error
    try:
        records = parse_s3_event(event)
    except ValueError as error:
        request.error("malformed event", extra={"error": str(error)})
        raise
    return replace(intake, log=request).handle(records)
