"""The README and docs/ stay short, current and in step with the code they describe."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from docs_tables import kpi_table_markdown, rule_table_markdown
from ecom_pipeline.core.contract import CATEGORY_KPIS, DATASET_ORDER, ORDER_KPIS

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.md"))
LINK = re.compile(r"\]\(([^)#\s]+)(#[^)\s]*)?\)")


def test_readme_is_short():
    assert len(README.read_text(encoding="utf-8").split()) < 2500


def test_readme_has_no_dated_counters():
    text = README.read_text(encoding="utf-8")
    # counts and timings of a run go stale with every commit: docs/testing.md and the CI log
    assert not re.search(r"\b\d+ (tests|passed|failed)\b|\bas of\b|\blast run\b", text, re.I)


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    missing = []
    for target, _anchor in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target):  # http(s), mailto
            continue
        if not (page.parent / target).exists():
            missing.append(target)
    assert missing == []


def test_every_docs_page_is_in_the_index():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    assert [p.name for p in PAGES if p.name != "README.md" and f"({p.name})" not in index] == []


def test_kpi_page_lists_every_contract_kpi():
    text = (DOCS / "kpis.md").read_text(encoding="utf-8")
    assert kpi_table_markdown(CATEGORY_KPIS) in text
    assert kpi_table_markdown(ORDER_KPIS) in text


@pytest.mark.parametrize("dataset", DATASET_ORDER)
def test_contract_page_lists_every_rule_of_the_suites(dataset):
    assert rule_table_markdown(dataset) in (DOCS / "data-contract.md").read_text(encoding="utf-8")
