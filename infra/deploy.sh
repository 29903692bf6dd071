#!/usr/bin/env bash
# Build and push the job image, build the Lambda zip, package and deploy the CloudFormation stack.
#
#   VPC_ID=vpc-... SUBNET_A=subnet-... SUBNET_B=subnet-... ARTIFACT_BUCKET=my-cfn-artifacts \
#     [AWS_REGION=eu-west-1] [STACK_NAME=ecom-kpi] [NOTIFICATION_EMAIL=ops@example.com] \
#     [CREATE_VPC_ENDPOINTS=true [ROUTE_TABLE_IDS=rtb-...,rtb-...]] [DATA_BUCKET_PREFIX=...] \
#     [EMR_RELEASE_LABEL=emr-spark-8.0.0] [EMR_VENV_ARCHIVE=build/ecom-pipeline-venv.tar.gz] \
#     [ECR_REPOSITORY=ecom-pipeline] [IMAGE_TAG=...] [SKIP_IMAGE=1 IMAGE_URI=...] \
#     infra/deploy.sh [--check]
#
# --check runs the prerequisite checks only. Safe to rerun: a first create that failed and rolled
# back (ROLLBACK_COMPLETE) is deleted before the new attempt, and an unchanged stack is left as
# it is. Needs: aws CLI v2, docker with buildx (unless SKIP_IMAGE=1), python3. The subnets must be
# private, with a NAT gateway or CREATE_VPC_ENDPOINTS=true (see docs/deploy.md, "The network").
set -euo pipefail

# One line per problem, prefixed with the script's name; 2 = a prerequisite is missing (nothing
# was changed), 1 = a step against AWS failed.
die() {
  echo "deploy.sh: $*" >&2
  exit 1
}
note() { echo "deploy.sh: $*" >&2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK_ONLY=0
case "${1:-}" in
  --check) CHECK_ONLY=1 ;;
  "") ;;
  *)
    echo "deploy.sh: unknown argument '$1' (only --check)" >&2
    exit 2
    ;;
esac

STACK_NAME="${STACK_NAME:-ecom-kpi}"
ECR_REPOSITORY="${ECR_REPOSITORY:-ecom-pipeline}"
IMAGE_TAG="${IMAGE_TAG:-$(date -u +%Y%m%dT%H%M%SZ)}"
PYTHON="${PYTHON:-python3}"
# The optional settings (NOTIFICATION_EMAIL, DATA_BUCKET_PREFIX, CREATE_VPC_ENDPOINTS,
# ROUTE_TABLE_IDS, EMR_RELEASE_LABEL) reach the stack only when they are set, even to "": a new
# stack takes the template's defaults (EmrReleaseLabel emr-spark-8.0.0, no endpoints), and a
# rerun without them keeps the stack's current values, so it cannot drop the VPC endpoints or
# the e-mail subscription by leaving a variable out.

# --- 1. Prerequisites: every missing one is named on its own line before anything changes ----
check_prerequisites() {
  local problems=()
  command -v aws >/dev/null 2>&1 ||
    problems+=("the AWS CLI v2 ('aws') is not on PATH: install it (https://docs.aws.amazon.com/cli/)")
  command -v "$PYTHON" >/dev/null 2>&1 ||
    problems+=("'$PYTHON' is not on PATH: it builds the Lambda zip (set PYTHON=...)")
  if [[ "${SKIP_IMAGE:-}" == "1" ]]; then
    [[ -n "${IMAGE_URI:-}" ]] || problems+=("SKIP_IMAGE=1 needs IMAGE_URI (the image to deploy)")
  elif ! command -v docker >/dev/null 2>&1; then
    problems+=("docker is not on PATH: it builds the job image (or SKIP_IMAGE=1 IMAGE_URI=...)")
  elif ! docker buildx version >/dev/null 2>&1; then
    problems+=("docker buildx is missing: the image is built with --platform linux/amd64")
  elif ! docker info >/dev/null 2>&1; then
    problems+=("docker cannot reach its daemon ('docker info' failed): start Docker, or SKIP_IMAGE=1 IMAGE_URI=...")
  fi
  local name
  for name in VPC_ID SUBNET_A SUBNET_B ARTIFACT_BUCKET; do
    [[ -n "${!name:-}" ]] || problems+=("set $name (see docs/deploy.md)")
  done
  # The stack name goes into the data bucket's name (lowercase, at most 63 characters with the
  # account and region), the table, function and log group names.
  if [[ -z "${DATA_BUCKET_PREFIX:-}" && ! "$STACK_NAME" =~ ^[a-z][a-z0-9-]{0,29}$ ]]; then
    problems+=("STACK_NAME '$STACK_NAME' must be 1-30 of a-z, 0-9 and '-', starting with a letter (it names the data bucket; or set DATA_BUCKET_PREFIX)")
  fi
  [[ "${CREATE_VPC_ENDPOINTS-false}" == "true" || "${CREATE_VPC_ENDPOINTS-false}" == "false" ]] ||
    problems+=("CREATE_VPC_ENDPOINTS must be true or false, not '$CREATE_VPC_ENDPOINTS'")
  if ((${#problems[@]} == 0)); then
    REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}"
    if [[ -z "$REGION" ]]; then
      problems+=("no AWS region: set AWS_REGION (or a region in the AWS CLI profile)")
    else
      export AWS_REGION="$REGION"
      local identity
      if ! identity="$(aws sts get-caller-identity --query Account --output text 2>&1)"; then
        problems+=("no usable AWS credentials (aws sts get-caller-identity: $(echo "$identity" | grep -v '^$' | tail -n 1))")
      else
        ACCOUNT_ID="$identity"
      fi
    fi
  fi
  if ((${#problems[@]})); then
    local problem
    for problem in "${problems[@]}"; do
      echo "deploy.sh: $problem" >&2
    done
    exit 2
  fi
}

check_prerequisites
if ((CHECK_ONLY)); then
  echo "deploy.sh: prerequisites met (account $ACCOUNT_ID, region $REGION, stack $STACK_NAME)"
  exit 0
fi
cd "$ROOT"
mkdir -p build
REGISTRY="${ACCOUNT_ID}.dkr.ecr.${REGION}.amazonaws.com"
# The template's names (a test keeps these in step with infra/template.yaml).
DATA_BUCKET="${DATA_BUCKET_PREFIX:-"${STACK_NAME}-data"}-${ACCOUNT_ID}-${REGION}"
RETAINED_TABLES=("${STACK_NAME}-category-kpis" "${STACK_NAME}-order-kpis")

stack_status() {
  local out
  if out="$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query 'Stacks[0].StackStatus' --output text 2>&1)"; then
    echo "$out"
  elif [[ "$out" == *"does not exist"* ]]; then
    echo "NONE"
  else
    die "cannot read stack $STACK_NAME: $(echo "$out" | tail -n 1)"
  fi
}

# The failed events of the last attempt, one line each, so a failed deploy says why.
print_failures() {
  # shellcheck disable=SC2016 # the backticks are a JMESPath literal, not a command
  aws cloudformation describe-stack-events --stack-name "$STACK_NAME" --max-items 100 \
    --query 'StackEvents[?ends_with(ResourceStatus, `FAILED`)].[LogicalResourceId, ResourceStatusReason]' \
    --output text 2>/dev/null | head -n 10 | sed 's/^/deploy.sh:   /' >&2 || true
}

# --- 2. The account: the ECS service-linked role a first cluster needs ------------------------
# On an account that never used ECS, creating the cluster can fail because this role does not
# exist yet; creating it is idempotent here ("has been taken" = it already exists).
if ! out="$(aws iam create-service-linked-role --aws-service-name ecs.amazonaws.com 2>&1)"; then
  [[ "$out" == *"has been taken"* ]] ||
    die "cannot create the ECS service-linked role: $(echo "$out" | tail -n 1)"
else
  note "created the ECS service-linked role AWSServiceRoleForECS"
fi

# --- 3. The stack's state: clear what a failed first create left ------------------------------
STATUS="$(stack_status)"
case "$STATUS" in
  ROLLBACK_COMPLETE)
    # A stack whose first create failed can only be deleted. Its retained resources were created
    # with DeletionPolicy RetainExceptOnCreate, so the rollback removed them: nothing blocks the
    # new create.
    note "stack $STACK_NAME is ROLLBACK_COMPLETE (its first create failed): deleting it before retrying"
    aws cloudformation delete-stack --stack-name "$STACK_NAME"
    aws cloudformation wait stack-delete-complete --stack-name "$STACK_NAME" ||
      die "deleting the rolled-back stack $STACK_NAME failed: see its events in the CloudFormation console"
    STATUS=NONE
    ;;
  *_IN_PROGRESS)
    [[ "$STATUS" == REVIEW_IN_PROGRESS ]] ||
      die "stack $STACK_NAME is $STATUS: wait until it settles, then rerun"
    ;;
  ROLLBACK_FAILED | DELETE_FAILED)
    die "stack $STACK_NAME is $STATUS: run infra/destroy.sh (or delete it in the console), then rerun"
    ;;
  UPDATE_ROLLBACK_FAILED)
    die "stack $STACK_NAME is UPDATE_ROLLBACK_FAILED: aws cloudformation continue-update-rollback --stack-name $STACK_NAME, then rerun"
    ;;
esac
if [[ "$STATUS" == NONE || "$STATUS" == REVIEW_IN_PROGRESS ]]; then
  # A new stack creates these names; a deleted stack of the same name kept them (Retain).
  kept=()
  aws s3api head-bucket --bucket "$DATA_BUCKET" >/dev/null 2>&1 && kept+=("bucket $DATA_BUCKET")
  for table in "${RETAINED_TABLES[@]}"; do
    aws dynamodb describe-table --table-name "$table" >/dev/null 2>&1 && kept+=("table $table")
  done
  if ((${#kept[@]})); then
    die "a deleted stack named $STACK_NAME kept $(
      IFS=,
      echo "${kept[*]}"
    ): delete them (infra/destroy.sh prints how) or choose another STACK_NAME"
  fi
fi

# --- 4. The network: the tasks need NAT or the VPC endpoints --------------------------------
route_table_of() {
  local table
  table="$(aws ec2 describe-route-tables --filters "Name=association.subnet-id,Values=$1" \
    --query 'RouteTables[0].RouteTableId' --output text)"
  if [[ -z "$table" || "$table" == "None" ]]; then
    # no explicit association: the subnet uses the VPC's main route table
    table="$(aws ec2 describe-route-tables \
      --filters "Name=vpc-id,Values=$VPC_ID" "Name=association.main,Values=true" \
      --query 'RouteTables[0].RouteTableId' --output text)"
  fi
  [[ -n "$table" && "$table" != "None" ]] || die "no route table found for subnet $1"
  echo "$table"
}
ENDPOINTS="${CREATE_VPC_ENDPOINTS:-}"
if [[ -z "$ENDPOINTS" && "$STATUS" != NONE ]]; then
  ENDPOINTS="$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" \
    --query "Stacks[0].Parameters[?ParameterKey=='CreateVpcEndpoints'].ParameterValue | [0]" \
    --output text)"
fi
TABLE_A="$(route_table_of "$SUBNET_A")"
TABLE_B="$(route_table_of "$SUBNET_B")"
if [[ "$ENDPOINTS" == "true" ]]; then
  # The S3 and DynamoDB gateway endpoints are routes in the subnets' route tables.
  if [[ "${CREATE_VPC_ENDPOINTS:-}" == "true" && -z "${ROUTE_TABLE_IDS:-}" ]]; then
    ROUTE_TABLE_IDS="$(printf '%s\n' "$TABLE_A" "$TABLE_B" | sort -u | paste -sd, -)"
  fi
  # The interface endpoints answer on the services' usual names (private DNS), which needs both
  # DNS attributes of the VPC.
  for attribute in enableDnsSupport:EnableDnsSupport:--enable-dns-support \
    enableDnsHostnames:EnableDnsHostnames:--enable-dns-hostnames; do
    IFS=: read -r name key flag <<<"$attribute"
    value="$(aws ec2 describe-vpc-attribute --vpc-id "$VPC_ID" --attribute "$name" \
      --query "${key}.Value" --output text)"
    [[ "$value" == "True" ]] ||
      die "VPC $VPC_ID has $name off and the VPC endpoints' private DNS needs it: aws ec2 modify-vpc-attribute --vpc-id $VPC_ID $flag Value=true"
  done
  note "VPC endpoints: ECR (api, dkr) and CloudWatch Logs in both subnets, S3 and DynamoDB gateways on the route tables ${ROUTE_TABLE_IDS:-already in the stack}"
else
  # Without endpoints the subnets need a default route through a NAT gateway (the tasks have no
  # public IP, so an internet gateway route does not help them).
  for subnet in "$SUBNET_A" "$SUBNET_B"; do
    table="$(route_table_of "$subnet")"
    target="$(aws ec2 describe-route-tables --route-table-ids "$table" \
      --query "RouteTables[0].Routes[?DestinationCidrBlock=='0.0.0.0/0'] | [0].[GatewayId, NatGatewayId, TransitGatewayId, NetworkInterfaceId]" \
      --output text)"
    if [[ -z "$target" || "$target" =~ ^(None[[:space:]]*)+$ ]]; then
      note "warning: subnet $subnet has no default route (no NAT gateway): tasks cannot pull the image; rerun with CREATE_VPC_ENDPOINTS=true"
    elif [[ "$target" == igw-* ]]; then
      note "warning: subnet $subnet routes through an internet gateway, but tasks get no public IP: use private subnets with NAT, or CREATE_VPC_ENDPOINTS=true"
    fi
  done
fi

# --- 5. The job image: one image for every job, pushed to ECR and referenced by digest ---------
if [[ "${SKIP_IMAGE:-}" == "1" ]]; then
  note "SKIP_IMAGE=1: deploying $IMAGE_URI"
else
  if ! aws ecr describe-repositories --repository-names "$ECR_REPOSITORY" >/dev/null 2>&1; then
    aws ecr create-repository \
      --repository-name "$ECR_REPOSITORY" \
      --image-scanning-configuration scanOnPush=true \
      --image-tag-mutability IMMUTABLE \
      --encryption-configuration encryptionType=AES256 >/dev/null
  fi
  aws ecr get-login-password | docker login --username AWS --password-stdin "$REGISTRY"
  docker buildx build --platform linux/amd64 --load -f docker/Dockerfile \
    -t "${REGISTRY}/${ECR_REPOSITORY}:${IMAGE_TAG}" .
  docker push "${REGISTRY}/${ECR_REPOSITORY}:${IMAGE_TAG}"
  DIGEST="$(aws ecr describe-images \
    --repository-name "$ECR_REPOSITORY" \
    --image-ids imageTag="$IMAGE_TAG" \
    --query 'imageDetails[0].imageDigest' --output text)"
  IMAGE_URI="${REGISTRY}/${ECR_REPOSITORY}@${DIGEST}"
fi
echo "image: $IMAGE_URI"

# --- 6. The Lambda zip (trigger.py + the pure-Python modules it imports) -----------------------
"$PYTHON" infra/build_lambda_zip.py --out build/lambda/trigger.zip

# --- 7. Upload the local artifacts (Lambda zip, state machine definition) ----------------------
aws cloudformation package \
  --template-file infra/template.yaml \
  --s3-bucket "$ARTIFACT_BUCKET" \
  --s3-prefix "$STACK_NAME" \
  --output-template-file build/packaged-template.yaml >/dev/null

# The EMR route's artifacts: the job driver and, when given, the packed venv (docs/deploy.md,
# "The EMR Serverless route"). Without the venv the stack deploys, and EMR job runs fail until
# it is uploaded; a deployment whose batches stay on Fargate never needs it.
EMR_ARTIFACTS="s3://${ARTIFACT_BUCKET}/${STACK_NAME}/emr/"
aws s3 cp --only-show-errors jobs/spark_driver.py "${EMR_ARTIFACTS}spark_driver.py"
if [[ -n "${EMR_VENV_ARCHIVE:-}" ]]; then
  aws s3 cp --only-show-errors "$EMR_VENV_ARCHIVE" "${EMR_ARTIFACTS}ecom-pipeline-venv.tar.gz"
fi

# --- 8. Create or update the stack --------------------------------------------------------------
parameters=(
  "ImageUri=${IMAGE_URI}"
  "ImageRepositoryName=${ECR_REPOSITORY}"
  "VpcId=${VPC_ID}"
  "VpcSubnetA=${SUBNET_A}"
  "VpcSubnetB=${SUBNET_B}"
  "ArtifactBucketName=${ARTIFACT_BUCKET}"
)
[[ -v NOTIFICATION_EMAIL ]] && parameters+=("NotificationEmail=${NOTIFICATION_EMAIL}")
[[ -v DATA_BUCKET_PREFIX ]] && parameters+=("DataBucketPrefix=${DATA_BUCKET_PREFIX}")
[[ -v EMR_RELEASE_LABEL ]] && parameters+=("EmrReleaseLabel=${EMR_RELEASE_LABEL}")
[[ -v CREATE_VPC_ENDPOINTS ]] && parameters+=("CreateVpcEndpoints=${CREATE_VPC_ENDPOINTS}")
[[ -v ROUTE_TABLE_IDS ]] && parameters+=("PrivateRouteTableIds=${ROUTE_TABLE_IDS}")
if ! aws cloudformation deploy \
  --template-file build/packaged-template.yaml \
  --stack-name "$STACK_NAME" \
  --capabilities CAPABILITY_IAM \
  --no-fail-on-empty-changeset \
  --parameter-overrides "${parameters[@]}"; then
  note "the deploy of $STACK_NAME failed; what failed:"
  print_failures
  die "fix the cause above and rerun infra/deploy.sh (a rolled-back first create is deleted first)"
fi

if [[ -z "${EMR_VENV_ARCHIVE:-}" ]]; then
  note "EMR_VENV_ARCHIVE not set: batches above the largest Fargate tier need ${EMR_ARTIFACTS}ecom-pipeline-venv.tar.gz (docs/deploy.md)"
fi
aws cloudformation describe-stacks \
  --stack-name "$STACK_NAME" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' \
  --output table
