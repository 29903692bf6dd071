"""Exactly once, whatever is replayed, and no lost update when two batches run at once.

Every case runs through the entry points (the Lambda handler and the state machine of
run-local, or the `ecom-pipeline compute-kpis` command) against LocalAws, and compares whole
exported tables with the independent reference (tests/reference_kpis.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from botocore.exceptions import EndpointConnectionError
from test_run_local import _expected, _exported, _read_rows, _write_rows

from ecom_pipeline.adapters.dynamo import DynamoWriteError
from ecom_pipeline.adapters.lock import Lease, LockTimeoutError
from ecom_pipeline.adapters.storage import BucketStore
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import (
    CATEGORY_TABLE,
    DATASETS,
    LOCK_CURATED_STORE,
    LOCK_TABLE,
    ExitCode,
)
from ecom_pipeline.core.layout import (
    curated_journal_key,
    curated_prefix,
    incoming_prefix,
    kpi_result_key,
)
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.local.ecs_stand_in import InProcessRunner, enable_interpreter, local_ecs
from ecom_pipeline.local.emulator import LocalAws
from ecom_pipeline.local.generator import generate
from ecom_pipeline.local.run_local import LocalPipeline, s3_event
from ecom_pipeline.tasks import kpi_job

# --- helpers ------------------------------------------------------------------------------------


def _tables(aws: LocalAws, out: Path) -> tuple[dict, dict]:
    """Both KPI tables, whole, as run-local exports them."""
    out.mkdir(parents=True, exist_ok=True)
    aws.export_tables(out)
    return _exported(out)


def _curated_ids(spark, aws: LocalAws, local: Path) -> dict[str, tuple[int, int]]:
    """(rows, distinct ids) of each curated dataset: a partition kept twice shows as rows > ids."""
    counts = {}
    for name, dataset in DATASETS.items():
        folder = aws.store.download_prefix(curated_prefix(name), local / name)
        frame = spark.read.parquet(str(folder))
        counts[name] = (frame.count(), frame.select(dataset.key).distinct().count())
    return counts


def _corrections(source: Path, target: Path, *, price: str, status: str, shift_days: int) -> Path:
    """A later batch re-sending rows with the same ids and other values: every third order
    gets another status and moves ``shift_days`` later, every second item another price."""
    orders = _read_rows(source, "orders/*.csv") or _read_rows(source, "orders.csv")
    items = _read_rows(source, "order_items/*.csv") or _read_rows(source, "order_items.csv")
    moved = [
        row
        | {
            "status": status,
            "created_at": (
                datetime.fromisoformat(row["created_at"]) + timedelta(days=shift_days)
            ).isoformat(),
            # the later timestamps would now precede created_at: not known yet
            "shipped_at": "",
            "delivered_at": "",
            "returned_at": "",
        }
        for row in orders[::3]
    ]
    _write_rows(target / "orders.csv", "orders", moved)
    _write_rows(
        target / "order_items.csv",
        "order_items",
        [row | {"sale_price": price} for row in items[::2]],
    )
    return target


class FaultyRunner(InProcessRunner):
    """Runs every task for real; the KPI task's first run meets ``fault`` (a context manager
    that makes one AWS call fail half-way through the run). Later runs are left alone."""

    def __init__(self) -> None:
        super().__init__(main)
        self.fault = None
        self.kpi_exit_codes: list[int] = []

    def __call__(self, command, environment):
        if command[0] != "compute-kpis":
            return super().__call__(command, environment)
        fault, self.fault = self.fault, None
        if fault is None:
            code = super().__call__(command, environment)
        else:
            with fault:
                code = super().__call__(command, environment)
        self.kpi_exit_codes.append(code)
        return code


def _fail_upload_after(count: int):
    """S3 fails (connection lost) after ``count`` curated objects were uploaded."""
    original = BucketStore.upload_file
    uploads = []

    def upload_file(self, path, key):
        if key.startswith("curated/"):
            if len(uploads) >= count:
                raise EndpointConnectionError(endpoint_url="https://s3.amazonaws.com")
            uploads.append(key)
        return original(self, path, key)

    return mock.patch.object(BucketStore, "upload_file", upload_file)


def _fail_first_stale_delete():
    """The process dies right after the curated replacement committed: the delete of the
    replaced objects fails."""
    original = BucketStore.delete

    def delete(self, keys):
        if keys and all(k.startswith("curated/") and k != curated_journal_key() for k in keys):
            raise EndpointConnectionError(endpoint_url="https://s3.amazonaws.com")
        return original(self, keys)

    return mock.patch.object(BucketStore, "delete", delete)


# --- replays, corrections, crashes and Step Functions retries -----------------------------------


def test_replays_change_nothing_and_corrections_and_crashed_runs_converge(spark, tmp_path):
    source = tmp_path / "a"
    generate(source, 30, seed=41, days=4, products=12)
    c = _corrections(source, tmp_path / "c", price="12.34", status="returned", shift_days=1)
    d = _corrections(c, tmp_path / "d", price="5.00", status="Cancelled", shift_days=2)
    runner = FaultyRunner()
    with LocalAws() as aws, local_ecs(runner):
        enable_interpreter("127.0.0.1", aws.port)
        config = Settings(
            bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=tmp_path / "w"
        )
        # the KPI retries below need not wait the deployed 15 s (the plan carries the wait)
        pipeline = LocalPipeline(aws, config, kpi_retry_wait_s=1)

        def run(folder: Path, batch_id: str) -> str:
            marker = pipeline.upload(folder, batch_id)
            started = pipeline.deliver(s3_event(aws.bucket, marker, 0))["started"]
            assert started, f"batch {batch_id} did not start"
            return pipeline.wait(pipeline.execution_arn(started[0]))["status"]

        def rerun_by_hand(batch_id: str, name: str) -> str:
            """A new execution of the batch's plan, as an operator starts it."""
            plan = pipeline.sfn.describe_execution(executionArn=pipeline.execution_arn(batch_id))
            arn = pipeline.sfn.start_execution(
                stateMachineArn=pipeline.state_machine_arn, name=name, input=plan["input"]
            )["executionArn"]
            return pipeline.wait(arn)["status"]

        assert run(source, "a") == "SUCCEEDED"
        once = _tables(aws, tmp_path / "t1")
        assert once == _expected([source])
        result_after_a = aws.store.get_json(kpi_result_key("a"))

        # the same S3 event again: no new execution
        marker = f"{incoming_prefix('a')}_SUCCESS"
        assert pipeline.deliver(s3_event(aws.bucket, marker, 0))["duplicates"] == ["a"]
        # the whole batch uploaded again: it runs as a-replay-1, is recognised as applied and
        # settled into archive/ again; every item identical
        started = pipeline.deliver(s3_event(aws.bucket, pipeline.upload(source, "a"), 0))
        assert started["started"] == ["a-replay-1"]
        assert pipeline.wait(pipeline.execution_arn("a-replay-1"))["status"] == "SUCCEEDED"
        assert aws.store.get_json(kpi_result_key("a")) == result_after_a
        assert aws.store.list(incoming_prefix("a")) == []
        assert _tables(aws, tmp_path / "t2") == once

        # re-run by hand (the files put back in incoming/ first, their marker's event not
        # delivered): validated again, KPIs recognised as applied, every item identical
        pipeline.upload(source, "a")
        assert aws.marker_events()  # lost: the Lambda never hears of this upload
        assert rerun_by_hand("a", "a-rerun") == "SUCCEEDED"
        assert _tables(aws, tmp_path / "t3") == once
        assert aws.store.get_json(kpi_result_key("a")) == result_after_a

        # corrections; the KPI task's first run loses S3 half-way through replacing the curated
        # store (exit 4); Step Functions retries it, the retry rolls the store back and converges
        runner.fault = _fail_upload_after(1)
        assert run(c, "c") == "SUCCEEDED"
        assert runner.kpi_exit_codes[-2:] == [ExitCode.DEPENDENCY, ExitCode.OK]
        corrected = _tables(aws, tmp_path / "t4")
        assert corrected == _expected([source, c])
        assert corrected != once  # the corrections changed KPIs

        # replaying the first batch after the corrections must not bring its old values back
        # (its files were archived after its run: the operator uploads them again first)
        pipeline.upload(source, "a")
        assert aws.marker_events()  # lost as well
        assert rerun_by_hand("a", "a-replayed-late") == "SUCCEEDED"
        assert _tables(aws, tmp_path / "t5") == corrected

        # more corrections; the first KPI run dies right after committing the curated
        # replacement; the retry rolls it forward
        runner.fault = _fail_first_stale_delete()
        assert run(d, "d") == "SUCCEEDED"
        assert runner.kpi_exit_codes[-2:] == [ExitCode.DEPENDENCY, ExitCode.OK]
        assert _tables(aws, tmp_path / "t6") == _expected([source, c, d])
        counts = _curated_ids(spark, aws, tmp_path / "curated")
        assert all(rows == ids for rows, ids in counts.values()), counts
        assert aws.store.list(curated_journal_key()) == []
        notices = [n["message"] for n in aws.notifications()]
        assert [n["status"] for n in notices] == ["SUCCEEDED"] * 6


# --- DynamoDB failing in the middle of the KPI write --------------------------------------------


def _flags(aws: LocalAws, work: Path) -> list[str]:
    return ["--bucket", aws.bucket, "--endpoint-url", aws.endpoint_url, "--work-dir", str(work)]


def _stage(
    aws: LocalAws, folder: Path, batch_id: str, work: Path, execution_id: str | None = None
) -> None:
    """Upload a batch and validate each of its datasets with the container command (as the
    execution ``execution_id`` runs it, whose KPI task then reads what it staged)."""
    aws.store.upload_dir(folder, incoming_prefix(batch_id), skip_hidden=False)
    environ = {"EXECUTION_ID": execution_id} if execution_id else None
    for dataset in DATASETS:
        if any(folder.rglob(f"{dataset}*.csv")):
            flags = _flags(aws, work)
            command = ["validate", "--batch-id", batch_id, "--dataset", dataset, *flags]
            assert main(command, environ=environ) == 0


def test_dynamodb_failing_mid_write_exits_4_naming_table_and_count_and_a_rerun_converges(
    spark, tmp_path, capsys
):
    source = tmp_path / "a"
    generate(source, 20, seed=43, days=3, products=8)
    with LocalAws() as aws:
        _stage(aws, source, "a", tmp_path / "w")
        original = kpi_job.delete_keys

        def delete_keys(df, table, settings, **kwargs):
            # the category and order items are written; the deletes are throttled for good
            raise DynamoWriteError(table, 7, 8)

        with mock.patch.object(kpi_job, "delete_keys", delete_keys):
            code = main(["compute-kpis", "--batch-id", "a", *_flags(aws, tmp_path / "w")])
        assert code == ExitCode.DEPENDENCY
        err = capsys.readouterr().err
        assert f"7 item(s) not written to DynamoDB table '{CATEGORY_TABLE}'" in err
        assert aws.store.list(kpi_result_key("a")) == []  # not reported as done
        assert kpi_job.delete_keys is original
        assert main(["compute-kpis", "--batch-id", "a", *_flags(aws, tmp_path / "w")]) == 0
        assert _tables(aws, tmp_path / "t") == _expected([source])
        # the lock was released after the failure as after the success
        assert "Item" not in aws.client("dynamodb").get_item(
            TableName=LOCK_TABLE, Key={"lock_id": {"S": LOCK_CURATED_STORE}}
        )


# --- no lost update: two KPI runs really at the same time ---------------------------------------


SECRET = "s3cr3t-9f2c41d7-never-logged"


def _job_env(aws: LocalAws, work: Path) -> dict[str, str]:
    config = Settings(bucket=aws.bucket, aws=aws.settings, work_dir=work)
    env = {**os.environ, **config.to_env(), "SPARK_MASTER": "local[1]"}
    return env | {"AWS_SECRET_ACCESS_KEY": SECRET}  # any key works against moto


def _log_lines(text: str) -> list[dict]:
    lines = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # Spark's own stderr
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def test_two_kpi_runs_at_once_are_serialised_and_lose_nothing(spark, tmp_path):
    whole = tmp_path / "whole"
    generate(whole, 40, seed=47, days=3, products=10)
    products = _read_rows(whole, "products.csv")
    orders = _read_rows(whole, "orders/*.csv")
    items = _read_rows(whole, "order_items/*.csv")
    # two batches over the same dates with distinct orders: both need every product
    halves = []
    for number, keep in enumerate((lambda i: i % 2 == 0, lambda i: i % 2 == 1), 1):
        folder = tmp_path / f"half{number}"
        mine = [o for i, o in enumerate(orders) if keep(i)]
        ids = {o["order_id"] for o in mine}
        _write_rows(folder / "products.csv", "products", products)
        _write_rows(folder / "orders.csv", "orders", mine)
        _write_rows(
            folder / "order_items.csv", "order_items", [r for r in items if r["order_id"] in ids]
        )
        halves.append(folder)
    with LocalAws() as aws:
        execution = "arn:aws:states:us-east-1:1:execution:ecom:{}".format
        for number, folder in enumerate(halves, 1):
            batch = f"half{number}"
            _stage(aws, folder, batch, tmp_path / "w", execution_id=execution(batch))
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "ecom_pipeline.cli", "compute-kpis", "--batch-id", batch],
                env=_job_env(aws, tmp_path / f"job-{batch}") | {"EXECUTION_ID": execution(batch)},
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for batch in ("half1", "half2")
        ]
        outputs = [process.communicate(timeout=600) for process in processes]
        for process, (out, err) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, err[-3000:]
            assert SECRET not in out + err  # no credentials in the job's output
        logs = {
            batch: _log_lines(err)
            for batch, (_, err) in zip(("half1", "half2"), outputs, strict=True)
        }
        tables = _tables(aws, tmp_path / "t")
    acquired = {
        batch: next(line for line in lines if line.get("event") == "lock_acquired")
        for batch, lines in logs.items()
    }
    first, second = sorted(acquired, key=lambda b: acquired[b]["time"])
    waits = [line for line in logs[second] if line.get("event") == "lock_wait"]
    assert waits, "the second run did not wait for the first"
    assert waits[0]["held_by_batch"] == first
    assert waits[0]["held_by_execution"].endswith(f":{first}")
    assert acquired[second]["waited_s"] > 0
    assert not any(line.get("event") == "lock_wait" for line in logs[first])
    # the second started only after the first had written everything and let go
    first_curated = next(
        line
        for line in logs[first]
        if line.get("step") == "update curated store" and "duration_s" in line
    )
    first_released = next(line for line in logs[first] if line.get("event") == "lock_released")
    assert first_curated["time"] <= first_released["time"] <= acquired[second]["time"]
    # every line of each job names its batch and execution
    for batch, lines in logs.items():
        assert all(line.get("batch_id") == batch for line in lines), batch
        assert all(line.get("execution_id", "").endswith(f":{batch}") for line in lines)
    # each job's numbers, once, in CloudWatch Embedded Metric Format
    steps = ["wait for lock", "recover curated store", "read", "plan", "write KPIs"]
    steps += ["update curated store", "publish dashboard"]
    for batch, lines in logs.items():
        (emf,) = [line for line in lines if "_aws" in line]
        result = next(line for line in lines if line.get("event") == "kpi_result")
        (directive,) = emf["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "EcomPipeline"
        assert directive["Dimensions"] == [["job"]]
        assert emf["job"] == "kpis"
        units = {metric["Name"]: metric["Unit"] for metric in directive["Metrics"]}
        for name in ("RowsRead", "KpiItemsWritten", "ItemsDeleted", "DatesRecomputed"):
            assert units[name] == "Count", name
        for step in steps:
            assert units["".join(p.title() for p in step.split()) + "Seconds"] == "Seconds"
            assert emf["".join(p.title() for p in step.split()) + "Seconds"] >= 0
        assert units["KpiJobSeconds"] == "Seconds"
        assert emf["KpiJobFailed"] == 0
        assert all(isinstance(emf[name], int | float) for name in units)  # values at top level
        assert emf["RowsRead"] == sum(result["rows_accepted"].values()) > 0
        assert emf["KpiItemsWritten"] == (
            result["category_items_written"] + result["order_items_written"]
        )
        assert emf["KpiItemsWritten"] > 0
        assert emf["ItemsDeleted"] == result["items_deleted"]
        assert emf["batch_id"] == batch
    second_emf = next(line for line in logs[second] if "_aws" in line)
    assert second_emf["WaitForLockSeconds"] >= acquired[second]["waited_s"]
    # equal to one run after the other, and to the reference over all the data
    assert tables == _expected(halves)
    assert tables == _expected([whole])


# (before the lease section: its module-wide emulator would stay open during run-local's own)


def test_run_local_uploads_into_a_batch_again_and_each_upload_applies_only_its_rows(
    spark, tmp_path
):
    """A producer uploads d1, then d2 correcting d1's items and orders, then a fixed orders file
    into d1 again: d1's second run must apply only that file, not d1's first items again
    (which would revert d2's corrections)."""
    first = tmp_path / "d1"
    generate(first, 30, seed=43, days=4, products=12)
    second = _corrections(first, tmp_path / "d2", price="7.77", status="Cancelled", shift_days=1)
    fixed = tmp_path / "d1-fixed"
    _write_rows(fixed / "orders.csv", "orders", _read_rows(first, "orders/*.csv")[1::4])
    out = tmp_path / "out"
    ids = ["--batch-id", "d1", "--batch-id", "d2", "--batch-id", "d1"]
    code = main(["run-local", str(first), str(second), str(fixed), *ids, "--export", str(out)])
    assert code == ExitCode.OK
    categories, orders = _exported(out)
    assert (categories, orders) == _expected([first, second, fixed])
    assert (categories, orders) != _expected([first, second, first])  # what a stale re-apply gives
    notices = [json.loads(line)["message"] for line in (out / "notifications.jsonl").open()]
    assert [(n["status"], n["execution_id"].rsplit(":", 1)[-1]) for n in notices] == [
        ("SUCCEEDED", "d1"),
        ("SUCCEEDED", "d2"),
        ("SUCCEEDED", "d1-replay-1"),
    ]
    # the second upload's own file is what d1's archive holds now; nothing waits in incoming/
    assert (out / "bucket" / "archive" / "d1" / "orders.csv").read_bytes() == (
        fixed / "orders.csv"
    ).read_bytes()
    assert not (out / "bucket" / "incoming" / "d1").exists()


def test_run_local_refuses_batch_ids_that_do_not_fit_the_folders(tmp_path, capsys):
    folders = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for folder in folders:
        generate(folder, 5, seed=1, days=1, products=3)
    out = tmp_path / "out"
    args = ["run-local", *map(str, folders), "--export", str(out)]
    assert main([*args, "--batch-id", "x", "--batch-id", "y"]) == ExitCode.USAGE
    assert "--batch-id given 2 times for 3 folders" in capsys.readouterr().err
    assert main([*args, "--batch-id", "a*b"]) == ExitCode.USAGE
    assert "--batch-id: batch id 'a*b'" in capsys.readouterr().err
    assert not out.exists()


# --- the lease --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lock_aws():
    with LocalAws() as aws:
        yield aws


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _lease(aws: LocalAws, clock: Clock, batch: str, **kwargs) -> Lease:
    return Lease(
        aws.client("dynamodb"),
        f"test-{kwargs.pop('lock', 'l')}",
        holder={"batch_id": batch},
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )


def test_a_live_lease_is_not_taken_and_a_stale_one_is(lock_aws):
    clock = Clock()
    holder = _lease(lock_aws, clock, "b1", lease_s=60, lock="stale")
    assert holder.try_acquire()
    other = _lease(lock_aws, clock, "b2", lease_s=60, lock="stale")
    clock.now += 59
    assert not other.try_acquire()  # live: 1 s left
    assert other.current_holder()["batch_id"] == "b1"
    clock.now += 2
    assert other.try_acquire()  # expired: taken over
    assert other.current_holder()["batch_id"] == "b2"
    # the old holder notices at its next renewal and refuses to write on
    assert not holder.renew()
    with pytest.raises(RuntimeError, match="taken over by batch b2"):
        holder.ensure_held()
    holder.release()  # not ours any more: left alone
    assert other.current_holder()["owner"] == other.owner
    other.release()
    assert other.current_holder() == {}


def test_waiting_backs_off_up_to_the_bound_then_fails_naming_the_holder(lock_aws):
    clock = Clock()
    holder = _lease(lock_aws, clock, "b1", lease_s=3600, lock="wait")
    assert holder.try_acquire()
    waiter = _lease(lock_aws, clock, "b2", wait_s=30, base_delay_s=1, max_delay_s=8, lock="wait")
    waiter.rng = lambda: 1.0  # no jitter: 1, 2, 4, 8, 8, ...
    slept = []
    waiter.sleep = lambda s: (slept.append(s), clock.sleep(s))
    with pytest.raises(LockTimeoutError, match=r"held after 30s by batch b1"):
        waiter.acquire()
    assert slept == [1, 2, 4, 8, 8, 7]  # the last wait stops at the bound
    holder.release()
    waiter.acquire()  # free now: no wait
    assert waiter.waited_s == 0
    waiter.release()


def test_compute_kpis_exits_4_when_the_lock_stays_taken(lock_aws, tmp_path, capsys):
    client = lock_aws.client("dynamodb")
    live = Lease(client, LOCK_CURATED_STORE, holder={"batch_id": "busy", "execution_id": "x:busy"})
    assert live.try_acquire()
    try:
        environ = Settings(
            bucket=lock_aws.bucket, aws=lock_aws.settings, work_dir=tmp_path, lock_wait_s=1
        ).to_env()
        code = main(["compute-kpis", "--batch-id", "late"], environ=environ)
    finally:
        live.release()
    assert code == ExitCode.DEPENDENCY
    err = capsys.readouterr().err
    assert f"lock '{LOCK_CURATED_STORE}' in table '{LOCK_TABLE}' still held after" in err
    assert "by batch busy, execution x:busy" in err
    # the failed run still reports its metrics: failed, after waiting for the lock, nothing read
    (emf,) = [line for line in _log_lines(err) if "_aws" in line]
    assert emf["KpiJobFailed"] == 1
    assert emf["WaitForLockSeconds"] >= 1
    assert (emf["RowsRead"], emf["KpiItemsWritten"], emf["batch_id"]) == (0, 0, "late")


def test_renewal_keeps_the_lease_alive(lock_aws):
    clock = Clock()
    holder = _lease(lock_aws, clock, "b1", lease_s=60, lock="renew")
    assert holder.try_acquire()
    other = _lease(lock_aws, clock, "b2", lease_s=60, lock="renew")
    for _ in range(5):  # 5 x 40 s: long past the first expiry, renewed every 40 s
        clock.now += 40
        assert holder.renew()
        assert not other.try_acquire()
    holder.release()
    assert other.try_acquire()
    other.release()
