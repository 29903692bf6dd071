"""Deterministic synthetic batches in the seed-sample layout.

The pipeline is exercised at sizes the real sample cannot reach (millions of items), so the data is
made up. It has to look like the sample (same files, columns, formats, status mix, partial
returns, occasional missing delivery dates) so that validation and KPI code meet realistic input,
and it has to be reproducible so that a failing run can be replayed byte for byte.

Orders and items are written as they are drawn: memory stays flat whatever the order count.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from itertools import accumulate
from pathlib import Path
from typing import Protocol, TextIO

from ecom_pipeline.core import contract

DEFAULT_START = date(2025, 3, 8)
MIN_DEFAULT_PRODUCTS = 50
MAX_DEFAULT_PRODUCTS = 10_000
USER_POOL_FACTOR = 0.9

# Share of orders per status, close to a shop where most orders arrive and ~15% come back.
STATUS_WEIGHTS: dict[str, float] = {
    "delivered": 0.55,
    contract.RETURNED_STATUS: 0.15,
    "shipped": 0.12,
    "processing": 0.08,
    "pending": 0.05,
    "cancelled": 0.05,
}
if set(STATUS_WEIGHTS) != set(contract.ORDER_STATUSES):  # pragma: no cover - guards contract edits
    raise RuntimeError("generator STATUS_WEIGHTS must cover exactly contract.ORDER_STATUSES")

_SHIPPED = "shipped"
_DELIVERED = "delivered"
_RETURNED = contract.RETURNED_STATUS
_HAS_SHIPPED = frozenset({_SHIPPED, _DELIVERED, _RETURNED})
_HAS_DELIVERED = frozenset({_DELIVERED, _RETURNED})

# Draw in contract order so the stream does not depend on dict ordering above.
_STATUSES: tuple[str, ...] = contract.ORDER_STATUSES
_STATUS_CUM_WEIGHTS = tuple(accumulate(STATUS_WEIGHTS[s] for s in _STATUSES))

ITEM_COUNTS = (1, 2, 3, 4)
_ITEM_COUNT_CUM_WEIGHTS = tuple(accumulate((0.40, 0.30, 0.20, 0.10)))

MISSING_DELIVERED_AT_SHARE = 0.01  # delivered orders whose delivery date never arrived
MISSING_BRAND_SHARE = 0.01  # products without a brand, as in the sample
COMMA_NAME_SHARE = 0.15  # product names such as "Yoga Mat, Pack of 2" that need CSV quoting
EXTRA_ITEM_RETURNED_SHARE = 0.5  # in a returned order, other items come back this often

SALE_FACTOR_BP = (6_000, 13_000)  # sale_price = retail_price * [0.60, 1.30]
MARKUP_BP = (11_000, 30_000)  # retail_price = cost * [1.10, 3.00]
COST_CENTS = (200, 6_000)

ITEM_LAG_MINUTES = 120  # items are added to a basket up to two hours after the order opens
SHIP_HOURS = (1, 48)
DELIVER_HOURS = (12, 96)
RETURN_HOURS = (24, 240)

# category -> (department, product nouns)
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "Beauty": ("Personal Care", ("Face Serum", "Lip Balm", "Hair Dryer", "Night Cream")),
    "Sports": ("Outdoors", ("Yoga Mat", "Trail Shoes", "Camping Tent", "Water Bottle")),
    "Home & Kitchen": ("Home", ("Chef Knife", "Frying Pan", "Coffee Grinder", "Bath Towel")),
    "Clothing": ("Fashion", ("Denim Jacket", "Wool Sweater", "Running Shorts", "Linen Shirt")),
    "Electronics": ("Tech", ("Wireless Earbuds", "USB-C Charger", "Smart Speaker", "Webcam")),
    "Toys": ("Kids", ("Building Blocks", "Puzzle", "Plush Bear", "Toy Car")),
    "Books": ("Media", ("Cookbook", "Thriller Novel", "Travel Guide", "Comic Album")),
    "Grocery": ("Food", ("Olive Oil", "Green Tea", "Dark Chocolate", "Granola")),
    "Jewelry": ("Fashion", ("Silver Ring", "Pearl Earrings", "Gold Necklace", "Bracelet")),
    "Automotive": ("Auto", ("Car Wax", "Floor Mats", "Dash Cam", "Tire Gauge")),
}
_CATEGORY_NAMES: tuple[str, ...] = tuple(CATEGORIES)
ADJECTIVES = ("Classic", "Premium", "Compact", "Eco", "Deluxe", "Essential", "Pro", "Everyday")
NAME_VARIANTS = ("Pack of 2", "Large", "Blue", "Refurbished", "Set of 3", "Travel Size")
BRANDS = ("Acme", "Globex", "Initech", "Soylent", "Stark", "Umbrella", "Wonka", "Hooli")
_SKU_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True)
class GenerationSummary:
    """What a run wrote, so callers can upload or check the files without listing folders."""

    out_dir: Path
    products: int
    orders: int
    order_items: int
    files: tuple[Path, ...]


class _RowWriter(Protocol):
    def writerow(self, row: list[object], /) -> object: ...


@dataclass(frozen=True)
class _Product:
    id: int
    retail_cents: int


def _money(cents: int) -> str:
    """Exact decimal text: floats would print 0.30000000000000004 or drop trailing digits."""
    return str(Decimal(cents).scaleb(-contract.MONEY_SCALE))


def _open_csv(path: Path, columns: list[str]) -> tuple[TextIO, _RowWriter]:
    """UTF-8, LF and RFC 4180 quoting, matching the sample on every platform."""
    handle = path.open("w", encoding="utf-8", newline="")
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(columns)
    return handle, writer


def _product_rows(count: int, seed: int) -> Iterator[tuple[_Product, list[str]]]:
    rng = random.Random(f"{seed}-products")  # noqa: S311 - reproducible, not secret
    used_skus: set[str] = set()
    for product_id in range(1, count + 1):
        while True:
            letters = "".join(rng.choice(_SKU_LETTERS) for _ in range(3))
            sku = f"{letters}-{rng.randrange(10**8):08d}"
            if sku not in used_skus:
                used_skus.add(sku)
                break
        category = rng.choice(_CATEGORY_NAMES)
        department, nouns = CATEGORIES[category]
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(nouns)}"
        if rng.random() < COMMA_NAME_SHARE:
            name = f"{name}, {rng.choice(NAME_VARIANTS)}"
        brand = "" if rng.random() < MISSING_BRAND_SHARE else rng.choice(BRANDS)
        cost = rng.randint(*COST_CENTS)
        retail = max(cost, (cost * rng.randint(*MARKUP_BP) + 5_000) // 10_000)
        yield (
            _Product(product_id, retail),
            [
                str(product_id),
                sku,
                _money(cost),
                category,
                name,
                brand,
                _money(retail),
                department,
            ],
        )


class _Clock:
    """Timestamps as whole seconds after the window start; text only when written."""

    def __init__(self, start: date) -> None:
        self._base = datetime(start.year, start.month, start.day)

    def text(self, seconds: int | None) -> str:
        if seconds is None:
            return ""
        return (self._base + timedelta(seconds=seconds)).isoformat()


def _after(rng: random.Random, seconds: int, hours: tuple[int, int]) -> int:
    return seconds + rng.randint(*hours) * 3600


def _part_bounds(orders: int, parts: int) -> Iterator[tuple[int, int, int]]:
    """(part, first id, last id): order i lands in part 1 + (i-1) * parts // orders."""
    for part in range(1, parts + 1):
        first = -(-(part - 1) * orders // parts) + 1
        last = -(-part * orders // parts)
        yield part, first, last


def _validate(orders: int, days: int, parts: int, products: int | None) -> None:
    if orders < 1:
        raise ValueError(f"orders must be at least 1, got {orders}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    if products is not None and products < 1:
        raise ValueError(f"products must be at least 1, got {products}")


def generate(
    out_dir: Path,
    orders: int,
    *,
    seed: int = 7,
    start: date = DEFAULT_START,
    days: int = 31,
    parts: int = 1,
    products: int | None = None,
) -> GenerationSummary:
    """Write a batch shaped like the seed sample, reproducible from its arguments alone.

    Orders are drawn from one random stream in id order whatever ``parts`` is, so the same seed
    gives the same rows split differently. Existing files of the same names are overwritten; part
    files left by an earlier run with more parts are not removed.
    """
    _validate(orders, days, parts, products)
    product_count = (
        products
        if products is not None
        else max(MIN_DEFAULT_PRODUCTS, min(MAX_DEFAULT_PRODUCTS, orders))
    )
    out_dir = Path(out_dir)
    (out_dir / contract.ORDERS.name).mkdir(parents=True, exist_ok=True)
    (out_dir / contract.ORDER_ITEMS.name).mkdir(parents=True, exist_ok=True)

    catalog: list[_Product] = []
    products_path = out_dir / f"{contract.PRODUCTS.name}.csv"
    handle, writer = _open_csv(products_path, contract.PRODUCTS.column_names)
    with handle:
        for product, row in _product_rows(product_count, seed):
            writer.writerow(row)
            catalog.append(product)

    stream = _OrderStream(seed, start, days, orders, catalog)
    order_files: list[Path] = []
    item_files: list[Path] = []
    for part, first, last in _part_bounds(orders, parts):
        order_path = out_dir / contract.ORDERS.name / f"{contract.ORDERS.name}_part{part}.csv"
        item_path = (
            out_dir / contract.ORDER_ITEMS.name / f"{contract.ORDER_ITEMS.name}_part{part}.csv"
        )
        order_files.append(order_path)
        item_files.append(item_path)
        order_handle, order_writer = _open_csv(order_path, contract.ORDERS.column_names)
        item_handle, item_writer = _open_csv(item_path, contract.ORDER_ITEMS.column_names)
        with order_handle, item_handle:
            for order_id in range(first, last + 1):
                stream.write(order_id, order_writer, item_writer)

    return GenerationSummary(
        out_dir=out_dir,
        products=product_count,
        orders=orders,
        order_items=stream.last_item_id,
        files=(products_path, *order_files, *item_files),
    )


class _OrderStream:
    """One random stream for all orders, so splitting into parts never changes the rows."""

    def __init__(
        self, seed: int, start: date, days: int, orders: int, catalog: list[_Product]
    ) -> None:
        self._rng = random.Random(f"{seed}-orders")  # noqa: S311 - reproducible, not secret
        self._clock = _Clock(start)
        self._window = days * 86_400
        self._user_pool = max(1, round(orders * USER_POOL_FACTOR))
        self._catalog = catalog
        self.last_item_id = 0

    def write(self, order_id: int, order_writer: _RowWriter, item_writer: _RowWriter) -> None:
        rng, text = self._rng, self._clock.text
        user_id = rng.randint(1, self._user_pool)
        status = rng.choices(_STATUSES, cum_weights=_STATUS_CUM_WEIGHTS)[0]
        created = rng.randrange(self._window)
        shipped = _after(rng, created, SHIP_HOURS) if status in _HAS_SHIPPED else None
        delivery_lost = status == _DELIVERED and rng.random() < MISSING_DELIVERED_AT_SHARE
        delivered = None
        if status in _HAS_DELIVERED and not delivery_lost:
            delivered = _after(rng, shipped, DELIVER_HOURS)
        returned = None
        if status == _RETURNED:
            returned = _after(rng, delivered if delivered is not None else shipped, RETURN_HOURS)
        count = rng.choices(ITEM_COUNTS, cum_weights=_ITEM_COUNT_CUM_WEIGHTS)[0]
        order_writer.writerow(
            [
                order_id,
                user_id,
                status,
                text(created),
                text(returned),
                text(shipped),
                text(delivered),
                count,
            ]
        )

        # A returned order has at least one returned item; the others may have been kept.
        surely_returned = rng.randrange(count) if status == _RETURNED else -1
        max_lag = min(ITEM_LAG_MINUTES * 60, self._window - 1 - created)  # stay in the window
        for index in range(count):
            item_status = status
            if status == _RETURNED and index != surely_returned:
                item_status = _RETURNED if rng.random() < EXTRA_ITEM_RETURNED_SHARE else _DELIVERED
            item_created = created + rng.randint(0, max_lag)
            item_shipped = (
                _after(rng, item_created, SHIP_HOURS) if item_status in _HAS_SHIPPED else None
            )
            item_delivered = None
            if item_status in _HAS_DELIVERED and not delivery_lost:
                item_delivered = _after(rng, item_shipped, DELIVER_HOURS)
            item_returned = None
            if item_status == _RETURNED:
                item_returned = _after(rng, item_delivered, RETURN_HOURS)
            product = self._catalog[rng.randrange(len(self._catalog))]
            sale_cents = (product.retail_cents * rng.randint(*SALE_FACTOR_BP) + 5_000) // 10_000
            self.last_item_id += 1
            item_writer.writerow(
                [
                    self.last_item_id,
                    order_id,
                    user_id,
                    product.id,
                    item_status,
                    text(item_created),
                    text(item_shipped),
                    text(item_delivered),
                    text(item_returned),
                    _money(sale_cents),
                ]
            )
