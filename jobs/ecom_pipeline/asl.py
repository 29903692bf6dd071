"""Generates the state machine definition, ``stepfunctions/pipeline.asl.json``.

The datasets come from the contract, so the Parallel state has one branch per dataset without
hand-copied JSON. The file keeps ``${Placeholders}`` that CloudFormation fills through
``DefinitionSubstitutions`` (and run-local fills the same way). Regenerate with
``python -m ecom_pipeline.asl > stepfunctions/pipeline.asl.json``; a test keeps them in step.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from ecom_pipeline.contract import DATASET_ORDER
from ecom_pipeline.storage import RESULTS

PLACEHOLDERS: tuple[str, ...] = (
    "ClusterArn",
    "JobTaskDefinitionArn",
    "ContainerName",
    "SubnetA",
    "SubnetB",
    "SecurityGroupId",
    "NotificationTopicArn",
    "DataBucket",
    "KpiTaskRoleArn",
)
# The job container's name in the task definition (infra/template.yaml uses the same).
CONTAINER_NAME = "pipeline"
VALIDATION_TIMEOUT_S = 3600
KPI_TIMEOUT_S = 7200
S3_TIMEOUT_S = 60

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
# The KPI container exiting with ExitCode.DEPENDENCY (4: DynamoDB throttling that outlasted its
# retries, the curated-store lock held too long by another run, an AWS call failing) is retried:
# the job is idempotent and recovers a half-done run. ECS reports every non-zero exit as
# States.TaskFailed, so the state machine reads the exit code from the error's Cause (the
# stopped task) and decides.
KPI_RETRYABLE_EXIT_CODE = 4
KPI_MAX_ATTEMPTS = 3
KPI_RETRY_WAIT_S = 15


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


def _run_task(command: str, timeout_s: int, task_role: str | None = None) -> dict[str, Any]:
    """An ECS Fargate task of the job image with the tier's size and the given command; with
    ``task_role``, under that role instead of the task definition's (validation's)."""
    task = {
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
    if task_role is not None:
        task["Parameters"]["Overrides"]["TaskRoleArn"] = task_role
    return task


def _state_name(dataset: str) -> str:
    return "".join(part.title() for part in dataset.split("_"))


def _validation_branch(dataset: str) -> dict[str, Any]:
    name = _state_name(dataset)
    validate = _run_task(
        f"States.Array('validate', '--batch-id', $.batch_id, '--dataset', '{dataset}')",
        VALIDATION_TIMEOUT_S,
    )
    validate.update(
        {
            "ResultSelector": {"dataset": dataset, "status": "PASSED"},
            "Catch": [
                {
                    "ErrorEquals": ["States.TaskFailed"],
                    "ResultPath": "$.error",
                    "Next": f"Read{name}Result",
                },
                {"ErrorEquals": ["States.ALL"], "ResultPath": "$.error", "Next": f"{name}Errored"},
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
                        "Next": f"Validate{name}",
                    }
                ],
                "Default": f"Skip{name}",
            },
            f"Skip{name}": {
                "Type": "Pass",
                "Result": {"dataset": dataset, "status": "SKIPPED"},
                "End": True,
            },
            f"Validate{name}": validate,
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
    kpis = _run_task(
        "States.Array('compute-kpis', '--batch-id', $.batch_id, '--received-at', $.received_at)",
        KPI_TIMEOUT_S,
        # the KPI job's own role: the tables, the lock, curated/ and dashboard/ (validation's
        # role, the task definition's, reaches none of them)
        task_role="${KpiTaskRoleArn}",
    )
    kpis.update(
        {
            "ResultPath": None,
            "Catch": [
                {
                    "ErrorEquals": ["States.TaskFailed"],
                    "ResultPath": "$.error",
                    "Next": "ReadKpiExitCode",
                },
                {
                    "ErrorEquals": ["States.ALL"],
                    "ResultPath": "$.error",
                    "Next": "KpiFailureNotice",
                },
            ],
            "Next": "ReadKpiReport",
        }
    )
    kpi_retry_states = {
        "StartKpis": {
            "Type": "Pass",
            "Result": {"attempt": 1},
            "ResultPath": "$.kpi_attempt",
            "Next": "ComputeKpis",
        },
        "ComputeKpis": kpis,
        # The container ran and exited non-zero: the Cause is the stopped task, as JSON.
        "ReadKpiExitCode": {
            "Type": "Pass",
            "Parameters": {
                "task.$": "States.StringToJson($.error.Cause)",
                "next_attempt.$": "States.MathAdd($.kpi_attempt.attempt, 1)",
            },
            "ResultPath": "$.kpi_retry",
            "Next": "SummariseKpiExit",
        },
        "SummariseKpiExit": {
            "Type": "Pass",
            "Parameters": {
                "retryable.$": "States.ArrayContains($.kpi_retry.task.Containers[*].ExitCode, "
                f"{KPI_RETRYABLE_EXIT_CODE})",
                "next_attempt.$": "$.kpi_retry.next_attempt",
            },
            "ResultPath": "$.kpi_retry",
            "Next": "KpiRetryable",
        },
        "KpiRetryable": {
            "Type": "Choice",
            "Choices": [
                {
                    "And": [
                        {"Variable": "$.kpi_retry.retryable", "BooleanEquals": True},
                        {
                            "Variable": "$.kpi_retry.next_attempt",
                            "NumericLessThanEquals": KPI_MAX_ATTEMPTS,
                        },
                    ],
                    "Next": "WaitBeforeKpiRetry",
                }
            ],
            "Default": "KpiFailureNotice",
        },
        "WaitBeforeKpiRetry": {
            "Type": "Wait",
            "Seconds": KPI_RETRY_WAIT_S,
            "Next": "CountKpiAttempt",
        },
        "CountKpiAttempt": {
            "Type": "Pass",
            "Parameters": {"attempt.$": "$.kpi_retry.next_attempt"},
            "ResultPath": "$.kpi_attempt",
            "Next": "ComputeKpis",
        },
    }
    return {
        "Comment": "ecom-pipeline: validate the batch's datasets in parallel, then compute KPIs. "
        "Generated by ecom_pipeline.asl; placeholders are filled by DefinitionSubstitutions.",
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
                    "error": "files whose names fit no dataset (expected products*.csv, "
                    "orders*.csv, order_items*.csv)",
                    "unrecognised_files.$": "$.unrecognised_files",
                },
                "ResultPath": "$.notice",
                "Next": "PublishIntakeFailure",
            },
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
                        "Next": "ValidationFailureNotice",
                    }
                ],
                "Next": "SummariseValidations",
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
                "Next": "PublishValidationFailure",
            },
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
                "Next": "PublishSuccess",
            },
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
                "Next": "PublishKpiFailure",
            },
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
