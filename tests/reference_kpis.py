"""A small pure-Python reference for the KPI tables, used to check the Spark pipeline.

It follows the KPI definitions in ``ecom_pipeline.core.contract`` by a different method than the
pipeline (plain loops over dicts of CSV rows, stdlib ``csv`` and ``decimal`` only), so tests can
compare the two. It assumes valid data: items whose order or product is missing are skipped here,
whereas the pipeline rejects them before computing KPIs.

Output items look like DynamoDB items: money and rates as ``Decimal`` (2 and 4 decimals,
ROUND_HALF_UP), counts as ``int``, key attributes included.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, localcontext
from pathlib import Path

from ecom_pipeline.core import contract

MONEY_QUANTUM = Decimal(1).scaleb(-contract.MONEY_SCALE)  # 0.01
RATE_QUANTUM = Decimal(1).scaleb(-contract.RATE_SCALE)  # 0.0001

# (file name prefix, dataset, key column); order_items before orders so the longer prefix wins.
_DATASET_PREFIXES = (
    ("order_items", "order_items", "id"),
    ("orders", "orders", "order_id"),
    ("products", "products", "id"),
)


def _natural_key(path: Path) -> list:
    """Sort part2 before part10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _classify(file_name: str) -> tuple[str, str] | None:
    for prefix, dataset, key in _DATASET_PREFIXES:
        if file_name.startswith(prefix):
            return dataset, key
    return None


def load_batches(
    batch_dirs: Sequence[Path],
) -> tuple[dict[int, dict], dict[int, dict], dict[int, dict]]:
    """Raw string rows of all batches, keyed by id; later batches (and files) replace earlier rows.

    Returns (products, orders, items).
    """
    tables: dict[str, dict[int, dict]] = {"products": {}, "orders": {}, "order_items": {}}
    for batch_dir in batch_dirs:
        batch_dir = Path(batch_dir)
        files = sorted(
            batch_dir.rglob("*.csv"), key=lambda p: _natural_key(p.relative_to(batch_dir))
        )
        for path in files:
            classified = _classify(path.name)
            if classified is None:
                continue
            dataset, key = classified
            with path.open(encoding="utf-8-sig", newline="") as handle:
                for row in csv.DictReader(handle):
                    tables[dataset][int(row[key].strip())] = row
    return tables["products"], tables["orders"], tables["order_items"]


def order_date(created_at: str) -> str:
    """UTC date (YYYY-MM-DD) of an ISO 8601 timestamp; naive timestamps are UTC."""
    text = created_at.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.date().strftime(contract.DATE_FORMAT)


def _status(value: str) -> str:
    return (value or "").strip().lower()


def _money(value: Decimal) -> Decimal:
    return value.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def _rate(numerator: int, denominator: int) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 50
        return (Decimal(numerator) / Decimal(denominator)).quantize(
            RATE_QUANTUM, rounding=ROUND_HALF_UP
        )


def _average(total: Decimal, count: int) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = 50
        return (total / Decimal(count)).quantize(MONEY_QUANTUM, rounding=ROUND_HALF_UP)


def _valid_items(products: dict[int, dict], orders: dict[int, dict], items: dict[int, dict]):
    """(item row, its order id, its order row, its product row) for items with order and product."""
    for item in items.values():
        order_id = int(item["order_id"].strip())
        product_id = int(item["product_id"].strip())
        if order_id in orders and product_id in products:
            yield item, order_id, orders[order_id], products[product_id]


def category_kpis(
    products: dict[int, dict], orders: dict[int, dict], items: dict[int, dict]
) -> dict[tuple[str, str], dict]:
    """Category table items keyed by (category, order_date)."""
    revenue: dict[tuple[str, str], Decimal] = defaultdict(Decimal)
    item_count: dict[tuple[str, str], int] = defaultdict(int)
    order_ids: dict[tuple[str, str], set[int]] = defaultdict(set)
    returned_order_ids: dict[tuple[str, str], set[int]] = defaultdict(set)

    for item, order_id, order, product in _valid_items(products, orders, items):
        category = product["category"].strip(contract.LABEL_WHITESPACE)
        key = (category, order_date(order["created_at"]))
        revenue[key] += Decimal(item["sale_price"].strip())
        item_count[key] += 1
        order_ids[key].add(order_id)
        if _status(item["status"]) == contract.RETURNED_STATUS:
            returned_order_ids[key].add(order_id)

    result: dict[tuple[str, str], dict] = {}
    for key in order_ids:
        category, day = key
        count = len(order_ids[key])
        result[key] = {
            "category": category,
            "order_date": day,
            "daily_revenue": _money(revenue[key]),
            "order_count": count,
            "avg_order_value": _average(revenue[key], count),
            "avg_return_rate": _rate(len(returned_order_ids[key]), count),
            "items_sold": item_count[key],
        }
    return result


def order_kpis(
    products: dict[int, dict], orders: dict[int, dict], items: dict[int, dict]
) -> dict[str, dict]:
    """Order table items keyed by order_date, one per date with at least one order."""
    orders_by_day: dict[str, set[int]] = defaultdict(set)
    users_by_day: dict[str, set[int]] = defaultdict(set)
    returned_by_day: dict[str, int] = defaultdict(int)
    for order_id, order in orders.items():
        day = order_date(order["created_at"])
        orders_by_day[day].add(order_id)
        users_by_day[day].add(int(order["user_id"].strip()))
        if _status(order["status"]) == contract.RETURNED_STATUS:
            returned_by_day[day] += 1

    revenue_by_day: dict[str, Decimal] = defaultdict(Decimal)
    items_by_day: dict[str, int] = defaultdict(int)
    for item, _order_id, order, _product in _valid_items(products, orders, items):
        day = order_date(order["created_at"])
        revenue_by_day[day] += Decimal(item["sale_price"].strip())
        items_by_day[day] += 1

    result: dict[str, dict] = {}
    for day, day_orders in orders_by_day.items():
        end = date.fromisoformat(day)
        window = [
            (end - timedelta(days=back)).strftime(contract.DATE_FORMAT)
            for back in range(contract.WINDOW_DAYS)
        ]
        total_orders = len(day_orders)
        result[day] = {
            "order_date": day,
            "total_orders": total_orders,
            "total_revenue": _money(revenue_by_day[day]),
            "total_items_sold": items_by_day[day],
            "unique_customers": len(users_by_day[day]),
            "return_rate": _rate(returned_by_day[day], total_orders),
            "revenue_7d": _money(
                sum((revenue_by_day.get(d, Decimal(0)) for d in window), Decimal(0))
            ),
            "orders_7d": sum(len(orders_by_day.get(d, ())) for d in window),
        }
    return result


def kpis_from_batches(batch_dirs: Sequence[Path]) -> tuple[dict, dict]:
    """(category_kpis, order_kpis) of the batches merged in order."""
    products, orders, items = load_batches(batch_dirs)
    return category_kpis(products, orders, items), order_kpis(products, orders, items)


def as_json_ready(item: dict) -> dict:
    """The item with Decimal values as int when integral, else float (as in JSONL exports)."""
    converted = {}
    for name, value in item.items():
        if isinstance(value, Decimal):
            value = int(value) if value == value.to_integral_value() else float(value)
        converted[name] = value
    return converted
