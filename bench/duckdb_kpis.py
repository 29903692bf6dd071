"""The pipeline's KPIs (``ecom_pipeline.core.contract``) as one DuckDB query per table,
straight from the batch's CSV files: what a user would write instead of the pipeline.

Typed reads (ids BIGINT, sale_price DECIMAL(18,2)); ``order_date`` is the UTC date of the order's
``created_at``, cast from text with the session in UTC so naive values are UTC (read as a typed
TIMESTAMPTZ column instead, DuckDB 2.0.0 put some orders of a file mixing naive and +02:00
times on the wrong date; tests/test_bench_kpis.py caught it); statuses compared in lower case.
Sums stay exact decimals; the two ratios are rounded half up in integer arithmetic, so the
numbers are exact to the cent and to the fourth decimal, like the pipeline's.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from bench.datasets import dataset_files
from bench.kpi_rows import CategoryRows, OrderRows, category_row, from_cents, order_row
from ecom_pipeline.core.contract import LABEL_WHITESPACE, RATE_SCALE, RETURNED_STATUS, WINDOW_DAYS

_SOURCES = """
CREATE TEMP VIEW products AS
    SELECT id, trim(category, {label_whitespace}) AS category
    FROM read_csv({products}, header = true, union_by_name = true,
        quote = '"', escape = '"', types = {{'id': 'BIGINT', 'category': 'VARCHAR'}});
CREATE TEMP VIEW orders AS
    SELECT order_id, user_id, lower(trim(status)) AS status,
           CAST(timezone('UTC', CAST(created_at AS TIMESTAMPTZ)) AS DATE) AS order_date
    FROM read_csv({orders}, header = true, union_by_name = true, quote = '"', escape = '"',
        types = {{'order_id': 'BIGINT', 'user_id': 'BIGINT', 'status': 'VARCHAR',
                  'created_at': 'VARCHAR'}});
CREATE TEMP VIEW items AS
    SELECT order_id, product_id, lower(trim(status)) AS status, sale_price
    FROM read_csv({items}, header = true, union_by_name = true, quote = '"', escape = '"',
        types = {{'order_id': 'BIGINT', 'product_id': 'BIGINT', 'status': 'VARCHAR',
                  'sale_price': 'DECIMAL(18,2)'}});
"""

# round(a / b) half up for a >= 0, b > 0, in integers: (2a + b) // (2b)
_CATEGORY = f"""
WITH per_day AS (
    SELECT p.category, o.order_date,
           CAST(sum(i.sale_price) * 100 AS HUGEINT) AS revenue_cents,
           count(DISTINCT i.order_id) AS order_count,
           count(DISTINCT i.order_id) FILTER (WHERE i.status = '{RETURNED_STATUS}') AS returned,
           count(*) AS items_sold
    FROM items i
    JOIN orders o USING (order_id)
    JOIN products p ON p.id = i.product_id
    GROUP BY p.category, o.order_date
)
SELECT category, strftime(order_date, '%Y-%m-%d') AS order_date, revenue_cents, order_count,
       (2 * revenue_cents + order_count) // (2 * order_count) AS avg_order_value_cents,
       (2 * {10**RATE_SCALE} * returned + order_count) // (2 * order_count) AS return_rate_units,
       items_sold
FROM per_day
"""

_ORDERS = f"""
WITH order_side AS (
    SELECT order_date, count(DISTINCT order_id) AS total_orders,
           count(DISTINCT user_id) AS unique_customers,
           count(DISTINCT order_id) FILTER (WHERE status = '{RETURNED_STATUS}') AS returned
    FROM orders GROUP BY order_date
), item_side AS (
    SELECT o.order_date, CAST(sum(i.sale_price) * 100 AS HUGEINT) AS revenue_cents,
           count(*) AS items_sold
    FROM items i JOIN orders o USING (order_id)
    GROUP BY o.order_date
), daily AS (
    SELECT s.*, coalesce(t.revenue_cents, 0) AS revenue_cents,
           coalesce(t.items_sold, 0) AS items_sold
    FROM order_side s LEFT JOIN item_side t USING (order_date)
)
SELECT strftime(order_date, '%Y-%m-%d') AS order_date, total_orders, revenue_cents, items_sold,
       unique_customers,
       (2 * {10**RATE_SCALE} * returned + total_orders) // (2 * total_orders) AS return_rate_units,
       sum(revenue_cents) OVER w AS revenue_7d_cents,
       sum(total_orders) OVER w AS orders_7d
FROM daily
WINDOW w AS (ORDER BY order_date
             RANGE BETWEEN INTERVAL {WINDOW_DAYS - 1} DAYS PRECEDING AND CURRENT ROW)
"""


def _sql_list(paths: list[Path]) -> str:
    """A SQL list literal of file names (DDL cannot take prepared parameters)."""
    quoted = ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths)
    return f"[{quoted}]"


def compute(batch_dir: Path, *, threads: int | None = None) -> tuple[CategoryRows, OrderRows]:
    """(category rows, order rows) of the batch in ``batch_dir`` (seed-sample layout)."""
    files = dataset_files(Path(batch_dir))
    con = duckdb.connect(config={"threads": threads} if threads else {})
    try:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(
            _SOURCES.format(
                products=_sql_list(files["products"]),
                orders=_sql_list(files["orders"]),
                items=_sql_list(files["order_items"]),
                # a SQL string of the whitespace a label loses at both ends
                label_whitespace="'" + LABEL_WHITESPACE + "'",
            )
        )
        categories: CategoryRows = {}
        for category, day, revenue, count, average, rate, sold in con.execute(_CATEGORY).fetchall():
            categories[(category, day)] = category_row(
                {
                    "category": category,
                    "order_date": day,
                    "daily_revenue": from_cents(revenue),
                    "order_count": count,
                    "avg_order_value": from_cents(average),
                    "avg_return_rate": from_cents(rate, RATE_SCALE),
                    "items_sold": sold,
                }
            )
        orders: OrderRows = {}
        for day, total, revenue, sold, customers, rate, revenue_7d, orders_7d in con.execute(
            _ORDERS
        ).fetchall():
            orders[day] = order_row(
                {
                    "order_date": day,
                    "total_orders": total,
                    "total_revenue": from_cents(revenue),
                    "total_items_sold": sold,
                    "unique_customers": customers,
                    "return_rate": from_cents(rate, RATE_SCALE),
                    "revenue_7d": from_cents(revenue_7d),
                    "orders_7d": orders_7d,
                }
            )
        return categories, orders
    finally:
        con.close()
