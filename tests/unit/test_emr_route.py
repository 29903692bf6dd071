"""The EMR Serverless route of the state machine, checked offline.

moto's Step Functions interpreter does not run it (it lists ``emr-serverless`` among the optimised
integrations it does not support); run-local's stand-in runs the job runs' commands
(tests/e2e/test_emr_route_local.py). Here the generated definition: every job has an EMR twin
reached only where the plan's route is EMR, the twin runs the same command line, has
TimeoutSeconds, Retry and Catch like the ECS task and leads to the same states, and its
Parameters, evaluated for a real plan, are a valid StartJobRun request according to botocore's
``emr-serverless`` model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator

from ecom_pipeline.adapters.storage import BucketStore, open_store
from ecom_pipeline.core.planning import plan_execution
from ecom_pipeline.core.settings import ENVIRONMENT, Settings
from ecom_pipeline.core.tiers import EMR_ROUTE, EMR_TIERS, GIB, TIERS
from ecom_pipeline.pipeline import asl, emr

ROOT = Path(__file__).resolve().parents[2]

EMR_RESOURCE = "arn:aws:states:::emr-serverless:startJobRun.sync"
ECS_RESOURCE = "arn:aws:states:::ecs:runTask.sync"


def _all_states(definition: dict) -> dict[str, dict]:
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        if "ItemProcessor" in state:
            found.update(_all_states(state["ItemProcessor"]))
    return found


@pytest.fixture(scope="module")
def states() -> dict[str, dict]:
    return _all_states(asl.build_definition())


def _job_pairs(states) -> list[tuple[str, str]]:
    """(ECS task, EMR task) of every job: the EMR twin is named after the ECS task."""
    pairs = []
    for name, state in states.items():
        if state.get("Resource") == EMR_RESOURCE:
            twin = name.removesuffix("OnEmr")
            assert states[twin]["Resource"] == ECS_RESOURCE
            pairs.append((twin, name))
    return pairs


def _requires_emr_route(rule: dict) -> bool:
    route = {"Variable": "$.route", "StringEquals": EMR_ROUTE, "Next": rule.get("Next")}
    return rule == route or {"Variable": "$.route", "StringEquals": EMR_ROUTE} in rule.get(
        "And", []
    )


EXECUTION_ARN = "arn:aws:states:eu-west-1:123456789012:execution:ecom-kpi:big"


def _input_of(emr_task: str, plan: dict[str, Any]) -> dict[str, Any]:
    """What the task sees: a validation the Map's item (one dataset of the plan), the KPI job
    the plan; with the execution's context (``$$``)."""
    data = dict(plan, **{"$$": {"Execution": {"Id": EXECUTION_ARN}}})
    if emr_task == "ValidateOnEmr":
        data |= {"dataset": "orders", "present": True, "execution_id": EXECUTION_ARN}
    return data


# --- A tiny evaluator of the two intrinsics the EMR tasks use ------------------------------------


def _arguments(text: str) -> list[str]:
    return [a.strip() for a in re.findall(r"'(?:[^'\\]|\\.)*'|[^,]+", text) if a.strip()]


def _value(argument: str, data: dict[str, Any]) -> Any:
    if argument.startswith("'"):
        return argument[1:-1]
    node: Any = data
    if argument.startswith("$$."):  # the context object
        node, argument = data["$$"], argument[1:]
    assert argument.startswith("$."), argument
    for part in argument[2:].split("."):
        node = node[part]
    return node


def evaluate(expression: str, data: dict[str, Any]) -> Any:
    """``$.path``, ``States.Array(...)`` or ``States.Format('...{}...', ...)`` on ``data``."""
    if expression.startswith(("$.", "$$.")):
        return _value(expression, data)
    function, inner = re.fullmatch(r"(States\.\w+)\((.*)\)", expression, re.S).groups()
    values = [_value(a, data) for a in _arguments(inner)]
    if function == "States.Array":
        return values
    assert function == "States.Format", function
    template, *rest = values
    assert template.count("{}") == len(rest)
    for value in rest:
        template = template.replace("{}", str(value), 1)
    return template


def resolve(parameters: Any, data: dict[str, Any]) -> Any:
    """Parameters as Step Functions sends them: ``.$`` fields evaluated against the input."""
    if isinstance(parameters, dict):
        resolved = {}
        for key, value in parameters.items():
            if key.endswith(".$"):
                resolved[key[:-2]] = evaluate(value, data)
            else:
                resolved[key] = resolve(value, data)
        return resolved
    if isinstance(parameters, list):
        return [resolve(item, data) for item in parameters]
    return parameters


def to_api_names(node: Any, key: str | None = None) -> Any:
    if isinstance(node, dict):
        if key == "Tags":
            return dict(node)
        return {k[0].lower() + k[1:]: to_api_names(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [to_api_names(item) for item in node]
    return node


SAMPLE_VALUES = {
    "EmrApplicationId": "00fabc123def4567",
    "EmrJobRoleArn": "arn:aws:iam::123456789012:role/ecom-kpi-EmrJobRole-ABC",
    "EmrKpiRoleArn": "arn:aws:iam::123456789012:role/ecom-kpi-EmrKpiRole-DEF",
    "EmrArtifactsUri": "s3://my-cfn-artifacts/ecom-kpi/emr/",
    "EmrLogUri": "s3://ecom-kpi-data-123456789012-eu-west-1/emr-logs/",
    "EmrLogGroup": "/aws/emr-serverless/ecom-kpi-jobs",
    "CategoryTable": "ecom-kpi-CategoryKpiTable-1",
    "OrderTable": "ecom-kpi-OrderKpiTable-1",
    "Region": "eu-west-1",
    "DataBucket": "ecom-kpi-data-123456789012-eu-west-1",
    "NotificationTopicArn": "arn:aws:sns:eu-west-1:123456789012:ecom-kpi-notices",
}


def _fill(node: Any) -> Any:
    if isinstance(node, str):
        return re.sub(r"\$\{(\w+)\}", lambda m: SAMPLE_VALUES[m.group(1)], node)
    if isinstance(node, dict):
        return {k: _fill(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v) for v in node]
    return node


@pytest.fixture(scope="module")
def big_plan() -> dict[str, Any]:
    """The plan of a 40 GiB batch: above the largest Fargate tier."""
    size = 40 * GIB
    assert size > TIERS[-1].max_input_bytes
    objects = [
        ("incoming/big/products.csv", GIB),
        ("incoming/big/orders.csv", 9 * GIB),
        ("incoming/big/order_items.csv", size - 10 * GIB),
    ]
    plan = plan_execution("bucket", "big", objects, received_at="2026-12-01T07:00:00Z")
    assert plan["route"] == EMR_ROUTE
    return plan


START_JOB_RUN = (
    botocore.session.get_session()
    .get_service_model("emr-serverless")
    .operation_model("StartJobRun")
)


# --- Tests ---------------------------------------------------------------------------------------


def test_every_job_has_an_emr_twin_reached_only_on_the_emr_route(states):
    pairs = _job_pairs(states)
    assert sorted(pairs) == [("ComputeKpis", "ComputeKpisOnEmr"), ("Validate", "ValidateOnEmr")]
    for ecs_task, emr_task in pairs:
        # the one Choice rule leading to the EMR task requires the EMR route; the same Choice
        # leads to the ECS task otherwise (its Default, or the same rule without the route)
        choices = [
            state
            for state in states.values()
            if state["Type"] == "Choice"
            and emr_task in [c["Next"] for c in state["Choices"]] + [state["Default"]]
        ]
        assert len(choices) == 1, emr_task
        (choice,) = choices
        assert choice["Default"] != emr_task
        (rule,) = [c for c in choice["Choices"] if c["Next"] == emr_task]
        assert _requires_emr_route(rule), emr_task
        on_ecs = [c for c in choice["Choices"] if c["Next"] == ecs_task]
        assert choice["Default"] == ecs_task or [
            {k: v for k, v in c.items() if k != "Next"} for c in on_ecs
        ] == [{"And": [r for r in rule["And"] if r.get("Variable") != "$.route"]}], ecs_task
    # nothing else reaches an EMR task: no Next, Default or Catch
    targets = [
        target
        for state in states.values()
        for target in [state.get("Next"), state.get("Default")]
        + [c.get("Next") for c in state.get("Choices", [])]
        + [c["Next"] for c in state.get("Catch", [])]
        if target
    ]
    for _, emr_task in pairs:
        assert targets.count(emr_task) == 1


def test_emr_tasks_have_timeout_retry_and_catch_like_the_ecs_tasks(states):
    for ecs_name, emr_name in _job_pairs(states):
        ecs_task, emr_task = states[ecs_name], states[emr_name]
        job = emr_task["Parameters"]["Tags"]["job"]
        # Step Functions' timeout outlasts the run's own limit (plus start-up), never less
        assert emr_task["TimeoutSeconds"] > emr.EXECUTION_TIMEOUT_MINUTES[job] * 60
        assert (
            emr_task["Parameters"]["ExecutionTimeoutMinutes"] == emr.EXECUTION_TIMEOUT_MINUTES[job]
        )
        for retry in emr_task["Retry"]:
            assert retry["BackoffRate"] > 1
            assert retry["JitterStrategy"] == "FULL"
            assert "States.ALL" not in retry["ErrorEquals"]
            assert "States.TaskFailed" not in retry["ErrorEquals"]  # a rejected batch stays so
        # the same outcome handling: result reading, error states, notices, Fail
        for key in ("ResultSelector", "ResultPath", "OutputPath", "Next", "End"):
            assert emr_task.get(key) == ecs_task.get(key), (emr_name, key)
        # ... and the same Catch: a KPI job run exiting 4 is retried on EMR as on ECS
        assert emr_task["Catch"] == ecs_task["Catch"], emr_name
        assert emr_task["Catch"]


def test_retried_emr_errors_are_start_job_run_errors():
    names = {shape.name for shape in START_JOB_RUN.error_shapes}
    for error in asl.TRANSIENT_EMR_ERRORS:
        service, name = error.split(".", 1)
        assert service == "EMRServerless"
        assert name in names


def test_emr_task_runs_the_same_command_line_as_the_ecs_task(states, big_plan):
    for ecs_name, emr_name in _job_pairs(states):
        command = states[ecs_name]["Parameters"]["Overrides"]["ContainerOverrides"][0]["Command.$"]
        arguments = states[emr_name]["Parameters"]["JobDriver"]["SparkSubmit"]
        assert arguments["EntryPointArguments.$"] == command
        assert evaluate(command, _input_of(emr_name, big_plan)) in (
            ["validate", "--batch-id", "big", "--dataset", "orders"],
            ["compute-kpis", "--batch-id", "big", "--received-at", big_plan["received_at"]],
        )


def test_emr_tasks_send_a_valid_start_job_run_request_for_a_big_batch(states, big_plan):
    for _, emr_name in _job_pairs(states):
        parameters = _fill(states[emr_name]["Parameters"])
        request = to_api_names(resolve(parameters, _input_of(emr_name, big_plan)))
        request["clientToken"] = "token-supplied-by-step-functions"
        report = ParamValidator().validate(request, START_JOB_RUN.input_shape)
        assert not report.has_errors(), (emr_name, report.generate_report())
        submit = request["jobDriver"]["sparkSubmit"]
        assert submit["entryPoint"] == "s3://my-cfn-artifacts/ecom-kpi/emr/spark_driver.py"
        conf = dict(re.findall(r"--conf (\S+?)=(\S+)", submit["sparkSubmitParameters"]))
        # the tier's sizes, the packed venv's Python everywhere, the jobs' settings on the driver
        tier = EMR_TIERS[0]
        assert conf["spark.dynamicAllocation.maxExecutors"] == str(tier.max_executors)
        assert conf["spark.executor.memory"] == f"{tier.heap_mib}m"
        assert conf["spark.archives"].endswith("ecom-pipeline-venv.tar.gz#environment")
        assert conf["spark.executorEnv.PYSPARK_PYTHON"] == "./environment/bin/python"
        assert conf["spark.emr-serverless.driverEnv.PIPELINE_BUCKET"] == SAMPLE_VALUES["DataBucket"]
        assert conf["spark.emr-serverless.driverEnv.ORDER_TABLE"] == SAMPLE_VALUES["OrderTable"]
        assert len(conf) == submit["sparkSubmitParameters"].count("--conf ")  # no key twice
        assert request["name"].endswith("big")


def test_the_definition_and_the_request_builder_agree(states, big_plan):
    """The ASL's request is start_job_run_request's for the same values (one source)."""
    for _, emr_name in _job_pairs(states):
        parameters = states[emr_name]["Parameters"]
        sent = to_api_names(resolve(_fill(parameters), _input_of(emr_name, big_plan)))
        job = parameters["Tags"]["job"]
        built = emr.start_job_run_request(
            job=job,
            application_id=SAMPLE_VALUES["EmrApplicationId"],
            # each job runs under its own role: the KPI run's is not the validations'
            execution_role_arn=SAMPLE_VALUES[
                "EmrKpiRoleArn" if job == "compute-kpis" else "EmrJobRoleArn"
            ],
            artifacts_uri=SAMPLE_VALUES["EmrArtifactsUri"],
            log_uri=SAMPLE_VALUES["EmrLogUri"],
            log_group=SAMPLE_VALUES["EmrLogGroup"],
            environment=emr.job_environment(
                bucket=SAMPLE_VALUES["DataBucket"],
                category_table=SAMPLE_VALUES["CategoryTable"],
                order_table=SAMPLE_VALUES["OrderTable"],
                topic_arn=SAMPLE_VALUES["NotificationTopicArn"],
                region=SAMPLE_VALUES["Region"],
            ),
            entry_point_arguments=sent["jobDriver"]["sparkSubmit"]["entryPointArguments"],
            tier_spark_parameters=big_plan["tier"]["spark_submit_parameters"],
            name=sent["name"],
            execution_id=EXECUTION_ARN,
        )
        assert sent == built


def test_the_validator_would_catch_a_wrong_request():
    request = emr.start_job_run_request(
        job="validate",
        application_id="00fabc123def4567",
        execution_role_arn=SAMPLE_VALUES["EmrJobRoleArn"],
        artifacts_uri="s3://a/emr/",
        log_uri="s3://a/logs/",
        log_group="/g",
        environment={},
        entry_point_arguments=["validate"],
        tier_spark_parameters="",
        name="n",
    ) | {"clientToken": "t"}
    shape = START_JOB_RUN.input_shape
    assert not ParamValidator().validate(request, shape).has_errors()
    broken = dict(request, jobDriver={"sparkSubmit": {"entrypoint": "s3://a/x.py"}})
    assert ParamValidator().validate(broken, shape).has_errors()
    assert ParamValidator().validate(dict(request, executionTimeoutMinutes="2"), shape).has_errors()


def test_emr_job_runs_read_and_write_s3_directly_and_ecs_tasks_stage(states, big_plan):
    """On EMR the executors run on other hosts: the driver's environment there turns direct
    I/O on (Spark reads and writes s3:// through EMRFS); the ECS tasks keep staging."""
    prefix = "spark.emr-serverless.driverEnv."
    bucket = SAMPLE_VALUES["DataBucket"]
    for ecs_name, emr_name in _job_pairs(states):
        parameters = _fill(states[emr_name]["Parameters"])
        request = to_api_names(resolve(parameters, _input_of(emr_name, big_plan)))
        conf = re.findall(
            r"--conf (\S+?)=(\S+)", request["jobDriver"]["sparkSubmit"]["sparkSubmitParameters"]
        )
        driver_env = {k[len(prefix) :]: v for k, v in conf if k.startswith(prefix)}
        config = Settings.from_env(driver_env)
        assert config.direct_io, emr_name
        assert config.data_root == f"s3://{bucket}"
        assert config.bucket == bucket
        # the run is told apart as the ECS tasks are: by the execution
        assert config.execution_id == EXECUTION_ARN
        assert config.run_id == "big"
        store = open_store(config)
        assert isinstance(store, BucketStore)
        assert store.uri("incoming/big/orders.csv") == f"s3://{bucket}/incoming/big/orders.csv"
        ecs_overrides = json.dumps(states[ecs_name]["Parameters"])
        assert ENVIRONMENT["data_root"] not in ecs_overrides, ecs_name
    assert ENVIRONMENT["data_root"] not in (ROOT / "infra" / "template.yaml").read_text()
