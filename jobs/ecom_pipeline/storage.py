"""The bucket's layout and the boto3 transfers that stage objects to and from local disk.

Spark reads and writes local files only: the pyspark wheel has no S3 filesystem, so inputs are
downloaded first and outputs uploaded after (see the README, "Reading S3").
"""

from __future__ import annotations

import json
import mimetypes
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from ecom_pipeline.aws import AwsSettings

INCOMING = "incoming"
STAGING = "staging"
CURATED = "curated"
RESULTS = "results"
DATA_DOCS = "data-docs"


def incoming_prefix(batch_id: str) -> str:
    return f"{INCOMING}/{batch_id}/"


def staging_prefix(batch_id: str, dataset: str) -> str:
    return f"{STAGING}/{batch_id}/{dataset}/"


def curated_prefix(dataset: str) -> str:
    return f"{CURATED}/{dataset}/"


def result_key(batch_id: str, dataset: str) -> str:
    return f"{RESULTS}/{batch_id}/{dataset}.json"


def data_docs_prefix(batch_id: str, dataset: str) -> str:
    return f"{DATA_DOCS}/{batch_id}/{dataset}/"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


class BucketStore:
    def __init__(self, bucket: str, settings: AwsSettings) -> None:
        self.bucket = bucket
        self._s3 = settings.client("s3")

    def list(self, prefix: str) -> list[StoredObject]:
        objects = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            objects.extend(StoredObject(o["Key"], o["Size"]) for o in page.get("Contents", []))
        return objects

    def download(self, keys: list[str], local_root: Path) -> list[Path]:
        """Download keys to local_root/<key>, returning the local paths in the same order."""
        paths = []
        for key in keys:
            path = local_root / PurePosixPath(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._s3.download_file(self.bucket, key, str(path))
            paths.append(path)
        return paths

    def download_prefix(self, prefix: str, local_root: Path) -> Path:
        """Mirror every object under prefix to local_root/<prefix>; returns that folder."""
        self.download([o.key for o in self.list(prefix)], local_root)
        target = local_root / PurePosixPath(prefix)
        target.mkdir(parents=True, exist_ok=True)
        return target

    def upload_file(self, path: Path, key: str) -> None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._s3.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type})

    def upload_dir(self, local_dir: Path, prefix: str, *, skip_hidden: bool = True) -> list[str]:
        """Upload every file below local_dir under prefix (keeping relative paths)."""
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            if skip_hidden and any(part.startswith((".", "_")) for part in relative.split("/")):
                continue
            key = prefix.rstrip("/") + "/" + relative
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )

    def put_json(self, key: str, document: Any) -> None:
        body = json.dumps(document, indent=2, default=str, ensure_ascii=False).encode("utf-8")
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
