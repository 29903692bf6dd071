"""LocalAws: moto's server with the pipeline's resources, exports and notifications."""

from __future__ import annotations

import gc
import json
import threading
import time

import pytest
from moto.server import ThreadedMotoServer

from ecom_pipeline.adapters.aws import AwsSettings, make_client
from ecom_pipeline.adapters.lock import lock_table_definition
from ecom_pipeline.core.contract import (
    CATEGORY_TABLE,
    LOCK_EXPIRY_ATTRIBUTE,
    LOCK_TABLE,
    ORDER_TABLE,
)
from ecom_pipeline.local.emulator import EXPORT_FILES, TOPIC_NAME, LocalAws


def _thread_ids() -> set[int]:
    """Threads of moto's server and its request handlers (others, e.g. Spark's, come and go)."""
    server_threads = ("_server_entry", "process_request_thread", "serve_forever")
    return {
        thread.ident
        for thread in threading.enumerate()
        if any(name in thread.name for name in server_threads)
    }


def _new_threads_after_stop(before: set[int]) -> set[int]:
    """moto's threads that were not there ``before``, once a stopped server's request threads
    have ended: a thread serving a kept-alive connection ends when its client's socket closes,
    which for a dropped boto3 client (reference cycles) is at the next garbage collection.
    (A thread of ``before`` may end meanwhile too: the leftover server's, for one.)"""
    deadline = time.monotonic() + 10
    while (new := _thread_ids() - before) and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return new


def _moto_tables() -> list[str]:
    """The tables moto's process-wide state holds, seen through a plain moto server."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = make_client(AwsSettings(endpoint_url=f"http://{host}:{port}"), "dynamodb")
        tables = client.list_tables()["TableNames"]
        client.close()
        return tables
    finally:
        server.stop()


# Runs first, before the module's shared server exists (one LocalAws at a time per process).
def test_two_instances_in_sequence_each_start_clean_and_leave_no_threads():
    # Something earlier in the process left state in moto (its backends are process-wide).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    leftover = make_client(AwsSettings(endpoint_url=f"http://{host}:{port}"), "dynamodb")
    leftover.create_table(
        TableName="leftover",
        KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    leftover.close()
    server.stop()
    before = _thread_ids()
    first = LocalAws(bucket="first-bucket")
    with first:
        assert sorted(first.client("dynamodb").list_tables()["TableNames"]) == sorted(
            [CATEGORY_TABLE, ORDER_TABLE, LOCK_TABLE]
        )  # entering forgot the leftover
        first_port = first.port
        first.client("dynamodb").put_item(
            TableName=ORDER_TABLE, Item={"order_date": {"S": "2025-01-01"}}
        )
        first.client("sns").publish(TopicArn=first.topic_arn, Message="hello")
        assert len(first.notifications()) == 1
    assert _new_threads_after_stop(before) == set()
    assert _moto_tables() == []  # leaving forgot everything
    with pytest.raises(RuntimeError, match="not open"):
        first.client("s3")

    with LocalAws() as second:
        assert second.port != first_port
        assert second.endpoint_url == f"http://127.0.0.1:{second.port}"
        assert second.settings.endpoint_url == second.endpoint_url
        assert second.client("dynamodb").scan(TableName=ORDER_TABLE)["Items"] == []
        assert second.notifications() == []
        buckets = [b["Name"] for b in second.client("s3").list_buckets()["Buckets"]]
        assert buckets == ["ecom-pipeline-local"]
    assert _new_threads_after_stop(before) == set()


@pytest.fixture(scope="module")
def aws():
    with LocalAws() as local:
        yield local


def test_resources_exist(aws):
    assert sorted(aws.client("dynamodb").list_tables()["TableNames"]) == sorted(
        [CATEGORY_TABLE, ORDER_TABLE, LOCK_TABLE]
    )
    # the lock table as the template creates it: its key, and TTL on the lease expiry
    dynamodb = aws.client("dynamodb")
    lock = dynamodb.describe_table(TableName=LOCK_TABLE)["Table"]
    assert lock["KeySchema"] == lock_table_definition()["KeySchema"]
    ttl = dynamodb.describe_time_to_live(TableName=LOCK_TABLE)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": LOCK_EXPIRY_ATTRIBUTE}
    aws.client("s3").head_bucket(Bucket=aws.bucket)
    assert aws.topic_arn.endswith(f":{TOPIC_NAME}")
    subscriptions = aws.client("sns").list_subscriptions_by_topic(TopicArn=aws.topic_arn)
    assert [s["Protocol"] for s in subscriptions["Subscriptions"]] == ["sqs"]


def test_only_one_instance_may_be_open(aws):
    with pytest.raises(RuntimeError, match="another LocalAws"):
        LocalAws().__enter__()
    aws.client("s3").head_bucket(Bucket=aws.bucket)  # the open one is untouched


def _put_category_items(aws, items):
    client = aws.client("dynamodb")
    for category, order_date, extra in items:
        item = {"category": {"S": category}, "order_date": {"S": order_date}, **extra}
        client.put_item(TableName=CATEGORY_TABLE, Item=item)


def test_export_table_is_sorted_by_key_with_json_numbers(aws, tmp_path):
    _put_category_items(
        aws,
        [
            (
                "Jeans",
                "2025-01-02",
                {"daily_revenue": {"N": "79153.56"}, "items_sold": {"N": "12"}},
            ),
            ("Accessories", "2025-01-03", {"daily_revenue": {"N": "10.50"}}),
            ("Jeans", "2025-01-01", {"avg_return_rate": {"N": "0.0500"}, "note": {"S": "007"}}),
            ("Accessories", "2025-01-01", {"order_count": {"N": "1E+2"}}),
        ],
    )
    path = tmp_path / "out" / "category.jsonl"

    count = aws.export_table(CATEGORY_TABLE, path, page_size=1)  # several scan pages

    assert count == 4
    text = path.read_text()
    assert text == (
        '{"category":"Accessories","order_count":100,"order_date":"2025-01-01"}\n'
        '{"category":"Accessories","daily_revenue":10.5,"order_date":"2025-01-03"}\n'
        '{"avg_return_rate":0.05,"category":"Jeans","note":"007","order_date":"2025-01-01"}\n'
        '{"category":"Jeans","daily_revenue":79153.56,"items_sold":12,"order_date":"2025-01-02"}\n'
    )
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows[0]["order_count"] == 100
    assert type(rows[0]["order_count"]) is int
    assert type(rows[3]["daily_revenue"]) is float
    assert rows[2]["note"] == "007"

    aws.export_table(CATEGORY_TABLE, tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == text  # deterministic


class _ShuffledScans:
    """A DynamoDB client whose scans come back out of key order, as real DynamoDB's do.

    (moto's scan happens to return items sorted by key.)
    """

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        return getattr(self._client, name)

    def get_paginator(self, operation):
        paginator = self._client.get_paginator(operation)
        if operation != "scan":
            return paginator

        class Reversed:
            def paginate(self, **kwargs):
                pages = list(paginator.paginate(**kwargs))
                return [{**page, "Items": page["Items"][::-1]} for page in reversed(pages)]

        return Reversed()


def test_export_table_sorts_what_the_scan_returns(aws, tmp_path, monkeypatch):
    _put_category_items(aws, [("Bags", f"2025-03-{day:02d}", {}) for day in range(1, 6)])
    real_client = aws.client
    monkeypatch.setattr(
        aws,
        "client",
        lambda service: (
            _ShuffledScans(real_client(service)) if service == "dynamodb" else real_client(service)
        ),
    )
    path = tmp_path / "category.jsonl"

    aws.export_table(CATEGORY_TABLE, path, page_size=2)

    keys = [(row["category"], row["order_date"]) for row in map(json.loads, path.open())]
    assert len(keys) >= 5
    assert keys == sorted(keys)


def test_export_tables_writes_both_files(aws, tmp_path):
    aws.client("dynamodb").put_item(
        TableName=ORDER_TABLE,
        Item={"order_date": {"S": "2025-02-01"}, "total_orders": {"N": "5"}},
    )
    table_items = {
        table: len(aws.client("dynamodb").scan(TableName=table)["Items"])
        for table in (CATEGORY_TABLE, ORDER_TABLE)
    }

    counts = aws.export_tables(tmp_path)

    assert counts == table_items
    assert counts[ORDER_TABLE] >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "category_kpis.jsonl",
        "order_kpis.jsonl",
    ]
    for table, file_name in EXPORT_FILES.items():
        assert len((tmp_path / file_name).read_text().splitlines()) == counts[table]
    assert '{"order_date":"2025-02-01","total_orders":5}' in (
        (tmp_path / "order_kpis.jsonl").read_text().splitlines()
    )


def test_notifications_round_trip_through_sns_and_sqs(aws, tmp_path):
    sns = aws.client("sns")
    already = len(aws.notifications())
    published = [
        ("batch succeeded", {"batch": "b1", "rows": 3}),
        (None, "plain text notice"),
        ("batch rejected", {"batch": "b2", "reason": "bad sku"}),
    ]
    for index, (subject, message) in enumerate(published * 4):  # more than one receive
        body = message if isinstance(message, str) else json.dumps({**message, "n": index})
        kwargs = {"Subject": subject} if subject else {}
        sns.publish(TopicArn=aws.topic_arn, Message=body, **kwargs)

    notices = aws.notifications()[already:]

    assert len(notices) == 12
    assert notices[0] == {
        "subject": "batch succeeded",
        "message": {"batch": "b1", "rows": 3, "n": 0},
    }
    assert notices[1] == {"subject": None, "message": "plain text notice"}
    assert [n["message"]["n"] for n in notices if isinstance(n["message"], dict)] == [
        0, 2, 3, 5, 6, 8, 9, 11
    ]  # fmt: skip

    sns.publish(TopicArn=aws.topic_arn, Subject="late", Message="{}")
    again = aws.notifications()[already:]
    assert again[:12] == notices  # earlier notices are kept
    assert again[12:] == [{"subject": "late", "message": {}}]

    path = tmp_path / "notices.jsonl"
    assert aws.export_notifications(path) == already + 13
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[already:] == again


def test_upload_dir_and_download_prefix_round_trip(aws, tmp_path):
    src = tmp_path / "src"
    files = {
        "orders.csv": "order_id\n1\n",
        "docs/index.html": "<html></html>",
        "docs/static/app.js": "x = 1;",
    }
    for relative, content in files.items():
        (src / relative).parent.mkdir(parents=True, exist_ok=True)
        (src / relative).write_text(content)
    s3 = aws.client("s3")
    s3.put_object(Bucket=aws.bucket, Key="runs/r10/elsewhere.txt", Body=b"not mine")

    keys = aws.store.upload_dir(src, "runs/r1/")

    assert keys == ["runs/r1/docs/index.html", "runs/r1/docs/static/app.js", "runs/r1/orders.csv"]
    assert s3.head_object(Bucket=aws.bucket, Key="runs/r1/docs/index.html")["ContentType"] == (
        "text/html"
    )

    dest = tmp_path / "dest"
    assert aws.store.download_prefix("runs/r1", dest, page_size=1) == dest  # several pages

    downloaded = sorted(p for p in dest.rglob("*") if p.is_file())
    assert downloaded == sorted(dest / relative for relative in files)
    for relative, content in files.items():
        assert (dest / relative).read_text() == content
    assert not (dest / "elsewhere.txt").exists()  # runs/r10/ is not under runs/r1/


def test_export_leaves_out_index_attributes_and_import_puts_them_back(aws, tmp_path):
    dynamodb = aws.client("dynamodb")
    dynamodb.put_item(
        TableName=ORDER_TABLE,
        Item={
            "order_date": {"S": "2025-03-31"},
            "order_month": {"S": "2025-03"},
            "total_orders": {"N": "7"},
            "return_rate": {"N": "0.1429"},
        },
    )
    path = tmp_path / "orders.jsonl"
    aws.export_table(ORDER_TABLE, path)
    line = '{"order_date":"2025-03-31","return_rate":0.1429,"total_orders":7}'
    assert line in path.read_text().splitlines()  # the contract's attributes only

    dynamodb.delete_item(TableName=ORDER_TABLE, Key={"order_date": {"S": "2025-03-31"}})
    path.write_text(line + "\n")
    assert aws.import_table(ORDER_TABLE, path) == 1
    item = dynamodb.get_item(TableName=ORDER_TABLE, Key={"order_date": {"S": "2025-03-31"}})
    assert item["Item"] == {
        "order_date": {"S": "2025-03-31"},
        "order_month": {"S": "2025-03"},  # computed again, so the month index finds it
        "total_orders": {"N": "7"},
        "return_rate": {"N": "0.1429"},  # exact: parsed as a Decimal, not a float
    }

    path.write_text('{"total_orders": 1}\n')
    with pytest.raises(ValueError, match=r"orders.jsonl:1: not a KPI item"):
        aws.import_table(ORDER_TABLE, path)
