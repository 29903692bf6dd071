"""Intake: what the trigger Lambda decides when a batch's marker lands.

Each execution is named after its batch (``planning.execution_name``), so the run of a batch
starts once however often its marker event arrives. Step Functions answers a repeated
StartExecution with the same name and input *while the first is running* with success (it is
idempotent), so intake first asks whether the execution exists; ExecutionAlreadyExists
covers the execution having finished or the plan having changed. A marker version the batch's
last execution did not take (its upload lists the versions it took; in an unversioned bucket, a
marker stored after the execution began) is a new upload of the batch, not a repeated event: it
starts the next replay execution (``<name>-replay-<n>``, as ``ecom-pipeline replay`` names
them).

Each run takes exactly the file versions intake listed when it planned the run (stored as the
run's upload, ``core.upload``). A marker stored while an execution of the batch is *running* is
an upload that run does not take: once the run has settled its own files, its custody stores
the marker again, and that event (or the first one, when custody had settled already) starts
the next run here as soon as the running one has ended. Nothing uploaded is left without a run.

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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ecom_pipeline.core import planning
from ecom_pipeline.core.aws_errors import NOT_FOUND_CODES, error_code
from ecom_pipeline.core.layout import deferred_marker_key, run_settled_key, run_upload_key
from ecom_pipeline.core.planning import (
    BATCH_ID_RULE,
    EMPTY_BATCH_RULE,
    MANIFEST_MARKER,
    UPLOADED_AT_METADATA,
    BatchIdError,
    EmptyBatchError,
    ManifestError,
    S3ObjectEvent,
    batch_executions,
    batch_label,
    batch_prefix,
    classify_key,
    execution_arn,
    execution_name,
    read_manifest,
    replay_execution_name,
)
from ecom_pipeline.core.settings import TriggerSettings
from ecom_pipeline.core.tiers import BatchTooLargeError
from ecom_pipeline.core.upload import UNVERSIONED, Upload, current_versions, version_argument

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
        deferred: list[str] = []
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
            if outcome == "deferred":
                self.log.info("deferred", extra={"reason": detail["reason"], **fields})
                deferred.append(name)
            elif outcome == "started":
                fields["execution_name"] = detail.pop("execution_name")
                self.log.info("started", extra={**fields, **detail})
                started.append(fields["execution_name"])
            else:
                self.log.info("duplicate", extra={"reason": detail["reason"], **fields})
                duplicates.append(name)

        result = {"started": started, "duplicates": duplicates, "ignored": ignored}
        if refused:
            result["refused"] = refused
        if deferred:
            result["deferred"] = deferred
        self.log.info("done", extra={k: len(v) for k, v in result.items()})
        if first_error is not None:
            raise first_error
        return result

    def _start_batch(
        self, record: S3ObjectEvent, batch_id: str, name: str
    ) -> tuple[str, dict[str, Any]]:
        """("started", details), ("duplicate", {"reason": ...}) or ("deferred", {"reason": ...})."""
        arn = self.settings.state_machine_arn
        previous = batch_executions(self.sfn, arn, batch_id)
        uploaded = None
        if previous:
            last, status = previous[-1]
            started = self.sfn.describe_execution(executionArn=execution_arn(arn, last))[
                "startDate"
            ]
            uploaded = self._stored(record.bucket, record.key)
            if uploaded is None or self._taken_by(record, batch_id, last, started, uploaded):
                # the event of the marker that started it, delivered again (or the marker has
                # been settled into archive/ or rejected/ since)
                return "duplicate", {"reason": f"execution {last} exists ({status})"}
            if status == "RUNNING":
                # Uploaded again while `last` runs: `last` takes only the file versions it
                # listed, so the new upload waits in incoming/. Until `last` has settled its
                # files, its custody will store the marker again (a new event, back here);
                # after that (custody may have looked before this upload landed), the next
                # run starts here once `last` has ended.
                if not self._settled(record.bucket, batch_id, last):
                    self._remember_event_time(record, batch_id, last, uploaded)
                    return "deferred", {
                        "reason": f"uploaded again while execution {last} runs: the next run "
                        f"starts when {last} has settled its own files"
                    }
                self._wait_until_ended(execution_arn(arn, last))
                return self._start_batch(record, batch_id, name)
            # The batch was uploaded again after its last execution began: run it again, as
            # `ecom-pipeline replay` would (identical rows change nothing; corrections apply),
            # so no upload is left in incoming/ without an execution and a notice.
            name = replay_execution_name(batch_id, len(previous))

        folder = batch_prefix(batch_id, self.settings.incoming_prefix)
        pages = self.s3.get_paginator("list_object_versions").paginate(
            Bucket=record.bucket, Prefix=folder
        )
        files = current_versions(pages)
        objects = [(f.key, f.size) for f in files]
        # A folder with a manifest is the files it lists, whichever marker arrived: validation
        # and replay read the folder the same way.
        manifest_files = None
        manifest = next((f for f in files if f.key == folder + MANIFEST_MARKER), None)
        if manifest is not None:
            body = self.s3.get_object(
                Bucket=record.bucket, Key=manifest.key, **version_argument(manifest.version_id)
            )["Body"].read()
            manifest_files = read_manifest(body.decode("utf-8-sig"))
        # an upload made during a run and announced again by its custody keeps its own time
        received_at = ((uploaded or {}).get("Metadata") or {}).get(UPLOADED_AT_METADATA)
        # looked up on the module, so a test can give the plan other sizes
        plan = planning.plan_execution(
            record.bucket,
            batch_id,
            objects,
            manifest_files=manifest_files,
            incoming_prefix=self.settings.incoming_prefix,
            received_at=received_at or record.event_time,
            max_batch_bytes=self.settings.max_batch_bytes,
            kpi_retry_wait_s=self.settings.kpi_retry_wait_s,
        )
        upload = Upload(batch_id, name, _now(), tuple(files))
        try:
            # the run's exact file versions, written once: a second intake racing for the same
            # execution name must not replace the list the first one started with
            self.s3.put_object(
                Bucket=record.bucket,
                Key=run_upload_key(batch_id, name),
                Body=json.dumps(upload.as_document()).encode("utf-8"),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except Exception as error:
            if error_code(error) in ("PreconditionFailed", "ConditionalRequestConflict"):
                return "duplicate", {"reason": f"execution {name} is being started already"}
            raise
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
            "files": len(files),
        }

    def _taken_by(
        self,
        record: S3ObjectEvent,
        batch_id: str,
        run: str,
        started: datetime,
        marker: dict[str, Any],
    ) -> bool:
        """Whether the stored marker (its HeadObject answer) is the one ``run`` took.

        In a versioned bucket the run's upload names the marker version it took. Otherwise
        only the times tell, and S3 gives LastModified in whole seconds: a marker stored in the
        second the run started counts as the run's own.
        """
        version = marker.get("VersionId")
        taken = self._stored_json(record.bucket, run_upload_key(batch_id, run))
        if taken is not None and version not in (None, UNVERSIONED):
            return any(
                f.key == record.key and f.version_id == version
                for f in Upload.from_document(taken).files
            )
        return marker["LastModified"] <= started

    def _remember_event_time(
        self, record: S3ObjectEvent, batch_id: str, run: str, marker: dict[str, Any]
    ) -> None:
        """Keep the deferred marker's event time for its run: S3 gives it to the millisecond,
        the marker's LastModified only to the second (too coarse to order two uploads)."""
        version = marker.get("VersionId")
        if not version or not record.event_time:
            return
        self.s3.put_object(
            Bucket=record.bucket,
            Key=deferred_marker_key(batch_id, run, version),
            Body=json.dumps({"key": record.key, "event_time": record.event_time}).encode(),
            ContentType="application/json",
        )

    def _settled(self, bucket: str, batch_id: str, run: str) -> bool:
        return self._stored(bucket, run_settled_key(batch_id, run)) is not None

    def _wait_until_ended(self, arn: str) -> None:
        """Poll the execution until it ends; past the wait, raise (Lambda retries the event)."""
        deadline = time.monotonic() + self.settings.end_wait_s
        while self.sfn.describe_execution(executionArn=arn)["status"] == "RUNNING":
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"execution {arn} has settled its files but still runs after "
                    f"{self.settings.end_wait_s} s: the event is retried"
                )
            time.sleep(1)

    def _stored_json(self, bucket: str, key: str) -> Any | None:
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as error:
            if error_code(error) in NOT_FOUND_CODES:
                return None
            raise
        return json.loads(body)

    def _stored(self, bucket: str, key: str) -> dict[str, Any] | None:
        """The object's HeadObject answer (LastModified, Metadata), or None when it is gone."""
        try:
            return self.s3.head_object(Bucket=bucket, Key=key)
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
            Subject=f"ecom-pipeline FAILED: batch {batch_label(batch_id)}"[:SUBJECT_LIMIT],
            Message=json.dumps(notice),
        )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
