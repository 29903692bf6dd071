"""S3 event notifications as the bucket sends them to the trigger Lambda."""

from __future__ import annotations

from urllib.parse import quote_plus

BUCKET = "ecom-pipeline-test"
REGION = "us-east-1"


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
