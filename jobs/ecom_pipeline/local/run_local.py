"""run-local: the deployed pipeline, run on this machine against emulated AWS.

Everything AWS would run runs here, the same way: each batch folder is uploaded to the emulated
bucket as ``incoming/<batch_id>/`` with its ``_SUCCESS`` marker last; the S3 event for the marker
goes to the Lambda handler (``lambda/trigger.py``); the handler starts an execution of the state
machine in ``stepfunctions/`` in moto's Step Functions interpreter, which runs the Parallel
validation, Retry/Catch, SNS notices and the KPI task. Only ECS is stood in for: each task's
container command runs here with the task definition's environment and the overrides the state
machine sends (see local_sfn.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from ecom_pipeline.core import logs
from ecom_pipeline.core.layout import ARCHIVE, DATA_DOCS, INCOMING, REJECTED, incoming_prefix
from ecom_pipeline.core.planning import KPI_RETRY_WAIT_ENV, KPI_RETRY_WAIT_S
from ecom_pipeline.core.settings import Settings
from ecom_pipeline.core.tiers import TIERS
from ecom_pipeline.lambda_fn import trigger
from ecom_pipeline.local.ecs_stand_in import (
    TaskRunner,
    enable_interpreter,
    local_ecs,
)
from ecom_pipeline.local.emulator import LocalAws
from ecom_pipeline.pipeline.asl import CONTAINER_NAME, substitute
from ecom_pipeline.read.dashboard import DASHBOARD_PREFIX, relink_data_docs

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
STATE_MACHINE_NAME = "ecom-pipeline"
MARKER = "_SUCCESS"
EXECUTION_TIMEOUT_S = 3600
BUCKET_EXPORT = "bucket"  # OUT/bucket/<prefix>/...: the raw files' custody prefixes


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # noqa: T201 - human progress for long runs


@dataclass
class BatchOutcome:
    batch_id: str
    source: Path
    status: str  # SUCCEEDED, FAILED, DUPLICATE, NOT_STARTED
    notice: dict[str, Any] | None = None
    execution_arn: str | None = None
    error: str | None = None

    @property
    def success(self) -> bool:
        return self.status in ("SUCCEEDED", "DUPLICATE")


@dataclass
class RunSummary:
    outcomes: list[BatchOutcome] = field(default_factory=list)
    exported: dict[str, int] = field(default_factory=dict)
    out_dir: Path | None = None

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)


def batch_ids(batch_dirs: Sequence[Path]) -> list[str]:
    """Readable ids from folder names; a repeated name gets -2, -3 ... so ids stay distinct."""
    ids: list[str] = []
    for folder in batch_dirs:
        base = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-.") or "batch"
        candidate, n = base, 1
        while candidate in ids:
            n += 1
            candidate = f"{base}-{n}"
        ids.append(candidate)
    return ids


def s3_event(bucket: str, key: str, size: int) -> dict[str, Any]:
    """The notification S3 sends for a new object (keys URL-encoded, as S3 does)."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds"),
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "s3SchemaVersion": "1.0",
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": quote_plus(key, safe="/"), "size": size},
                },
            }
        ]
    }


@dataclass(frozen=True)
class LambdaContext:
    """What the handler reads of Lambda's context object."""

    function_name: str = "ecom-pipeline-trigger"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:123456789012:function:ecom-pipeline-trigger"
    )


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class LocalPipeline:
    """The emulated deployment: what infra/template.yaml creates, created in moto."""

    def __init__(
        self, aws: LocalAws, config: Settings, *, kpi_retry_wait_s: int = KPI_RETRY_WAIT_S
    ) -> None:
        self.aws = aws
        self.config = config
        self.kpi_retry_wait_s = kpi_retry_wait_s
        ecs = aws.client("ecs")
        self.cluster_arn = ecs.create_cluster(clusterName=STATE_MACHINE_NAME)["cluster"][
            "clusterArn"
        ]
        smallest = TIERS[0]
        self.task_definition_arn = ecs.register_task_definition(
            family=f"{STATE_MACHINE_NAME}-job",
            networkMode="awsvpc",
            requiresCompatibilities=["FARGATE"],
            cpu=str(smallest.cpu),
            memory=str(smallest.memory_mib),
            containerDefinitions=[
                {
                    "name": CONTAINER_NAME,
                    "image": "ecom-pipeline:local",
                    "essential": True,
                    "environment": [
                        {"name": k, "value": v} for k, v in sorted(config.to_env().items())
                    ],
                }
            ],
        )["taskDefinition"]["taskDefinitionArn"]
        template = (
            resources.files("ecom_pipeline.stepfunctions")
            .joinpath("pipeline.asl.json")
            .read_text(encoding="utf-8")
        )
        definition = substitute(
            template,
            {
                "ClusterArn": self.cluster_arn,
                "JobTaskDefinitionArn": self.task_definition_arn,
                "ContainerName": CONTAINER_NAME,
                "SubnetA": "subnet-local-a",
                "SubnetB": "subnet-local-b",
                "SecurityGroupId": "sg-local",
                "NotificationTopicArn": aws.topic_arn,
                "DataBucket": aws.bucket,
                # The EMR route (batches above the largest Fargate tier) cannot run here: moto's
                # interpreter has no emr-serverless .sync integration; local batches are small.
                "EmrApplicationId": "local-emr-application",
                "EmrJobRoleArn": "arn:aws:iam::123456789012:role/ecom-pipeline-emr-job",
                "EmrKpiRoleArn": "arn:aws:iam::123456789012:role/ecom-pipeline-emr-kpi",
                "EmrArtifactsUri": f"s3://{aws.bucket}/emr-artifacts/",
                "EmrLogUri": f"s3://{aws.bucket}/emr-logs/",
                "EmrLogGroup": "/aws/emr-serverless/ecom-pipeline-local",
                "CategoryTable": config.category_table,
                "OrderTable": config.order_table,
                "Region": aws.region,
                "KpiTaskRoleArn": "arn:aws:iam::123456789012:role/ecom-pipeline-kpi-task",
                "CustodyTaskRoleArn": "arn:aws:iam::123456789012:role/ecom-pipeline-custody-task",
            },
        )
        self.sfn = aws.client("stepfunctions")
        self.state_machine_arn = self.sfn.create_state_machine(
            name=STATE_MACHINE_NAME,
            definition=definition,
            roleArn="arn:aws:iam::123456789012:role/ecom-pipeline-states",
        )["stateMachineArn"]

    def upload(self, folder: Path, batch_id: str) -> str:
        """Upload a batch's files, then its marker (last, as producers must); returns its key."""
        if not folder.is_dir():
            raise FileNotFoundError(f"batch folder not found: {folder}")
        self.aws.store.upload_dir(folder, incoming_prefix(batch_id), skip_hidden=False)
        marker = f"{incoming_prefix(batch_id)}{MARKER}"
        self.aws.client("s3").put_object(Bucket=self.aws.bucket, Key=marker, Body=b"")
        return marker

    def deliver(self, event: dict[str, Any], log_file: Path | None = None) -> dict[str, list[str]]:
        """Invoke the Lambda handler with an S3 event, as the bucket notification would."""
        env = {
            "STATE_MACHINE_ARN": self.state_machine_arn,
            "NOTIFY_TOPIC_ARN": self.aws.topic_arn or "",
            "AWS_ENDPOINT_URL": self.aws.endpoint_url or "",
            "AWS_DEFAULT_REGION": self.aws.region,
            "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
            "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
            KPI_RETRY_WAIT_ENV: str(self.kpi_retry_wait_s),
        }
        output = io.StringIO()
        with _environment(env), contextlib.redirect_stdout(output):
            trigger._intake.cache_clear()  # clients must point at this emulator
            try:
                return trigger.handler(event, LambdaContext())
            finally:
                trigger._intake.cache_clear()
                if log_file is not None:
                    with log_file.open("a", encoding="utf-8") as handle:
                        handle.write(output.getvalue())

    def wait(self, execution_arn: str, timeout_s: float = EXECUTION_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            description = self.sfn.describe_execution(executionArn=execution_arn)
            if description["status"] != "RUNNING":
                return description
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_arn} still running after {timeout_s}s")
            time.sleep(0.25)

    def execution_arn(self, name: str) -> str:
        return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"


def run_batch(
    pipeline: LocalPipeline, folder: Path, batch_id: str, progress: Progress, log_file: Path
) -> BatchOutcome:
    marker = pipeline.upload(folder, batch_id)
    progress(f"  uploaded to s3://{pipeline.aws.bucket}/{incoming_prefix(batch_id)}")
    try:
        result = pipeline.deliver(s3_event(pipeline.aws.bucket, marker, 0), log_file)
    except Exception as e:  # the Lambda failed: nothing started (AWS would retry it)
        progress(f"  trigger refused the batch: {e}")
        return BatchOutcome(batch_id, folder, "NOT_STARTED", error=f"{type(e).__name__}: {e}")
    if result["duplicates"]:
        progress("  an execution for this batch exists already: nothing started")
        return BatchOutcome(batch_id, folder, "DUPLICATE")
    if not result["started"]:
        return BatchOutcome(batch_id, folder, "NOT_STARTED", error=f"handler result {result}")
    execution_arn = pipeline.execution_arn(result["started"][0])
    progress(f"  execution {result['started'][0]} running (validate in parallel, then KPIs) ...")
    description = pipeline.wait(execution_arn)
    notices = [
        n["message"]
        for n in pipeline.aws.notifications()
        if isinstance(n["message"], dict) and n["message"].get("batch_id") == batch_id
    ]
    notice = notices[-1] if notices else None
    _report(progress, notice)
    return BatchOutcome(
        batch_id,
        folder,
        description["status"],
        notice=notice,
        execution_arn=execution_arn,
        error=description.get("error"),
    )


def _report(progress: Progress, notice: dict[str, Any] | None) -> None:
    if notice is None:
        progress("  no notice was published")
        return
    for validation in notice.get("validations", []):
        result = validation.get("result") or {}
        progress(
            f"  {validation['dataset']}: {validation['status']}"
            + (f", {result['rows']} rows" if "rows" in result else "")
        )
        for rule in result.get("failed_rules", []):
            progress(f"    {rule['message']}")
    if notice.get("status") == "SUCCEEDED":
        progress(
            f"  KPIs: {len(notice['dates_recomputed'])} dates recomputed from "
            f"{notice['rows_accepted']}"
        )
    elif notice.get("error"):
        progress(f"  error: {json.dumps(notice['error'])[:500]}")
    custody = notice.get("custody") or {}
    if custody:
        where = "moved to" if custody.get("moved") else "kept in"
        progress(f"  files {where} {custody.get('files')}")
        if custody.get("replay"):
            progress(f"  to run it again: {custody['replay']}")


def run_local(
    batch_dirs: Sequence[Path],
    out_dir: Path,
    *,
    runner: TaskRunner,
    progress: Progress = _stderr,
) -> RunSummary:
    """Run each batch in order, then export the tables, notices and Data Docs to out_dir.
    ``runner`` runs each ECS task's command (``InProcessRunner(cli.main)``: in this process)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = out_dir / "pipeline.log.jsonl"
    log_file.unlink(missing_ok=True)
    logs.configure(path=log_file)
    progress(f"JSON logs: {log_file}")
    summary = RunSummary(out_dir=out_dir)
    ids = batch_ids(batch_dirs)
    with LocalAws() as aws, local_ecs(runner):
        enable_interpreter("127.0.0.1", aws.port)
        config = Settings(
            bucket=aws.bucket, aws=aws.settings, topic_arn=aws.topic_arn, work_dir=out_dir / "work"
        )
        pipeline = LocalPipeline(aws, config)
        progress(f"emulated AWS at {aws.endpoint_url}; state machine {STATE_MACHINE_NAME}")
        try:
            for number, (folder, batch_id) in enumerate(zip(batch_dirs, ids, strict=True), 1):
                progress(f"[{number}/{len(ids)}] batch {batch_id} ({folder})")
                outcome = run_batch(pipeline, folder, batch_id, progress, log_file)
                progress(f"  batch {batch_id}: {outcome.status}")
                summary.outcomes.append(outcome)
        finally:
            summary.exported = aws.export_tables(out_dir)
            aws.export_notifications(out_dir / "notifications.jsonl")
            docs = out_dir / "data_docs"
            shutil.rmtree(docs, ignore_errors=True)
            aws.store.download_prefix(DATA_DOCS, docs)
            _export_custody(aws, out_dir / BUCKET_EXPORT)
            _export_dashboard(aws, out_dir / "dashboard", docs.name)
            shutil.rmtree(config.work_dir, ignore_errors=True)
    return summary


def _export_custody(aws: LocalAws, dest: Path) -> None:
    """Where each batch's raw files ended: OUT/bucket/{incoming,rejected,archive}/<batch>/."""
    shutil.rmtree(dest, ignore_errors=True)
    for root in (INCOMING, REJECTED, ARCHIVE):
        aws.store.download_prefix(root, dest / root)


def _export_dashboard(aws: LocalAws, dest: Path, docs_dir: str) -> None:
    """Download dashboard/ next to the Data Docs; its links then point at OUT/<docs_dir>/."""
    shutil.rmtree(dest, ignore_errors=True)
    aws.store.download_prefix(DASHBOARD_PREFIX, dest)
    page = dest / "index.html"
    if page.is_file():
        page.write_text(relink_data_docs(page.read_text(encoding="utf-8"), docs_dir), "utf-8")
    elif not any(dest.iterdir()):
        dest.rmdir()  # no KPI run succeeded: no dashboard
