"""Planning a pipeline run from S3 events: which batch is complete and what to start for it.

Pure functions, no Spark, and AWS only through a client passed in: the trigger Lambda ships
the core folder, so this module imports nothing from the package outside ``core``.

A batch is the folder ``incoming/<batch_id>/``. It is complete when its marker arrives, either
``_SUCCESS`` (plan every file of the folder) or ``manifest.json`` (plan the files it lists).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_plus

from ecom_pipeline.core.contract import DATASET_ORDER, dataset_of_file
from ecom_pipeline.core.layout import INCOMING
from ecom_pipeline.core.tiers import GIB, BatchTooLargeError, choose_route, default_max_batch_bytes

DEFAULT_INCOMING_PREFIX = f"{INCOMING}/"
SUCCESS_MARKER = "_SUCCESS"
MANIFEST_MARKER = "manifest.json"
MARKERS = (SUCCESS_MARKER, MANIFEST_MARKER)
# A marker stored again by custody for an upload made during a run (tasks/custody.py) keeps
# when it was first stored here (S3 user metadata): the upload's time, its rows' version.
UPLOADED_AT_METADATA = "uploaded-at"
# The rule a batch breaks when a file's name fits no dataset (it would be silently left out).
INTAKE_RULE = "file name fits a dataset"
# How many of a batch's unrecognised files its plan names (it counts them all).
MAX_LISTED_UNRECOGNISED = 100
# The longest batch label: with "ecom-pipeline SUCCEEDED: batch " it keeps the notice's subject
# within SNS's 100 characters.
MAX_BATCH_LABEL = 60


def batch_label(batch_id: str) -> str:
    """The batch id as an SNS subject can carry it: printable ASCII (any other character
    becomes ?), at most MAX_BATCH_LABEL characters (a longer id is cut, ending in ...)."""
    label = "".join(c if " " <= c <= "~" else "?" for c in batch_id)
    if len(label) > MAX_BATCH_LABEL:
        label = label[: MAX_BATCH_LABEL - 3] + "..."
    return label


# How long the state machine waits before retrying a KPI task that exited 4 (a lock held too
# long, throttling that outlasted the job's own retries): the plan carries it, from the
# trigger's environment.
KPI_RETRY_WAIT_S = 15
KPI_RETRY_WAIT_ENV = "KPI_RETRY_WAIT_S"

# Step Functions execution names, restricted to what is safe everywhere (ARNs, CloudWatch).
EXECUTION_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_HASH_CHARS = 10
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class ManifestError(ValueError):
    """A batch's manifest.json that cannot be planned (not JSON of the right shape, or listing
    files the batch does not hold): the batch is refused, as the data's fault."""


class BatchIdError(ValueError):
    """A batch folder whose name Spark and Hadoop would read as a pattern or a URI part
    (``[ ] { } * ? ^ :``): its files could be read wrongly, so the batch is refused."""


# The rule such a batch breaks, in its FAILED intake notice.
BATCH_ID_RULE = "batch id is a plain folder name"
# Hadoop globs ( * ? [ ] { } ^ ) and the URI scheme separator, which a path segment cannot hold.
_PATTERN_CHARS = re.compile(r"[\[\]{}*?^:]")


def batch_id_problem(batch_id: str) -> str | None:
    """Why ``batch_id`` cannot name a batch the jobs read, or None when it can."""
    if not is_safe_batch_id(batch_id):
        return f"batch id {batch_id!r} is not a safe folder name (no /, \\, .., control characters)"
    found = sorted(set(_PATTERN_CHARS.findall(batch_id)))
    if found:
        return (
            f"batch id {batch_id!r} holds {' '.join(found)}, which Spark reads as a file pattern: "
            f"{BATCH_ID_RULE} (rename the folder)"
        )
    return None


class EmptyBatchError(ValueError):
    """A complete batch holding no file at all besides its marker: nothing to validate."""


# The rule such a batch breaks, in its FAILED intake notice.
EMPTY_BATCH_RULE = "batch holds dataset files"


@dataclass(frozen=True)
class S3ObjectEvent:
    bucket: str
    key: str  # decoded (S3 URL-encodes keys in notifications)
    size: int
    event_name: str  # e.g. "ObjectCreated:Put"
    event_time: str | None = None  # ISO 8601, when S3 stored the object


def parse_s3_event(event: dict[str, Any]) -> list[S3ObjectEvent]:
    """The ObjectCreated records of an S3 notification, in order; other S3 records are dropped.

    Raises ValueError when the event is not an S3 notification or a record lacks its bucket or key.
    """
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list) or not records:
        raise ValueError("not an S3 notification: the event has no 'Records' list")
    parsed = []
    for index, record in enumerate(records):
        if not isinstance(record, dict) or record.get("eventSource") != "aws:s3":
            source = record.get("eventSource") if isinstance(record, dict) else None
            raise ValueError(f"record {index} is not an S3 event (eventSource={source!r})")
        event_name = record.get("eventName")
        try:
            bucket = record["s3"]["bucket"]["name"]
            raw_key = record["s3"]["object"]["key"]
        except (KeyError, TypeError) as error:
            raise ValueError(f"S3 record {index} has no s3.bucket.name or s3.object.key") from error
        if not isinstance(bucket, str) or not isinstance(raw_key, str) or not bucket:
            raise ValueError(f"S3 record {index} has a malformed bucket or key")
        if not isinstance(event_name, str) or not event_name.startswith("ObjectCreated:"):
            continue
        size = record["s3"]["object"].get("size", 0)
        parsed.append(
            S3ObjectEvent(
                bucket=bucket,
                key=unquote_plus(raw_key),
                size=int(size or 0),
                event_name=event_name,
                event_time=record.get("eventTime"),
            )
        )
    return parsed


def normalise_prefix(prefix: str) -> str:
    """``incoming`` and ``incoming/`` both mean the folder ``incoming/``; empty is the root."""
    stripped = prefix.strip("/")
    return f"{stripped}/" if stripped else ""


def batch_prefix(batch_id: str, incoming_prefix: str = DEFAULT_INCOMING_PREFIX) -> str:
    return f"{normalise_prefix(incoming_prefix)}{batch_id}/"


def is_safe_batch_id(batch_id: str) -> bool:
    """A batch id usable as one folder name and in other keys: no path tricks."""
    return bool(
        batch_id
        and batch_id.strip() == batch_id
        and "/" not in batch_id
        and "\\" not in batch_id
        and ".." not in batch_id
        and batch_id != "."
        and not _CONTROL.search(batch_id)
    )


def classify_key(
    key: str, incoming_prefix: str = DEFAULT_INCOMING_PREFIX
) -> tuple[str | None, str | None]:
    """(batch_id, None) for a batch marker, else (None, why the key starts nothing)."""
    prefix = normalise_prefix(incoming_prefix)
    if not key.startswith(prefix):
        return None, f"outside the prefix {prefix!r}"
    parts = key[len(prefix) :].split("/")
    if parts[-1] not in MARKERS:
        return None, "not a batch marker (_SUCCESS or manifest.json)"
    if len(parts) != 2:
        return None, "marker not directly inside a batch folder"
    batch_id = parts[0]
    if not is_safe_batch_id(batch_id):
        return None, f"unsafe batch id {batch_id!r}"
    return batch_id, None


def batch_of_marker(key: str, incoming_prefix: str = DEFAULT_INCOMING_PREFIX) -> str | None:
    """The batch id of ``<prefix><batch_id>/_SUCCESS`` or ``.../manifest.json``, else None."""
    return classify_key(key, incoming_prefix)[0]


def execution_name(batch_id: str) -> str:
    """A deterministic Step Functions execution name for the batch.

    A batch id that is already a valid name is used as is. Any other id is sanitised and gets
    ``-`` plus 10 hex digits of its SHA-256, so distinct ids do not collide. The same batch
    always gets the same name, so a repeated event cannot start a second run.
    """
    if EXECUTION_NAME_PATTERN.match(batch_id):
        return batch_id
    digest = hashlib.sha256(batch_id.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    base = _NAME_UNSAFE.sub("-", batch_id).strip("-")[: 80 - _HASH_CHARS - 1]
    return f"{base}-{digest}" if base else f"batch-{digest}"


def replay_execution_name(batch_id: str, number: int) -> str:
    """The name of the batch's ``number``-th replay: ``<execution_name>-replay-<number>``, the
    base shortened (and made unique again with its hash) when the whole would pass 80 chars."""
    if number < 1:
        raise ValueError(f"replay numbers start at 1, not {number}")
    suffix = f"-replay-{number}"
    base = execution_name(batch_id)
    if len(base) + len(suffix) <= 80:
        return base + suffix
    digest = hashlib.sha256(batch_id.encode("utf-8")).hexdigest()[:_HASH_CHARS]
    return f"{base[: 80 - len(suffix) - _HASH_CHARS - 1]}-{digest}{suffix}"


def read_manifest(text: str) -> list[str]:
    """The files a ``manifest.json`` lists, relative to the batch folder.

    The manifest is ``{"files": ["orders/orders_part1.csv", ...]}``; raises ValueError when it is
    not valid JSON of that shape, is empty, repeats a file or names a path outside the batch.
    """
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise ManifestError(f"manifest.json is not valid JSON: {error}") from error
    files = document.get("files") if isinstance(document, dict) else None
    if not isinstance(files, list) or not files:
        raise ManifestError('manifest.json must be {"files": [...]} listing at least one file')
    seen: set[str] = set()
    for entry in files:
        if not isinstance(entry, str) or not _is_safe_relative(entry):
            raise ManifestError(f"manifest.json lists an invalid file path: {entry!r}")
        if entry in seen:
            raise ManifestError(f"manifest.json lists {entry!r} twice")
        seen.add(entry)
    return list(files)


def _is_safe_relative(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and "\\" not in path and all(p not in ("", ".", "..") for p in parts)


def plan_execution(
    bucket: str,
    batch_id: str,
    objects: Iterable[tuple[str, int]],
    *,
    manifest_files: Sequence[str] | None = None,
    incoming_prefix: str = DEFAULT_INCOMING_PREFIX,
    received_at: str | None = None,
    max_batch_bytes: int | None = None,
    kpi_retry_wait_s: int = KPI_RETRY_WAIT_S,
) -> dict[str, Any]:
    """The state machine's input for a complete batch.

    ``objects`` are the (key, size) of everything under ``<prefix><batch_id>/``. With
    ``manifest_files`` (from ``read_manifest``) only those files are planned and each must be in
    ``objects``. ``route`` says where the jobs run (``tiers.ECS_ROUTE``: Fargate tasks sized by
    ``tier``; ``tiers.EMR_ROUTE``: EMR Serverless job runs, for batches above the largest Fargate
    tier). Raises EmptyBatchError when the batch holds nothing but markers, and
    tiers.BatchTooLargeError when the batch's dataset files hold more than
    ``max_batch_bytes`` (default: tiers.default_max_batch_bytes()) or no tier takes it.
    """
    if not is_safe_batch_id(batch_id):
        raise ValueError(f"unsafe batch id {batch_id!r}")
    problem = batch_id_problem(batch_id)
    if problem is not None:
        raise BatchIdError(problem)
    folder = batch_prefix(batch_id, incoming_prefix)
    sizes: dict[str, int] = {}
    for key, size in objects:
        if not key.startswith(folder):
            raise ValueError(f"object {key!r} is not under the batch folder {folder!r}")
        if key.endswith("/"):
            continue  # a "folder" created by the console, not a file
        if size < 0:
            raise ValueError(f"object {key!r} has a negative size {size}")
        sizes[key[len(folder) :]] = int(size)

    if manifest_files is None:
        relatives = sorted(sizes)
    else:
        missing = [f for f in manifest_files if f not in sizes]
        if missing:
            raise ManifestError(
                f"manifest.json of batch {batch_id!r} lists files that are not in "
                f"s3://{bucket}/{folder}: {', '.join(missing)}"
            )
        relatives = list(manifest_files)

    datasets = {name: {"present": False, "bytes": 0, "files": 0} for name in DATASET_ORDER}
    unrecognised = []
    for relative in relatives:
        if relative in MARKERS:
            continue
        dataset = dataset_of_file(relative)
        if dataset is None:
            unrecognised.append(folder + relative)
            continue
        entry = datasets[dataset]
        entry["present"] = True
        entry["files"] += 1
        entry["bytes"] += sizes[relative]

    if not unrecognised and not any(entry["present"] for entry in datasets.values()):
        raise EmptyBatchError(
            f"batch {batch_id!r} holds no dataset file in s3://{bucket}/{folder} besides its "
            "marker (expected products*.csv, orders*.csv, order_items*.csv); nothing was started"
        )
    total_bytes = sum(entry["bytes"] for entry in datasets.values())
    limit = default_max_batch_bytes() if max_batch_bytes is None else max_batch_bytes
    if total_bytes > limit:
        raise BatchTooLargeError(
            f"batch {batch_id!r} holds {total_bytes} bytes ({total_bytes / GIB:.1f} GiB) of "
            f"dataset files, above the configured maximum of {limit} bytes "
            f"({limit / GIB:.1f} GiB, MAX_BATCH_BYTES); split it into smaller batches"
        )
    route, tier = choose_route(total_bytes)
    return {
        "batch_id": batch_id,
        # the id in the notices' subjects (the body carries batch_id whole)
        "batch_label": batch_label(batch_id),
        "bucket": bucket,
        "datasets": datasets,
        "total_bytes": total_bytes,
        "route": route,
        "tier": tier.as_input(),
        # the execution's input is bounded (Step Functions takes 256 KiB): the first names and
        # how many there are
        "unrecognised_files": unrecognised[:MAX_LISTED_UNRECOGNISED],
        "unrecognised_count": len(unrecognised),
        # when the batch was complete (the marker's event time): the notices' durations start here
        "received_at": received_at or "",
        "kpi_retry_wait_s": kpi_retry_wait_s,
    }


MAX_REPLAYS = 1000


def batch_executions(sfn: Any, state_machine_arn: str, batch_id: str) -> list[tuple[str, str]]:
    """(name, status) of the batch's execution and its replays, oldest first (``sfn``: a
    Step Functions client; one DescribeExecution per execution, plus one)."""
    found = []
    names = [execution_name(batch_id)] + [
        replay_execution_name(batch_id, n) for n in range(1, MAX_REPLAYS + 1)
    ]
    for name in names:
        try:
            described = sfn.describe_execution(executionArn=execution_arn(state_machine_arn, name))
        except sfn.exceptions.ExecutionDoesNotExist:
            break
        found.append((name, described["status"]))
    return found


def kpi_retry_wait_from(environ: Mapping[str, str]) -> int:
    """KPI_RETRY_WAIT_S from ``environ`` (seconds, 1 to 3600), or the default."""
    text = environ.get(KPI_RETRY_WAIT_ENV) or str(KPI_RETRY_WAIT_S)
    try:
        seconds = int(text)
    except ValueError as error:
        raise ValueError(f"{KPI_RETRY_WAIT_ENV} must be whole seconds, not {text!r}") from error
    if not 1 <= seconds <= 3600:
        raise ValueError(f"{KPI_RETRY_WAIT_ENV} must be 1 to 3600 seconds, not {seconds}")
    return seconds


def execution_arn(state_machine_arn: str, name: str) -> str:
    """The ARN an execution ``name`` of a standard state machine gets."""
    parts = state_machine_arn.split(":")
    if len(parts) != 7 or parts[0] != "arn" or parts[2] != "states" or parts[5] != "stateMachine":
        raise ValueError(f"not a state machine ARN: {state_machine_arn!r}")
    return ":".join([*parts[:5], "execution", parts[6], name])
