"""Generates the state machine definition, ``stepfunctions/pipeline.asl.json``.

The shape, top to bottom (``docs/state-machine.md`` draws it):

- ``Prepare`` lists the contract's datasets with whether the batch has each, and checks intake:
  a batch holding a file that fits no dataset is refused.
- ``ValidateDatasets`` is a Map over those datasets: each present one is validated where the
  plan's ``route`` says (an ECS Fargate task sized by the tier, or an EMR Serverless job run for
  batches above the largest Fargate tier, ``ecom_pipeline.pipeline.emr``). A job that exits
  non-zero is judged by its result file and exit code: a rule failure only when the result is
  this execution's, says ``success: false`` and the job exited with ``ExitCode.DATA_REJECTED``;
  anything else (a crash, a stale result) is an error.
- The KPI job runs when every dataset passed, on the same route, retried while it exits
  ``ExitCode.DEPENDENCY``.
- Every ending (intake refused, rules broken, a job errored, the KPI job failed, KPIs written)
  is one Pass state writing ``$.outcome``: the notice and its text, the move of the files (if
  any), and the error the execution fails with. One tail follows: ``MoveFiles`` settles the
  files (the only move-batch task), ``ComposeNotice`` and ``PublishNotice`` send the one notice
  (text for people, JSON for programs), ``Failed`` is the only Fail state.

The file keeps ``${Placeholders}`` that CloudFormation fills through ``DefinitionSubstitutions``
(and run-local fills the same way). Regenerate with
``python -m ecom_pipeline.pipeline.asl > stepfunctions/pipeline.asl.json``; a test keeps them in
step.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from ecom_pipeline.core.contract import DATASET_ORDER, ExitCode
from ecom_pipeline.core.layout import ARCHIVE, INCOMING, REASON_FILE, REJECTED, RESULTS
from ecom_pipeline.core.planning import INTAKE_RULE
from ecom_pipeline.core.tiers import EMR_ROUTE, TIERS
from ecom_pipeline.pipeline import emr

PLACEHOLDERS: tuple[str, ...] = (
    "ClusterArn",
    "JobTaskDefinitionArn",
    "ContainerName",
    "SubnetA",
    "SubnetB",
    "SecurityGroupId",
    "NotificationTopicArn",
    "DataBucket",
    # the EMR Serverless route (batches above the largest Fargate tier)
    "EmrApplicationId",
    "EmrJobRoleArn",
    "EmrKpiRoleArn",
    "EmrArtifactsUri",
    "EmrLogUri",
    "EmrLogGroup",
    "CategoryTable",
    "OrderTable",
    "Region",
    # the KPI job's and move-batch's own roles (the task definition's role is validation's)
    "KpiTaskRoleArn",
    "CustodyTaskRoleArn",
)
# What the EMR job runs get for each deployment-fixed field of their request. The execution
# role is the validation runs' (EmrJobRole, like the task definition's role on ECS); the KPI
# run gets its own (EMR_KPI_ROLE), so each job has only its own data access.
EMR_PLACEHOLDERS = {
    "application_id": "${EmrApplicationId}",
    "execution_role_arn": "${EmrJobRoleArn}",
    "artifacts_uri": "${EmrArtifactsUri}",
    "log_uri": "${EmrLogUri}",
    "log_group": "${EmrLogGroup}",
    "bucket": "${DataBucket}",
    "category_table": "${CategoryTable}",
    "order_table": "${OrderTable}",
    "topic_arn": "${NotificationTopicArn}",
    "region": "${Region}",
}
EMR_KPI_ROLE = "${EmrKpiRoleArn}"
# move-batch's role: it alone may delete from incoming/ (after verifying each copy)
CUSTODY_TASK_ROLE = "${CustodyTaskRoleArn}"
# The job container's name in the task definition (infra/template.yaml uses the same).
CONTAINER_NAME = "pipeline"
VALIDATION_TIMEOUT_S = 3600
KPI_TIMEOUT_S = 7200
S3_TIMEOUT_S = 60
MOVE_TIMEOUT_S = 3600
REPLAY_COMMAND = "ecom-pipeline replay"
DATA_DOCS_INDEX = "s3://${DataBucket}/data-docs/index.html"
# The subscribers that get the notice as JSON (the others, e-mail, get its text). Each body
# counts towards SNS's 256 KB a message.
NOTICE_JSON_PROTOCOLS = ("sqs", "lambda", "http", "https")

# Errors worth retrying, per service: the call never got through or AWS throttled us. A
# container that ran and exited non-zero (States.TaskFailed) is not retried: the data will not
# change by itself.
TRANSIENT_ECS_ERRORS = [
    "ECS.AmazonECSException",
    "ECS.ServerException",
    "ECS.ThrottlingException",
    "ECS.LimitExceededException",
    "ECS.PlatformTaskDefinitionIncompatibilityException",
]
# aws-sdk:s3 names an error S3.<the SDK's exception class>: S3Exception is any S3 error without
# a class of its own (500 InternalError, 503 SlowDown); NoSuchKey has its own and is not retried.
TRANSIENT_S3_ERRORS = ["States.Timeout", "S3.SdkClientException", "S3.S3Exception"]
# sns:publish's (names from botocore's sns model).
TRANSIENT_SNS_ERRORS = [
    "States.Timeout",
    "SNS.InternalErrorException",
    "SNS.ThrottledException",
    "SNS.KMSThrottlingException",
]
# The same for EMR Serverless: the run could not be started (a run that ran and failed is
# States.TaskFailed, not retried). Names are StartJobRun's errors in botocore's model.
TRANSIENT_EMR_ERRORS = ["EMRServerless.InternalServerException", "EMRServerless.ConflictException"]
# Slack on top of the job run's own executionTimeoutMinutes: queueing and worker start-up.
EMR_START_SLACK_S = 900
# The KPI container exiting with ExitCode.DEPENDENCY (4: DynamoDB throttling that outlasted its
# retries, the curated-store lock held too long by another run, an AWS call failing) is retried:
# the job is idempotent and recovers a half-done run. ECS reports every non-zero exit as
# States.TaskFailed, so the state machine reads the exit code from the error's Cause (the
# stopped task) and decides.
KPI_RETRYABLE_EXIT_CODE = int(ExitCode.DEPENDENCY)
KPI_MAX_ATTEMPTS = 3
# A validation container exiting with this code found rule failures and wrote them down.
RULES_BROKEN_EXIT_CODE = int(ExitCode.DATA_REJECTED)


def _exit_code_patterns(code: int, *, emr: bool = False) -> list[str]:
    """StringMatches patterns finding an exit code in a failed job's Cause: a container's
    ``"ExitCode":<code>`` in a stopped task's JSON, compact (as Step Functions writes the Cause)
    or spaced, followed by , or } (4 never matches 40); with ``emr``, also the
    ``ExitCode: <code>.`` that EMR Serverless writes in a failed job run's stateDetails ("Job
    failed, please check complete logs ... ExitCode: 1. Last few exceptions: ...")."""
    patterns = [f'*"ExitCode"{colon}{code}{end}*' for colon in (":", ": ") for end in (",", "}")]
    return patterns + ([f"*ExitCode: {code}.*"] if emr else [])


def _cause_shows_exit_code(code: int, *, emr: bool = False) -> dict[str, Any]:
    """A Choice rule: ``$.error`` (a caught States.TaskFailed) is a job that exited with
    ``code``. The Cause is read with string patterns, checked present and a string first (And
    stops at the first false rule), because a Pass state parsing it could not Catch a Cause that
    is not JSON and the execution would end without a notice."""
    return {
        "And": [
            {"Variable": "$.error.Cause", "IsPresent": True},
            {"Variable": "$.error.Cause", "IsString": True},
            {
                "Or": [
                    {"Variable": "$.error.Cause", "StringMatches": pattern}
                    for pattern in _exit_code_patterns(code, emr=emr)
                ]
            },
        ]
    }


def _retry(errors: list[str], attempts: int, interval_s: int) -> list[dict[str, Any]]:
    return [
        {
            "ErrorEquals": errors,
            "IntervalSeconds": interval_s,
            "MaxAttempts": attempts,
            "BackoffRate": 2.0,
            "MaxDelaySeconds": 300,
            "JitterStrategy": "FULL",
        }
    ]


def _catch(next_state: str, result_path: str, errors: tuple[str, ...] = ("States.ALL",)) -> dict:
    return {"ErrorEquals": list(errors), "ResultPath": result_path, "Next": next_state}


def _run_task(
    command: str,
    timeout_s: int,
    *,
    fixed_size: bool = False,
    task_role: str | None = None,
    environment: tuple[dict[str, str], ...] = (),
) -> dict[str, Any]:
    """An ECS Fargate task of the job image with the tier's size and the given command
    (``fixed_size``: the smallest tier's size whatever the batch, for jobs without Spark; with
    ``task_role``, under that role instead of the task definition's, validation's;
    ``environment``: more variables for the container)."""
    task: dict[str, Any] = {
        "Type": "Task",
        "Resource": "arn:aws:states:::ecs:runTask.sync",
        "TimeoutSeconds": timeout_s,
        "Parameters": {
            "Cluster": "${ClusterArn}",
            "TaskDefinition": "${JobTaskDefinitionArn}",
            "LaunchType": "FARGATE",
            "NetworkConfiguration": {
                "AwsvpcConfiguration": {
                    "Subnets": ["${SubnetA}", "${SubnetB}"],
                    "SecurityGroups": ["${SecurityGroupId}"],
                    "AssignPublicIp": "DISABLED",
                }
            },
            "Overrides": {
                "Cpu.$": "$.tier.cpu",
                "Memory.$": "$.tier.memory",
                "EphemeralStorage": {"SizeInGiB.$": "$.tier.ephemeral_storage_gib"},
                "ContainerOverrides": [
                    {
                        "Name": "${ContainerName}",
                        "Command.$": command,
                        "Environment": [
                            {"Name": "SPARK_DRIVER_MEMORY", "Value.$": "$.tier.driver_memory"},
                            {
                                "Name": "SPARK_SHUFFLE_PARTITIONS",
                                "Value.$": "$.tier.shuffle_partitions",
                            },
                            {"Name": "SPARK_MASTER", "Value.$": "$.tier.spark_master"},
                            {"Name": "EXECUTION_ID", "Value.$": "$$.Execution.Id"},
                            *environment,
                        ],
                    }
                ],
            },
        },
        "Retry": _retry(TRANSIENT_ECS_ERRORS, attempts=3, interval_s=10),
    }
    if fixed_size:
        # every value from the smallest tier, none from the plan's: on the EMR route the plan's
        # tier is an EMR one, with no container sizes
        smallest = TIERS[0]
        overrides = task["Parameters"]["Overrides"]
        overrides.pop("Cpu.$")
        overrides.pop("Memory.$")
        overrides["Cpu"] = str(smallest.cpu)
        overrides["Memory"] = str(smallest.memory_mib)
        overrides["EphemeralStorage"] = {"SizeInGiB": smallest.ephemeral_storage_gib}
        fixed = smallest.as_input()
        for variable in overrides["ContainerOverrides"][0]["Environment"]:
            path = variable.get("Value.$", "")
            if path.startswith("$.tier."):
                del variable["Value.$"]
                variable["Value"] = fixed[path.removeprefix("$.tier.")]
    if task_role is not None:
        task["Parameters"]["Overrides"]["TaskRoleArn"] = task_role
    return task


def _emr_job_run(job: str, arguments: str, name: str) -> dict[str, Any]:
    """The same job as an EMR Serverless job run of the tier's size (the EMR route)."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::emr-serverless:startJobRun.sync",
        "TimeoutSeconds": emr.EXECUTION_TIMEOUT_MINUTES[job] * 60 + EMR_START_SLACK_S,
        "Parameters": emr.states_parameters(
            job=job,
            placeholders=EMR_PLACEHOLDERS
            | ({"execution_role_arn": EMR_KPI_ROLE} if job == "compute-kpis" else {}),
            arguments_path=arguments,
            spark_parameters_path="$.tier.spark_submit_parameters",
            name_path=name,
            execution_id_path="$$.Execution.Id",
        ),
        "Retry": _retry(TRANSIENT_EMR_ERRORS, attempts=3, interval_s=10),
    }


def _s3_get_json(
    key: str, result_path: str, next_state: str, *, on_error: str, error_path: str
) -> dict[str, Any]:
    """Read a JSON object of the bucket into ``result_path``.result; on an error go to
    ``on_error`` with it at ``error_path``."""
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
        "TimeoutSeconds": S3_TIMEOUT_S,
        "Parameters": {"Bucket": "${DataBucket}", "Key.$": key},
        "ResultSelector": {"result.$": "States.StringToJson($.Body)"},
        "ResultPath": result_path,
        "Retry": _retry(TRANSIENT_S3_ERRORS, attempts=3, interval_s=2),
        "Catch": [_catch(on_error, error_path)],
        "Next": next_state,
    }


# --- Where the files are, in the notice: its "custody" -------------------------------------------


def _folder_of(root: str) -> str:
    """The batch's folder under ``root`` as an s3:// URI."""
    return f"States.Format('s3://${{DataBucket}}/{root}/{{}}/', $.batch_id)"


def _moved(root: str) -> dict[str, Any]:
    note: dict[str, Any] = {"moved": True, "files.$": _folder_of(root)}
    if root == REJECTED:
        note["reason.$"] = (
            f"States.Format('s3://${{DataBucket}}/{REJECTED}/{{}}/{REASON_FILE}', $.batch_id)"
        )
    return note


def _kept(*, partly_moved_to: str | None = None) -> dict[str, Any]:
    """Still in incoming/ (not the data's fault, or the move failed), with how to replay."""
    note: dict[str, Any] = {
        "moved": False,
        "files.$": _folder_of(INCOMING),
        "replay.$": f"States.Format('{REPLAY_COMMAND} {{}}', $.batch_id)",
    }
    if partly_moved_to is not None:
        note["partly_moved_to.$"] = _folder_of(partly_moved_to)
    return note


# --- The endings: each writes $.outcome ----------------------------------------------------------


def _format(template: str, *arguments: str) -> str:
    """``States.Format`` of ``template`` (no quote, brace or backslash of its own) with the
    given paths or intrinsics."""
    assert template.count("{}") == len(arguments), template
    assert not set("'\\") & set(template.replace("{}", "")), template
    return f"States.Format('{template}', {', '.join(arguments)})"


REPLAY = f"{REPLAY_COMMAND} {{}}"
# One line per dataset of the contract, in its order (the Map keeps it; Prepare starts each as
# not validated), for the text people read.
DATASET_LINES = _format(
    "; ".join("{}" for _ in DATASET_ORDER),
    *[
        f"States.ArrayGetItem($.run.validation.outcomes[*].text, {index})"
        for index in range(len(DATASET_ORDER))
    ],
)


def _notice(status: str, stage: str | None, **fields: Any) -> dict[str, Any]:
    notice: dict[str, Any] = {"status": status}
    if stage is not None:
        notice["stage"] = stage
    return notice | {
        "batch_id.$": "$.batch_id",
        "execution_id.$": "$$.Execution.Id",
        # when the batch's marker arrived, and when the run reached its ending: the runs
        # command's start time and, for a failed run, its duration
        "received_at.$": "$.received_at",
        "ended_at.$": "$$.State.EnteredTime",
        **fields,
    }


def _move_command(destination: str, stage: str | None = None) -> str:
    command = f"States.Array('move-batch', '--batch-id', $.batch_id, '--to', '{destination}'"
    return command + (f", '--stage', '{stage}')" if stage else ")")


def _ending(
    notice: dict[str, Any],
    text: str,
    *,
    error: tuple[str, str],
    move_to: str | None = None,
    stage: str | None = None,
    if_not_moved: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A Pass writing ``$.outcome``, what the tail needs:

    - ``notice``: the notice for programs, ``custody`` included (where the files will be);
    - ``text``: the notice for people (e-mail): status, batch, what was found, the next step;
    - ``move``: the move-batch command settling the files (absent: they stay in incoming/);
    - ``if_not_moved``: what changes when that move fails (the notice's fields to replace, the
      text, the error); MoveFiles' Catch adds the move's error to its custody;
    - ``error``, ``cause``: the execution's error unless the notice says SUCCEEDED (a
      success's: the error if its notice cannot be published).
    """
    outcome: dict[str, Any] = {"notice": notice, "text.$": text}
    outcome["error"], outcome["cause"] = error
    if move_to is not None:
        outcome["move.$"] = _move_command(move_to, stage)
        failed = dict(if_not_moved or {})
        outcome["if_not_moved"] = {
            "notice": failed.pop("notice", {}) | {"custody": _kept(partly_moved_to=move_to)},
            "text.$": failed.pop("text"),
            "error": failed.pop("error", error[0]),
            "cause": failed.pop("cause", error[1]),
        }
        assert not failed, failed
    return {
        "Type": "Pass",
        "Parameters": outcome,
        "ResultPath": "$.outcome",
        "Next": "MoveFiles" if move_to is not None else "ComposeNotice",
    }


INTAKE_REJECTED = (
    "Intake.Rejected",
    "The batch holds files that fit no dataset; the SNS notice lists them.",
)
VALIDATION_FAILED = (
    "Validation.Failed",
    "The batch was not validated: rules broken (files in rejected/) or a job failed (files in "
    "incoming/); the SNS notice says which.",
)
KPI_FAILED = ("Kpi.Failed", "The KPI job failed; the SNS notice has the error.")
ARCHIVE_FAILED = (
    "Archive.Failed",
    "The KPIs are written but the files could not all be archived; they are in incoming/ (or "
    "archive/); the SNS notice says how to replay.",
)
NOTICE_FAILED = (
    "Notice.Failed",
    "The batch succeeded (KPIs written, files archived) but its SNS notice could not be published.",
)


def _refused_but_not_moved(stage: str) -> str:
    """The text when refused files could not be moved to rejected/."""
    return _format(
        f"Batch {{}} FAILED at {stage}: refused, but moving its files to {{}} failed; they are "
        f"in {{}}, some perhaps in {{}} already. Next: fix the data, then run: {REPLAY}",
        "$.batch_id",
        _folder_of(REJECTED),
        _folder_of(INCOMING),
        _folder_of(REJECTED),
        "$.batch_id",
    )


def _endings() -> dict[str, dict[str, Any]]:
    validations = {
        "validations.$": "$.run.validation.outcomes",
        "data_docs_index": DATA_DOCS_INDEX,
    }
    return {
        # A file whose name fits no dataset would be silently left out: refuse the batch.
        "IntakeRefused": _ending(
            _notice(
                "FAILED",
                "intake",
                rule=INTAKE_RULE,
                error="files whose names fit no dataset (expected products*.csv, orders*.csv, "
                "order_items*.csv)",
                **{
                    "unrecognised_files.$": "$.unrecognised_files",
                    "unrecognised_count.$": "$.unrecognised_count",
                    "custody": _moved(REJECTED),
                },
            ),
            _format(
                "Batch {} FAILED at intake: unrecognised files: {}, the first {}; expected "
                "products*.csv, orders*.csv, order_items*.csv. The files are in "
                f"{{}} with {REASON_FILE}. Next: rename or remove those files there, then run: "
                f"{REPLAY}",
                "$.batch_id",
                "$.unrecognised_count",
                "States.ArrayGetItem($.unrecognised_files, 0)",
                _folder_of(REJECTED),
                "$.batch_id",
            ),
            error=INTAKE_REJECTED,
            move_to=REJECTED,
            stage="intake",
            if_not_moved={"text": _refused_but_not_moved("intake")},
        ),
        # A rule failed: the data's fault, the files go to rejected/.
        "RulesBroken": _ending(
            _notice("FAILED", "validation", **validations, custody=_moved(REJECTED)),
            _format(
                "Batch {} FAILED at validation: rules broken. {}. The files are in {} with "
                f"{REASON_FILE}, which lists every failed rule; Data Docs: {{}}. Next: fix the "
                f"data there, then run: {REPLAY}",
                "$.batch_id",
                DATASET_LINES,
                _folder_of(REJECTED),
                f"'{DATA_DOCS_INDEX}'",
                "$.batch_id",
            ),
            error=VALIDATION_FAILED,
            move_to=REJECTED,
            stage="validation",
            if_not_moved={"text": _refused_but_not_moved("validation")},
        ),
        # Only errors (a job crashed, left a stale result, AWS failed): not the data's fault,
        # the files stay in incoming/ to be replayed.
        "ValidationErrored": _ending(
            _notice(
                "FAILED",
                "validation",
                **validations,
                **{"error.$": "$.run.validation.error"},
                custody=_kept(),
            ),
            _format(
                "Batch {} FAILED at validation: a job failed, no rule was found broken. {}. "
                "The files stay in {}. Next: see the logs of execution {}, then run: "
                f"{REPLAY}",
                "$.batch_id",
                DATASET_LINES,
                _folder_of(INCOMING),
                "$$.Execution.Id",
                "$.batch_id",
            ),
            error=VALIDATION_FAILED,
        ),
        # A crashed or killed KPI job is not the data's fault either.
        "KpiFailed": _ending(
            _notice("FAILED", "kpis", **{"error.$": "$.error"}, custody=_kept()),
            _format(
                "Batch {} FAILED at kpis: the KPI job failed with {}. The files stay in {}. "
                f"Next: see the logs of execution {{}}, then run: {REPLAY}, which re-runs the "
                "idempotent KPI job",
                "$.batch_id",
                "$.error.Error",
                _folder_of(INCOMING),
                "$$.Execution.Id",
                "$.batch_id",
            ),
            error=KPI_FAILED,
        ),
        # If the archive move fails the KPIs stand, but the batch ends FAILED with a notice
        # saying where its files are, so nothing ends silently half-done (a replay re-runs the
        # idempotent KPI job and finishes the archive).
        "KpisWritten": _ending(
            _notice(
                "SUCCEEDED",
                None,
                **{
                    "rows_accepted.$": "$.kpis.result.rows_accepted",
                    "dates_recomputed.$": "$.kpis.result.dates_recomputed",
                    "duration_s.$": "$.kpis.result.batch_duration_s",
                    "kpi_job_duration_s.$": "$.kpis.result.duration_s",
                },
                **validations,
                custody=_moved(ARCHIVE),
            ),
            _format(
                "Batch {} SUCCEEDED: KPIs written, dates recomputed: {}, rows accepted: {}. {}. "
                "The files are archived in {}. Nothing to do.",
                "$.batch_id",
                "States.ArrayLength($.kpis.result.dates_recomputed)",
                "States.JsonToString($.kpis.result.rows_accepted)",
                DATASET_LINES,
                _folder_of(ARCHIVE),
            ),
            error=NOTICE_FAILED,
            move_to=ARCHIVE,
            if_not_moved={
                "notice": {"status": "FAILED", "stage": "archive", "kpis_written": True},
                "text": _format(
                    "Batch {} FAILED at archive: the KPIs are written, but moving its files to "
                    "{} failed; they are in {}, some perhaps in {} already. Next: run: "
                    f"{REPLAY}, which re-runs the idempotent KPI job and finishes the move",
                    "$.batch_id",
                    _folder_of(ARCHIVE),
                    _folder_of(INCOMING),
                    _folder_of(ARCHIVE),
                    "$.batch_id",
                ),
                "error": ARCHIVE_FAILED[0],
                "cause": ARCHIVE_FAILED[1],
            },
        ),
    }


# --- The validations: a Map over the contract's datasets -----------------------------------------


def _validation_iteration() -> dict[str, Any]:
    """One dataset's validation: skipped when the batch has none of it, else run on the plan's
    route; a job that exits non-zero is judged by its result file."""
    arguments = "States.Array('validate', '--batch-id', $.batch_id, '--dataset', $.dataset)"
    validate = _run_task(arguments, VALIDATION_TIMEOUT_S)
    validate_on_emr = _emr_job_run(
        "validate", arguments, "States.Format('validate-{}-{}', $.dataset, $.batch_id)"
    )
    for task in (validate, validate_on_emr):
        task.update(
            {
                "ResultPath": None,
                # the item was given its PASSED outcome: the iteration's output when it passes
                "OutputPath": "$.if_passed",
                "Catch": [
                    _catch("ReadResult", "$.error", ("States.TaskFailed",)),
                    _catch("Errored", "$.error"),
                ],
                "End": True,
            }
        )
    fresh_rule_failure = [
        {"Variable": "$.read.result.execution_id", "IsPresent": True},
        {"Variable": "$.read.result.execution_id", "IsString": True},
        {"Variable": "$.read.result.execution_id", "StringEqualsPath": "$.execution_id"},
        {"Variable": "$.read.result.success", "BooleanEquals": False},
        _cause_shows_exit_code(RULES_BROKEN_EXIT_CODE, emr=True),
    ]
    return {
        "ProcessorConfig": {"Mode": "INLINE"},
        "StartAt": "ValidateWhere",
        "States": {
            "ValidateWhere": {
                "Type": "Choice",
                "Choices": [
                    {"Variable": "$.present", "BooleanEquals": False, "Next": "Skipped"},
                    {"Variable": "$.route", "StringEquals": EMR_ROUTE, "Next": "ValidateOnEmr"},
                ],
                "Default": "Validate",
            },
            "Skipped": {
                "Type": "Pass",
                "Parameters": {
                    "dataset.$": "$.dataset",
                    "status": "SKIPPED",
                    "text.$": _format("{}: not in the batch", "$.dataset"),
                },
                "End": True,
            },
            "Validate": validate,
            "ValidateOnEmr": validate_on_emr,
            # The job exited non-zero: its result file says whether rules failed.
            "ReadResult": _s3_get_json(
                f"States.Format('{RESULTS}/{{}}/{{}}.json', $.batch_id, $.dataset)",
                "$.read",
                "JudgeResult",
                on_error="Errored",
                # the job's own failure, $.error, is what the notice reports
                error_path="$.read_error",
            ),
            # Rules broken only when the result is this execution's (not an earlier run's left
            # behind), says so, and the job exited as a rule failure does (not a crash): the
            # stopped ECS task or the EMR job run's stateDetails shows exit code 3.
            "JudgeResult": {
                "Type": "Choice",
                "Choices": [{"And": fresh_rule_failure, "Next": "RulesFailed"}],
                "Default": "Errored",
            },
            "RulesFailed": {
                "Type": "Pass",
                "Parameters": {
                    "dataset.$": "$.dataset",
                    "status": "FAILED",
                    "result.$": "$.read.result",
                    # the first failed rule's message names file, rule, count and examples
                    "text.$": _format(
                        "{}: FAILED, {} of {} rules broken, the first: {}",
                        "$.dataset",
                        "States.ArrayLength($.read.result.failed_rules)",
                        "$.read.result.rules_evaluated",
                        "States.ArrayGetItem($.read.result.failed_rules[*].message, 0)",
                    ),
                },
                "End": True,
            },
            # The job crashed, did not start, or left no result of this execution.
            "Errored": {
                "Type": "Pass",
                "Parameters": {
                    "dataset.$": "$.dataset",
                    "status": "ERROR",
                    "error.$": "$.error",
                    "text.$": _format("{}: ERROR {}, not validated", "$.dataset", "$.error.Error"),
                },
                "End": True,
            },
        },
    }


def _validate_datasets() -> dict[str, Any]:
    return {
        "Type": "Map",
        "ItemsPath": "$.run.datasets",
        "ItemSelector": {
            "dataset.$": "$$.Map.Item.Value.dataset",
            "present.$": "$$.Map.Item.Value.present",
            "batch_id.$": "$.batch_id",
            "route.$": "$.route",
            "tier.$": "$.tier",
            "execution_id.$": "$$.Execution.Id",
            "if_passed": {
                "dataset.$": "$$.Map.Item.Value.dataset",
                "status": "PASSED",
                "text.$": _format("{}: passed", "$$.Map.Item.Value.dataset"),
            },
        },
        "ItemProcessor": _validation_iteration(),
        # A Choice reads named fields (and moto's interpreter reads an indexed path as a list),
        # so the outcomes are summarised with intrinsics here.
        "ResultSelector": {
            "outcomes.$": "$",
            "failed.$": "States.ArrayContains($[*].status, 'FAILED')",
            "errored.$": "States.ArrayContains($[*].status, 'ERROR')",
            "validated.$": "States.ArrayContains($[*].status, 'PASSED')",
            "error": None,
        },
        "ResultPath": "$.run.validation",
        # The Map itself failed: Prepare's summary (nothing validated) stands, with the error.
        "Catch": [_catch("AllDatasetsPassed", "$.run.validation.error")],
        "Next": "AllDatasetsPassed",
    }


# --- The KPI job ---------------------------------------------------------------------------------


def _kpi_states() -> dict[str, dict[str, Any]]:
    arguments = (
        "States.Array('compute-kpis', '--batch-id', $.batch_id, '--received-at', $.received_at)"
    )
    # the KPI job's own role: the tables, the lock, curated/ and dashboard/ (validation's role,
    # the task definition's, reaches none of them)
    kpis = _run_task(arguments, KPI_TIMEOUT_S, task_role="${KpiTaskRoleArn}")
    kpis_on_emr = _emr_job_run(
        "compute-kpis", arguments, "States.Format('compute-kpis-{}', $.batch_id)"
    )
    # On either route the exit code tells a retryable failure (4) from the rest: the stopped
    # ECS task's, or the one a failed EMR job run's stateDetails names.
    for task in (kpis, kpis_on_emr):
        task["Catch"] = [
            _catch("KpiRetryable", "$.error", ("States.TaskFailed",)),
            _catch("KpiFailed", "$.error"),
        ]
        task.update({"ResultPath": None, "Next": "ReadKpiReport"})
    return {
        # the KPI job runs where the validations did (the plan's route), and so does a retry
        "ComputeKpisWhere": {
            "Type": "Choice",
            "Choices": [
                {"Variable": "$.route", "StringEquals": EMR_ROUTE, "Next": "ComputeKpisOnEmr"}
            ],
            "Default": "ComputeKpis",
        },
        "ComputeKpis": kpis,
        "ComputeKpisOnEmr": kpis_on_emr,
        # The job ran and exited non-zero: the Cause is the stopped task as JSON text, or the
        # failed job run's details.
        "KpiRetryable": {
            "Type": "Choice",
            "Choices": [
                {
                    "And": [
                        _cause_shows_exit_code(KPI_RETRYABLE_EXIT_CODE, emr=True),
                        {"Variable": "$.run.kpi.attempt", "NumericLessThan": KPI_MAX_ATTEMPTS},
                    ],
                    "Next": "WaitBeforeKpiRetry",
                }
            ],
            "Default": "KpiFailed",
        },
        # the plan's wait (orchestration.KPI_RETRY_WAIT_S unless the deployment sets another)
        "WaitBeforeKpiRetry": {
            "Type": "Wait",
            "SecondsPath": "$.kpi_retry_wait_s",
            "Next": "CountKpiAttempt",
        },
        "CountKpiAttempt": {
            "Type": "Pass",
            "Parameters": {"attempt.$": "States.MathAdd($.run.kpi.attempt, 1)"},
            "ResultPath": "$.run.kpi",
            "Next": "ComputeKpisWhere",
        },
        "ReadKpiReport": _s3_get_json(
            f"States.Format('{RESULTS}/{{}}/kpis.json', $.batch_id)",
            "$.kpis",
            "KpisWritten",
            on_error="KpiFailed",
            error_path="$.error",
        ),
    }


# --- The one tail: settle the files, publish the notice, end ------------------------------------


def _tail() -> dict[str, dict[str, Any]]:
    # EXECUTION_ID (every task gets it) names the run whose upload the move settles
    move = _run_task("$.outcome.move", MOVE_TIMEOUT_S, fixed_size=True, task_role=CUSTODY_TASK_ROLE)
    # move-batch is idempotent (copy, verify, delete): retried on any task failure
    move["Retry"] += _retry(["States.TaskFailed"], attempts=2, interval_s=2)
    move.update(
        {
            "ResultPath": None,
            # Nothing is lost: each file is in incoming/ or, already moved, in its destination.
            "Catch": [_catch("FilesNotMoved", "$.outcome.if_not_moved.notice.custody.error")],
            "Next": "ComposeNotice",
        }
    )
    return {
        "MoveFiles": move,
        "FilesNotMoved": {
            "Type": "Pass",
            "Parameters": {
                "notice.$": "States.JsonMerge($.outcome.notice, $.outcome.if_not_moved.notice, "
                "false)",
                "text.$": "$.outcome.if_not_moved.text",
                "error.$": "$.outcome.if_not_moved.error",
                "cause.$": "$.outcome.if_not_moved.cause",
            },
            "ResultPath": "$.outcome",
            "Next": "ComposeNotice",
        },
        # One message, a body per kind of subscriber: the text for people (e-mail, and the
        # default), the notice as JSON for programs.
        "ComposeNotice": {
            "Type": "Pass",
            "Parameters": {
                "default.$": "$.outcome.text",
                "email.$": "$.outcome.text",
                **{
                    f"{protocol}.$": "States.JsonToString($.outcome.notice)"
                    for protocol in NOTICE_JSON_PROTOCOLS
                },
            },
            "ResultPath": "$.message",
            "Next": "PublishNotice",
        },
        "PublishNotice": {
            "Type": "Task",
            "Resource": "arn:aws:states:::sns:publish",
            "TimeoutSeconds": S3_TIMEOUT_S,
            "Parameters": {
                "TopicArn": "${NotificationTopicArn}",
                # the plan's batch_label: the id in ASCII, short enough for SNS's 100 characters
                "Subject.$": "States.Format('ecom-pipeline {}: batch {}', "
                "$.outcome.notice.status, $.batch_label)",
                "MessageStructure": "json",
                "Message.$": "States.JsonToString($.message)",
            },
            "Retry": _retry(TRANSIENT_SNS_ERRORS, attempts=3, interval_s=2),
            # Nobody can be told: end FAILED with the outcome's error (a success's is
            # Notice.Failed), so the execution's status shows it.
            "Catch": [_catch("Failed", "$.notice_error")],
            "ResultPath": None,
            "Next": "Ended",
        },
        "Ended": {
            "Type": "Choice",
            "Choices": [
                {
                    "Variable": "$.outcome.notice.status",
                    "StringEquals": "SUCCEEDED",
                    "Next": "Done",
                }
            ],
            "Default": "Failed",
        },
        "Done": {"Type": "Succeed"},
        "Failed": {"Type": "Fail", "ErrorPath": "$.outcome.error", "CausePath": "$.outcome.cause"},
    }


def build_definition() -> dict[str, Any]:
    """The state machine, with ${Placeholders} for the deployment's resources."""
    passed = [
        {"Variable": "$.run.validation.failed", "BooleanEquals": False},
        {"Variable": "$.run.validation.errored", "BooleanEquals": False},
        {"Variable": "$.run.validation.validated", "BooleanEquals": True},
    ]
    return {
        "Comment": "ecom-pipeline: validate the batch's datasets (a Map), then compute KPIs; "
        "every ending settles the files, publishes one notice and ends in Done or Failed. "
        "Generated by ecom_pipeline.pipeline.asl; DefinitionSubstitutions fills the placeholders.",
        "StartAt": "Prepare",
        "States": {
            # The run's working state: the contract's datasets with whether the batch has each,
            # the KPI attempt, and what the validations found until the Map says otherwise.
            "Prepare": {
                "Type": "Pass",
                "Parameters": {
                    "datasets": [
                        {"dataset": name, "present.$": f"$.datasets.{name}.present"}
                        for name in DATASET_ORDER
                    ],
                    "kpi": {"attempt": 1},
                    "validation": {
                        "outcomes": [
                            {
                                "dataset": name,
                                "status": "NOT_VALIDATED",
                                "text": f"{name}: not validated",
                            }
                            for name in DATASET_ORDER
                        ],
                        "failed": False,
                        "errored": True,
                        "validated": False,
                        "error": None,
                    },
                },
                "ResultPath": "$.run",
                "Next": "IntakeAccepted",
            },
            "IntakeAccepted": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Variable": "$.unrecognised_count",
                        "NumericEquals": 0,
                        "Next": "ValidateDatasets",
                    }
                ],
                "Default": "IntakeRefused",
            },
            "ValidateDatasets": _validate_datasets(),
            "AllDatasetsPassed": {
                "Type": "Choice",
                "Choices": [
                    {"And": passed, "Next": "ComputeKpisWhere"},
                    {
                        "Variable": "$.run.validation.failed",
                        "BooleanEquals": True,
                        "Next": "RulesBroken",
                    },
                ],
                "Default": "ValidationErrored",
            },
            **_kpi_states(),
            **_endings(),
            **_tail(),
        },
    }


def definition_text() -> str:
    return json.dumps(build_definition(), indent=2) + "\n"


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9_]+)\}")


def substitute(text: str, values: dict[str, str]) -> str:
    """Fill ${Placeholders} as CloudFormation's DefinitionSubstitutions does; every placeholder
    must have a value and every value a placeholder."""
    found = set(_PLACEHOLDER.findall(text))
    missing = found - set(values)
    unused = set(values) - found
    if missing or unused:
        raise ValueError(
            f"placeholders without values: {sorted(missing)}; "
            f"values without placeholders: {sorted(unused)}"
        )
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


if __name__ == "__main__":
    sys.stdout.write(definition_text())
