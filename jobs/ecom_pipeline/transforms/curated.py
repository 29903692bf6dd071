"""Merging a batch into the curated store, and deciding which dates it touches (pure).

The curated store holds every accepted row once: products as a dimension, orders and
order_items partitioned by ``order_date`` (the UTC date of the order). A batch row replaces the
row with the same id, unless the stored row comes from a newer upload
(``contract.VERSION_COLUMN``). Because a row may move (a corrected ``created_at``, an item moved
to another order), the dates a batch touches are its rows' new dates *and* the dates its ids had
before; recomputing KPIs for exactly those dates keeps the tables equal to one run over all
accepted data in upload order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql.types import TimestampType

from ecom_pipeline.core.contract import VERSION_COLUMN, WINDOW_DAYS
from ecom_pipeline.transforms.ingest import with_order_date


@dataclass(frozen=True)
class Tables:
    """Typed rows of the three datasets; orders and items carry ``order_date``."""

    products: DataFrame
    orders: DataFrame
    items: DataFrame


@dataclass(frozen=True)
class Batch:
    """A batch's accepted rows (as validated, no ``order_date`` yet); None for absent datasets."""

    products: DataFrame | None
    orders: DataFrame | None
    items: DataFrame | None


def empty_as_local(frame: DataFrame) -> DataFrame:
    """``frame``, or when it has no rows an empty local relation (``limit(0)``), so that
    Spark's optimizer drops every join and union with it (a first batch's anti-joins against
    an empty store then cost nothing, and nothing is read twice). Same rows; one tiny job."""
    return frame.limit(0) if frame.isEmpty() else frame


def versioned(frame: DataFrame) -> DataFrame:
    """``frame`` with its rows' version (null, the oldest, where it has none)."""
    if VERSION_COLUMN in frame.columns:
        return frame
    return frame.withColumn(VERSION_COLUMN, F.lit(None).cast(TimestampType()))


def _replace(old: DataFrame, new: DataFrame | None, key: str) -> DataFrame:
    """``old`` with ``new``'s rows in, key by key, except where ``old`` holds a newer version
    of the key (contract.VERSION_COLUMN)."""
    if new is None:
        return old
    old, new = versioned(old), versioned(new)
    oldest = F.lit(datetime(1970, 1, 1)).cast(TimestampType())
    stored_newer = (
        old.select(key, F.coalesce(F.col(VERSION_COLUMN), oldest).alias("_stored"))
        .join(new.select(key, F.coalesce(F.col(VERSION_COLUMN), oldest).alias("_incoming")), key)
        .where(F.col("_stored") > F.col("_incoming"))
        .select(key)
    )
    winners = new.join(stored_newer, on=key, how="left_anti")
    return winners.unionByName(old.join(winners.select(key), on=key, how="left_anti"))


def merged_orders(old: Tables, batch: Batch) -> DataFrame:
    """Every order after the batch, with its order_date."""
    dated = with_order_date(batch.orders) if batch.orders is not None else None
    return _replace(old.orders, dated, "order_id")


def affected_dates(old: Tables, batch: Batch) -> DataFrame:
    """Distinct ``order_date`` values whose KPIs the batch can change (one column)."""
    parts = []
    if batch.orders is not None:
        ids = batch.orders.select("order_id")
        # the merged orders with the batch's ids are the batch's own rows (they replace the
        # old ones): their dates, without joining the merged orders back to the batch
        parts.append(
            with_order_date(batch.orders).where(F.col("order_id").isNotNull()).select("order_date")
        )
        parts.append(old.orders.join(ids, "order_id").select("order_date"))
    if batch.items is not None:
        # an item's order is either the batch's (its date is a part already) or an old one
        # the batch leaves alone: only those need a join (none at all on an empty store)
        kept_orders = (
            old.orders
            if batch.orders is None
            else old.orders.join(batch.orders.select("order_id"), "order_id", "left_anti")
        )
        parts.append(
            batch.items.select("order_id")
            .join(kept_orders.select("order_id", "order_date"), "order_id")
            .select("order_date")
        )
        parts.append(old.items.join(batch.items.select("id"), "id").select("order_date"))
    if batch.products is not None:
        parts.append(
            old.items.join(
                batch.products.select(F.col("id").alias("product_id")), "product_id"
            ).select("order_date")
        )
    if not parts:
        return old.orders.select("order_date").limit(0)
    result = parts[0]
    for part in parts[1:]:
        result = result.unionByName(part)
    return result.distinct()


def merge(old: Tables, batch: Batch, dates: list[date]) -> Tables:
    """The curated rows after the batch: products in full, orders and items for ``dates`` only.

    Items take their order's (possibly new) date; every item of an affected order lies within
    ``dates`` by construction of :func:`affected_dates`.
    """
    products = _replace(old.products, batch.products, "id")
    in_dates = F.col("order_date").isin(dates)
    orders_after = merged_orders(old, batch)
    orders = orders_after.where(in_dates)
    previous_items = old.items.where(in_dates).drop("order_date")
    batch_items = batch.items
    candidates = _replace(previous_items, batch_items, "id")
    items = candidates.join(
        orders_after.select("order_id", "order_date"), on="order_id", how="inner"
    ).where(in_dates)
    # the store's own columns (with the version where the store keeps one)
    return Tables(
        products=products.select(*old.products.columns),
        orders=orders.select(*old.orders.columns),
        items=items.select(*old.items.columns),
    )


def window_dates(dates: list[date]) -> list[date]:
    """The dates whose trailing window includes an affected date."""
    return sorted({d + timedelta(days=k) for d in dates for k in range(WINDOW_DAYS)})


def window_inputs(dates: list[date]) -> list[date]:
    """Every date the windows ending on :func:`window_dates` read."""
    return sorted({d - timedelta(days=k) for d in window_dates(dates) for k in range(WINDOW_DAYS)})


def rows_for(
    old: DataFrame, replaced: DataFrame, affected: list[date], wanted: list[date]
) -> DataFrame:
    """Rows dated in ``wanted``: the merged rows for affected dates, the old ones otherwise."""
    untouched = [d for d in wanted if d not in set(affected)]
    return replaced.unionByName(old.where(F.col("order_date").isin(untouched)))
