"""Data custody, replay and S3 faults, through the deployed state machine in moto's interpreter
(run-local's emulation: LocalAws + the local ECS stand-in) and `ecom-pipeline replay`.

Faults are injected into the jobs' boto3 clients with botocore event handlers
(``provide-client-params``), so the failing call is a real client call that raises ClientError;
the Lambda, moto's interpreter and the test's own client are not affected."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from unittest import mock

import pytest
from botocore.exceptions import ClientError
from test_exactly_once import _corrections
from test_run_local import _expected, _exported

from ecom_pipeline.adapters import storage
from ecom_pipeline.adapters.lock import Lease
from ecom_pipeline.adapters.storage import BucketStore
from ecom_pipeline.cli import main
from ecom_pipeline.core.contract import LOCK_CURATED_STORE, ORDER_TABLE, ExitCode
from ecom_pipeline.core.layout import (
    ARCHIVE,
    CURATED,
    INCOMING,
    REASON_FILE,
    REJECTED,
    archive_prefix,
    incoming_prefix,
    kpi_result_key,
    reason_history_key,
    result_key,
    run_upload_key,
)
from ecom_pipeline.core.planning import batch_label, replay_execution_name
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.local import ecs_stand_in
from ecom_pipeline.local.ecs_stand_in import InProcessRunner, enable_interpreter, local_ecs
from ecom_pipeline.local.emulator import LocalAws
from ecom_pipeline.local.generator import generate
from ecom_pipeline.local.run_local import LocalPipeline, run_batch, s3_event
from ecom_pipeline.pipeline.asl import KPI_MAX_ATTEMPTS
from ecom_pipeline.tasks import kpi_job
from ecom_pipeline.tasks.custody import CustodyError, move_objects


class Killed(BaseException):
    """The container's process was killed: nothing in it runs on (not an Exception)."""


class PipelineRunner(InProcessRunner):
    """Runs the jobs for real; can kill the next KPI job mid-write (exit 137, as SIGKILL), hold
    tasks at a closed gate (keeping their execution RUNNING) until they are killed, and make
    validations crash: ``validation_crash_code`` reports that code after the job ran (as a
    container dying after writing its result), ``validation_dies_with`` without running it;
    ``kpi_exits_next_with`` makes the next KPI job exit with that code without running."""

    def __init__(self) -> None:
        super().__init__(main)
        self.kill_next_kpi_job = False
        self.validation_crash_code: int | None = None
        self.validation_dies_with: int | None = None
        self.kpi_exits_next_with: int | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.held = threading.Event()  # a task is waiting at the closed gate

    def __call__(self, command, environment):
        if not self.gate.is_set():  # held at the gate, then dies without running (SIGKILL)
            self.held.set()
            self.gate.wait(timeout=120)
            return 137
        if command[0] == "validate" and self.validation_dies_with is not None:
            self.calls.append((list(command), dict(environment)))
            return self.validation_dies_with
        if command[0] == "validate" and self.validation_crash_code is not None:
            super().__call__(command, environment)
            return self.validation_crash_code
        if command[0] == "compute-kpis" and self.kpi_exits_next_with is not None:
            self.calls.append((list(command), dict(environment)))
            code, self.kpi_exits_next_with = self.kpi_exits_next_with, None
            return code
        if command[0] != "compute-kpis" or not self.kill_next_kpi_job:
            return super().__call__(command, environment)
        self.kill_next_kpi_job = False
        real = kpi_job.write_items

        def write_until_killed(frame, table, aws, **kwargs):
            if table == ORDER_TABLE:  # the category table is written, the order table not
                raise Killed
            return real(frame, table, aws, **kwargs)

        with mock.patch.object(kpi_job, "write_items", write_until_killed):
            try:
                return super().__call__(command, environment)
            except Killed:
                return 137


@contextlib.contextmanager
def pipeline(
    tmp_path: Path, *, lock_wait_s: float | None = None, runner: PipelineRunner | None = None
) -> Iterator[tuple[LocalPipeline, PipelineRunner]]:
    runner = runner or PipelineRunner()
    with LocalAws() as aws:
        config = Settings(
            bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=tmp_path / "w"
        )
        if lock_wait_s is not None:
            config = dataclasses.replace(config, lock_wait_s=lock_wait_s)
        with local_ecs(runner, emr_environment=config.to_env()):
            enable_interpreter("127.0.0.1", aws.port)
            # the deployed default waits 15 s before each KPI retry; the retries here need not
            yield LocalPipeline(aws, config, kpi_retry_wait_s=1), runner


def _run(p: LocalPipeline, folder: Path, batch_id: str, tmp_path: Path):
    return run_batch(p, folder, batch_id, lambda _: None, tmp_path / "log.jsonl")


def _replay(p: LocalPipeline, batch_id: str, *extra: str) -> int:
    return main(
        [
            "replay",
            batch_id,
            "--state-machine-arn",
            p.state_machine_arn,
            "--bucket",
            p.aws.bucket,
            "--endpoint-url",
            p.aws.endpoint_url,
            *extra,
        ]
    )


def _runs(p: LocalPipeline, *extra: str) -> int:
    """`ecom-pipeline runs` against the emulator, as JSON."""
    return main(
        [
            "runs",
            "--state-machine-arn",
            p.state_machine_arn,
            "--endpoint-url",
            p.aws.endpoint_url,
            "--format",
            "json",
            *extra,
        ]
    )


def _objects(p: LocalPipeline, prefix: str) -> dict[str, bytes]:
    """relative key -> bytes of everything under prefix."""
    s3 = p.aws.client("s3")
    return {
        o.key[len(prefix) :]: s3.get_object(Bucket=p.aws.bucket, Key=o.key)["Body"].read()
        for o in p.aws.store.list(prefix)
    }


def _source_files(folder: Path) -> dict[str, bytes]:
    """What the batch folder uploads: its files by relative path, and the marker."""
    files = {
        f.relative_to(folder).as_posix(): f.read_bytes() for f in folder.rglob("*") if f.is_file()
    }
    return files | {"_SUCCESS": b""}


def _notice(p: LocalPipeline, batch_id: str) -> dict:
    notices = [
        n["message"]
        for n in p.aws.notifications()
        if isinstance(n["message"], dict) and n["message"].get("batch_id") == batch_id
    ]
    return notices[-1]


def _published(p: LocalPipeline, execution_arn: str) -> tuple[str, dict]:
    """The subject and the message (its body per protocol) the execution published to SNS."""
    history = p.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)
    (scheduled,) = [
        e["taskScheduledEventDetails"]
        for e in history["events"]
        if e.get("taskScheduledEventDetails", {}).get("resourceType") == "sns"
    ]
    parameters = json.loads(scheduled["parameters"])
    assert parameters["MessageStructure"] == "json"
    return parameters["Subject"], json.loads(parameters["Message"])


def _tables(p: LocalPipeline, tmp_path: Path) -> tuple[dict, dict]:
    out = tmp_path / "tables"
    p.aws.export_tables(out)
    return _exported(out)


@contextlib.contextmanager
def s3_fault(operation: str, when: Callable[[dict], bool]) -> Iterator[list[str]]:
    """Every S3 client the jobs' stores create (``make_client`` in adapters.storage) fails
    ``operation`` with an InternalError when ``when(params)``; yields the keys that failed."""
    failed: list[str] = []
    real = storage.make_client

    def fail(params, **_):
        if when(params):
            failed.append(params.get("Key", ""))
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected S3 fault"}}, operation
            )

    def client(settings, service, **kwargs):
        made = real(settings, service, **kwargs)
        if service == "s3":
            made.meta.events.register(f"provide-client-params.s3.{operation}", fail)
        return made

    with mock.patch.object(storage, "make_client", client):
        yield failed


def _small_batch(tmp_path: Path, name: str, seed: int, *, orders_only: bool = False) -> Path:
    folder = tmp_path / name
    generate(folder, 20, seed=seed, days=3, products=10)
    if orders_only:
        for path in [folder / "products.csv", *folder.glob("order_items/*")]:
            path.unlink()
        (folder / "order_items").rmdir()
    return folder


def test_killed_kpi_job_fails_notified_keeps_the_batch_and_replay_converges(
    spark, tmp_path, capsys
):
    source = _small_batch(tmp_path, "source", seed=6)
    with pipeline(tmp_path) as (p, runner):
        runner.kill_next_kpi_job = True
        outcome = _run(p, source, "k1", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Kpi.Failed")
        notice = outcome.notice
        assert notice["stage"] == "kpis"
        assert '"ExitCode":137' in notice["error"]["Cause"]
        assert notice["custody"] == {
            "moved": False,
            "files": f"s3://{p.aws.bucket}/{INCOMING}/k1/",
            "replay": "ecom-pipeline replay k1",
        }
        # the batch is intact where it arrived, and nothing presents itself as final
        assert _objects(p, f"{INCOMING}/k1/") == _source_files(source)
        assert not _objects(p, f"{ARCHIVE}/k1/")
        assert not _objects(p, f"{REJECTED}/k1/")
        assert not p.aws.store.list(kpi_result_key("k1"))
        assert not p.aws.store.list(f"{CURATED}/")
        categories, orders = _tables(p, tmp_path)
        assert categories  # killed between the two tables
        assert not orders

        assert _replay(p, "k1", "--wait") == ExitCode.OK
        notice = _notice(p, "k1")
        assert notice["status"] == "SUCCEEDED"
        assert notice["execution_id"].endswith(":" + replay_execution_name("k1", 1))
        assert _tables(p, tmp_path) == _expected([source])
        assert _objects(p, f"{ARCHIVE}/k1/") == _source_files(source)
        assert not _objects(p, f"{INCOMING}/k1/")
        # done: a further replay is refused and starts nothing
        assert _replay(p, "k1") == ExitCode.USAGE
        executions = p.sfn.list_executions(stateMachineArn=p.state_machine_arn)["executions"]
        assert sorted(e["name"] for e in executions) == ["k1", "k1-replay-1"]
        # the batch's history, read back from the executions: the replay first, then the kill
        capsys.readouterr()
        assert _runs(p, "--batch", "k1") == ExitCode.OK
        replayed, killed = json.loads(capsys.readouterr().out)
        assert (replayed["run"], replayed["status"], replayed["stage"]) == (
            "k1-replay-1",
            "SUCCEEDED",
            "",
        )
        assert replayed["next"] == f"s3://{p.aws.bucket}/{ARCHIVE}/k1/"
        assert (killed["run"], killed["status"], killed["stage"]) == ("k1", "FAILED", "kpis")
        assert killed["started"]
        assert killed["seconds"] > 0
        assert killed["next"] == "fix the cause, then: ecom-pipeline replay k1"


def test_kpi_task_exiting_4_is_retried_to_its_limit_and_an_unreadable_cause_still_notifies(
    spark, tmp_path
):
    """Retry exhaustion in a run: another run holds the curated-store lock throughout, so each
    KPI attempt gives up waiting and exits 4; the state machine retries it KPI_MAX_ATTEMPTS
    times in all, then fails with the notice, keeping the batch for replay. A failed task whose
    Cause is not the stopped task's JSON goes to the notice too (no retry, no silent end)."""
    source = _small_batch(tmp_path, "source", seed=8)
    with pipeline(tmp_path, lock_wait_s=0.5) as (p, runner):
        holder = Lease(
            p.aws.client("dynamodb"),
            LOCK_CURATED_STORE,
            holder={"batch_id": "other", "execution_id": "x:other"},
            lease_s=600,
        )
        assert holder.try_acquire()
        try:
            outcome = _run(p, source, "r1", tmp_path)
            kpi_runs = [c for c, _ in runner.calls if c[0] == "compute-kpis"]
            assert len(kpi_runs) == KPI_MAX_ATTEMPTS
            assert (outcome.status, outcome.error) == ("FAILED", "Kpi.Failed")
            assert outcome.notice["stage"] == "kpis"
            assert f'"ExitCode":{ExitCode.DEPENDENCY}' in outcome.notice["error"]["Cause"]
            assert outcome.notice["custody"]["moved"] is False
            assert _objects(p, f"{INCOMING}/r1/") == _source_files(source)
            assert _tables(p, tmp_path) == ({}, {})

            # the same exit 4, but the Cause does not show the exit code: one attempt, notified
            runner.calls.clear()
            unreadable = "CannotStartContainerError: ResourceInitializationError"
            with mock.patch.object(ecs_stand_in, "stopped_task_cause", return_value=unreadable):
                outcome = _run(p, source, "r2", tmp_path)
            assert len([c for c, _ in runner.calls if c[0] == "compute-kpis"]) == 1
            assert (outcome.status, outcome.error) == ("FAILED", "Kpi.Failed")
            assert outcome.notice["error"]["Cause"] == unreadable
            assert _objects(p, f"{INCOMING}/r2/") == _source_files(source)
        finally:
            holder.release()


def test_rejected_batch_fixed_in_place_is_replayed_and_refusals_change_nothing(
    spark, tmp_path, capsys
):
    source = _small_batch(tmp_path, "source", seed=3, orders_only=True)
    (path,) = source.glob("orders/*.csv")
    good = path.read_bytes()
    lines = good.decode().splitlines(keepends=True)
    lines[1] = lines[1].replace(lines[1].split(",")[2], "lost-in-space", 1)
    path.write_bytes("".join(lines).encode())
    relative = path.relative_to(source).as_posix()
    with pipeline(tmp_path) as (p, runner):
        assert _replay(p, "nope") == ExitCode.USAGE
        assert "unknown batch nope" in capsys.readouterr().err

        outcome = _run(p, source, "r1", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Validation.Failed")
        assert outcome.notice["custody"]["moved"] is True
        rejected = _objects(p, f"{REJECTED}/r1/")
        assert rejected.pop(REASON_FILE)
        assert rejected == _source_files(source)

        # the user fixes the file where it was rejected, then replays
        s3 = p.aws.client("s3")
        s3.put_object(Bucket=p.aws.bucket, Key=f"{REJECTED}/r1/{relative}", Body=good)
        assert _replay(p, "r1", "--wait") == ExitCode.OK
        printed = capsys.readouterr().out
        assert "earlier execution r1: FAILED" in printed
        assert "moved 2 files back to incoming/r1/" in printed
        assert "started r1-replay-1" in printed
        assert _notice(p, "r1")["status"] == "SUCCEEDED"
        fixed = source.parent / "fixed"
        (fixed / "orders").mkdir(parents=True)
        (fixed / relative).write_bytes(good)
        assert _objects(p, f"{ARCHIVE}/r1/") == _source_files(fixed)
        assert not _objects(p, f"{REJECTED}/r1/")
        history = p.aws.store.get_json(reason_history_key("r1", "r1"))
        assert history["stage"] == "validation"
        assert history["datasets"]["orders"]["status"] == "FAILED"
        assert _tables(p, tmp_path) == _expected([fixed])

        # a run still RUNNING: replay refuses and starts nothing
        runner.gate.clear()
        marker = p.upload(fixed, "r2")
        (name,) = p.deliver(s3_event(p.aws.bucket, marker, 0))["started"]
        try:
            assert runner.held.wait(timeout=120), "the validation task never reached the gate"
            assert _replay(p, "r2") == ExitCode.USAGE
            assert "still RUNNING (r2)" in capsys.readouterr().err
        finally:
            runner.gate.set()
        assert p.wait(p.execution_arn(name))["status"] == "FAILED"
        names = {
            e["name"]
            for e in p.sfn.list_executions(stateMachineArn=p.state_machine_arn)["executions"]
        }
        assert names == {"r1", "r1-replay-1", "r2"}


def _broken_rule_batch(tmp_path: Path, name: str) -> Path:
    """Orders only, one of them with a status no rule allows."""
    source = _small_batch(tmp_path, name, seed=9, orders_only=True)
    (path,) = source.glob("orders/*.csv")
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    lines[1] = lines[1].replace(lines[1].split(",")[2], "lost-in-space", 1)
    path.write_text("".join(lines), encoding="utf-8")
    return source


def _kept_for_replay(p: LocalPipeline, batch_id: str) -> dict:
    return {
        "moved": False,
        "files": f"s3://{p.aws.bucket}/{INCOMING}/{batch_id}/",
        "replay": f"ecom-pipeline replay {batch_id}",
    }


def test_a_crashed_validation_or_a_stale_result_keeps_the_batch_in_incoming(spark, tmp_path):
    """Only a rule failure of this execution (its result says so, the job exited 3) rejects a
    batch: a job that crashed after writing a failing result, or one that exited 3 leaving an
    earlier run's result, is an error and the files stay in incoming/ for a replay."""
    source = _broken_rule_batch(tmp_path, "source")
    with pipeline(tmp_path) as (p, runner):
        runner.validation_crash_code = ExitCode.UNEXPECTED
        outcome = _run(p, source, "c1", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Validation.Failed")
        statuses = {v["dataset"]: v["status"] for v in outcome.notice["validations"]}
        assert statuses["orders"] == "ERROR"
        assert outcome.notice["custody"] == _kept_for_replay(p, "c1")
        assert outcome.verdict == "failed"
        # the job had written this execution's result, rules broken: the exit code decided
        result = p.aws.store.get_json(result_key("c1", "orders"))
        assert result["success"] is False
        assert result["execution_id"] == outcome.execution_arn
        assert _objects(p, f"{INCOMING}/c1/") == _source_files(source)
        assert not _objects(p, f"{REJECTED}/c1/")
        # people read what happened and what to do; programs get the notice as JSON
        subject, message = _published(p, outcome.execution_arn)
        assert subject == "ecom-pipeline FAILED: batch c1"
        assert json.loads(message["sqs"]) == outcome.notice
        text = message["email"]
        assert message["default"] == text
        assert text.startswith("Batch c1 FAILED at validation: a job failed, no rule was found")
        assert "products: not in the batch; orders: ERROR States.TaskFailed" in text
        assert f"The files stay in s3://{p.aws.bucket}/{INCOMING}/c1/." in text
        assert text.endswith("then run: ecom-pipeline replay c1")

        # an earlier run's result, rules broken, and a job exiting 3 without writing its own
        runner.validation_crash_code = None
        runner.validation_dies_with = ExitCode.DATA_REJECTED
        p.aws.store.put_json(result_key("c2", "orders"), result)
        outcome = _run(p, source, "c2", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Validation.Failed")
        statuses = {v["dataset"]: v["status"] for v in outcome.notice["validations"]}
        assert statuses["orders"] == "ERROR"
        assert outcome.notice["custody"] == _kept_for_replay(p, "c2")
        assert _objects(p, f"{INCOMING}/c2/") == _source_files(source)
        assert not _objects(p, f"{REJECTED}/c2/")

        # the same batch, its job exiting 3 after writing its own result: rejected
        runner.validation_dies_with = None
        outcome = _run(p, source, "c3", tmp_path)
        assert outcome.verdict == "rejected"
        assert outcome.notice["custody"]["moved"] is True
        _, message = _published(p, outcome.execution_arn)
        text = message["email"]
        assert text.startswith("Batch c3 FAILED at validation: rules broken. ")
        assert "orders: FAILED, 1 of " in text
        assert "rules broken, the first: " in text
        assert "lost-in-space" in text
        assert f"The files are in s3://{p.aws.bucket}/{REJECTED}/c3/ with _reason.json" in text
        assert text.endswith("Next: fix the data there, then run: ecom-pipeline replay c3")
        assert _objects(p, f"{REJECTED}/c3/").keys() == _source_files(source).keys() | {REASON_FILE}


def test_a_refused_batch_with_a_long_non_ascii_id_is_notified_under_a_bounded_subject(tmp_path):
    """SNS takes at most 100 ASCII characters of subject: the plan's batch label is what the
    subject carries, the text and the JSON carry the whole id."""
    batch_id = "Lieferung-März-" + "x" * 90
    source = tmp_path / "source"
    source.mkdir()
    (source / "orders.csv").write_text("order_id\n1\n", encoding="utf-8")
    (source / "notes.txt").write_text("not a dataset\n", encoding="utf-8")
    with pipeline(tmp_path) as (p, _):
        outcome = _run(p, source, batch_id, tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Intake.Rejected")
        subject, message = _published(p, outcome.execution_arn)
        assert subject == f"ecom-pipeline FAILED: batch {batch_label(batch_id)}"
        assert len(subject) <= 100
        assert subject.isascii()
        notice = json.loads(message["sqs"])
        assert notice["batch_id"] == batch_id
        assert (notice["unrecognised_count"], notice["unrecognised_files"]) == (
            1,
            [f"{INCOMING}/{batch_id}/notes.txt"],
        )
        assert message["email"].startswith(
            f"Batch {batch_id} FAILED at intake: unrecognised files: 1, the first "
            f"{INCOMING}/{batch_id}/notes.txt; expected products*.csv"
        )
        assert outcome.verdict == "rejected"
        rejected = _objects(p, f"{REJECTED}/{batch_id}/")
        assert rejected.pop(REASON_FILE)
        assert rejected == _source_files(source)


def test_s3_read_error_fails_notified_and_keeps_every_file(spark, tmp_path):
    source = _small_batch(tmp_path, "source", seed=4, orders_only=True)
    with pipeline(tmp_path) as (p, _):
        with s3_fault("GetObject", lambda params: params["Key"].startswith(INCOMING)) as failed:
            outcome = _run(p, source, "s1", tmp_path)
        assert failed
        assert (outcome.status, outcome.error) == ("FAILED", "Validation.Failed")
        notice = outcome.notice
        assert {v["dataset"]: v["status"] for v in notice["validations"]}["orders"] == "ERROR"
        assert notice["custody"] == {
            "moved": False,
            "files": f"s3://{p.aws.bucket}/{INCOMING}/s1/",
            "replay": "ecom-pipeline replay s1",
        }
        assert _objects(p, f"{INCOMING}/s1/") == _source_files(source)
        assert _tables(p, tmp_path) == ({}, {})


def test_s3_error_while_archiving_fails_notified_loses_nothing_and_replay_finishes(spark, tmp_path):
    source = _small_batch(tmp_path, "source", seed=5, orders_only=True)
    copies = []

    def after_the_first_copy(params):
        copies.append(params["Key"])
        return len(copies) > 1

    with pipeline(tmp_path) as (p, _):
        with s3_fault("CopyObject", after_the_first_copy) as failed:
            outcome = _run(p, source, "a1", tmp_path)
        assert len(failed) == 3  # the move task ran three times (two retries)
        assert (outcome.status, outcome.error) == ("FAILED", "Archive.Failed")
        notice = outcome.notice
        assert notice["stage"] == "archive"
        assert notice["kpis_written"] is True
        custody = notice["custody"]
        assert custody["error"]["Error"] == "States.TaskFailed"
        assert (
            '"Command":["move-batch","--batch-id","a1","--to","archive"]'
            in (custody["error"]["Cause"])
        )
        assert custody["moved"] is False
        assert custody["files"] == f"s3://{p.aws.bucket}/{INCOMING}/a1/"
        assert custody["replay"] == "ecom-pipeline replay a1"
        assert custody["partly_moved_to"] == f"s3://{p.aws.bucket}/{ARCHIVE}/a1/"
        incoming, archived = _objects(p, f"{INCOMING}/a1/"), _objects(p, f"{ARCHIVE}/a1/")
        assert len(archived) == 1  # the first file moved before S3 failed
        assert not set(incoming) & set(archived)
        assert incoming | archived == _source_files(source)  # every byte, in one place or other
        expected = _expected([source])
        assert _tables(p, tmp_path) == expected  # the KPIs were written

        subject, message = _published(p, outcome.execution_arn)
        assert subject == "ecom-pipeline FAILED: batch a1"
        assert message["email"].startswith(
            "Batch a1 FAILED at archive: the KPIs are written, but moving its files to "
        )
        assert message["email"].endswith("finishes the move")

        assert _replay(p, "a1", "--wait") == ExitCode.OK
        assert _notice(p, "a1")["status"] == "SUCCEEDED"
        subject, message = _published(p, p.execution_arn(replay_execution_name("a1", 1)))
        assert subject == "ecom-pipeline SUCCEEDED: batch a1"
        assert message["email"].startswith("Batch a1 SUCCEEDED: KPIs written, dates recomputed: ")
        assert (
            "products: not in the batch; orders: passed; order_items: not in the batch."
            in message["email"]
        )
        assert message["email"].endswith(f"{ARCHIVE}/a1/. Nothing to do.")
        assert _objects(p, f"{ARCHIVE}/a1/") == _source_files(source)
        assert not _objects(p, f"{INCOMING}/a1/")
        assert _tables(p, tmp_path) == expected  # the re-run changed no item


def test_a_move_verifies_each_copy_and_resumes_after_a_failed_delete(tmp_path):
    with LocalAws() as aws:
        store = BucketStore(aws.bucket, aws.settings)
        s3 = aws.client("s3")
        for name, body in (("a.csv", b"1,2\n"), ("b.csv", b"3,4\n" * 1000)):
            s3.put_object(Bucket=aws.bucket, Key=f"{INCOMING}/m/{name}", Body=body)

        # a copy that does not hold the original's bytes: the original stays
        def corrupt_copy(source_key, dest_key, *, version_id=None):
            s3.put_object(Bucket=aws.bucket, Key=dest_key, Body=b"3,4\n" * 999 + b"3,5\n")

        with mock.patch.object(store, "copy", corrupt_copy), pytest.raises(CustodyError):
            move_objects(store, f"{INCOMING}/m/", f"{ARCHIVE}/m/", exclude=("a.csv",))
        assert len(_keys(store, f"{INCOMING}/m/")) == 2

        # S3 fails the delete after a verified copy: the file is in both places, then a re-run
        # finishes the move
        failing_delete = mock.patch.object(
            store, "delete_object", side_effect=ClientError({}, "DeleteObject")
        )
        with failing_delete, pytest.raises(ClientError):
            move_objects(store, f"{INCOMING}/m/", f"{ARCHIVE}/m/")
        assert _keys(store, f"{INCOMING}/m/") == ["a.csv", "b.csv"]
        report = move_objects(store, f"{INCOMING}/m/", f"{ARCHIVE}/m/")
        assert report.moved == [f"{ARCHIVE}/m/a.csv", f"{ARCHIVE}/m/b.csv"]
        assert _keys(store, f"{INCOMING}/m/") == []
        archived = {k: store.get_bytes(f"{ARCHIVE}/m/{k}") for k in _keys(store, f"{ARCHIVE}/m/")}
        assert archived == {"a.csv": b"1,2\n", "b.csv": b"3,4\n" * 1000}


def _keys(store: BucketStore, prefix: str) -> list[str]:
    return sorted(o.key[len(prefix) :] for o in store.list(prefix))


def test_replay_names_are_deterministic_distinct_and_valid():
    from ecom_pipeline.core.planning import EXECUTION_NAME_PATTERN, execution_name

    assert replay_execution_name("2025-04-07", 1) == "2025-04-07-replay-1"
    assert replay_execution_name("2025-04-07", 12) == "2025-04-07-replay-12"
    long_a, long_b = "a" * 79 + "x", "a" * 79 + "y"
    names = {replay_execution_name(b, n) for b in (long_a, long_b, "b c/..") for n in (1, 2)}
    assert len(names) == 6
    assert all(EXECUTION_NAME_PATTERN.match(name) for name in names)
    assert replay_execution_name(long_a, 1) == replay_execution_name(long_a, 1)
    assert execution_name(long_a) not in names
    with pytest.raises(ValueError):
        replay_execution_name("b", 0)


# --- an upload into a batch while it runs ----------------------------------------------------


class UploadingRunner(PipelineRunner):
    """Runs the jobs for real; once, when the task ``when`` names is about to run ("before
    validate") or has run ("after move-batch"), the producer uploads ``files`` and the marker
    into the batch again."""

    def __init__(self, batch_id: str, files: dict[str, bytes], when: str) -> None:
        super().__init__()
        self.batch_id, self.files, self.when = batch_id, files, when
        self.p: LocalPipeline | None = None
        self.uploaded_at: datetime | None = None

    def _upload(self) -> None:
        s3, bucket = self.p.aws.client("s3"), self.p.aws.bucket
        for relative, body in self.files.items():
            s3.put_object(Bucket=bucket, Key=incoming_prefix(self.batch_id) + relative, Body=body)
        marker = incoming_prefix(self.batch_id) + "_SUCCESS"
        self.uploaded_at = datetime.now().astimezone()
        s3.put_object(Bucket=bucket, Key=marker, Body=b"")

    def __call__(self, command, environment):
        task = command[0]
        if self.uploaded_at is None and self.when == f"before {task}":
            self._upload()
        code = super().__call__(command, environment)
        if self.uploaded_at is None and self.when == f"after {task}":
            self._upload()
        return code


@pytest.mark.parametrize(
    "when",
    [
        "before validate",  # the run's custody announces the upload again once it has settled
        "after move-batch",  # custody has looked already: intake starts it after the run
    ],
)
def test_an_upload_during_a_run_is_kept_and_runs_next_with_its_own_rows(spark, tmp_path, when):
    source = _small_batch(tmp_path, "source", seed=8)
    corrected = _corrections(source, tmp_path / "c", price="1.00", status="Cancelled", shift_days=1)
    # the producer replaces the batch's orders file with corrected orders while the batch runs
    (old_orders,) = source.glob("orders/*.csv")
    new_orders = (corrected / "orders.csv").read_bytes()
    reupload = tmp_path / "reupload"
    (reupload / "orders").mkdir(parents=True)
    (reupload / "orders" / old_orders.name).write_bytes(new_orders)
    runner = UploadingRunner("u1", {f"orders/{old_orders.name}": new_orders}, when)
    with pipeline(tmp_path, runner=runner) as (p, _):
        runner.p = p
        outcome = _run(p, source, "u1", tmp_path)
        nxt = replay_execution_name("u1", 1)
        statuses = {
            name: p.sfn.describe_execution(executionArn=p.execution_arn(name))["status"]
            for name in ("u1", nxt)
        }
        assert statuses == {"u1": "SUCCEEDED", nxt: "SUCCEEDED"}
        assert outcome.status == "SUCCEEDED"
        # each run applied exactly its own upload: the first the whole batch as it was, the
        # next the corrected orders alone; together, the rows of both in upload order
        assert _tables(p, tmp_path) == _expected([source, reupload])
        orders_key = incoming_prefix("u1") + f"orders/{old_orders.name}"
        first, second = (
            {
                f["key"]: f["version_id"]
                for f in p.aws.store.get_json(run_upload_key("u1", run))["files"]
            }
            for run in ("u1", nxt)
        )
        assert set(second) == {orders_key, incoming_prefix("u1") + "_SUCCESS"}
        assert first[orders_key] != second[orders_key]
        # nothing waits in incoming/; archive/ holds the corrected file, and the first one as
        # its earlier version: no version left without a copy
        assert p.aws.store.list(incoming_prefix("u1")) == []
        archived = archive_prefix("u1") + f"orders/{old_orders.name}"
        s3 = p.aws.client("s3")
        versions = s3.list_object_versions(Bucket=p.aws.bucket, Prefix=archived)["Versions"]
        bodies = [
            s3.get_object(Bucket=p.aws.bucket, Key=archived, VersionId=v["VersionId"])["Body"]
            for v in versions
        ]
        bodies = [body.read() for body in bodies]
        assert bodies[0] == new_orders
        assert old_orders.read_bytes() in bodies
        # the next run's rows carry the time of their upload, not of its announcement by
        # custody (seconds later, after the KPI job)
        plan = json.loads(p.sfn.describe_execution(executionArn=p.execution_arn(nxt))["input"])
        received = datetime.fromisoformat(plan["received_at"].replace("Z", "+00:00"))
        assert abs(received - runner.uploaded_at) < timedelta(seconds=1)
        notices = [n["message"] for n in p.aws.notifications()]
        assert [n["status"] for n in notices] == ["SUCCEEDED", "SUCCEEDED"]


def test_a_replay_brings_back_only_what_the_failed_run_archived(spark, tmp_path):
    """k3 succeeds, k4 corrects its items, a fixed orders file uploaded into k3 again crashes in
    the KPI job: the replay runs that file alone. Bringing k3's first files back from archive/
    too would apply them again over k4's corrections."""
    source = _small_batch(tmp_path, "source", seed=9)
    corrections = _corrections(
        source, tmp_path / "c", price="2.22", status="Cancelled", shift_days=1
    )
    fix = tmp_path / "fix"
    (fix / "orders").mkdir(parents=True)
    (old_orders,) = source.glob("orders/*.csv")
    lines = old_orders.read_text().splitlines(keepends=True)
    (fix / "orders" / old_orders.name).write_text("".join(lines[:1] + lines[1::2]))
    with pipeline(tmp_path) as (p, runner):
        assert _run(p, source, "k3", tmp_path).status == "SUCCEEDED"
        assert _run(p, corrections, "k4", tmp_path).status == "SUCCEEDED"
        runner.kill_next_kpi_job = True
        assert _run(p, fix, "k3", tmp_path).status == "FAILED"
        assert _replay(p, "k3", "--wait") == ExitCode.OK
        assert _tables(p, tmp_path) == _expected([source, corrections, fix])
        # k3's first files stayed in archive/ all along; nothing waits in incoming/
        assert set(_objects(p, f"{ARCHIVE}/k3/")) == set(_source_files(source))
        assert _objects(p, f"{INCOMING}/k3/") == {}
