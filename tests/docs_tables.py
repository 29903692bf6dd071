"""The docs' generated tables, rendered from the code they describe (tests keep the pages in
step). Kept with the tests: no production code reads them."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ecom_pipeline.core.contract import Kpi
from ecom_pipeline.core.settings import VARIABLES
from ecom_pipeline.core.tiers import EMR_TIERS, GIB, MIB, TIERS
from ecom_pipeline.pipeline import costs

EXPECTATIONS = Path(__file__).resolve().parents[1] / "expectations"


def markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    """A Markdown table of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def tier_table_markdown() -> str:
    """The size tier table (docs/scaling.md)."""
    header = (
        "tier",
        "input up to",
        "vCPU",
        "memory",
        "Spark driver heap",
        "ephemeral storage",
        "shuffle partitions",
    )
    rows = []
    for t in TIERS:
        cells = (
            t.name,
            _size(t.max_input_bytes),
            f"{t.cpu / 1024:g}",
            f"{t.memory_mib // 1024} GiB",
            f"{t.driver_memory_mib} MiB",
            f"{t.ephemeral_storage_gib} GiB",
            str(t.shuffle_partitions),
        )
        rows.append(cells)
    return markdown_table(header, rows)


def emr_tier_table_markdown() -> str:
    """The EMR Serverless tiers (docs/scaling.md)."""
    header = (
        "tier",
        "input up to",
        "worker (driver and each executor)",
        "Spark heap + overhead",
        "disk",
        "executors",
        "vCPU at full size",
        "shuffle partitions",
    )
    rows = []
    for t in EMR_TIERS:
        cells = (
            t.name,
            _size(t.max_input_bytes),
            f"{t.cores} vCPU, {t.memory_gib} GiB",
            f"{t.heap_mib} + {t.overhead_mib} MiB",
            f"{t.disk_gib} GiB",
            f"1 to {t.max_executors}",
            str(t.max_vcpu),
            str(t.shuffle_partitions),
        )
        rows.append(cells)
    return markdown_table(header, rows)


def _size(value: int) -> str:
    if value >= GIB:
        return f"{value / GIB:g} GiB"
    return f"{math.ceil(value / MIB)} MiB"


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


def cost_table_markdown() -> str:
    """The cost table (docs/scaling.md): per batch size, the route the tier table picks and the
    same batch on the smallest EMR Serverless tier."""
    header = (
        "batch (tier limit)",
        "route, tier",
        "est. time",
        "est. cost / batch",
        "USD / GiB",
        "same batch on EMR Serverless (emr tier, time, cost)",
    )
    rows = []
    for size in costs.batch_sizes():
        fargate = next((t for t in TIERS if size <= t.max_input_bytes), None)
        emr_tier = next(t for t in EMR_TIERS if size <= t.max_input_bytes)
        on_emr = costs.emr_estimate(size, emr_tier)
        chosen = costs.fargate_estimate(size, fargate) if fargate is not None else on_emr
        alternative = (
            f"{on_emr.tier}, {_duration(on_emr.wall_s)}, ${on_emr.cost_usd:.3f}"
            if fargate is not None
            else "(this is the route)"
        )
        cells = (
            _size(size),
            f"{chosen.route}, {chosen.tier} ({chosen.vcpu} vCPU per job)",
            _duration(chosen.wall_s),
            f"${chosen.cost_usd:.3f}",
            f"${chosen.per_gib(size):.3f}",
            alternative,
        )
        rows.append(cells)
    return markdown_table(header, rows)


def settings_table_markdown() -> str:
    """docs/settings.md: every environment variable, its default, meaning and readers."""
    header = ("variable", "default", "meaning", "read by")
    rows = [(f"`{v.name}`", f"`{v.default}`", v.meaning, v.read_by) for v in VARIABLES]
    return markdown_table(header, rows)


def kpi_table_markdown(kpis: tuple[Kpi, ...]) -> str:
    """docs/data-contract.md: one KPI table's attributes, units and definitions."""
    header = ("attribute", "unit", "definition")
    return markdown_table(header, [(f"`{k.name}`", k.unit, k.definition) for k in kpis])


def rule_table_markdown(dataset: str) -> str:
    """docs/data-contract.md: the rules of a dataset's suite, as its Data Docs name them."""
    suite = json.loads((EXPECTATIONS / f"{dataset}.json").read_text(encoding="utf-8"))
    rows = [
        (
            expectation["meta"]["rule"],
            f"`{expectation['type']}`",
            f"`{expectation['kwargs']['column']}`" if "column" in expectation["kwargs"] else "",
        )
        for expectation in suite["expectations"]
    ]
    return markdown_table(("rule", "expectation", "column"), rows)
