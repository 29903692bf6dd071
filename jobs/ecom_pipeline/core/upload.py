"""A run's upload: the exact versions of a batch folder's files that one run takes.

When a batch's marker lands, intake lists the folder's current objects with their version ids
and ETags and stores that list (``layout.run_upload_key``) before it starts the run. Every task
of the run then works on exactly those versions: validation reads them by version id and
custody moves them. A file uploaded or replaced while the run is going on is not part of the
run: it stays in ``incoming/`` and the next run takes it (custody starts that run when the new
upload's marker is there, see ``tasks/custody.py``).

Pure Python: the listing pages come from whoever holds an S3 client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# S3's version id of an object written while the bucket was not versioned
UNVERSIONED = "null"


def version_argument(version_id: str | None) -> dict[str, str]:
    """The ``VersionId`` keyword of an S3 call on one version, or none for the current one."""
    return {"VersionId": version_id} if version_id else {}


@dataclass(frozen=True)
class UploadedFile:
    """One object of the upload: its key, size, ETag and version id (None: no versioning)."""

    key: str
    size: int
    etag: str
    version_id: str | None
    stored_at: str = ""  # when S3 stored this version (ISO 8601, milliseconds)

    def is_version_of(self, head: Mapping[str, Any]) -> bool:
        """Whether a HeadObject answer (or a listing entry) is this very version."""
        version = head.get("VersionId")
        if self.version_id is not None and version not in (None, UNVERSIONED):
            return version == self.version_id
        # an unversioned object: its ETag (a directory store's change tag) and size
        tag = head.get("ETag", head.get("ChangeTag"))
        return tag == self.etag and int(head.get("ContentLength", self.size)) == self.size

    def as_document(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "version_id": self.version_id,
            "stored_at": self.stored_at,
        }


@dataclass(frozen=True)
class Upload:
    """What one run of a batch takes: every object its folder held when the run was planned."""

    batch_id: str
    run: str
    listed_at: str
    files: tuple[UploadedFile, ...]

    def by_key(self) -> dict[str, UploadedFile]:
        return {f.key: f for f in self.files}

    def as_document(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "run": self.run,
            "listed_at": self.listed_at,
            "files": [f.as_document() for f in self.files],
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> Upload:
        return cls(
            batch_id=str(document["batch_id"]),
            run=str(document["run"]),
            listed_at=str(document.get("listed_at", "")),
            files=tuple(
                UploadedFile(
                    key=str(f["key"]),
                    size=int(f["size"]),
                    etag=str(f["etag"]),
                    version_id=f.get("version_id"),
                    stored_at=str(f.get("stored_at", "")),
                )
                for f in document["files"]
            ),
        )


def current_versions(pages: Iterable[Mapping[str, Any]]) -> list[UploadedFile]:
    """The current object of each key in ListObjectVersions answers (``pages``), in key order.

    A key whose latest entry is a delete marker has no current object; folder placeholders
    (keys ending in "/") are not files.
    """
    found = []
    for page in pages:
        for version in page.get("Versions", []):
            if not version.get("IsLatest") or version["Key"].endswith("/"):
                continue
            version_id = version.get("VersionId")
            stored = version.get("LastModified")
            found.append(
                UploadedFile(
                    key=version["Key"],
                    size=int(version["Size"]),
                    etag=str(version.get("ETag", "")),
                    version_id=None if version_id in (None, UNVERSIONED) else version_id,
                    stored_at=_iso(stored) if isinstance(stored, datetime) else "",
                )
            )
    return sorted(found, key=lambda f: f.key.encode("utf-8"))


def hidden_newer_version(
    versions: Iterable[Mapping[str, Any]],
    delete_markers: Iterable[Mapping[str, Any]],
    file: UploadedFile,
) -> str | None:
    """After ``file``'s key was deleted (a delete marker put on top): the version id of an
    upload that landed between the look and the delete, hidden by that marker, or None.

    ``versions`` and ``delete_markers`` are one key's entries of ListObjectVersions, which lists
    a key's versions newest first.
    """
    if file.version_id is None or not any(m.get("IsLatest") for m in delete_markers):
        return None  # unversioned, or something current is there: nothing is hidden
    ids = [v.get("VersionId") for v in versions]
    if file.version_id not in ids:
        return None
    newer = ids[: ids.index(file.version_id)]
    return newer[0] if newer else None


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
