"""The trigger Lambda and its pure planning module (ecom_pipeline.orchestration).

Handler tests run against moto's in-process S3 and Step Functions; no Spark is involved.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote_plus

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws

from ecom_pipeline import storage
from ecom_pipeline.contract import DATASET_ORDER
from ecom_pipeline.orchestration import (
    DEFAULT_INCOMING_PREFIX,
    KPI_RETRY_WAIT_S,
    EmptyBatchError,
    S3ObjectEvent,
    batch_of_marker,
    execution_arn,
    execution_name,
    kpi_retry_wait_from,
    parse_s3_event,
    plan_execution,
    read_manifest,
)
from ecom_pipeline.tiers import (
    ECS_ROUTE,
    EMR_ROUTE,
    EMR_TIERS,
    GIB,
    MIB,
    TIERS,
    BatchTooLargeError,
    choose_tier,
)

ROOT = Path(__file__).resolve().parents[1]
TRIGGER_PATH = ROOT / "lambda" / "trigger.py"
BUCKET = "ecom-pipeline-test"
REGION = "us-east-1"
ROLE_ARN = "arn:aws:iam::123456789012:role/x"
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
PASS_DEFINITION = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})


@dataclass
class FakeContext:
    """The attributes of a Lambda context object the handler may read."""

    function_name: str = "ecom-trigger"
    memory_limit_in_mb: int = 128
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:ecom-trigger"
    aws_request_id: str = "req-0001"


def load_trigger():
    """lambda/ is not a package (``lambda`` is a keyword): load the file as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"trigger_{uuid.uuid4().hex}", TRIGGER_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def s3_record(key: str, *, size: int = 0, event_name: str = "ObjectCreated:Put", bucket=BUCKET):
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": REGION,
        "eventName": event_name,
        "s3": {
            "s3SchemaVersion": "1.0",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            # S3 URL-encodes keys in notifications (a space becomes '+').
            "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": "x"},
        },
    }


def s3_event(*keys: str) -> dict:
    return {"Records": [s3_record(key) for key in keys]}


def log_lines(captured: str) -> list[dict]:
    return [json.loads(line) for line in captured.splitlines() if line.strip()]


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
    assert storage.incoming_prefix("b1") == f"{DEFAULT_INCOMING_PREFIX}b1/"


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


# --- imports ----------------------------------------------------------------------------------


def test_orchestration_and_trigger_import_without_pyspark():
    code = f"""
import sys
sys.modules["pyspark"] = None
import ecom_pipeline.orchestration
import importlib.util, json
spec = importlib.util.spec_from_file_location("trigger", {str(TRIGGER_PATH)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("ecom_pipeline"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    # Only what the Lambda zip ships.
    assert json.loads(done.stdout) == [
        "ecom_pipeline",
        "ecom_pipeline.contract",
        "ecom_pipeline.orchestration",
        "ecom_pipeline.tiers",
    ]


def test_trigger_import_makes_no_aws_call(monkeypatch):
    def no_aws(*args, **kwargs):
        raise AssertionError("AWS client created at import time")

    monkeypatch.delenv("STATE_MACHINE_ARN", raising=False)
    monkeypatch.setattr(boto3, "client", no_aws)
    monkeypatch.setattr(boto3, "resource", no_aws)
    monkeypatch.setattr(boto3.session.Session, "client", no_aws)
    module = load_trigger()
    assert callable(module.handler)
    # The missing setting is reported when the handler runs, not at import.
    with pytest.raises(RuntimeError, match="STATE_MACHINE_ARN"):
        module.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())


# --- the handler against moto -----------------------------------------------------------------


@dataclass
class Aws:
    s3: object
    sfn: object
    state_machine_arn: str

    def put(self, key: str, body: bytes | str = b"") -> None:
        self.s3.put_object(Bucket=BUCKET, Key=key, Body=body)

    def executions(self) -> list[dict]:
        return self.sfn.list_executions(stateMachineArn=self.state_machine_arn)["executions"]

    def execution_input(self, name: str) -> dict:
        arn = execution_arn(self.state_machine_arn, name)
        return json.loads(self.sfn.describe_execution(executionArn=arn)["input"])

    def listing(self, batch_id: str) -> list[tuple[str, int]]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"incoming/{batch_id}/"
        )
        return [(o["Key"], o["Size"]) for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def aws(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.delenv("INCOMING_PREFIX", raising=False)
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        sfn = boto3.client("stepfunctions", region_name=REGION)
        arn = sfn.create_state_machine(
            name="ecom-pipeline", definition=PASS_DEFINITION, roleArn=ROLE_ARN
        )["stateMachineArn"]
        monkeypatch.setenv("STATE_MACHINE_ARN", arn)
        yield Aws(s3, sfn, arn)


@pytest.fixture
def trigger():
    return load_trigger()


def upload_batch(aws: Aws, batch_id: str, files: dict[str, str]) -> None:
    for relative, body in files.items():
        aws.put(f"incoming/{batch_id}/{relative}", body)


BATCH_FILES = {
    "products.csv": "p" * 11,
    "orders/orders_part1.csv": "o" * 20,
    "orders/orders_part2.csv": "o" * 5,
    "order_items.csv": "i" * 30,
    "readme.md": "r",
}


def test_marker_starts_one_execution_with_the_planned_input(aws, trigger, capsys):
    upload_batch(aws, "b1", BATCH_FILES)
    aws.put("incoming/b1/_SUCCESS")
    result = trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())

    assert result == {"started": ["b1"], "duplicates": [], "ignored": []}
    executions = aws.executions()
    assert [e["name"] for e in executions] == ["b1"]
    sent = aws.execution_input("b1")
    assert sent == plan_execution(BUCKET, "b1", aws.listing("b1"))
    assert sent["datasets"] == {
        "products": {"present": True, "bytes": 11, "files": 1},
        "orders": {"present": True, "bytes": 25, "files": 2},
        "order_items": {"present": True, "bytes": 30, "files": 1},
    }
    assert sent["total_bytes"] == 66
    assert sent["unrecognised_files"] == ["incoming/b1/readme.md"]
    assert sent["tier"]["name"] == "small"
    logs = log_lines(capsys.readouterr().out)
    started = [line for line in logs if line["message"] == "started"]
    assert len(started) == 1
    assert started[0]["batch_id"] == "b1"
    assert started[0]["aws_request_id"] == "req-0001"
    assert started[0]["execution_arn"] == executions[0]["executionArn"]


def test_several_records_in_one_event(aws, trigger, capsys):
    upload_batch(aws, "b1", BATCH_FILES)
    upload_batch(aws, "batch 7", {"orders.csv": "o" * 3})
    aws.put("incoming/b1/_SUCCESS")
    aws.put("incoming/batch 7/_SUCCESS")
    event = s3_event(
        "incoming/b1/orders/orders_part1.csv",
        "incoming/b1/_SUCCESS",
        "elsewhere/b9/_SUCCESS",
        "incoming/batch 7/_SUCCESS",
        "incoming/../_SUCCESS",
    )
    assert event["Records"][3]["s3"]["object"]["key"] == "incoming/batch+7/_SUCCESS"

    result = trigger.handler(event, FakeContext(aws_request_id="req-42"))

    name7 = execution_name("batch 7")
    assert result == {
        "started": ["b1", name7],
        "duplicates": [],
        "ignored": [
            "incoming/b1/orders/orders_part1.csv",
            "elsewhere/b9/_SUCCESS",
            "incoming/../_SUCCESS",
        ],
    }
    assert sorted(e["name"] for e in aws.executions()) == sorted(["b1", name7])
    assert aws.execution_input(name7)["batch_id"] == "batch 7"
    assert aws.execution_input(name7)["datasets"]["orders"] == {
        "present": True,
        "bytes": 3,
        "files": 1,
    }
    ignored = [line for line in log_lines(capsys.readouterr().out) if line["message"] == "ignored"]
    assert [line["key"] for line in ignored] == result["ignored"]
    assert "outside the prefix" in ignored[1]["reason"]
    assert "not a batch marker" in ignored[0]["reason"]
    assert "unsafe batch id" in ignored[2]["reason"]
    assert {line["aws_request_id"] for line in ignored} == {"req-42"}


def test_data_file_events_start_nothing(aws, trigger):
    upload_batch(aws, "b1", BATCH_FILES)
    keys = [f"incoming/b1/{relative}" for relative in BATCH_FILES]
    result = trigger.handler(s3_event(*keys), FakeContext())
    assert result == {"started": [], "duplicates": [], "ignored": keys}
    assert aws.executions() == []


def test_removed_marker_starts_nothing(aws, trigger):
    upload_batch(aws, "b1", BATCH_FILES)
    event = {"Records": [s3_record("incoming/b1/_SUCCESS", event_name="ObjectRemoved:Delete")]}
    assert trigger.handler(event, FakeContext()) == {"started": [], "duplicates": [], "ignored": []}
    assert aws.executions() == []


def test_repeated_event_and_reuploaded_marker_start_nothing_new(aws, trigger, capsys):
    upload_batch(aws, "b1", BATCH_FILES)
    aws.put("incoming/b1/_SUCCESS")
    event = s3_event("incoming/b1/_SUCCESS")
    assert trigger.handler(event, FakeContext())["started"] == ["b1"]

    # The same notification delivered again (S3 delivers at least once).
    again = trigger.handler(event, FakeContext())
    assert again == {"started": [], "duplicates": ["b1"], "ignored": []}
    # The marker uploaded again after another file arrived: the plan differs, still no new run.
    aws.put("incoming/b1/orders/orders_part3.csv", "o")
    aws.put("incoming/b1/_SUCCESS")
    reupload = trigger.handler(event, FakeContext())
    assert reupload == {"started": [], "duplicates": ["b1"], "ignored": []}
    # The same batch twice in one event.
    twice = trigger.handler(s3_event("incoming/b1/_SUCCESS", "incoming/b1/_SUCCESS"), FakeContext())
    assert twice == {"started": [], "duplicates": ["b1", "b1"], "ignored": []}

    assert len(aws.executions()) == 1
    assert aws.execution_input("b1")["datasets"]["orders"]["files"] == 2  # the first plan
    duplicates = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "duplicate"
    ]
    assert len(duplicates) == 4
    assert all(line["batch_id"] == "b1" for line in duplicates)


def test_execution_already_exists_is_a_duplicate(aws, trigger, monkeypatch):
    """Two invocations racing past the existence check: StartExecution itself refuses."""
    upload_batch(aws, "b1", BATCH_FILES)
    trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())
    aws.put("incoming/b1/products_2.csv", "p")  # a different input, so no idempotent success

    sfn = trigger._client("stepfunctions")

    def never_exists(executionArn):  # noqa: N803 (boto3's parameter name)
        raise sfn.exceptions.ExecutionDoesNotExist(
            {"Error": {"Code": "ExecutionDoesNotExist", "Message": "race"}}, "DescribeExecution"
        )

    monkeypatch.setattr(sfn, "describe_execution", never_exists)
    result = trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())
    assert result == {"started": [], "duplicates": ["b1"], "ignored": []}
    assert len(aws.executions()) == 1


def test_manifest_marker_plans_the_listed_files_only(aws, trigger):
    upload_batch(aws, "m1", BATCH_FILES)
    aws.put("incoming/m1/orders/orders_late.csv", "o" * 1000)  # arrived, but not in the manifest
    manifest = {"files": ["orders/orders_part1.csv", "order_items.csv", "products.csv"]}
    aws.put("incoming/m1/manifest.json", json.dumps(manifest))

    result = trigger.handler(s3_event("incoming/m1/manifest.json"), FakeContext())

    assert result["started"] == ["m1"]
    sent = aws.execution_input("m1")
    assert sent == plan_execution(BUCKET, "m1", aws.listing("m1"), manifest_files=manifest["files"])
    assert sent["datasets"] == {
        "products": {"present": True, "bytes": 11, "files": 1},
        "orders": {"present": True, "bytes": 20, "files": 1},
        "order_items": {"present": True, "bytes": 30, "files": 1},
    }
    assert sent["total_bytes"] == 61
    assert sent["unrecognised_files"] == []


def test_manifest_naming_a_missing_file_fails_clearly(aws, trigger, capsys):
    upload_batch(aws, "m1", BATCH_FILES)
    aws.put("incoming/m1/manifest.json", json.dumps({"files": ["orders/orders_part9.csv"]}))
    upload_batch(aws, "b2", {"orders.csv": "o"})
    aws.put("incoming/b2/_SUCCESS")
    event = s3_event("incoming/m1/manifest.json", "incoming/b2/_SUCCESS")

    with pytest.raises(ValueError, match=r"orders/orders_part9\.csv"):
        trigger.handler(event, FakeContext())

    # The other batch of the event still started; the bad one did not.
    assert [e["name"] for e in aws.executions()] == ["b2"]
    errors = [line for line in log_lines(capsys.readouterr().out) if line["level"] == "ERROR"]
    assert len(errors) == 1
    assert errors[0]["batch_id"] == "m1"
    assert "orders/orders_part9.csv" in errors[0]["error"]


def test_a_manifest_that_cannot_be_planned_is_refused_with_a_notice(aws, trigger, monkeypatch):
    topic, sqs, queue = _inbox()
    monkeypatch.setenv("NOTIFY_TOPIC_ARN", topic)
    upload_batch(aws, "m1", BATCH_FILES)
    aws.put("incoming/m1/manifest.json", json.dumps({"files": ["orders/orders_part9.csv"]}))
    upload_batch(aws, "m2", BATCH_FILES)
    aws.put("incoming/m2/manifest.json", "{not json")
    event = s3_event("incoming/m1/manifest.json", "incoming/m2/manifest.json")
    result = trigger.handler(event, FakeContext())
    assert result["refused"] == ["m1", "m2"]
    assert aws.executions() == []
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    notices = {
        n["batch_id"]: n for n in (json.loads(json.loads(m["Body"])["Message"]) for m in messages)
    }
    assert set(notices) == {"m1", "m2"}
    for notice in notices.values():
        assert (notice["status"], notice["stage"]) == ("FAILED", "intake")
        assert notice["rule"] == "manifest.json lists the batch's files"
        assert "max_batch_bytes" not in notice
    assert "orders/orders_part9.csv" in notices["m1"]["error"]
    assert "not valid JSON" in notices["m2"]["error"]


def test_a_batch_of_markers_only_is_refused_with_a_notice(aws, trigger, monkeypatch):
    topic, sqs, queue = _inbox()
    monkeypatch.setenv("NOTIFY_TOPIC_ARN", topic)
    aws.put("incoming/e1/_SUCCESS")
    result = trigger.handler(s3_event("incoming/e1/_SUCCESS"), FakeContext())
    assert result["refused"] == ["e1"]
    assert aws.executions() == []
    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    notice = json.loads(json.loads(message["Body"])["Message"])
    assert (notice["status"], notice["stage"], notice["batch_id"]) == ("FAILED", "intake", "e1")
    assert notice["rule"] == "batch holds dataset files"
    assert "holds no dataset file in s3://" in notice["error"]


def _end_execution(aws: Aws, name: str) -> str:
    """Stop the execution (if still running) and return its final status."""
    arn = execution_arn(aws.state_machine_arn, name)
    with contextlib.suppress(ClientError):  # it may have ended by itself meanwhile
        aws.sfn.stop_execution(executionArn=arn)
    deadline = time.monotonic() + 10
    while (status := aws.sfn.describe_execution(executionArn=arn)["status"]) == "RUNNING":
        assert time.monotonic() < deadline, f"{name} still running"
        time.sleep(0.1)
    return status


def test_a_batch_uploaded_again_after_its_execution_began_runs_as_the_next_replay(
    aws, trigger, capsys
):
    """The same event again is a duplicate; the marker stored again after the last execution
    began is a new upload: it starts <name>-replay-<n> (never while one is running)."""
    upload_batch(aws, "b1", BATCH_FILES)
    aws.put("incoming/b1/_SUCCESS")
    event = s3_event("incoming/b1/_SUCCESS")
    assert trigger.handler(event, FakeContext())["started"] == ["b1"]
    running = aws.sfn.describe_execution(executionArn=execution_arn(aws.state_machine_arn, "b1"))
    aws.put("incoming/b1/_SUCCESS")  # uploaded again while b1 runs: b1 will settle the folder
    if running["status"] == "RUNNING":
        assert trigger.handler(event, FakeContext())["duplicates"] == ["b1"]
    first_status = _end_execution(aws, "b1")
    assert trigger.handler(event, FakeContext())["duplicates"] == ["b1"]  # stored before b1 began

    time.sleep(1.1)  # S3's LastModified has whole seconds
    aws.put("incoming/b1/orders/orders_part3.csv", "o")
    aws.put("incoming/b1/_SUCCESS")
    assert trigger.handler(event, FakeContext())["started"] == ["b1-replay-1"]
    assert aws.execution_input("b1-replay-1")["datasets"]["orders"]["files"] == 3
    replay_status = _end_execution(aws, "b1-replay-1")
    assert trigger.handler(event, FakeContext())["duplicates"] == ["b1"]
    assert sorted(e["name"] for e in aws.executions()) == ["b1", "b1-replay-1"]
    reasons = [line["reason"] for line in log_lines(capsys.readouterr().out) if "reason" in line]
    assert reasons[-2:] == [
        f"execution b1 exists ({first_status})",
        f"execution b1-replay-1 exists ({replay_status})",
    ]


def test_too_large_batch_is_logged_and_raised(aws, trigger, monkeypatch, capsys):
    monkeypatch.delenv("NOTIFY_TOPIC_ARN", raising=False)  # nobody to tell: the invocation fails
    upload_batch(aws, "b1", BATCH_FILES)
    real_plan = trigger.plan_execution

    def huge(bucket, batch_id, objects, **kwargs):
        objects = [(key, EMR_TIERS[-1].max_input_bytes) for key, _ in objects]
        return real_plan(bucket, batch_id, objects, **kwargs)

    monkeypatch.setattr(trigger, "plan_execution", huge)
    with pytest.raises(BatchTooLargeError):
        trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())
    assert aws.executions() == []
    errors = [line for line in log_lines(capsys.readouterr().out) if line["level"] == "ERROR"]
    assert [line["type"] for line in errors] == ["BatchTooLargeError"]


def test_batch_above_the_largest_fargate_tier_starts_on_the_emr_route(
    aws, trigger, monkeypatch, capsys
):
    upload_batch(aws, "b1", BATCH_FILES)
    real_plan = trigger.plan_execution

    def big(bucket, batch_id, objects, **kwargs):
        objects = [(key, 10 * GIB) for key, _ in objects]  # 5 files: 50 GiB
        return real_plan(bucket, batch_id, objects, **kwargs)

    monkeypatch.setattr(trigger, "plan_execution", big)
    result = trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())
    assert result["started"] == ["b1"]
    sent = aws.execution_input("b1")
    assert sent["total_bytes"] > TIERS[-1].max_input_bytes
    assert (sent["route"], sent["tier"]["name"]) == (EMR_ROUTE, "emr-large")
    (started,) = [
        line for line in log_lines(capsys.readouterr().out) if line["message"] == "started"
    ]
    assert (started["route"], started["tier"]) == (EMR_ROUTE, "emr-large")


def _inbox(topic_name: str = "notices") -> tuple[str, object, str]:
    """A topic with a queue subscribed to it (inside mock_aws): (topic ARN, sqs, queue URL)."""
    sns = boto3.client("sns", region_name=REGION)
    sqs = boto3.client("sqs", region_name=REGION)
    topic = sns.create_topic(Name=topic_name)["TopicArn"]
    queue = sqs.create_queue(QueueName=f"{topic_name}-inbox")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])
    sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn["Attributes"]["QueueArn"])
    return topic, sqs, queue


def test_batch_above_the_configured_maximum_is_refused_with_a_notice(
    aws, trigger, monkeypatch, capsys
):
    topic, sqs, queue = _inbox()
    monkeypatch.setenv("NOTIFY_TOPIC_ARN", topic)
    monkeypatch.setenv("MAX_BATCH_BYTES", "65")  # BATCH_FILES hold 66 bytes of dataset files
    upload_batch(aws, "b1", BATCH_FILES)
    result = trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())
    assert result == {"started": [], "duplicates": [], "ignored": [], "refused": ["b1"]}
    assert aws.executions() == []  # nothing started, so no Spark
    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    envelope = json.loads(message["Body"])
    assert envelope["Subject"] == "ecom-pipeline FAILED: batch b1"
    notice = json.loads(envelope["Message"])
    assert notice["status"] == "FAILED"
    assert notice["stage"] == "intake"
    assert notice["batch_id"] == "b1"
    assert notice["max_batch_bytes"] == 65
    assert "holds 66 bytes" in notice["error"]
    assert "configured maximum of 65 bytes" in notice["error"]
    errors = [line for line in log_lines(capsys.readouterr().out) if line["level"] == "ERROR"]
    assert [line["message"] for line in errors] == ["batch refused"]
    assert errors[0]["batch_id"] == "b1"
    # at the maximum it is accepted (the limit is inclusive), and the default is the largest tier
    monkeypatch.setenv("MAX_BATCH_BYTES", "66")
    upload_batch(aws, "b2", BATCH_FILES)
    assert trigger.handler(s3_event("incoming/b2/_SUCCESS"), FakeContext())["started"] == ["b2"]
    monkeypatch.delenv("MAX_BATCH_BYTES")
    with pytest.raises(BatchTooLargeError, match="configured maximum"):
        plan_execution(
            BUCKET, "b3", [("incoming/b3/orders.csv", EMR_TIERS[-1].max_input_bytes + 1)]
        )


def test_a_bad_max_batch_bytes_is_a_configuration_error(aws, trigger, monkeypatch):
    monkeypatch.setenv("MAX_BATCH_BYTES", "24GiB")
    with pytest.raises(RuntimeError, match="MAX_BATCH_BYTES"):
        trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())


def test_keys_outside_incoming_and_path_tricks_start_nothing(aws, trigger, capsys):
    upload_batch(aws, "b1", BATCH_FILES)
    keys = [
        "/incoming/b1/_SUCCESS",  # absolute
        "incoming/../_SUCCESS",
        "incoming/b1/../_SUCCESS",
        "staging/b1/_SUCCESS",
        "incoming/b1/orders/_SUCCESS",
    ]
    result = trigger.handler(s3_event(*keys), FakeContext())
    assert result["started"] == []
    assert len(result["ignored"]) == len(keys)
    assert aws.executions() == []


def test_listing_is_paginated(aws, trigger):
    parts = 1005  # more than one page of list_objects_v2
    for i in range(parts):
        aws.put(f"incoming/big/orders/orders_{i:04d}.csv", "o")
    result = trigger.handler(s3_event("incoming/big/_SUCCESS"), FakeContext())
    assert result["started"] == ["big"]
    assert aws.execution_input("big")["datasets"]["orders"] == {
        "present": True,
        "bytes": parts,
        "files": parts,
    }


def test_other_incoming_prefix(aws, trigger, monkeypatch):
    monkeypatch.setenv("INCOMING_PREFIX", "landing")
    aws.put("landing/b1/orders.csv", "oo")
    event = s3_event("landing/b1/_SUCCESS", "incoming/b2/_SUCCESS")
    result = trigger.handler(event, FakeContext())
    assert result == {"started": ["b1"], "duplicates": [], "ignored": ["incoming/b2/_SUCCESS"]}
    assert aws.execution_input("b1")["datasets"]["orders"]["bytes"] == 2


def test_malformed_event_is_logged_and_raised(aws, trigger, capsys):
    with pytest.raises(ValueError, match="not an S3 event"):
        trigger.handler({"Records": [{"eventSource": "aws:sns"}]}, FakeContext())
    (line,) = log_lines(capsys.readouterr().out)
    assert line["level"] == "ERROR"
    assert line["message"] == "malformed event"
    assert line["aws_request_id"] == "req-0001"
