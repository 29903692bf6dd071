"""Runs of batches through the jobs' commands against the emulator, as the state machine starts
them: each run applies exactly the rows of its own upload, and the newest upload wins whatever
order the runs finish in."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

from ecom_pipeline.adapters.storage import BucketStore
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import (
    CATEGORY_TABLE,
    LOCK_CURATED_STORE,
    LOCK_EXPIRY_ATTRIBUTE,
    LOCK_TABLE,
    LOCK_TABLE_KEY,
    ORDER_TABLE,
    ExitCode,
)
from ecom_pipeline.core.layout import curated_journal_key, incoming_prefix, run_staging_prefix
from ecom_pipeline.local.emulator import LocalAws
from reference_kpis import kpis_from_batches

PRODUCTS = """\
id,sku,cost,category,name,brand,retail_price,department
5,abc-12345678,1.00,Books,Novel,Acme,9.99,Media
6,abd-12345678,1.00,Games,Chess,Acme,19.99,Toys
"""
RECATEGORISED = """\
id,sku,cost,category,name,brand,retail_price,department
5,abc-12345678,1.00,Comics,Novel,Acme,9.99,Media
"""
ORDERS = """\
order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item
1,10,delivered,2025-03-01T10:00:00,,2025-03-02T10:00:00,2025-03-03T10:00:00,1
2,11,returned,2025-03-01T11:00:00,2025-03-05T10:00:00,2025-03-02T10:00:00,2025-03-03T10:00:00,1
"""
CORRECTED_ORDERS = ORDERS.replace(
    "2,11,returned,2025-03-01T11:00:00,2025-03-05T10:00:00,",
    "2,11,delivered,2025-03-01T11:00:00,,",
)
ITEMS = """\
id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price
1,1,10,5,delivered,2025-03-01T10:00:00,,,,9.99
2,2,11,6,returned,2025-03-01T11:00:00,,,,8.50
"""
STATE_MACHINE = "arn:aws:states:us-east-1:123456789012:execution:ecom-pipeline"


def _upload(aws, tmp_path: Path, batch_id: str, run: str, files: dict[str, str]) -> Path:
    """The files in incoming/<batch>/ and in a local folder (for the reference)."""
    local = tmp_path / run
    for name, text in files.items():
        (local / name).parent.mkdir(parents=True, exist_ok=True)
        (local / name).write_text(text, encoding="utf-8")
        aws.store.put_bytes(
            f"{incoming_prefix(batch_id)}{name}", text.encode(), content_type="text/csv"
        )
    return local


def _run(
    aws,
    tmp_path: Path,
    batch_id: str,
    run: str,
    datasets: list[str],
    capsys,
    *,
    received_at: str | None = None,
) -> dict:
    """One execution's tasks, as the state machine starts them (EXECUTION_ID names the run)."""
    environ = {
        "PIPELINE_BUCKET": aws.bucket,
        "AWS_ENDPOINT_URL": aws.endpoint_url,
        "PIPELINE_WORK_DIR": str(tmp_path / "work"),
        "EXECUTION_ID": f"{STATE_MACHINE}:{run}",
    }
    for dataset in datasets:
        code = main(["validate", "--batch-id", batch_id, "--dataset", dataset], environ=environ)
        assert code == ExitCode.OK, capsys.readouterr().err
    upload = ["--received-at", received_at] if received_at else []
    code = main(["compute-kpis", "--batch-id", batch_id, *upload], environ=environ)
    assert code == ExitCode.OK, capsys.readouterr().err
    # what a settled run leaves: its files archived (the move task), its staged rows gone
    for stored in aws.store.list(incoming_prefix(batch_id)):
        aws.store.delete_object(stored.key)
    assert aws.store.list(run_staging_prefix(batch_id, run)) == []
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _sorted(rows) -> list[dict]:
    return sorted(rows, key=lambda row: (row.get("category", ""), row["order_date"]))


def _table(aws, name: str) -> list[dict]:
    """The table's items, numbers as Decimal (index-only attributes left out)."""
    items = aws.client("dynamodb").scan(TableName=name)["Items"]
    return _sorted(
        {k: Decimal(v["N"]) if "N" in v else v["S"] for k, v in item.items() if k != "order_month"}
        for item in items
    )


def _expected(rows: dict) -> list[dict]:
    return _sorted(
        {k: Decimal(v) if isinstance(v, int | Decimal) else v for k, v in row.items()}
        for row in rows.values()
    )


def test_a_reupload_into_a_batch_applies_only_its_own_rows(spark, tmp_path, capsys):
    with LocalAws() as aws:
        first = _upload(aws, tmp_path, "b1", "b1", {
            "products.csv": PRODUCTS, "orders.csv": ORDERS, "order_items.csv": ITEMS,
        })  # fmt: skip
        _run(aws, tmp_path, "b1", "b1", ["products", "orders", "order_items"], capsys)
        later = _upload(aws, tmp_path, "b2", "b2", {"products.csv": RECATEGORISED})
        _run(aws, tmp_path, "b2", "b2", ["products"], capsys)
        again = _upload(aws, tmp_path, "b1", "b1-replay-1", {"orders.csv": CORRECTED_ORDERS})
        report = _run(aws, tmp_path, "b1", "b1-replay-1", ["orders"], capsys)
        assert report["rows_accepted"] == {"orders": 2}  # nobody sent products or items again
        categories, orders = kpis_from_batches([first, later, again])
        assert _table(aws, CATEGORY_TABLE) == _expected(categories)
        assert _table(aws, ORDER_TABLE) == _expected(orders)
        assert {row["category"] for row in categories.values()} == {"Comics", "Games"}


def test_the_newest_upload_wins_whatever_order_the_runs_finish_in(spark, tmp_path, capsys):
    """A large batch uploaded first and a small correction uploaded second: the correction's
    run finishes first, the large one's second, and a replay of the large one comes last; the
    tables still hold the correction (the merge keeps the newest upload's row per key)."""
    with LocalAws() as aws:
        large = _upload(aws, tmp_path, "large", "large", {
            "products.csv": PRODUCTS, "orders.csv": ORDERS, "order_items.csv": ITEMS,
        })  # fmt: skip
        correction = _upload(aws, tmp_path, "fix", "fix", {
            "products.csv": RECATEGORISED, "orders.csv": CORRECTED_ORDERS,
        })  # fmt: skip
        uploaded = {"large": "2025-04-01T10:00:00Z", "fix": "2025-04-01T10:05:00Z"}
        folders = {"large": large, "fix": correction}
        for batch_id, run in (("fix", "fix"), ("large", "large"), ("large", "large-replay-1")):
            _restage(aws, folders[batch_id], batch_id)
            datasets = _datasets(folders[batch_id])
            _run(aws, tmp_path, batch_id, run, datasets, capsys, received_at=uploaded[batch_id])
        categories, orders = kpis_from_batches([large, correction])  # in upload order
        assert _table(aws, CATEGORY_TABLE) == _expected(categories)
        assert _table(aws, ORDER_TABLE) == _expected(orders)
        assert {row["category"] for row in categories.values()} == {"Comics", "Games"}


def _datasets(folder: Path) -> list[str]:
    names = {path.stem for path in folder.glob("*.csv")}
    return [d for d in ("products", "orders", "order_items") if d in names]


def _restage(aws, folder: Path, batch_id: str) -> None:
    """The batch's files back in incoming/ (as a replay gathers them)."""
    for path in folder.glob("*.csv"):
        key = f"{incoming_prefix(batch_id)}{path.name}"
        aws.store.put_bytes(key, path.read_bytes(), content_type="text/csv")


def test_a_run_that_lost_its_lease_stops_before_it_changes_the_curated_store(
    spark, tmp_path, capsys, monkeypatch
):
    """Another run takes the lease over while this one replaces curated partitions: this one
    stops at its next step (exit 4, retry), and the next run finishes from a consistent store."""
    with LocalAws() as aws:
        first = _upload(aws, tmp_path, "b1", "b1", {
            "products.csv": PRODUCTS, "orders.csv": ORDERS, "order_items.csv": ITEMS,
        })  # fmt: skip
        _run(aws, tmp_path, "b1", "b1", ["products", "orders", "order_items"], capsys)
        second = _upload(aws, tmp_path, "b2", "b2", {"orders.csv": CORRECTED_ORDERS})
        environ = {
            "PIPELINE_BUCKET": aws.bucket,
            "AWS_ENDPOINT_URL": aws.endpoint_url,
            "PIPELINE_WORK_DIR": str(tmp_path / "work"),
            "EXECUTION_ID": f"{STATE_MACHINE}:b2",
        }
        code = main(["validate", "--batch-id", "b2", "--dataset", "orders"], environ=environ)
        assert code == ExitCode.OK
        real_upload = BucketStore.upload_file

        def taken_over_while_uploading(store, path, key):
            if key.startswith("curated/"):  # a takeover, after this run's journal was written
                aws.client("dynamodb").put_item(
                    TableName=LOCK_TABLE,
                    Item={
                        LOCK_TABLE_KEY[0]: {"S": LOCK_CURATED_STORE},
                        "owner": {"S": "a-takeover"},
                        LOCK_EXPIRY_ATTRIBUTE: {"N": str(int(time.time()) + 5)},
                    },
                )
            real_upload(store, path, key)

        monkeypatch.setattr(BucketStore, "upload_file", taken_over_while_uploading)
        assert main(["compute-kpis", "--batch-id", "b2"], environ=environ) == ExitCode.DEPENDENCY
        assert "no longer ours" in capsys.readouterr().err
        journal = aws.store.get_json(curated_journal_key())
        assert journal["state"] == "uploading"  # never committed over the takeover
        # at most the one upload in flight when the lease went; the next run rolls it back
        assert len([o for o in aws.store.list("curated/") if o.key in journal["new"]]) <= 1
        monkeypatch.undo()
        aws.client("dynamodb").delete_item(
            TableName=LOCK_TABLE, Key={LOCK_TABLE_KEY[0]: {"S": LOCK_CURATED_STORE}}
        )  # the takeover ended
        assert main(["compute-kpis", "--batch-id", "b2"], environ=environ) == ExitCode.OK
        categories, orders = kpis_from_batches([first, second])
        assert _table(aws, CATEGORY_TABLE) == _expected(categories)
        assert _table(aws, ORDER_TABLE) == _expected(orders)


MORE_ITEMS = """\
id,order_id,user_id,product_id,status,created_at,shipped_at,delivered_at,returned_at,sale_price
3,1,10,6,delivered,2025-03-01T10:00:00,,,,19.99
4,2,11,5,returned,2025-03-01T11:00:00,,,,9.99
"""


def test_validation_reads_one_version_of_the_curated_store_while_it_is_replaced(
    spark, tmp_path, capsys
):
    """A KPI run of another batch is halfway through replacing curated partitions (its new
    files beside the old ones): validating items against the store must see every order once,
    before the commit (the old files) and after it (the new ones)."""
    with LocalAws() as aws:
        _upload(aws, tmp_path, "b1", "b1", {
            "products.csv": PRODUCTS, "orders.csv": ORDERS, "order_items.csv": ITEMS,
        })  # fmt: skip
        _run(aws, tmp_path, "b1", "b1", ["products", "orders", "order_items"], capsys)
        old = [o.key for o in aws.store.list("curated/orders/") if o.key.endswith(".parquet")]
        assert old, aws.store.list("curated/")
        new = [key.replace(".parquet", "-other-run.parquet") for key in old]
        for source, dest in zip(old, new, strict=True):
            aws.store.copy(source, dest)
        journal = {"batch_id": "other", "state": "uploading", "new": new, "stale": old}
        aws.store.put_json(curated_journal_key(), journal)
        _upload(aws, tmp_path, "b2", "b2", {"order_items.csv": MORE_ITEMS})
        flags = ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url]
        flags += ["--work-dir", str(tmp_path / "work")]
        for state in ("uploading", "committed"):
            aws.store.put_json(curated_journal_key(), journal | {"state": state})
            code = main(["validate", "--batch-id", "b2", "--dataset", "order_items", *flags])
            assert code == ExitCode.OK, capsys.readouterr().err
