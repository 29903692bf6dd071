"""``ecom-pipeline replay`` against moto's S3 and Step Functions (no Spark): a replay keeps its
batch's upload time, so its rows keep the version of their upload, not of the replay."""

from __future__ import annotations

import json
import time

import boto3
from moto import mock_aws

from ecom_pipeline.adapters.storage import BucketStore
from ecom_pipeline.core.planning import execution_arn
from ecom_pipeline.core.settings import AwsSettings
from ecom_pipeline.ops.replay import replay_batch

REGION = "us-east-1"
BUCKET = "replay-test"
FAIL = json.dumps({"StartAt": "Crash", "States": {"Crash": {"Type": "Fail", "Error": "Killed"}}})


def test_a_replay_keeps_the_upload_time_of_its_batch():
    with mock_aws():
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_object(Bucket=BUCKET, Key="incoming/b1/orders.csv", Body=b"order_id\n1\n")
        sfn = boto3.client("stepfunctions", region_name=REGION)
        machine = sfn.create_state_machine(
            name="pipeline", definition=FAIL, roleArn="arn:aws:iam::123456789012:role/x"
        )["stateMachineArn"]
        uploaded = "2025-04-01T10:00:00.000Z"
        first = sfn.start_execution(
            stateMachineArn=machine, name="b1", input=json.dumps({"received_at": uploaded})
        )
        sfn.stop_execution(executionArn=first["executionArn"])  # killed: a replay may run it
        # (moto's interpreter, switched on by other tests in this process, ends it in a thread)
        deadline = time.monotonic() + 10
        while sfn.describe_execution(executionArn=first["executionArn"])["status"] == "RUNNING":
            assert time.monotonic() < deadline, "b1 still running"
            time.sleep(0.1)
        store = BucketStore(BUCKET, AwsSettings(region=REGION), s3=s3)
        result = replay_batch(sfn, store, machine, "b1")
        assert result.execution_name == "b1-replay-1"
        described = sfn.describe_execution(executionArn=execution_arn(machine, "b1-replay-1"))
        assert json.loads(described["input"])["received_at"] == uploaded
