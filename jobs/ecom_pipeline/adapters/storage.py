"""The bucket's layout, and the two stores that hold it: a bucket (boto3) or a directory.

Both stores have the same operations and name every object by the same key. ``uri(key)`` is the
object's Hadoop FileSystem URI, what Spark reads and writes in direct I/O mode
(``Settings.direct_io``): ``s3://<bucket>/<key>`` (EMRFS on EMR) or ``file:///root/<key>``
(a directory every Spark process sees, e.g. NFS under a standalone cluster). In the default,
staged mode the jobs download inputs to local disk and upload outputs, because the pyspark wheel
has no S3 filesystem (see the README, "Reading S3").
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from ecom_pipeline.adapters.aws import AwsSettings, make_client
from ecom_pipeline.core.aws_errors import NOT_FOUND_CODES, error_code
from ecom_pipeline.core.layout import is_side_file
from ecom_pipeline.core.settings import Settings, file_root
from ecom_pipeline.core.upload import UploadedFile, current_versions, version_argument


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int


class Store(Protocol):
    """What the jobs need of where the data lives: :class:`BucketStore` or :class:`FileStore`."""

    def uri(self, key: str) -> str: ...
    def list(self, prefix: str, *, page_size: int | None = None) -> list[StoredObject]: ...
    def download(
        self, keys: list[str], local_root: Path, *, versions: Mapping[str, str | None] | None = None
    ) -> list[Path]: ...
    def download_prefix(self, prefix: str, dest: Path, *, page_size: int | None = None) -> Path: ...
    def upload_file(self, path: Path, key: str) -> None: ...
    def upload_dir(
        self, local_dir: Path, prefix: str, *, skip_hidden: bool = True
    ) -> list[str]: ...
    def put_bytes(
        self, key: str, body: bytes, *, content_type: str, cache_control: str | None = None
    ) -> None: ...
    def delete(self, keys: list[str]) -> None: ...
    def delete_object(self, key: str) -> None: ...
    def head(self, key: str, *, version_id: str | None = None) -> dict[str, Any] | None: ...
    def copy(self, source_key: str, dest_key: str, *, version_id: str | None = None) -> None: ...
    def sha256(self, key: str, *, version_id: str | None = None) -> str: ...
    def current_versions(self, prefix: str) -> list[UploadedFile]: ...
    def restore(
        self, key: str, version_id: str | None, *, metadata: Mapping[str, str] | None = None
    ) -> None: ...
    def key_versions(self, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]: ...
    def put_json(self, key: str, document: Any) -> None: ...
    def get_json(self, key: str) -> Any: ...
    def get_json_or_none(self, key: str) -> Any: ...
    def get_bytes(self, key: str, *, version_id: str | None = None) -> bytes: ...
    def get_range(self, key: str, start: int, length: int) -> bytes: ...


def data_keys(store: Store, prefix: str) -> list[str]:
    """The data objects under the folder ``prefix``, without Spark's side files."""
    folder = _folder(prefix)
    return [o.key for o in store.list(folder) if not is_side_file(o.key[len(folder) :])]


def _json_body(document: Any) -> bytes:
    return json.dumps(document, indent=2, default=str, ensure_ascii=False).encode("utf-8")


class StoreError(RuntimeError):
    """The store refused part of a request (e.g. some keys of a batch delete)."""


class BucketStore:
    """The bucket, through one S3 client (``s3``: injected, e.g. in tests; default: made from
    ``settings``)."""

    def __init__(self, bucket: str, settings: AwsSettings, *, s3: Any = None) -> None:
        self.bucket = bucket
        self._s3 = s3 if s3 is not None else make_client(settings, "s3")

    def uri(self, key: str) -> str:
        """The object's URI for Spark: EMRFS reads and writes ``s3://`` on EMR (the pyspark
        wheel here has no S3 filesystem: only staged mode works with a bucket outside EMR)."""
        return f"s3://{self.bucket}/{key}"

    @property
    def client(self) -> Any:
        """The S3 client, for code that takes one (``core.intake``)."""
        return self._s3

    def close(self) -> None:
        self._s3.close()

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

    def download(
        self, keys: list[str], local_root: Path, *, versions: Mapping[str, str | None] | None = None
    ) -> list[Path]:
        """Download keys to local_root/<key>, returning the local paths in the same order; a
        key given a version in ``versions`` is downloaded in that version."""
        paths = []
        for key in keys:
            path = local_root / PurePosixPath(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            version_id = (versions or {}).get(key)
            extra = {"VersionId": version_id} if version_id else None
            self._s3.download_file(self.bucket, key, str(path), ExtraArgs=extra)
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
        return _upload_dir(self, local_dir, prefix, skip_hidden=skip_hidden)

    def delete(self, keys: list[str]) -> None:
        """Delete every key, 1000 a request. DeleteObjects answers 200 even when some keys
        could not be deleted (they come back under ``Errors``): every chunk is tried, then
        the keys that survived are raised, so no caller takes a partial delete for a whole one."""
        failed: list[str] = []
        for start in range(0, len(keys), 1000):
            chunk = keys[start : start + 1000]
            response = self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
            failed += [
                f"{error.get('Key')} ({error.get('Code')}: {error.get('Message', '')})"
                for error in response.get("Errors", [])
            ]
        if failed:
            shown = "; ".join(failed[:5]) + (
                f"; and {len(failed) - 5} more" if len(failed) > 5 else ""
            )
            raise StoreError(
                f"s3://{self.bucket}: {len(failed)} of {len(keys)} objects not deleted: {shown}"
            )

    def head(self, key: str, *, version_id: str | None = None) -> dict[str, Any] | None:
        """The object's metadata (ContentLength, ETag, VersionId, ...), or None when there is
        no such key (or version; a delete marker on top counts as no object)."""
        try:
            return self._s3.head_object(Bucket=self.bucket, Key=key, **version_argument(version_id))
        except self._s3.exceptions.ClientError as e:
            if error_code(e) in NOT_FOUND_CODES or error_code(e) == "405":
                return None  # 405: the version asked for is a delete marker
            raise

    def copy(self, source_key: str, dest_key: str, *, version_id: str | None = None) -> None:
        """Server-side copy within the bucket (of the version ``version_id``, when given);
        boto3's managed copy uses multipart UploadPartCopy for objects above its threshold,
        so objects over 5 GB copy too."""
        source = {"Bucket": self.bucket, "Key": source_key, **version_argument(version_id)}
        self._s3.copy(source, self.bucket, dest_key)

    def restore(
        self, key: str, version_id: str | None, *, metadata: Mapping[str, str] | None = None
    ) -> None:
        """Store the version ``version_id`` of ``key`` again as its current object (a new
        version: nothing is erased, and S3 announces it as a new object), with ``metadata``."""
        source = {"Bucket": self.bucket, "Key": key, **version_argument(version_id)}
        extra = {"MetadataDirective": "REPLACE", "Metadata": dict(metadata)} if metadata else None
        self._s3.copy(source, self.bucket, key, ExtraArgs=extra)

    def current_versions(self, prefix: str) -> list[UploadedFile]:
        """Every current object under ``prefix`` with its size, ETag and version id."""
        pages = self._s3.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        return current_versions(pages)

    def key_versions(self, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The versions (newest first) and delete markers of exactly ``key``."""
        versions: list[dict[str, Any]] = []
        markers: list[dict[str, Any]] = []
        pages = self._s3.get_paginator("list_object_versions").paginate(
            Bucket=self.bucket, Prefix=key
        )
        for page in pages:
            versions += [v for v in page.get("Versions", []) if v["Key"] == key]
            markers += [m for m in page.get("DeleteMarkers", []) if m["Key"] == key]
        return versions, markers

    def sha256(self, key: str, *, version_id: str | None = None) -> str:
        digest = hashlib.sha256()
        body = self._s3.get_object(Bucket=self.bucket, Key=key, **version_argument(version_id))[
            "Body"
        ]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            digest.update(chunk)
        return digest.hexdigest()

    def delete_object(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=key)

    def put_json(self, key: str, document: Any) -> None:
        self.put_bytes(key, _json_body(document), content_type="application/json")

    def put_bytes(
        self, key: str, body: bytes, *, content_type: str, cache_control: str | None = None
    ) -> None:
        extra = {"CacheControl": cache_control} if cache_control else {}
        self._s3.put_object(
            Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, **extra
        )

    def get_json(self, key: str) -> Any:
        return json.loads(self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def get_bytes(self, key: str, *, version_id: str | None = None) -> bytes:
        return self._s3.get_object(Bucket=self.bucket, Key=key, **version_argument(version_id))[
            "Body"
        ].read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``start`` (fewer at the end; b"" past it), one ranged GET."""
        if length <= 0:
            return b""
        try:
            response = self._s3.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + length - 1}"
            )
        except self._s3.exceptions.ClientError as e:
            if error_code(e) == "InvalidRange":  # an empty object
                return b""
            raise
        return response["Body"].read()

    def get_json_or_none(self, key: str) -> Any:
        try:
            return self.get_json(key)
        except self._s3.exceptions.NoSuchKey:
            return None


class FileStore:
    """The bucket's layout in a local or shared directory (``file:///abs/root``), with the
    operations of :class:`BucketStore` over pathlib and S3's semantics: keys are paths below
    the root, a listing is every file whose key starts with the prefix (in key order), empty
    folders are not objects (deleting the last file of a folder removes the folder), and a
    put or copy replaces the object at once (written beside it, then renamed)."""

    def __init__(self, root: str | Path) -> None:
        self.root = file_root(root)

    def uri(self, key: str) -> str:
        return f"file://{self.root.as_posix()}/{key}"

    def _path(self, key: str) -> Path:
        return _safe_target(self.root, key)

    def list(self, prefix: str, *, page_size: int | None = None) -> list[StoredObject]:
        del page_size  # one listing: no pages on a filesystem
        parents = [part for part in prefix.split("/")[:-1] if part]
        if any(part in (".", "..") for part in parents):
            raise ValueError(f"refusing to list prefix {prefix!r}")
        folder = self.root.joinpath(*parents)
        if not folder.is_dir():
            return []
        objects = []
        for path in folder.rglob("*"):
            if not path.is_file():
                continue
            key = path.relative_to(self.root).as_posix()
            if key.startswith(prefix):
                objects.append(StoredObject(key, path.stat().st_size))
        return sorted(objects, key=lambda o: o.key.encode("utf-8"))  # S3's order

    def download(
        self, keys: list[str], local_root: Path, *, versions: Mapping[str, str | None] | None = None
    ) -> list[Path]:
        _no_versions(*(versions or {}).values())
        paths = []
        for key in keys:
            path = local_root / PurePosixPath(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._existing(key), path)
            paths.append(path)
        return paths

    def download_prefix(self, prefix: str, dest: Path, *, page_size: int | None = None) -> Path:
        folder = _folder(prefix)
        dest.mkdir(parents=True, exist_ok=True)
        for stored in self.list(folder, page_size=page_size):
            target = _safe_target(dest, stored.key[len(folder) :])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._path(stored.key), target)
        return dest

    def _write(self, key: str, fill: Any) -> None:
        """Write the object beside its place and rename it there (readers never see half)."""
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".put-")
        try:
            with os.fdopen(handle, "wb") as out:
                fill(out)
            Path(temporary).replace(target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def upload_file(self, path: Path, key: str) -> None:
        with path.open("rb") as source:
            self._write(key, lambda out: shutil.copyfileobj(source, out))

    def upload_dir(self, local_dir: Path, prefix: str, *, skip_hidden: bool = True) -> list[str]:
        return _upload_dir(self, local_dir, prefix, skip_hidden=skip_hidden)

    def put_bytes(
        self, key: str, body: bytes, *, content_type: str, cache_control: str | None = None
    ) -> None:
        del content_type, cache_control  # a filesystem keeps no content type
        self._write(key, lambda out: out.write(body))

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.delete_object(key)

    def delete_object(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def head(self, key: str, *, version_id: str | None = None) -> dict[str, Any] | None:
        """ContentLength and a change tag (size and modification time, standing in for S3's
        ETag in an upload's list); custody still compares SHA-256 (custody.verify_copy)."""
        _no_versions(version_id)
        path = self._path(key)
        if not path.is_file():
            return None
        return {"ContentLength": path.stat().st_size, "ChangeTag": _change_tag(path)}

    def copy(self, source_key: str, dest_key: str, *, version_id: str | None = None) -> None:
        _no_versions(version_id)
        with self._existing(source_key).open("rb") as source:
            self._write(dest_key, lambda out: shutil.copyfileobj(source, out))

    def current_versions(self, prefix: str) -> list[UploadedFile]:
        """Every file under ``prefix``: a directory keeps one version of each (no version id)."""
        return [
            UploadedFile(o.key, o.size, _change_tag(self._path(o.key)), None)
            for o in self.list(prefix)
        ]

    def restore(
        self, key: str, version_id: str | None, *, metadata: Mapping[str, str] | None = None
    ) -> None:
        """Nothing to do: a directory's file is its one version, and keeps no metadata."""
        del metadata
        _no_versions(version_id)
        self._existing(key)

    def key_versions(self, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        del key  # a directory keeps no older versions and no delete markers
        return [], []

    def sha256(self, key: str, *, version_id: str | None = None) -> str:
        _no_versions(version_id)
        digest = hashlib.sha256()
        with self._existing(key).open("rb") as body:
            for chunk in iter(lambda: body.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def put_json(self, key: str, document: Any) -> None:
        self.put_bytes(key, _json_body(document), content_type="application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def get_bytes(self, key: str, *, version_id: str | None = None) -> bytes:
        _no_versions(version_id)
        return self._existing(key).read_bytes()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self._existing(key).open("rb") as body:
            body.seek(start)
            return body.read(max(length, 0))

    def get_json_or_none(self, key: str) -> Any:
        path = self._path(key)
        return json.loads(path.read_bytes()) if path.is_file() else None

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(f"no object {key!r} in {self.uri('')}")
        return path


def _no_versions(*version_ids: str | None) -> None:
    if any(version_ids):
        raise ValueError("a directory store keeps one version of each file: no version ids")


def _change_tag(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}-{stat.st_mtime_ns}"


def _upload_dir(store: Store, local_dir: Path, prefix: str, *, skip_hidden: bool) -> list[str]:
    """Every file below local_dir, uploaded with ``store.upload_file`` under prefix (keeping
    relative paths); Spark's _SUCCESS and .crc side files are not data, and are skipped."""
    keys = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(local_dir).as_posix()
        if skip_hidden and is_side_file(relative):
            continue
        key = _folder(prefix) + relative
        store.upload_file(path, key)
        keys.append(key)
    return keys


def _folder(prefix: str) -> str:
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _safe_target(dest: Path, relative: str) -> Path:
    parts = [part for part in relative.split("/") if part]
    if not parts or any(part in (".", "..") for part in parts):
        raise ValueError(f"refusing to download object key part {relative!r}")
    return dest.joinpath(*parts)


def open_store(settings: Settings) -> Store:
    """Where the data and the jobs' metadata live (one object per job run): the data root's
    directory, or the bucket."""
    if settings.data_root is not None and settings.data_root.startswith("file:"):
        return FileStore(settings.data_root)
    return BucketStore(settings.bucket, settings.aws)
