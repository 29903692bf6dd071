"""run-local: the deployed pipeline, run on this machine against emulated AWS.

Everything AWS would run runs here, the same way: each batch folder is uploaded to the emulated
bucket as ``incoming/<batch_id>/`` with its ``_SUCCESS`` marker last; the S3 event for the marker
goes to the Lambda handler (``lambda/trigger.py``); the handler starts an execution of the state
machine in ``stepfunctions/`` in moto's Step Functions interpreter, which runs the Map of
validations, Retry/Catch, SNS notices and the KPI task. Only ECS and EMR Serverless are stood in
for: each task's container command (or job run's command line) runs here with the environment
the state machine sends (see ecs_stand_in.py).
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
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from ecom_pipeline.adapters.storage import Store
from ecom_pipeline.core import logs
from ecom_pipeline.core.contract import DATASET_ORDER
from ecom_pipeline.core.layout import (
    ARCHIVE,
    DATA_DOCS,
    INCOMING,
    NOTICES_EXPORT_FILE,
    REJECTED,
    incoming_prefix,
    kpi_result_key,
    result_key,
)
from ecom_pipeline.core.planning import KPI_RETRY_WAIT_ENV, KPI_RETRY_WAIT_S, batch_id_problem
from ecom_pipeline.core.settings import ConfigError, Settings
from ecom_pipeline.core.tiers import TIERS
from ecom_pipeline.lambda_fn import trigger
from ecom_pipeline.local.ecs_stand_in import (
    TaskRunner,
    enable_interpreter,
    local_ecs,
)
from ecom_pipeline.local.emulator import EXPORT_FILES, LocalAws
from ecom_pipeline.local.thread_output import redirect_thread_output
from ecom_pipeline.pipeline.asl import CONTAINER_NAME, substitute
from ecom_pipeline.read.dashboard import DASHBOARD_PREFIX, relink_data_docs
from ecom_pipeline.tasks.check import folder_problem, shown, value_label
from ecom_pipeline.transforms.ingest import SOURCE_FILE

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
STATE_MACHINE_NAME = "ecom-pipeline"
MARKER = "_SUCCESS"
EXECUTION_TIMEOUT_S = 3600
BUCKET_EXPORT = "bucket"  # OUT/bucket/<prefix>/...: the raw files' custody prefixes
DATA_DOCS_EXPORT = "data_docs"
DASHBOARD_EXPORT = "dashboard"
WORK_DIR = "work"
LOG_FILE = "pipeline.log.jsonl"
# The file that makes a folder an export of run-local's: only such a folder (or a new or empty
# one) is written to, since each run replaces the folders below in it.
EXPORT_MARKER = ".ecom-pipeline-export"
REPLACED = (WORK_DIR, BUCKET_EXPORT, DATA_DOCS_EXPORT, DASHBOARD_EXPORT)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # noqa: T201 - human progress for long runs


class RunArgumentsError(ConfigError):
    """Arguments run-local cannot start with: every problem found, one line each."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass
class BatchOutcome:
    batch_id: str
    source: Path
    status: str  # SUCCEEDED, FAILED, DUPLICATE, NOT_STARTED
    notice: dict[str, Any] | None = None
    execution_arn: str | None = None
    error: str | None = None
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return self.status in ("SUCCEEDED", "DUPLICATE")

    @property
    def verdict(self) -> str:
        """succeeded; rejected (the data's fault: its files went to rejected/, or intake
        refused it before anything started); or failed (anything else: see the log)."""
        if self.success:
            return "succeeded"
        notice = self.notice or {}
        custody = notice.get("custody") or {}
        if custody.get("moved") and f"/{REJECTED}/" in str(custody.get("files")):
            return "rejected"
        if not custody and notice.get("stage") == "intake":
            return "rejected"
        return "failed"

    @property
    def stage(self) -> str | None:
        """Where a failed batch stopped (intake, validation, kpis, archive)."""
        return (self.notice or {}).get("stage")

    @property
    def files_key(self) -> str:
        """The bucket folder holding the batch's raw files at the end (custody)."""
        custody = (self.notice or {}).get("custody") or {}
        where = str(custody.get("files") or "")
        if where.startswith("s3://"):
            return where.split("/", 3)[3]
        return incoming_prefix(self.batch_id)


@dataclass
class RunSummary:
    outcomes: list[BatchOutcome] = field(default_factory=list)
    exported: dict[str, int] = field(default_factory=dict)
    out_dir: Path | None = None
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    def count(self, verdict: str) -> int:
        return sum(o.verdict == verdict for o in self.outcomes)

    def local_files(self, outcome: BatchOutcome) -> Path:
        """Where the export keeps the batch's raw files (the emulated bucket is gone)."""
        return (self.out_dir or Path()) / BUCKET_EXPORT / outcome.files_key

    def export_files(self) -> dict[str, Path]:
        """Each exported table's file, by table name."""
        return {table: (self.out_dir or Path()) / name for table, name in EXPORT_FILES.items()}


def export_problem(out_dir: Path) -> str | None:
    """Why run-local must not write into out_dir, or None: it writes only into a new or empty
    folder, or one it made before (which holds EXPORT_MARKER), since a run replaces its
    work/, bucket/, data_docs/ and dashboard/."""
    try:
        if out_dir.exists() and not out_dir.is_dir():
            return f"--export {out_dir}: a file, not a folder"
        if not out_dir.is_dir() or (out_dir / EXPORT_MARKER).is_file():
            return None
        if any(out_dir.iterdir()):
            return (
                f"--export {out_dir}: the folder is not empty and is no run-local export "
                f"(it has no {EXPORT_MARKER}); choose a new or empty folder"
            )
    except OSError as e:
        return f"--export {out_dir}: cannot be read ({e.strerror or e})"
    return None


def argument_problems(
    batch_dirs: Sequence[Path], out_dir: Path, *, batch_id: Sequence[str] | None = None
) -> list[str]:
    """Every reason run-local cannot start with these arguments, one line each."""
    problems = [problem for problem in map(folder_problem, batch_dirs) if problem]
    given = list(batch_id or [])
    if len(given) not in (0, 1, len(batch_dirs)):
        problems.append(
            f"--batch-id given {len(given)} times for {len(batch_dirs)} folders: give it once "
            "(every folder into that batch) or once per folder"
        )
    problems += [f"--batch-id: {p}" for p in map(batch_id_problem, dict.fromkeys(given)) if p]
    export = export_problem(out_dir)
    if export:
        problems.append(export)
    out = out_dir.resolve()
    for folder in batch_dirs:
        source = folder.resolve()
        if source == out or source in out.parents:
            problems.append(
                f"--export {out_dir} is inside batch folder {folder}: the export's files would "
                "be uploaded with the batch"
            )
        elif out in source.parents and source.relative_to(out).parts[0] in REPLACED:
            replaced = out_dir / source.relative_to(out).parts[0]
            problems.append(f"{folder}: inside {replaced}, which each run replaces")
    return problems


def prepare_export(out_dir: Path) -> None:
    """Make out_dir run-local's own export folder (see :func:`export_problem`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    marker = out_dir / EXPORT_MARKER
    if not marker.is_file():
        marker.write_text(
            "This folder is an export of `ecom-pipeline run-local`: each run into it replaces "
            f"{', '.join(f'{name}/' for name in REPLACED)}, {LOG_FILE} and the files it "
            "exports.\n",
            encoding="utf-8",
        )


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
                # The EMR route (batches above the largest Fargate tier): the stand-in runs its
                # job runs' commands here (ecs_stand_in.LocalEmrJobRun).
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
        self.started_meanwhile: list[str] = []
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
        with _environment(env), redirect_thread_output(output):
            trigger._intake.cache_clear()  # clients must point at this emulator
            try:
                return trigger.handler(event, LambdaContext())
            finally:
                trigger._intake.cache_clear()
                if log_file is not None:
                    with log_file.open("a", encoding="utf-8") as handle:
                        handle.write(output.getvalue())

    def deliver_marker_events(self, log_file: Path | None = None) -> dict[str, list[str]]:
        """Hand every marker event the bucket sent since the last call to the Lambda handler,
        as S3's notification would; returns the handler's answers merged."""
        merged: dict[str, list[str]] = {}
        for event in self.aws.marker_events():
            for outcome, names in self.deliver(event, log_file).items():
                merged.setdefault(outcome, []).extend(names)
        return merged

    def wait(
        self,
        execution_arn: str,
        timeout_s: float = EXECUTION_TIMEOUT_S,
        log_file: Path | None = None,
    ) -> dict[str, Any]:
        """Wait for the execution to end. Marker events the bucket sends meanwhile (an upload
        into the running batch, announced again by its custody) reach the Lambda as they would
        on AWS; the runs they start are in ``started_meanwhile``."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.started_meanwhile += self.deliver_marker_events(log_file).get("started", [])
            description = self.sfn.describe_execution(executionArn=execution_arn)
            if description["status"] != "RUNNING":
                self.started_meanwhile += self.deliver_marker_events(log_file).get("started", [])
                return description
            if time.monotonic() > deadline:
                raise TimeoutError(f"execution {execution_arn} still running after {timeout_s}s")
            time.sleep(0.25)

    def execution_arn(self, name: str) -> str:
        return f"{self.state_machine_arn.replace(':stateMachine:', ':execution:')}:{name}"


def run_batch(
    pipeline: LocalPipeline,
    folder: Path,
    batch_id: str,
    progress: Progress,
    log_file: Path,
    *,
    places: dict[str, Path] | None = None,
) -> BatchOutcome:
    """Upload one batch folder, hand its marker's event to the Lambda and wait for the
    execution. ``places``, when given, learns where the batch's files came from (the progress
    of its tasks names them there)."""
    started = time.perf_counter()
    if places is not None:
        places[batch_id] = folder
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    pipeline.upload(folder, batch_id)
    progress(
        f"  uploaded {len(files)} file{'s' * (len(files) != 1)}, "
        f"{_size(sum(p.stat().st_size for p in files))} ({time.perf_counter() - started:.1f} s)"
    )

    def outcome(status: str, **fields: Any) -> BatchOutcome:
        return BatchOutcome(
            batch_id, folder, status, seconds=time.perf_counter() - started, **fields
        )

    try:
        result = pipeline.deliver_marker_events(log_file)
    except Exception as e:  # the Lambda failed: nothing started (AWS would retry it)
        progress(f"  the trigger failed, nothing started: {e}")
        return outcome("NOT_STARTED", error=f"{type(e).__name__}: {e}")
    # (a folder holding its own marker sends two events: the second finds the run started)
    if not result.get("started") and result.get("duplicates"):
        progress("  an execution for this batch exists already: nothing started")
        return outcome("DUPLICATE")
    if not result.get("started") and result.get("deferred"):
        progress("  a run of this batch is going on: this upload runs when it has ended")
        return outcome("DEFERRED")
    if not result.get("started"):
        notice = _notice_of(pipeline, batch_id)
        _report(progress, notice, folder, batch_id)
        return outcome("NOT_STARTED", notice=notice, error=(notice or {}).get("error"))
    names = [result["started"][0]]
    # moto's interpreter runs the Map's validations one at a time here (one JVM)
    progress(f"  execution {names[0]} started: each dataset validated, then the KPIs")
    while True:
        execution_arn = pipeline.execution_arn(names[-1])
        description = pipeline.wait(execution_arn, log_file=log_file)
        notice = _notice_of(pipeline, batch_id)
        _report(progress, notice, folder, batch_id)
        # the batch was uploaded again while it ran: that upload's run follows
        following = [n for n in pipeline.started_meanwhile if n not in names]
        if not following:
            break
        names.append(following[0])
        progress(f"  uploaded again during the run: execution {names[-1]} started")
    return outcome(
        description["status"],
        notice=notice,
        execution_arn=execution_arn,
        error=description.get("error"),
    )


def _notice_of(pipeline: LocalPipeline, batch_id: str) -> dict[str, Any] | None:
    notices = [
        n["message"]
        for n in pipeline.aws.notifications()
        if isinstance(n["message"], dict) and n["message"].get("batch_id") == batch_id
    ]
    return notices[-1] if notices else None


def _size(size: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size} bytes"


def _report(progress: Progress, notice: dict[str, Any] | None, folder: Path, batch_id: str) -> None:
    """What the notice says that the tasks' own lines did not: an intake refusal, a failure
    that was not a rule's."""
    if notice is None:
        progress("  no notice was published")
        return
    if notice.get("status") != "FAILED" or notice.get("stage") == "validation":
        return
    if notice.get("stage") == "intake":
        rule = f"rule '{notice['rule']}': " if notice.get("rule") else ""
        progress(f"  refused at intake: {rule}{notice.get('error')}")
        for key in notice.get("unrecognised_files") or []:
            progress(f"    {_local_name(key, folder, batch_id)}")
        return
    progress(f"  failed at {notice.get('stage')}: {_error_text(notice.get('error'))}")


def _error_text(error: Any) -> str:
    """A state's error for people: its name and the task's exit codes, not its JSON."""
    if not isinstance(error, dict):
        return str(error)
    text = str(error.get("Error") or "error")
    try:
        cause = json.loads(error.get("Cause") or "")
    except (TypeError, ValueError):
        return text
    containers = cause.get("Containers", []) if isinstance(cause, dict) else []
    codes = [c.get("ExitCode") for c in containers if isinstance(c, dict)]
    if codes:
        text += f" (the task exited with code {', '.join(map(str, codes))})"
    return text


def _local_name(key: str, folder: Path, batch_id: str) -> str:
    """A batch file's key as the file it was uploaded from."""
    for prefix in (incoming_prefix(batch_id), f"{INCOMING}/{batch_id}/"):
        if key.startswith(prefix):
            return (folder / key[len(prefix) :]).as_posix()
    return key


def _dataset_label(name: str) -> str:
    return name.replace("_", " ")


def counts_text(counts: dict[str, int]) -> str:
    """{"products": 3, "order_items": 5} -> "3 products, 5 order items"."""
    order = [name for name in DATASET_ORDER if name in counts] + sorted(
        set(counts) - set(DATASET_ORDER)
    )
    return ", ".join(f"{counts[name]} {_dataset_label(name)}" for name in order)


def failed_rule_text(rule: dict[str, Any], place: Callable[[str], str]) -> str:
    """One failed rule of a validation result (its JSON) for people: the file, the rule, how
    many rows and a few of their values. ``place`` turns a file's key into the name people
    know it by."""
    where = f"{place(rule['file'])}: " if rule.get("file") else ""
    text = f"{where}rule '{rule['rule']}' failed"
    if rule.get("unexpected_count") is not None:
        text += f" on {rule['unexpected_count']} of {rule.get('element_count')} rows"
    if rule.get("error"):
        text += f": {rule['error']}"
    details = rule.get("details") or {}
    if details:
        text += (
            " ("
            + "; ".join(
                f"{kind}: {', '.join(map(str, value)) if isinstance(value, list) else value}"
                for kind, value in details.items()
            )
            + ")"
        )
    examples = []
    column = rule.get("column")
    for example in rule.get("examples") or []:
        named = f"{value_label(column)}={shown(example[column])}" if column in example else ""
        source = place(str(example[SOURCE_FILE])) if example.get(SOURCE_FILE) else ""
        examples.append(" ".join(part for part in (source, named) if part))
    if examples:
        text += ", e.g. " + "; ".join(examples)
    return text


class _TaskReporter:
    """Runs each ECS task's command with ``runner`` and says, as it ends, what it found and how
    long it took (the notice comes only when the execution ends)."""

    def __init__(
        self, runner: TaskRunner, store: Store, progress: Progress, log_file: Path
    ) -> None:
        self._runner = runner
        self._store = store
        self._progress = progress
        self._log_file = log_file
        self.places: dict[str, Path] = {}  # batch id -> the folder it was uploaded from
        # The Map's validations call at once, and tasks run here one at a time: a
        # task's time starts when it runs, not while it waits for the one before it.
        self._one_at_a_time = threading.Lock()

    def __call__(self, command: list[str], environment: Mapping[str, str]) -> int:
        with self._one_at_a_time:
            started = time.perf_counter()
            code = self._runner(command, environment)
            try:
                self._report(command, code, time.perf_counter() - started)
            except Exception:  # a progress line must never fail the task
                log.exception("task progress not reported", extra={"command": command})
        return code

    def _place(self, batch_id: str) -> Callable[[str], str]:
        folder = self.places.get(batch_id)
        return (lambda key: _local_name(key, folder, batch_id)) if folder else str

    def _report(self, command: list[str], code: int, seconds: float) -> None:
        name, options = command[0], dict(zip(command[1::2], command[2::2], strict=False))
        batch_id = options.get("--batch-id", "")
        took = f"({seconds:.1f} s)"
        failed = f"the task exited with code {code} {took}; see {self._log_file}"
        if name == "validate":
            dataset = options.get("--dataset", "")
            result = self._store.get_json_or_none(result_key(batch_id, dataset)) or {}
            if code not in (0, 3) or not result:
                self._progress(f"  {dataset}: ERROR, {failed}")
                return
            status = "PASSED" if code == 0 else "FAILED"
            self._progress(f"  {dataset}: {status}, {result.get('rows')} rows {took}")
            for rule in result.get("failed_rules") or []:
                self._progress(f"    {failed_rule_text(rule, self._place(batch_id))}")
        elif name == "compute-kpis":
            report = self._store.get_json_or_none(kpi_result_key(batch_id)) if code == 0 else None
            if report is None:
                self._progress(f"  KPIs: {failed}")
                return
            dates = len(report.get("dates_recomputed") or [])
            self._progress(
                f"  KPIs: {dates} date{'s' * (dates != 1)} recomputed from "
                f"{counts_text(report.get('rows_accepted') or {})} {took}"
            )
        elif name == "move-batch":
            where = options.get("--to", "")
            if code == 0:
                self._progress(f"  raw files moved to {where}/ {took}")
            else:
                self._progress(f"  moving the raw files to {where}/ failed: {failed}")
        else:
            self._progress(f"  {name}: exit code {code} {took}")


def run_local(
    batch_dirs: Sequence[Path],
    out_dir: Path,
    *,
    runner: TaskRunner,
    progress: Progress = _stderr,
    batch_id: Sequence[str] | None = None,
) -> RunSummary:
    """Run each batch in order, then export the tables, notices and Data Docs to out_dir.
    ``runner`` runs each ECS task's command (``InProcessRunner(cli.main)``: in this process).
    ``batch_id`` names the batch of every folder (one id) or of each (one per folder); an id
    that comes again is an upload into that batch after its run: the batch's next run.

    Every argument is checked before anything starts: :class:`RunArgumentsError` lists each
    problem (see :func:`argument_problems`)."""
    problems = argument_problems(batch_dirs, out_dir, batch_id=batch_id)
    if problems:
        raise RunArgumentsError(problems)
    run_started = time.perf_counter()
    prepare_export(out_dir)
    log_file = out_dir / LOG_FILE
    log_file.unlink(missing_ok=True)
    logs.configure(path=log_file)
    progress(f"JSON logs: {log_file}")
    summary = RunSummary(out_dir=out_dir)
    if not batch_id:
        ids = batch_ids(batch_dirs)
    elif len(batch_id) == 1:
        ids = list(batch_id) * len(batch_dirs)
    else:
        ids = list(batch_id)
    clock = time.perf_counter()
    with LocalAws() as aws:
        reporter = _TaskReporter(runner, aws.store, progress, log_file)
        config = Settings(
            bucket=aws.bucket,
            aws=aws.settings,
            topic_arn=aws.topic_arn,
            work_dir=out_dir / WORK_DIR,
        )
        with local_ecs(reporter, emr_environment=config.to_env()):
            enable_interpreter("127.0.0.1", aws.port)
            pipeline = LocalPipeline(aws, config)
            progress(f"emulated AWS ready ({time.perf_counter() - clock:.1f} s)")
            try:
                for number, (folder, batch_id) in enumerate(zip(batch_dirs, ids, strict=True), 1):
                    progress(f"[{number}/{len(ids)}] batch {batch_id} from {folder}")
                    outcome = run_batch(
                        pipeline, folder, batch_id, progress, log_file, places=reporter.places
                    )
                    stage = f" at {outcome.stage}" if outcome.verdict != "succeeded" else ""
                    progress(
                        f"  batch {batch_id}: {outcome.verdict.upper()}{stage} "
                        f"({outcome.seconds:.1f} s)"
                    )
                    summary.outcomes.append(outcome)
            finally:
                clock = time.perf_counter()
                summary.exported = aws.export_tables(out_dir)
                aws.export_notifications(out_dir / NOTICES_EXPORT_FILE)
                docs = out_dir / DATA_DOCS_EXPORT
                shutil.rmtree(docs, ignore_errors=True)
                aws.store.download_prefix(DATA_DOCS, docs)
                _export_custody(aws, out_dir / BUCKET_EXPORT)
                _export_dashboard(aws, out_dir / DASHBOARD_EXPORT, docs.name)
                shutil.rmtree(config.work_dir, ignore_errors=True)
                progress(f"exported to {out_dir} ({time.perf_counter() - clock:.1f} s)")
    summary.seconds = time.perf_counter() - run_started
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
