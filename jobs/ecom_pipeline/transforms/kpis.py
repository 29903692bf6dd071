"""KPI definitions as pure DataFrame -> DataFrame transformations.

Inputs are typed rows as the curated store keeps them: orders and order_items carry an
``order_date`` (UTC date of the order's ``created_at``), products carry ``category``.
Attribute names and meanings come from :mod:`ecom_pipeline.core.contract`.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql.types import DecimalType

from ecom_pipeline.core.contract import (
    CATEGORY_ITEM_ATTRIBUTES,
    MONEY_PRECISION,
    MONEY_SCALE,
    ORDER_ITEM_ATTRIBUTES,
    ORDER_MONTH_ATTRIBUTE,
    RATE_SCALE,
    RETURNED_STATUS,
    WINDOW_DAYS,
)

MONEY = DecimalType(MONEY_PRECISION, MONEY_SCALE)
RATE = DecimalType(MONEY_SCALE + RATE_SCALE + 1, RATE_SCALE)
DATE_STRING = "yyyy-MM-dd"
MONTH_STRING = "yyyy-MM"  # contract.MONTH_FORMAT in Spark's pattern language


def _ratio(numerator: Column, denominator: Column, scale: int) -> Column:
    # Decimal division keeps exact digits; round() on a decimal rounds half up.
    quotient = numerator.cast(DecimalType(28, 0)) / denominator.cast(DecimalType(28, 0))
    return F.when(denominator > 0, F.round(quotient, scale)).otherwise(F.lit(0))


def _money(column: Column) -> Column:
    return F.round(column, MONEY_SCALE).cast(MONEY)


def _rate(column: Column) -> Column:
    return column.cast(RATE)


def enrich_items(items: DataFrame, products: DataFrame) -> DataFrame:
    """Items with their product's category (products is a small dimension: broadcast it)."""
    categories = products.select(F.col("id").alias("product_id"), "category")
    return items.join(F.broadcast(categories), on="product_id", how="left")


def category_kpis(enriched_items: DataFrame) -> DataFrame:
    """One row per (category, order_date) that has items; columns as the category table."""
    is_returned = F.lower(F.col("status")) == RETURNED_STATUS
    # Per order first, then per day: the same counts as two countDistinct aggregates, without
    # the Expand that doubles every item row to compute them.
    per_order = enriched_items.groupBy("category", "order_date", "order_id").agg(
        F.sum("sale_price").alias("revenue"),
        F.count(F.lit(1)).alias("items"),
        F.max(is_returned).alias("returned"),
    )
    grouped = per_order.groupBy("category", "order_date").agg(
        F.sum("revenue").alias("daily_revenue"),
        F.count("order_id").alias("order_count"),
        F.count(F.when(F.col("returned"), F.col("order_id"))).alias("returned_orders"),
        F.sum("items").alias("items_sold"),
    )
    return grouped.select(
        "category",
        F.date_format("order_date", DATE_STRING).alias("order_date"),
        _money(F.col("daily_revenue")).alias("daily_revenue"),
        F.col("order_count").cast("long").alias("order_count"),
        _money(F.col("daily_revenue") / F.col("order_count")).alias("avg_order_value"),
        _rate(_ratio(F.col("returned_orders"), F.col("order_count"), RATE_SCALE)).alias(
            "avg_return_rate"
        ),
        F.col("items_sold").cast("long").alias("items_sold"),
    ).select(*CATEGORY_ITEM_ATTRIBUTES)


def daily_order_totals(orders: DataFrame, items: DataFrame) -> DataFrame:
    """Per order_date with orders: order, customer and return counts plus item revenue.

    ``orders`` holds each order_id once (validation rejects a batch with a repeated one, and
    the merge replaces by order_id), so orders are counted as rows: one distinct count (users)
    instead of three, each of which Spark plans as a copy of every order row (Expand)."""
    order_side = orders.groupBy("order_date").agg(
        F.count("order_id").alias("total_orders"),
        F.countDistinct("user_id").alias("unique_customers"),
        F.count(F.when(F.lower(F.col("status")) == RETURNED_STATUS, F.col("order_id"))).alias(
            "returned_orders"
        ),
    )
    item_side = items.groupBy("order_date").agg(
        F.sum("sale_price").alias("total_revenue"),
        F.count(F.lit(1)).alias("total_items_sold"),
    )
    return order_side.join(item_side, on="order_date", how="left").select(
        "order_date",
        F.col("total_orders").cast("long").alias("total_orders"),
        _money(F.coalesce(F.col("total_revenue"), F.lit(0))).alias("total_revenue"),
        F.coalesce(F.col("total_items_sold"), F.lit(0)).cast("long").alias("total_items_sold"),
        F.col("unique_customers").cast("long").alias("unique_customers"),
        _rate(_ratio(F.col("returned_orders"), F.col("total_orders"), RATE_SCALE)).alias(
            "return_rate"
        ),
    )


def with_trailing_window(daily: DataFrame) -> DataFrame:
    """Add revenue_7d and orders_7d: sums over the 7 calendar days ending on each row's date.

    The frame is ordered by day number with a range frame, so a day without orders (no row)
    contributes zero instead of shifting the window. Daily rows are one per date, so the single
    window partition stays small.
    """
    day_number = F.datediff(F.col("order_date"), F.lit("1970-01-01").cast("date"))
    window = Window.orderBy(day_number).rangeBetween(-(WINDOW_DAYS - 1), 0)
    return daily.withColumn("revenue_7d", _money(F.sum("total_revenue").over(window))).withColumn(
        "orders_7d", F.sum("total_orders").over(window).cast("long")
    )


def order_kpis(orders: DataFrame, items: DataFrame) -> DataFrame:
    """One row per order_date with orders; columns as the order table."""
    daily = with_trailing_window(daily_order_totals(orders, items))
    return daily.withColumn("order_date", F.date_format("order_date", DATE_STRING)).select(
        *ORDER_ITEM_ATTRIBUTES
    )


def with_order_month(order_rows: DataFrame) -> DataFrame:
    """Order-table rows plus ``order_month`` ("YYYY-MM" of ``order_date``), the partition key of
    the month index that turns a date range into Queries. Deterministic, so rewriting a day
    still gives the identical item."""
    return order_rows.withColumn(
        ORDER_MONTH_ATTRIBUTE, F.date_format(F.to_date("order_date", DATE_STRING), MONTH_STRING)
    )
