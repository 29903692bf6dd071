"""``ecom-pipeline rebuild [--from D] [--to D]``: recompute the KPI tables from the curated store.

For when the KPIs stored are not what the curated rows give any more: a KPI definition changed
(``core/contract.py``, ``transforms/kpis.py``), or a table was damaged or restored from a backup.
extract (the curated store; the table items of the range) -> transform (the KPI items of every
date of the range from the curated rows alone; pure, :func:`recompute`) -> load (write every
item, delete the items of the range the rows no longer give).

The run holds the curated store's lease throughout, as a batch's KPI run does: it reads one
version of the store, and no batch merges meanwhile (a batch arriving waits for the lease). The
tables then equal a full recomputation over every accepted row for the dates of the range.
Without ``--from``/``--to`` the range is the curated store's first to last order date.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, timedelta

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from ecom_pipeline.adapters.aws import make_client
from ecom_pipeline.adapters.curated_store import recover_curated
from ecom_pipeline.adapters.dynamo import delete_keys, write_items
from ecom_pipeline.adapters.lock import Lease
from ecom_pipeline.adapters.storage import open_store
from ecom_pipeline.core import logs
from ecom_pipeline.core.contract import (
    CATEGORY_TABLE_KEY,
    LOCK_CURATED_STORE,
    ORDER_TABLE_KEY,
)
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.read.query import DateRange, KpiReader
from ecom_pipeline.tasks.kpi_job import read_tables
from ecom_pipeline.transforms.curated import Tables, window_inputs
from ecom_pipeline.transforms.kpis import (
    category_kpis,
    enrich_items,
    order_kpis,
    with_order_month,
)

log = logging.getLogger(__name__)

DATE_FORMAT = "%Y-%m-%d"


class NothingToRebuildError(ValueError):
    """The curated store holds no order: there are no KPIs to recompute."""


@dataclass
class RebuildReport:
    start: str = ""
    end: str = ""
    category_items_written: int = 0
    order_items_written: int = 0
    items_deleted: int = 0
    lock_wait_s: float = 0.0
    duration_s: float = 0.0
    seconds: dict[str, float] = field(default_factory=dict)


def days_of(start: date, end: date) -> list[date]:
    return [start + timedelta(days=n) for n in range((end - start).days + 1)]


def recompute(state: Tables, days: list[date]) -> tuple[DataFrame, DataFrame]:
    """The category and order KPI items of ``days`` from the curated rows alone (pure): each
    day's category KPIs from its items, each day's order KPIs over its trailing window."""
    items = state.items.where(F.col("order_date").isin(days))
    categories = category_kpis(enrich_items(items, state.products))
    inputs = window_inputs(days)
    wanted = [day.strftime(DATE_FORMAT) for day in days]
    orders = order_kpis(
        state.orders.where(F.col("order_date").isin(inputs)),
        state.items.where(F.col("order_date").isin(inputs)),
    ).where(F.col("order_date").isin(wanted))
    return categories, orders


def stale_keys(
    spark: SparkSession,
    existing: list[dict],
    recomputed: DataFrame,
    key: tuple[str, ...],
) -> DataFrame:
    """The keys of ``existing`` items that ``recomputed`` no longer gives."""
    schema = ", ".join(f"{column} string" for column in key)
    found = spark.createDataFrame([tuple(str(i[c]) for c in key) for i in existing], schema)
    return found.join(recomputed.select(*key), on=list(key), how="left_anti")


def rebuild(
    spark: Callable[[], SparkSession],
    config: Settings,
    *,
    start: date | None = None,
    end: date | None = None,
) -> RebuildReport:
    """Recompute the KPI items of ``start`` to ``end`` (default: every order date in the curated
    store) under the curated store's lease; see the module docstring."""
    logs.bind(job="rebuild")
    store = open_store(config)
    report = RebuildReport()
    started = time.perf_counter()
    lease = Lease(
        make_client(config.aws, "dynamodb"),
        LOCK_CURATED_STORE,
        holder={"job": "rebuild", "execution_id": logs.context().get("execution_id", "")},
        table=config.lock_table,
        lease_s=config.lock_lease_s,
        wait_s=config.lock_wait_s,
    )
    with lease:
        report.lock_wait_s = lease.waited_s
        session = spark()
        work = config.work_dir / "rebuild"
        shutil.rmtree(work, ignore_errors=True)
        recover_curated(store)
        with logs.step(log, "read curated store"):
            state = read_tables(session, store, None if config.direct_io else work / "curated")
        if start is None or end is None:
            first, last = state.orders.agg(F.min("order_date"), F.max("order_date")).first()
            if first is None:
                raise NothingToRebuildError(
                    f"the curated store ({store.uri('curated/')}) holds no order yet: nothing "
                    "to rebuild"
                )
            start, end = start or first, end or last
        days = days_of(start, end)
        report.start, report.end = start.isoformat(), end.isoformat()
        categories, orders = recompute(state, days)
        with logs.step(log, "read the range's items", days=len(days)):
            reader = KpiReader(
                make_client(config.aws, "dynamodb"),
                category_table=config.category_table,
                order_table=config.order_table,
            )
            old_categories = [row for day in days for row in reader.day(day)]
            old_orders = reader.orders(DateRange(start, end))
        category_deletes = stale_keys(session, old_categories, categories, CATEGORY_TABLE_KEY)
        order_deletes = stale_keys(session, old_orders, orders, ORDER_TABLE_KEY)
        lease.ensure_held()
        with logs.step(log, "write KPIs") as fields:
            guard = lease.guard()
            report.category_items_written = write_items(
                categories, config.category_table, config.aws, guard=guard
            )
            report.order_items_written = write_items(
                with_order_month(orders), config.order_table, config.aws, guard=guard
            )
            report.items_deleted = delete_keys(
                category_deletes, config.category_table, config.aws, guard=guard
            ) + delete_keys(order_deletes, config.order_table, config.aws, guard=guard)
            fields.update(
                category_items=report.category_items_written,
                order_items=report.order_items_written,
                deleted=report.items_deleted,
            )
        shutil.rmtree(work, ignore_errors=True)
    report.duration_s = round(time.perf_counter() - started, 3)
    log.info("rebuild done", extra={"event": "rebuild_result", **report.__dict__})
    return report
