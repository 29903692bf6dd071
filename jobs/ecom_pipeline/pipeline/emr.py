"""The EMR Serverless job run of a pipeline job: the route for batches above the largest Fargate
tier (``tiers.EMR_TIERS``).

One function, :func:`start_job_run_request`, builds the StartJobRun request (the EMR Serverless
API's camelCase names). The state machine's EMR tasks are generated from it
(:func:`states_parameters`: the same request in Step Functions' PascalCase, with the fields that
depend on the execution as ``.$`` paths), and the tests validate it against botocore's
``emr-serverless`` StartJobRun input shape, so the two cannot drift apart.

How a job runs there: the entry point is ``jobs/spark_driver.py`` (the same ``ecom-pipeline``
command line as the ECS tasks), uploaded to ``<EmrArtifactsUri>spark_driver.py``; the package
and its dependencies come as a packed virtual environment, ``<EmrArtifactsUri>VENV_ARCHIVE``,
that Spark unpacks as ``./environment`` on the driver and every executor (``spark.archives``),
whose Python both use. The jobs read their settings (bucket, tables, topic) from the driver's
environment (``spark.emr-serverless.driverEnv.*``), as the ECS task's environment gives them,
plus ``PIPELINE_DATA_ROOT=s3://<bucket>``: the jobs run in direct I/O mode there, Spark reading and
writing ``s3://`` itself through EMRFS (the executors run on other hosts and never see the
driver's disk, so staging through it, the ECS tasks' mode, cannot work).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ecom_pipeline.core.settings import ENVIRONMENT, bucket_data_root

DRIVER_SCRIPT = "spark_driver.py"
VENV_ARCHIVE = "ecom-pipeline-venv.tar.gz"
VENV_DIR = "environment"
LOG_STREAM_PREFIX = "ecom-pipeline"
# Spark settings with this prefix set the driver's environment variables
DRIVER_ENV_PREFIX = "spark.emr-serverless.driverEnv."
# StartJobRun's own limit on a run (the state machine's TimeoutSeconds is the same, plus slack)
EXECUTION_TIMEOUT_MINUTES = {"validate": 120, "compute-kpis": 240}


def fixed_spark_conf(artifacts_uri: str, environment: Mapping[str, str]) -> dict[str, str]:
    """Spark settings every job run has: the packed venv's Python on the driver and executors,
    UTC everywhere, the jobs' settings in the driver's environment."""
    python = f"./{VENV_DIR}/bin/python"
    conf = {
        "spark.archives": f"{artifacts_uri}{VENV_ARCHIVE}#{VENV_DIR}",
        f"{DRIVER_ENV_PREFIX}PYSPARK_DRIVER_PYTHON": python,
        f"{DRIVER_ENV_PREFIX}PYSPARK_PYTHON": python,
        "spark.executorEnv.PYSPARK_PYTHON": python,
        "spark.driver.extraJavaOptions": "-Duser.timezone=UTC",
        f"{DRIVER_ENV_PREFIX}GX_ANALYTICS_ENABLED": "false",
    }
    for name, value in sorted(environment.items()):
        conf[f"{DRIVER_ENV_PREFIX}{name}"] = value
    return conf


def spark_submit_parameters(conf: Mapping[str, str], tier_parameters: str = "") -> str:
    fixed = " ".join(f"--conf {key}={value}" for key, value in conf.items())
    return f"{fixed} {tier_parameters}".strip()


# The execution's id reaches the job's driver as the ECS tasks get it, EXECUTION_ID, so each
# run's results and staging are its own (settings.run_id). It is the one setting that changes
# per run: it follows the fixed ones, before the tier's.
EXECUTION_ID_CONF = f"{DRIVER_ENV_PREFIX}EXECUTION_ID"


def job_environment(
    *, bucket: str, category_table: str, order_table: str, topic_arn: str, region: str
) -> dict[str, str]:
    """The environment the jobs read (as the ECS task definition sets it), with direct I/O on
    the bucket (``PIPELINE_DATA_ROOT``)."""
    return {
        ENVIRONMENT["bucket"]: bucket,
        ENVIRONMENT["data_root"]: bucket_data_root(bucket),
        ENVIRONMENT["category_table"]: category_table,
        ENVIRONMENT["order_table"]: order_table,
        ENVIRONMENT["topic_arn"]: topic_arn,
        "AWS_REGION": region,
    }


def start_job_run_request(
    *,
    job: str,
    application_id: str,
    execution_role_arn: str,
    artifacts_uri: str,
    log_uri: str,
    log_group: str,
    environment: Mapping[str, str],
    entry_point_arguments: Sequence[str],
    tier_spark_parameters: str,
    name: str,
    execution_id: str | None = None,
) -> dict[str, Any]:
    """The StartJobRun request (without ``clientToken``, which Step Functions supplies) of one
    pipeline job: ``job`` is the command (``validate`` or ``compute-kpis``), ``environment``
    what the job reads (:func:`job_environment`), ``tier_spark_parameters`` the tier's
    (``EmrTier.as_input()["spark_submit_parameters"]``), ``execution_id`` the Step Functions
    execution running it."""
    conf = fixed_spark_conf(artifacts_uri, environment)
    if execution_id is not None:
        tier_spark_parameters = (
            f"--conf {EXECUTION_ID_CONF}={execution_id} {tier_spark_parameters}".strip()
        )
    return {
        "applicationId": application_id,
        "executionRoleArn": execution_role_arn,
        "name": name,
        "executionTimeoutMinutes": EXECUTION_TIMEOUT_MINUTES[job],
        "jobDriver": {
            "sparkSubmit": {
                "entryPoint": f"{artifacts_uri}{DRIVER_SCRIPT}",
                "entryPointArguments": list(entry_point_arguments),
                "sparkSubmitParameters": spark_submit_parameters(conf, tier_spark_parameters),
            }
        },
        "configurationOverrides": {
            "monitoringConfiguration": {
                "s3MonitoringConfiguration": {"logUri": log_uri},
                "cloudWatchLoggingConfiguration": {
                    "enabled": True,
                    "logGroupName": log_group,
                    "logStreamNamePrefix": LOG_STREAM_PREFIX,
                },
            }
        },
        "tags": {"pipeline": "ecom-pipeline", "job": job},
    }


# Free-form maps keep their keys when the request is converted to Step Functions' names.
_FREE_FORM = {"tags"}


def to_states_names(node: Any, key: str | None = None) -> Any:
    """An API request in the optimized integration's names: every member name capitalised."""
    if isinstance(node, dict):
        if key in _FREE_FORM:
            return dict(node)
        return {k[0].upper() + k[1:]: to_states_names(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [to_states_names(item) for item in node]
    return node


def states_parameters(
    *,
    job: str,
    placeholders: Mapping[str, str],
    arguments_path: str,
    spark_parameters_path: str,
    name_path: str,
    execution_id_path: str,
) -> dict[str, Any]:
    """The ``Parameters`` of an ``emr-serverless:startJobRun.sync`` task: the request of
    :func:`start_job_run_request` with ``${Placeholders}`` for the deployment's resources and
    ``.$`` paths for what depends on the execution (arguments, the execution's id, the tier's
    Spark settings, the run's name). ``placeholders`` has the keyword arguments of
    :func:`start_job_run_request` that are fixed per deployment, and those of
    :func:`job_environment`."""
    environment = job_environment(
        **{k: placeholders[k] for k in ("bucket", "category_table", "order_table", "region")},
        topic_arn=placeholders["topic_arn"],
    )
    request = start_job_run_request(
        job=job,
        application_id=placeholders["application_id"],
        execution_role_arn=placeholders["execution_role_arn"],
        artifacts_uri=placeholders["artifacts_uri"],
        log_uri=placeholders["log_uri"],
        log_group=placeholders["log_group"],
        environment=environment,
        entry_point_arguments=[],
        tier_spark_parameters="",
        name="",
    )
    parameters = to_states_names(request)
    del parameters["Name"]
    parameters["Name.$"] = name_path
    submit = parameters["JobDriver"]["SparkSubmit"]
    fixed = submit.pop("SparkSubmitParameters")
    del submit["EntryPointArguments"]
    submit["EntryPointArguments.$"] = arguments_path
    # the tier's settings come last, so they win over nothing fixed (they set different keys)
    submit["SparkSubmitParameters.$"] = (
        f"States.Format('{fixed} --conf {EXECUTION_ID_CONF}={{}} {{}}', "
        f"{execution_id_path}, {spark_parameters_path})"
    )
    return parameters
