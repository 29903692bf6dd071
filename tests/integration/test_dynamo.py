"""Writing KPI DataFrames to DynamoDB: AttributeValues, retries, batching, and real writes."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from pyspark.sql.types import DecimalType, LongType, StringType, StructField, StructType

from ecom_pipeline.adapters.aws import AwsSettings, make_client
from ecom_pipeline.adapters.dynamo import (
    DuplicateKeyError,
    DynamoWriteError,
    delete_keys,
    send_batch,
    table_definitions,
    to_attribute_value,
    to_dynamo_item,
    write_items,
    write_partition,
)
from ecom_pipeline.adapters.lock import Lease, LockLostError
from ecom_pipeline.core.contract import (
    CATEGORY_BY_DATE_INDEX,
    CATEGORY_ITEM_ATTRIBUTES,
    CATEGORY_TABLE,
    CATEGORY_TABLE_KEY,
    KEY_ATTRIBUTE_TYPES,
    LOCK_TABLE,
    LOCK_TABLE_KEY,
    ORDER_BY_MONTH_INDEX,
    ORDER_MONTH_ATTRIBUTE,
    ORDER_TABLE,
    ORDER_TABLE_KEY,
)
from ecom_pipeline.local.emulator import LocalAws

# --- AttributeValues ---------------------------------------------------------------------------


def test_decimal_is_written_exactly():
    assert to_attribute_value(Decimal("79153.56")) == {"N": "79153.56"}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (Decimal("79153.50"), "79153.5"),
        (Decimal("100.00"), "100"),
        (Decimal("1E+2"), "100"),
        (Decimal("0.0500"), "0.05"),
        (Decimal("-12.30"), "-12.3"),
        (Decimal("0.00"), "0"),
        (Decimal("-0"), "0"),
        (Decimal("0.0001"), "0.0001"),
        (42, "42"),
        (-7, "-7"),
    ],
)
def test_numbers_have_one_canonical_text(value, text):
    assert to_attribute_value(value) == {"N": text}


def test_float_is_refused():
    with pytest.raises(TypeError, match="Decimal"):
        to_attribute_value(79153.56)
    with pytest.raises(TypeError, match="Decimal"):
        to_dynamo_item({"category": "Jeans", "daily_revenue": 1.5})


def test_non_finite_and_unknown_values_are_refused():
    with pytest.raises(ValueError, match="finite"):
        to_attribute_value(Decimal("NaN"))
    with pytest.raises(TypeError):
        to_attribute_value(object())


def test_none_attributes_are_omitted():
    item = to_dynamo_item(
        {"category": "Jeans", "order_date": "2025-01-02", "avg_return_rate": None, "items": 3}
    )
    assert item == {
        "category": {"S": "Jeans"},
        "order_date": {"S": "2025-01-02"},
        "items": {"N": "3"},
    }


def test_table_definitions_follow_the_contract():
    definitions = {d["TableName"]: d for d in table_definitions()}
    assert set(definitions) == {CATEGORY_TABLE, ORDER_TABLE}
    category = definitions[CATEGORY_TABLE]
    assert category["KeySchema"] == [
        {"AttributeName": CATEGORY_TABLE_KEY[0], "KeyType": "HASH"},
        {"AttributeName": CATEGORY_TABLE_KEY[1], "KeyType": "RANGE"},
    ]
    assert definitions[ORDER_TABLE]["KeySchema"] == [
        {"AttributeName": ORDER_TABLE_KEY[0], "KeyType": "HASH"}
    ]
    for definition in definitions.values():
        assert definition["BillingMode"] == "PAY_PER_REQUEST"
        # every key attribute (table and indexes) is defined once, with the contract's type
        key_names = [k["AttributeName"] for k in definition["KeySchema"]] + [
            k["AttributeName"]
            for index in definition.get("GlobalSecondaryIndexes", [])
            for k in index["KeySchema"]
        ]
        defined = {
            a["AttributeName"]: a["AttributeType"] for a in definition["AttributeDefinitions"]
        }
        assert len(defined) == len(definition["AttributeDefinitions"])
        assert set(defined) == set(key_names)
        assert {a: KEY_ATTRIBUTE_TYPES[a] for a in defined} == defined
    # the access-pattern indexes: all categories of a date by revenue; order dates by month
    assert category["GlobalSecondaryIndexes"] == [
        {
            "IndexName": CATEGORY_BY_DATE_INDEX.name,
            "KeySchema": [
                {"AttributeName": "order_date", "KeyType": "HASH"},
                {"AttributeName": "daily_revenue", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ]
    assert KEY_ATTRIBUTE_TYPES["daily_revenue"] == "N"  # numeric order, not text order
    assert definitions[ORDER_TABLE]["GlobalSecondaryIndexes"] == [
        {
            "IndexName": ORDER_BY_MONTH_INDEX.name,
            "KeySchema": [
                {"AttributeName": ORDER_MONTH_ATTRIBUTE, "KeyType": "HASH"},
                {"AttributeName": "order_date", "KeyType": "RANGE"},
            ],
            "Projection": {"ProjectionType": "ALL"},
        }
    ]


# --- send_batch --------------------------------------------------------------------------------


def _put(i: int) -> dict:
    return {"PutRequest": {"Item": {"order_date": {"S": f"2025-01-{i:02d}"}}}}


def test_send_batch_resends_unprocessed_items_with_growing_jittered_delays():
    client = make_client(AwsSettings(region="us-east-1"), "dynamodb")
    requests = [_put(i) for i in range(1, 6)]
    with Stubber(client) as stubber:
        stubber.add_response(
            "batch_write_item",
            {"UnprocessedItems": {ORDER_TABLE: requests[2:]}},
            {"RequestItems": {ORDER_TABLE: requests}},
        )
        stubber.add_response(
            "batch_write_item",
            {"UnprocessedItems": {ORDER_TABLE: requests[4:]}},
            {"RequestItems": {ORDER_TABLE: requests[2:]}},
        )
        stubber.add_response(
            "batch_write_item",
            {"UnprocessedItems": {}},
            {"RequestItems": {ORDER_TABLE: requests[4:]}},
        )
        sleeps: list[float] = []
        draws = iter([1.0, 0.5])
        send_batch(
            client,
            ORDER_TABLE,
            requests,
            max_attempts=5,
            base_delay=0.1,
            sleep=sleeps.append,
            rng=lambda: next(draws),
        )
        stubber.assert_no_pending_responses()
    # rng() * base * 2**attempt: 1.0 * 0.1 * 1, then 0.5 * 0.1 * 2
    assert sleeps == pytest.approx([0.1, 0.1])


def test_send_batch_bounds_double_each_attempt():
    client = _ScriptedClient(always_unprocessed=True)
    sleeps: list[float] = []
    with pytest.raises(DynamoWriteError):
        send_batch(
            client,
            ORDER_TABLE,
            [_put(1)],
            max_attempts=5,
            base_delay=0.05,
            sleep=sleeps.append,
            rng=lambda: 1.0,
        )
    assert sleeps == pytest.approx([0.05, 0.1, 0.2, 0.4])


def test_send_batch_gives_up_after_max_attempts():
    client = _ScriptedClient(always_unprocessed=True)
    sleeps: list[float] = []
    with pytest.raises(DynamoWriteError, match=rf"3 item.*{ORDER_TABLE}") as raised:
        send_batch(
            client,
            ORDER_TABLE,
            [_put(i) for i in range(1, 4)],
            max_attempts=4,
            base_delay=0.05,
            sleep=sleeps.append,
            rng=lambda: 0.0,
        )
    assert len(client.calls) == 4
    assert len(sleeps) == 3
    assert raised.value.table == ORDER_TABLE
    assert raised.value.unprocessed == 3
    assert raised.value.attempts == 4


def test_send_batch_backs_off_when_throttled_then_writes():
    """ProvisionedThroughputExceeded (after the client's own retries) is retried like
    unprocessed items: the same requests again, after a growing jittered delay."""
    client = make_client(AwsSettings(region="us-east-1"), "dynamodb")
    requests = [_put(i) for i in range(1, 4)]
    with Stubber(client) as stubber:
        for code in ("ProvisionedThroughputExceededException", "ThrottlingException"):
            stubber.add_client_error(
                "batch_write_item",
                service_error_code=code,
                http_status_code=400,
                expected_params={"RequestItems": {ORDER_TABLE: requests}},
            )
        stubber.add_response(
            "batch_write_item", {"UnprocessedItems": {}}, {"RequestItems": {ORDER_TABLE: requests}}
        )
        sleeps: list[float] = []
        send_batch(
            client, ORDER_TABLE, requests, base_delay=0.1, sleep=sleeps.append, rng=lambda: 1.0
        )
        stubber.assert_no_pending_responses()
    assert sleeps == pytest.approx([0.1, 0.2])


def test_send_batch_gives_up_on_throttling_naming_table_and_count():
    client = make_client(AwsSettings(region="us-east-1"), "dynamodb")
    requests = [_put(i) for i in range(1, 8)]
    with Stubber(client) as stubber:
        for _ in range(3):
            stubber.add_client_error(
                "batch_write_item",
                service_error_code="ProvisionedThroughputExceededException",
                http_status_code=400,
            )
        with pytest.raises(DynamoWriteError) as raised:
            send_batch(client, ORDER_TABLE, requests, max_attempts=3, sleep=lambda _: None)
    assert str(raised.value) == (
        f"7 item(s) not written to DynamoDB table '{ORDER_TABLE}': still unprocessed or "
        "throttled after 3 attempt(s) with backoff"
    )


def test_send_batch_does_not_retry_other_errors():
    client = make_client(AwsSettings(region="us-east-1"), "dynamodb")
    with Stubber(client) as stubber:
        stubber.add_client_error(
            "batch_write_item", service_error_code="ValidationException", http_status_code=400
        )
        with pytest.raises(ClientError, match="ValidationException"):
            send_batch(client, ORDER_TABLE, [_put(1)], sleep=lambda _: None)
        stubber.assert_no_pending_responses()


def test_send_batch_refuses_more_than_25_requests():
    with pytest.raises(ValueError, match="25"):
        send_batch(_ScriptedClient(), ORDER_TABLE, [_put(i) for i in range(26)])


# --- write_partition (one executor's work, in-process) -----------------------------------------


class _ScriptedClient:
    """A DynamoDB client that checks requests the way the service does (moto does not)."""

    def __init__(self, *, always_unprocessed: bool = False, key=ORDER_TABLE_KEY):
        self.always_unprocessed = always_unprocessed
        self.key = key
        self.calls: list[list[dict]] = []
        self.closed = False

    def batch_write_item(self, RequestItems):  # noqa: N803
        ((table, requests),) = RequestItems.items()
        assert 1 <= len(requests) <= 25, "BatchWriteItem takes 1 to 25 requests"
        keys = []
        for request in requests:
            (body,) = request.values()
            attributes = body.get("Item") or body["Key"]
            keys.append(tuple(sorted((k, str(attributes[k])) for k in self.key)))
        assert len(set(keys)) == len(keys), "duplicate keys in one request"
        self.calls.append(list(requests))
        if self.always_unprocessed:
            return {"UnprocessedItems": {table: requests}}
        return {"UnprocessedItems": {}}

    def close(self):
        self.closed = True


def _order_rows(n: int) -> list[dict]:
    return [
        {"order_date": f"2025-{1 + i // 28:02d}-{1 + i % 28:02d}", "total_orders": i}
        for i in range(n)
    ]


def test_write_partition_sends_chunks_of_25():
    client = _ScriptedClient()
    result = write_partition(
        _order_rows(61), client_factory=lambda: client, table=ORDER_TABLE, key=ORDER_TABLE_KEY
    )
    assert [len(call) for call in client.calls] == [25, 25, 11]
    assert result.written == 61
    assert result.unprocessed == 0
    assert client.closed
    sent = [r["PutRequest"]["Item"] for call in client.calls for r in call]
    assert sent == [to_dynamo_item(row) for row in _order_rows(61)]


def test_write_partition_without_rows_creates_no_client():
    def factory():
        raise AssertionError("no client needed")

    result = write_partition([], client_factory=factory, table=ORDER_TABLE, key=ORDER_TABLE_KEY)
    assert result.written == 0


def test_write_partition_stops_at_a_duplicate_key():
    rows = _order_rows(30)
    rows.insert(27, dict(rows[26]))  # a repeat in the second chunk
    client = _ScriptedClient()
    result = write_partition(
        rows, client_factory=lambda: client, table=ORDER_TABLE, key=ORDER_TABLE_KEY
    )
    assert result.duplicates == [(rows[26]["order_date"],)]
    assert [len(call) for call in client.calls] == [25]
    assert result.written == 25
    assert result.unprocessed == 6


def test_write_partition_checks_the_lease_before_each_request_and_stops_when_it_is_gone():
    client = _ScriptedClient()
    checks = []

    def guard(checked_client):
        assert checked_client is client
        checks.append(len(client.calls))
        if len(checks) == 2:
            raise LockLostError("lease on 'curated-store' is no longer ours (held by batch b2)")

    result = write_partition(
        _order_rows(61),
        client_factory=lambda: client,
        table=ORDER_TABLE,
        key=ORDER_TABLE_KEY,
        guard=guard,
    )
    assert checks == [0, 1]  # before the first request and before the second
    assert [len(call) for call in client.calls] == [25]
    assert (result.written, result.unprocessed) == (25, 36)
    assert "held by batch b2" in result.lease_lost
    assert client.closed


def test_write_partition_counts_rows_left_unwritten_when_dynamodb_gives_up():
    client = _ScriptedClient(always_unprocessed=True)
    result = write_partition(
        _order_rows(30),
        client_factory=lambda: client,
        table=ORDER_TABLE,
        key=ORDER_TABLE_KEY,
        max_attempts=2,
        sleep=lambda _: None,
    )
    assert result.written == 0
    assert result.unprocessed == 30
    assert len(client.calls) == 2


def test_write_partition_deletes_by_key_only():
    client = _ScriptedClient()
    write_partition(
        _order_rows(3),
        client_factory=lambda: client,
        table=ORDER_TABLE,
        key=ORDER_TABLE_KEY,
        kind="DeleteRequest",
    )
    assert client.calls == [
        [
            {"DeleteRequest": {"Key": {"order_date": {"S": row["order_date"]}}}}
            for row in _order_rows(3)
        ]
    ]


# --- Spark + moto server -----------------------------------------------------------------------

CATEGORY_SCHEMA = StructType(
    [
        StructField("category", StringType(), False),
        StructField("order_date", StringType(), False),
        StructField("daily_revenue", DecimalType(18, 2), True),
        StructField("order_count", LongType(), True),
        StructField("avg_order_value", DecimalType(18, 2), True),
        StructField("avg_return_rate", DecimalType(10, 4), True),
        StructField("items_sold", LongType(), True),
    ]
)
CATEGORIES = ("Jeans", "Tops & Tees", "Outerwear & Coats")
N_ROWS = 61  # two partitions of 30 and 31 rows: 25 + 5 and 25 + 6 per partition


def _category_rows(n: int = N_ROWS) -> list[tuple]:
    rows = []
    for i in range(n):
        category = CATEGORIES[i % 3]
        order_date = f"2025-{1 + i // 28:02d}-{1 + i % 28:02d}"
        revenue = Decimal("79153.56") if i == 0 else Decimal(f"{1000 + i}.{i % 10}0")
        return_rate = None if i % 7 == 0 else Decimal(f"0.{i:02d}00")
        rows.append((category, order_date, revenue, i + 1, revenue / 2, return_rate, 2 * i))
    return rows


@pytest.fixture(scope="module")
def aws():
    with LocalAws() as local:
        yield local


@pytest.fixture
def tables(aws):
    """Both KPI tables, emptied before the test."""
    client = aws.client("dynamodb")
    for table, key in ((CATEGORY_TABLE, CATEGORY_TABLE_KEY), (ORDER_TABLE, ORDER_TABLE_KEY)):
        for item in _scan(aws, table):
            client.delete_item(TableName=table, Key={k: item[k] for k in key})
    return client


def _scan(aws, table):
    paginator = aws.client("dynamodb").get_paginator("scan")
    return [item for page in paginator.paginate(TableName=table) for item in page["Items"]]


def _by_key(items, key=CATEGORY_TABLE_KEY):
    return {tuple(item[k]["S"] for k in key): item for item in items}


@pytest.fixture
def category_df(spark):
    rdd = spark.sparkContext.parallelize(_category_rows(), 2)
    df = spark.createDataFrame(rdd, CATEGORY_SCHEMA)
    sizes = df.rdd.glom().map(len).collect()
    assert len(sizes) == 2
    assert all(size > 25 for size in sizes)  # every partition sends more than one chunk
    return df


def test_write_items_lands_exactly_the_rows(aws, tables, category_df):
    written = write_items(category_df, CATEGORY_TABLE, aws.settings)

    assert written == N_ROWS
    items = _by_key(_scan(aws, CATEGORY_TABLE))
    rows = _category_rows()
    assert set(items) == {(row[0], row[1]) for row in rows}
    for row in rows:
        item = items[(row[0], row[1])]
        expected = dict(zip(CATEGORY_ITEM_ATTRIBUTES, row, strict=True))
        assert set(item) == {name for name, value in expected.items() if value is not None}
        for name, value in expected.items():
            if isinstance(value, str):
                assert item[name] == {"S": value}
            elif value is not None:
                text = item[name]["N"]
                assert Decimal(text) == value
                assert "E" not in text
                assert not ("." in text and text.endswith("0"))

    first = tables.get_item(
        TableName=CATEGORY_TABLE,
        Key={"category": {"S": "Jeans"}, "order_date": {"S": "2025-01-01"}},
    )["Item"]
    assert first["daily_revenue"] == {"N": "79153.56"}
    assert first["avg_order_value"] == {"N": "39576.78"}
    assert "avg_return_rate" not in first  # None is left out
    second = _by_key(_scan(aws, CATEGORY_TABLE))[("Tops & Tees", "2025-01-02")]
    assert second["daily_revenue"] == {"N": "1001.1"}  # 1001.10 from a DECIMAL(18,2) column
    assert second["avg_return_rate"] == {"N": "0.01"}


def test_writing_the_same_rows_again_changes_nothing(aws, tables, category_df):
    assert write_items(category_df, CATEGORY_TABLE, aws.settings) == N_ROWS
    before = _by_key(_scan(aws, CATEGORY_TABLE))

    assert write_items(category_df, CATEGORY_TABLE, aws.settings) == N_ROWS
    after = _by_key(_scan(aws, CATEGORY_TABLE))

    assert len(before) == N_ROWS
    assert after == before


def test_delete_keys_removes_exactly_the_given_keys(aws, tables, category_df):
    write_items(category_df, CATEGORY_TABLE, aws.settings)
    rows = _category_rows()
    doomed = [row for row in rows if row[0] == "Jeans"]  # every third row, both partitions
    doomed_df = category_df.where(category_df.category == "Jeans")  # other columns are ignored

    deleted = delete_keys(doomed_df, CATEGORY_TABLE, aws.settings)

    assert deleted == len(doomed)
    remaining = set(_by_key(_scan(aws, CATEGORY_TABLE)))
    assert remaining == {(r[0], r[1]) for r in rows} - {(r[0], r[1]) for r in doomed}


def test_order_table_uses_its_single_key(aws, tables, spark):
    df = spark.createDataFrame(
        [("2025-01-01", 3, Decimal("10.10")), ("2025-01-02", 4, None)],
        "order_date string, total_orders long, total_revenue decimal(18,2)",
    )
    assert write_items(df, ORDER_TABLE, aws.settings) == 2
    items = _by_key(_scan(aws, ORDER_TABLE), ORDER_TABLE_KEY)
    assert items == {
        ("2025-01-01",): {
            "order_date": {"S": "2025-01-01"},
            "total_orders": {"N": "3"},
            "total_revenue": {"N": "10.1"},
        },
        ("2025-01-02",): {"order_date": {"S": "2025-01-02"}, "total_orders": {"N": "4"}},
    }


def test_duplicate_keys_are_reported_on_the_driver(aws, tables, spark):
    df = spark.createDataFrame(
        [("2025-01-01", 1), ("2025-01-02", 2), ("2025-01-01", 3)],
        "order_date string, total_orders long",
    ).coalesce(1)
    with pytest.raises(DuplicateKeyError, match="2025-01-01") as raised:
        write_items(df, ORDER_TABLE, aws.settings)
    assert raised.value.table == ORDER_TABLE


def test_missing_key_column_is_refused_before_any_write(aws, tables, spark):
    df = spark.createDataFrame([("Jeans", 1)], "category string, items_sold long")
    with pytest.raises(ValueError, match="order_date"):
        write_items(df, CATEGORY_TABLE, aws.settings)
    assert _scan(aws, CATEGORY_TABLE) == []


def test_unknown_table_needs_an_explicit_key(aws, spark):
    df = spark.createDataFrame([("a",)], "id string")
    with pytest.raises(ValueError, match="unknown table"):
        write_items(df, "some-other-table", aws.settings)


def test_writers_stop_when_the_lease_is_taken_over_or_has_expired(aws, tables, category_df):
    client = aws.client("dynamodb")
    ours = Lease(client, "guard-test", holder={"batch_id": "b1"}, lease_s=60)
    assert ours.try_acquire()
    assert write_items(category_df, CATEGORY_TABLE, aws.settings, guard=ours.guard()) == N_ROWS
    assert delete_keys(category_df, CATEGORY_TABLE, aws.settings, guard=ours.guard()) == N_ROWS
    assert _scan(aws, CATEGORY_TABLE) == []

    # we stalled past our lease and batch b2 took the lock over: not one more request
    later = Lease(client, "guard-test", holder={"batch_id": "b2"}, clock=lambda: time.time() + 600)
    assert later.try_acquire()
    with pytest.raises(LockLostError, match=r"held by batch b2.*0 item\(s\) of table"):
        write_items(category_df, CATEGORY_TABLE, aws.settings, guard=ours.guard())
    assert _scan(aws, CATEGORY_TABLE) == []

    # still ours, but expired by the executors' clock (nobody renewed it): refused too
    stale = Lease(client, "guard-test-2", lease_s=60, clock=lambda: time.time() - 600)
    assert stale.try_acquire()
    with pytest.raises(LockLostError, match="no longer ours"):
        write_items(category_df, CATEGORY_TABLE, aws.settings, guard=stale.guard())
    assert _scan(aws, CATEGORY_TABLE) == []
    for lock_id in ("guard-test", "guard-test-2"):
        client.delete_item(TableName=LOCK_TABLE, Key={LOCK_TABLE_KEY[0]: {"S": lock_id}})


def test_executor_errors_reach_the_driver(aws, spark):
    df = spark.createDataFrame([("2025-01-01", 1)], "order_date string, total_orders long")
    with pytest.raises(Exception, match="ResourceNotFoundException"):
        write_items(df, "no-such-table", aws.settings, key=ORDER_TABLE_KEY)
