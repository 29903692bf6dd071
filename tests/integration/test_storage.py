"""The bucket store against moto: a partial batch delete is never taken for a whole one."""

from __future__ import annotations

import pytest

from ecom_pipeline.adapters.curated_store import recover_curated
from ecom_pipeline.adapters.storage import BucketStore, StoreError
from ecom_pipeline.core.layout import curated_journal_key
from ecom_pipeline.local.emulator import LocalAws


class RefusingDeletes:
    """An S3 client whose DeleteObjects refuses some keys, as S3 does (HTTP 200, ``Errors``)."""

    def __init__(self, real, refused: set[str]) -> None:
        self.real = real
        self.refused = refused

    def delete_objects(self, Bucket, Delete):  # noqa: N803 - boto3's parameter names
        objects = Delete["Objects"]
        allowed = [o for o in objects if o["Key"] not in self.refused]
        if allowed:
            self.real.delete_objects(Bucket=Bucket, Delete={"Objects": allowed, "Quiet": True})
        return {
            "Errors": [
                {"Key": o["Key"], "Code": "AccessDenied", "Message": "Access Denied"}
                for o in objects
                if o["Key"] in self.refused
            ]
        }

    def __getattr__(self, name):
        return getattr(self.real, name)


@pytest.fixture(scope="module")
def aws():
    with LocalAws() as emulator:
        yield emulator


def _keys(store: BucketStore, prefix: str) -> list[str]:
    return [o.key for o in store.list(prefix)]


def test_a_key_the_bucket_refuses_to_delete_is_raised_with_its_reason(aws):
    s3 = aws.client("s3")
    store = BucketStore(aws.bucket, aws.settings, s3=RefusingDeletes(s3, {"t1/b.csv"}))
    for key in ("t1/a.csv", "t1/b.csv", "t1/c.csv"):
        store.put_bytes(key, b"x", content_type="text/csv")
    with pytest.raises(StoreError, match=r"1 of 3 objects not deleted: t1/b.csv \(AccessDenied"):
        store.delete(["t1/a.csv", "t1/b.csv", "t1/c.csv"])
    assert _keys(store, "t1/") == ["t1/b.csv"]  # the others went, and nothing claims b did


def test_a_partial_delete_leaves_the_curated_journal_so_the_next_run_finishes_it(aws):
    s3 = aws.client("s3")
    plain = BucketStore(aws.bucket, aws.settings)
    stale = "curated/order_items/order_date=2025-03-08/part-old.parquet"
    new = "curated/order_items/order_date=2025-03-08/part-new.parquet"
    for key in (stale, new):
        plain.put_bytes(key, b"rows", content_type="application/octet-stream")
    # a run committed its replacement, then died before removing the rows it replaced
    plain.put_json(
        curated_journal_key(),
        {"batch_id": "b1", "state": "committed", "new": [new], "stale": [stale]},
    )
    refusing = BucketStore(aws.bucket, aws.settings, s3=RefusingDeletes(s3, {stale}))
    with pytest.raises(StoreError):
        recover_curated(refusing)
    # the old rows are still there, and so is the journal that says they must go
    assert plain.get_json_or_none(curated_journal_key()) is not None
    assert recover_curated(plain) == "rolled forward"
    assert _keys(plain, "curated/order_items/") == [new]
    assert plain.get_json_or_none(curated_journal_key()) is None
