"""The state machine definition: generated file in step, statelint-clean, robust by construction,
and the local ECS stand-in applying overrides as ECS does."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ecom_pipeline.core.contract import DATASET_ORDER
from ecom_pipeline.local.ecs_stand_in import run_overridden_task
from ecom_pipeline.pipeline.asl import (
    CONTAINER_NAME,
    KPI_MAX_ATTEMPTS,
    PLACEHOLDERS,
    build_definition,
    definition_text,
    substitute,
)

ASL_FILE = Path(__file__).resolve().parents[2] / "stepfunctions" / "pipeline.asl.json"


def _states(definition: dict) -> dict[str, dict]:
    """Every state, including those inside Parallel branches."""
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        for branch in state.get("Branches", []):
            found.update(_states(branch))
    return found


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


def test_parallel_validates_each_dataset_with_the_tier_overrides():
    parallel = build_definition()["States"]["ValidateDatasets"]
    assert parallel["Type"] == "Parallel"
    assert len(parallel["Branches"]) == len(DATASET_ORDER)
    for dataset, branch in zip(DATASET_ORDER, parallel["Branches"], strict=True):
        task = next(
            s
            for s in branch["States"].values()
            if s.get("Resource", "").startswith("arn:aws:states:::ecs:runTask.sync")
        )
        overrides = task["Parameters"]["Overrides"]
        assert overrides["Cpu.$"] == "$.tier.cpu"
        assert overrides["Memory.$"] == "$.tier.memory"
        container = overrides["ContainerOverrides"][0]
        assert container["Name"] == "${ContainerName}"
        assert f"'--dataset', '{dataset}'" in container["Command.$"]
        names = {e["Name"] for e in container["Environment"]}
        assert {"SPARK_DRIVER_MEMORY", "SPARK_SHUFFLE_PARTITIONS", "SPARK_MASTER"} <= names


def test_failures_end_in_fail_states_after_a_notice():
    states = build_definition()["States"]
    for publish, fail in (
        ("PublishValidationFailure", "ValidationFailed"),
        ("PublishKpiFailure", "KpiFailed"),
        ("PublishIntakeFailure", "IntakeRejected"),
    ):
        assert states[publish]["Resource"] == "arn:aws:states:::sns:publish"
        assert states[publish]["Next"] == fail
        assert states[fail]["Type"] == "Fail"
    # a KPI task that exited non-zero goes through the exit-code check, anything else straight
    # to the notice; the check ends at the notice unless the code is retryable (4)
    catches = {c["ErrorEquals"][0]: c["Next"] for c in states["ComputeKpis"]["Catch"]}
    assert catches == {
        "States.TaskFailed": "KpiFailureHasCause",
        "States.ALL": "KpiFailureNotice",
    }
    assert states["KpiFailureHasCause"]["Default"] == "KpiFailureNotice"
    assert states["KpiFailureHasCause"]["Choices"][0]["Next"] == "KpiRetryable"
    assert states["KpiRetryable"]["Default"] == "KpiFailureNotice"
    assert states["KpiRetryable"]["Choices"][0]["Next"] == "WaitBeforeKpiRetry"
    assert states["CountKpiAttempt"]["Next"] == "ComputeKpis"


def test_the_retry_check_finds_exit_code_4_in_the_stopped_task_only():
    """StringMatches has one wildcard, *: fnmatch with these patterns (no [ or ?) behaves alike."""
    rule = build_definition()["States"]["KpiRetryable"]["Choices"][0]["And"][0]["Or"]
    patterns = [r["StringMatches"] for r in rule]

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
    counting = build_definition()["States"]["KpiRetryable"]["Choices"][0]["And"][1]
    assert counting == {"Variable": "$.kpi_attempt.attempt", "NumericLessThan": KPI_MAX_ATTEMPTS}


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
