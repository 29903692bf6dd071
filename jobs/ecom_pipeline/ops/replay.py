"""``ecom-pipeline replay <batch_id>``: run a failed or killed batch again.

The batch's first execution is named after it (orchestration.execution_name), so a replay
needs another name: ``<name>-replay-<n>``, the next free n (deterministic: the same history
gives the same name, and two replays racing for it cannot both start). Before starting, the
batch's files are gathered back into ``incoming/<batch>/`` from wherever its last run left
them: ``rejected/<batch>/`` (after the user fixed them there) and, when an archive was
interrupted, what that run moved into ``archive/<batch>/`` (not what earlier runs archived).
A file already in ``incoming/`` wins (the user uploaded a fixed one there) and the other copy
stays where it is. The rejected batch's ``_reason.json``
goes to ``results/<batch>/rejections/<execution name>.json``.

Refused (nothing changes): an unsafe batch id, a batch with no execution and no files
(unknown), a batch with an execution still RUNNING, a batch whose last execution SUCCEEDED.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ecom_pipeline.adapters.storage import BucketStore
from ecom_pipeline.core.layout import (
    INCOMING,
    REASON_FILE,
    archive_prefix,
    incoming_prefix,
    reason_history_key,
    rejected_prefix,
    run_upload_key,
)
from ecom_pipeline.core.planning import (
    KPI_RETRY_WAIT_S,
    MANIFEST_MARKER,
    EmptyBatchError,
    batch_executions,
    execution_arn,
    execution_name,
    is_safe_batch_id,
    plan_execution,
    read_manifest,
    replay_execution_name,
)
from ecom_pipeline.core.upload import Upload
from ecom_pipeline.tasks.custody import move_objects

log = logging.getLogger(__name__)


class ReplayRefusedError(Exception):
    """The batch cannot be replayed now; the message says why and what to do."""


@dataclass
class ReplayResult:
    batch_id: str
    execution_name: str
    execution_arn: str
    previous: list[tuple[str, str]] = field(default_factory=list)  # (name, status), oldest first
    restored: list[str] = field(default_factory=list)  # keys moved back into incoming/
    kept: list[str] = field(default_factory=list)  # keys left where they were (see module doc)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _restore(
    store: BucketStore, batch_id: str, result: ReplayResult, last_started: datetime | None
) -> None:
    """Gather the batch's files back into incoming/: all of rejected/ (the user may have fixed
    them there), and of archive/ only what the last run moved there before it failed (an
    interrupted archive). What earlier, successful runs archived stays: their rows are applied,
    and bringing them back would apply them again over later corrections."""
    target = incoming_prefix(batch_id)
    rejected = rejected_prefix(batch_id)
    archive = archive_prefix(batch_id)
    archived = [
        f
        for f in store.current_versions(archive)
        if last_started is not None and _not_before(f.stored_at, last_started)
    ]
    sources = (
        (rejected, None),
        (archive, Upload(batch_id, result.execution_name, "", tuple(archived))),
    )
    for source, only in sources:
        report = move_objects(
            store, source, target, exclude=(REASON_FILE,), keep_existing=True, upload=only
        )
        result.restored.extend(report.moved)
        result.kept.extend(report.kept)
    reason = store.get_json_or_none(rejected + REASON_FILE)
    if reason is not None and not result.kept:
        old_execution = str(reason.get("execution_id") or "unknown").rsplit(":", 1)[-1]
        history = reason_history_key(batch_id, old_execution)
        store.copy(rejected + REASON_FILE, history)
        store.delete_object(rejected + REASON_FILE)


def _not_before(stored_at: str, moment: datetime) -> bool:
    """Whether an object stored at ``stored_at`` (ISO 8601) was stored at or after ``moment``,
    to the second (S3 keeps LastModified to the second)."""
    if not stored_at:
        return False
    stored = datetime.fromisoformat(stored_at.replace("Z", "+00:00"))
    return stored >= moment.replace(microsecond=0)


def _uploaded_at(sfn: Any, state_machine_arn: str, previous: list[tuple[str, str]]) -> str:
    """When the batch was uploaded, as its last execution's plan says ('' when unknown)."""
    if not previous:
        return ""
    described = sfn.describe_execution(
        executionArn=execution_arn(state_machine_arn, previous[-1][0])
    )
    try:
        return str(json.loads(described.get("input") or "{}").get("received_at") or "")
    except json.JSONDecodeError:
        return ""


def replay_batch(
    sfn: Any,
    store: BucketStore,
    state_machine_arn: str,
    batch_id: str,
    *,
    received_at: str | None = None,
    kpi_retry_wait_s: int = KPI_RETRY_WAIT_S,
) -> ReplayResult:
    if not is_safe_batch_id(batch_id):
        raise ReplayRefusedError(f"unsafe batch id {batch_id!r}")
    previous = batch_executions(sfn, state_machine_arn, batch_id)
    running = [name for name, status in previous if status == "RUNNING"]
    if running:
        raise ReplayRefusedError(
            f"batch {batch_id} has an execution still RUNNING ({running[0]}): wait for it to "
            f"end, or stop it (aws stepfunctions stop-execution --execution-arn "
            f"{execution_arn(state_machine_arn, running[0])}) and replay then"
        )
    if previous and previous[-1][1] == "SUCCEEDED":
        raise ReplayRefusedError(
            f"batch {batch_id} succeeded in execution {previous[-1][0]}: its KPIs are written "
            f"and its files are in {archive_prefix(batch_id)}; nothing to replay"
        )
    places = (incoming_prefix(batch_id), rejected_prefix(batch_id), archive_prefix(batch_id))
    present = {p: [o for o in store.list(p) if not o.key.endswith(REASON_FILE)] for p in places}
    if not any(present.values()):
        where = ", ".join(f"s3://{store.bucket}/{p}" for p in places)
        if not previous:
            raise ReplayRefusedError(
                f"unknown batch {batch_id}: no execution of it and no files under {where}"
            )
        raise ReplayRefusedError(f"batch {batch_id} has no files under {where}: nothing to replay")

    name = replay_execution_name(batch_id, len(previous)) if previous else execution_name(batch_id)
    result = ReplayResult(batch_id, name, execution_arn(state_machine_arn, name), previous=previous)
    last_started = (
        sfn.describe_execution(executionArn=execution_arn(state_machine_arn, previous[-1][0]))[
            "startDate"
        ]
        if previous
        else None
    )
    _restore(store, batch_id, result, last_started)
    folder = incoming_prefix(batch_id)
    files = store.current_versions(folder)
    objects = [(f.key, f.size) for f in files]
    manifest_files = None
    manifest = next((f for f in files if f.key == folder + MANIFEST_MARKER), None)
    if manifest is not None:
        body = store.get_bytes(manifest.key, version_id=manifest.version_id)
        manifest_files = read_manifest(body.decode("utf-8-sig"))
    try:
        plan = plan_execution(
            store.bucket,
            batch_id,
            objects,
            manifest_files=manifest_files,
            incoming_prefix=INCOMING,
            # the batch's rows keep the version of their upload, not of the replay
            received_at=received_at
            or _uploaded_at(sfn, state_machine_arn, previous)
            or datetime.now(UTC).isoformat(timespec="milliseconds"),
            kpi_retry_wait_s=kpi_retry_wait_s,
        )
    except EmptyBatchError as e:
        raise ReplayRefusedError(str(e)) from e
    # the replay takes exactly the versions listed here (core.upload), as intake's runs do
    listed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    store.put_json(
        run_upload_key(batch_id, name),
        Upload(batch_id, name, listed_at, tuple(files)).as_document(),
    )
    try:
        sfn.start_execution(stateMachineArn=state_machine_arn, name=name, input=json.dumps(plan))
    except sfn.exceptions.ExecutionAlreadyExists as e:
        raise ReplayRefusedError(
            f"execution {name} exists already: another replay of {batch_id} just started"
        ) from e
    log.info(
        "replay started",
        extra={
            "event": "replay_started",
            "batch_id": batch_id,
            "execution_name": name,
            "restored": len(result.restored),
        },
    )
    return result


def wait_for(sfn: Any, arn: str, *, timeout_s: float, poll_s: float = 2.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        described = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        if time.monotonic() > deadline:
            raise TimeoutError(f"execution {arn} still RUNNING after {timeout_s:.0f}s")
        time.sleep(poll_s)
