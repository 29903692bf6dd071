"""The bucket's layout and the boto3 transfers that stage objects to and from local disk.

Spark reads and writes local files only: the pyspark wheel has no S3 filesystem, so inputs are
downloaded first and outputs uploaded after (see the README, "Reading S3").
"""

from __future__ import annotations

import hashlib
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
# Custody of a batch's raw files: they arrive in incoming/<batch>/ and, once the batch is
# settled, move (never deleted) to archive/<batch>/ (accepted) or rejected/<batch>/ (refused,
# with REASON_FILE beside them). A batch that failed for a reason that is not the data's fault
# (a crashed job, an AWS error) stays in incoming/ for `ecom-pipeline replay`.
REJECTED = "rejected"
ARCHIVE = "archive"
REASON_FILE = "_reason.json"


def incoming_prefix(batch_id: str) -> str:
    return f"{INCOMING}/{batch_id}/"


def rejected_prefix(batch_id: str) -> str:
    return f"{REJECTED}/{batch_id}/"


def archive_prefix(batch_id: str) -> str:
    return f"{ARCHIVE}/{batch_id}/"


def staging_prefix(batch_id: str, dataset: str) -> str:
    return f"{STAGING}/{batch_id}/{dataset}/"


def curated_prefix(dataset: str) -> str:
    return f"{CURATED}/{dataset}/"


def curated_journal_key() -> str:
    """The journal of a curated replacement in progress (outside every dataset's prefix)."""
    return f"{CURATED}/_journal.json"


def result_key(batch_id: str, dataset: str) -> str:
    return f"{RESULTS}/{batch_id}/{dataset}.json"


def kpi_result_key(batch_id: str) -> str:
    return f"{RESULTS}/{batch_id}/kpis.json"


def reason_history_key(batch_id: str, execution_name: str) -> str:
    """Where a replay keeps a rejected batch's _reason.json once its files went back."""
    return f"{RESULTS}/{batch_id}/rejections/{execution_name}.json"


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

    def list(self, prefix: str, *, page_size: int | None = None) -> list[StoredObject]:
        objects = []
        pages = self._s3.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket,
            Prefix=prefix,
            PaginationConfig={"PageSize": page_size} if page_size else {},
        )
        for page in pages:
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

    def download_prefix(self, prefix: str, dest: Path, *, page_size: int | None = None) -> Path:
        """Download every object under the folder ``prefix`` into ``dest``, keeping sub-paths
        (``prefix`` is a folder: ``runs/r1`` does not match ``runs/r10/``). Returns ``dest``."""
        folder = _folder(prefix)
        dest.mkdir(parents=True, exist_ok=True)
        for stored in self.list(folder, page_size=page_size):
            if stored.key.endswith("/"):
                continue  # a folder marker
            target = _safe_target(dest, stored.key[len(folder) :])
            target.parent.mkdir(parents=True, exist_ok=True)
            self._s3.download_file(self.bucket, stored.key, str(target))
        return dest

    def upload_file(self, path: Path, key: str) -> None:
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        self._s3.upload_file(str(path), self.bucket, key, ExtraArgs={"ContentType": content_type})

    def upload_dir(self, local_dir: Path, prefix: str, *, skip_hidden: bool = True) -> list[str]:
        """Upload every file below local_dir under prefix (keeping relative paths)."""
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(local_dir).as_posix()
            # Spark's _SUCCESS and .crc side files are not data.
            if skip_hidden and any(part.startswith((".", "_")) for part in relative.split("/")):
                continue
            key = _folder(prefix) + relative
            self.upload_file(path, key)
            keys.append(key)
        return keys

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's metadata (ContentLength, ETag, ...), or None when there is no such key."""
        try:
            return self._s3.head_object(Bucket=self.bucket, Key=key)
        except self._s3.exceptions.ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    def copy(self, source_key: str, dest_key: str) -> None:
        """Server-side copy within the bucket; boto3's managed copy uses multipart
        UploadPartCopy for objects above its threshold, so objects over 5 GB copy too."""
        self._s3.copy({"Bucket": self.bucket, "Key": source_key}, self.bucket, dest_key)

    def sha256(self, key: str) -> str:
        digest = hashlib.sha256()
        body = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()

    def delete_object(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def put_json(self, key: str, document: Any) -> None:
        body = json.dumps(document, indent=2, default=str, ensure_ascii=False).encode("utf-8")
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def get_bytes(self, key: str) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def get_json_or_none(self, key: str) -> Any:
        try:
            return self.get_json(key)
        except self._s3.exceptions.NoSuchKey:
            return None


def _folder(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _safe_target(dest: Path, relative: str) -> Path:
    parts = [part for part in relative.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise ValueError(f"refusing to download object key part {relative!r}")
    return dest.joinpath(*parts)
