"""Custody of a batch's raw files: they move, they are never lost.

A batch arrives in ``incoming/<batch>/``. When its execution ends, the state machine runs
``ecom-pipeline move-batch`` as a task on the terminal path:

- accepted (KPIs written): every file moves to ``archive/<batch>/``;
- refused by intake or validation (the data's fault): every file moves to
  ``rejected/<batch>/`` and ``_reason.json`` is written beside them;
- failed for any other reason (a crashed or killed job, an AWS error): nothing moves, the
  batch stays in ``incoming/`` for ``ecom-pipeline replay`` (see replay.py).

A run moves exactly the file versions it took (its upload, ``core.upload``, listed by intake
when it planned the run): a file uploaded or replaced during the run stays in ``incoming/``, and
once the run's own files are settled, a marker still there is announced to intake again, which
starts the batch's next run (:func:`announce_waiting_upload`).

A move is copy, verify, then delete, one object at a time, so an interruption leaves each file
in its old place, its new place or both, never in neither; running the move again finishes it.
The bucket is versioned and nobody may erase a version: the delete only hides the moved version,
and a newer upload that the delete would hide is made current again.
The copy is verified against the original before the original is removed: same size and same
ETag, or, when the ETags cannot be compared (multipart copies, SSE-KMS), the same SHA-256 of
the content read back from both.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ecom_pipeline.adapters.storage import Store, open_store
from ecom_pipeline.core import logs
from ecom_pipeline.core.contract import DATASET_ORDER, dataset_of_file
from ecom_pipeline.core.layout import (
    REASON_FILE,
    archive_prefix,
    deferred_marker_key,
    incoming_prefix,
    rejected_prefix,
    result_key,
    run_settled_key,
    run_upload_key,
)
from ecom_pipeline.core.planning import INTAKE_RULE, MARKERS, UPLOADED_AT_METADATA
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.core.upload import Upload, UploadedFile, hidden_newer_version
from ecom_pipeline.read.dashboard import publish_rejection_banner_after_move

log = logging.getLogger(__name__)

DESTINATIONS = ("archive", "rejected")
REJECTION_STAGES = ("intake", "validation")


class CustodyError(RuntimeError):
    """A copy did not match its original: the original is kept."""


@dataclass
class MoveReport:
    source: str
    destination: str
    moved: list[str] = field(default_factory=list)  # destination keys
    kept: list[str] = field(default_factory=list)  # source keys left because the target exists

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _marker_last(relative: str) -> tuple[bool, str]:
    """Data files first, markers last: a marker in a folder means its files are there."""
    return relative in MARKERS, relative


def verify_copy(
    store: Store, source_key: str, dest_key: str, *, version_id: str | None = None
) -> None:
    """Raise CustodyError unless dest_key holds exactly the bytes of source_key (of its
    version ``version_id``, when given)."""
    source, dest = store.head(source_key, version_id=version_id), store.head(dest_key)
    if source is None or dest is None:
        missing = source_key if source is None else dest_key
        raise CustodyError(f"copy of {source_key} not verified: {missing} does not exist")
    if source["ContentLength"] != dest["ContentLength"]:
        raise CustodyError(
            f"copy of {source_key} to {dest_key} has {dest['ContentLength']} bytes, "
            f"the original {source['ContentLength']}: original kept"
        )
    if source.get("ETag") and source.get("ETag") == dest.get("ETag"):
        return
    if store.sha256(source_key, version_id=version_id) != store.sha256(dest_key):
        raise CustodyError(
            f"copy of {source_key} to {dest_key} differs from the original: original kept"
        )


def retire(store: Store, file: UploadedFile) -> None:
    """Take ``file`` out of its folder once its copy is verified. In a versioned bucket the
    delete puts a marker on top and the version itself stays (the bucket policy lets nobody
    erase one); an upload that landed between the look and the delete, hidden by that marker,
    is made current again by copying it onto itself, so it waits for the next run."""
    store.delete_object(file.key)
    versions, markers = store.key_versions(file.key)
    hidden = hidden_newer_version(versions, markers, file)
    if hidden is not None:
        store.restore(file.key, hidden)
        log.warning(
            "%s was uploaded again while it moved: the new upload stays for the next run",
            file.key,
            extra={"event": "custody_kept_newer", "key": file.key},
        )


def move_objects(
    store: Store,
    source_prefix: str,
    dest_prefix: str,
    *,
    exclude: tuple[str, ...] = (),
    keep_existing: bool = False,
    upload: Upload | None = None,
) -> MoveReport:
    """Move every object under source_prefix to dest_prefix (same relative names): the file
    versions of ``upload`` (a run's), else the objects there now. A file replaced since it was
    listed stays where it is, in its new version.

    ``keep_existing``: when the target already exists, leave both as they are (the target is
    newer, e.g. a fixed file the user uploaded) instead of replacing it.
    """
    report = MoveReport(source_prefix, dest_prefix)
    listed = upload.files if upload is not None else store.current_versions(source_prefix)
    objects = {f.key[len(source_prefix) :]: f for f in listed if f.key.startswith(source_prefix)}
    for relative in sorted(objects, key=_marker_last):
        if relative in exclude or relative.endswith("/"):
            continue
        file = objects[relative]
        source_key, dest_key = source_prefix + relative, dest_prefix + relative
        if keep_existing and store.head(dest_key) is not None:
            log.warning(
                "kept %s: %s exists already",
                source_key,
                dest_key,
                extra={"event": "custody_kept", "key": source_key},
            )
            report.kept.append(source_key)
            continue
        current = store.head(source_key)
        is_current = current is not None and file.is_version_of(current)
        if file.version_id is None and not is_current:
            # no versions to go back to: moved by an earlier try, or replaced since listed
            if current is not None:
                report.kept.append(source_key)
            continue
        store.copy(source_key, dest_key, version_id=file.version_id)
        verify_copy(store, source_key, dest_key, version_id=file.version_id)
        if is_current:
            retire(store, file)
        elif current is not None:
            log.warning(
                "%s was replaced during the run: the new upload stays for the next run",
                source_key,
                extra={"event": "custody_kept_newer", "key": source_key},
            )
            report.kept.append(source_key)
        report.moved.append(dest_key)
    return report


def _validation_reason(
    store: Store, batch_id: str, datasets: list[str], execution_id: str | None
) -> dict[str, Any]:
    """Per dataset of the batch: its status and failed rules in this execution."""
    reason: dict[str, Any] = {}
    for dataset in datasets:
        result = store.get_json_or_none(result_key(batch_id, dataset))
        if result is None or (execution_id and result.get("execution_id") != execution_id):
            reason[dataset] = {"status": "NOT_VALIDATED"}
            continue
        reason[dataset] = {
            "status": "PASSED" if result["success"] else "FAILED",
            "files": result["files"],
            "rows": result["rows"],
            "failed_rules": [
                {
                    name: rule[name]
                    for name in (
                        "rule",
                        "file",
                        "column",
                        "unexpected_count",
                        "element_count",
                        "examples",
                        "details",
                        "error",
                        "message",
                    )
                    if name in rule
                }
                for rule in result["failed_rules"]
            ],
            "data_docs": result.get("data_docs"),
        }
    return reason


def reject_batch(
    store: Store,
    batch_id: str,
    stage: str,
    execution_id: str | None,
    *,
    upload: Upload | None = None,
) -> dict[str, Any]:
    """Move the batch (its run's ``upload``, else all of incoming/<batch>/) to rejected/ and
    write rejected/<batch>/_reason.json."""
    if stage not in REJECTION_STAGES:
        raise ValueError(f"unknown rejection stage {stage!r}: one of {REJECTION_STAGES}")
    source, dest = incoming_prefix(batch_id), rejected_prefix(batch_id)
    report = move_objects(store, source, dest, upload=upload)
    files = sorted(o.key for o in store.list(dest) if not o.key.endswith(REASON_FILE))
    relatives = [key[len(dest) :] for key in files]
    data_files = [r for r in relatives if r not in MARKERS and not r.startswith("_")]
    reason: dict[str, Any] = {
        "batch_id": batch_id,
        "stage": stage,
        "execution_id": execution_id,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "files": files,
    }
    if stage == "intake":
        unrecognised = [dest + r for r in data_files if dataset_of_file(r) is None]
        reason["rule"] = INTAKE_RULE
        reason["unrecognised_files"] = unrecognised
        reason["message"] = (
            f"{len(unrecognised)} file(s) fit no dataset (expected products*.csv, orders*.csv, "
            f"order_items*.csv): {', '.join(unrecognised)}"
        )
    else:
        present = {dataset_of_file(r) for r in data_files}
        datasets = [d for d in DATASET_ORDER if d in present]
        reason["datasets"] = _validation_reason(store, batch_id, datasets, execution_id)
    store.put_json(dest + REASON_FILE, reason)
    log.info(
        "batch rejected: %d files moved to %s",
        len(report.moved),
        dest,
        extra={"event": "batch_rejected", "stage": stage, "files": len(files)},
    )
    return {"moved": report.moved, "reason": dest + REASON_FILE}


def archive_batch(store: Store, batch_id: str, *, upload: Upload | None = None) -> dict[str, Any]:
    """Move an accepted batch (its run's ``upload``, else all of incoming/<batch>/) to
    archive/."""
    dest = archive_prefix(batch_id)
    report = move_objects(store, incoming_prefix(batch_id), dest, upload=upload)
    log.info(
        "batch archived: %d files moved to %s",
        len(report.moved),
        dest,
        extra={"event": "batch_archived", "files": len(report.moved)},
    )
    return {"moved": report.moved}


def move_batch(
    config: Settings,
    batch_id: str,
    destination: str,
    *,
    stage: str | None = None,
    execution_id: str | None = None,
) -> dict[str, Any]:
    """The ``move-batch`` job: settle the run's files (see the module docstring), then start
    the batch's next run when it was uploaded again meanwhile."""
    logs.bind(batch_id=batch_id, job="move-batch")
    logs.unbind("dataset")
    if destination not in DESTINATIONS:
        raise ValueError(f"unknown destination {destination!r}: one of {DESTINATIONS}")
    if destination == "rejected" and stage is None:
        raise ValueError("--stage is required with --to rejected")
    store = open_store(config)
    run = config.run_id
    planned = store.get_json_or_none(run_upload_key(batch_id, run))
    upload = Upload.from_document(planned) if planned is not None else None
    if destination == "archive":
        result = archive_batch(store, batch_id, upload=upload)
    else:
        result = reject_batch(store, batch_id, str(stage), execution_id, upload=upload)
        # the dashboard shows the KPIs of the last successful run: say that this batch, newer
        # than them, was rejected (its reason was just written; no KPI run will see it)
        result["dashboard"] = publish_rejection_banner_after_move(store, batch_id)
    if upload is not None:
        result["announced"] = announce_waiting_upload(store, upload)
    return result


def announce_waiting_upload(store: Store, upload: Upload) -> list[str]:
    """After the run's own files are settled: a marker still in incoming/<batch>/ is an upload
    made during the run, whose event intake set aside while the run was going on. Store each
    such marker again (a copy onto itself): its new event reaches intake, which starts the
    batch's next run once this one has ended. The copy keeps when the marker was first stored
    (``UPLOADED_AT_METADATA``: the event time intake kept, else the stored time): the next
    run's rows carry that time, not the announcement's. A marker the run did not take was stored
    after the run listed its files, so that time is never earlier than the listing: a stored time
    in whole seconds must not put the newer upload's rows behind the run's own.

    Only S3 is called: the tasks' network may reach nothing else (see the template's VPC
    endpoints). The settled mark is written before looking, so intake leaves a marker that lands
    after the look to the run's end as well (core/intake.py). Returns the markers stored again.
    """
    batch_id, run = upload.batch_id, upload.run
    store.put_json(
        run_settled_key(batch_id, run), {"run": run, "time": datetime.now(UTC).isoformat()}
    )
    folder = incoming_prefix(batch_id)
    announced = []
    for marker in store.current_versions(folder):
        if marker.key[len(folder) :] not in MARKERS:
            continue
        head = store.head(marker.key, version_id=marker.version_id)
        if head is None:
            continue
        deferred = store.get_json_or_none(
            deferred_marker_key(batch_id, run, marker.version_id or "null")
        )
        uploaded_at = (
            (head.get("Metadata") or {}).get(UPLOADED_AT_METADATA)
            or (deferred or {}).get("event_time")
            or marker.stored_at
        )
        uploaded_at = _not_before(uploaded_at, upload.listed_at)
        store.restore(marker.key, marker.version_id, metadata={UPLOADED_AT_METADATA: uploaded_at})
        announced.append(marker.key)
    if announced:
        log.info(
            "batch %s was uploaded again during this run: its marker is stored again for "
            "intake, which starts the next run when this one has ended",
            batch_id,
            extra={"event": "next_run_announced", "markers": announced},
        )
    return announced


def _not_before(moment: str, earliest: str) -> str:
    """``moment``, or ``earliest`` when that is later (both ISO 8601; an empty one is unknown)."""
    if not moment or not earliest:
        return moment or earliest
    parsed, bound = (datetime.fromisoformat(t.replace("Z", "+00:00")) for t in (moment, earliest))
    return earliest if bound > parsed else moment
