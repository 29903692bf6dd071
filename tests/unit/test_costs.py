"""The cost table of docs/scaling.md is what pipeline.costs derives from the tier table."""

from __future__ import annotations

from pathlib import Path

import pytest

from docs_tables import cost_table_markdown
from ecom_pipeline.core.tiers import EMR_TIERS, GIB, MIB, TIERS
from ecom_pipeline.pipeline import costs

SCALING_PAGE = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


def test_scaling_page_shows_the_cost_table():
    assert cost_table_markdown() in SCALING_PAGE.read_text(encoding="utf-8")


def test_scaling_page_states_the_price_assumptions():
    text = SCALING_PAGE.read_text(encoding="utf-8")
    for value in (
        costs.FARGATE_VCPU_HOUR,
        costs.FARGATE_GB_HOUR,
        costs.EMR_VCPU_HOUR,
        costs.EMR_GB_HOUR,
        costs.MIB_PER_VCPU_S,
    ):
        assert f"{value:g}" in text, value
    assert costs.REGION in text


def test_the_table_has_a_row_per_tier_limit_of_both_routes():
    rows = cost_table_markdown().splitlines()[2:]
    assert len(rows) == len(TIERS) + len(EMR_TIERS)
    for row, tier in zip(rows, [*TIERS, *EMR_TIERS], strict=True):
        assert f" {tier.name} (" in row


def test_small_tier_estimate_from_first_principles():
    tier = TIERS[0]  # 1 vCPU, 4 GiB, 21 GiB of storage
    size = 256 * MIB
    seconds_per_pass = 256 / 8.0  # MiB / (MiB/s per vCPU * 1 vCPU)
    billed_hours = (2 * seconds_per_pass + 4 * 60) / 3600
    hourly = 1 * 0.04048 + 4 * 0.004445 + 1 * 0.000111
    estimate = costs.fargate_estimate(size, tier)
    assert estimate.cost_usd == pytest.approx(billed_hours * hourly)
    assert estimate.wall_s == pytest.approx(2 * (seconds_per_pass + 60))


def test_cost_grows_with_size_on_each_route_and_emr_is_faster_for_the_largest_fargate_batch():
    sizes = [GIB, 8 * GIB, 24 * GIB]
    fargate = [costs.fargate_estimate(s, TIERS[-1]).cost_usd for s in sizes]
    emr = [costs.emr_estimate(s, EMR_TIERS[0]).cost_usd for s in sizes]
    assert fargate == sorted(fargate)
    assert emr == sorted(emr)
    largest = TIERS[-1].max_input_bytes
    on_fargate = costs.fargate_estimate(largest, TIERS[-1])
    on_emr = costs.emr_estimate(largest, EMR_TIERS[0])
    assert on_emr.wall_s < on_fargate.wall_s  # many executors: sooner, but dearer
    assert on_emr.cost_usd > on_fargate.cost_usd
