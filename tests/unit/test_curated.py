"""Which dates a batch touches, and what the KPI job writes and deletes for them."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal as D

from ecom_pipeline.core.contract import ORDERS, PRODUCTS
from ecom_pipeline.tasks.kpi_job import plan
from ecom_pipeline.transforms.curated import Batch, Tables, affected_dates, window_dates
from ecom_pipeline.transforms.ingest import typed_schema

MAR1, MAR5 = date(2025, 3, 1), date(2025, 3, 5)
ITEM_SCHEMA = (
    "id long, order_id long, user_id long, product_id long, status string, created_at timestamp, "
    "shipped_at timestamp, delivered_at timestamp, returned_at timestamp, "
    "sale_price decimal(18,2)"
)


def _order(order_id, created, status="delivered", user=7):
    return (order_id, user, status, created, None, None, None, 1)


def _item(item_id, order_id, product_id, price, user=7, status="delivered"):
    return (
        item_id,
        order_id,
        user,
        product_id,
        status,
        datetime(2025, 3, 1),
        None,
        None,
        None,
        D(price),
    )


def _old_state(spark):
    products = spark.createDataFrame(
        [
            (1, "abc-12345678", D("1.00"), "Books", "b", "x", D("2.00"), "Media"),
            (2, "abd-12345678", D("1.00"), "Toys", "t", "x", D("2.00"), "Kids"),
        ],
        typed_schema(PRODUCTS),
    )
    orders = spark.createDataFrame(
        [
            (*_order(1, datetime(2025, 3, 1, 9)), MAR1),
            (*_order(2, datetime(2025, 3, 1, 10)), MAR1),
        ],
        typed_schema(ORDERS, with_order_date=True),
    )
    items = spark.createDataFrame(
        [(*_item(10, 1, 1, "5.00"), MAR1), (*_item(11, 2, 2, "3.00"), MAR1)],
        ITEM_SCHEMA + ", order_date date",
    )
    return Tables(products=products, orders=orders, items=items)


def test_moving_an_order_touches_its_old_and_new_date(spark):
    old = _old_state(spark)
    moved = spark.createDataFrame([_order(1, datetime(2025, 3, 5, 23, 30))], typed_schema(ORDERS))
    batch = Batch(products=None, orders=moved, items=None)
    assert sorted(r.order_date for r in affected_dates(old, batch).collect()) == [MAR1, MAR5]


def test_moved_order_takes_its_items_and_stale_category_items_are_deleted(spark):
    old = _old_state(spark)
    moved = spark.createDataFrame([_order(1, datetime(2025, 3, 5, 8))], typed_schema(ORDERS))
    changes = plan(old, Batch(products=None, orders=moved, items=None))
    assert changes.dates == [MAR1, MAR5]
    categories = {(r.category, r.order_date): r for r in changes.category_items.collect()}
    # the Books item (order 1) moved with its order; Toys (order 2) stayed on Mar 1
    assert set(categories) == {("Books", "2025-03-05"), ("Toys", "2025-03-01")}
    assert categories[("Books", "2025-03-05")].daily_revenue == D("5.00")
    deletes = {(r.category, r.order_date) for r in changes.category_deletes.collect()}
    assert deletes == {("Books", "2025-03-01")}
    orders = {r.order_date: r for r in changes.order_items.collect()}
    assert orders["2025-03-01"].total_orders == 1
    assert orders["2025-03-05"].total_orders == 1
    # Mar 1's window reaches Mar 7 and Mar 5's reaches Mar 11, but days without orders get no item
    assert set(orders) == {"2025-03-01", "2025-03-05"}
    assert orders["2025-03-05"].orders_7d == 2  # Mar 1 is inside Mar 5's 7-day window
    assert changes.order_deletes.count() == 0


def test_emptied_date_is_deleted_from_the_order_table(spark):
    old = _old_state(spark)
    both_moved = spark.createDataFrame(
        [_order(1, datetime(2025, 3, 5, 8)), _order(2, datetime(2025, 3, 5, 9))],
        typed_schema(ORDERS),
    )
    changes = plan(old, Batch(products=None, orders=both_moved, items=None))
    assert [r.order_date for r in changes.order_deletes.collect()] == ["2025-03-01"]
    assert {r.order_date for r in changes.order_items.collect()} == {"2025-03-05"}


def test_recategorised_product_touches_the_dates_it_was_sold(spark):
    old = _old_state(spark)
    renamed = spark.createDataFrame(
        [(2, "abd-12345678", D("1.00"), "Games", "t", "x", D("2.00"), "Kids")],
        typed_schema(PRODUCTS),
    )
    changes = plan(old, Batch(products=renamed, orders=None, items=None))
    assert changes.dates == [MAR1]
    assert {r.category for r in changes.category_items.collect()} == {"Books", "Games"}
    assert {r.category for r in changes.category_deletes.collect()} == {"Toys"}
    assert changes.products_changed


def test_window_dates_cover_the_six_following_days():
    assert window_dates([MAR1]) == [date(2025, 3, d) for d in range(1, 8)]


def test_curated_parquet_dictionary_encodes_only_repeating_columns(spark, tmp_path):
    """Ids, timestamps and amounts seldom repeat: the curated files store them plain (a
    dictionary of them only costs CPU and bytes); statuses keep their dictionary."""
    import duckdb

    from ecom_pipeline.core.contract import DATASETS
    from ecom_pipeline.tasks.kpi_job import write_curated

    schema = typed_schema(DATASETS["order_items"], with_order_date=True)
    rows = [(*_item(i, i // 2, 1, "1.00", status="shipped"), MAR1) for i in range(1, 200)]
    write_curated(spark.createDataFrame(rows, schema), DATASETS["order_items"], tmp_path, [MAR1])
    files = str(tmp_path / "order_date=2025-03-01" / "*.parquet")
    query = f"select path_in_schema, encodings from parquet_metadata('{files}')"
    encodings = dict(duckdb.sql(query).fetchall())
    assert "DICTIONARY" in encodings["status"]
    for column in ("id", "order_id", "user_id", "product_id", "created_at", "sale_price"):
        assert "DICTIONARY" not in encodings[column], (column, encodings[column])
