"""The bucket's layout: every folder and key the pipeline reads or writes, named once.

Pure Python: the ASL, the Lambda's planning, the stores and the jobs all take their keys from
here.
"""

from __future__ import annotations

INCOMING = "incoming"
STAGING = "staging"
CURATED = "curated"
RESULTS = "results"
DATA_DOCS = "data-docs"
# Custody of a batch's raw files: they arrive in incoming/<batch>/ and, once the batch is
# settled, move (never deleted) to archive/<batch>/ (accepted) or rejected/<batch>/ (refused,
# with REASON_FILE beside them). A batch that failed for a reason that is not the data's fault
# (a crashed job, an AWS error) stays in incoming/ for `ecom-pipeline replay`.
REJECTED = "rejected"
ARCHIVE = "archive"
REASON_FILE = "_reason.json"


def incoming_prefix(batch_id: str) -> str:
    return f"{INCOMING}/{batch_id}/"


def rejected_prefix(batch_id: str) -> str:
    return f"{REJECTED}/{batch_id}/"


def archive_prefix(batch_id: str) -> str:
    return f"{ARCHIVE}/{batch_id}/"


def run_staging_prefix(batch_id: str, run_id: str) -> str:
    """Where one run (one execution) of a batch stages its accepted rows: apart from every
    other run's, so a KPI run applies exactly the rows its own upload brought."""
    return f"{STAGING}/{batch_id}/{run_id}/"


def staging_prefix(batch_id: str, run_id: str, dataset: str) -> str:
    return f"{run_staging_prefix(batch_id, run_id)}{dataset}/"


def curated_prefix(dataset: str) -> str:
    return f"{CURATED}/{dataset}/"


def curated_journal_key() -> str:
    """The journal of a curated replacement in progress (outside every dataset's prefix)."""
    return f"{CURATED}/_journal.json"


def curated_commit_key() -> str:
    """The last committed curated replacement (batch and time): readers without the lock see a
    replacement finish by its change."""
    return f"{CURATED}/_committed.json"


CURATED_GENERATIONS = f"{CURATED}/_new/"


def curated_generation_prefix(batch_id: str) -> str:
    """Where Spark writes a run's new curated partitions in direct I/O mode before the journal
    copies them into place (outside every dataset's prefix, so no reader sees them)."""
    return f"{CURATED_GENERATIONS}{batch_id}/"


def is_side_file(relative: str) -> bool:
    """Spark's _SUCCESS, _temporary/ and .crc side files (and folder markers) are not data."""
    return relative.endswith("/") or any(
        part.startswith((".", "_")) for part in relative.split("/")
    )


def result_key(batch_id: str, dataset: str) -> str:
    return f"{RESULTS}/{batch_id}/{dataset}.json"


def kpi_result_key(batch_id: str) -> str:
    return f"{RESULTS}/{batch_id}/kpis.json"


def run_upload_key(batch_id: str, run_id: str) -> str:
    """The exact file versions one run of a batch takes (``core.upload.Upload``)."""
    return f"{RESULTS}/{batch_id}/runs/{run_id}/upload.json"


def run_settled_key(batch_id: str, run_id: str) -> str:
    """Written by custody before it looks for a newer upload of the batch: from then on, intake
    leaves a newer upload to the run's end instead of to its custody (see core.intake)."""
    return f"{RESULTS}/{batch_id}/runs/{run_id}/settled.json"


def deferred_marker_key(batch_id: str, run_id: str, version_id: str) -> str:
    """When intake heard of a marker stored while the run went on (its event time): the time
    the next run's rows carry, once custody has announced the marker again."""
    return f"{RESULTS}/{batch_id}/runs/{run_id}/deferred/{version_id}.json"


def reason_history_key(batch_id: str, execution_name: str) -> str:
    """Where a replay keeps a rejected batch's _reason.json once its files went back."""
    return f"{RESULTS}/{batch_id}/rejections/{execution_name}.json"


def data_docs_prefix(batch_id: str, dataset: str) -> str:
    return f"{DATA_DOCS}/{batch_id}/{dataset}/"


# A run-local or demo export folder: every notice the runs published, a JSON object a line
# ({"subject": ..., "message": <the notice>}), read back by `ecom-pipeline runs --from-export`.
NOTICES_EXPORT_FILE = "notifications.jsonl"
