"""Intake: what the trigger Lambda decides when a batch's marker lands.

Each execution is named after its batch (``planning.execution_name``), so the run of a batch
starts once however often its marker event arrives. Step Functions answers a repeated
StartExecution with the same name and input *while the first is running* with success (it is
idempotent), so intake first asks whether the execution exists; ExecutionAlreadyExists
covers the execution having finished or the plan having changed. A marker stored *after* the
batch's last execution began is a new upload of the batch, not a repeated event: it starts the
next replay execution (``<name>-replay-<n>``, as ``ecom-pipeline replay`` names them).

A batch above the maximum size, one holding nothing but its marker, one whose folder name Spark
would read as a pattern, or one whose manifest.json cannot be planned is refused before anything
starts: no execution, a FAILED notice (stage "intake") naming the batch and why, and the
invocation succeeds (retrying would refuse it again). Without a topic nobody could be told, so
the invocation fails instead.

The AWS clients (S3, Step Functions, SNS) are handed in, so this module imports no AWS SDK.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ecom_pipeline.core import planning
from ecom_pipeline.core.aws_errors import NOT_FOUND_CODES, error_code
from ecom_pipeline.core.planning import (
    BATCH_ID_RULE,
    EMPTY_BATCH_RULE,
    MANIFEST_MARKER,
    BatchIdError,
    EmptyBatchError,
    ManifestError,
    S3ObjectEvent,
    batch_executions,
    batch_prefix,
    classify_key,
    execution_arn,
    execution_name,
    read_manifest,
    replay_execution_name,
)
from ecom_pipeline.core.settings import TriggerSettings
from ecom_pipeline.core.tiers import BatchTooLargeError

SUBJECT_LIMIT = 100  # SNS subjects hold at most 100 characters


@dataclass
class Intake:
    """Starts one execution per complete batch; ``s3``, ``sfn`` and ``sns`` are boto3 clients."""

    settings: TriggerSettings
    s3: Any
    sfn: Any
    sns: Any
    log: logging.LoggerAdapter  # logs.FieldsAdapter: each call's extra fields are kept

    def handle(self, records: Sequence[S3ObjectEvent]) -> dict[str, list[str]]:
        """Every record's batch started, found a duplicate, ignored or refused; the first
        unexpected error is raised at the end, so Lambda retries the invocation (runs already
        started are then duplicates)."""
        started: list[str] = []
        duplicates: list[str] = []
        ignored: list[str] = []
        refused: list[str] = []
        first_error: Exception | None = None
        for record in records:
            batch_id, reason = classify_key(record.key, self.settings.incoming_prefix)
            if batch_id is None:
                self.log.info(
                    "ignored", extra={"key": record.key, "bucket": record.bucket, "reason": reason}
                )
                ignored.append(record.key)
                continue
            name = execution_name(batch_id)
            fields = {"batch_id": batch_id, "execution_name": name, "key": record.key}
            try:
                outcome, detail = self._start_batch(record, batch_id, name)
            except (BatchTooLargeError, ManifestError, EmptyBatchError, BatchIdError) as error:
                self.log.error(  # noqa: TRY400 - the data's fault: no traceback
                    "batch refused",
                    extra={"error": str(error), "type": type(error).__name__, **fields},
                )
                if self.settings.topic_arn is None:
                    first_error = first_error or error
                    continue
                try:
                    self._notify_refusal(batch_id, record.key, error)
                except Exception as notify_error:
                    self.log.exception(
                        "refusal notice not sent", extra={"error": str(notify_error), **fields}
                    )
                    first_error = first_error or notify_error
                    continue
                refused.append(name)
                continue
            except Exception as error:
                self.log.exception(
                    "batch not started",
                    extra={"error": str(error), "type": type(error).__name__, **fields},
                )
                first_error = first_error or error
                continue
            if outcome == "started":
                fields["execution_name"] = detail.pop("execution_name")
                self.log.info("started", extra={**fields, **detail})
                started.append(fields["execution_name"])
            else:
                self.log.info("duplicate", extra={"reason": detail["reason"], **fields})
                duplicates.append(name)

        result = {"started": started, "duplicates": duplicates, "ignored": ignored}
        if refused:
            result["refused"] = refused
        self.log.info("done", extra={k: len(v) for k, v in result.items()})
        if first_error is not None:
            raise first_error
        return result

    def _start_batch(
        self, record: S3ObjectEvent, batch_id: str, name: str
    ) -> tuple[str, dict[str, Any]]:
        """("started", details) or ("duplicate", {"reason": ...})."""
        arn = self.settings.state_machine_arn
        previous = batch_executions(self.sfn, arn, batch_id)
        if previous:
            last, status = previous[-1]
            if status == "RUNNING":
                return "duplicate", {"reason": f"execution {last} is running"}
            started = self.sfn.describe_execution(executionArn=execution_arn(arn, last))[
                "startDate"
            ]
            uploaded = self._last_modified(record.bucket, record.key)
            if uploaded is None or uploaded <= started:
                # the event of the marker that started it, delivered again (or the marker has
                # been settled into archive/ or rejected/ since)
                return "duplicate", {"reason": f"execution {last} exists ({status})"}
            # The batch was uploaded again after its last execution began: run it again, as
            # `ecom-pipeline replay` would (identical rows change nothing; corrections apply),
            # so no upload is left in incoming/ without an execution and a notice.
            name = replay_execution_name(batch_id, len(previous))

        folder = batch_prefix(batch_id, self.settings.incoming_prefix)
        objects = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=record.bucket, Prefix=folder
        )
        for page in pages:
            objects.extend((o["Key"], o["Size"]) for o in page.get("Contents", []))
        # A folder with a manifest is the files it lists, whichever marker arrived: validation
        # and replay read the folder the same way.
        manifest_files = None
        manifest_key = folder + MANIFEST_MARKER
        if any(key == manifest_key for key, _ in objects):
            body = self.s3.get_object(Bucket=record.bucket, Key=manifest_key)["Body"].read()
            manifest_files = read_manifest(body.decode("utf-8-sig"))
        # looked up on the module, so a test can give the plan other sizes
        plan = planning.plan_execution(
            record.bucket,
            batch_id,
            objects,
            manifest_files=manifest_files,
            incoming_prefix=self.settings.incoming_prefix,
            received_at=record.event_time,
            max_batch_bytes=self.settings.max_batch_bytes,
            kpi_retry_wait_s=self.settings.kpi_retry_wait_s,
        )
        try:
            response = self.sfn.start_execution(
                stateMachineArn=arn, name=name, input=json.dumps(plan)
            )
        except Exception as error:
            if error_code(error) == "ExecutionAlreadyExists":
                return "duplicate", {"reason": "ExecutionAlreadyExists"}
            raise
        return "started", {
            "execution_name": name,
            "execution_arn": response["executionArn"],
            "route": plan["route"],
            "tier": plan["tier"]["name"],
            "total_bytes": plan["total_bytes"],
        }

    def _last_modified(self, bucket: str, key: str) -> datetime | None:
        """When the object was stored, or None when it is gone."""
        try:
            return self.s3.head_object(Bucket=bucket, Key=key)["LastModified"]
        except Exception as error:
            if error_code(error) in NOT_FOUND_CODES:
                return None
            raise

    def _notify_refusal(self, batch_id: str, key: str, error: Exception) -> None:
        """The FAILED notice of a batch refused at intake (same shape as the state machine's)."""
        if isinstance(error, BatchTooLargeError):
            details: dict[str, Any] = {"max_batch_bytes": self.settings.max_batch_bytes}
        elif isinstance(error, EmptyBatchError):
            details = {"rule": EMPTY_BATCH_RULE}
        elif isinstance(error, BatchIdError):
            details = {"rule": BATCH_ID_RULE}
        else:
            details = {"rule": "manifest.json lists the batch's files"}
        notice = {
            "status": "FAILED",
            "stage": "intake",
            "batch_id": batch_id,
            "marker": key,
            "error": str(error),
            **details,
        }
        self.sns.publish(
            TopicArn=self.settings.topic_arn,
            Subject=f"ecom-pipeline FAILED: batch {batch_id}"[:SUBJECT_LIMIT],
            Message=json.dumps(notice),
        )
