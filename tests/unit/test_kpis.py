"""KPI rules on small inline DataFrames; expected rows are worked out by hand in each test."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D

import pytest
from chispa import assert_df_equality

from ecom_pipeline.core.contract import CATEGORY_ITEM_ATTRIBUTES, ORDER_ITEM_ATTRIBUTES
from ecom_pipeline.transforms.kpis import category_kpis, enrich_items, order_kpis

ORDERS = "order_id long, user_id long, status string, order_date date"
ITEMS = (
    "id long, order_id long, user_id long, product_id long, status string, "
    "sale_price decimal(18,2), order_date date"
)
PRODUCTS = "id long, category string"
CATEGORY_ROW = (
    "category string, order_date string, daily_revenue decimal(18,2), order_count long, "
    "avg_order_value decimal(18,2), avg_return_rate decimal(7,4), items_sold long"
)
ORDER_ROW = (
    "order_date string, total_orders long, total_revenue decimal(18,2), total_items_sold long, "
    "unique_customers long, return_rate decimal(7,4), revenue_7d decimal(18,2), orders_7d long"
)
MAR25 = date(2025, 3, 25)


@pytest.fixture(scope="module")
def products(spark):
    return spark.createDataFrame([(1, "Books"), (2, "Toys"), (3, "Books")], PRODUCTS)


def _categories(spark, products, items):
    frame = spark.createDataFrame(items, ITEMS)
    return category_kpis(enrich_items(frame, products)).orderBy("category", "order_date")


def test_order_spanning_two_categories_counts_in_each(spark, products):
    # order 10 buys a book (12.50) and a toy (7.25); order 11 buys two books (1.00 + 2.00)
    items = [
        (1, 10, 5, 1, "delivered", D("12.50"), MAR25),
        (2, 10, 5, 2, "delivered", D("7.25"), MAR25),
        (3, 11, 6, 1, "delivered", D("1.00"), MAR25),
        (4, 11, 6, 3, "delivered", D("2.00"), MAR25),
    ]
    expected = spark.createDataFrame(
        [
            ("Books", "2025-03-25", D("15.50"), 2, D("7.75"), D("0.0000"), 3),
            ("Toys", "2025-03-25", D("7.25"), 1, D("7.25"), D("0.0000"), 1),
        ],
        CATEGORY_ROW,
    )
    assert_df_equality(_categories(spark, products, items), expected, ignore_nullable=True)


def test_partial_return_counts_the_order_once_per_category(spark, products):
    # order 20: two books, one returned; order 21: one book, kept; order 22: a toy returned
    items = [
        (1, 20, 5, 1, "returned", D("10.00"), MAR25),
        (2, 20, 5, 3, "delivered", D("10.00"), MAR25),
        (3, 21, 6, 1, "delivered", D("10.00"), MAR25),
        (4, 22, 7, 2, "RETURNED", D("4.00"), MAR25),
    ]
    rows = {r.category: r for r in _categories(spark, products, items).collect()}
    assert rows["Books"].order_count == 2
    assert rows["Books"].avg_return_rate == D("0.5000")  # 1 of 2 book orders had a returned book
    assert rows["Books"].items_sold == 3
    assert rows["Toys"].avg_return_rate == D("1.0000")  # status compared case-insensitively


def test_rates_and_averages_round_half_up(spark, products):
    # three book orders, one with a return: 1/3 -> 0.3333; 20.01 over 2 toy orders -> 10.01
    items = [
        (1, 30, 5, 1, "returned", D("1.00"), MAR25),
        (2, 31, 5, 1, "delivered", D("1.00"), MAR25),
        (3, 32, 5, 1, "delivered", D("1.00"), MAR25),
        (4, 33, 6, 2, "returned", D("10.00"), MAR25),
        (5, 34, 6, 2, "returned", D("10.01"), MAR25),
        (6, 35, 6, 2, "delivered", D("0.00"), MAR25),
    ]
    rows = {r.category: r for r in _categories(spark, products, items).collect()}
    assert rows["Books"].avg_return_rate == D("0.3333")
    assert rows["Toys"].avg_return_rate == D("0.6667")  # 2/3 rounds up
    assert rows["Toys"].avg_order_value == D("6.67")  # 20.01 / 3 = 6.67
    two_orders = [
        (1, 40, 5, 2, "delivered", D("10.00"), MAR25),
        (2, 41, 5, 2, "delivered", D("10.01"), MAR25),
    ]
    assert _categories(spark, products, two_orders).first().avg_order_value == D("10.01")


def test_decimal_sums_have_no_float_drift(spark, products):
    # 0.10 + 0.20 (+0.10 ...) is exact in decimal; floats would give 3.0000000000000004 etc.
    items = [
        (n, 50 + n, 5, 1, "delivered", D("0.10") if n % 2 else D("0.20"), MAR25)
        for n in range(1, 21)
    ]
    row = _categories(spark, products, items).first()
    assert row.daily_revenue == D("3.00")
    assert str(row.daily_revenue) == "3.00"


def test_order_table_counts_orders_revenue_items_customers_and_returns(spark):
    orders = spark.createDataFrame(
        [
            (1, 100, "returned", MAR25),
            (2, 100, "delivered", MAR25),
            (3, 101, "shipped", MAR25),
            (4, 102, "cancelled", MAR25),  # no items yet: still an order of the day
        ],
        ORDERS,
    )
    items = spark.createDataFrame(
        [
            (1, 1, 100, 1, "returned", D("10.10"), MAR25),
            (2, 1, 100, 2, "delivered", D("5.05"), MAR25),
            (3, 2, 100, 1, "delivered", D("1.00"), MAR25),
            (4, 3, 101, 1, "shipped", D("3.33"), MAR25),
        ],
        ITEMS,
    )
    expected = spark.createDataFrame(
        [("2025-03-25", 4, D("19.48"), 4, 3, D("0.2500"), D("19.48"), 4)], ORDER_ROW
    )
    assert_df_equality(order_kpis(orders, items), expected, ignore_nullable=True)


def test_trailing_window_counts_empty_days_as_zero(spark):
    # Mar 1: 1 order 10.00; Mar 3: 2 orders 5.00; Mar 8: 1, 1.00; Mar 9: 1, 2.00; Mar 10: 1, 4.00
    days = {
        date(2025, 3, 1): [(1, "10.00")],
        date(2025, 3, 3): [(2, "2.00"), (3, "3.00")],
        date(2025, 3, 8): [(4, "1.00")],
        date(2025, 3, 9): [(5, "2.00")],
        date(2025, 3, 10): [(6, "4.00")],
    }
    orders = spark.createDataFrame(
        [(oid, 1, "delivered", day) for day, rows in days.items() for oid, _ in rows], ORDERS
    )
    items = spark.createDataFrame(
        [
            (oid, oid, 1, 1, "delivered", D(price), day)
            for day, rows in days.items()
            for oid, price in rows
        ],
        ITEMS,
    )
    window = {
        r.order_date: (r.revenue_7d, r.orders_7d) for r in order_kpis(orders, items).collect()
    }
    assert window == {
        "2025-03-01": (D("10.00"), 1),
        "2025-03-03": (D("15.00"), 3),  # Mar 1..3
        "2025-03-08": (D("6.00"), 3),  # Mar 2..8: Mar 1 has left the window
        "2025-03-09": (D("8.00"), 4),  # Mar 3..9: Mar 3 is the window's first day
        "2025-03-10": (D("7.00"), 3),  # Mar 4..10: Mar 3 has left
    }


def test_output_columns_are_the_table_attributes(spark, products):
    items = [(1, 1, 1, 1, "delivered", D("1.00"), MAR25)]
    assert tuple(_categories(spark, products, items).columns) == CATEGORY_ITEM_ATTRIBUTES
    orders = spark.createDataFrame([(1, 1, "delivered", MAR25)], ORDERS)
    assert (
        tuple(order_kpis(orders, spark.createDataFrame(items, ITEMS)).columns)
        == ORDER_ITEM_ATTRIBUTES
    )
