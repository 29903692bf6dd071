"""The state machine definition: generated file in step, statelint-clean, robust by construction,
and the local ECS stand-in applying overrides as ECS does."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecom_pipeline.core.contract import DATASET_ORDER
from ecom_pipeline.core.planning import MAX_BATCH_LABEL, plan_execution
from ecom_pipeline.local.ecs_stand_in import run_job_run, run_overridden_task
from ecom_pipeline.pipeline.asl import (
    CONTAINER_NAME,
    KPI_MAX_ATTEMPTS,
    PLACEHOLDERS,
    TRANSIENT_SNS_ERRORS,
    build_definition,
    definition_text,
    substitute,
)

ASL_FILE = Path(__file__).resolve().parents[2] / "stepfunctions" / "pipeline.asl.json"


def _states(definition: dict) -> dict[str, dict]:
    """Every state, including those a Map runs for each item."""
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        if "ItemProcessor" in state:
            found.update(_states(state["ItemProcessor"]))
    return found


def _targets(state: dict) -> list[str]:
    """Every state ``state`` can go to."""
    return [
        target
        for target in [state.get("Next"), state.get("Default")]
        + [c.get("Next") for c in state.get("Choices", [])]
        + [c["Next"] for c in state.get("Catch", [])]
        if target
    ]


def _statelint(path: Path) -> subprocess.CompletedProcess:
    statelint = shutil.which("statelint") or str(Path(sys.executable).parent / "statelint")
    return subprocess.run([statelint, str(path)], capture_output=True, text=True, check=False)


def test_committed_file_is_the_generated_definition():
    assert ASL_FILE.read_text(encoding="utf-8") == definition_text(), (
        "regenerate: python -m ecom_pipeline.pipeline.asl > stepfunctions/pipeline.asl.json"
    )


def test_statelint_accepts_the_definition():
    result = _statelint(ASL_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_statelint_would_catch_a_dangling_next(tmp_path):
    broken = build_definition()
    broken["States"]["AllDatasetsPassed"]["Default"] = "NoSuchState"
    path = tmp_path / "broken.asl.json"
    path.write_text(json.dumps(broken))
    result = _statelint(path)
    assert result.returncode != 0
    assert "NoSuchState" in result.stdout + result.stderr


def test_every_task_has_timeout_retry_with_jitter_and_catch():
    for name, state in _states(build_definition()).items():
        if state["Type"] != "Task":
            continue
        assert state["TimeoutSeconds"] > 0, name
        assert state["Retry"], name
        for retry in state["Retry"]:
            assert retry["BackoffRate"] > 1, name
            assert retry["JitterStrategy"] == "FULL", name
            assert "States.ALL" not in retry["ErrorEquals"], name
        assert state["Catch"], name


def test_every_choice_has_a_default():
    choices = [s for s in _states(build_definition()).values() if s["Type"] == "Choice"]
    assert choices
    assert all("Default" in s for s in choices)


def test_the_state_machine_is_small_enough_to_review():
    """One Map over the datasets and one tail, not a copy of the states per dataset."""
    assert len(_states(build_definition())) <= 31


def test_a_map_validates_each_dataset_of_the_contract_with_the_tier_overrides():
    states = build_definition()["States"]
    listed = states["Prepare"]["Parameters"]["datasets"]
    assert listed == [
        {"dataset": name, "present.$": f"$.datasets.{name}.present"} for name in DATASET_ORDER
    ]
    validate = states["ValidateDatasets"]
    assert validate["Type"] == "Map"
    assert validate["ItemsPath"] == "$.run.datasets"
    assert validate["ItemSelector"]["dataset.$"] == "$$.Map.Item.Value.dataset"
    assert validate["ItemSelector"]["execution_id.$"] == "$$.Execution.Id"
    task = validate["ItemProcessor"]["States"]["Validate"]
    assert task["Resource"] == "arn:aws:states:::ecs:runTask.sync"
    overrides = task["Parameters"]["Overrides"]
    assert overrides["Cpu.$"] == "$.tier.cpu"
    assert overrides["Memory.$"] == "$.tier.memory"
    container = overrides["ContainerOverrides"][0]
    assert container["Name"] == "${ContainerName}"
    assert "'--dataset', $.dataset" in container["Command.$"]
    names = {e["Name"] for e in container["Environment"]}
    assert {"SPARK_DRIVER_MEMORY", "SPARK_SHUFFLE_PARTITIONS", "SPARK_MASTER"} <= names
    assert "EXECUTION_ID" in names


def test_a_rule_failure_needs_this_executions_result_and_exit_code_3():
    """A job that exited non-zero broke rules only if its result is this execution's, says
    success false, and (on ECS) the task exited 3; anything else is an error, kept for replay."""
    iteration = build_definition()["States"]["ValidateDatasets"]["ItemProcessor"]["States"]
    for task in ("Validate", "ValidateOnEmr"):
        catches = {c["ErrorEquals"][0]: c["Next"] for c in iteration[task]["Catch"]}
        assert catches == {"States.TaskFailed": "ReadResult", "States.ALL": "Errored"}
    assert [c["Next"] for c in iteration["ReadResult"]["Catch"]] == ["Errored"]
    judge = iteration["JudgeResult"]
    assert judge["Default"] == "Errored"
    ((rule_failure),) = judge["Choices"]
    assert rule_failure["Next"] == "RulesFailed"
    rules = rule_failure["And"]
    assert {"Variable": "$.read.result.success", "BooleanEquals": False} in rules
    assert {
        "Variable": "$.read.result.execution_id",
        "StringEqualsPath": "$.execution_id",
    } in rules
    # the stopped ECS task, or the EMR job run's stateDetails, must show exit code 3
    patterns = [r["StringMatches"] for r in rules[-1]["And"][-1]["Or"]]
    for code, broke_rules in ((3, True), (1, False), (137, False), (33, False)):
        stopped_task = json.dumps({"Containers": [{"ExitCode": code}]}, separators=(",", ":"))
        job_run = json.dumps(
            {
                "State": "FAILED",
                "StateDetails": "Job failed, please check complete logs in configured logging "
                f"destination. ExitCode: {code}. Last few exceptions: ...",
            },
            separators=(",", ":"),
        )
        for cause in (stopped_task, job_run):
            assert any(fnmatch.fnmatchcase(cause, p) for p in patterns) is broke_rules, cause


def test_every_ending_goes_through_the_one_tail():
    """Each ending writes $.outcome; one task moves files, one publishes, one Fail ends a
    failed batch with the outcome's error (also when the notice cannot be published)."""
    states = build_definition()["States"]
    endings = {n: s for n, s in states.items() if s.get("ResultPath") == "$.outcome"}
    assert set(endings) == {
        "IntakeRefused",
        "RulesBroken",
        "ValidationErrored",
        "KpiFailed",
        "KpisWritten",
        "FilesNotMoved",
    }
    for name, state in endings.items():
        outcome = state["Parameters"]
        moves = "move.$" in outcome
        assert state["Next"] == ("MoveFiles" if moves else "ComposeNotice"), name
        assert "text.$" in outcome, name
        assert {"error", "cause"} <= set(outcome) or name == "FilesNotMoved", name
        if moves:
            assert outcome["notice"]["custody"]["moved"] is True, name
            assert outcome["if_not_moved"]["notice"]["custody"]["moved"] is False, name
        elif name != "FilesNotMoved":
            assert outcome["notice"]["custody"]["moved"] is False, name
            assert "replay.$" in outcome["notice"]["custody"], name
    everything = _states(build_definition()).values()
    publishes = [s for s in everything if s.get("Resource") == "arn:aws:states:::sns:publish"]
    assert publishes == [states["PublishNotice"]]
    moves = [s for s in everything if "$.outcome.move" in json.dumps(s.get("Parameters"))]
    assert moves == [states["MoveFiles"]]
    assert states["MoveFiles"]["Next"] == "ComposeNotice"
    assert states["MoveFiles"]["Catch"][0]["Next"] == "FilesNotMoved"
    assert states["FilesNotMoved"]["Next"] == "ComposeNotice"
    assert states["ComposeNotice"]["Next"] == "PublishNotice"
    assert states["PublishNotice"]["Next"] == "Ended"
    assert [c["Next"] for c in states["PublishNotice"]["Catch"]] == ["Failed"]
    assert states["Failed"] == {
        "Type": "Fail",
        "ErrorPath": "$.outcome.error",
        "CausePath": "$.outcome.cause",
    }
    fails = [n for n, s in states.items() if s["Type"] == "Fail"]
    assert fails == ["Failed"]
    # a KPI task that exited non-zero goes through the exit-code check, anything else straight
    # to its ending; the check ends there unless the code is retryable (4)
    catches = {c["ErrorEquals"][0]: c["Next"] for c in states["ComputeKpis"]["Catch"]}
    assert catches == {"States.TaskFailed": "KpiRetryable", "States.ALL": "KpiFailed"}
    assert states["KpiRetryable"]["Default"] == "KpiFailed"
    assert states["KpiRetryable"]["Choices"][0]["Next"] == "WaitBeforeKpiRetry"
    # a retry runs where the first attempt ran (the plan's route)
    assert states["CountKpiAttempt"]["Next"] == "ComputeKpisWhere"
    assert states["ComputeKpisWhere"]["Default"] == "ComputeKpis"
    assert [c["Next"] for c in states["ComputeKpisWhere"]["Choices"]] == ["ComputeKpisOnEmr"]


def test_every_state_is_reachable():
    definition = build_definition()
    for scope in [definition, definition["States"]["ValidateDatasets"]["ItemProcessor"]]:
        reached, todo = set(), [scope["StartAt"]]
        while todo:
            name = todo.pop()
            if name not in reached:
                reached.add(name)
                todo.extend(_targets(scope["States"][name]))
        assert reached == set(scope["States"])


def test_the_notice_has_a_text_for_people_and_json_for_programs():
    states = build_definition()["States"]
    publish = states["PublishNotice"]["Parameters"]
    assert publish["MessageStructure"] == "json"
    assert publish["Message.$"] == "States.JsonToString($.message)"
    bodies = states["ComposeNotice"]["Parameters"]
    assert bodies["default.$"] == bodies["email.$"] == "$.outcome.text"
    for protocol in ("sqs", "lambda", "https"):
        assert bodies[f"{protocol}.$"] == "States.JsonToString($.outcome.notice)"


def test_the_subject_stays_within_100_ascii_characters():
    """SNS refuses a subject over 100 characters or with non-ASCII ones: the subject carries
    the plan's batch label (bounded, ASCII) and the notice's status."""
    subject = build_definition()["States"]["PublishNotice"]["Parameters"]["Subject.$"]
    template, arguments = re.fullmatch(r"States\.Format\('([^']*)', (.*)\)", subject).groups()
    assert arguments.split(", ") == ["$.outcome.notice.status", "$.batch_label"]
    longest = template.replace("{}", "SUCCEEDED", 1).replace("{}", "x" * MAX_BATCH_LABEL, 1)
    assert len(longest) <= 100
    assert longest.isascii()
    label = plan_execution("b", "é" * 900, [("incoming/" + "é" * 900 + "/orders.csv", 1)])[
        "batch_label"
    ]
    assert len(label) <= MAX_BATCH_LABEL
    assert label.isascii()


def test_the_move_task_knows_its_run_whose_upload_it_settles():
    move = build_definition()["States"]["MoveFiles"]
    environment = move["Parameters"]["Overrides"]["ContainerOverrides"][0]["Environment"]
    assert {"Name": "EXECUTION_ID", "Value.$": "$$.Execution.Id"} in environment


SERVICE_OF_RESOURCE = {
    "arn:aws:states:::ecs:runTask.sync": "ECS",
    "arn:aws:states:::emr-serverless:startJobRun.sync": "EMRServerless",
    "arn:aws:states:::aws-sdk:s3:getObject": "S3",
    "arn:aws:states:::sns:publish": "SNS",
}


def test_retries_name_the_errors_of_the_tasks_own_service():
    """An S3 read does not retry on SNS's errors, nor a publish on S3's."""
    for name, state in _states(build_definition()).items():
        if state["Type"] != "Task":
            continue
        service = SERVICE_OF_RESOURCE[state["Resource"]]
        for retry in state["Retry"]:
            for error in retry["ErrorEquals"]:
                prefix = error.split(".", 1)[0]
                assert prefix in (service, "States"), (name, error)


def test_retried_sns_errors_are_the_sns_models():
    import botocore.session

    model = botocore.session.get_session().get_service_model("sns")
    for error in TRANSIENT_SNS_ERRORS:
        service, shape = error.split(".", 1)
        assert service == "States" or shape in model.shape_names, error


def test_the_retry_check_finds_exit_code_4_in_the_stopped_task_only():
    """StringMatches has one wildcard, *: fnmatch with these patterns (no [ or ?) behaves alike."""
    retryable_rule = build_definition()["States"]["KpiRetryable"]["Choices"][0]["And"]
    present, is_string, any_pattern = retryable_rule[0]["And"]
    assert present == {"Variable": "$.error.Cause", "IsPresent": True}
    assert is_string == {"Variable": "$.error.Cause", "IsString": True}
    patterns = [r["StringMatches"] for r in any_pattern["Or"]]

    def retryable(cause: str) -> bool:
        return any(fnmatch.fnmatchcase(cause, p) for p in patterns)

    def stopped(*codes: int, separators: tuple[str, str] = (",", ":")) -> str:
        containers = [{"Name": f"c{i}", "ExitCode": code} for i, code in enumerate(codes)]
        return json.dumps(
            {"Containers": containers, "LastStatus": "STOPPED"}, separators=separators
        )

    assert retryable(stopped(4))
    assert retryable(stopped(4, separators=(", ", ": ")))
    assert retryable(stopped(0, 4))
    assert not retryable(stopped(1))
    assert not retryable(stopped(40))
    assert not retryable(stopped(14))
    assert not retryable(stopped(137))
    assert not retryable("CannotStartContainerError: exit 4")
    # a failed EMR job run names its driver's exit code in its stateDetails
    emr = "Job failed, please check complete logs in configured logging destination. ExitCode: {}."
    assert retryable(emr.format(4) + " Last few exceptions: ...")
    assert not retryable(emr.format(1))
    assert not retryable(emr.format(40))
    assert not retryable(emr.format(137))
    counting = retryable_rule[1]
    assert counting == {"Variable": "$.run.kpi.attempt", "NumericLessThan": KPI_MAX_ATTEMPTS}


def test_substitute_fills_every_placeholder_and_refuses_gaps():
    values = {name: f"value-of-{name}" for name in PLACEHOLDERS}
    filled = substitute(definition_text(), values)
    assert "${" not in filled
    json.loads(filled)
    with pytest.raises(ValueError, match="ClusterArn"):
        substitute(definition_text(), {k: v for k, v in values.items() if k != "ClusterArn"})


def test_local_ecs_task_applies_overrides_like_ecs():
    task_definition = {
        "taskDefinitionArn": "arn:td",
        "cpu": "1024",
        "memory": "4096",
        "containerDefinitions": [
            {
                "name": CONTAINER_NAME,
                "command": ["--help"],
                "environment": [
                    {"name": "PIPELINE_BUCKET", "value": "b"},
                    {"name": "SPARK_MASTER", "value": "local[1]"},
                ],
            }
        ],
    }
    parameters = {
        "Cluster": "arn:cluster",
        "Overrides": {
            "Cpu": "2048",
            "Memory": "8192",
            "ContainerOverrides": [
                {
                    "Name": CONTAINER_NAME,
                    "Command": ["validate", "--batch-id", "b1", "--dataset", "orders"],
                    "Environment": [{"Name": "SPARK_MASTER", "Value": "local[2]"}],
                }
            ],
        },
    }
    calls = []

    def runner(command, environment):
        calls.append((command, environment))
        return 3

    task = run_overridden_task(task_definition, parameters, runner)
    assert calls == [
        (
            ["validate", "--batch-id", "b1", "--dataset", "orders"],
            {"PIPELINE_BUCKET": "b", "SPARK_MASTER": "local[2]"},
        )
    ]
    assert task["LastStatus"] == "STOPPED"
    assert task["Containers"][0]["ExitCode"] == 3
    assert (task["Cpu"], task["Memory"]) == ("2048", "8192")


def test_local_emr_job_run_runs_the_command_line_with_the_drivers_environment():
    """The stand-in runs what spark_driver.py would: the entry point's arguments, with the
    driver's environment from the Spark settings over the local deployment's, except what only
    EMR can honour (the packed venv's Python, direct I/O through EMRFS)."""
    parameters = {
        "ApplicationId": "app",
        "Name": "validate-orders-b1",
        "JobDriver": {
            "SparkSubmit": {
                "EntryPoint": "s3://artifacts/spark_driver.py",
                "EntryPointArguments": ["validate", "--batch-id", "b1", "--dataset", "orders"],
                "SparkSubmitParameters": "--conf spark.archives=s3://a/venv.tar.gz#environment "
                "--conf spark.emr-serverless.driverEnv.PYSPARK_PYTHON=./environment/bin/python "
                "--conf spark.emr-serverless.driverEnv.PIPELINE_BUCKET=bucket "
                "--conf spark.emr-serverless.driverEnv.PIPELINE_DATA_ROOT=s3://bucket "
                "--conf spark.emr-serverless.driverEnv.EXECUTION_ID=arn:states:x:execution:m:b1 "
                "--conf spark.executor.memory=13107m",
            }
        },
    }
    calls = []

    def runner(command, environment):
        calls.append((command, environment))
        return 3

    job_run = run_job_run(parameters, runner, {"AWS_ENDPOINT_URL": "http://127.0.0.1:5000"})
    assert calls == [
        (
            ["validate", "--batch-id", "b1", "--dataset", "orders"],
            {
                "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
                "PIPELINE_BUCKET": "bucket",
                "EXECUTION_ID": "arn:states:x:execution:m:b1",
            },
        )
    ]
    assert job_run["State"] == "FAILED"
    # worded as EMR Serverless words it: the state machine finds the exit code there
    assert "ExitCode: 3. " in job_run["StateDetails"]
    assert run_job_run(parameters, lambda *_: 0, {})["State"] == "SUCCESS"
