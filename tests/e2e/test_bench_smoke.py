"""``python -m bench`` end to end on a tiny size: JSON shape, engines agreeing, the page table."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bench import run

from ecom_pipeline.core.contract import DATASET_ORDER

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench_run(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    page = out / "benchmark.md"
    shutil.copy(ROOT / "docs" / "benchmark.md", page)
    code = run.main(
        [
            "--sizes", "1k",
            "--runs", "1",
            "--warmups", "0",
            "--in-process",
            "--no-demo",
            "--cache-dir", str(out / "cache"),
            "--results", str(out / "results.json"),
            "--chart", str(out / "results.png"),
            "--page", str(page),
        ]
    )  # fmt: skip
    return code, out


def test_results_json_has_every_measurement(bench_run):
    code, out = bench_run
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    size = results["sizes"]["1k"]
    assert size["dataset"]["order_items"] > 900
    assert size["tier"]["name"] == "small"
    tasks = [f"validate:{d}" for d in DATASET_ORDER] + ["kpis", "duckdb", "pandas"]
    for task in tasks:
        measured = size["measurements"][task]
        assert measured["median_s"] > 0
        assert measured["peak_rss_mib"] > 0
        assert measured["rows_per_s"] > 0
        assert len(measured["runs_s"]) == 1
    for name in DATASET_ORDER:
        assert size["validation"]["per_dataset"][name]["ratio"] > 0
    assert size["measurements"]["validate:order_items"]["rows"] == size["dataset"]["order_items"]
    assert set(size["ratios"]) == {
        "kpi_job_per_duckdb",
        "kpi_job_per_pandas",
        "pipeline_per_duckdb",
        "pipeline_per_pandas",
    }
    statuses = {t["target"]: t["status"] for t in results["targets"]}
    assert len(statuses) == 5
    assert statuses[run.DEMO_TARGET] == "not measured"
    assert statuses[run.TIER_TARGET] == "not measured"  # no 10M run here


def test_the_three_engines_agree(bench_run):
    _, out = bench_run
    agreement = json.loads((out / "results.json").read_text())["sizes"]["1k"]["agreement"]
    assert agreement["duckdb"] == "identical"
    assert agreement["pandas"] == "identical"
    assert agreement["category_rows"] > 50
    assert agreement["order_rows"] == 31


def test_page_table_is_rewritten_between_the_markers(bench_run):
    _, out = bench_run
    before = (ROOT / "docs" / "benchmark.md").read_text()
    after = (out / "benchmark.md").read_text()
    head, rest = after.split(run.TABLE_START)
    table, tail = rest.split(run.TABLE_END)
    assert head == before.split(run.TABLE_START)[0]
    assert tail == before.split(run.TABLE_END)[1]
    assert "| 1k (" in table
    assert "validation <= 1.5x one full scan" in table
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_page_without_markers_is_refused(tmp_path):
    page = tmp_path / "benchmark.md"
    page.write_text("# no markers\n")
    with pytest.raises(run.BenchError, match="markers"):
        run.rewrite_page(page, "| table |")
