"""The CloudFormation template (infra/template.yaml) and the Lambda zip builder, checked against
the code they deploy: the state machine's placeholders, the container name, the environment the
jobs read, the tier sizes, the table keys. No Spark, no AWS."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.validate import ParamValidator
from cfnlint.decode import cfn_yaml

from ecom_pipeline.adapters import lock
from ecom_pipeline.adapters.dynamo import table_definitions
from ecom_pipeline.core import contract, layout, planning, settings, tiers
from ecom_pipeline.pipeline import asl
from ecom_pipeline.read import dashboard

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
ZIP_BUILDER = ROOT / "infra" / "build_lambda_zip.py"
CFN_LINT = Path(sys.executable).with_name("cfn-lint")
LOCK_RESOURCE = "LockTable"

# Allow statements whose Resource may be "*": AWS offers no resource-level permission for them.
STAR_RESOURCE_ACTIONS = {
    "ecr:GetAuthorizationToken": "a registry-wide login token",
    # Step Functions logging to CloudWatch Logs (vended log delivery)
    "logs:CreateLogDelivery": "log delivery",
    "logs:GetLogDelivery": "log delivery",
    "logs:UpdateLogDelivery": "log delivery",
    "logs:DeleteLogDelivery": "log delivery",
    "logs:ListLogDeliveries": "log delivery",
    "logs:PutResourcePolicy": "log delivery",
    "logs:DescribeResourcePolicies": "log delivery",
    "logs:DescribeLogGroups": "log delivery",
}


# --- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    # cfn-lint's decoder understands !Ref, !Sub, !GetAtt...; plain dicts from here on.
    return json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))


def resources_of(template, resource_type):
    return {
        name: resource
        for name, resource in template["Resources"].items()
        if resource["Type"] == resource_type
    }


def the_one(template, resource_type):
    found = resources_of(template, resource_type)
    assert len(found) == 1, f"expected one {resource_type}, found {sorted(found)}"
    return next(iter(found.items()))


def as_list(value):
    return value if isinstance(value, list) else [value]


def task_definition(template):
    return the_one(template, "AWS::ECS::TaskDefinition")[1]["Properties"]


def job_container(template):
    containers = task_definition(template)["ContainerDefinitions"]
    assert len(containers) == 1
    return containers[0]


def container_env(template):
    return {e["Name"]: e["Value"] for e in job_container(template)["Environment"]}


def ref_target(value):
    assert isinstance(value, dict), value
    assert set(value) == {"Ref"}, value
    return value["Ref"]


def policy_statements(template):
    """(resource name, document kind, statement) of every policy document in the template."""
    found = []

    def walk(owner, node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("PolicyDocument", "AssumeRolePolicyDocument"):
                    for statement in as_list(value["Statement"]):
                        found.append((owner, key, statement))
                else:
                    walk(owner, value)
        elif isinstance(node, list):
            for item in node:
                walk(owner, item)

    for name, resource in template["Resources"].items():
        walk(name, resource.get("Properties", {}))
    return found


def role_statements(template, role):
    properties = template["Resources"][role]["Properties"]
    return [s for p in properties["Policies"] for s in p["PolicyDocument"]["Statement"]]


def statements_with_action(template, role, action):
    return [s for s in role_statements(template, role) if action in as_list(s["Action"])]


# --- cfn-lint ------------------------------------------------------------------------------------


def test_cfn_lint_passes():
    result = subprocess.run(
        [str(CFN_LINT), str(TEMPLATE)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- IAM -----------------------------------------------------------------------------------------


def test_no_wildcard_actions_and_no_star_resources_beyond_the_listed_exceptions(template):
    statements = policy_statements(template)
    assert len(statements) >= 20  # the walker found the roles' and the bucket's policies
    problems = []
    for owner, kind, statement in statements:
        assert "NotAction" not in statement, owner
        assert "NotResource" not in statement, owner
        actions = as_list(statement["Action"])
        wildcard = [a for a in actions if isinstance(a, str) and (a == "*" or a.endswith(":*"))]
        resources = as_list(statement.get("Resource", []))
        if kind == "AssumeRolePolicyDocument":
            if actions != ["sts:AssumeRole"]:
                problems.append(f"{owner}: trust policy allows {actions}")
            continue
        is_resource_policy = template["Resources"][owner]["Type"] == "AWS::S3::BucketPolicy"
        if wildcard and not (is_resource_policy and statement["Effect"] == "Deny"):
            # A Deny in a resource policy (deny s3:* without TLS) is the only wildcard allowed.
            problems.append(f"{owner}: wildcard action {wildcard}")
        if statement["Effect"] == "Allow" and "*" in resources:
            unjustified = [a for a in actions if a not in STAR_RESOURCE_ACTIONS]
            if unjustified:
                problems.append(f"{owner}: Resource '*' for {unjustified}")
    assert problems == []


def test_lambda_role_is_least_privilege(template):
    assert sorted(
        a for s in role_statements(template, "TriggerRole") for a in as_list(s["Action"])
    ) == [
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "s3:GetObject",
        "s3:ListBucket",
        "sns:Publish",
        "states:DescribeExecution",
        "states:StartExecution",
    ]
    # refusals (a batch above MAX_BATCH_BYTES) are announced on the pipeline's topic only
    (notify,) = statements_with_action(template, "TriggerRole", "sns:Publish")
    assert ref_target(notify["Resource"]) == the_one(template, "AWS::SNS::Topic")[0]
    _, function = the_one(template, "AWS::Lambda::Function")
    env = function["Properties"]["Environment"]["Variables"]
    assert ref_target(env["NOTIFY_TOPIC_ARN"]) == the_one(template, "AWS::SNS::Topic")[0]
    assert ref_target(env[tiers.MAX_BATCH_BYTES_ENV]) == "MaxBatchBytes"
    assert template["Parameters"]["MaxBatchBytes"]["Default"] == ""  # tiers' default
    (listing,) = statements_with_action(template, "TriggerRole", "s3:ListBucket")
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["incoming/*"]}}
    (reading,) = statements_with_action(template, "TriggerRole", "s3:GetObject")
    assert reading["Resource"]["Fn::Sub"].endswith("/incoming/*")


def test_state_machine_role_covers_ecs_sync_and_nothing_broader(template):
    role = "StateMachineRole"
    (run,) = statements_with_action(template, role, "ecs:RunTask")
    assert ref_target(run["Resource"]) == the_one(template, "AWS::ECS::TaskDefinition")[0]
    # one managed events rule per .sync integration: ECS tasks and EMR Serverless job runs
    rules = statements_with_action(template, role, "events:PutRule")
    for events in rules:
        assert set(events["Action"]) == {
            "events:PutTargets",
            "events:PutRule",
            "events:DescribeRule",
        }
    assert sorted(e["Resource"]["Fn::Sub"].rsplit("/", 1)[1] for e in rules) == [
        "StepFunctionsGetEventsForECSTaskRule",
        "StepFunctionsGetEventsForEMRServerlessJobRule",
    ]
    (watch,) = statements_with_action(template, role, "ecs:DescribeTasks")
    assert "ecs:StopTask" in watch["Action"]
    ecs_pass, emr_pass = sorted(
        statements_with_action(template, role, "iam:PassRole"),
        key=lambda s: s["Condition"]["StringEquals"]["iam:PassedToService"],
    )
    assert {r["Fn::GetAtt"][0] for r in ecs_pass["Resource"]} == {
        "JobTaskRole",
        "KpiTaskRole",
        "CustodyTaskRole",
        "JobExecutionRole",
    }
    assert ecs_pass["Condition"]["StringEquals"]["iam:PassedToService"] == "ecs-tasks.amazonaws.com"
    assert emr_pass["Resource"] == {"Fn::GetAtt": ["EmrJobRole", "Arn"]}
    assert emr_pass["Condition"] == {
        "StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}
    }
    (results,) = statements_with_action(template, role, "s3:GetObject")
    assert results["Resource"]["Fn::Sub"].endswith(f"/{layout.RESULTS}/*")
    assert statements_with_action(template, role, "sns:Publish")


def _listed(template, role):
    (listing,) = statements_with_action(template, role, "s3:ListBucket")
    return {p.removesuffix("/*") for p in listing["Condition"]["StringLike"]["s3:prefix"]}


def _objects(template, role, action):
    """The bucket prefixes ``action`` is allowed on (``${DataBucket.Arn}/<prefix>/*``)."""
    return {
        r["Fn::Sub"].split("/")[-2]
        for s in statements_with_action(template, role, action)
        for r in as_list(s["Resource"])
    }


def test_validation_role_reads_the_batch_and_writes_only_its_work_areas(template):
    role = "JobTaskRole"  # the task definition's: the validation tasks run under it
    assert task_definition(template)["TaskRoleArn"] == {"Fn::GetAtt": [role, "Arn"]}
    work = {layout.STAGING, layout.RESULTS, layout.DATA_DOCS}
    assert _listed(template, role) == {layout.INCOMING, layout.CURATED} | work
    assert _objects(template, role, "s3:GetObject") == {layout.INCOMING, layout.CURATED} | work
    # incoming/ and curated/ are read-only for validation
    assert _objects(template, role, "s3:PutObject") == work
    assert _objects(template, role, "s3:DeleteObject") == work
    actions = {a for s in role_statements(template, role) for a in as_list(s["Action"])}
    assert not [a for a in actions if not a.startswith("s3:")]  # no DynamoDB, no SNS


def test_kpi_role_reaches_only_its_prefixes_tables_and_lock(template):
    role = "KpiTaskRole"
    assert _listed(template, role) == {layout.STAGING, layout.CURATED, layout.RESULTS}
    assert _objects(template, role, "s3:GetObject") == {
        layout.STAGING,
        layout.CURATED,
        layout.RESULTS,
    }
    assert _objects(template, role, "s3:PutObject") == {
        layout.CURATED,
        layout.RESULTS,
        dashboard.DASHBOARD_PREFIX,
    }
    assert _objects(template, role, "s3:DeleteObject") == {layout.CURATED}
    (tables,) = statements_with_action(template, role, "dynamodb:BatchWriteItem")
    # dynamo.py writes and deletes with BatchWriteItem only; the dashboard reads with Query
    assert set(tables["Action"]) == {"dynamodb:BatchWriteItem", "dynamodb:Query"}
    table_resources = set(resources_of(template, "AWS::DynamoDB::Table")) - {LOCK_RESOURCE}
    assert {r["Fn::GetAtt"][0] for r in tables["Resource"]} == table_resources
    # the lock table: the lease's four item calls, on the one lock item, nothing else
    (lock_statement,) = statements_with_action(template, role, "dynamodb:UpdateItem")
    assert set(lock_statement["Action"]) == {
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    assert lock_statement["Resource"] == {"Fn::GetAtt": [LOCK_RESOURCE, "Arn"]}
    assert lock_statement["Condition"] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": [contract.LOCK_CURATED_STORE]}
    }
    actions = {a for s in role_statements(template, role) for a in as_list(s["Action"])}
    assert {a for a in actions if not a.startswith("s3:")} == set(tables["Action"]) | set(
        lock_statement["Action"]
    )


def test_custody_role_settles_incoming_into_archive_and_rejected_only(template):
    role = "CustodyTaskRole"
    settled = {layout.ARCHIVE, layout.REJECTED}
    assert _listed(template, role) == {layout.INCOMING, layout.RESULTS} | settled
    assert _objects(template, role, "s3:GetObject") == {layout.INCOMING, layout.RESULTS} | settled
    # incoming/ is never written; an original goes only once its copy is verified, and nothing
    # settled is ever deleted
    assert _objects(template, role, "s3:PutObject") == settled
    assert _objects(template, role, "s3:DeleteObject") == {layout.INCOMING}
    actions = {a for s in role_statements(template, role) for a in as_list(s["Action"])}
    assert not [a for a in actions if not a.startswith("s3:")]


def test_the_move_tasks_run_under_the_custody_role_and_no_other_task_does(template):
    states = asl.build_definition()["States"]
    moves = {n: s for n, s in states.items() if "'move-batch'" in json.dumps(s)}
    assert moves, "no move-batch task in the state machine"
    for state in moves.values():
        assert state["Parameters"]["Overrides"]["TaskRoleArn"] == "${CustodyTaskRoleArn}"
    overridden = {
        n
        for n, s in states.items()
        if s.get("Resource", "").startswith("arn:aws:states:::ecs:")
        and s["Parameters"]["Overrides"].get("TaskRoleArn") == "${CustodyTaskRoleArn}"
    }
    assert overridden == set(moves)
    _, machine = the_one(template, "AWS::StepFunctions::StateMachine")
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert substitutions["CustodyTaskRoleArn"] == {"Fn::GetAtt": ["CustodyTaskRole", "Arn"]}


def test_the_kpi_task_runs_under_the_kpi_role(template):
    states = asl.build_definition()["States"]
    assert states["ComputeKpis"]["Parameters"]["Overrides"]["TaskRoleArn"] == "${KpiTaskRoleArn}"
    branches = states["ValidateDatasets"]["Branches"]
    for branch in branches:
        for state in branch["States"].values():
            if state.get("Resource", "").startswith("arn:aws:states:::ecs:"):
                assert "TaskRoleArn" not in state["Parameters"]["Overrides"]
    _, machine = the_one(template, "AWS::StepFunctions::StateMachine")
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert substitutions["KpiTaskRoleArn"] == {"Fn::GetAtt": ["KpiTaskRole", "Arn"]}


_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE|CREDENTIAL", re.IGNORECASE)


def test_no_secrets_in_the_image_or_the_deployed_environments(template):
    """The tasks and the Lambda get AWS credentials from their roles: nothing secret is baked
    into the image, passed in its build context or set in an environment."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text(encoding="utf-8")
    for line in dockerfile.splitlines():
        if line.lstrip().startswith(("ENV", "ARG")):
            assert not _SECRET_NAME.search(line), line
    allowed = (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    assert "*" in allowed  # the build context is an allow-list
    assert not any(
        entry.startswith("!") and ("aws" in entry or "env" in entry) for entry in allowed
    )
    environments = {"job container": container_env(template)}
    _, function = the_one(template, "AWS::Lambda::Function")
    environments["trigger"] = function["Properties"]["Environment"]["Variables"]
    for owner, env in environments.items():
        assert not [name for name in env if _SECRET_NAME.search(name)], owner


# --- Step Functions ------------------------------------------------------------------------------


def test_definition_substitutions_are_exactly_the_placeholders(template):
    _, machine = the_one(template, "AWS::StepFunctions::StateMachine")
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert set(substitutions) == set(asl.PLACEHOLDERS)
    assert substitutions["ContainerName"] == asl.CONTAINER_NAME
    definition = TEMPLATE.parent / machine["Properties"]["DefinitionS3Location"]
    assert definition.resolve() == ROOT / "stepfunctions" / "pipeline.asl.json"
    # every placeholder of the definition file has a value and every value a placeholder
    asl.substitute(definition.read_text(encoding="utf-8"), dict.fromkeys(substitutions, "x"))


def test_lambda_starts_the_state_machine_of_this_stack(template):
    _, machine = the_one(template, "AWS::StepFunctions::StateMachine")
    name = machine["Properties"]["StateMachineName"]["Fn::Sub"]
    _, function = the_one(template, "AWS::Lambda::Function")
    env = function["Properties"]["Environment"]["Variables"]
    arn = env["STATE_MACHINE_ARN"]["Fn::Sub"]
    assert arn.endswith(f":stateMachine:{name}")
    (start,) = statements_with_action(template, "TriggerRole", "states:StartExecution")
    assert start["Resource"]["Fn::Sub"] == arn
    (describe,) = statements_with_action(template, "TriggerRole", "states:DescribeExecution")
    assert describe["Resource"]["Fn::Sub"].endswith(f":execution:{name}:*")
    assert env["INCOMING_PREFIX"] == planning.DEFAULT_INCOMING_PREFIX
    assert function["Properties"]["Handler"] == "trigger.handler"
    assert function["Properties"]["Runtime"] == "python3.11"
    code = (TEMPLATE.parent / function["Properties"]["Code"]).resolve()
    assert code == (ROOT / "build" / "lambda" / "trigger.zip")


def test_bucket_notifies_the_lambda_on_both_markers(template):
    name, bucket = the_one(template, "AWS::S3::Bucket")
    configurations = bucket["Properties"]["NotificationConfiguration"]["LambdaConfigurations"]
    filters = set()
    for configuration in configurations:
        assert configuration["Event"] == "s3:ObjectCreated:*"
        assert configuration["Function"] == {"Fn::GetAtt": ["TriggerFunction", "Arn"]}
        rules = {r["Name"]: r["Value"] for r in configuration["Filter"]["S3Key"]["Rules"]}
        filters.add((rules["prefix"], rules["suffix"]))
    assert filters == {(f"{layout.INCOMING}/", marker) for marker in planning.MARKERS}
    # the permission S3 needs names this bucket (built from the same expression as its name)
    _, permission = the_one(template, "AWS::Lambda::Permission")
    bucket_name = bucket["Properties"]["BucketName"]["Fn::Sub"]
    assert permission["Properties"]["SourceArn"]["Fn::Sub"].endswith(f":s3:::{bucket_name}")
    assert permission["Properties"]["Principal"] == "s3.amazonaws.com"
    assert "TriggerInvokePermission" in as_list(bucket["DependsOn"])
    for statement in role_statements(template, "TriggerRole"):
        resource = statement["Resource"]
        if statement["Action"] in ("s3:ListBucket", "s3:GetObject"):
            assert f":s3:::{bucket_name}" in resource["Fn::Sub"], name


def test_bucket_is_encrypted_private_and_tls_only(template):
    name, bucket = the_one(template, "AWS::S3::Bucket")
    properties = bucket["Properties"]
    (rule,) = properties["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    assert set(properties["PublicAccessBlockConfiguration"].values()) == {True}
    assert len(properties["PublicAccessBlockConfiguration"]) == 4
    _, policy = the_one(template, "AWS::S3::BucketPolicy")
    assert ref_target(policy["Properties"]["Bucket"]) == name
    denies = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny"
        and str(s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport")).lower()
        == "false"
    ]
    assert len(denies) == 1
    assert denies[0]["Principal"] == "*"
    assert denies[0]["Action"] in ("s3:*", ["s3:*"])
    assert len(denies[0]["Resource"]) == 2  # the bucket and its objects


def test_raw_batch_files_keep_every_version(template):
    """Versioning on; derived data's replaced versions expire, the raw batches' never; no
    principal may erase a version of a batch file."""
    _, bucket = the_one(template, "AWS::S3::Bucket")
    properties = bucket["Properties"]
    assert properties["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = properties["LifecycleConfiguration"]["Rules"]
    assert all(rule["Status"] == "Enabled" for rule in rules)
    expiring = {
        rule.get("Prefix", ""): rule for rule in rules if "NoncurrentVersionExpiration" in rule
    }
    assert "" not in expiring  # no bucket-wide expiry, which would reach archive/ and rejected/
    derived = {layout.INCOMING, layout.STAGING, layout.CURATED, layout.RESULTS}
    derived |= {layout.DATA_DOCS, dashboard.DASHBOARD_PREFIX}
    assert {p.rstrip("/") for p in expiring} >= derived
    for kept in (layout.ARCHIVE, layout.REJECTED):
        assert not any(p.startswith(kept) for p in expiring), kept
    assert any("AbortIncompleteMultipartUpload" in rule for rule in rules)

    _, policy = the_one(template, "AWS::S3::BucketPolicy")
    (deny,) = [
        s
        for s in policy["Properties"]["PolicyDocument"]["Statement"]
        if s["Effect"] == "Deny" and "s3:DeleteObjectVersion" in str(s["Action"])
    ]
    assert deny["Principal"] == "*"
    assert "Condition" not in deny
    protected = {re.sub(r".*\}/", "", r["Fn::Sub"]) for r in deny["Resource"]}
    assert protected == {f"{p}/*" for p in (layout.INCOMING, layout.ARCHIVE, layout.REJECTED)}


# --- ECS -----------------------------------------------------------------------------------------


def test_task_definition_runs_the_pipeline_container_with_the_jobs_environment(template):
    container = job_container(template)
    assert container["Name"] == asl.CONTAINER_NAME
    assert ref_target(container["Image"]) == "ImageUri"
    assert container["ReadonlyRootFilesystem"] is False
    env = container_env(template)
    # the image sets PIPELINE_WORK_DIR (docker/Dockerfile); the ECS tasks stage through it, so
    # no PIPELINE_DATA_ROOT (direct I/O is the EMR job runs'); everything else comes from here
    required = set(settings.ENVIRONMENT.values()) - {
        settings.ENVIRONMENT["work_dir"],
        settings.ENVIRONMENT["data_root"],
    }
    assert settings.ENVIRONMENT["data_root"] not in container_env(template)
    assert required <= set(env)
    assert "AWS_REGION" in env
    # every name set is one the jobs read (Settings.to_env gives them all)
    known = settings.Settings(bucket="b", topic_arn="t").to_env()
    assert set(env) <= set(known)
    assert ref_target(env["PIPELINE_BUCKET"]) == the_one(template, "AWS::S3::Bucket")[0]
    assert ref_target(env["NOTIFY_TOPIC_ARN"]) == the_one(template, "AWS::SNS::Topic")[0]
    logs = container["LogConfiguration"]
    assert logs["LogDriver"] == "awslogs"
    assert ref_target(logs["Options"]["awslogs-group"]) in resources_of(
        template, "AWS::Logs::LogGroup"
    )
    properties = task_definition(template)
    assert properties["TaskRoleArn"] == {"Fn::GetAtt": ["JobTaskRole", "Arn"]}
    assert properties["ExecutionRoleArn"] == {"Fn::GetAtt": ["JobExecutionRole", "Arn"]}


def test_task_definition_size_is_the_smallest_tier_and_a_fargate_size(template):
    properties = task_definition(template)
    cpu, memory = int(properties["Cpu"]), int(properties["Memory"])
    assert tiers.is_valid_fargate_size(cpu, memory)
    smallest = tiers.TIERS[0]
    assert (cpu, memory) == (smallest.cpu, smallest.memory_mib)
    assert properties["EphemeralStorage"]["SizeInGiB"] == smallest.ephemeral_storage_gib
    assert properties["RequiresCompatibilities"] == ["FARGATE"]
    assert properties["NetworkMode"] == "awsvpc"
    # container-level limits would cap the state machine's task-level overrides
    assert "Memory" not in job_container(template)
    assert "Cpu" not in job_container(template)


@pytest.mark.parametrize("tier", tiers.TIERS, ids=lambda t: t.name)
def test_every_tier_fits_fargate_and_leaves_room_beside_the_driver_heap(tier):
    assert tiers.is_valid_fargate_size(tier.cpu, tier.memory_mib)
    assert tier.driver_memory_mib < tier.memory_mib
    low, high = tiers.FARGATE_EPHEMERAL_GIB
    assert low <= tier.ephemeral_storage_gib <= high


# CloudFormation property names whose values are maps with free-form keys (kept as they are).
_FREE_FORM_MAPS = {"Options", "DockerLabels"}


def _api_shape(node: Any, key: str | None = None) -> Any:
    """CloudFormation properties -> ECS API parameters: camelCase keys, intrinsics as dummies."""
    if isinstance(node, dict):
        if len(node) == 1 and (next(iter(node)) == "Ref" or next(iter(node)).startswith("Fn::")):
            return f"dummy-{key or 'value'}"
        if key in _FREE_FORM_MAPS:
            return {k: _api_shape(v, k) for k, v in node.items()}
        return {k[0].lower() + k[1:]: _api_shape(v, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_api_shape(item, key) for item in node]
    return node


def test_task_definition_is_a_valid_register_task_definition_request(template):
    params = _api_shape(task_definition(template))
    shape = (
        botocore.session.get_session()
        .get_service_model("ecs")
        .operation_model("RegisterTaskDefinition")
        .input_shape
    )
    report = ParamValidator().validate(params, shape)
    assert not report.has_errors(), report.generate_report()
    # the validator does see mistakes: a misspelt property is an error
    broken = dict(params, containerDefinitons=params["containerDefinitions"])
    assert ParamValidator().validate(broken, shape).has_errors()


def test_security_group_allows_only_https_out(template):
    _, group = the_one(template, "AWS::EC2::SecurityGroup")
    assert "SecurityGroupIngress" not in group["Properties"]
    (egress,) = group["Properties"]["SecurityGroupEgress"]
    assert (egress["IpProtocol"], egress["FromPort"], egress["ToPort"]) == ("tcp", 443, 443)
    assert resources_of(template, "AWS::EC2::SecurityGroupIngress") == {}
    assert resources_of(template, "AWS::EC2::SecurityGroupEgress") == {}


def test_cluster_has_container_insights(template):
    _, cluster = the_one(template, "AWS::ECS::Cluster")
    settings = {s["Name"]: s["Value"] for s in cluster["Properties"]["ClusterSettings"]}
    assert settings["containerInsights"] in ("enabled", "enhanced")


# --- DynamoDB and SNS ----------------------------------------------------------------------------


def test_tables_have_the_contract_keys_pitr_and_encryption(template):
    env = container_env(template)
    by_env = {
        contract.CATEGORY_TABLE: ref_target(env[settings.ENVIRONMENT["category_table"]]),
        contract.ORDER_TABLE: ref_target(env[settings.ENVIRONMENT["order_table"]]),
    }
    definitions = {d["TableName"]: d for d in table_definitions()}
    assert set(by_env) == set(definitions)
    kpi_tables = set(resources_of(template, "AWS::DynamoDB::Table")) - {LOCK_RESOURCE}
    assert set(by_env.values()) == kpi_tables
    for table, resource in by_env.items():
        properties = template["Resources"][resource]["Properties"]
        assert properties["KeySchema"] == definitions[table]["KeySchema"], table
        assert sorted(properties["AttributeDefinitions"], key=str) == sorted(
            definitions[table]["AttributeDefinitions"], key=str
        )
        assert properties["BillingMode"] == "PAY_PER_REQUEST"
        assert sorted(properties.get("GlobalSecondaryIndexes", []), key=str) == sorted(
            definitions[table].get("GlobalSecondaryIndexes", []), key=str
        ), table
        assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
        assert properties["SSESpecification"]["SSEEnabled"] is True


def test_lock_table_has_the_lock_key_ttl_pitr_and_encryption_and_reaches_the_jobs(template):
    env = container_env(template)
    assert ref_target(env[settings.ENVIRONMENT["lock_table"]]) == LOCK_RESOURCE
    # the lease and wait bound of the deployment are the code's defaults
    assert float(env[settings.ENVIRONMENT["lock_lease_s"]]) == lock.DEFAULT_LEASE_S
    assert float(env[settings.ENVIRONMENT["lock_wait_s"]]) == lock.DEFAULT_WAIT_S
    properties = template["Resources"][LOCK_RESOURCE]["Properties"]
    definition = lock.lock_table_definition()
    assert properties["KeySchema"] == definition["KeySchema"]
    assert properties["AttributeDefinitions"] == definition["AttributeDefinitions"]
    assert properties["BillingMode"] == "PAY_PER_REQUEST"
    assert properties["TimeToLiveSpecification"] == {
        "AttributeName": contract.LOCK_EXPIRY_ATTRIBUTE,
        "Enabled": True,
    }
    assert properties["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert properties["SSESpecification"]["SSEEnabled"] is True


def test_every_access_pattern_index_exists_in_the_template(template):
    env = container_env(template)
    resources = {
        contract.CATEGORY_TABLE: ref_target(env[settings.ENVIRONMENT["category_table"]]),
        contract.ORDER_TABLE: ref_target(env[settings.ENVIRONMENT["order_table"]]),
    }
    assert len(contract.INDEXES) == 2
    for index in contract.INDEXES:
        properties = template["Resources"][resources[index.table]]["Properties"]
        (found,) = [i for i in properties["GlobalSecondaryIndexes"] if i["IndexName"] == index.name]
        assert [k["AttributeName"] for k in found["KeySchema"]] == list(index.key)
        assert found["Projection"] == {"ProjectionType": "ALL"}  # a Query returns whole items
        types = {a["AttributeName"]: a["AttributeType"] for a in properties["AttributeDefinitions"]}
        assert {name: types[name] for name in index.key} == {
            name: contract.KEY_ATTRIBUTE_TYPES[name] for name in index.key
        }


def _index_arns(statement):
    return {
        tuple(r["Fn::Sub"].split("/index/"))
        for r in as_list(statement["Resource"])
        if isinstance(r, dict) and "Fn::Sub" in r
    }


def test_task_role_and_reader_policy_may_query_the_indexes(template):
    env = container_env(template)
    table_resource = {
        contract.CATEGORY_TABLE: ref_target(env[settings.ENVIRONMENT["category_table"]]),
        contract.ORDER_TABLE: ref_target(env[settings.ENVIRONMENT["order_table"]]),
    }
    indexes = {(f"${{{table_resource[i.table]}.Arn}}", i.name) for i in contract.INDEXES}
    (job,) = [
        s for s in role_statements(template, "KpiTaskRole") if s["Action"] == "dynamodb:Query"
    ]
    assert _index_arns(job) == indexes
    _, reader = the_one(template, "AWS::IAM::ManagedPolicy")
    statements = reader["Properties"]["PolicyDocument"]["Statement"]
    actions = sorted(a for s in statements for a in as_list(s["Action"]))
    assert actions == ["dynamodb:Query", "s3:GetObject"]  # read only, and no Scan
    (query,) = [s for s in statements if s["Action"] == "dynamodb:Query"]
    assert _index_arns(query) == indexes
    tables = {r["Fn::GetAtt"][0] for r in as_list(query["Resource"]) if "Fn::GetAtt" in r}
    assert tables == set(table_resource.values())
    (read,) = [s for s in statements if s["Action"] == "s3:GetObject"]
    assert {r["Fn::Sub"].split("/")[-2] for r in read["Resource"]} == {
        dashboard.DASHBOARD_PREFIX,
        layout.DATA_DOCS,
    }


def test_topic_is_encrypted_and_the_email_subscription_is_optional(template):
    name, topic = the_one(template, "AWS::SNS::Topic")
    assert topic["Properties"]["KmsMasterKeyId"] == "alias/aws/sns"
    _, subscription = the_one(template, "AWS::SNS::Subscription")
    assert ref_target(subscription["Properties"]["TopicArn"]) == name
    condition = template["Conditions"][subscription["Condition"]]
    assert condition == {"Fn::Not": [{"Fn::Equals": [{"Ref": "NotificationEmail"}, ""]}]}
    assert template["Parameters"]["NotificationEmail"]["Default"] == ""


def test_outputs_name_the_bucket_state_machine_tables_and_topic(template):
    targets = set()
    for output in template["Outputs"].values():
        value = output["Value"]
        targets.add(value.get("Ref") or value.get("Fn::GetAtt", [None])[0])
    expected = {
        the_one(template, "AWS::S3::Bucket")[0],
        the_one(template, "AWS::StepFunctions::StateMachine")[0],
        the_one(template, "AWS::SNS::Topic")[0],
        *resources_of(template, "AWS::DynamoDB::Table"),
    }
    assert expected <= targets


# --- The Lambda zip ------------------------------------------------------------------------------

_IMPORT_CHECK = """
import json, sys
sys.modules["pyspark"] = None  # any import of pyspark now raises ImportError
directory = sys.argv[1]
sys.path.insert(0, directory)
import trigger
import ecom_pipeline
assert callable(trigger.handler)
print(json.dumps({
    "trigger": trigger.__file__,
    "package": ecom_pipeline.__file__,
    "modules": sorted(m for m in sys.modules if m.startswith("ecom_pipeline")),
}))
"""


def test_lambda_zip_holds_the_handler_and_imports_without_pyspark(tmp_path):
    out = tmp_path / "trigger.zip"
    subprocess.run(
        [sys.executable, str(ZIP_BUILDER), "--out", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with zipfile.ZipFile(out) as archive:
        names = set(archive.namelist())
        archive.extractall(tmp_path / "unzipped")
    # the handler, the package's face and the core folder as it is: nothing else
    core = ROOT / "jobs" / "ecom_pipeline" / "core"
    assert names == {"trigger.py", "ecom_pipeline/__init__.py"} | {
        f"ecom_pipeline/core/{path.name}" for path in core.glob("*.py")
    }
    directory = tmp_path / "unzipped"
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_CHECK, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    # imported from the zip's files, not from the installed project
    assert Path(loaded["trigger"]).parent == directory
    assert Path(loaded["package"]).parent == directory / "ecom_pipeline"
    modules = loaded["modules"]
    assert "ecom_pipeline.core.intake" in modules
    assert [
        m for m in modules if m != "ecom_pipeline" and not m.startswith("ecom_pipeline.core")
    ] == []


def test_lambda_zip_is_reproducible(tmp_path):
    outs = [tmp_path / "a.zip", tmp_path / "b.zip"]
    for out in outs:
        subprocess.run(
            [sys.executable, str(ZIP_BUILDER), "--out", str(out)], check=True, capture_output=True
        )
    assert outs[0].read_bytes() == outs[1].read_bytes()


# --- EMR Serverless (the route above the largest Fargate tier) ------------------------------------


def test_state_machine_may_start_watch_and_cancel_job_runs_of_its_application_only(template):
    role = "StateMachineRole"
    (start,) = statements_with_action(template, role, "emr-serverless:StartJobRun")
    assert as_list(start["Action"]) == ["emr-serverless:StartJobRun"]
    assert start["Resource"] == {"Fn::GetAtt": ["EmrApplication", "Arn"]}
    (watch,) = statements_with_action(template, role, "emr-serverless:GetJobRun")
    assert sorted(watch["Action"]) == ["emr-serverless:CancelJobRun", "emr-serverless:GetJobRun"]
    assert watch["Resource"] == {"Fn::Sub": "${EmrApplication.Arn}/jobruns/*"}


def test_emr_job_role_has_the_task_roles_data_access_plus_artifacts_and_logs(template):
    def by_sid(role):
        return {s["Sid"]: s for s in role_statements(template, role)}

    # the EMR route runs the same validation and KPI jobs (move-batch stays on ECS)
    data_access = by_sid("JobTaskRole") | by_sid("KpiTaskRole")
    job = by_sid("EmrJobRole")
    assert {sid: job.get(sid) for sid in data_access} == data_access
    extra = {sid: s for sid, s in job.items() if sid not in data_access}
    actions = sorted(a for s in extra.values() for a in as_list(s["Action"]))
    assert actions == [
        "logs:CreateLogStream",
        "logs:DescribeLogGroups",
        "logs:DescribeLogStreams",
        "logs:PutLogEvents",
        "s3:GetObject",
        "s3:PutObject",
    ]
    (artifacts,) = [s for s in extra.values() if s["Action"] == "s3:GetObject"]
    assert artifacts["Resource"]["Fn::Sub"].endswith(
        "${ArtifactBucketName}/${AWS::StackName}/emr/*"
    )
    (trust,) = template["Resources"]["EmrJobRole"]["Properties"]["AssumeRolePolicyDocument"][
        "Statement"
    ]
    assert trust["Principal"] == {"Service": "emr-serverless.amazonaws.com"}


def test_emr_application_holds_three_validations_of_the_largest_emr_tier(template):
    _, app = the_one(template, "AWS::EMRServerless::Application")
    properties = app["Properties"]
    assert properties["Type"] == "Spark"
    capacity = properties["MaximumCapacity"]
    largest = tiers.EMR_TIERS[-1]
    workers = 3 * (1 + largest.max_executors)  # three job runs at once, driver + executors each
    assert int(capacity["Cpu"].split()[0]) >= workers * largest.cores
    assert int(capacity["Memory"].split()[0]) >= workers * largest.memory_gib
    assert int(capacity["Disk"].split()[0]) >= workers * largest.disk_gib
    assert properties["AutoStopConfiguration"]["Enabled"] is True
    assert {ref_target(s) for s in properties["NetworkConfiguration"]["SubnetIds"]} == {
        "VpcSubnetA",
        "VpcSubnetB",
    }


def test_emr_job_runs_log_where_the_job_role_may_write(template):
    substitutions = the_one(template, "AWS::StepFunctions::StateMachine")[1]["Properties"][
        "DefinitionSubstitutions"
    ]
    assert ref_target(substitutions["EmrLogGroup"]) == "EmrLogGroup"
    assert substitutions["EmrLogUri"]["Fn::Sub"] == "s3://${DataBucket}/emr-logs/"
    (writes,) = [
        s for s in role_statements(template, "EmrJobRole") if s["Sid"] == "WriteJobRunLogsToS3"
    ]
    assert writes["Resource"]["Fn::Sub"] == "${DataBucket.Arn}/emr-logs/*"
    assert ref_target(substitutions["CategoryTable"]) == "CategoryKpiTable"
    assert ref_target(substitutions["OrderTable"]) == "OrderKpiTable"
