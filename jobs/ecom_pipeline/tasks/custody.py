"""Custody of a batch's raw files: they move, they are never lost.

A batch arrives in ``incoming/<batch>/``. When its execution ends, the state machine runs
``ecom-pipeline move-batch`` as a task on the terminal path:

- accepted (KPIs written): every file moves to ``archive/<batch>/``;
- refused by intake or validation (the data's fault): every file moves to
  ``rejected/<batch>/`` and ``_reason.json`` is written beside them;
- failed for any other reason (a crashed or killed job, an AWS error): nothing moves, the
  batch stays in ``incoming/`` for ``ecom-pipeline replay`` (see replay.py).

A move is copy, verify, then delete, one object at a time, so an interruption leaves each file
in its old place, its new place or both, never in neither; running the move again finishes it.
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
    incoming_prefix,
    rejected_prefix,
    result_key,
)
from ecom_pipeline.core.planning import INTAKE_RULE, MARKERS
from ecom_pipeline.core.settings import Settings

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


def verify_copy(store: Store, source_key: str, dest_key: str) -> None:
    """Raise CustodyError unless dest_key holds exactly the bytes of source_key."""
    source, dest = store.head(source_key), store.head(dest_key)
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
    if store.sha256(source_key) != store.sha256(dest_key):
        raise CustodyError(
            f"copy of {source_key} to {dest_key} differs from the original: original kept"
        )


def move_objects(
    store: Store,
    source_prefix: str,
    dest_prefix: str,
    *,
    exclude: tuple[str, ...] = (),
    keep_existing: bool = False,
) -> MoveReport:
    """Move every object under source_prefix to dest_prefix (same relative names).

    ``keep_existing``: when the target already exists, leave both as they are (the target is
    newer, e.g. a fixed file the user uploaded) instead of replacing it.
    """
    report = MoveReport(source_prefix, dest_prefix)
    objects = {o.key[len(source_prefix) :]: o for o in store.list(source_prefix)}
    for relative in sorted(objects, key=_marker_last):
        if relative in exclude or relative.endswith("/"):
            continue
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
        store.copy(source_key, dest_key)
        verify_copy(store, source_key, dest_key)
        store.delete_object(source_key)
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
    store: Store, batch_id: str, stage: str, execution_id: str | None
) -> dict[str, Any]:
    """Move the batch from incoming/ to rejected/ and write rejected/<batch>/_reason.json."""
    if stage not in REJECTION_STAGES:
        raise ValueError(f"unknown rejection stage {stage!r}: one of {REJECTION_STAGES}")
    source, dest = incoming_prefix(batch_id), rejected_prefix(batch_id)
    report = move_objects(store, source, dest)
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


def archive_batch(store: Store, batch_id: str) -> dict[str, Any]:
    """Move an accepted batch from incoming/ to archive/."""
    dest = archive_prefix(batch_id)
    report = move_objects(store, incoming_prefix(batch_id), dest)
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
    """The ``move-batch`` job: settle a batch's files (see the module docstring)."""
    logs.bind(batch_id=batch_id, job="move-batch")
    logs.unbind("dataset")
    store = open_store(config)
    if destination == "archive":
        return archive_batch(store, batch_id)
    if destination == "rejected":
        if stage is None:
            raise ValueError("--stage is required with --to rejected")
        return reject_batch(store, batch_id, stage, execution_id)
    raise ValueError(f"unknown destination {destination!r}: one of {DESTINATIONS}")
