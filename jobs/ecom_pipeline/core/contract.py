"""The data contract: datasets, columns, types, value rules, tables and KPI definitions.

Everything else (readers, validation parameters, generator, KPI job, DynamoDB writer, tests,
docs) imports these definitions instead of restating them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from enum import IntEnum, StrEnum


class Kind(StrEnum):
    """How a CSV text value is parsed."""

    ID = "id"  # positive whole number key
    INT = "int"
    MONEY = "money"  # decimal, at most 2 fractional digits
    TIMESTAMP = "timestamp"  # ISO 8601; naive values are UTC
    TEXT = "text"
    # text that names a group and keys a KPI table: surrounding spaces trimmed ("Jeans " is
    # "Jeans"), at most LABEL_MAX_BYTES of UTF-8 (a DynamoDB partition key holds 2048 bytes)
    LABEL = "label"
    STATUS = "status"  # one of ORDER_STATUSES, any letter case


@dataclass(frozen=True)
class Column:
    name: str
    kind: Kind
    required: bool = False  # a row without a value is rejected


@dataclass(frozen=True)
class ForeignKey:
    column: str
    dataset: str
    target_column: str


@dataclass(frozen=True)
class Dataset:
    name: str
    key: str
    columns: tuple[Column, ...]
    foreign_keys: tuple[ForeignKey, ...] = ()
    # (later, earlier) timestamp pairs: later >= earlier wherever both are present
    timestamp_order: tuple[tuple[str, str], ...] = ()

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")

    def columns_of_kind(self, *kinds: Kind) -> list[str]:
        return [column.name for column in self.columns if column.kind in kinds]


ORDER_STATUSES: tuple[str, ...] = (
    "pending",
    "processing",
    "shipped",
    "delivered",
    "cancelled",
    "returned",
)
RETURNED_STATUS = "returned"

# SKU as in TheLook exports: three letters, a dash, eight digits (e.g. eHZ-67752426).
SKU_PATTERN = r"^[A-Za-z]{3}-[0-9]{8}$"

LABEL_MAX_BYTES = 2048
# What trimming a label removes from both ends: ASCII whitespace (not Spark's trim, spaces only).
LABEL_WHITESPACE = " \t\n\r\f\v"

MONEY_PRECISION = 18
MONEY_SCALE = 2
RATE_SCALE = 4

# Text patterns a value must match before it is cast; the cast then rejects impossible values
# (2025-02-30, hour 25) that a pattern cannot see.
PARSE_PATTERNS: dict[Kind, str] = {
    Kind.ID: r"^\s*[0-9]{1,18}\s*$",
    Kind.INT: r"^\s*-?[0-9]{1,9}\s*$",
    Kind.MONEY: r"^\s*-?[0-9]{1,16}(\.[0-9]{1,2})?\s*$",
    Kind.TIMESTAMP: (
        r"^\s*[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}"
        r"(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?\s*$"
    ),
}

TIMESTAMP_ORDER_ORDERS = (
    ("shipped_at", "created_at"),
    ("delivered_at", "shipped_at"),
    ("returned_at", "delivered_at"),
)

PRODUCTS = Dataset(
    name="products",
    key="id",
    columns=(
        Column("id", Kind.ID, required=True),
        Column("sku", Kind.TEXT, required=True),
        Column("cost", Kind.MONEY, required=True),
        Column("category", Kind.LABEL, required=True),
        Column("name", Kind.TEXT),
        Column("brand", Kind.TEXT),
        Column("retail_price", Kind.MONEY, required=True),
        Column("department", Kind.TEXT),
    ),
)

ORDERS = Dataset(
    name="orders",
    key="order_id",
    columns=(
        Column("order_id", Kind.ID, required=True),
        Column("user_id", Kind.ID, required=True),
        Column("status", Kind.STATUS, required=True),
        Column("created_at", Kind.TIMESTAMP, required=True),
        Column("returned_at", Kind.TIMESTAMP),
        Column("shipped_at", Kind.TIMESTAMP),
        Column("delivered_at", Kind.TIMESTAMP),
        Column("num_of_item", Kind.INT, required=True),
    ),
    timestamp_order=TIMESTAMP_ORDER_ORDERS,
)

ORDER_ITEMS = Dataset(
    name="order_items",
    key="id",
    columns=(
        Column("id", Kind.ID, required=True),
        Column("order_id", Kind.ID, required=True),
        Column("user_id", Kind.ID, required=True),
        Column("product_id", Kind.ID, required=True),
        Column("status", Kind.STATUS, required=True),
        Column("created_at", Kind.TIMESTAMP, required=True),
        Column("shipped_at", Kind.TIMESTAMP),
        Column("delivered_at", Kind.TIMESTAMP),
        Column("returned_at", Kind.TIMESTAMP),
        Column("sale_price", Kind.MONEY, required=True),
    ),
    foreign_keys=(
        ForeignKey("order_id", "orders", "order_id"),
        ForeignKey("product_id", "products", "id"),
    ),
    timestamp_order=TIMESTAMP_ORDER_ORDERS,
)

DATASETS: dict[str, Dataset] = {d.name: d for d in (PRODUCTS, ORDERS, ORDER_ITEMS)}

# Which row of a key the curated store keeps: the one from the newest upload. A row's version
# is its batch's upload time (the marker's event time, the plan's received_at; a replay keeps
# its batch's original one), so runs may finish in any order, and be replayed or retried, and
# the store still holds what one run over all accepted data in upload order would. Equal
# versions (the same upload applied again): the incoming row. Rows stored before versions
# existed count as the oldest.
VERSION_COLUMN = "_version"
# Order in which a batch's datasets are merged: a dataset only refers to earlier ones.
DATASET_ORDER: tuple[str, ...] = ("products", "orders", "order_items")

# Non-negative money columns, and other lower bounds the validation suites enforce.
NON_NEGATIVE_MONEY = {"products": ("cost", "retail_price"), "order_items": ("sale_price",)}
MIN_NUM_OF_ITEM = 1

# Files of a dataset are named <dataset>.csv or <dataset>_<anything>.csv (part files), optionally
# inside a folder named after the dataset.
_FILE_NAME = re.compile(r"^(?P<dataset>products|orders|order_items)(_[A-Za-z0-9_.-]+)?\.csv$")


def dataset_of_file(relative_path: str) -> str | None:
    """The dataset a batch file belongs to, or None when its name fits no dataset."""
    parts = relative_path.replace("\\", "/").split("/")
    match = _FILE_NAME.match(parts[-1])
    if not match:
        return None
    dataset = match.group("dataset")
    folders = parts[:-1]
    if folders and folders[-1] in DATASETS and folders[-1] != dataset:
        return None
    return dataset


# --- DynamoDB tables -------------------------------------------------------------------------

CATEGORY_TABLE = "ecom-category-kpis"
ORDER_TABLE = "ecom-order-kpis"
CATEGORY_TABLE_KEY = ("category", "order_date")  # partition, sort
ORDER_TABLE_KEY = ("order_date",)
DATE_FORMAT = "%Y-%m-%d"
WINDOW_DAYS = 7

# The lock table: one lease item per lock; KPI runs take LOCK_CURATED_STORE so that two batches
# never read-merge-write the curated store and the KPI tables at the same time (lock.py).
LOCK_TABLE = "ecom-pipeline-locks"
LOCK_TABLE_KEY = ("lock_id",)
LOCK_CURATED_STORE = "curated-store"
# epoch seconds after which the lease is free to take over; also the table's TTL attribute
LOCK_EXPIRY_ATTRIBUTE = "expires_at"


@dataclass(frozen=True)
class Kpi:
    name: str
    unit: str  # "money", "count", "rate"
    definition: str
    label: str  # what people call it: table headers, chart legends, dashboard cards
    # the daily KPI this one sums over the WINDOW_DAYS days ending each day (None: a daily KPI)
    window_of: str | None = None


CATEGORY_KPIS: tuple[Kpi, ...] = (
    Kpi("daily_revenue", "money", "Σ sale_price of the category's items", "revenue"),
    Kpi("order_count", "count", "distinct orders with an item of the category", "orders"),
    Kpi("avg_order_value", "money", "daily_revenue / order_count", "avg order value"),
    Kpi(
        "avg_return_rate",
        "rate",
        "orders with a returned item of the category / order_count",
        "return rate",
    ),
    Kpi("items_sold", "count", "items of the category", "items sold"),
)

ORDER_KPIS: tuple[Kpi, ...] = (
    Kpi(
        "total_orders",
        "count",
        "distinct orders created that day (with or without items yet)",
        "orders",
    ),
    Kpi("total_revenue", "money", "Σ sale_price of those orders' items", "revenue"),
    Kpi("total_items_sold", "count", "items of those orders", "items sold"),
    Kpi("unique_customers", "count", "distinct user_id of those orders", "customers"),
    Kpi("return_rate", "rate", "orders whose status is returned / total_orders", "return rate"),
    Kpi(
        "revenue_7d",
        "money",
        "total_revenue of the 7 days ending that day (days without orders count as zero)",
        f"{WINDOW_DAYS}-day revenue",
        window_of="total_revenue",
    ),
    Kpi(
        "orders_7d",
        "count",
        "total_orders of the 7 days ending that day",
        f"{WINDOW_DAYS}-day orders",
        window_of="total_orders",
    ),
)

CATEGORY_ITEM_ATTRIBUTES: tuple[str, ...] = CATEGORY_TABLE_KEY + tuple(
    k.name for k in CATEGORY_KPIS
)
ORDER_ITEM_ATTRIBUTES: tuple[str, ...] = ORDER_TABLE_KEY + tuple(k.name for k in ORDER_KPIS)


# --- Read access patterns: the keys and indexes that answer them with Query (never Scan) -------

# Order items also carry the month of their date ("YYYY-MM"), the partition key of the order
# table's month index: a table keyed by order_date alone can only be read one date at a time.
ORDER_MONTH_ATTRIBUTE = "order_month"
MONTH_FORMAT = "%Y-%m"


@dataclass(frozen=True)
class Index:
    """A global secondary index of a KPI table (projection ALL: a Query returns whole items)."""

    table: str
    name: str
    key: tuple[str, ...]  # partition, sort


# all categories on one date, ranked by revenue: order_date = :d, daily_revenue descending
CATEGORY_BY_DATE_INDEX = Index(CATEGORY_TABLE, "by-date", ("order_date", "daily_revenue"))
# order KPIs over a date range: one Query per month, order_month = :m AND order_date BETWEEN
ORDER_BY_MONTH_INDEX = Index(ORDER_TABLE, "by-month", (ORDER_MONTH_ATTRIBUTE, "order_date"))
INDEXES: tuple[Index, ...] = (CATEGORY_BY_DATE_INDEX, ORDER_BY_MONTH_INDEX)

# DynamoDB type of every attribute used in a table or index key
KEY_ATTRIBUTE_TYPES: dict[str, str] = {
    "category": "S",
    "order_date": "S",
    "daily_revenue": "N",
    ORDER_MONTH_ATTRIBUTE: "S",
}

# Attributes that exist only to feed an index: not KPIs, left out of exports and query output.
INDEX_ONLY_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    CATEGORY_TABLE: (),
    ORDER_TABLE: (ORDER_MONTH_ATTRIBUTE,),
}


def order_month(order_date: str) -> str:
    """The ``order_month`` of an order item: ``"2025-03-25"`` -> ``"2025-03"``."""
    return datetime.strptime(order_date, DATE_FORMAT).strftime(MONTH_FORMAT)


def index_attributes(table: str, item: dict[str, object]) -> dict[str, str]:
    """The index-only attributes an item of ``table`` carries, computed from its KPI attributes."""
    if table == ORDER_TABLE:
        return {ORDER_MONTH_ATTRIBUTE: order_month(str(item[ORDER_TABLE_KEY[0]]))}
    return {}


# --- Exit codes the orchestrator acts on -------------------------------------------------------


class ExitCode(IntEnum):
    OK = 0
    UNEXPECTED = 1  # a bug: retrying will not help
    USAGE = 2  # bad command line
    DATA_REJECTED = 3  # the batch broke a rule: fix the data, do not retry
    DEPENDENCY = 4  # AWS or storage trouble: safe to retry
