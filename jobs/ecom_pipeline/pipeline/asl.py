"""Generates the state machine definition, ``stepfunctions/pipeline.asl.json``.

Each job (a validation, the KPI job) runs where the plan's ``route`` says: an ECS Fargate task
sized by the tier (the Default of each route Choice), or, for batches above the largest Fargate
tier, an EMR Serverless job run (``ecom_pipeline.pipeline.emr``). Both feed the same result reading,
summary, notices and Fail states.

The datasets come from the contract, so the Parallel state has one branch per dataset without
hand-copied JSON. The file keeps ``${Placeholders}`` that CloudFormation fills through
``DefinitionSubstitutions`` (and run-local fills the same way). Regenerate with
``python -m ecom_pipeline.pipeline.asl > stepfunctions/pipeline.asl.json``; a test keeps them in
step.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from ecom_pipeline.core.contract import DATASET_ORDER
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

# Errors worth retrying: the task never started or AWS throttled us. A container that ran and
# exited non-zero (States.TaskFailed) is not retried: the data will not change by itself.
TRANSIENT_ECS_ERRORS = [
    "ECS.AmazonECSException",
    "ECS.ServerException",
    "ECS.ThrottlingException",
    "ECS.LimitExceededException",
    "ECS.PlatformTaskDefinitionIncompatibilityException",
]
TRANSIENT_AWS_ERRORS = ["States.Timeout", "S3.SdkClientException", "SNS.ThrottledException"]
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
KPI_RETRYABLE_EXIT_CODE = 4
KPI_MAX_ATTEMPTS = 3


def _exit_code_patterns(code: int) -> list[str]:
    """StringMatches patterns finding a container's ``"ExitCode":<code>`` in a stopped task's
    JSON, compact (as Step Functions writes the Cause) or spaced, followed by , or }: 4 never
    matches 40."""
    return [f'*"ExitCode"{colon}{code}{end}*' for colon in (":", ": ") for end in (",", "}")]


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


def _run_task(
    command: str, timeout_s: int, *, fixed_size: bool = False, task_role: str | None = None
) -> dict[str, Any]:
    """An ECS Fargate task of the job image with the tier's size and the given command
    (``fixed_size``: the smallest tier's size whatever the batch, for jobs without Spark; with
    ``task_role``, under that role instead of the task definition's, validation's)."""
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
                        ],
                    }
                ],
            },
        },
        "Retry": _retry(TRANSIENT_ECS_ERRORS, attempts=3, interval_s=10),
    }
    if fixed_size:
        smallest = TIERS[0]
        overrides = task["Parameters"]["Overrides"]
        overrides.pop("Cpu.$")
        overrides.pop("Memory.$")
        overrides["Cpu"] = str(smallest.cpu)
        overrides["Memory"] = str(smallest.memory_mib)
        overrides["EphemeralStorage"] = {"SizeInGiB": smallest.ephemeral_storage_gib}
    if task_role is not None:
        task["Parameters"]["Overrides"]["TaskRoleArn"] = task_role
    return task


def _choice_all(conditions: list[dict[str, Any]], next_state: str, *, default: str) -> dict:
    """A Choice going to ``next_state`` when every condition holds, else to ``default``."""
    return {
        "Type": "Choice",
        "Choices": [{"And": conditions, "Next": next_state}],
        "Default": default,
    }


def _prefix_of(root: str) -> str:
    """The batch's folder under ``root`` as an s3:// URI, for the notices."""
    return f"States.Format('s3://${{DataBucket}}/{root}/{{}}/', $.batch_id)"


def _custody_note(root: str, *, moved: bool, extra: dict[str, Any] | None = None) -> dict:
    """Where the batch's files are, in the notice: ``$.notice.custody``."""
    note: dict[str, Any] = {"moved": moved, "files.$": _prefix_of(root)}
    if root == REJECTED:
        note["reason.$"] = (
            f"States.Format('s3://${{DataBucket}}/{REJECTED}/{{}}/{REASON_FILE}', $.batch_id)"
        )
    if root == INCOMING:
        note["replay.$"] = f"States.Format('{REPLAY_COMMAND} {{}}', $.batch_id)"
    return note | (extra or {})


def _move_task(
    destination: str, stage: str | None, next_state: str, *, on_error: str
) -> dict[str, Any]:
    """``ecom-pipeline move-batch`` as a task of the smallest size under the custody role;
    idempotent, so retried on any task failure, then on_error with ``$.custody_error``."""
    command = f"States.Array('move-batch', '--batch-id', $.batch_id, '--to', '{destination}'"
    command += f", '--stage', '{stage}')" if stage else ")"
    move = _run_task(command, MOVE_TIMEOUT_S, fixed_size=True, task_role=CUSTODY_TASK_ROLE)
    move["Retry"] += _retry(["States.TaskFailed"], attempts=2, interval_s=2)
    move.update(
        {
            "ResultPath": None,
            "Catch": [
                {"ErrorEquals": ["States.ALL"], "ResultPath": "$.custody_error", "Next": on_error}
            ],
            "Next": next_state,
        }
    )
    return move


def _move_states(
    prefix: str, destination: str, stage: str | None, next_state: str
) -> dict[str, dict[str, Any]]:
    """Run ``ecom-pipeline move-batch`` (idempotent, so retried on any task failure), then
    record in the notice where the files are: moved, or still in incoming/ with the error."""
    move = _move_task(destination, stage, f"{prefix}FilesMoved", on_error=f"{prefix}FilesKept")
    root = ARCHIVE if destination == "archive" else REJECTED
    return {
        f"{prefix}MoveFiles": move,
        f"{prefix}FilesMoved": {
            "Type": "Pass",
            "Parameters": _custody_note(root, moved=True),
            "ResultPath": "$.notice.custody",
            "Next": next_state,
        },
        # Nothing is lost: each file is in incoming/ or, already moved, in its destination.
        f"{prefix}FilesKept": {
            "Type": "Pass",
            "Parameters": _custody_note(
                INCOMING,
                moved=False,
                extra={
                    "error.$": "$.custody_error",
                    "partly_moved_to.$": _prefix_of(root),
                },
            ),
            "ResultPath": "$.notice.custody",
            "Next": next_state,
        },
    }


def _kept_for_replay(name: str, next_state: str) -> dict[str, Any]:
    """Not the data's fault: the files stay in incoming/ and the notice says how to replay."""
    return {
        name: {
            "Type": "Pass",
            "Parameters": _custody_note(INCOMING, moved=False),
            "ResultPath": "$.notice.custody",
            "Next": next_state,
        }
    }


def _archive_states() -> dict[str, dict[str, Any]]:
    """After the KPIs are written: move the files to archive/, then the success notice. If the
    move fails the KPIs stand, but the batch ends FAILED with a notice saying where its files
    are, so nothing ends silently half-done (a replay re-runs the idempotent KPI job and
    finishes the archive)."""
    move = _move_task("archive", None, "ArchivedFiles", on_error="ArchiveFailureNotice")
    return {
        "ArchiveFiles": move,
        "ArchivedFiles": {
            "Type": "Pass",
            "Parameters": _custody_note(ARCHIVE, moved=True),
            "ResultPath": "$.notice.custody",
            "Next": "PublishSuccess",
        },
        "ArchiveFailureNotice": {
            "Type": "Pass",
            "Parameters": {
                "status": "FAILED",
                "stage": "archive",
                "batch_id.$": "$.batch_id",
                "execution_id.$": "$$.Execution.Id",
                "kpis_written": True,
                "error.$": "$.custody_error",
                "custody": _custody_note(
                    INCOMING, moved=False, extra={"partly_moved_to.$": _prefix_of(ARCHIVE)}
                ),
            },
            "ResultPath": "$.notice",
            "Next": "PublishArchiveFailure",
        },
        "PublishArchiveFailure": _publish("$.notice", "ArchiveFailed"),
    }


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
        ),
        "Retry": _retry(TRANSIENT_EMR_ERRORS, attempts=3, interval_s=10),
    }


def _route(ecs_state: str, emr_state: str) -> dict[str, Any]:
    """Run the job where the plan's route says: EMR Serverless, else (Default) ECS Fargate."""
    return {
        "Type": "Choice",
        "Choices": [{"Variable": "$.route", "StringEquals": EMR_ROUTE, "Next": emr_state}],
        "Default": ecs_state,
    }


def _state_name(dataset: str) -> str:
    return "".join(part.title() for part in dataset.split("_"))


def _validation_branch(dataset: str) -> dict[str, Any]:
    name = _state_name(dataset)
    arguments = f"States.Array('validate', '--batch-id', $.batch_id, '--dataset', '{dataset}')"
    validate = _run_task(arguments, VALIDATION_TIMEOUT_S)
    validate_on_emr = _emr_job_run(
        "validate", arguments, f"States.Format('validate-{dataset}-{{}}', $.batch_id)"
    )
    for task in (validate, validate_on_emr):
        # Either way a job that ran and exited non-zero is States.TaskFailed: read its result.
        task.update(
            {
                "ResultSelector": {"dataset": dataset, "status": "PASSED"},
                "Catch": [
                    {
                        "ErrorEquals": ["States.TaskFailed"],
                        "ResultPath": "$.error",
                        "Next": f"Read{name}Result",
                    },
                    {
                        "ErrorEquals": ["States.ALL"],
                        "ResultPath": "$.error",
                        "Next": f"{name}Errored",
                    },
                ],
                "End": True,
            }
        )
    return {
        "StartAt": f"Has{name}",
        "States": {
            f"Has{name}": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Variable": f"$.datasets.{dataset}.present",
                        "BooleanEquals": True,
                        "Next": f"Route{name}",
                    }
                ],
                "Default": f"Skip{name}",
            },
            f"Route{name}": _route(f"Validate{name}", f"Validate{name}OnEmr"),
            f"Skip{name}": {
                "Type": "Pass",
                "Result": {"dataset": dataset, "status": "SKIPPED"},
                "End": True,
            },
            f"Validate{name}": validate,
            f"Validate{name}OnEmr": validate_on_emr,
            # The container exited non-zero: its result file says which rules failed.
            f"Read{name}Result": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
                "TimeoutSeconds": S3_TIMEOUT_S,
                "Parameters": {
                    "Bucket": "${DataBucket}",
                    "Key.$": f"States.Format('{RESULTS}/{{}}/{dataset}.json', $.batch_id)",
                },
                "ResultSelector": {
                    "dataset": dataset,
                    "status": "FAILED",
                    "result.$": "States.StringToJson($.Body)",
                },
                "Retry": _retry(TRANSIENT_AWS_ERRORS, attempts=3, interval_s=2),
                "Catch": [
                    {
                        "ErrorEquals": ["States.ALL"],
                        "ResultPath": "$.result_error",
                        "Next": f"{name}Errored",
                    }
                ],
                "End": True,
            },
            # No result file: the task did not start or crashed before validating.
            f"{name}Errored": {
                "Type": "Pass",
                "Parameters": {"dataset": dataset, "status": "ERROR", "error.$": "$.error"},
                "End": True,
            },
        },
    }


def _publish(notice_path: str, next_state: str) -> dict[str, Any]:
    return {
        "Type": "Task",
        "Resource": "arn:aws:states:::sns:publish",
        "TimeoutSeconds": S3_TIMEOUT_S,
        "Parameters": {
            "TopicArn": "${NotificationTopicArn}",
            "Subject.$": f"States.Format('ecom-pipeline {{}}: batch {{}}', {notice_path}.status, "
            f"{notice_path}.batch_id)",
            "Message.$": f"States.JsonToString({notice_path})",
        },
        "Retry": _retry(TRANSIENT_AWS_ERRORS, attempts=3, interval_s=2),
        # Nobody can be told: end FAILED so the execution's status shows it.
        "Catch": [{"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "NoticeFailed"}],
        "ResultPath": None,
        "Next": next_state,
    }


def build_definition() -> dict[str, Any]:
    """The state machine, with ${Placeholders} for the deployment's resources."""
    branches = [_validation_branch(d) for d in DATASET_ORDER]
    kpi_arguments = (
        "States.Array('compute-kpis', '--batch-id', $.batch_id, '--received-at', $.received_at)"
    )
    # the KPI job's own role: the tables, the lock, curated/ and dashboard/ (validation's role,
    # the task definition's, reaches none of them)
    kpis = _run_task(kpi_arguments, KPI_TIMEOUT_S, task_role="${KpiTaskRoleArn}")
    kpis_on_emr = _emr_job_run(
        "compute-kpis", kpi_arguments, "States.Format('compute-kpis-{}', $.batch_id)"
    )
    fail_kpis = {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": "KpiFailureNotice"}
    # On ECS the exit code tells a retryable failure (4) from the rest; an EMR job run's failure
    # carries no exit code, so it goes straight to the notice (a replay re-runs the batch).
    kpis["Catch"] = [
        {
            "ErrorEquals": ["States.TaskFailed"],
            "ResultPath": "$.error",
            "Next": "KpiFailureHasCause",
        },
        fail_kpis,
    ]
    kpis_on_emr["Catch"] = [fail_kpis]
    for task in (kpis, kpis_on_emr):
        task.update({"ResultPath": None, "Next": "ReadKpiReport"})
    kpi_retry_states = {
        "StartKpis": {
            "Type": "Pass",
            "Result": {"attempt": 1},
            "ResultPath": "$.kpi_attempt",
            "Next": "RouteKpis",
        },
        "RouteKpis": _route("ComputeKpis", "ComputeKpisOnEmr"),
        "ComputeKpis": kpis,
        "ComputeKpisOnEmr": kpis_on_emr,
        # The container ran and exited non-zero: the Cause is the stopped task as JSON text.
        # Choice states read it with string patterns, because a Pass state parsing it could not
        # Catch a Cause that is not JSON and the execution would end without a notice.
        "KpiFailureHasCause": _choice_all(
            [
                {"Variable": "$.error.Cause", "IsPresent": True},
                {"Variable": "$.error.Cause", "IsString": True},
            ],
            "KpiRetryable",
            default="KpiFailureNotice",
        ),
        "KpiRetryable": {
            "Type": "Choice",
            "Choices": [
                {
                    "And": [
                        {
                            "Or": [
                                {"Variable": "$.error.Cause", "StringMatches": pattern}
                                for pattern in _exit_code_patterns(KPI_RETRYABLE_EXIT_CODE)
                            ]
                        },
                        {
                            "Variable": "$.kpi_attempt.attempt",
                            "NumericLessThan": KPI_MAX_ATTEMPTS,
                        },
                    ],
                    "Next": "WaitBeforeKpiRetry",
                }
            ],
            "Default": "KpiFailureNotice",
        },
        # the plan's wait (orchestration.KPI_RETRY_WAIT_S unless the deployment sets another)
        "WaitBeforeKpiRetry": {
            "Type": "Wait",
            "SecondsPath": "$.kpi_retry_wait_s",
            "Next": "CountKpiAttempt",
        },
        "CountKpiAttempt": {
            "Type": "Pass",
            "Parameters": {"attempt.$": "States.MathAdd($.kpi_attempt.attempt, 1)"},
            "ResultPath": "$.kpi_attempt",
            "Next": "ComputeKpis",
        },
    }
    return {
        "Comment": "ecom-pipeline: validate the batch's datasets in parallel, then compute KPIs. "
        "Generated by ecom_pipeline.pipeline.asl; DefinitionSubstitutions fills the placeholders.",
        "StartAt": "CheckIntake",
        "States": {
            "CheckIntake": {
                "Type": "Pass",
                "Parameters": {"unrecognised.$": "States.ArrayLength($.unrecognised_files)"},
                "ResultPath": "$.intake",
                "Next": "IntakeAccepted",
            },
            # A file whose name fits no dataset would be silently left out: refuse the batch.
            "IntakeAccepted": {
                "Type": "Choice",
                "Choices": [
                    {
                        "Variable": "$.intake.unrecognised",
                        "NumericEquals": 0,
                        "Next": "ValidateDatasets",
                    }
                ],
                "Default": "IntakeFailureNotice",
            },
            "IntakeFailureNotice": {
                "Type": "Pass",
                "Parameters": {
                    "status": "FAILED",
                    "stage": "intake",
                    "batch_id.$": "$.batch_id",
                    "execution_id.$": "$$.Execution.Id",
                    "rule": INTAKE_RULE,
                    "error": "files whose names fit no dataset (expected products*.csv, "
                    "orders*.csv, order_items*.csv)",
                    "unrecognised_files.$": "$.unrecognised_files",
                },
                "ResultPath": "$.notice",
                "Next": "IntakeMoveFiles",
            },
            **_move_states("Intake", "rejected", "intake", "PublishIntakeFailure"),
            "PublishIntakeFailure": _publish("$.notice", "IntakeRejected"),
            "IntakeRejected": {
                "Type": "Fail",
                "Error": "Intake.Rejected",
                "Cause": "The batch holds files that fit no dataset; the SNS notice lists them.",
            },
            "ValidateDatasets": {
                "Type": "Parallel",
                "Branches": branches,
                "ResultPath": "$.validations",
                "Catch": [
                    {
                        "ErrorEquals": ["States.ALL"],
                        "ResultPath": "$.error",
                        "Next": "ValidationsErrored",
                    }
                ],
                "Next": "SummariseValidations",
            },
            # The Parallel state itself failed: no branch results to report.
            "ValidationsErrored": {
                "Type": "Pass",
                "Result": [],
                "ResultPath": "$.validations",
                "Next": "ValidationFailureNotice",
            },
            # Branch results are a list; a Choice reads named fields (and moto's interpreter
            # reads an indexed path as a list), so count outcomes with intrinsics first.
            "SummariseValidations": {
                "Type": "Pass",
                "Parameters": {
                    "failed.$": "States.ArrayContains($.validations[*].status, 'FAILED')",
                    "errored.$": "States.ArrayContains($.validations[*].status, 'ERROR')",
                    "validated.$": "States.ArrayContains($.validations[*].status, 'PASSED')",
                },
                "ResultPath": "$.summary",
                "Next": "AllDatasetsPassed",
            },
            "AllDatasetsPassed": {
                "Type": "Choice",
                "Choices": [
                    {
                        "And": [
                            {"Variable": "$.summary.failed", "BooleanEquals": False},
                            {"Variable": "$.summary.errored", "BooleanEquals": False},
                            {"Variable": "$.summary.validated", "BooleanEquals": True},
                        ],
                        "Next": "StartKpis",
                    }
                ],
                "Default": "ValidationFailureNotice",
            },
            "ValidationFailureNotice": {
                "Type": "Pass",
                "Parameters": {
                    "status": "FAILED",
                    "stage": "validation",
                    "batch_id.$": "$.batch_id",
                    "execution_id.$": "$$.Execution.Id",
                    "validations.$": "$.validations",
                    "data_docs_index": "s3://${DataBucket}/data-docs/index.html",
                },
                "ResultPath": "$.notice",
                "Next": "RejectedByValidation",
            },
            # A rule failed: the data's fault, the files go to rejected/. Only errors (a task
            # crashed, AWS failed): they stay in incoming/ to be replayed.
            "RejectedByValidation": _choice_all(
                [
                    {"Variable": "$.summary.failed", "IsPresent": True},
                    {"Variable": "$.summary.failed", "BooleanEquals": True},
                ],
                "ValidationMoveFiles",
                default="ValidationKeptForReplay",
            ),
            **_move_states("Validation", "rejected", "validation", "PublishValidationFailure"),
            **_kept_for_replay("ValidationKeptForReplay", "PublishValidationFailure"),
            "PublishValidationFailure": _publish("$.notice", "ValidationFailed"),
            "ValidationFailed": {
                "Type": "Fail",
                "Error": "Validation.Failed",
                "Cause": "The batch broke validation rules; the SNS notice lists them.",
            },
            **kpi_retry_states,
            "ReadKpiReport": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:s3:getObject",
                "TimeoutSeconds": S3_TIMEOUT_S,
                "Parameters": {
                    "Bucket": "${DataBucket}",
                    "Key.$": f"States.Format('{RESULTS}/{{}}/kpis.json', $.batch_id)",
                },
                "ResultSelector": {"report.$": "States.StringToJson($.Body)"},
                "ResultPath": "$.kpis",
                "Retry": _retry(TRANSIENT_AWS_ERRORS, attempts=3, interval_s=2),
                "Catch": [
                    {
                        "ErrorEquals": ["States.ALL"],
                        "ResultPath": "$.error",
                        "Next": "KpiFailureNotice",
                    }
                ],
                "Next": "SuccessNotice",
            },
            "SuccessNotice": {
                "Type": "Pass",
                "Parameters": {
                    "status": "SUCCEEDED",
                    "batch_id.$": "$.batch_id",
                    "execution_id.$": "$$.Execution.Id",
                    "received_at.$": "$.received_at",
                    "rows_accepted.$": "$.kpis.report.rows_accepted",
                    "dates_recomputed.$": "$.kpis.report.dates_recomputed",
                    "duration_s.$": "$.kpis.report.batch_duration_s",
                    "kpi_job_duration_s.$": "$.kpis.report.duration_s",
                    "validations.$": "$.validations",
                    "data_docs_index": "s3://${DataBucket}/data-docs/index.html",
                },
                "ResultPath": "$.notice",
                "Next": "ArchiveFiles",
            },
            **_archive_states(),
            "PublishSuccess": _publish("$.notice", "Done"),
            "Done": {"Type": "Succeed"},
            "KpiFailureNotice": {
                "Type": "Pass",
                "Parameters": {
                    "status": "FAILED",
                    "stage": "kpis",
                    "batch_id.$": "$.batch_id",
                    "execution_id.$": "$$.Execution.Id",
                    "error.$": "$.error",
                },
                "ResultPath": "$.notice",
                "Next": "KpiKeptForReplay",
            },
            # A crashed or killed KPI job is not the data's fault: keep the batch replayable.
            **_kept_for_replay("KpiKeptForReplay", "PublishKpiFailure"),
            "PublishKpiFailure": _publish("$.notice", "KpiFailed"),
            "NoticeFailed": {
                "Type": "Fail",
                "Error": "Notice.Failed",
                "Cause": "The SNS notice could not be published.",
            },
            "KpiFailed": {
                "Type": "Fail",
                "Error": "Kpi.Failed",
                "Cause": "The KPI job failed; the SNS notice has the error.",
            },
            "ArchiveFailed": {
                "Type": "Fail",
                "Error": "Archive.Failed",
                "Cause": "The KPIs are written but the files could not all be archived; they "
                "are in incoming/ (or archive/); the SNS notice says how to replay.",
            },
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
