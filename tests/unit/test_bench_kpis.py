"""The benchmark's DuckDB and pandas KPIs equal the independent reference, row by row."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from bench import duckdb_kpis, pandas_kpis
from bench.kpi_rows import differences

import reference_kpis
from ecom_pipeline.core.contract import CATEGORY_KPIS, ORDER_KPIS
from ecom_pipeline.local.generator import generate


def _with_offsets_and_cases(batch: Path) -> None:
    """Every 5th order's created_at as the same instant at +02:00 or with Z, every 7th status
    in capitals: the UTC date and the case rules must hold, not just the generator's format."""
    for path in sorted((batch / "orders").glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for index, row in enumerate(rows):
            moment = datetime.fromisoformat(row["created_at"])
            if index % 10 == 0:
                row["created_at"] = (moment + timedelta(hours=2)).isoformat() + "+02:00"
            elif index % 5 == 0:
                row["created_at"] = moment.isoformat() + "Z"
            if index % 7 == 0:
                row["status"] = row["status"].upper()
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


def _with_padded_categories(batch: Path) -> None:
    """Every 3rd product's category padded with spaces or a tab: a label is trimmed, so each
    engine must group "Jeans " with "Jeans"."""
    for path in sorted(batch.glob("products*.csv")) + sorted(batch.glob("products/*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        for index, row in enumerate(rows):
            if index % 3 == 0:
                row["category"] = (" " if index % 2 else "\t") + row["category"] + "  "
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench-kpis") / "batch"
    generate(root, 1500, seed=11, days=20, parts=3)
    _with_offsets_and_cases(root)
    _with_padded_categories(root)
    return root


@pytest.fixture(scope="module")
def reference(batch):
    return reference_kpis.kpis_from_batches([batch])


def test_the_dataset_exercises_every_kpi(reference):
    categories, orders = reference
    assert all(category == category.strip() for category, _ in categories)
    assert len({category for category, _ in categories}) >= 5
    assert any(row["avg_return_rate"] > 0 for row in categories.values())
    assert any(row["return_rate"] > 0 for row in orders.values())
    # a +02:00 time just before midnight UTC lands on the UTC date, not the next local one
    assert any(row["revenue_7d"] != row["total_revenue"] for row in orders.values())


@pytest.mark.parametrize("engine", [duckdb_kpis, pandas_kpis], ids=["duckdb", "pandas"])
def test_engine_equals_reference(engine, batch, reference):
    computed = engine.compute(batch)
    assert differences("reference", reference, engine.__name__, computed) == []
    assert computed[0] == reference[0]
    assert computed[1] == reference[1]


def test_differences_names_every_disagreement(reference):
    categories, orders = reference
    key = next(iter(categories))
    changed = {**categories, key: {**categories[key], "items_sold": -1}}
    dropped_day = dict(list(orders.items())[1:])
    problems = differences("a", reference, "b", (changed, dropped_day))
    assert any("items_sold" in p and str(key) in p for p in problems)
    assert any("missing from b" in p for p in problems)


@pytest.mark.parametrize("engine", [reference_kpis, duckdb_kpis, pandas_kpis])
def test_every_contract_kpi_has_an_independent_computation(engine, batch):
    """A KPI added to the contract must be added to each independent computation too (they
    stay independent of the contract's code on purpose, so this is where a miss shows)."""
    compute = engine.kpis_from_batches if engine is reference_kpis else engine.compute
    categories, orders = compute([batch] if engine is reference_kpis else batch)
    assert {k.name for k in CATEGORY_KPIS} <= set(next(iter(categories.values())))
    assert {k.name for k in ORDER_KPIS} <= set(next(iter(orders.values())))
