"""KPI job: merge a validated batch into the curated store and recompute the KPIs it touches.

extract (staged batch rows, curated store) -> transform (merge, KPIs; pure, in curated.py and
kpis.py) -> load (DynamoDB items first, then the curated partitions).

KPIs are written before the curated store is replaced: if the job dies in between, a re-run
sees the same old store and the same batch, recomputes the same dates and converges.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecom_pipeline import logs
from ecom_pipeline.config import PipelineConfig
from ecom_pipeline.contract import (
    CATEGORY_TABLE_KEY,
    DATASET_ORDER,
    DATASETS,
    MONTH_FORMAT,
    ORDER_TABLE_KEY,
)
from ecom_pipeline.curated import (
    Batch,
    Tables,
    affected_dates,
    merge,
    rows_for,
    window_dates,
    window_inputs,
)
from ecom_pipeline.dashboard import publish_dashboard
from ecom_pipeline.dynamo import delete_keys, write_items
from ecom_pipeline.ingest import typed_schema
from ecom_pipeline.kpis import (
    DATE_STRING,
    MONTH_STRING,
    category_kpis,
    enrich_items,
    order_kpis,
    with_order_month,
)
from ecom_pipeline.query import QueryError
from ecom_pipeline.storage import BucketStore, curated_prefix, kpi_result_key, staging_prefix
from ecom_pipeline.validation import read_curated

log = logging.getLogger(__name__)


@dataclass
class KpiPlan:
    """What one batch changes: computed before anything is written."""

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


def plan(old: Tables, batch: Batch) -> KpiPlan:
    """Everything the batch changes, as DataFrames (pure: no I/O, nothing written)."""
    dates = sorted(row.order_date for row in affected_dates(old, batch).collect())
    new_state = merge(old, batch, dates)
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
        products_changed=batch.products is not None,
    )


def read_batch(spark: SparkSession, store: BucketStore, batch_id: str, local: Path) -> Batch:
    frames: dict[str, DataFrame | None] = {}
    for name, dataset in DATASETS.items():
        prefix = staging_prefix(batch_id, name)
        if store.list(prefix):
            folder = store.download_prefix(prefix, local / name)
            frames[name] = spark.read.schema(typed_schema(dataset)).parquet(str(folder))
        else:
            frames[name] = None
    return Batch(products=frames["products"], orders=frames["orders"], items=frames["order_items"])


def read_tables(spark: SparkSession, store: BucketStore, local: Path) -> Tables:
    frames = {
        name: read_curated(
            spark, store.download_prefix(curated_prefix(name), local / name), dataset
        )
        for name, dataset in DATASETS.items()
    }
    return Tables(products=frames["products"], orders=frames["orders"], items=frames["order_items"])


def compute_kpis(
    spark: SparkSession, config: PipelineConfig, batch_id: str, *, received_at: str | None = None
) -> KpiReport:
    """Run the KPI job for a batch whose datasets all passed validation."""
    logs.bind(batch_id=batch_id, job="kpis")
    logs.unbind("dataset")
    store = BucketStore(config.bucket, config.aws)
    work = config.work_dir / "kpis" / batch_id
    shutil.rmtree(work, ignore_errors=True)
    report = KpiReport(batch_id=batch_id)
    started = time.perf_counter()
    with logs.step(log, "read"):
        batch = read_batch(spark, store, batch_id, work / "staged")
        if batch.products is None and batch.orders is None and batch.items is None:
            raise ValueError(f"batch {batch_id} has no validated rows under staging/{batch_id}/")
        old = read_tables(spark, store, work / "curated")
        for name, frame in zip(
            ("products", "orders", "order_items"),
            (batch.products, batch.orders, batch.items),
            strict=True,
        ):
            if frame is not None:
                report.rows_accepted[name] = frame.count()
    with logs.step(log, "plan") as fields:
        changes = plan(old, batch)
        report.dates_recomputed = [d.isoformat() for d in changes.dates]
        fields["dates"] = len(changes.dates)
    with logs.step(log, "write KPIs") as fields:
        report.category_items_written = write_items(
            changes.category_items, config.category_table, config.aws
        )
        report.order_items_written = write_items(
            with_order_month(changes.order_items), config.order_table, config.aws
        )
        report.items_deleted = delete_keys(
            changes.category_deletes, config.category_table, config.aws
        ) + delete_keys(changes.order_deletes, config.order_table, config.aws)
        fields.update(
            category_items=report.category_items_written,
            order_items=report.order_items_written,
            deleted=report.items_deleted,
        )
    with logs.step(log, "update curated store"):
        _replace_curated(store, changes, work / "new")
    with logs.step(log, "publish dashboard"):
        datasets = [name for name in DATASET_ORDER if name in report.rows_accepted]
        report.dashboard = _publish_dashboard(config, batch_id, old, changes, datasets)
    report.duration_s = round(time.perf_counter() - started, 3)
    if received_at:
        arrival = datetime.fromisoformat(received_at.replace("Z", "+00:00"))
        report.batch_duration_s = round((datetime.now(UTC) - arrival).total_seconds(), 3)
    store.put_json(kpi_result_key(batch_id), report.__dict__)
    log.info("kpis done", extra={"event": "kpi_result", **report.__dict__})
    return report


def data_months(old: Tables, changes: KpiPlan) -> list[str]:
    """Every month that may hold order KPIs after this run: the months of the curated orders
    before it and of the dates it recomputed (a superset is harmless: an empty month is one
    empty Query)."""
    before = old.orders.select(F.date_format("order_date", MONTH_STRING).alias("m")).distinct()
    months = {row.m for row in before.collect() if row.m}
    months.update(d.strftime(MONTH_FORMAT) for d in changes.dates)
    return sorted(months)


def _publish_dashboard(
    config: PipelineConfig, batch_id: str, old: Tables, changes: KpiPlan, datasets: list[str]
) -> str | None:
    """Render and upload the dashboard from the tables just written. The KPIs are safe by now,
    so AWS trouble here is logged as an error and leaves the run successful (the next run
    renders it again)."""
    try:
        return publish_dashboard(
            config.aws,
            bucket=config.bucket,
            category_table=config.category_table,
            order_table=config.order_table,
            batch_id=batch_id,
            months=data_months(old, changes),
            datasets=datasets,
        )
    except (ClientError, BotoCoreError, QueryError):
        log.exception("dashboard not published", extra={"event": "dashboard_failed"})
        return None


def curated_parts(changes: KpiPlan) -> list[tuple[str, DataFrame, list[date] | None]]:
    """(dataset, new rows, replaced dates or None for the whole dataset) the run rewrites."""
    parts: list[tuple[str, DataFrame, list[date] | None]] = []
    if changes.products_changed:
        parts.append(("products", changes.new_state.products, None))
    if changes.dates:
        parts.append(("orders", changes.new_state.orders, changes.dates))
        parts.append(("order_items", changes.new_state.items, changes.dates))
    return parts


def write_curated(frame: DataFrame, local: Path, dates: list[date] | None) -> None:
    """Write new curated rows as Parquet to local disk (partitioned by order_date if dated)."""
    writer = frame.write.mode("overwrite")
    if dates is not None:
        writer = writer.partitionBy("order_date")
    writer.parquet(str(local))


def _replace_curated(store: BucketStore, changes: KpiPlan, local: Path) -> None:
    """Upload the new partitions of the affected dates, then remove the objects they replace."""
    for name, frame, dates in curated_parts(changes):
        _replace_prefix(store, frame, curated_prefix(name), local / name, dates)


def _replace_prefix(
    store: BucketStore, frame: DataFrame, prefix: str, local: Path, dates: list[date] | None
) -> None:
    write_curated(frame, local, dates)
    if dates is None:
        stale = [o.key for o in store.list(prefix)]
    else:
        stale = [o.key for d in dates for o in store.list(f"{prefix}order_date={d.isoformat()}/")]
    uploaded = set(store.upload_dir(local, prefix))
    store.delete([key for key in stale if key not in uploaded])
