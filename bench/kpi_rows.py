"""One shape for KPI results from every engine, so they can be compared row by row.

The shape is the one ``tests/reference_kpis.py`` returns: category rows keyed by
``(category, order_date)``, order rows keyed by ``order_date`` (``YYYY-MM-DD``); money and rates as
``Decimal`` with 2 and 4 decimals, counts as ``int``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from ecom_pipeline.core.contract import (
    CATEGORY_ITEM_ATTRIBUTES,
    CATEGORY_KPIS,
    MONEY_SCALE,
    ORDER_ITEM_ATTRIBUTES,
    ORDER_KPIS,
    RATE_SCALE,
)

CategoryRows = dict[tuple[str, str], dict[str, Any]]
OrderRows = dict[str, dict[str, Any]]

_UNITS = {k.name: k.unit for k in (*CATEGORY_KPIS, *ORDER_KPIS)}
_QUANTUM = {"money": Decimal(1).scaleb(-MONEY_SCALE), "rate": Decimal(1).scaleb(-RATE_SCALE)}


def canonical(name: str, value: Any) -> Any:
    """A KPI value in the common form (money/rate: exact Decimal; count: int; key: str)."""
    unit = _UNITS.get(name)
    if unit is None:
        return str(value)
    if unit == "count":
        return int(value)
    decimal = value if isinstance(value, Decimal) else Decimal(str(value))
    return decimal.quantize(_QUANTUM[unit])


def category_row(values: dict[str, Any]) -> dict[str, Any]:
    return {name: canonical(name, values[name]) for name in CATEGORY_ITEM_ATTRIBUTES}


def order_row(values: dict[str, Any]) -> dict[str, Any]:
    return {name: canonical(name, values[name]) for name in ORDER_ITEM_ATTRIBUTES}


def from_cents(cents: int, scale: int = MONEY_SCALE) -> Decimal:
    """Integer units of 10**-scale as an exact Decimal."""
    return Decimal(int(cents)).scaleb(-scale)


def differences(
    name_a: str, a: tuple[CategoryRows, OrderRows], name_b: str, b: tuple[CategoryRows, OrderRows]
) -> list[str]:
    """Every row and value where two engines disagree (empty when they agree exactly)."""
    problems = []
    for table, rows_a, rows_b in (("category", a[0], b[0]), ("order", a[1], b[1])):
        for key in sorted(set(rows_a) | set(rows_b), key=str):
            if key not in rows_a or key not in rows_b:
                missing = name_a if key not in rows_a else name_b
                problems.append(f"{table} row {key}: missing from {missing}")
                continue
            for attribute, value in rows_a[key].items():
                other = rows_b[key].get(attribute)
                if value != other:
                    problems.append(
                        f"{table} row {key} {attribute}: {name_a}={value} {name_b}={other}"
                    )
    return problems
