"""The pipeline's KPIs (README "KPIs", ``ecom_pipeline.core.contract``) in pandas, straight from the
batch's CSV files: the script a user would write instead of the pipeline.

``order_date`` is the UTC date of the order's ``created_at`` (ISO 8601, naive values are UTC);
statuses are compared in lower case. Prices are read as floats and turned into integer cents at
once (exact for any price below 10^13), so sums are exact and the two ratios are rounded half
up in integer arithmetic, like the pipeline's decimals.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.datasets import dataset_files
from bench.kpi_rows import CategoryRows, OrderRows, category_row, from_cents, order_row
from ecom_pipeline.core.contract import LABEL_WHITESPACE, RATE_SCALE, RETURNED_STATUS, WINDOW_DAYS


def _read(paths: list[Path], columns: dict[str, str]) -> pd.DataFrame:
    frames = [
        pd.read_csv(p, usecols=list(columns), dtype=columns, encoding="utf-8-sig") for p in paths
    ]
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _half_up(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    """round(numerator / denominator) half up, for numerator >= 0 and denominator > 0."""
    return (2 * numerator + denominator) // (2 * denominator)


def utc_dates(created_at: pd.Series) -> pd.Series:
    """The UTC date (as midnight) of ISO 8601 texts; naive ones are UTC.

    Parsed in two groups: given a column mixing naive and offset times, pandas reads the naive
    ones in the first offset it met instead of UTC.
    """
    text = created_at.str.strip()
    zoned = text.str.contains(r"(?:Z|[+-][0-9]{2}:[0-9]{2})$", regex=True).fillna(False)
    moments = pd.Series(pd.NaT, index=text.index, dtype="datetime64[ns, UTC]")
    for group in (zoned, ~zoned):
        if group.any():
            moments[group] = pd.to_datetime(text[group], utc=True, format="ISO8601")
    return moments.dt.tz_localize(None).dt.normalize()


def load(batch_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    files = dataset_files(Path(batch_dir))
    products = _read(files["products"], {"id": "int64", "category": "string"})
    products["category"] = products["category"].str.strip(LABEL_WHITESPACE)  # a label
    orders = _read(
        files["orders"],
        {"order_id": "int64", "user_id": "int64", "status": "string", "created_at": "string"},
    )
    items = _read(
        files["order_items"],
        {"order_id": "int64", "product_id": "int64", "status": "string", "sale_price": "float64"},
    )
    orders["order_date"] = utc_dates(orders["created_at"])
    orders["returned"] = orders["status"].str.strip().str.lower() == RETURNED_STATUS
    items["cents"] = (items["sale_price"] * 100).round().astype("int64")
    items["returned"] = items["status"].str.strip().str.lower() == RETURNED_STATUS
    items = items.merge(orders[["order_id", "order_date"]], on="order_id", how="inner")
    return products, orders, items


def category_kpis(products: pd.DataFrame, items: pd.DataFrame) -> CategoryRows:
    enriched = items.merge(
        products.rename(columns={"id": "product_id"}), on="product_id", how="inner"
    )
    keys = ["category", "order_date"]
    per_day = enriched.groupby(keys).agg(
        revenue=("cents", "sum"), order_count=("order_id", "nunique"), items_sold=("cents", "size")
    )
    returned = enriched[enriched["returned"]].groupby(keys)["order_id"].nunique()
    per_day["returned"] = returned.reindex(per_day.index, fill_value=0)
    per_day["average"] = _half_up(per_day["revenue"], per_day["order_count"])
    per_day["rate"] = _half_up(10**RATE_SCALE * per_day["returned"], per_day["order_count"])
    rows: CategoryRows = {}
    for (category, day), row in per_day.iterrows():
        date = day.strftime("%Y-%m-%d")
        rows[(category, date)] = category_row(
            {
                "category": category,
                "order_date": date,
                "daily_revenue": from_cents(row["revenue"]),
                "order_count": row["order_count"],
                "avg_order_value": from_cents(row["average"]),
                "avg_return_rate": from_cents(row["rate"], RATE_SCALE),
                "items_sold": row["items_sold"],
            }
        )
    return rows


def order_kpis(orders: pd.DataFrame, items: pd.DataFrame) -> OrderRows:
    daily = orders.groupby("order_date").agg(
        total_orders=("order_id", "nunique"), unique_customers=("user_id", "nunique")
    )
    daily["returned"] = (
        orders[orders["returned"]]
        .groupby("order_date")["order_id"]
        .nunique()
        .reindex(daily.index, fill_value=0)
    )
    item_side = items.groupby("order_date").agg(revenue=("cents", "sum"), sold=("cents", "size"))
    daily = daily.join(item_side, how="left").fillna({"revenue": 0, "sold": 0})
    daily = daily.astype({"revenue": "int64", "sold": "int64"}).sort_index()
    # a time-based window: the 7 calendar days ending on each date; absent days add nothing
    trailing = daily[["revenue", "total_orders"]].rolling(f"{WINDOW_DAYS}D").sum()
    daily["rate"] = _half_up(10**RATE_SCALE * daily["returned"], daily["total_orders"])
    rows: OrderRows = {}
    for day, row in daily.iterrows():
        date = day.strftime("%Y-%m-%d")
        rows[date] = order_row(
            {
                "order_date": date,
                "total_orders": row["total_orders"],
                "total_revenue": from_cents(row["revenue"]),
                "total_items_sold": row["sold"],
                "unique_customers": row["unique_customers"],
                "return_rate": from_cents(row["rate"], RATE_SCALE),
                "revenue_7d": from_cents(round(trailing.at[day, "revenue"])),
                "orders_7d": round(trailing.at[day, "total_orders"]),
            }
        )
    return rows


def compute(batch_dir: Path) -> tuple[CategoryRows, OrderRows]:
    """(category rows, order rows) of the batch in ``batch_dir`` (seed-sample layout)."""
    products, orders, items = load(batch_dir)
    return category_kpis(products, items), order_kpis(orders, items)
