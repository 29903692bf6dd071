"""The synthetic generator: layout, contract shape, consistency, determinism and flat memory."""

from __future__ import annotations

import csv
import re
import tracemalloc
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ecom_pipeline.core import contract
from ecom_pipeline.local.generator import GenerationSummary, generate

ORDERS = 2_000
PARTS = 3
START = date(2025, 3, 8)
DAYS = 31
SHIPPED = {"shipped", "delivered", contract.RETURNED_STATUS}
DELIVERED = {"delivered", contract.RETURNED_STATUS}


@dataclass
class Batch:
    summary: GenerationSummary
    products: list[dict[str, str]]
    orders: list[dict[str, str]]
    items: list[dict[str, str]]
    # part number -> rows of that part file
    order_parts: dict[int, list[dict[str, str]]]
    item_parts: dict[int, list[dict[str, str]]]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def order_path(out: Path, part: int) -> Path:
    return out / "orders" / f"orders_part{part}.csv"


def item_path(out: Path, part: int) -> Path:
    return out / "order_items" / f"order_items_part{part}.csv"


def all_bytes(summary: GenerationSummary) -> dict[str, bytes]:
    return {str(p.relative_to(summary.out_dir)): p.read_bytes() for p in summary.files}


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Batch:
    out = tmp_path_factory.mktemp("batch")
    summary = generate(out, ORDERS, seed=7, start=START, days=DAYS, parts=PARTS)
    order_parts = {p: read_csv(order_path(out, p))[1] for p in range(1, PARTS + 1)}
    item_parts = {p: read_csv(item_path(out, p))[1] for p in range(1, PARTS + 1)}
    return Batch(
        summary=summary,
        products=read_csv(out / "products.csv")[1],
        orders=[row for p in sorted(order_parts) for row in order_parts[p]],
        items=[row for p in sorted(item_parts) for row in item_parts[p]],
        order_parts=order_parts,
        item_parts=item_parts,
    )


def ts(value: str) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


# --- layout --------------------------------------------------------------------------------------


def test_files_follow_the_seed_sample_layout(batch: Batch):
    out = batch.summary.out_dir
    expected = (
        out / "products.csv",
        *(order_path(out, p) for p in range(1, PARTS + 1)),
        *(item_path(out, p) for p in range(1, PARTS + 1)),
    )
    assert batch.summary.files == expected
    assert all(path.is_file() for path in expected)


@pytest.mark.parametrize(
    ("dataset", "relative"),
    [
        (contract.PRODUCTS, "products.csv"),
        *((contract.ORDERS, f"orders/orders_part{p}.csv") for p in range(1, PARTS + 1)),
        *(
            (contract.ORDER_ITEMS, f"order_items/order_items_part{p}.csv")
            for p in range(1, PARTS + 1)
        ),
    ],
)
def test_headers_equal_contract_columns(batch: Batch, dataset: contract.Dataset, relative: str):
    header, _ = read_csv(batch.summary.out_dir / relative)
    assert header == dataset.column_names
    assert contract.dataset_of_file(relative) == dataset.name


def test_files_are_utf8_with_lf_endings_and_quoted_commas(batch: Batch):
    for path in batch.summary.files:
        raw = path.read_bytes()
        raw.decode("utf-8")
        assert b"\r" not in raw, path
        assert raw.endswith(b"\n"), path
    names_with_comma = [row["name"] for row in batch.products if "," in row["name"]]
    assert names_with_comma, "some product names should contain a comma"
    text = (batch.summary.out_dir / "products.csv").read_text(encoding="utf-8")
    assert f'"{names_with_comma[0]}"' in text


def test_row_counts_match_summary(batch: Batch):
    summary = batch.summary
    assert summary.orders == len(batch.orders) == ORDERS
    assert summary.order_items == len(batch.items)
    assert summary.products == len(batch.products) == ORDERS  # max(50, min(10_000, orders))


@pytest.mark.parametrize(("orders", "expected"), [(1, 50), (49, 50), (120, 120)])
def test_default_product_count(tmp_path: Path, orders: int, expected: int):
    summary = generate(tmp_path, orders)
    assert summary.products == expected
    assert len(read_csv(tmp_path / "products.csv")[1]) == expected


def test_explicit_product_count(tmp_path: Path):
    summary = generate(tmp_path, 30, products=7)
    _, items = read_csv(item_path(tmp_path, 1))
    assert summary.products == 7
    assert {int(row["product_id"]) for row in items} <= set(range(1, 8))


# --- ids and keys --------------------------------------------------------------------------------


def test_ids_are_consecutive(batch: Batch):
    assert [int(r["id"]) for r in batch.products] == list(range(1, len(batch.products) + 1))
    assert [int(r["order_id"]) for r in batch.orders] == list(range(1, ORDERS + 1))
    assert [int(r["id"]) for r in batch.items] == list(range(1, len(batch.items) + 1))
    item_order_ids = [int(r["order_id"]) for r in batch.items]
    assert item_order_ids == sorted(item_order_ids), "items must follow their orders"


def test_num_of_item_equals_item_count(batch: Batch):
    counts = Counter(row["order_id"] for row in batch.items)
    for order in batch.orders:
        assert 1 <= int(order["num_of_item"]) <= 4
        assert counts[order["order_id"]] == int(order["num_of_item"]), order["order_id"]
    assert {int(o["num_of_item"]) for o in batch.orders} == {1, 2, 3, 4}


def test_item_user_is_the_order_user(batch: Batch):
    user_of_order = {row["order_id"]: row["user_id"] for row in batch.orders}
    for item in batch.items:
        assert item["user_id"] == user_of_order[item["order_id"]], item["id"]


def test_users_come_from_a_pool_smaller_than_the_orders(batch: Batch):
    users = [int(row["user_id"]) for row in batch.orders]
    assert min(users) >= 1
    assert max(users) <= round(ORDERS * 0.9)
    assert len(set(users)) < ORDERS  # some users order twice


def test_item_products_exist(batch: Batch):
    product_ids = {row["id"] for row in batch.products}
    assert {row["product_id"] for row in batch.items} <= product_ids


# --- products ------------------------------------------------------------------------------------


def test_skus_match_contract_pattern_and_are_unique(batch: Batch):
    skus = [row["sku"] for row in batch.products]
    pattern = re.compile(contract.SKU_PATTERN)
    assert all(pattern.match(sku) for sku in skus), [s for s in skus if not pattern.match(s)][:5]
    assert len(set(skus)) == len(skus)


def test_categories_have_their_department(batch: Batch):
    departments = defaultdict(set)
    for row in batch.products:
        assert row["category"]
        assert row["department"]
        departments[row["category"]].add(row["department"])
    assert all(len(found) == 1 for found in departments.values()), departments
    assert departments["Beauty"] == {"Personal Care"}
    assert departments["Electronics"] == {"Tech"}
    assert len(departments) >= 7


def money(value: str) -> Decimal:
    assert re.fullmatch(contract.PARSE_PATTERNS[contract.Kind.MONEY], value), value
    assert re.fullmatch(r"[0-9]+\.[0-9]{2}", value), value  # never 1e-05 or 12.300000001
    amount = Decimal(value)
    assert amount >= 0
    return amount


def test_money_has_two_decimals_and_is_not_negative(batch: Batch):
    for dataset, columns in contract.NON_NEGATIVE_MONEY.items():
        rows = batch.products if dataset == "products" else batch.items
        for row in rows:
            for column in columns:
                money(row[column])
    for row in batch.products:
        assert money(row["retail_price"]) >= money(row["cost"]), row["id"]


def test_sale_price_is_a_factor_of_retail_price(batch: Batch):
    retail = {row["id"]: Decimal(row["retail_price"]) for row in batch.products}
    above = 0
    for item in batch.items:
        price, base = Decimal(item["sale_price"]), retail[item["product_id"]]
        assert (
            base * Decimal("0.6") - Decimal("0.01")
            <= price
            <= base * Decimal("1.3") + Decimal("0.01")
        )
        above += price > base
    assert above, "some items sell above retail price, as in real data"


# --- statuses ------------------------------------------------------------------------------------


def test_all_statuses_occur_with_realistic_shares(batch: Batch):
    shares = Counter(row["status"] for row in batch.orders)
    assert set(shares) == set(contract.ORDER_STATUSES)
    assert shares.most_common(1)[0][0] == "delivered"
    assert 0.10 <= shares[contract.RETURNED_STATUS] / ORDERS <= 0.20


def test_item_status_follows_order_status(batch: Batch):
    order_status = {row["order_id"]: row["status"] for row in batch.orders}
    item_statuses = defaultdict(list)
    for item in batch.items:
        item_statuses[item["order_id"]].append(item["status"])
    partial = 0
    for order_id, status in order_status.items():
        statuses = item_statuses[order_id]
        if status == contract.RETURNED_STATUS:
            assert contract.RETURNED_STATUS in statuses, order_id
            assert set(statuses) <= {contract.RETURNED_STATUS, "delivered"}, order_id
            partial += "delivered" in statuses
        else:
            assert set(statuses) == {status}, order_id
    assert partial, "some returned orders should be partial returns"


# --- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["orders", "items"])
def test_timestamps_are_ordered(batch: Batch, which: str):
    rows = batch.orders if which == "orders" else batch.items
    for row in rows:
        for later, earlier in contract.TIMESTAMP_ORDER_ORDERS:
            if row[later] and row[earlier]:
                assert ts(row[later]) >= ts(row[earlier]), (row, later, earlier)
        if row["returned_at"] and not row["delivered_at"]:
            assert ts(row["returned_at"]) >= ts(row["shipped_at"]), row


@pytest.mark.parametrize("which", ["orders", "items"])
def test_timestamps_present_by_status(batch: Batch, which: str):
    rows = batch.orders if which == "orders" else batch.items
    missing_delivery = 0
    for row in rows:
        status = row["status"]
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", row["created_at"]), row
        assert bool(row["shipped_at"]) == (status in SHIPPED), row
        assert bool(row["returned_at"]) == (status == contract.RETURNED_STATUS), row
        if status == contract.RETURNED_STATUS:
            assert row["delivered_at"], row
        elif status == "delivered":
            missing_delivery += not row["delivered_at"]
        else:
            assert not row["delivered_at"], row
    delivered = sum(row["status"] == "delivered" for row in rows)
    assert 0 < missing_delivery <= 0.03 * delivered


def test_items_are_created_with_or_after_their_order(batch: Batch):
    created = {row["order_id"]: ts(row["created_at"]) for row in batch.orders}
    for item in batch.items:
        lag = ts(item["created_at"]) - created[item["order_id"]]
        assert timedelta(0) <= lag <= timedelta(hours=3), item


def test_created_dates_lie_within_the_window(batch: Batch):
    first = datetime(START.year, START.month, START.day)
    end = first + timedelta(days=DAYS)
    created = [ts(row["created_at"]) for row in batch.orders + batch.items]
    assert all(first <= moment < end for moment in created)
    assert {moment.date() for moment in created} == {START + timedelta(days=d) for d in range(DAYS)}


def test_start_and_days_move_the_window(tmp_path: Path):
    generate(tmp_path, 300, start=date(2024, 12, 31), days=2)
    _, orders = read_csv(order_path(tmp_path, 1))
    assert {ts(row["created_at"]).date() for row in orders} == {
        date(2024, 12, 31),
        date(2025, 1, 1),
    }


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_gives_identical_bytes(tmp_path: Path):
    first = generate(tmp_path / "a", 300, seed=11, parts=2)
    second = generate(tmp_path / "b", 300, seed=11, parts=2)
    assert all_bytes(first) == all_bytes(second)


def test_other_seed_gives_other_bytes(tmp_path: Path):
    first = all_bytes(generate(tmp_path / "a", 300, seed=11))
    second = all_bytes(generate(tmp_path / "b", 300, seed=12))
    assert first.keys() == second.keys()
    assert all(first[name] != second[name] for name in first)


def test_parts_do_not_change_the_rows(tmp_path: Path):
    whole = generate(tmp_path / "whole", 200, parts=1)
    split = generate(tmp_path / "split", 200, parts=4)

    def rows(summary: GenerationSummary, folder: str, key: str) -> list[dict[str, str]]:
        found = [
            row for path in summary.out_dir.glob(f"{folder}/*.csv") for row in read_csv(path)[1]
        ]
        return sorted(found, key=lambda row: int(row[key]))

    assert rows(whole, "orders", "order_id") == rows(split, "orders", "order_id")
    assert rows(whole, "order_items", "id") == rows(split, "order_items", "id")


# --- parts ---------------------------------------------------------------------------------------


def test_parts_hold_contiguous_order_ranges(batch: Batch):
    for part, rows in batch.order_parts.items():
        ids = [int(row["order_id"]) for row in rows]
        assert ids, part
        assert ids == list(range(ids[0], ids[-1] + 1))
        assert all(1 + (i - 1) * PARTS // ORDERS == part for i in ids)


def test_items_sit_in_the_part_of_their_order(batch: Batch):
    part_of_order = {
        row["order_id"]: part for part, rows in batch.order_parts.items() for row in rows
    }
    for part, rows in batch.item_parts.items():
        assert rows, part
        assert all(part_of_order[row["order_id"]] == part for row in rows)


def test_more_parts_than_orders_leaves_header_only_files(tmp_path: Path):
    summary = generate(tmp_path, 2, parts=5)
    assert len(summary.files) == 1 + 2 * 5
    sizes = [len(read_csv(order_path(tmp_path, p))[1]) for p in range(1, 6)]
    assert sorted(sizes) == [0, 0, 0, 1, 1]
    assert [len(read_csv(item_path(tmp_path, p))[1]) > 0 for p in range(1, 6)] == [
        size > 0 for size in sizes
    ]
    header, _ = read_csv(item_path(tmp_path, 2))
    assert header == contract.ORDER_ITEMS.column_names


# --- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"orders": 0}, "orders"),
        ({"orders": -5}, "orders"),
        ({"orders": 10, "parts": 0}, "parts"),
        ({"orders": 10, "days": 0}, "days"),
        ({"orders": 10, "products": 0}, "products"),
    ],
)
def test_invalid_arguments_raise(tmp_path: Path, kwargs: dict, message: str):
    with pytest.raises(ValueError, match=message):
        generate(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists(), "nothing is written for bad arguments"


# --- streaming -----------------------------------------------------------------------------------


def traced_peak(out: Path, orders: int) -> int:
    tracemalloc.start()
    try:
        generate(out, orders, products=100)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_stays_flat_as_orders_grow(tmp_path: Path):
    # 12k orders and ~25k items; kept in lists they would take well over 10 MB.
    small = traced_peak(tmp_path / "small", 1_200)
    large = traced_peak(tmp_path / "large", 12_000)
    assert large < 3_000_000, f"peak {large / 1e6:.1f} MB: rows are being accumulated"
    assert large < small + 1_000_000, f"peak grew from {small} to {large} bytes"
