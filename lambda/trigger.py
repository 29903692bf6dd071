"""S3-triggered Lambda: when a batch's marker lands, start one state machine execution for it.

Environment: STATE_MACHINE_ARN (required), INCOMING_PREFIX (default "incoming/"),
NOTIFY_TOPIC_ARN (where refusals are announced), MAX_BATCH_BYTES (default: the largest tier's
limit, tiers.default_max_batch_bytes()), KPI_RETRY_WAIT_S (the plan's wait before a KPI task
that exited 4 is retried; default orchestration.KPI_RETRY_WAIT_S).
The deployment zip holds this file plus ecom_pipeline/{__init__,contract,tiers,orchestration}.py.
IAM: s3:ListBucket on the bucket (prefix incoming/), s3:GetObject on incoming/*,
states:StartExecution on the state machine, states:DescribeExecution on its executions,
sns:Publish on the topic.

A batch above MAX_BATCH_BYTES, one holding nothing but its marker, or one whose manifest.json
cannot be planned (not JSON of the right shape, or listing files the batch does not hold), is
refused before anything starts: no
execution, a FAILED notice (stage "intake") naming the batch and why, and the invocation
succeeds (Lambda retrying it would refuse it again). Without NOTIFY_TOPIC_ARN nobody could be
told, so the invocation fails instead.

Each execution is named after its batch (orchestration.execution_name), so the run of a batch
starts once however often its marker event arrives. Step Functions answers a repeated
StartExecution with the same name and input *while the first is running* with success (it is
idempotent), so the handler first asks whether the execution exists; ExecutionAlreadyExists
covers the execution having finished or the plan having changed. A marker stored *after* the
batch's last execution began is a new upload of the batch, not a repeated event: it starts the
next replay execution (``<name>-replay-<n>``, as ``ecom-pipeline replay`` names them).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import boto3
from botocore.exceptions import ClientError

from ecom_pipeline.orchestration import (
    DEFAULT_INCOMING_PREFIX,
    EMPTY_BATCH_RULE,
    MANIFEST_MARKER,
    EmptyBatchError,
    ManifestError,
    batch_executions,
    batch_prefix,
    classify_key,
    execution_arn,
    execution_name,
    kpi_retry_wait_from,
    normalise_prefix,
    parse_s3_event,
    plan_execution,
    read_manifest,
    replay_execution_name,
)
from ecom_pipeline.tiers import MAX_BATCH_BYTES_ENV, BatchTooLargeError, default_max_batch_bytes

LOGGER = "ecom_pipeline.trigger"


@functools.cache
def _client(service: str) -> Any:
    """One client per service for the life of the Lambda container, made on first use."""
    return boto3.client(service)


def _log(level: str, message: str, request_id: str | None, **fields: Any) -> None:
    record = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": LOGGER,
        "message": message,
        "aws_request_id": request_id,
        **fields,
    }
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def handler(event: dict[str, Any], context: Any) -> dict[str, list[str]]:
    request_id = getattr(context, "aws_request_id", None)
    log = functools.partial(_log, request_id=request_id)
    state_machine_arn = os.environ.get("STATE_MACHINE_ARN", "")
    if not state_machine_arn:
        log("ERROR", "configuration error", error="STATE_MACHINE_ARN is not set")
        raise RuntimeError("STATE_MACHINE_ARN is not set")
    prefix = normalise_prefix(os.environ.get("INCOMING_PREFIX", DEFAULT_INCOMING_PREFIX))
    topic_arn = os.environ.get("NOTIFY_TOPIC_ARN") or None
    try:
        max_batch_bytes = int(os.environ.get(MAX_BATCH_BYTES_ENV) or default_max_batch_bytes())
    except ValueError as error:
        log("ERROR", "configuration error", error=f"{MAX_BATCH_BYTES_ENV} is not an integer")
        raise RuntimeError(f"{MAX_BATCH_BYTES_ENV} must be a number of bytes") from error
    try:
        kpi_retry_wait_s = kpi_retry_wait_from(os.environ)
    except ValueError as error:
        log("ERROR", "configuration error", error=str(error))
        raise RuntimeError(str(error)) from error
    try:
        records = parse_s3_event(event)
    except ValueError as error:
        log("ERROR", "malformed event", error=str(error))
        raise

    started: list[str] = []
    duplicates: list[str] = []
    ignored: list[str] = []
    refused: list[str] = []
    first_error: Exception | None = None
    for record in records:
        batch_id, reason = classify_key(record.key, prefix)
        if batch_id is None:
            log("INFO", "ignored", key=record.key, bucket=record.bucket, reason=reason)
            ignored.append(record.key)
            continue
        name = execution_name(batch_id)
        fields = {"batch_id": batch_id, "execution_name": name, "key": record.key}
        try:
            outcome, detail = _start_batch(
                record.bucket,
                batch_id,
                record.key,
                name,
                prefix,
                state_machine_arn,
                record.event_time,
                max_batch_bytes,
                kpi_retry_wait_s,
            )
        except (BatchTooLargeError, ManifestError, EmptyBatchError) as error:
            log("ERROR", "batch refused", error=str(error), type=type(error).__name__, **fields)
            if topic_arn is None:
                first_error = first_error or error
                continue
            if isinstance(error, BatchTooLargeError):
                details: dict[str, Any] = {"max_batch_bytes": max_batch_bytes}
            elif isinstance(error, EmptyBatchError):
                details = {"rule": EMPTY_BATCH_RULE}
            else:
                details = {"rule": "manifest.json lists the batch's files"}
            try:
                _notify_refusal(topic_arn, batch_id, record.key, str(error), details)
            except Exception as notify_error:
                log("ERROR", "refusal notice not sent", error=str(notify_error), **fields)
                first_error = first_error or notify_error
                continue
            refused.append(name)
            continue
        except Exception as error:
            # Keep going with the other records; the invocation fails at the end so Lambda
            # retries it (runs already started are then duplicates).
            log("ERROR", "batch not started", error=str(error), type=type(error).__name__, **fields)
            first_error = first_error or error
            continue
        if outcome == "started":
            fields["execution_name"] = detail.pop("execution_name")
            log("INFO", "started", **fields, **detail)
            started.append(fields["execution_name"])
        else:
            log("INFO", "duplicate", reason=detail["reason"], **fields)
            duplicates.append(name)

    result = {"started": started, "duplicates": duplicates, "ignored": ignored}
    if refused:
        result["refused"] = refused
    log("INFO", "done", **{k: len(v) for k, v in result.items()})
    if first_error is not None:
        raise first_error
    return result


def _start_batch(
    bucket: str,
    batch_id: str,
    key: str,
    name: str,
    prefix: str,
    state_machine_arn: str,
    received_at: str | None,
    max_batch_bytes: int,
    kpi_retry_wait_s: int,
) -> tuple[str, dict[str, Any]]:
    """("started", details) or ("duplicate", {"reason": ...})."""
    sfn = _client("stepfunctions")
    s3 = _client("s3")
    previous = batch_executions(sfn, state_machine_arn, batch_id)
    if previous:
        last, status = previous[-1]
        if status == "RUNNING":
            return "duplicate", {"reason": f"execution {last} is running"}
        started = sfn.describe_execution(executionArn=execution_arn(state_machine_arn, last))[
            "startDate"
        ]
        uploaded = _last_modified(s3, bucket, key)
        if uploaded is None or uploaded <= started:
            # the event of the marker that started it, delivered again (or the marker has
            # been settled into archive/ or rejected/ since)
            return "duplicate", {"reason": f"execution {last} exists ({status})"}
        # The batch was uploaded again after its last execution began: run it again, as
        # `ecom-pipeline replay` would (identical rows change nothing; corrections apply),
        # so no upload is left in incoming/ without an execution and a notice.
        name = replay_execution_name(batch_id, len(previous))

    folder = batch_prefix(batch_id, prefix)
    objects = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=folder):
        objects.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
    manifest_files = None
    if key.endswith("/" + MANIFEST_MARKER):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        manifest_files = read_manifest(body.decode("utf-8-sig"))
    plan = plan_execution(
        bucket,
        batch_id,
        objects,
        manifest_files=manifest_files,
        incoming_prefix=prefix,
        received_at=received_at,
        max_batch_bytes=max_batch_bytes,
        kpi_retry_wait_s=kpi_retry_wait_s,
    )
    try:
        response = sfn.start_execution(
            stateMachineArn=state_machine_arn, name=name, input=json.dumps(plan)
        )
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ExecutionAlreadyExists":
            return "duplicate", {"reason": "ExecutionAlreadyExists"}
        raise
    return "started", {
        "execution_name": name,
        "execution_arn": response["executionArn"],
        "route": plan["route"],
        "tier": plan["tier"]["name"],
        "total_bytes": plan["total_bytes"],
    }


def _last_modified(s3: Any, bucket: str, key: str) -> datetime | None:
    """When the object was stored, or None when it is gone."""
    try:
        return s3.head_object(Bucket=bucket, Key=key)["LastModified"]
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise


def _notify_refusal(
    topic_arn: str, batch_id: str, key: str, error: str, details: dict[str, Any]
) -> None:
    """The FAILED notice of a batch refused at intake (same shape as the state machine's)."""
    notice = {
        "status": "FAILED",
        "stage": "intake",
        "batch_id": batch_id,
        "marker": key,
        "error": error,
        **details,
    }
    _client("sns").publish(
        TopicArn=topic_arn,
        Subject=f"ecom-pipeline FAILED: batch {batch_id}"[:100],
        Message=json.dumps(notice),
    )
