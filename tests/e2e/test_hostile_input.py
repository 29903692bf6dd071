"""The corpus under tests/corpus/, every case a batch run through `ecom-pipeline run-local`:
hostile batches end FAILED with a notice naming file, rule, bad-row count and example, their
files move byte for byte to rejected/<batch>/ beside a _reason.json, and no KPI changes; merely
unusual batches succeed and their files move to archive/<batch>/."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from corpus_cases import CORPUS, EXPECTED, HOSTILE_CASES, OK_CASES, read_jsonl
from ecom_pipeline.core.contract import DATASETS, ExitCode
from ecom_pipeline.core.layout import ARCHIVE, INCOMING, REASON_FILE, REJECTED, rejected_prefix
from ecom_pipeline.local.run_local import BUCKET_EXPORT
from ecom_pipeline.tasks.validation import read_checkable
from ecom_pipeline.transforms.ingest import DataFile, first_invalid_utf8, unreadable_reason
from reference_kpis import as_json_ready, kpis_from_batches


def _case_files(case: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((CORPUS / case).iterdir()) if p.is_file()}


def _exported_tables(out: Path) -> tuple[dict, dict]:
    categories = {
        (r["category"], r["order_date"]): r for r in read_jsonl(out / "category_kpis.jsonl")
    }
    return categories, {r["order_date"]: r for r in read_jsonl(out / "order_kpis.jsonl")}


def test_corpus_run_fails_exactly_the_hostile_batches(corpus_run):
    code, notices = corpus_run.code, corpus_run.notices
    assert code == ExitCode.DATA_REJECTED
    assert {case: notice["status"] for case, notice in notices.items()} == {
        case: "FAILED" if EXPECTED[case] else "SUCCEEDED" for case in EXPECTED
    }


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_batch_fails_with_a_notice_naming_file_rule_count_and_example(corpus_run, case):
    notices = corpus_run.notices
    want = EXPECTED[case]
    notice = notices[case]
    assert notice["stage"] == want["stage"]
    assert notice["execution_id"].endswith(f":{case}")
    if want["stage"] == "intake":
        unrecognised = [f"incoming/{case}/{want['example']}"]
        assert notice["unrecognised_files"] == unrecognised
        assert notice["rule"] == want["rule"]
        assert len(notice["unrecognised_files"]) == want["count"]
        return
    statuses = {v["dataset"]: v["status"] for v in notice["validations"]}
    assert statuses[want["dataset"]] == "FAILED"
    result = next(v["result"] for v in notice["validations"] if v["dataset"] == want["dataset"])
    rules = [r for r in result["failed_rules"] if r["rule"] == want["rule"]]
    assert rules, f"{case}: got {sorted(r['rule'] for r in result['failed_rules'])}"
    # a header problem is reported per file and for the whole dataset: take the file's
    rule = next((r for r in rules if want["example"] in r["message"]), rules[0])
    assert rule.get("unexpected_count") == want["count"]
    assert f"incoming/{case}/" in rule["message"]  # names the file
    assert f"rule '{want['rule']}'" in rule["message"]
    assert want["example"] in rule["message"], rule["message"]
    if want["count"] is not None:
        assert f"failed on {want['count']} of" in rule["message"]


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_batch_files_move_to_rejected_with_their_reason(corpus_run, case):
    out, notices = corpus_run.out, corpus_run.notices
    want = EXPECTED[case]
    bucket = out / BUCKET_EXPORT
    folder = bucket / REJECTED / case
    assert not (bucket / INCOMING / case).exists()
    assert not (bucket / ARCHIVE / case).exists()
    kept = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != REASON_FILE}
    assert kept == _case_files(case) | {"_SUCCESS": b""}  # every byte, nothing else
    custody = notices[case]["custody"]
    assert custody == {
        "moved": True,
        "files": f"s3://ecom-pipeline-local/{rejected_prefix(case)}",
        "reason": f"s3://ecom-pipeline-local/{rejected_prefix(case)}{REASON_FILE}",
    }
    reason = json.loads((folder / REASON_FILE).read_text(encoding="utf-8"))
    assert reason["batch_id"] == case
    assert reason["stage"] == want["stage"]
    assert reason["execution_id"] == notices[case]["execution_id"]
    assert datetime.fromisoformat(reason["time"]).tzinfo is not None
    assert sorted(reason["files"]) == sorted(f"{rejected_prefix(case)}{n}" for n in kept)
    if want["stage"] == "intake":
        assert reason["rule"] == want["rule"]
        assert reason["unrecognised_files"] == [f"{rejected_prefix(case)}{want['example']}"]
        return
    dataset = reason["datasets"][want["dataset"]]
    assert dataset["status"] == "FAILED"
    rules = [r for r in dataset["failed_rules"] if r["rule"] == want["rule"]]
    rule = next((r for r in rules if want["example"] in r["message"]), rules[0])
    assert rule.get("unexpected_count") == want["count"]
    assert want["example"] in rule["message"]
    if want["count"] is not None:
        assert rule["examples"]


@pytest.mark.parametrize("case", OK_CASES)
def test_unusual_but_valid_batch_succeeds_and_is_archived(corpus_run, case):
    out, notices = corpus_run.out, corpus_run.notices
    notice = notices[case]
    assert notice["status"] == "SUCCEEDED"
    assert all(v["status"] in ("PASSED", "SKIPPED") for v in notice["validations"])
    assert notice["custody"] == {
        "moved": True,
        "files": f"s3://ecom-pipeline-local/{ARCHIVE}/{case}/",
    }
    bucket = out / BUCKET_EXPORT
    assert not (bucket / INCOMING / case).exists()
    assert not (bucket / REJECTED / case).exists()
    archived = {p.name: p.read_bytes() for p in (bucket / ARCHIVE / case).iterdir()}
    assert archived == _case_files(case) | {"_SUCCESS": b""}


def test_hostile_batches_change_no_kpi(corpus_run):
    """The tables equal the reference over the valid batches alone, although every hostile
    batch ran after them with rows on the same dates."""
    out, seconds = corpus_run.out, corpus_run.seconds
    categories, orders = kpis_from_batches([CORPUS / c for c in OK_CASES])
    exported_categories, exported_orders = _exported_tables(out)
    assert exported_orders == {k: as_json_ready(v) for k, v in orders.items()}
    assert exported_categories == {k: as_json_ready(v) for k, v in categories.items()}
    assert set(exported_orders) == {"2025-03-01", "2025-03-02"}
    print(f"corpus: {len(EXPECTED)} batches through run-local in {seconds:.1f}s")


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
