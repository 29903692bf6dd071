"""Direct I/O: the FileStore has the BucketStore's operations and results, Spark and the store
see the same objects at the store's URIs, the data root selects the mode, and hostile files
read in place end with the same specific error as when staged through local disk."""

from __future__ import annotations

import gzip
import itertools
import time
from datetime import date, datetime
from pathlib import Path

import pytest

from ecom_pipeline.adapters.curated_store import (
    new_rows_location,
    read_curated_at,
    recover_curated,
    replace_partitions_in_place,
)
from ecom_pipeline.adapters.storage import BucketStore, FileStore, Store, data_keys, open_store
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import DATASETS, ExitCode
from ecom_pipeline.core.layout import (
    CURATED_GENERATIONS,
    curated_journal_key,
    incoming_prefix,
    result_key,
)
from ecom_pipeline.core.settings import ConfigError, Settings
from ecom_pipeline.core.upload import Upload
from ecom_pipeline.local.emulator import LocalAws
from ecom_pipeline.tasks.kpi_job import KpiPlan, curated_parts_of, write_new_state
from ecom_pipeline.tasks.validation import BatchFiles, UploadReplacedError
from ecom_pipeline.transforms.curated import Tables
from ecom_pipeline.transforms.ingest import (
    HEAD_BYTES,
    SOURCE_FILE,
    DataFile,
    invalid_utf8_lines,
    read_raw,
    typed_schema,
    unreadable_reasons,
)

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


def _no_fence() -> None:
    """The lease check the job passes: these tests hold no lease."""


ORDERS_HEADER = (
    b"order_id,user_id,status,created_at,returned_at,shipped_at,delivered_at,num_of_item\n"
)
ORDER_ROW = b"1,10,delivered,2025-03-01T10:00:00,,,,1\n"


def _exercise(store: Store, tmp_path: Path) -> list:
    """Every store operation, each result recorded (the two stores must record the same)."""
    source = tmp_path / "src"
    (source / "sub").mkdir(parents=True)
    (source / "a.csv").write_bytes(b"x,y\n1,2\n")
    (source / "sub" / "b.json").write_bytes(b'{"k": 1}')
    (source / "_SUCCESS").write_bytes(b"")
    (source / ".a.csv.crc").write_bytes(b"crc")
    seen: list = []
    seen.append(("upload_dir", store.upload_dir(source, "runs/r1/")))
    seen.append(("upload_dir all", store.upload_dir(source, "runs/r10", skip_hidden=False)))
    seen.append(("list folder", [(o.key, o.size) for o in store.list("runs/r1/")]))
    seen.append(("list prefix", [(o.key, o.size) for o in store.list("runs/r1")]))
    seen.append(("list nothing", store.list("nothing/")))
    seen.append(("data_keys", data_keys(store, "runs/r10")))
    seen.append(("head size", store.head("runs/r1/a.csv")["ContentLength"]))
    seen.append(("head missing", store.head("runs/r1/missing.csv")))
    seen.append(("get_range", store.get_range("runs/r1/a.csv", 2, 4)))
    seen.append(("get_range past end", store.get_range("runs/r1/a.csv", 6, 100)))
    store.put_bytes("empty.csv", b"", content_type="text/csv")
    seen.append(("get_range empty", store.get_range("empty.csv", 0, HEAD_BYTES)))
    store.put_json("results/b/orders.json", {"ok": True, "name": "日本"})
    seen.append(("get_json", store.get_json("results/b/orders.json")))
    seen.append(("get_json_or_none", store.get_json_or_none("results/b/none.json")))
    store.copy("runs/r1/a.csv", "archive/b/a.csv")
    seen.append(("copy", store.get_bytes("archive/b/a.csv")))
    seen.append(("sha256", store.sha256("archive/b/a.csv") == store.sha256("runs/r1/a.csv")))
    store.delete(["runs/r1/a.csv", "runs/r1/sub/b.json", "runs/r1/never-there"])
    store.delete_object("archive/b/a.csv")
    seen.append(("after delete", [o.key for o in store.list("runs/")]))
    seen.append(("archive gone", store.list("archive/")))
    dest = store.download_prefix("runs/r10", tmp_path / "down")
    seen.append(
        ("download_prefix", sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")))
    )
    (path,) = store.download(["results/b/orders.json"], tmp_path / "one")
    seen.append(("download", path.relative_to(tmp_path / "one").as_posix(), path.read_bytes()))
    return seen


def test_file_store_gives_the_bucket_stores_results(tmp_path):
    with LocalAws() as aws:
        in_bucket = _exercise(BucketStore(aws.bucket, aws.settings), tmp_path / "bucket")
    in_folder = _exercise(FileStore((tmp_path / "root").as_uri()), tmp_path / "folder")
    assert in_folder == in_bucket
    assert ("list prefix", [("runs/r1/_SUCCESS", 0), ("runs/r1/a.csv", 8)]) not in in_bucket
    assert in_bucket[5] == ("data_keys", ["runs/r10/a.csv", "runs/r10/sub/b.json"])
    # S3 has no empty folders: the folder store leaves none behind either
    assert not (tmp_path / "root" / "archive").exists()


def test_store_uris_name_the_same_objects_for_spark(spark, tmp_path):
    store = FileStore(f"file://{tmp_path}/root")
    assert store.uri("incoming/b/orders.csv") == f"file://{tmp_path}/root/incoming/b/orders.csv"
    assert BucketStore("bkt", Settings(bucket="bkt").aws).uri("a/b") == "s3://bkt/a/b"
    store.put_bytes("incoming/b/orders.csv", ORDERS_HEADER + ORDER_ROW, content_type="text/csv")
    lines = spark.read.text(store.uri("incoming/b/orders.csv")).collect()
    assert [r.value for r in lines] == [ORDERS_HEADER.decode().strip(), ORDER_ROW.decode().strip()]
    # rows read in place name their file by its key, as rows of a downloaded copy do
    (row,) = read_raw(spark, [_remote(store, "incoming/b/orders.csv")]).collect()
    assert row[SOURCE_FILE] == "incoming/b/orders.csv"
    assert row["order_id"] == "1"
    spark.range(5).write.mode("overwrite").parquet(store.uri("staging/b/x/"))
    keys = data_keys(store, "staging/b/x/")
    assert keys
    assert all(k.endswith(".parquet") for k in keys)
    assert any(o.key.endswith("_SUCCESS") for o in store.list("staging/b/x/"))
    assert sorted(r.id for r in spark.read.parquet(store.uri("staging/b/x/")).collect()) == [
        0,
        1,
        2,
        3,
        4,
    ]


def test_the_data_root_selects_direct_io():
    staged = Settings.from_env({"PIPELINE_BUCKET": "b"})
    assert not staged.direct_io
    assert isinstance(open_store(staged), BucketStore)
    on_s3 = Settings.from_env({"PIPELINE_DATA_ROOT": "s3://b"})
    assert on_s3.direct_io
    assert on_s3.bucket == "b"
    assert isinstance(open_store(on_s3), BucketStore)
    assert open_store(on_s3).uri("k") == "s3://b/k"
    shared = Settings.from_env({"PIPELINE_DATA_ROOT": "file:///mnt/shared/ecom"})
    assert shared.direct_io
    assert open_store(shared).uri("k") == "file:///mnt/shared/ecom/k"
    assert shared.to_env()["PIPELINE_DATA_ROOT"] == "file:///mnt/shared/ecom"
    for bad in ("s3a://b", "s3://b/sub", "file://relative/x", "/plain/path"):
        with pytest.raises(ConfigError):
            Settings.from_env({"PIPELINE_DATA_ROOT": bad})
    with pytest.raises(ConfigError, match="another bucket"):
        Settings.from_env({"PIPELINE_BUCKET": "a", "PIPELINE_DATA_ROOT": "s3://b"})
    with pytest.raises(ConfigError, match="no bucket"):
        Settings.from_env({})


def _remote(store: FileStore, key: str) -> DataFile:
    size = store.head(key)["ContentLength"]
    return DataFile(
        None, key, uri=store.uri(key), size=size, head=store.get_range(key, 0, HEAD_BYTES)
    )


def test_invalid_utf8_past_the_first_bytes_is_found_by_spark(spark, tmp_path):
    """The same line and byte as the driver's streaming check, from a Spark scan of lines."""
    store = FileStore(tmp_path.as_uri())
    big = ORDERS_HEADER + ORDER_ROW * 60_000 + b"9,9,\xc3\x28,2025-03-01T10:00:00,,,,1\n"
    store.put_bytes("in/big.csv", big + ORDER_ROW * 10, content_type="text/csv")
    store.put_bytes("in/clean.csv", ORDERS_HEADER + ORDER_ROW * 40_000, content_type="text/csv")
    (tmp_path / "local.csv").write_bytes(big)
    files = [_remote(store, "in/clean.csv"), _remote(store, "in/big.csv")]
    assert len(files[1].first_bytes) == HEAD_BYTES < files[1].file_size
    assert invalid_utf8_lines(spark, files) == {1: (60_002, 0xC3)}
    # split into many parts (read by different tasks, in no particular order): the same line
    spark.conf.set("spark.sql.files.maxPartitionBytes", str(256 * 1024))
    try:
        assert spark.read.text(files[1].location).rdd.getNumPartitions() > 5
        assert invalid_utf8_lines(spark, files) == {1: (60_002, 0xC3)}
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    local = DataFile(tmp_path / "local.csv", "local.csv")
    assert unreadable_reasons(spark, [*files, local]) == [
        None,
        "not UTF-8 text: invalid byte 0xc3 on line 60002",
        "not UTF-8 text: invalid byte 0xc3 on line 60002",
    ]


def _validation_result(command: list[str], store: Store) -> dict:
    """The validate command's result JSON for batch h1 (Data Docs links aside: they name the
    store)."""
    assert main(command) == ExitCode.DATA_REJECTED
    document = store.get_json(result_key("h1", "orders"))
    return {k: v for k, v in document.items() if k != "data_docs"}


VALIDATE = ["validate", "--batch-id", "h1", "--dataset", "orders"]
HOSTILE = {
    "gzip": gzip.compress(ORDERS_HEADER + ORDER_ROW),
    "header_only": (CORPUS / "header_only" / "orders.csv").read_bytes(),
    "zero_byte": b"",
    "invalid_utf8_late": ORDERS_HEADER + ORDER_ROW * 30_000 + b"2,20,\xff,x,,,,1\n",
}
# case -> (rule, its error) of the first failure, as the corpus (tests/corpus) expects them
FIRST_FAILURE = {
    "gzip": (
        "CSV text file",
        "not a CSV file: gzip-compressed data (upload the uncompressed .csv)",
    ),
    "header_only": ("at least one row", "the file has a header only"),
    "zero_byte": ("CSV text file", "the file is empty (0 bytes)"),
    "invalid_utf8_late": ("CSV text file", "not UTF-8 text: invalid byte 0xff on line 30002"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_read_in_place_fail_as_when_staged(case, spark, tmp_path):
    body = HOSTILE[case]
    key = incoming_prefix("h1") + "orders.csv"
    with LocalAws() as aws:
        aws.client("s3").put_object(Bucket=aws.bucket, Key=key, Body=body)
        flags = ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url]
        staged = _validation_result(
            [*VALIDATE, *flags, "--work-dir", str(tmp_path / "staged-work")], aws.store
        )
    store = FileStore(tmp_path / "root")
    store.put_bytes(key, body, content_type="text/csv")
    work = tmp_path / "direct-work"
    direct = _validation_result(
        [*VALIDATE, "--data-root", store.uri(""), "--work-dir", str(work)], store
    )
    assert direct == staged
    assert not staged["success"]
    first = staged["failed_rules"][0]
    assert (first["rule"], first["error"]) == FIRST_FAILURE[case]
    assert first["file"] == key
    # nothing of the data was staged to the driver's disk
    assert not [p for p in work.rglob("*") if p.suffix in (".csv", ".parquet")]


def _orders(spark, rows: list[tuple[int, str, date]]):
    """Curated orders (typed, with order_date) of (order_id, status, order_date)."""
    schema = typed_schema(DATASETS["orders"], with_order_date=True)
    return spark.createDataFrame(
        [
            (oid, 1, status, datetime(d.year, d.month, d.day, 9), None, None, None, 1, d)
            for oid, status, d in rows
        ],
        schema,
    )


def _plan(spark, store: FileStore, batch_id: str, orders, dates: list[date]) -> KpiPlan:
    """A run's plan with its new curated orders written where the job writes them (the
    batch's generation folder), as compute_kpis does before the KPIs."""
    items = spark.createDataFrame([], typed_schema(DATASETS["order_items"], with_order_date=True))
    products = spark.createDataFrame([], typed_schema(DATASETS["products"]))
    where = new_rows_location(store, batch_id, None)
    new_state = write_new_state(Tables(products, orders, items), dates, False, where=where)
    unused = spark.range(0)
    return KpiPlan(
        dates=dates,
        category_items=unused,
        category_deletes=unused,
        order_items=unused,
        order_deletes=unused,
        new_state=new_state,
        products_changed=False,
    )


def _curated_orders(spark, store: FileStore) -> set[tuple[int, str, str]]:
    frame = read_curated_at(spark, store, DATASETS["orders"])
    return {(r.order_id, r.status, r.order_date.isoformat()) for r in frame.collect()}


def test_curated_partitions_replaced_in_place_under_the_journal(spark, tmp_path, monkeypatch):
    """Spark writes the new partitions to the run's generation folder, the journal copies them
    into place; a run that dies before the commit is rolled back, one that dies after it is
    rolled forward, and no generation, journal or side file is ever taken for data."""
    store = FileStore(tmp_path / "root")
    d1, d2 = date(2025, 3, 1), date(2025, 3, 2)
    b1 = _orders(spark, [(1, "shipped", d1), (2, "shipped", d1)])
    replace_partitions_in_place(
        store, curated_parts_of(_plan(spark, store, "b1", b1, [d1])), "b1", _no_fence
    )
    assert _curated_orders(spark, store) == {
        (1, "shipped", "2025-03-01"),
        (2, "shipped", "2025-03-01"),
    }
    # the next batch rewrites d1 (order 2 left it) and adds d2
    after_b2 = {(1, "returned", "2025-03-01"), (3, "shipped", "2025-03-02")}
    b2 = _orders(spark, [(1, "returned", d1), (3, "shipped", d2)])
    replace_partitions_in_place(
        store, curated_parts_of(_plan(spark, store, "b2", b2, [d1, d2])), "b2", _no_fence
    )
    assert _curated_orders(spark, store) == after_b2
    keys = [o.key for o in store.list("curated/")]
    assert all(k.startswith("curated/orders/order_date=") for k in data_keys(store, "curated/"))
    assert not [k for k in keys if k.startswith(CURATED_GENERATIONS) or "_journal" in k]

    # dies copying (journal "uploading"): the next run rolls back to b2's store
    real_copy = store.copy
    calls = itertools.count()  # copies run on several threads: next() hands out each number once

    def dies_after_one_copy(source: str, dest: str) -> None:
        if next(calls) >= 1:
            raise OSError("killed")
        real_copy(source, dest)

    monkeypatch.setattr(store, "copy", dies_after_one_copy)
    b3 = _orders(spark, [(4, "shipped", d2), (5, "shipped", d2)])
    spark.conf.set("spark.sql.files.maxRecordsPerFile", "1")  # two files: the copy dies between
    try:
        b3_plan = _plan(spark, store, "b3", b3, [d2])
    finally:
        spark.conf.unset("spark.sql.files.maxRecordsPerFile")
    with pytest.raises(OSError, match="killed"):
        replace_partitions_in_place(store, curated_parts_of(b3_plan), "b3", _no_fence)
    assert store.get_json(curated_journal_key())["state"] == "uploading"
    # b2's file of d2 and the one copy of b3's that landed
    assert len(data_keys(store, "curated/orders/order_date=2025-03-02/")) == 2
    assert recover_curated(store) == "rolled back"
    assert _curated_orders(spark, store) == after_b2
    monkeypatch.undo()

    # dies deleting the replaced objects (journal "committed"): rolled forward to b4's store
    real_delete = store.delete

    def dies_deleting_stale(keys: list[str]) -> None:
        if any(k.startswith("curated/orders/") for k in keys):
            raise OSError("killed")
        real_delete(keys)

    monkeypatch.setattr(store, "delete", dies_deleting_stale)
    b4 = _orders(spark, [(6, "shipped", d2)])
    with pytest.raises(OSError, match="killed"):
        replace_partitions_in_place(
            store, curated_parts_of(_plan(spark, store, "b4", b4, [d2])), "b4", _no_fence
        )
    monkeypatch.undo()
    assert store.get_json(curated_journal_key())["state"] == "committed"
    assert recover_curated(store) == "rolled forward"
    assert _curated_orders(spark, store) == {
        (1, "returned", "2025-03-01"),
        (6, "shipped", "2025-03-02"),
    }
    assert store.list(CURATED_GENERATIONS) == []
    assert store.get_json_or_none(curated_journal_key()) is None


def test_a_file_replaced_after_the_run_was_planned_gets_no_verdict_in_direct_io(tmp_path):
    """Spark reads objects in place in direct I/O mode, so it cannot read the run's own version
    of a file replaced meanwhile: validation refuses to read it instead of judging other data."""
    store = FileStore(tmp_path.as_uri())
    store.put_bytes("incoming/b/orders.csv", b"a,b\n1,2\n", content_type="text/csv")
    store.put_bytes("incoming/b/_SUCCESS", b"", content_type="text/plain")
    upload = Upload("b", "b", "", tuple(store.current_versions("incoming/b/")))
    batch = BatchFiles(store, "b", tmp_path / "work", direct=True, upload=upload)
    assert [f.name for f in batch.files("orders")] == ["incoming/b/orders.csv"]
    batch.check_unchanged(batch.read_keys)  # nothing replaced yet
    time.sleep(0.01)
    store.put_bytes("incoming/b/orders.csv", b"a,b\n1,3\n", content_type="text/csv")
    with pytest.raises(UploadReplacedError, match=r"incoming/b/orders\.csv replaced"):
        batch.check_unchanged(batch.read_keys)
    with pytest.raises(UploadReplacedError, match="ecom-pipeline replay b"):
        BatchFiles(store, "b", tmp_path / "work", direct=True, upload=upload).files("orders")
