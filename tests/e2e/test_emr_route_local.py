"""The EMR Serverless route, run end to end locally: the routing threshold is lowered so a small
batch takes it, and run-local's stand-in runs each job run's command line (what
``spark_driver.py`` runs on EMR) with the driver's environment from the run's Spark settings.

Success, a rule failure, an intake refusal and crashes end as on the ECS route: archived;
rejected with ``_reason.json``; kept in incoming/ for a replay, which runs on the same route. A
KPI job run exiting 4 is retried there as the ECS task is."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from unittest import mock

import pytest
from test_custody import (
    _broken_rule_batch,
    _kept_for_replay,
    _notice,
    _objects,
    _replay,
    _run,
    _small_batch,
    _source_files,
    _tables,
    pipeline,
)
from test_run_local import _expected

from ecom_pipeline.core import tiers
from ecom_pipeline.core.contract import ExitCode
from ecom_pipeline.core.layout import ARCHIVE, INCOMING, REASON_FILE, REJECTED
from ecom_pipeline.core.planning import replay_execution_name
from ecom_pipeline.local.run_local import LocalPipeline


@pytest.fixture
def emr_route() -> Iterator[None]:
    """Every batch above one byte takes the EMR route."""
    smallest = dataclasses.replace(tiers.TIERS[0], max_input_bytes=1)
    with mock.patch.object(tiers, "TIERS", (smallest,)):
        yield


def _entered(p: LocalPipeline, execution_arn: str) -> list[str]:
    """The states the execution entered, in order."""
    events = p.sfn.get_execution_history(executionArn=execution_arn, maxResults=1000)["events"]
    return [
        e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e
    ]


def test_the_emr_route_runs_locally_success_rule_failure_and_crashes(spark, tmp_path, emr_route):
    source = _small_batch(tmp_path, "source", seed=12)
    broken = _broken_rule_batch(tmp_path, "broken")
    with pipeline(tmp_path) as (p, runner):
        # the first KPI job run exits 4 (a dependency failed): retried on EMR, then it succeeds
        runner.kpi_exits_next_with = ExitCode.DEPENDENCY
        outcome = _run(p, source, "e1", tmp_path)
        assert outcome.status == "SUCCEEDED", outcome.notice
        entered = _entered(p, outcome.execution_arn)
        assert entered.count("ValidateOnEmr") == 3
        assert entered.count("ComputeKpisOnEmr") == 2
        assert entered.count("WaitBeforeKpiRetry") == 1
        assert "Validate" not in entered
        assert "ComputeKpis" not in entered
        # each job run was told its execution, as the ECS tasks are, and staged through the
        # local work dir (local Spark has no EMRFS for direct I/O)
        jobs = [(c, env) for c, env in runner.calls if c[0] in ("validate", "compute-kpis")]
        assert len(jobs) == 5
        for command, environment in jobs:
            assert environment["EXECUTION_ID"] == outcome.execution_arn, command
            assert environment["PIPELINE_BUCKET"] == p.aws.bucket
            assert "PIPELINE_DATA_ROOT" not in environment
        assert _tables(p, tmp_path) == _expected([source])
        assert _objects(p, f"{ARCHIVE}/e1/") == _source_files(source)

        # a broken rule: rejected with the reason, the KPIs untouched
        outcome = _run(p, broken, "e2", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Validation.Failed")
        assert outcome.verdict == "rejected"
        statuses = {v["dataset"]: v["status"] for v in outcome.notice["validations"]}
        assert statuses == {"products": "SKIPPED", "orders": "FAILED", "order_items": "SKIPPED"}
        rejected = _objects(p, f"{REJECTED}/e2/")
        assert rejected.pop(REASON_FILE)
        assert rejected == _source_files(broken)

        # the same batch, its job run crashing after it wrote its result: kept for replay
        runner.validation_crash_code = ExitCode.UNEXPECTED
        outcome = _run(p, broken, "e3", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Validation.Failed")
        statuses = {v["dataset"]: v["status"] for v in outcome.notice["validations"]}
        assert statuses["orders"] == "ERROR"
        assert outcome.notice["custody"] == _kept_for_replay(p, "e3")
        assert _objects(p, f"{INCOMING}/e3/") == _source_files(broken)

        # a KPI job run killed: no exit code to retry on, kept for replay
        runner.validation_crash_code = None
        runner.kill_next_kpi_job = True
        outcome = _run(p, source, "e4", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Kpi.Failed")
        assert outcome.notice["error"]["Error"] == "States.TaskFailed"
        assert "ExitCode: 137." in outcome.notice["error"]["Cause"]
        assert outcome.notice["custody"] == _kept_for_replay(p, "e4")
        assert _objects(p, f"{INCOMING}/e4/") == _source_files(source)
        assert _entered(p, outcome.execution_arn).count("ComputeKpisOnEmr") == 1

        # ... and its replay runs on the EMR route too, and converges
        assert _replay(p, "e4", "--wait") == ExitCode.OK
        replayed = _notice(p, "e4")
        assert replayed["status"] == "SUCCEEDED", replayed
        assert replayed["execution_id"].endswith(":" + replay_execution_name("e4", 1))
        entered = _entered(p, replayed["execution_id"])
        assert "ComputeKpisOnEmr" in entered
        assert "ComputeKpis" not in entered
        assert _tables(p, tmp_path) == _expected([source])  # e1's rows again, nothing more
        assert _objects(p, f"{ARCHIVE}/e4/") == _source_files(source)
        assert not _objects(p, f"{INCOMING}/e4/")

        # a file that fits no dataset: refused at intake before any job run, whatever the route
        (broken / "notes.txt").write_text("not a dataset\n", encoding="utf-8")

        def spark_jobs() -> int:
            return sum(c[0] in ("validate", "compute-kpis") for c, _ in runner.calls)

        jobs_before = spark_jobs()
        outcome = _run(p, broken, "e5", tmp_path)
        assert (outcome.status, outcome.error) == ("FAILED", "Intake.Rejected")
        assert outcome.notice["unrecognised_files"] == [f"{INCOMING}/e5/notes.txt"]
        assert spark_jobs() == jobs_before  # only the move ran
        rejected = _objects(p, f"{REJECTED}/e5/")
        assert rejected.pop(REASON_FILE)
        assert rejected == _source_files(broken)
