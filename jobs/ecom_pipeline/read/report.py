"""Plain-text tables of exported KPIs, for the demo and run-local users."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from ecom_pipeline.core.contract import (
    CATEGORY_ITEM_ATTRIBUTES,
    CATEGORY_KPIS,
    MONEY_SCALE,
    ORDER_ITEM_ATTRIBUTES,
    ORDER_KPIS,
    RATE_SCALE,
)

_DECIMALS = {
    k.name: {"money": MONEY_SCALE, "rate": RATE_SCALE}.get(k.unit)
    for k in CATEGORY_KPIS + ORDER_KPIS
}


def _cell(column: str, value: Any) -> str:
    decimals = _DECIMALS.get(column)
    if decimals is not None and isinstance(value, int | float | Decimal):
        return f"{value:.{decimals}f}"
    return "" if value is None else str(value)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Columns aligned: text to the left, numbers to the right."""
    cells = [[_cell(c, row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), int | float | Decimal) for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *map(line, cells)])


def print_tables(out_dir: Path, *, last_days: int = 10) -> None:
    """Print the order table's last days and the category table's latest day."""
    orders = read_jsonl(out_dir / "order_kpis.jsonl")
    categories = read_jsonl(out_dir / "category_kpis.jsonl")
    print(f"\nOrder KPIs (last {last_days} of {len(orders)} days)")  # noqa: T201
    print(format_table(orders[-last_days:], ORDER_ITEM_ATTRIBUTES))  # noqa: T201
    if categories:
        latest = max(row["order_date"] for row in categories)
        day = sorted(
            (r for r in categories if r["order_date"] == latest),
            key=lambda r: -r["daily_revenue"],
        )
        print(f"\nCategory KPIs on {latest} ({len(categories)} items in the table)")  # noqa: T201
        print(format_table(day, CATEGORY_ITEM_ATTRIBUTES))  # noqa: T201
