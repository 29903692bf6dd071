"""Run the real state machine locally: moto's Step Functions interpreter plus small adapters for
the two job integrations, ECS and EMR Serverless.

moto interprets the ASL (Map, Choice, Retry, Catch, sns:publish, aws-sdk:s3) but runs no ECS
task, and its ``ecs:runTask`` integration passes the ASL's parameter names to boto3 as they are
(``Cluster`` instead of ``cluster``) and fails. :class:`LocalEcsTask` replaces that integration:
it reads the registered task definition, applies the container overrides the state machine sends
(command and environment), runs the container's command here, and reports the task as ECS
would: STOPPED with the container's exit code, a non-zero code failing the state with
``States.TaskFailed``.

moto does not run ``emr-serverless:startJobRun.sync`` at all. :class:`LocalEmrJobRun` runs the
job run's command line (its ``entryPointArguments``, the ``ecom-pipeline`` command that
``spark_driver.py`` runs on EMR) with the driver's environment from its Spark settings, and
reports the run as EMR Serverless would: SUCCESS, or FAILED failing the state with
``States.TaskFailed``. Pinned to moto 5.2.5's interpreter classes.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import shlex
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from botocore.response import StreamingBody
from moto.stepfunctions.parser.api import HistoryEventType, TaskFailedEventDetails
from moto.stepfunctions.parser.asl.component.common.error_name.failure_event import (
    FailureEvent,
    FailureEventException,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name import (
    StatesErrorName,
)
from moto.stepfunctions.parser.asl.component.common.error_name.states_error_name_type import (
    StatesErrorNameType,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task import state_task_factory
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.resource import (
    ResourceCondition,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_aws_sdk import (  # noqa: E501
    StateTaskServiceAwsSdk,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_callback import (  # noqa: E501
    StateTaskServiceCallback,
)
from moto.stepfunctions.parser.asl.component.state.exec.state_task.service.state_task_service_ecs import (  # noqa: E501
    StateTaskServiceEcs,
)
from moto.stepfunctions.parser.asl.eval.event.event_detail import EventDetails
from moto.stepfunctions.parser.asl.utils.boto_client import boto_client_for

from ecom_pipeline.core import logs
from ecom_pipeline.core.settings import ENVIRONMENT
from ecom_pipeline.local.thread_output import redirect_thread_output
from ecom_pipeline.pipeline.emr import DRIVER_ENV_PREFIX


class TaskRunner(Protocol):
    """Runs a container's command with its environment; returns the exit code."""

    def __call__(self, command: list[str], environment: Mapping[str, str]) -> int: ...


class EntryPoint(Protocol):
    """The image's entry point, ``ecom-pipeline`` (``cli.main``), handed in by the caller."""

    def __call__(
        self, argv: list[str], *, environ: Mapping[str, str], configure_logs: bool
    ) -> int: ...


class InProcessRunner:
    """Runs ``ecom-pipeline <command>`` in this process (one shared JVM: fast).

    Tasks run one at a time even when the state machine runs them in parallel, because they
    share the SparkSession and the log context. Spark settings from the environment (driver
    memory, master) cannot change a session that already runs; everything else applies.
    """

    def __init__(self, entry_point: EntryPoint) -> None:
        self._entry_point = entry_point
        self._lock = threading.Lock()
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    def __call__(self, command: list[str], environment: Mapping[str, str]) -> int:
        # As a container's output goes to CloudWatch, the task's prints go to this process's
        # log (run-local's log file), not to the terminal that shows progress.
        output = logging.getLogger("ecom_pipeline.task")
        with (
            self._lock,
            logs.isolated_context(),
        ):
            out, err = logs.LineLogger(output, "stdout"), logs.LineLogger(output, "stderr")
            self.calls.append((list(command), dict(environment)))
            try:
                with redirect_thread_output(out, err):
                    return self._entry_point(
                        command, environ=dict(environment), configure_logs=False
                    )
            finally:
                out.flush()
                err.flush()


def stopped_task_cause(task: dict[str, Any]) -> str:
    """The Cause of a failed ``ecs:runTask.sync``: the stopped task as compact JSON, as Step
    Functions writes it."""
    return json.dumps(task, separators=(",", ":"))


def _task_failed(env: Any, resource: str, resource_type: str, cause: str) -> None:
    raise FailureEventException(
        FailureEvent(
            env=env,
            error_name=StatesErrorName(typ=StatesErrorNameType.StatesTaskFailed),
            event_type=HistoryEventType.TaskFailed,
            event_details=EventDetails(
                taskFailedEventDetails=TaskFailedEventDetails(
                    resource=resource,
                    resourceType=resource_type,
                    error=StatesErrorNameType.StatesTaskFailed.to_name(),
                    cause=cause,
                )
            ),
        )
    )


def _local_ecs_class(runner: TaskRunner) -> type[StateTaskServiceEcs]:
    class LocalEcsTask(StateTaskServiceEcs):
        def _eval_service_task(
            self,
            env: Any,
            resource_runtime_part: Any,
            normalised_parameters: dict,
            state_credentials: Any,
        ) -> None:
            ecs = boto_client_for(
                region=resource_runtime_part.region,
                service="ecs",
                state_credentials=state_credentials,
            )
            task_definition = ecs.describe_task_definition(
                taskDefinition=normalised_parameters["TaskDefinition"]
            )["taskDefinition"]
            task = run_overridden_task(task_definition, normalised_parameters, runner)
            env.stack.append({"Tasks": [task]})

        def _build_sync_resolver(
            self,
            env: Any,
            resource_runtime_part: Any,
            normalised_parameters: dict,
            state_credentials: Any,
        ) -> Callable[[], Any]:
            task = env.stack.pop()["Tasks"][0]

            def resolve() -> dict[str, Any]:
                if any(c["ExitCode"] != 0 for c in task["Containers"]):
                    _task_failed(
                        env,
                        self._get_sfn_resource(),
                        self._get_sfn_resource_type(),
                        stopped_task_cause(task),
                    )
                return task

            return resolve

    return LocalEcsTask


def run_overridden_task(
    task_definition: dict[str, Any], parameters: dict[str, Any], runner: TaskRunner
) -> dict[str, Any]:
    """Apply RunTask's container overrides to the task definition, run each essential
    container's command, and describe the stopped task as ECS does (DescribeTasks shape)."""
    overrides = {
        o["Name"]: o for o in parameters.get("Overrides", {}).get("ContainerOverrides", [])
    }
    containers = []
    for container in task_definition["containerDefinitions"]:
        override = overrides.get(container["name"], {})
        command = list(override.get("Command") or container.get("command") or [])
        environment = {e["name"]: e["value"] for e in container.get("environment", [])}
        environment.update({e["Name"]: e["Value"] for e in override.get("Environment", [])})
        exit_code = runner(command, environment)
        containers.append(
            {
                "Name": container["name"],
                "LastStatus": "STOPPED",
                "ExitCode": exit_code,
                "Command": command,
            }
        )
    return {
        "TaskArn": f"arn:aws:ecs:local:000000000000:task/{uuid.uuid4().hex}",
        "ClusterArn": parameters.get("Cluster"),
        "TaskDefinitionArn": task_definition.get("taskDefinitionArn"),
        "LastStatus": "STOPPED",
        "StopCode": "EssentialContainerExited",
        "Cpu": parameters.get("Overrides", {}).get("Cpu", task_definition.get("cpu")),
        "Memory": parameters.get("Overrides", {}).get("Memory", task_definition.get("memory")),
        "Containers": containers,
    }


# What a job run's driver environment holds that cannot apply here: the packed venv's Python
# (the jobs run in this process) and direct I/O on s3:// (local Spark has no EMRFS: the job
# stages through the local work dir, as the ECS tasks do).
_EMR_ONLY = ("PYSPARK_DRIVER_PYTHON", "PYSPARK_PYTHON", ENVIRONMENT["data_root"])


# StartJobRun's request members, in Step Functions' names
_START_JOB_RUN_PARAMETERS = (
    "ApplicationId",
    "ClientToken",
    "ConfigurationOverrides",
    "ExecutionIamPolicy",
    "ExecutionRoleArn",
    "ExecutionTimeoutMinutes",
    "FlexExecution",
    "JobDriver",
    "Mode",
    "Name",
    "RetryPolicy",
    "Tags",
)


def emr_driver_environment(spark_submit_parameters: str) -> dict[str, str]:
    """The driver's environment a job run's ``sparkSubmitParameters`` set
    (``--conf spark.emr-serverless.driverEnv.NAME=value``)."""
    environment = {}
    for argument in re.findall(r"--conf\s+(\S+)", spark_submit_parameters):
        key, _, value = argument.partition("=")
        if key.startswith(DRIVER_ENV_PREFIX):
            environment[key[len(DRIVER_ENV_PREFIX) :]] = value
    return environment


def run_job_run(
    parameters: dict[str, Any], runner: TaskRunner, application_environment: Mapping[str, str]
) -> dict[str, Any]:
    """Run a StartJobRun request's command (Step Functions' names) with the driver's environment
    over ``application_environment`` (what this machine's jobs need besides: the emulator's
    endpoint, the work dir), and describe the ended run as GetJobRun does."""
    submit = parameters["JobDriver"]["SparkSubmit"]
    command = [str(argument) for argument in submit.get("EntryPointArguments", [])]
    driver = emr_driver_environment(submit.get("SparkSubmitParameters", ""))
    environment = dict(application_environment)
    environment.update({k: v for k, v in driver.items() if k not in _EMR_ONLY})
    exit_code = runner(command, environment)
    # as EMR Serverless words a failed run (the state machine reads the exit code from it)
    failed = (
        "Job failed, please check complete logs in configured logging destination. "
        f"ExitCode: {exit_code}. Last few exceptions: {shlex.join(command)} failed"
    )
    return {
        "ApplicationId": parameters.get("ApplicationId"),
        "JobRunId": uuid.uuid4().hex[:16],
        "Name": parameters.get("Name"),
        "ExecutionRole": parameters.get("ExecutionRoleArn"),
        "State": "SUCCESS" if exit_code == 0 else "FAILED",
        "StateDetails": "" if exit_code == 0 else failed,
        "JobDriver": parameters["JobDriver"],
    }


def _local_emr_class(
    runner: TaskRunner, application_environment: Mapping[str, str]
) -> type[StateTaskServiceCallback]:
    class LocalEmrJobRun(StateTaskServiceCallback):
        def __init__(self) -> None:
            # WaitForTaskToken too: moto's callback handling needs its endpoint either way
            super().__init__(
                supported_integration_patterns={
                    ResourceCondition.WaitForTaskToken,
                    ResourceCondition.Sync,
                }
            )

        def _get_supported_parameters(self) -> set[str] | None:
            # moto accepts a resource only if its integration names parameters for its action
            if self.resource.api_action.lower() != "startjobrun":
                return None
            return set(_START_JOB_RUN_PARAMETERS)

        def _eval_service_task(
            self,
            env: Any,
            resource_runtime_part: Any,
            normalised_parameters: dict,
            state_credentials: Any,
        ) -> None:
            env.stack.append(run_job_run(normalised_parameters, runner, application_environment))

        def _build_sync_resolver(
            self,
            env: Any,
            resource_runtime_part: Any,
            normalised_parameters: dict,
            state_credentials: Any,
        ) -> Callable[[], Any]:
            job_run = env.stack.pop()

            def resolve() -> dict[str, Any]:
                if job_run["State"] != "SUCCESS":
                    _task_failed(
                        env,
                        self._get_sfn_resource(),
                        self._get_sfn_resource_type(),
                        json.dumps(job_run, separators=(",", ":")),
                    )
                return job_run

            return resolve

    return LocalEmrJobRun


class AwsSdkTextBodies(StateTaskServiceAwsSdk):
    """``aws-sdk:s3:getObject`` returns Body as text on AWS; moto 5.2.5 leaves botocore's stream
    in the state output, which no JSONPath or intrinsic can read."""

    def _eval_service_task(
        self,
        env: Any,
        resource_runtime_part: Any,
        normalised_parameters: dict,
        state_credentials: Any,
    ) -> None:
        super()._eval_service_task(
            env=env,
            resource_runtime_part=resource_runtime_part,
            normalised_parameters=normalised_parameters,
            state_credentials=state_credentials,
        )
        response = env.stack[-1]
        for name, value in list(response.items()):
            if isinstance(value, StreamingBody):
                response[name] = value.read().decode("utf-8")


@contextlib.contextmanager
def local_ecs(
    runner: TaskRunner, *, emr_environment: Mapping[str, str] | None = None
) -> Iterator[None]:
    """While active, every ``arn:aws:states:::ecs:*`` Task is run by ``runner``, and so is every
    ``emr-serverless`` job run, with ``emr_environment`` under its driver's environment (the
    deployment's settings a job needs here: ``Settings.to_env()``); aws-sdk tasks return text
    bodies as on AWS."""
    original = state_task_factory.state_task_service_for
    local_class = _local_ecs_class(runner)
    emr_class = _local_emr_class(runner, emr_environment or {})

    def service_for(service_name: str) -> Any:
        if service_name == "ecs":
            return local_class()
        if service_name == "emr-serverless":
            return emr_class()
        if service_name == "aws-sdk":
            return AwsSdkTextBodies()
        return original(service_name=service_name)

    state_task_factory.state_task_service_for = service_for
    try:
        yield
    finally:
        state_task_factory.state_task_service_for = original


def enable_interpreter(host: str, port: int) -> None:
    """Make moto's server interpret the ASL instead of only recording executions.

    The interpreter calls the other services through ``localhost:$MOTO_PORT``.
    """
    os.environ["MOTO_PORT"] = str(port)
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        body = json.dumps({"stepfunctions": {"execute_state_machine": True}})
        connection.request("POST", "/moto-api/config", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status not in (200, 201):
            raise RuntimeError(f"moto config answered HTTP {response.status}")
    finally:
        connection.close()
