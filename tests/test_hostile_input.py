"""The corpus under tests/corpus/: hostile files fail with the rule that names their problem,
merely unusual ones pass. Each case runs the validation job's own steps (file checks, Spark read,
the GX suite) on one file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecom_pipeline.contract import DATASETS, dataset_of_file
from ecom_pipeline.ingest import DataFile, first_invalid_utf8, unreadable_reason
from ecom_pipeline.quality import run_suite
from ecom_pipeline.validation import (
    checkable_columns,
    file_failures,
    read_checkable,
    with_reference_checks,
)

CORPUS = Path(__file__).resolve().parent / "corpus"
EXPECTED: dict[str, str | None] = json.loads((CORPUS / "expected.json").read_text())


def _check(spark, case: str, tmp_path: Path):
    (path,) = sorted(p for p in (CORPUS / case).iterdir() if p.is_file())
    dataset = DATASETS[dataset_of_file(path.name)]
    data_file = DataFile(path, f"incoming/{case}/{path.name}")
    failures, readable = file_failures(dataset, [data_file])
    frame = read_checkable(spark, dataset, readable)
    if dataset.foreign_keys:
        known = {
            "orders": spark.createDataFrame([(1, 10)], "order_id long, user_id long"),
            "products": spark.createDataFrame([(1,)], "id long"),
        }
        frame = with_reference_checks(frame, dataset, known)
    outcome = run_suite(
        frame.cache(),
        dataset,
        checkable_columns=checkable_columns(dataset),
        run_name=case,
        project_dir=tmp_path / "gx",
    )
    return failures + outcome.failures, dataset.name


@pytest.mark.parametrize("case", sorted(c for c, rule in EXPECTED.items() if rule))
def test_hostile_file_fails_with_its_rule_naming_the_file(spark, tmp_path, case):
    failures, dataset = _check(spark, case, tmp_path)
    matching = [f.describe(dataset) for f in failures if f.rule == EXPECTED[case]]
    assert matching, f"{case}: got {sorted({f.rule for f in failures})}"
    assert any(case in message for message in matching), matching  # names the file


@pytest.mark.parametrize("case", sorted(c for c, rule in EXPECTED.items() if not rule))
def test_unusual_but_valid_file_passes(spark, tmp_path, case):
    failures, dataset = _check(spark, case, tmp_path)
    assert not failures, [f.describe(dataset) for f in failures]


def test_quoted_newlines_and_unicode_survive_the_read(spark):
    path = CORPUS / "ok_quoted_names" / "products.csv"
    frame = read_checkable(spark, DATASETS["products"], [DataFile(path, "products.csv")])
    names = {row.id: row.name for row in frame.collect()}
    assert names == {1: "Soap, lavender", 2: 'Two\nlines "quoted"', 3: "日本語の名前"}


def test_file_level_reasons_are_specific():
    assert unreadable_reason(CORPUS / "zero_byte" / "orders.csv") == "the file is empty (0 bytes)"
    assert "gzip" in unreadable_reason(CORPUS / "gzip" / "orders.csv")
    assert "JSON" in unreadable_reason(CORPUS / "json" / "orders.csv")
    assert "semicolon" in unreadable_reason(CORPUS / "semicolon_delimiter" / "orders.csv")
    assert unreadable_reason(CORPUS / "invalid_utf8" / "orders.csv") == (
        "not UTF-8 text: invalid byte 0xff on line 5"
    )
    assert unreadable_reason(CORPUS / "ok_bom_crlf" / "orders.csv") is None


def test_invalid_utf8_is_found_past_the_first_chunk(tmp_path):
    path = tmp_path / "big.csv"
    line = b"1,10,delivered,2025-03-01T10:00:00,,,,1\n"
    path.write_bytes(line * 60_000 + b"\xc3\x28\n")  # ~2.4 MB, a broken sequence at the end
    assert first_invalid_utf8(path) == (60_001, 0xC3)
