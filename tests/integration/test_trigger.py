"""The trigger Lambda (lambda/trigger.py, ecom_pipeline.core.intake) against moto's in-process
S3, Step Functions and SNS; no Spark is involved."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError
from moto import mock_aws
from moto.core.config import default_user_config

from ecom_pipeline.core import planning
from ecom_pipeline.core.planning import (
    execution_arn,
    execution_name,
    plan_execution,
)
from ecom_pipeline.core.tiers import (
    EMR_ROUTE,
    EMR_TIERS,
    GIB,
    TIERS,
    BatchTooLargeError,
)
from s3_events import BUCKET, REGION, s3_event, s3_record

ROOT = Path(__file__).resolve().parents[2]
TRIGGER_PATH = ROOT / "lambda" / "trigger.py"
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


def log_lines(captured: str) -> list[dict]:
    return [json.loads(line) for line in captured.splitlines() if line.strip()]


# --- imports ----------------------------------------------------------------------------------


def test_orchestration_and_trigger_import_without_pyspark():
    code = f"""
import sys
sys.modules["pyspark"] = None
import ecom_pipeline.core.planning
import importlib.util, json
spec = importlib.util.spec_from_file_location("trigger", {str(TRIGGER_PATH)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(m for m in sys.modules if m.startswith("ecom_pipeline"))))
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    # Only what the Lambda zip ships: the package's core.
    modules = json.loads(done.stdout)
    assert "ecom_pipeline.core.intake" in modules
    assert [
        m for m in modules if m != "ecom_pipeline" and not m.startswith("ecom_pipeline.core")
    ] == []


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
    # executions only recorded, never run: a test ends them itself (moto's config is
    # process-wide, and the end-to-end tests turn its interpreter on)
    monkeypatch.setitem(default_user_config["stepfunctions"], "execute_state_machine", False)
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

    sfn = trigger._intake().sfn

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


def test_a_refusal_subject_is_ascii_and_bounded_whatever_the_batch_id(aws, trigger, monkeypatch):
    """SNS refuses a subject with non-ASCII characters or over 100 characters."""
    topic, sqs, queue = _inbox()
    monkeypatch.setenv("NOTIFY_TOPIC_ARN", topic)
    batch_id = "lieferung-äöü-" + "x" * 150
    aws.put(f"incoming/{batch_id}/_SUCCESS")
    result = trigger.handler(s3_event(f"incoming/{batch_id}/_SUCCESS"), FakeContext())
    assert len(result["refused"]) == 1
    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    subject = json.loads(message["Body"])["Subject"]
    assert subject.isascii()
    assert len(subject) <= 100
    assert subject.startswith("ecom-pipeline FAILED: batch lieferung-???-x")
    notice = json.loads(json.loads(message["Body"])["Message"])
    assert notice["batch_id"] == batch_id  # the notice itself keeps the id as it is


def test_a_batch_folder_spark_would_read_as_a_pattern_is_refused_with_a_notice(
    aws, trigger, monkeypatch
):
    topic, sqs, queue = _inbox()
    monkeypatch.setenv("NOTIFY_TOPIC_ARN", topic)
    upload_batch(aws, "b[1]", BATCH_FILES)
    aws.put("incoming/b[1]/_SUCCESS")
    result = trigger.handler(s3_event("incoming/b[1]/_SUCCESS"), FakeContext())
    assert result["refused"] == [execution_name("b[1]")]
    assert aws.executions() == []  # no job ever reads incoming/b[1]/ as a pattern
    (message,) = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    notice = json.loads(json.loads(message["Body"])["Message"])
    assert (notice["stage"], notice["batch_id"]) == ("intake", "b[1]")
    assert notice["rule"] == "batch id is a plain folder name"
    assert "[ ]" in notice["error"]


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


def test_an_upload_while_the_batch_runs_waits_for_the_run_and_then_runs_next(aws, trigger, capsys):
    """A marker stored while the batch's execution runs is set aside (its event time kept for
    the next run's rows); once the run has settled its files (custody's mark), the event makes
    intake wait for the run's end and start the next run, with that event time."""
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    upload_batch(aws, "b1", BATCH_FILES)
    aws.put("incoming/b1/_SUCCESS")
    assert trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())["started"] == ["b1"]
    arn = execution_arn(aws.state_machine_arn, "b1")
    assert aws.sfn.describe_execution(executionArn=arn)["status"] == "RUNNING"

    time.sleep(1.1)  # S3's LastModified has whole seconds
    aws.put("incoming/b1/orders/orders_part3.csv", "o")
    aws.put("incoming/b1/_SUCCESS")
    event = s3_event("incoming/b1/_SUCCESS")
    event["Records"][0]["eventTime"] = "2026-12-03T10:00:00.123Z"
    result = trigger.handler(event, FakeContext())
    assert result["deferred"] == ["b1"]
    assert result["started"] == []
    version = aws.s3.head_object(Bucket=BUCKET, Key="incoming/b1/_SUCCESS")["VersionId"]
    kept = aws.s3.get_object(Bucket=BUCKET, Key=f"results/b1/runs/b1/deferred/{version}.json")
    assert json.loads(kept["Body"].read())["event_time"] == "2026-12-03T10:00:00.123Z"

    # custody has settled b1's files; the run ends a moment later
    aws.put("results/b1/runs/b1/settled.json", "{}")
    ender = threading.Timer(1.0, aws.sfn.stop_execution, kwargs={"executionArn": arn})
    ender.start()
    try:
        result = trigger.handler(event, FakeContext())
    finally:
        ender.join()
    assert result["started"] == ["b1-replay-1"]
    assert aws.sfn.describe_execution(executionArn=arn)["status"] != "RUNNING"
    assert aws.execution_input("b1-replay-1")["received_at"] == "2026-12-03T10:00:00.123Z"
    upload = json.loads(
        aws.s3.get_object(Bucket=BUCKET, Key="results/b1/runs/b1-replay-1/upload.json")[
            "Body"
        ].read()
    )
    assert "incoming/b1/orders/orders_part3.csv" in {f["key"] for f in upload["files"]}
    # the run's upload is written once: the same event again is a duplicate of the new run
    assert trigger.handler(event, FakeContext())["duplicates"] == ["b1"]


def test_a_marker_stored_in_the_second_its_run_began_is_a_new_upload(aws, trigger):
    """S3's LastModified has whole seconds, so a marker stored just after its batch's run began
    can look older than the run. The run's upload names the marker version it took: any other
    version is an upload the run does not take, set aside for the next run (not a repeat)."""
    aws.s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    upload_batch(aws, "b1", BATCH_FILES)
    time.sleep(1 - time.time() % 1)  # at a second's start: the run and the next upload share it
    aws.put("incoming/b1/_SUCCESS")
    event = s3_event("incoming/b1/_SUCCESS")
    assert trigger.handler(event, FakeContext())["started"] == ["b1"]
    started = aws.sfn.describe_execution(executionArn=execution_arn(aws.state_machine_arn, "b1"))[
        "startDate"
    ]
    aws.put("incoming/b1/orders/orders_part3.csv", "o")
    aws.put("incoming/b1/_SUCCESS")
    stored = aws.s3.head_object(Bucket=BUCKET, Key="incoming/b1/_SUCCESS")["LastModified"]
    assert stored <= started  # what the times alone would call the run's own marker
    assert trigger.handler(event, FakeContext())["deferred"] == ["b1"]


def test_too_large_batch_is_logged_and_raised(aws, trigger, monkeypatch, capsys):
    monkeypatch.delenv("NOTIFY_TOPIC_ARN", raising=False)  # nobody to tell: the invocation fails
    upload_batch(aws, "b1", BATCH_FILES)
    real_plan = planning.plan_execution

    def huge(bucket, batch_id, objects, **kwargs):
        objects = [(key, EMR_TIERS[-1].max_input_bytes) for key, _ in objects]
        return real_plan(bucket, batch_id, objects, **kwargs)

    monkeypatch.setattr(planning, "plan_execution", huge)
    with pytest.raises(BatchTooLargeError):
        trigger.handler(s3_event("incoming/b1/_SUCCESS"), FakeContext())
    assert aws.executions() == []
    errors = [line for line in log_lines(capsys.readouterr().out) if line["level"] == "ERROR"]
    assert [line["type"] for line in errors] == ["BatchTooLargeError"]


def test_batch_above_the_largest_fargate_tier_starts_on_the_emr_route(
    aws, trigger, monkeypatch, capsys
):
    upload_batch(aws, "b1", BATCH_FILES)
    real_plan = planning.plan_execution

    def big(bucket, batch_id, objects, **kwargs):
        objects = [(key, 10 * GIB) for key, _ in objects]  # 5 files: 50 GiB
        return real_plan(bucket, batch_id, objects, **kwargs)

    monkeypatch.setattr(planning, "plan_execution", big)
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
    trigger = load_trigger()  # settings are read once per Lambda container: a new deployment
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
