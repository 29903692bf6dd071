"""KPI job: merge a validated batch into the curated store and recompute the KPIs it touches.

extract (staged batch rows, curated store) -> transform (merge, KPIs; pure, in curated.py and
kpis.py) -> load (DynamoDB items first, then the curated partitions). The merged rows of the
affected dates are written as Parquet outside the store first (:func:`write_new_state`), and
the KPIs are computed from those files, so the merge runs once rather than once per table.

The whole run holds the curated-store lease (lock.py), so two batches never read-merge-write
at the same time (no lost update).

KPIs are written before the curated store is replaced: if the job dies in between, a re-run
sees the same old store and the same batch, recomputes the same dates and converges. The
curated partitions are replaced under a journal (``curated/_journal.json``): it lists the new
objects and the ones they replace before anything is uploaded, and is marked committed once
every new object is in place. A run that finds a journal (its predecessor died) first rolls
the store back (not committed: delete the new objects) or forward (committed: delete the
replaced ones), so the store never holds a partition twice.

In direct I/O mode (``Settings.direct_io``) Spark reads the staged and curated Parquet at
the store's URIs and writes the new partitions itself, to a generation folder outside every
dataset's prefix (``curated/_new/<batch>/``); the journal then lists the keys they get in the
store, and the store copies them into place (a server-side copy on S3) before the commit. The
rest of the protocol is the same, and nothing of the data passes through the driver's disk.

A batch whose KPIs were already applied (``results/<batch>/kpis.json`` carries the same
fingerprint of its staged rows) is not merged again: replaying it after later batches
corrected its rows must not bring its old values back.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from ecom_pipeline.adapters.aws import make_client
from ecom_pipeline.adapters.curated_store import (
    curated_schema,
    new_rows_location,
    read_curated,
    read_curated_at,
    recover_curated,
    replace_partitions,
    replace_partitions_in_place,
    write_curated,
)
from ecom_pipeline.adapters.dynamo import delete_keys, write_items
from ecom_pipeline.adapters.lock import Lease
from ecom_pipeline.adapters.storage import Store, StoreError, data_keys, open_store
from ecom_pipeline.core import logs
from ecom_pipeline.core.contract import (
    CATEGORY_TABLE_KEY,
    DATASET_ORDER,
    DATASETS,
    LOCK_CURATED_STORE,
    MONTH_FORMAT,
    ORDER_TABLE_KEY,
    VERSION_COLUMN,
    Dataset,
)
from ecom_pipeline.core.layout import (
    curated_prefix,
    kpi_result_key,
    run_staging_prefix,
    staging_prefix,
)
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.read.dashboard import publish_dashboard_after_run
from ecom_pipeline.transforms.curated import (
    Batch,
    Tables,
    affected_dates,
    empty_as_local,
    merge,
    rows_for,
    window_dates,
    window_inputs,
)
from ecom_pipeline.transforms.ingest import typed_schema
from ecom_pipeline.transforms.kpis import (
    DATE_STRING,
    MONTH_STRING,
    category_kpis,
    enrich_items,
    order_kpis,
    with_order_month,
)

log = logging.getLogger(__name__)

# writes a batch's new curated rows and hands them back read from what it wrote
# (see :func:`write_new_state`)
StageNewState = Callable[[Tables, list[date], bool], Tables]


@dataclass
class KpiPlan:
    """What one batch changes: computed before any KPI is written."""

    dates: list[date]
    category_items: DataFrame
    category_deletes: DataFrame
    order_items: DataFrame
    order_deletes: DataFrame
    new_state: Tables
    products_changed: bool


@dataclass
class KpiReport:
    batch_id: str
    rows_accepted: dict[str, int] = field(default_factory=dict)
    dates_recomputed: list[str] = field(default_factory=list)
    category_items_written: int = 0
    order_items_written: int = 0
    items_deleted: int = 0
    duration_s: float = 0.0
    # from the batch's arrival (received_at) to its KPIs written; None when unknown
    batch_duration_s: float | None = None
    # s3://<bucket>/dashboard/index.html, rendered after the KPIs were written; None if it failed
    dashboard: str | None = None
    # rows and content hash of the staged datasets: a replay with the same rows is not re-applied
    fingerprint: dict[str, str] = field(default_factory=dict)
    # True when this run found the batch already applied and changed nothing
    already_applied: bool = False
    lock_wait_s: float = 0.0
    step_seconds: dict[str, float] = field(default_factory=dict)


def without_empty(old: Tables) -> Tables:
    """The curated tables, each empty one as an empty local relation (:func:`empty_as_local`)."""
    return Tables(*(empty_as_local(frame) for frame in (old.products, old.orders, old.items)))


def plan(old: Tables, batch: Batch, stage: StageNewState | None = None) -> KpiPlan:
    """Everything the batch changes, as DataFrames.

    Pure without ``stage``. The job passes :func:`write_new_state`: the merged rows of the
    affected dates (which the curated store needs anyway) are then joined to their orders and
    written once, and the KPIs read them back from those files instead of repeating the merge
    and its join for each table (at 10M items that join is a shuffle of every item row)."""
    old = without_empty(old)
    dates = sorted(row.order_date for row in affected_dates(old, batch).collect())
    products_changed = batch.products is not None
    new_state = merge(old, batch, dates)
    if stage is not None:
        new_state = stage(new_state, dates, products_changed)
    new_categories = category_kpis(enrich_items(new_state.items, new_state.products))
    old_categories = (
        enrich_items(old.items.where(F.col("order_date").isin(dates)), old.products)
        .select("category", F.date_format("order_date", DATE_STRING).alias("order_date"))
        .distinct()
    )
    category_deletes = old_categories.join(
        new_categories.select(*CATEGORY_TABLE_KEY), on=list(CATEGORY_TABLE_KEY), how="left_anti"
    )
    inputs = window_inputs(dates)
    orders = rows_for(old.orders, new_state.orders, dates, inputs)
    items = rows_for(old.items, new_state.items, dates, inputs)
    wanted = [d.strftime("%Y-%m-%d") for d in window_dates(dates)]
    order_rows = order_kpis(orders, items).where(F.col("order_date").isin(wanted))
    affected_strings = [d.strftime("%Y-%m-%d") for d in dates]
    session = old.orders.sparkSession
    order_deletes = session.createDataFrame(
        [(d,) for d in affected_strings], "order_date string"
    ).join(order_rows.select(*ORDER_TABLE_KEY), on=list(ORDER_TABLE_KEY), how="left_anti")
    return KpiPlan(
        dates=dates,
        category_items=new_categories,
        category_deletes=category_deletes,
        order_items=order_rows,
        order_deletes=order_deletes,
        new_state=new_state,
        products_changed=products_changed,
    )


def read_batch(
    spark: SparkSession, store: Store, batch_id: str, run_id: str, local: Path | None
) -> Batch:
    """The rows this run of the batch staged (no other run's): downloaded to ``local`` first,
    or read in place when ``local`` is None (direct I/O)."""
    frames: dict[str, DataFrame | None] = {}
    for name, dataset in DATASETS.items():
        prefix = staging_prefix(batch_id, run_id, name)
        if not data_keys(store, prefix):
            frames[name] = None
            continue
        where = (
            store.uri(prefix) if local is None else str(store.download_prefix(prefix, local / name))
        )
        frames[name] = spark.read.schema(typed_schema(dataset)).parquet(where)
    return Batch(products=frames["products"], orders=frames["orders"], items=frames["order_items"])


def read_tables(spark: SparkSession, store: Store, local: Path | None) -> Tables:
    """The curated store: downloaded to ``local`` first, or read in place when it is None."""
    frames = {
        name: read_curated_at(spark, store, dataset)
        if local is None
        else read_curated(spark, store.download_prefix(curated_prefix(name), local / name), dataset)
        for name, dataset in DATASETS.items()
    }
    return Tables(products=frames["products"], orders=frames["orders"], items=frames["order_items"])


def batch_stats(batch: Batch) -> dict[str, tuple[int, str]]:
    """Per staged dataset, its row count and an order-independent hash of its rows (the sum of
    every row's xxhash64), both from one aggregation (one pass) per dataset."""
    result = {}
    for name, frame in zip(
        ("products", "orders", "order_items"),
        (batch.products, batch.orders, batch.items),
        strict=True,
    ):
        if frame is None:
            continue
        row = frame.agg(
            F.count(F.lit(1)).alias("rows"),
            F.sum(F.xxhash64(*frame.columns).cast("decimal(38,0)")).alias("hash"),
        ).first()
        result[name] = (int(row["rows"]), str(row["hash"] or 0))
    return result


def fingerprint_of(stats: dict[str, tuple[int, str]]) -> dict[str, str]:
    """The fingerprint of :func:`batch_stats`: the same rows give the same fingerprint,
    whatever the files."""
    return {name: f"{rows}:{digest}" for name, (rows, digest) in stats.items()}


@contextmanager
def persisted(changes: KpiPlan) -> Iterator[KpiPlan]:
    """``changes`` with its KPI rows (small) cached while the block runs: the deletes read them
    once more. (The merged rows need no cache: :func:`write_new_state` wrote them, and the KPIs
    read those files.) Unpersisted at the end."""
    frames = [changes.category_items, changes.order_items]
    for frame in frames:
        frame.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        yield changes
    finally:
        for frame in frames:
            frame.unpersist()


def compute_kpis(
    spark: Callable[[], SparkSession],
    config: Settings,
    batch_id: str,
    *,
    received_at: str | None = None,
) -> KpiReport:
    """Run the KPI job for a batch whose datasets all passed validation.

    ``spark`` makes the session; it is called once the curated-store lock is held, so a run
    waiting for another does not hold a JVM meanwhile. Raises lock.LockTimeoutError when the
    lock stays taken for longer than ``config.lock_wait_s``.
    """
    logs.bind(batch_id=batch_id, job="kpis")
    logs.unbind("dataset")
    store = open_store(config)
    report = KpiReport(batch_id=batch_id)
    started = time.perf_counter()
    lease = Lease(
        make_client(config.aws, "dynamodb"),
        LOCK_CURATED_STORE,
        holder={"batch_id": batch_id, "execution_id": logs.context().get("execution_id", "")},
        table=config.lock_table,
        lease_s=config.lock_lease_s,
        wait_s=config.lock_wait_s,
    )
    succeeded = False
    try:
        with _timed(report, "wait for lock"):
            lease.__enter__()
        try:
            report.lock_wait_s = lease.waited_s
            _compute_locked(spark(), config, store, lease, report, upload_version(received_at))
            report.duration_s = round(time.perf_counter() - started, 3)
            if received_at:
                arrival = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
                report.batch_duration_s = round((datetime.now(UTC) - arrival).total_seconds(), 3)
            if not report.already_applied:
                # still under the lock: a replay waiting for it must find the batch applied
                store.put_json(kpi_result_key(batch_id), report.__dict__)
        finally:
            lease.release()
        succeeded = True
        _discard_staging(store, batch_id, config.run_id)
    finally:
        # a failed run reports too (how far it got, how long it took), so an alarm on
        # KpiJobFailed and the step durations see every run, not only the good ones
        if not succeeded:
            report.duration_s = round(time.perf_counter() - started, 3)
        _emit_metrics(report, failed=not succeeded)
    log.info("kpis done", extra={"event": "kpi_result", **report.__dict__})
    return report


def _discard_staging(store: Store, batch_id: str, run_id: str) -> None:
    """Delete the rows this run staged, once they are applied: no other run reads them, so a
    leftover costs only space (a failed delete is logged, not raised: the KPIs stand)."""
    prefix = run_staging_prefix(batch_id, run_id)
    try:
        store.delete([o.key for o in store.list(prefix)])
    except StoreError:
        log.warning("staged rows of %s left in place", prefix, extra={"event": "staging_kept"})


def upload_version(received_at: str | None) -> datetime:
    """The version of a run's rows (contract.VERSION_COLUMN): its batch's upload time, or,
    for a run started by hand without one, now."""
    if not received_at:
        return datetime.now(UTC)
    return datetime.fromisoformat(received_at.replace("Z", "+00:00")).astimezone(UTC)


def with_version(batch: Batch, version: datetime) -> Batch:
    """The batch's rows, each carrying ``version``."""
    stamp = F.lit(version).cast(TimestampType()).alias(VERSION_COLUMN)
    return Batch(
        *(None if frame is None else frame.select("*", stamp) for frame in
          (batch.products, batch.orders, batch.items))
    )  # fmt: skip


def _compute_locked(
    spark: SparkSession,
    config: Settings,
    store: Store,
    lease: Lease,
    report: KpiReport,
    version: datetime,
) -> None:
    batch_id = report.batch_id
    work = config.work_dir / "kpis" / batch_id
    shutil.rmtree(work, ignore_errors=True)
    direct = config.direct_io
    with _timed(report, "recover curated store"):
        recover_curated(store)
    with _timed(report, "read"):
        staged = run_staging_prefix(batch_id, config.run_id)
        batch = read_batch(
            spark, store, batch_id, config.run_id, None if direct else work / "staged"
        )
        if batch.products is None and batch.orders is None and batch.items is None:
            raise ValueError(f"batch {batch_id} has no validated rows under {staged}")
        stats = batch_stats(batch)  # rows accepted (for the notice) and fingerprint, one pass
        report.rows_accepted = {name: rows for name, (rows, _) in stats.items()}
        report.fingerprint = fingerprint_of(stats)
        previous = _previous_report(store, batch_id)
        if previous is not None and previous.get("fingerprint") == report.fingerprint:
            log.info(
                "batch %s was applied already (same rows): nothing to change",
                batch_id,
                extra={"event": "already_applied"},
            )
            report.already_applied = True
            report.dates_recomputed = previous.get("dates_recomputed", [])
            report.dashboard = previous.get("dashboard")
            return
        old = read_tables(spark, store, None if direct else work / "curated")
        batch = with_version(batch, version)
    with _timed(report, "plan") as fields:
        where = new_rows_location(store, batch_id, None if direct else work / "new")
        changes = plan(old, batch, stage=lambda *state: write_new_state(*state, where=where))
        report.dates_recomputed = [d.isoformat() for d in changes.dates]
        fields["dates"] = len(changes.dates)
    with persisted(changes):
        lease.ensure_held()
        with _timed(report, "write KPIs") as fields:
            # every write request first checks the lease, so a run stalled past it stops there
            guard = lease.guard()
            report.category_items_written = write_items(
                changes.category_items, config.category_table, config.aws, guard=guard
            )
            report.order_items_written = write_items(
                with_order_month(changes.order_items), config.order_table, config.aws, guard=guard
            )
            report.items_deleted = delete_keys(
                changes.category_deletes, config.category_table, config.aws, guard=guard
            ) + delete_keys(changes.order_deletes, config.order_table, config.aws, guard=guard)
            fields.update(
                category_items=report.category_items_written,
                order_items=report.order_items_written,
                deleted=report.items_deleted,
            )
        # read from the old store before it is replaced (in direct I/O mode ``old`` reads in place)
        months = data_months(old, changes)
        lease.ensure_held()
        with _timed(report, "update curated store"):
            if direct:
                replace_partitions_in_place(store, curated_parts_of(changes), batch_id, lease.fence)
            else:
                parts = curated_parts_of(changes)
                replace_partitions(store, parts, work / "new", batch_id, lease.fence)
    with _timed(report, "publish dashboard"):
        datasets = [name for name in DATASET_ORDER if name in report.rows_accepted]
        report.dashboard = publish_dashboard_after_run(
            config.aws,
            store=store,
            category_table=config.category_table,
            order_table=config.order_table,
            batch_id=batch_id,
            months=months,
            datasets=datasets,
        )


@contextmanager
def _timed(report: KpiReport, name: str) -> Iterator[dict]:
    """logs.step, recording the step's duration in the report (for the metrics)."""
    started = time.perf_counter()
    try:
        with logs.step(log, name) as fields:
            yield fields
    finally:
        report.step_seconds[name] = round(time.perf_counter() - started, 3)


def _previous_report(store: Store, batch_id: str) -> dict | None:
    return store.get_json_or_none(kpi_result_key(batch_id))


def _emit_metrics(report: KpiReport, *, failed: bool) -> None:
    """The run's numbers in CloudWatch Embedded Metric Format (dimension job=kpis)."""
    values: dict[str, float] = {
        "RowsRead": sum(report.rows_accepted.values()),
        **{f"RowsRead_{name}": rows for name, rows in report.rows_accepted.items()},
        "DatesRecomputed": len(report.dates_recomputed),
        "CategoryItemsWritten": report.category_items_written,
        "OrderItemsWritten": report.order_items_written,
        "KpiItemsWritten": report.category_items_written + report.order_items_written,
        "ItemsDeleted": report.items_deleted,
        "AlreadyApplied": 1 if report.already_applied else 0,
        "KpiJobFailed": 1 if failed else 0,
        **{logs.metric_name(step): seconds for step, seconds in report.step_seconds.items()},
        "KpiJobSeconds": report.duration_s,
    }
    units = {name: "Seconds" for name in values if name.endswith("Seconds")}
    logs.emit_metrics(log, {"job": "kpis"}, values, units)


def data_months(old: Tables, changes: KpiPlan) -> list[str]:
    """Every month that may hold order KPIs after this run: the months of the curated orders
    before it and of the dates it recomputed (a superset is harmless: an empty month is one
    empty Query)."""
    before = old.orders.select(F.date_format("order_date", MONTH_STRING).alias("m")).distinct()
    months = {row.m for row in before.collect() if row.m}
    months.update(d.strftime(MONTH_FORMAT) for d in changes.dates)
    return sorted(months)


def curated_parts(
    new_state: Tables, dates: list[date], products_changed: bool
) -> list[tuple[Dataset, DataFrame, list[date] | None]]:
    """(dataset, new rows, replaced dates or None for the whole dataset) a run rewrites."""
    parts: list[tuple[Dataset, DataFrame, list[date] | None]] = []
    if products_changed:
        parts.append((DATASETS["products"], new_state.products, None))
    if dates:
        parts.append((DATASETS["orders"], new_state.orders, dates))
        parts.append((DATASETS["order_items"], new_state.items, dates))
    return parts


def write_new_state(
    new_state: Tables,
    dates: list[date],
    products_changed: bool,
    *,
    where: Callable[[str], str],
) -> Tables:
    """Write the curated rows a run rewrites (:func:`curated_parts`) as Parquet to
    ``where(dataset name)``, a local folder or a URI, and return ``new_state`` with those
    datasets read back from the files written."""
    frames = {
        "products": new_state.products,
        "orders": new_state.orders,
        "order_items": new_state.items,
    }
    for dataset, frame, replaced in curated_parts(new_state, dates, products_changed):
        written = where(dataset.name)
        write_curated(frame, dataset, written, replaced)
        frames[dataset.name] = frame.sparkSession.read.schema(curated_schema(dataset)).parquet(
            written
        )
    return Tables(products=frames["products"], orders=frames["orders"], items=frames["order_items"])


def curated_parts_of(changes: KpiPlan) -> list[tuple[Dataset, DataFrame, list[date] | None]]:
    return curated_parts(changes.new_state, changes.dates, changes.products_changed)
