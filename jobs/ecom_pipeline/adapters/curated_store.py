"""The curated store's files: one committed version for readers without the lock, and the
journal that replaces partitions and recovers an interrupted replacement.

A replacement journals what comes and what goes (``curated/_journal.json``), uploads (or, in
direct I/O, copies from the run's generation folder), commits, deletes the replaced objects and
clears the journal; ``curated/_committed.json`` marks each commit. A run that finds a journal
first rolls it back (not committed) or forward (committed), so the store never holds a
partition twice. Readers that hold no lock read :func:`curated_snapshot`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime
from pathlib import Path, PurePosixPath

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.types import StructType, TimestampType

from ecom_pipeline.adapters.storage import Store, data_keys
from ecom_pipeline.core.contract import VERSION_COLUMN, Dataset
from ecom_pipeline.core.layout import (
    CURATED_GENERATIONS,
    curated_commit_key,
    curated_generation_prefix,
    curated_journal_key,
    curated_prefix,
    is_side_file,
)
from ecom_pipeline.transforms.ingest import parquet_options, typed_schema

log = logging.getLogger(__name__)

# copies in flight at once when direct I/O moves a run's new curated files into place
COPY_THREADS = 16

# raises LockLostError unless the curated-store lease is still ours (Lease.fence)
Fence = Callable[[], None]
# (dataset, its new rows, the dates replaced, or None for the whole dataset)
CuratedPart = tuple[Dataset, DataFrame, "list[date] | None"]


def curated_schema(dataset: Dataset) -> StructType:
    """The schema of a dataset's rows in the curated store: orders and items carry the
    ``order_date`` they are partitioned by, products are not partitioned; every row carries
    its version (contract.VERSION_COLUMN)."""
    schema = typed_schema(dataset, with_order_date=dataset.name != "products")
    return schema.add(VERSION_COLUMN, TimestampType(), nullable=True)


def read_curated(spark: SparkSession, local_dir: Path, dataset: Dataset) -> DataFrame:
    """The curated store of a dataset staged to local_dir (empty frame if nothing yet)."""
    schema = curated_schema(dataset)
    if not any(local_dir.rglob("*.parquet")):
        return spark.createDataFrame([], schema)
    return spark.read.schema(schema).parquet(str(local_dir))


class CuratedBusyError(RuntimeError):
    """The curated store kept changing while it was listed: safe to retry (exit 4)."""


SNAPSHOT_ATTEMPTS = 5


def curated_snapshot(store: Store, dataset: Dataset) -> list[str]:
    """The keys of a dataset's committed curated rows, for a reader that holds no lock (the
    validation's reference checks): what the store lists, less what an unfinished replacement
    adds (its journal uncommitted: the new files) or is about to remove (committed: the replaced
    ones). The journal and the last commit are read before and after the listing, and it is
    listed again when either changed, so one listing never mixes two versions of a partition."""
    prefix = curated_prefix(dataset.name)

    def marks() -> tuple[object, object]:
        return store.get_json_or_none(curated_journal_key()), store.get_json_or_none(
            curated_commit_key()
        )

    for _ in range(SNAPSHOT_ATTEMPTS):
        before = marks()
        keys = [key for key in data_keys(store, prefix) if key.endswith(".parquet")]
        if marks() == before:
            break
    else:
        raise CuratedBusyError(
            f"{prefix} changed during each of {SNAPSHOT_ATTEMPTS} listings; try again"
        )
    journal = before[0]
    if isinstance(journal, dict):
        hidden = journal.get("stale" if journal.get("state") == "committed" else "new", [])
        keys = [key for key in keys if key not in set(hidden)]
    return keys


def read_curated_at(spark: SparkSession, store: Store, dataset: Dataset) -> DataFrame:
    """The committed curated rows of a dataset read in place at the store's URIs (direct I/O;
    empty frame if nothing yet); see :func:`curated_snapshot`."""
    schema = curated_schema(dataset)
    keys = curated_snapshot(store, dataset)
    if not keys:
        return spark.createDataFrame([], schema)
    base = store.uri(curated_prefix(dataset.name))
    return (
        spark.read.schema(schema)
        .option("basePath", base)  # keeps order_date from the partition folders
        .parquet(*[store.uri(key) for key in keys])
    )


def download_curated(store: Store, dataset: Dataset, root: Path) -> Path:
    """The committed curated rows of a dataset downloaded below ``root`` (staged I/O), laid out
    as in the store; returns the dataset's folder there. See :func:`curated_snapshot`."""
    store.download(curated_snapshot(store, dataset), root)
    folder = root / PurePosixPath(curated_prefix(dataset.name))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_curated(
    frame: DataFrame, dataset: Dataset, local: Path | str, dates: list[date] | None
) -> None:
    """Write new curated rows of ``dataset`` as Parquet to a local folder or a URI
    (partitioned by order_date if dated)."""
    writer = frame.write.mode("overwrite").options(**parquet_options(dataset))
    if dates is not None:
        writer = writer.partitionBy("order_date")
    writer.parquet(str(local))


def stale_keys(store: Store, prefix: str, dates: list[date] | None) -> list[str]:
    """The objects a rewrite of ``prefix`` (whole, or the partitions of ``dates``) replaces."""
    if dates is None:
        return [o.key for o in store.list(prefix)]
    return [o.key for d in dates for o in store.list(f"{prefix}order_date={d.isoformat()}/")]


def replace_partitions(
    store: Store, parts: list[CuratedPart], local: Path, batch_id: str, fence: Fence
) -> None:
    """Replace the curated partitions of ``parts`` under the journal, from the new rows
    written to ``local``/<dataset> (the KPI job's write_new_state): journal what comes and
    goes, upload, commit, delete, clear. ``fence`` runs before every change."""
    replaced: list[tuple[Path, str, list[str]]] = []  # local folder, prefix, stale keys
    for dataset, _, dates in parts:
        name = dataset.name
        prefix = curated_prefix(name)
        replaced.append((local / name, prefix, stale_keys(store, prefix, dates)))
    if not replaced:
        return
    uploads = [
        (path, key) for folder, prefix, _ in replaced for path, key in _files(folder, prefix)
    ]
    new_keys = [key for _, key in uploads]
    stale = [key for _, _, keys in replaced for key in keys if key not in set(new_keys)]
    journal = {"batch_id": batch_id, "state": "uploading", "new": new_keys, "stale": stale}
    fence()
    store.put_json(curated_journal_key(), journal)
    for path, key in uploads:
        fence()
        store.upload_file(path, key)
    fence()
    store.put_json(curated_journal_key(), journal | {"state": "committed"})
    record_commit(store, batch_id)
    fence()
    store.delete(stale)
    store.delete([curated_journal_key()])


def record_commit(store: Store, batch_id: str) -> None:
    """Mark a committed replacement, so a reader without the lock that listed the store while
    it was replaced sees the change (curated_snapshot)."""
    store.put_json(
        curated_commit_key(),
        {"batch_id": batch_id, "at": datetime.now(UTC).isoformat(timespec="milliseconds")},
    )


def clear_generations(store: Store, batch_id: str) -> str:
    """Delete every generation folder a run left before it wrote its journal (it died
    writing: not data; the lock is held, so no other run writes one now) and return this
    run's (``curated/_new/<batch>/``), where direct I/O writes its new curated rows."""
    store.delete([o.key for o in store.list(CURATED_GENERATIONS)])
    return curated_generation_prefix(batch_id)


def new_rows_location(store: Store, batch_id: str, local: Path | None) -> Callable[[str], str]:
    """Where the KPI job's write_new_state writes a dataset's new curated rows: ``local``/<dataset>,
    or with direct I/O (``local`` None) the run's generation folder outside every dataset's
    prefix. Nothing in the curated store changes until the journal moves them in."""
    if local is not None:
        return lambda name: str(local / name)
    generation = clear_generations(store, batch_id)
    return lambda name: store.uri(f"{generation}{name}/")


def replace_partitions_in_place(
    store: Store, parts: list[CuratedPart], batch_id: str, fence: Fence
) -> None:
    """:func:`replace_partitions` in direct I/O mode: Spark wrote the new partitions to the run's
    generation folder (``curated/_new/<batch>/<dataset>/``, the KPI job's write_new_state); the
    journal lists the keys they get under the dataset's prefix, the store copies them there,
    commits, deletes the replaced objects and the generation, and clears the journal."""
    generation = curated_generation_prefix(batch_id)
    copies: list[tuple[str, str]] = []  # generation key -> key in the store
    stale: list[str] = []
    for dataset, _, dates in parts:
        name = dataset.name
        prefix = curated_prefix(name)
        folder = f"{generation}{name}/"
        copies += [(key, prefix + key[len(folder) :]) for key in data_keys(store, folder)]
        stale += stale_keys(store, prefix, dates)
    if not copies and not stale:
        return
    new_keys = [key for _, key in copies]
    stale = [key for key in stale if key not in set(new_keys)]
    journal = {
        "batch_id": batch_id,
        "state": "uploading",
        "new": new_keys,
        "stale": stale,
        "generation": generation,
    }
    fence()
    store.put_json(curated_journal_key(), journal)

    def fenced_copy(source: str, dest: str) -> None:
        fence()
        store.copy(source, dest)

    # Spark writes a file per task and date: copy them side by side (boto3 clients are
    # thread-safe); the commit waits for every copy, and any failure leaves it uncommitted
    with ThreadPoolExecutor(max_workers=COPY_THREADS) as pool:
        for done in [pool.submit(fenced_copy, source, dest) for source, dest in copies]:
            done.result()
    fence()
    store.put_json(curated_journal_key(), journal | {"state": "committed"})
    record_commit(store, batch_id)
    fence()
    store.delete(stale)
    store.delete([o.key for o in store.list(generation)])
    store.delete([curated_journal_key()])


def recover_curated(store: Store) -> str | None:
    """Finish or undo a curated replacement a previous run left half done (see the module
    docstring); returns "rolled back", "rolled forward" or None when there was nothing to do."""
    journal = store.get_json_or_none(curated_journal_key())
    if journal is None:
        return None
    if journal.get("generation"):  # direct I/O: the copies' sources are not data either way
        store.delete([o.key for o in store.list(journal["generation"])])
    if journal.get("state") == "committed":
        store.delete(journal["stale"])
        outcome = "rolled forward"
    else:
        store.delete(journal["new"])
        outcome = "rolled back"
    store.delete([curated_journal_key()])
    log.warning(
        "curated store %s after an interrupted run of batch %s",
        outcome,
        journal.get("batch_id"),
        extra={
            "event": "curated_recovered",
            "outcome": outcome,
            "of_batch": journal.get("batch_id"),
        },
    )
    return outcome


def _files(local_dir: Path, prefix: str) -> list[tuple[Path, str]]:
    """The data files below local_dir and their keys under prefix (Spark's _SUCCESS and .crc
    side files are not data)."""
    files = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(local_dir).as_posix()
        if is_side_file(relative):
            continue
        files.append((path, prefix + relative))
    return files
