"""Planning a run from S3 events (ecom_pipeline.core.planning): pure functions, no AWS."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ecom_pipeline.core import layout
from ecom_pipeline.core.contract import DATASET_ORDER
from ecom_pipeline.core.planning import (
    DEFAULT_INCOMING_PREFIX,
    KPI_RETRY_WAIT_S,
    MAX_BATCH_LABEL,
    MAX_LISTED_UNRECOGNISED,
    EmptyBatchError,
    S3ObjectEvent,
    batch_label,
    batch_of_marker,
    execution_arn,
    execution_name,
    kpi_retry_wait_from,
    parse_s3_event,
    plan_execution,
    read_manifest,
)
from ecom_pipeline.core.tiers import (
    ECS_ROUTE,
    EMR_ROUTE,
    EMR_TIERS,
    GIB,
    MIB,
    TIERS,
    BatchTooLargeError,
    choose_tier,
)
from s3_events import BUCKET, s3_record

ROOT = Path(__file__).resolve().parents[2]
TRIGGER_PATH = ROOT / "lambda" / "trigger.py"
ROLE_ARN = "arn:aws:iam::123456789012:role/x"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
PASS_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})


# --- parse_s3_event ---------------------------------------------------------------------------


def test_parse_s3_event_decodes_keys_and_keeps_only_created_records():
    event = {
        "Records": [
            s3_record("incoming/batch 7/_SUCCESS", size=0),
            s3_record("incoming/b1/orders+x.csv", size=12, event_name="ObjectCreated:Copy"),
            s3_record("incoming/b1/_SUCCESS", event_name="ObjectRemoved:Delete"),
            s3_record("incoming/b2/manifest.json", size=40, bucket="other"),
        ]
    }
    assert event["Records"][0]["s3"]["object"]["key"] == "incoming/batch+7/_SUCCESS"
    assert parse_s3_event(event) == [
        S3ObjectEvent(BUCKET, "incoming/batch 7/_SUCCESS", 0, "ObjectCreated:Put"),
        S3ObjectEvent(BUCKET, "incoming/b1/orders+x.csv", 12, "ObjectCreated:Copy"),
        S3ObjectEvent("other", "incoming/b2/manifest.json", 40, "ObjectCreated:Put"),
    ]


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({}, "no 'Records'"),
        ({"Records": []}, "no 'Records'"),
        ({"Records": [{"eventSource": "aws:sqs", "body": "{}"}]}, "not an S3 event"),
        ({"Records": [{"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}]}, "s3.bucket"),
        ({"Service": "Amazon S3", "Event": "s3:TestEvent"}, "no 'Records'"),
    ],
)
def test_parse_s3_event_rejects_malformed_events(event, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_s3_event(event)


# --- batch_of_marker --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("incoming/b1/_SUCCESS", "b1"),
        ("incoming/b1/manifest.json", "b1"),
        ("incoming/batch 7/_SUCCESS", "batch 7"),
        ("incoming/2025-03-30T10:00/_SUCCESS", "2025-03-30T10:00"),
        ("incoming/b1/orders.csv", None),  # a data file
        ("incoming/b1/orders/orders_1.csv", None),
        ("incoming/b1/orders/_SUCCESS", None),  # nested deeper
        ("incoming/_SUCCESS", None),  # no batch folder
        ("other/b1/_SUCCESS", None),  # outside the prefix
        ("incomingx/b1/_SUCCESS", None),
        ("b1/_SUCCESS", None),
        ("incoming/b1/_SUCCESS.txt", None),
        ("incoming/../_SUCCESS", None),
        ("incoming/a..b/_SUCCESS", None),
        ("incoming//_SUCCESS", None),  # empty batch id
        ("incoming//etc/_SUCCESS", None),  # absolute-looking
        ("incoming/a\\b/_SUCCESS", None),
        ("incoming/./_SUCCESS", None),
        ("incoming/ b1/_SUCCESS", None),
        ("incoming/b\n1/_SUCCESS", None),
    ],
)
def test_batch_of_marker(key, expected):
    assert batch_of_marker(key) == expected


def test_batch_of_marker_with_other_prefix():
    assert batch_of_marker("landing/b1/_SUCCESS", "landing") == "b1"
    assert batch_of_marker("landing/b1/_SUCCESS", "landing/") == "b1"
    assert batch_of_marker("incoming/b1/_SUCCESS", "landing/") is None


def test_default_prefix_matches_the_bucket_layout():
    assert layout.incoming_prefix("b1") == f"{DEFAULT_INCOMING_PREFIX}b1/"


# --- plan_execution ---------------------------------------------------------------------------


def small_batch(batch_id: str = "b1") -> list[tuple[str, int]]:
    p = f"incoming/{batch_id}/"
    return [
        (p + "_SUCCESS", 0),
        (p + "orders.csv", 100),
        (p + "order_items/order_items_part1.csv", 250),
        (p + "order_items/order_items_part2.csv", 50),
        (p + "orders/", 0),  # a console "folder", not a file
        (p + "notes.txt", 7),
        (p + "products/orders.csv", 9),  # orders file in the products folder fits nothing
    ]


def test_plan_execution_exact_input():
    plan = plan_execution(BUCKET, "b1", small_batch())
    assert plan == {
        "batch_id": "b1",
        "batch_label": "b1",
        "bucket": BUCKET,
        "datasets": {
            "products": {"present": False, "bytes": 0, "files": 0},
            "orders": {"present": True, "bytes": 100, "files": 1},
            "order_items": {"present": True, "bytes": 300, "files": 2},
        },
        "total_bytes": 400,
        "route": ECS_ROUTE,
        "tier": TIERS[0].as_input(),
        "unrecognised_files": ["incoming/b1/notes.txt", "incoming/b1/products/orders.csv"],
        "unrecognised_count": 2,
        "received_at": "",
        "kpi_retry_wait_s": KPI_RETRY_WAIT_S,
    }
    assert list(plan["datasets"]) == list(DATASET_ORDER)
    assert json.loads(json.dumps(plan)) == plan


def test_kpi_retry_wait_comes_from_the_environment_within_bounds():
    assert kpi_retry_wait_from({}) == KPI_RETRY_WAIT_S
    assert kpi_retry_wait_from({"KPI_RETRY_WAIT_S": "2"}) == 2
    for bad in ("0", "3601", "1.5", "soon"):
        with pytest.raises(ValueError, match="KPI_RETRY_WAIT_S"):
            kpi_retry_wait_from({"KPI_RETRY_WAIT_S": bad})
    assert plan_execution(BUCKET, "b1", small_batch(), kpi_retry_wait_s=2)["kpi_retry_wait_s"] == 2


def test_plan_execution_carries_the_marker_time():
    received = "2026-11-25T10:00:00.000Z"
    plan = plan_execution(BUCKET, "b1", small_batch(), received_at=received)
    assert plan["received_at"] == received
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "eventTime": received,
                "s3": {"bucket": {"name": BUCKET}, "object": {"key": "incoming/b1/_SUCCESS"}},
            }
        ]
    }
    assert parse_s3_event(event)[0].event_time == received


def test_plan_execution_refuses_a_batch_of_markers_only():
    with pytest.raises(EmptyBatchError, match="holds no dataset file"):
        plan_execution(BUCKET, "b1", [("incoming/b1/_SUCCESS", 0)])
    # one dataset is enough; the others are planned absent
    plan = plan_execution(
        BUCKET, "b1", [("incoming/b1/_SUCCESS", 0), ("incoming/b1/orders.csv", 9)]
    )
    assert [name for name, entry in plan["datasets"].items() if entry["present"]] == ["orders"]
    # unrecognised files alone are the intake's to refuse, with their names
    plan = plan_execution(BUCKET, "b1", [("incoming/b1/notes.txt", 1)])
    assert plan["unrecognised_files"] == ["incoming/b1/notes.txt"]


@pytest.mark.parametrize(
    ("batch_id", "label"),
    [
        ("2025-04-07", "2025-04-07"),
        ("Lieferung März", "Lieferung M?rz"),
        ("x" * 61, "x" * 57 + "..."),
        ("é" * 500, "?" * 57 + "..."),
    ],
)
def test_the_batch_label_is_short_printable_ascii(batch_id, label):
    assert batch_label(batch_id) == label
    assert len(label) <= MAX_BATCH_LABEL
    assert (
        plan_execution(BUCKET, batch_id, [(f"incoming/{batch_id}/orders.csv", 1)])["batch_label"]
        == label
    )


def test_the_plan_names_the_first_unrecognised_files_and_counts_them_all():
    """The execution's input stays small however many stray files a batch holds."""
    strays = [(f"incoming/b1/notes-{n:05}.txt", 1) for n in range(20_000)]
    plan = plan_execution(BUCKET, "b1", [("incoming/b1/orders.csv", 9), *strays])
    assert plan["unrecognised_count"] == 20_000
    assert plan["unrecognised_files"] == [key for key, _ in strays[:MAX_LISTED_UNRECOGNISED]]
    assert len(json.dumps(plan)) < 16_000


def test_plan_execution_refuses_objects_of_other_batches():
    with pytest.raises(ValueError, match="not under the batch folder"):
        plan_execution(BUCKET, "b1", [("incoming/b10/orders.csv", 1)])
    with pytest.raises(ValueError, match="unsafe batch id"):
        plan_execution(BUCKET, "..", [])


def test_large_batch_gets_a_larger_tier_than_a_small_one():
    p = "incoming/big/"
    objects = [(p + "_SUCCESS", 0), (p + "orders.csv", 1 * GIB), (p + "order_items.csv", 2 * GIB)]
    big = plan_execution(BUCKET, "big", objects)
    small = plan_execution(BUCKET, "b1", small_batch())
    assert big["total_bytes"] == 3 * GIB
    assert big["tier"] == choose_tier(3 * GIB).as_input()
    assert big["tier"]["name"] == "large"
    assert small["tier"]["name"] == "small"
    assert int(big["tier"]["cpu"]) > int(small["tier"]["cpu"])
    assert int(big["tier"]["memory"]) > int(small["tier"]["memory"])
    for tier in (big["tier"], small["tier"]):
        assert isinstance(tier["cpu"], str)
        assert isinstance(tier["memory"], str)


def test_tier_boundary_is_inclusive():
    plan = plan_execution(BUCKET, "b1", [("incoming/b1/orders.csv", 256 * MIB)])
    assert plan["tier"]["name"] == "small"
    plan = plan_execution(BUCKET, "b1", [("incoming/b1/orders.csv", 256 * MIB + 1)])
    assert plan["tier"]["name"] == "medium"


def test_batch_above_the_largest_fargate_tier_plans_the_emr_route():
    largest = TIERS[-1].max_input_bytes
    at_limit = plan_execution(BUCKET, "b1", [("incoming/b1/orders.csv", largest)])
    assert (at_limit["route"], at_limit["tier"]) == (ECS_ROUTE, TIERS[-1].as_input())
    objects = [(f"incoming/huge/order_items_{i}.csv", 5 * GIB) for i in range(5)]  # 25 GiB
    assert sum(size for _, size in objects) > largest
    plan = plan_execution(BUCKET, "huge", objects)
    assert plan["route"] == EMR_ROUTE
    assert plan["tier"] == EMR_TIERS[0].as_input()
    assert plan["tier"]["name"] == "emr-large"
    # the tier's Spark settings ride along for the job run's sparkSubmitParameters
    assert "--conf spark.dynamicAllocation.maxExecutors=" in plan["tier"]["spark_submit_parameters"]
    assert "cpu" not in plan["tier"]  # nothing of a Fargate size
    assert json.loads(json.dumps(plan)) == plan


def test_too_large_batch_raises():
    largest = EMR_TIERS[-1].max_input_bytes
    objects = [(f"incoming/huge/orders_{i}.csv", largest // 4 + 1) for i in range(4)]
    with pytest.raises(BatchTooLargeError, match="above the configured maximum"):
        plan_execution(BUCKET, "huge", objects)
    # a maximum raised above the largest tier still finds no tier for it
    with pytest.raises(BatchTooLargeError, match="exceeds the largest tier"):
        plan_execution(BUCKET, "huge", objects, max_batch_bytes=2 * largest)


def test_plan_from_manifest_counts_only_listed_files():
    objects = [*small_batch(), ("incoming/b1/manifest.json", 80), ("incoming/b1/products.csv", 5)]
    files = ["orders.csv", "order_items/order_items_part2.csv", "notes.txt"]
    plan = plan_execution(BUCKET, "b1", objects, manifest_files=files)
    assert plan["datasets"] == {
        "products": {"present": False, "bytes": 0, "files": 0},
        "orders": {"present": True, "bytes": 100, "files": 1},
        "order_items": {"present": True, "bytes": 50, "files": 1},
    }
    assert plan["total_bytes"] == 150
    assert plan["unrecognised_files"] == ["incoming/b1/notes.txt"]


def test_plan_from_manifest_with_a_missing_file_names_it():
    with pytest.raises(ValueError, match=r"not in s3://.*: orders/orders_part9\.csv$"):
        plan_execution(
            BUCKET, "b1", small_batch(), manifest_files=["orders.csv", "orders/orders_part9.csv"]
        )


def test_read_manifest():
    text = json.dumps({"files": ["orders/orders_part1.csv", "products.csv"], "note": "x"})
    assert read_manifest(text) == ["orders/orders_part1.csv", "products.csv"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", '"files"'),
        ('{"files": "orders.csv"}', '"files"'),
        ('{"files": []}', "at least one file"),
        ('{"files": ["../other/orders.csv"]}', "invalid file path"),
        ('{"files": ["/orders.csv"]}', "invalid file path"),
        ('{"files": ["a\\\\orders.csv"]}', "invalid file path"),
        ('{"files": [3]}', "invalid file path"),
        ('{"files": ["orders.csv", "orders.csv"]}', "twice"),
    ],
)
def test_read_manifest_rejects_bad_manifests(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        read_manifest(text)


# --- execution names --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_id", ["b1", "2025-03-30_run-2", "A" * 80])
def test_execution_name_keeps_ids_that_fit(batch_id):
    assert execution_name(batch_id) == batch_id


def test_execution_name_of_odd_ids_is_valid_distinct_and_stable():
    ids = [
        "batch 7",
        "batch+7",
        "batch/7",
        "batch-7",
        "2025-03-30T10:00:00Z",
        "2025-03-30T10:00:01Z",
        "x" * 81,
        "x" * 80 + "y",
        "é" * 200,
        "ü" * 200,
        "***",
        "",
    ]
    names = [execution_name(batch_id) for batch_id in ids]
    for name in names:
        assert NAME_RE.match(name), name
    assert len(set(names)) == len(ids)
    assert names == [execution_name(batch_id) for batch_id in ids]
    assert execution_name("batch 7").startswith("batch-7-")


def test_execution_arn():
    arn = "arn:aws:states:us-east-1:123456789012:stateMachine:ecom"
    assert execution_arn(arn, "b1") == "arn:aws:states:us-east-1:123456789012:execution:ecom:b1"
    with pytest.raises(ValueError, match="not a state machine ARN"):
        execution_arn("arn:aws:lambda:us-east-1:123456789012:function:f", "b1")
