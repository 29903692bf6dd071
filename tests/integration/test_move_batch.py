"""`ecom-pipeline move-batch` against moto: an upload made during a run keeps its place after
the run's own rows."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from ecom_pipeline.cli import main
from ecom_pipeline.core.layout import incoming_prefix, run_upload_key
from ecom_pipeline.core.planning import UPLOADED_AT_METADATA
from ecom_pipeline.core.upload import Upload, current_versions
from ecom_pipeline.local.emulator import LocalAws

EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:ecom-pipeline:b1"


@pytest.fixture
def aws():
    with LocalAws() as emulator:
        yield emulator


def test_a_marker_stored_after_the_run_listed_its_files_is_announced_as_newer(aws):
    """The marker's stored time has whole seconds, so it can read earlier than the listing of
    the run it came after; the announced upload time is then the listing's."""
    s3, bucket, folder = aws.client("s3"), aws.bucket, incoming_prefix("b1")
    s3.put_object(Bucket=bucket, Key=folder + "orders.csv", Body=b"order_id\n1\n")
    s3.put_object(Bucket=bucket, Key=folder + "_SUCCESS", Body=b"")
    time.sleep(1 - time.time() % 1 + 0.2)  # 0.2 s into a second: the next marker shares it
    listed_at = datetime.now(UTC).isoformat(timespec="milliseconds")
    pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=folder)
    upload = Upload("b1", "b1", listed_at, tuple(current_versions(pages)))
    aws.store.put_json(run_upload_key("b1", "b1"), upload.as_document())
    s3.put_object(Bucket=bucket, Key=folder + "_SUCCESS", Body=b"")  # uploaded during the run
    stored = s3.head_object(Bucket=bucket, Key=folder + "_SUCCESS")["LastModified"]
    assert stored < datetime.fromisoformat(listed_at)  # what the stored time alone would say

    code = main(
        [
            "move-batch",
            "--batch-id",
            "b1",
            "--to",
            "archive",
            "--bucket",
            bucket,
            "--endpoint-url",
            aws.endpoint_url,
        ],
        environ={"EXECUTION_ID": EXECUTION},
        configure_logs=False,
    )

    assert code == 0
    marker = s3.head_object(Bucket=bucket, Key=folder + "_SUCCESS")
    assert marker["Metadata"][UPLOADED_AT_METADATA] == listed_at
    archived = s3.list_objects_v2(Bucket=bucket, Prefix="archive/b1/")["Contents"]
    assert sorted(o["Key"] for o in archived) == ["archive/b1/_SUCCESS", "archive/b1/orders.csv"]
