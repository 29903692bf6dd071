"""The container entry points (`ecom-pipeline validate`, `compute-kpis`) and `generate`, run
as a user or an ECS task would: through the command's main() with flags, against moto."""

from __future__ import annotations

import json

import pytest

from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import ORDER_TABLE, ExitCode
from ecom_pipeline.core.layout import incoming_prefix, result_key, staging_prefix
from ecom_pipeline.local.emulator import LocalAws

ORDERS = """\
order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item
1,10,delivered,2025-03-01T10:00:00,,2025-03-02T10:00:00,2025-03-03T10:00:00,1
2,11,returned,2025-03-01T11:00:00,2025-03-05T10:00:00,2025-03-02T10:00:00,2025-03-03T10:00:00,1
"""
PRODUCTS = """\
id,sku,cost,category,name,brand,retail_price,department
5,abc-12345678,1.00,Books,Novel,Acme,9.99,Media
"""
ITEMS = """\
id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price
1,1,10,5,delivered,2025-03-01T10:00:00,,,,9.99
2,2,11,5,returned,2025-03-01T11:00:00,,,,8.50
"""


@pytest.fixture
def aws():
    with LocalAws() as emulator:
        yield emulator


def _flags(aws, tmp_path):
    return ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url, "--work-dir", str(tmp_path)]


def _put(aws, batch_id, name, text):
    aws.client("s3").put_object(
        Bucket=aws.bucket, Key=f"{incoming_prefix(batch_id)}{name}", Body=text.encode()
    )


def test_validate_exits_3_naming_file_rule_count_and_value(spark, aws, tmp_path, capsys):
    bad = ORDERS.replace("delivered,2025-03-01T10", "sent,2025-03-01T10")
    _put(aws, "b1", "orders/orders_part7.csv", bad)
    code = main(["validate", "--batch-id", "b1", "--dataset", "orders", *_flags(aws, tmp_path)])
    assert code == ExitCode.DATA_REJECTED
    err = capsys.readouterr().err
    assert (
        "orders: rule 'status allowed' failed on 1 of 2 rows; "
        "e.g. incoming/b1/orders/orders_part7.csv order_id=1 status='sent'"
    ) in err
    result = aws.store.get_json(result_key("b1", "orders"))
    assert result["success"] is False
    assert result["failed_rules"][0]["unexpected_count"] == 1
    assert result["data_docs"].startswith(f"s3://{aws.bucket}/data-docs/b1/orders/")
    assert (
        aws.store.list(staging_prefix("b1", "manual", "orders")) == []
    )  # nothing staged for the KPI job
    metrics = _validation_metrics(err)
    assert (metrics["RowsRead"], metrics["RowsRejected"], metrics["RuleViolations"]) == (2, 2, 1)
    assert (metrics["RulesFailed"], metrics["BatchRejected"]) == (1, 1)
    assert metrics["units"]["ReadSeconds"] == metrics["units"]["ExpectationsSeconds"] == "Seconds"
    assert "StageSeconds" not in metrics  # nothing was staged


def _validation_metrics(err: str) -> dict:
    """The validation job's EMF line (its metric units under "units")."""
    (line,) = [
        entry
        for entry in (json.loads(text) for text in err.splitlines() if text.startswith("{"))
        if "_aws" in entry and entry.get("job") == "validate"
    ]
    (directive,) = line["_aws"]["CloudWatchMetrics"]
    return {**line, "units": {m["Name"]: m["Unit"] for m in directive["Metrics"]}}


def test_validate_then_compute_kpis_writes_the_tables(spark, aws, tmp_path, capsys):
    for name, text in (
        ("products.csv", PRODUCTS),
        ("orders.csv", ORDERS),
        ("order_items.csv", ITEMS),
    ):
        _put(aws, "b2", name, text)
    for dataset in ("products", "orders", "order_items"):
        code = main(["validate", "--batch-id", "b2", "--dataset", dataset, *_flags(aws, tmp_path)])
        err = capsys.readouterr().err
        assert code == ExitCode.OK, err
        metrics = _validation_metrics(err)
        assert (metrics["RowsRejected"], metrics["RuleViolations"], metrics["BatchRejected"]) == (
            0,
            0,
            0,
        )
        assert metrics["StageSeconds"] >= 0
    assert main(["compute-kpis", "--batch-id", "b2", *_flags(aws, tmp_path)]) == ExitCode.OK
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["dates_recomputed"] == ["2025-03-01"]
    item = aws.client("dynamodb").get_item(
        TableName=ORDER_TABLE, Key={"order_date": {"S": "2025-03-01"}}
    )["Item"]
    # 2 orders, 9.99 + 8.50 revenue, one of two orders returned
    assert item["total_orders"] == {"N": "2"}
    assert item["total_revenue"] == {"N": "18.49"}
    assert item["return_rate"] == {"N": "0.5"}


def test_compute_kpis_without_validated_rows_is_rejected(spark, aws, tmp_path, capsys):
    code = main(["compute-kpis", "--batch-id", "never-validated", *_flags(aws, tmp_path)])
    assert code == ExitCode.DATA_REJECTED
    assert "no validated rows" in capsys.readouterr().err


def test_missing_bucket_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.delenv("PIPELINE_BUCKET", raising=False)
    assert main(["compute-kpis", "--batch-id", "x"]) == ExitCode.USAGE
    assert "PIPELINE_BUCKET" in capsys.readouterr().err


def test_generate_command_writes_the_layout(tmp_path, capsys):
    assert main(["generate", "--out", str(tmp_path), "--orders", "30", "--parts", "2"]) == 0
    assert (tmp_path / "orders" / "orders_part2.csv").is_file()
    assert "30 orders" in capsys.readouterr().out
