"""A run's upload (core/upload.py): which versions a listing makes current, which version a
HeadObject answer is, and which upload a delete would hide."""

from __future__ import annotations

from datetime import UTC, datetime

from ecom_pipeline.core.upload import (
    Upload,
    UploadedFile,
    current_versions,
    hidden_newer_version,
)

T0 = datetime(2026, 12, 3, 10, 0, 0, 123000, tzinfo=UTC)


def _version(key: str, version_id: str, *, latest: bool, size: int = 3) -> dict:
    return {
        "Key": key,
        "VersionId": version_id,
        "IsLatest": latest,
        "Size": size,
        "ETag": f'"{key}-{version_id}"',
        "LastModified": T0,
    }


def test_current_versions_are_the_latest_of_each_key_and_a_deleted_key_has_none():
    pages = [
        {
            "Versions": [
                _version("in/b/orders.csv", "v2", latest=True),
                _version("in/b/orders.csv", "v1", latest=False),
                _version("in/b/gone.csv", "g1", latest=False),  # under a delete marker
                _version("in/b/", "f1", latest=True),  # a console folder, not a file
            ],
            "DeleteMarkers": [{"Key": "in/b/gone.csv", "VersionId": "d1", "IsLatest": True}],
        },
        {"Versions": [_version("in/b/_SUCCESS", "null", latest=True, size=0)]},
    ]
    found = current_versions(pages)
    assert [(f.key, f.version_id, f.size) for f in found] == [
        ("in/b/_SUCCESS", None, 0),  # written while the bucket was not versioned
        ("in/b/orders.csv", "v2", 3),
    ]
    assert found[1].etag == '"in/b/orders.csv-v2"'
    assert found[1].stored_at == "2026-12-03T10:00:00.123+00:00"


def test_a_head_answer_is_the_listed_version_by_id_or_without_versions_by_etag_and_size():
    versioned = UploadedFile("k", 3, '"e1"', "v1")
    assert versioned.is_version_of({"VersionId": "v1", "ETag": '"other"', "ContentLength": 9})
    assert not versioned.is_version_of({"VersionId": "v2", "ETag": '"e1"', "ContentLength": 3})
    plain = UploadedFile("k", 3, '"e1"', None)
    assert plain.is_version_of({"ETag": '"e1"', "ContentLength": 3})
    assert not plain.is_version_of({"ETag": '"e1"', "ContentLength": 4})
    assert not plain.is_version_of({"ETag": '"e2"', "ContentLength": 3})
    # a directory store's change tag stands in for the ETag
    assert UploadedFile("k", 3, "3-17", None).is_version_of(
        {"ChangeTag": "3-17", "ContentLength": 3}
    )


def test_a_delete_hides_an_upload_that_landed_after_the_listed_version():
    mine = UploadedFile("k", 3, '"e1"', "v1")
    marker = [{"Key": "k", "VersionId": "d1", "IsLatest": True}]
    # newest first: v3 and v2 landed between the look and the delete
    versions = [{"VersionId": "v3"}, {"VersionId": "v2"}, {"VersionId": "v1"}, {"VersionId": "v0"}]
    assert hidden_newer_version(versions, marker, mine) == "v3"
    # nothing newer than the moved version: nothing hidden
    assert hidden_newer_version(versions[2:], marker, mine) is None
    # an upload after the delete is current already
    current = [{"Key": "k", "VersionId": "d1", "IsLatest": False}]
    assert hidden_newer_version(versions, current, mine) is None
    # without versions there is nothing to look at
    assert hidden_newer_version(versions, marker, UploadedFile("k", 3, '"e1"', None)) is None


def test_an_upload_document_reads_back_as_written():
    upload = Upload(
        "b1",
        "b1-replay-2",
        "2026-12-03T10:00:01.000+00:00",
        (UploadedFile("incoming/b1/_SUCCESS", 0, '"e"', "v9", "2026-12-03T10:00:00.123+00:00"),),
    )
    assert Upload.from_document(upload.as_document()) == upload
    assert upload.by_key() == {"incoming/b1/_SUCCESS": upload.files[0]}
