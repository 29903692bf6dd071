"""Checks of the pure-Python KPI reference (no Spark): the spec's worked example and hand-made data.

Every expected number in the small fixtures below was worked out by hand in the comments.
"""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path

import pytest

from ecom_pipeline.core import contract
from reference_kpis import (
    as_json_ready,
    category_kpis,
    kpis_from_batches,
    load_batches,
    order_date,
    order_kpis,
)

SEED_SAMPLE = Path(__file__).resolve().parents[1] / "data" / "seed-sample"

PRODUCT_COLUMNS = contract.PRODUCTS.column_names
ORDER_COLUMNS = contract.ORDERS.column_names
ITEM_COLUMNS = contract.ORDER_ITEMS.column_names


def write_csv(path: Path, columns: list[str], rows: list[dict], bom: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8-sig" if bom else "utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def product(pid: int, category: str) -> dict:
    return {
        "id": pid,
        "sku": f"ABC-{pid:08d}",
        "cost": "1.00",
        "category": category,
        "retail_price": "99.00",
    }


def order(oid: int, user: int, status: str, created_at: str, num: int = 1) -> dict:
    return {
        "order_id": oid,
        "user_id": user,
        "status": status,
        "created_at": created_at,
        "num_of_item": num,
    }


def item(
    iid: int, oid: int, pid: int, price: str, status: str = "delivered", created_at: str = ""
) -> dict:
    return {
        "id": iid,
        "order_id": oid,
        "user_id": 1,
        "product_id": pid,
        "status": status,
        # the item's own timestamp is deliberately far from the order's: it must not matter
        "created_at": created_at or "2030-01-01T00:00:00",
        "sale_price": price,
    }


def write_batch(
    batch_dir: Path,
    products: list[dict] | None = None,
    orders: list[dict] | None = None,
    items: list[dict] | None = None,
    nested: bool = False,
) -> Path:
    """Flat: products.csv, orders.csv, order_items.csv; nested: <dataset>/<dataset>_part1.csv."""
    for name, columns, rows in (
        ("products", PRODUCT_COLUMNS, products),
        ("orders", ORDER_COLUMNS, orders),
        ("order_items", ITEM_COLUMNS, items),
    ):
        if rows is None:
            continue
        path = batch_dir / name / f"{name}_part1.csv" if nested else batch_dir / f"{name}.csv"
        write_csv(path, columns, rows)
    return batch_dir


# --- the spec's worked example on the real sample ----------------------------------------------


@pytest.fixture(scope="module")
def sample_kpis():
    if not SEED_SAMPLE.is_dir():
        pytest.skip(f"seed sample not found at {SEED_SAMPLE}")
    return kpis_from_batches([SEED_SAMPLE])


def test_seed_sample_worked_example(sample_kpis):
    _, orders = sample_kpis
    day = orders["2025-03-25"]
    assert day["total_orders"] == 342
    assert day["total_revenue"] == Decimal("79153.56")
    assert day["total_items_sold"] == 999
    assert day["unique_customers"] == 335
    assert day["return_rate"] == Decimal("0.1842")


def test_seed_sample_tables_agree_and_have_contract_attributes(sample_kpis):
    categories, orders = sample_kpis
    assert categories
    assert orders
    for entry in categories.values():
        assert set(entry) == set(contract.CATEGORY_ITEM_ATTRIBUTES)
    for entry in orders.values():
        assert set(entry) == set(contract.ORDER_ITEM_ATTRIBUTES)
    # Every item has a category, so per date the category table adds up to the order table.
    for day, entry in orders.items():
        same_day = [c for (_, d), c in categories.items() if d == day]
        assert sum(c["daily_revenue"] for c in same_day) == entry["total_revenue"]
        assert sum(c["items_sold"] for c in same_day) == entry["total_items_sold"]


# --- hand-made fixtures ------------------------------------------------------------------------


def test_order_spanning_two_categories_with_partial_return(tmp_path):
    batch = write_batch(
        tmp_path / "b1",
        products=[product(1, "Jeans"), product(2, "Tops"), product(3, "Tops")],
        orders=[
            # order 1: a Jeans item (returned) and a Tops item (kept); the order is "returned"
            order(1, 10, " Returned ", "2025-03-01T10:00:00", 2),
            order(2, 10, "delivered", "2025-03-01T12:00:00", 2),
            order(3, 11, "SHIPPED", "2025-03-01T13:00:00", 1),
        ],
        items=[
            item(1, 1, 1, "10.00", "RETURNED"),
            item(2, 1, 2, "20.00", "delivered"),
            item(3, 2, 2, "5.50"),
            item(4, 2, 3, "4.50"),
            item(5, 3, 1, "30.00", "shipped"),
        ],
    )
    categories, orders = kpis_from_batches([batch])

    assert set(categories) == {("Jeans", "2025-03-01"), ("Tops", "2025-03-01")}
    # Jeans: items 1 (10.00, order 1, returned) and 5 (30.00, order 3)
    assert categories["Jeans", "2025-03-01"] == {
        "category": "Jeans",
        "order_date": "2025-03-01",
        "daily_revenue": Decimal("40.00"),
        "order_count": 2,
        "avg_order_value": Decimal("20.00"),
        "avg_return_rate": Decimal("0.5000"),  # order 1 of orders {1, 3}
        "items_sold": 2,
    }
    # Tops: items 2 (20.00, order 1), 3 and 4 (5.50 + 4.50, order 2); none returned
    assert categories["Tops", "2025-03-01"] == {
        "category": "Tops",
        "order_date": "2025-03-01",
        "daily_revenue": Decimal("30.00"),
        "order_count": 2,
        "avg_order_value": Decimal("15.00"),
        "avg_return_rate": Decimal("0.0000"),  # order 1's returned item is a Jeans item
        "items_sold": 3,
    }
    assert orders == {
        "2025-03-01": {
            "order_date": "2025-03-01",
            "total_orders": 3,
            "total_revenue": Decimal("70.00"),
            "total_items_sold": 5,
            "unique_customers": 2,  # users 10 and 11
            "return_rate": Decimal("0.3333"),  # order 1 of 3 (status " Returned ")
            "revenue_7d": Decimal("70.00"),
            "orders_7d": 3,
        }
    }
    for entry in categories.values():
        assert tuple(entry) == contract.CATEGORY_ITEM_ATTRIBUTES
    for entry in orders.values():
        assert tuple(entry) == contract.ORDER_ITEM_ATTRIBUTES


def test_rounding_is_half_up(tmp_path):
    batch = write_batch(
        tmp_path / "b1",
        products=[product(1, "X"), product(2, "Y")],
        orders=[
            order(1, 1, "returned", "2025-03-01T01:00:00"),
            order(2, 2, "returned", "2025-03-01T02:00:00"),
            order(3, 3, "delivered", "2025-03-01T03:00:00"),
        ],
        items=[
            # X: orders 1, 2, 3; only order 3's X item is returned -> 1/3 (item status counts:
            # by order status it would be 2/3)
            item(1, 1, 1, "1.00", "delivered"),
            item(2, 2, 1, "1.00", "delivered"),
            item(3, 3, 1, "2.00", "Returned"),
            # Y: orders 1 and 2, 10.00 + 10.01 = 20.01 -> 20.01 / 2 = 10.005
            item(4, 1, 2, "10.00", "delivered"),
            item(5, 2, 2, "10.01", "delivered"),
        ],
    )
    categories, orders = kpis_from_batches([batch])
    x = categories["X", "2025-03-01"]
    assert x["avg_return_rate"] == Decimal("0.3333")
    assert x["avg_order_value"] == Decimal("1.33")  # 4.00 / 3 = 1.333...
    y = categories["Y", "2025-03-01"]
    assert y["avg_order_value"] == Decimal("10.01")  # half-even would give 10.00
    assert y["avg_return_rate"] == Decimal("0.0000")
    # orders 1 and 2 of 3 have status returned -> 2/3
    assert orders["2025-03-01"]["return_rate"] == Decimal("0.6667")
    assert orders["2025-03-01"]["total_revenue"] == Decimal("24.01")
    # scales are exactly 2 and 4 decimals
    assert str(y["avg_order_value"]) == "10.01"
    assert str(y["avg_return_rate"]) == "0.0000"
    assert str(orders["2025-03-01"]["total_revenue"]) == "24.01"


def test_seven_day_window_with_empty_days(tmp_path):
    batch = write_batch(
        tmp_path / "b1",
        products=[product(1, "X")],
        orders=[
            order(1, 1, "delivered", "2025-03-01T10:00:00"),  # 10.00
            order(2, 2, "delivered", "2025-03-02T10:00:00"),  # 5.00
            order(3, 3, "delivered", "2025-03-02T11:00:00"),  # 7.00
            # nothing on 03-03
            order(4, 4, "delivered", "2025-03-04T10:00:00"),  # 1.00
            order(5, 5, "pending", "2025-03-04T11:00:00"),  # no items yet: counts, 0.00
            # nothing on 03-05 .. 03-07
            order(6, 6, "delivered", "2025-03-08T10:00:00"),  # 100.00
            order(7, 7, "delivered", "2025-03-09T10:00:00"),  # 0.50
        ],
        items=[
            item(1, 1, 1, "10.00"),
            item(2, 2, 1, "5.00"),
            item(3, 3, 1, "7.00"),
            item(4, 4, 1, "1.00"),
            item(6, 6, 1, "100.00"),
            item(7, 7, 1, "0.50"),
        ],
    )
    _, orders = kpis_from_batches([batch])
    assert sorted(orders) == ["2025-03-01", "2025-03-02", "2025-03-04", "2025-03-08", "2025-03-09"]

    def window(day: str) -> tuple[Decimal, int]:
        return orders[day]["revenue_7d"], orders[day]["orders_7d"]

    assert window("2025-03-01") == (Decimal("10.00"), 1)
    assert window("2025-03-02") == (Decimal("22.00"), 3)  # 10 + 12
    assert window("2025-03-04") == (Decimal("23.00"), 5)  # 10 + 12 + 1; orders 1 + 2 + 2
    # 03-02 .. 03-08: 03-01 has dropped out -> 12 + 1 + 100; orders 2 + 2 + 1
    assert window("2025-03-08") == (Decimal("113.00"), 5)
    # 03-03 .. 03-09: 03-02 has dropped out -> 1 + 100 + 0.50; orders 2 + 1 + 1
    assert window("2025-03-09") == (Decimal("101.50"), 4)

    day4 = orders["2025-03-04"]
    assert day4["total_orders"] == 2
    assert day4["total_revenue"] == Decimal("1.00")
    assert day4["total_items_sold"] == 1
    assert day4["unique_customers"] == 2


def test_correction_in_later_batch_moves_order_to_another_date(tmp_path):
    first = write_batch(
        tmp_path / "b1",
        products=[product(1, "X"), product(2, "Y")],
        orders=[
            order(1, 1, "delivered", "2025-03-01T10:00:00"),
            order(2, 2, "delivered", "2025-03-01T11:00:00"),
        ],
        items=[item(1, 1, 1, "10.00"), item(2, 2, 1, "4.00")],
    )
    # Second batch, in folders: order 1 is corrected to 03-02 and returned, item 1's price
    # corrected to 12.00, and a new item 3 (category Y) added to order 1. No products file.
    second = write_batch(
        tmp_path / "b2",
        orders=[order(1, 1, "returned", "2025-03-02T09:00:00", 2)],
        items=[item(1, 1, 1, "12.00", "returned"), item(3, 1, 2, "3.00")],
        nested=True,
    )
    categories, orders = kpis_from_batches([first, second])

    # 03-01 keeps only order 2 (4.00)
    assert orders["2025-03-01"]["total_orders"] == 1
    assert orders["2025-03-01"]["total_revenue"] == Decimal("4.00")
    assert orders["2025-03-01"]["return_rate"] == Decimal("0.0000")
    # 03-02: order 1 with items 1 (12.00) and 3 (3.00)
    day2 = orders["2025-03-02"]
    assert day2["total_orders"] == 1
    assert day2["total_revenue"] == Decimal("15.00")
    assert day2["total_items_sold"] == 2
    assert day2["return_rate"] == Decimal("1.0000")
    assert (day2["revenue_7d"], day2["orders_7d"]) == (Decimal("19.00"), 2)

    assert set(categories) == {("X", "2025-03-01"), ("X", "2025-03-02"), ("Y", "2025-03-02")}
    assert categories["X", "2025-03-01"]["daily_revenue"] == Decimal("4.00")
    assert categories["X", "2025-03-01"]["order_count"] == 1
    assert categories["X", "2025-03-02"]["daily_revenue"] == Decimal("12.00")
    assert categories["X", "2025-03-02"]["avg_return_rate"] == Decimal("1.0000")
    assert categories["Y", "2025-03-02"]["daily_revenue"] == Decimal("3.00")
    assert categories["Y", "2025-03-02"]["avg_return_rate"] == Decimal("0.0000")

    # the batch order matters: replaying them the other way round keeps the old rows
    _, reversed_orders = kpis_from_batches([second, first])
    assert reversed_orders["2025-03-01"]["total_orders"] == 2


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        ("2025-03-01T23:30:00-02:00", "2025-03-02"),  # 01:30 UTC next day
        ("2025-03-02T00:30:00+02:00", "2025-03-01"),  # 22:30 UTC the day before
        ("2025-03-01T23:59:59.999Z", "2025-03-01"),
        ("2025-03-02T00:00:00Z", "2025-03-02"),
        ("2025-03-01 23:59:59.123456789", "2025-03-01"),  # space, nanoseconds, naive = UTC
        ("2025-03-01T12:00:00", "2025-03-01"),
    ],
)
def test_order_date_is_utc_date(created_at, expected):
    assert order_date(created_at) == expected


def test_offset_timestamps_cross_midnight_utc(tmp_path):
    batch = write_batch(
        tmp_path / "b1",
        products=[product(1, "X")],
        orders=[
            order(1, 1, "delivered", "2025-03-01T23:30:00-02:00"),  # 2025-03-02 01:30 UTC
            order(2, 2, "delivered", "2025-03-02T00:30:00+02:00"),  # 2025-03-01 22:30 UTC
            order(3, 3, "delivered", "2025-03-02T08:00:00Z"),  # 2025-03-02
        ],
        items=[
            # item timestamps point the other way; only the order's date counts
            item(1, 1, 1, "1.00", created_at="2025-03-01T23:45:00"),
            item(2, 2, 1, "2.00", created_at="2025-03-02T00:45:00"),
            item(3, 3, 1, "4.00", created_at="2025-03-05T00:00:00"),
        ],
    )
    categories, orders = kpis_from_batches([batch])
    assert orders["2025-03-01"]["total_orders"] == 1
    assert orders["2025-03-01"]["total_revenue"] == Decimal("2.00")
    assert orders["2025-03-02"]["total_orders"] == 2
    assert orders["2025-03-02"]["total_revenue"] == Decimal("5.00")
    assert categories["X", "2025-03-02"]["daily_revenue"] == Decimal("5.00")
    assert set(orders) == {"2025-03-01", "2025-03-02"}


def test_load_batches_reads_bom_folders_and_keeps_latest_row(tmp_path):
    batch = tmp_path / "b1"
    write_csv(batch / "products.csv", PRODUCT_COLUMNS, [product(1, "X")], bom=True)
    write_csv(
        batch / "orders" / "orders_part2.csv",
        ORDER_COLUMNS,
        [order(1, 1, "pending", "2025-03-01T10:00:00")],
        bom=True,
    )
    write_csv(
        batch / "orders" / "orders_part10.csv",
        ORDER_COLUMNS,
        [order(1, 1, "shipped", "2025-03-01T10:00:00"), order(2, 1, "pending", "2025-03-01")],
    )
    write_csv(batch / "order_items" / "order_items_part1.csv", ITEM_COLUMNS, [item(1, 1, 1, "2")])
    write_csv(batch / "notes.csv", ["a"], [{"a": 1}])  # no dataset: ignored
    later = write_batch(tmp_path / "b2", items=[item(1, 1, 1, "3.00"), item(2, 2, 1, "1.00")])

    products, orders, items = load_batches([batch, later])
    assert set(products) == {1}
    assert products[1]["id"] == "1"  # BOM stripped from the first header
    assert orders[1]["order_id"] == "1"
    assert orders[1]["status"] == "shipped"  # part10 comes after part2
    assert set(orders) == {1, 2}
    assert set(items) == {1, 2}
    assert items[1]["sale_price"] == "3.00"  # later batch wins


def test_items_without_order_or_product_are_ignored(tmp_path):
    batch = write_batch(
        tmp_path / "b1",
        products=[product(1, "X")],
        orders=[order(1, 1, "delivered", "2025-03-01T10:00:00")],
        items=[item(1, 1, 1, "1.00"), item(2, 99, 1, "50.00"), item(3, 1, 99, "70.00")],
    )
    products, orders, items = load_batches([batch])
    assert order_kpis(products, orders, items)["2025-03-01"]["total_revenue"] == Decimal("1.00")
    assert order_kpis(products, orders, items)["2025-03-01"]["total_items_sold"] == 1
    assert set(category_kpis(products, orders, items)) == {("X", "2025-03-01")}


def test_as_json_ready():
    converted = as_json_ready(
        {
            "order_date": "2025-03-01",
            "total_orders": 3,
            "total_revenue": Decimal("70.00"),
            "avg_order_value": Decimal("10.01"),
            "return_rate": Decimal("0.3333"),
        }
    )
    assert converted == {
        "order_date": "2025-03-01",
        "total_orders": 3,
        "total_revenue": 70,
        "avg_order_value": 10.01,
        "return_rate": 0.3333,
    }
    assert type(converted["total_revenue"]) is int
    assert type(converted["avg_order_value"]) is float
