"""Awkward names through the jobs' commands. Batch ids: a plus, a space and non-ASCII work end to
end (staged and direct I/O); a name Spark would read as a pattern is refused up front.
Categories: padded names are one KPI key; one too long for a DynamoDB key is a rule failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ecom_pipeline.adapters.storage import FileStore, Store
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import CATEGORY_TABLE, ORDER_TABLE, ExitCode
from ecom_pipeline.core.layout import incoming_prefix, result_key
from ecom_pipeline.core.planning import BatchIdError, plan_execution
from ecom_pipeline.local.emulator import LocalAws
from small_batch import ITEMS, ORDERS, PRODUCTS, job_flags, put_files

FILES = {"products.csv": PRODUCTS, "orders/orders_part1.csv": ORDERS, "order_items.csv": ITEMS}
AWKWARD = "b+1 é 日本"
PATTERNS = ["b[1]", "b{1,2}", "b*", "b?", "b:1", "b^1"]


@pytest.fixture(scope="module")
def aws():
    with LocalAws() as emulator:
        yield emulator


def _run_batch(batch_id: str, flags: list[str], capsys) -> dict:
    for dataset in ("products", "orders", "order_items"):
        code = main(["validate", "--batch-id", batch_id, "--dataset", dataset, *flags])
        assert code == ExitCode.OK, capsys.readouterr().err
    assert main(["compute-kpis", "--batch-id", batch_id, *flags]) == ExitCode.OK
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _order_kpis(aws, day: str) -> dict:
    return aws.client("dynamodb").get_item(TableName=ORDER_TABLE, Key={"order_date": {"S": day}})[
        "Item"
    ]


def _store_and_flags(mode: str, aws, tmp_path: Path) -> tuple[Store, list[str]]:
    """The store a job reads in ``mode`` (the bucket staged, or a directory in direct I/O) and
    the flags that point the job's command at it."""
    flags = ["--endpoint-url", aws.endpoint_url, "--work-dir", str(tmp_path / "work")]
    if mode == "staged":
        return aws.store, [*flags, "--bucket", aws.bucket]
    root = (tmp_path / "root").as_uri()
    return FileStore(root), [*flags, "--data-root", root]


@pytest.mark.parametrize("mode", ["staged", "direct"])
def test_a_plus_a_space_and_non_ascii_work_end_to_end(mode, spark, aws, tmp_path, capsys):
    store, flags = _store_and_flags(mode, aws, tmp_path)
    for name, text in FILES.items():
        store.put_bytes(f"{incoming_prefix(AWKWARD)}{name}", text.encode(), content_type="text/csv")
    report = _run_batch(AWKWARD, flags, capsys)
    assert report["rows_accepted"] == {"products": 1, "orders": 2, "order_items": 2}
    orders = store.get_json(result_key(AWKWARD, "orders"))
    assert orders["files"] == [f"{incoming_prefix(AWKWARD)}orders/orders_part1.csv"]
    item = _order_kpis(aws, "2025-03-01")
    assert (item["total_orders"], item["total_revenue"]) == ({"N": "2"}, {"N": "18.49"})


@pytest.mark.parametrize("batch_id", PATTERNS)
def test_a_batch_id_spark_would_read_as_a_pattern_is_refused_in_one_line(batch_id, capsys):
    for command in (
        ["validate", "--dataset", "orders"],
        ["compute-kpis"],
        ["move-batch", "--to", "archive"],
    ):
        code = main([*command, "--batch-id", batch_id, "--bucket", "b"])
        assert code == ExitCode.USAGE
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1
        assert err[0].startswith("error: batch id")
        assert repr(batch_id) in err[0]


@pytest.mark.parametrize("batch_id", PATTERNS)
def test_planning_refuses_a_pattern_batch_id(batch_id):
    with pytest.raises(BatchIdError, match="a plain folder name"):
        plan_execution("bkt", batch_id, [(f"incoming/{batch_id}/orders.csv", 10)])


@pytest.mark.parametrize("mode", ["staged", "direct"])
def test_a_rule_failure_names_the_file_of_an_awkward_batch(mode, spark, aws, tmp_path, capsys):
    batch_id = "b+2 é"
    store, flags = _store_and_flags(mode, aws, tmp_path)
    bad = ORDERS.replace("delivered,2025-03-01T10", "lost,2025-03-01T10")
    key = f"{incoming_prefix(batch_id)}orders/orders_part1.csv"
    store.put_bytes(key, bad.encode(), content_type="text/csv")
    code = main(["validate", "--batch-id", batch_id, "--dataset", "orders", *flags])
    assert code == ExitCode.DATA_REJECTED
    assert f"e.g. {key} order_id=1 status='lost'" in capsys.readouterr().err


PADDED_PRODUCTS = """\
id,sku,cost,category,name,brand,retail_price,department
5,abc-12345678,1.00,Jeans,Slim,Acme,9.99,Apparel
6,abd-12345678,1.00,"  Jeans\t",Wide,Acme,9.99,Apparel
"""
PADDED_ITEMS = """\
id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price
1,1,10,5,delivered,2025-03-01T10:00:00,,,,9.99
2,2,11,6,returned,2025-03-01T11:00:00,,,,8.50
"""


def test_padded_category_names_are_one_kpi_key(spark, aws, tmp_path, capsys):
    batch_id = "padded-categories"
    files = {
        "products.csv": PADDED_PRODUCTS,
        "orders.csv": ORDERS,
        "order_items.csv": PADDED_ITEMS,
    }
    put_files(aws.store, incoming_prefix(batch_id), files)
    _run_batch(batch_id, job_flags(aws, tmp_path), capsys)
    items = aws.client("dynamodb").scan(TableName=CATEGORY_TABLE)["Items"]
    jeans = [i for i in items if i["category"]["S"].strip() == "Jeans"]
    assert [(i["category"]["S"], i["order_count"]["N"]) for i in jeans] == [("Jeans", "2")]


def test_a_category_too_long_for_a_key_is_a_rule_failure(spark, aws, tmp_path, capsys):
    batch_id = "long-category"
    long_name = "é" * 1100  # 2200 bytes of UTF-8, 1100 characters
    text = PRODUCTS.replace(",Books,", f",{long_name},")
    put_files(aws.store, incoming_prefix(batch_id), {"products.csv": text})
    code = main(
        ["validate", "--batch-id", batch_id, "--dataset", "products", *job_flags(aws, tmp_path)]
    )
    assert code == ExitCode.DATA_REJECTED
    err = capsys.readouterr().err
    assert "rule 'category fits a key' failed on 1 of 1 rows" in err
    assert "(2200 bytes)" in err
