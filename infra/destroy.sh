#!/usr/bin/env bash
# Delete the stack that infra/deploy.sh created, then say what it kept and how to delete that.
#
#   [STACK_NAME=ecom-kpi] [AWS_REGION=eu-west-1] [DATA_BUCKET_PREFIX=...] [ECR_REPOSITORY=ecom-pipeline] \
#     [ARTIFACT_BUCKET=my-cfn-artifacts] infra/destroy.sh
#
# Safe to rerun: a stack that is already gone is not an error, and the list of what is kept only
# names what still exists. Nothing kept is deleted here: the data bucket holds every raw batch
# (archive/, rejected/) and the KPI tables are the pipeline's output; deleting them is a
# separate, explicit step, printed at the end.
set -euo pipefail

die() {
  echo "destroy.sh: $*" >&2
  exit 1
}
note() { echo "destroy.sh: $*" >&2; }

STACK_NAME="${STACK_NAME:-ecom-kpi}"
ECR_REPOSITORY="${ECR_REPOSITORY:-ecom-pipeline}"

# --- Prerequisites (2 = missing, nothing was changed) -------------------------------------------
command -v aws >/dev/null 2>&1 || {
  echo "destroy.sh: the AWS CLI v2 ('aws') is not on PATH: install it (https://docs.aws.amazon.com/cli/)" >&2
  exit 2
}
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}"
[[ -n "$REGION" ]] || {
  echo "destroy.sh: no AWS region: set AWS_REGION (or a region in the AWS CLI profile)" >&2
  exit 2
}
export AWS_REGION="$REGION"
if ! ACCOUNT_ID="$(aws sts get-caller-identity --query Account --output text 2>&1)"; then
  echo "destroy.sh: no usable AWS credentials (aws sts get-caller-identity: $(echo "$ACCOUNT_ID" | grep -v '^$' | tail -n 1))" >&2
  exit 2
fi

# --- What the stack is (before it goes: its outputs name what it keeps) -------------------------
output() {
  aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query "Stacks[0].Outputs[?OutputKey=='$1'].OutputValue | [0]" --output text
}
parameter() {
  aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query "Stacks[0].Parameters[?ParameterKey=='$1'].ParameterValue | [0]" --output text
}
if ! STATUS="$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
  --query 'Stacks[0].StackStatus' --output text 2>&1)"; then
  [[ "$STATUS" == *"does not exist"* ]] || die "cannot read stack $STACK_NAME: $(echo "$STATUS" | tail -n 1)"
  STATUS=NONE
fi

# The template's names (a test keeps them in step with infra/template.yaml); the outputs win
# when the stack is still there.
DATA_BUCKET="${DATA_BUCKET_PREFIX:-"${STACK_NAME}-data"}-${ACCOUNT_ID}-${REGION}"
CATEGORY_TABLE="${STACK_NAME}-category-kpis"
ORDER_TABLE="${STACK_NAME}-order-kpis"
if [[ "$STATUS" == NONE ]]; then
  note "stack $STACK_NAME does not exist in $REGION (already deleted)"
else
  for name in DataBucketName:DATA_BUCKET CategoryKpiTableName:CATEGORY_TABLE OrderKpiTableName:ORDER_TABLE; do
    value="$(output "${name%%:*}")"
    [[ -z "$value" || "$value" == "None" ]] || printf -v "${name##*:}" '%s' "$value"
  done
  artifacts="$(parameter ArtifactBucketName)"
  [[ -z "$artifacts" || "$artifacts" == "None" ]] || ARTIFACT_BUCKET="${ARTIFACT_BUCKET:-$artifacts}"
  # Events that could not be delivered to the trigger are lost with the queue; their batches'
  # files stay in incoming/, and writing a batch's marker again starts it.
  queue="$(output IntakeFailureQueueUrl)"
  if [[ -n "$queue" && "$queue" != "None" ]]; then
    waiting="$(aws sqs get-queue-attributes --queue-url "$queue" \
      --attribute-names ApproximateNumberOfMessages \
      --query 'Attributes.ApproximateNumberOfMessages' --output text 2>/dev/null || echo 0)"
    if [[ "$waiting" != "0" ]]; then
      note "warning: $waiting failed trigger event(s) in $queue go with the stack; their batches stay in incoming/ (rewrite a batch's _SUCCESS to start it)"
    fi
  fi
  # ECS writes Container Insights to a log group of its own, outside the stack.
  cluster="$(output JobClusterArn)"
  [[ -z "$cluster" || "$cluster" == "None" ]] || INSIGHTS_LOG_GROUP="/aws/ecs/containerinsights/${cluster##*/}/performance"
  machine="$(output StateMachineArn)"
  if [[ -n "$machine" && "$machine" != "None" ]]; then
    running="$(aws stepfunctions list-executions --state-machine-arn "$machine" \
      --status-filter RUNNING --query 'length(executions)' --output text 2>/dev/null || echo 0)"
    if [[ "$running" != "0" ]]; then
      note "warning: $running execution(s) still running; their tasks stop with the stack and their batches stay in incoming/ for ecom-pipeline replay"
    fi
  fi

  # --- Delete ----------------------------------------------------------------------------------
  note "deleting stack $STACK_NAME ($STATUS) in $REGION ..."
  aws cloudformation delete-stack --stack-name "$STACK_NAME"
  if ! aws cloudformation wait stack-delete-complete --stack-name "$STACK_NAME"; then
    # shellcheck disable=SC2016 # the backticks are a JMESPath literal, not a command
    aws cloudformation describe-stack-events --stack-name "$STACK_NAME" --max-items 50 \
      --query 'StackEvents[?ResourceStatus==`DELETE_FAILED`].[LogicalResourceId, ResourceStatusReason]' \
      --output text 2>/dev/null | head -n 10 | sed 's/^/destroy.sh:   /' >&2 || true
    die "stack $STACK_NAME could not be deleted (above: what failed); fix it and rerun infra/destroy.sh"
  fi
  note "stack $STACK_NAME deleted"
fi

# --- What is kept, and how to delete it ---------------------------------------------------------
kept=()
commands=()
if aws s3api head-bucket --bucket "$DATA_BUCKET" >/dev/null 2>&1; then
  kept+=("the data bucket s3://$DATA_BUCKET (kept on delete): every raw batch in archive/ and rejected/, the curated store, results, Data Docs, the dashboard; versioned")
  # The bucket policy denies erasing any version of a raw batch file, to everyone: it goes first.
  # Then every version and delete marker (boto3 pages through them), then the bucket.
  commands+=(
    "aws s3api delete-bucket-policy --bucket $DATA_BUCKET"
    "python3 -c 'import boto3; boto3.resource(\"s3\").Bucket(\"$DATA_BUCKET\").object_versions.delete()'"
    "aws s3api delete-bucket --bucket $DATA_BUCKET"
  )
fi
for table in "$CATEGORY_TABLE" "$ORDER_TABLE"; do
  if aws dynamodb describe-table --table-name "$table" >/dev/null 2>&1; then
    kept+=("the KPI table $table (kept on delete; point-in-time recovery on)")
    commands+=("aws dynamodb delete-table --table-name $table")
  fi
done
if aws ecr describe-repositories --repository-names "$ECR_REPOSITORY" >/dev/null 2>&1; then
  kept+=("the ECR repository $ECR_REPOSITORY (deploy.sh made it, outside the stack; other stacks may deploy from it)")
  commands+=("aws ecr delete-repository --repository-name $ECR_REPOSITORY --force")
fi
if [[ -n "${INSIGHTS_LOG_GROUP:-}" ]] &&
  [[ "$(aws logs describe-log-groups --log-group-name-prefix "$INSIGHTS_LOG_GROUP" \
    --query 'length(logGroups)' --output text 2>/dev/null || echo 0)" != "0" ]]; then
  kept+=("the Container Insights log group $INSIGHTS_LOG_GROUP (ECS made it, outside the stack)")
  commands+=("aws logs delete-log-group --log-group-name $INSIGHTS_LOG_GROUP")
fi
if [[ -n "${ARTIFACT_BUCKET:-}" ]]; then
  listed="$(aws s3 ls "s3://$ARTIFACT_BUCKET/$STACK_NAME/" 2>/dev/null | head -n 1 || true)"
  if [[ -n "$listed" ]]; then
    kept+=("the packaged artifacts in s3://$ARTIFACT_BUCKET/$STACK_NAME/ (Lambda zip, state machine definition, EMR driver and venv)")
    commands+=("aws s3 rm --recursive s3://$ARTIFACT_BUCKET/$STACK_NAME/")
  fi
fi

if ((${#kept[@]} == 0)); then
  echo "Nothing of stack $STACK_NAME is kept in $REGION."
  exit 0
fi
echo "Kept (not deleted by the stack):"
printf '  - %s\n' "${kept[@]}"
echo "To delete them too (this cannot be undone):"
printf '  %s\n' "${commands[@]}"
