#!/usr/bin/env bash
# Build and push the job image, build the Lambda zip, package and deploy the CloudFormation stack.
#
#   VPC_ID=vpc-... SUBNET_A=subnet-... SUBNET_B=subnet-... ARTIFACT_BUCKET=my-cfn-artifacts \
#     EMR_RELEASE_LABEL=emr-... [EMR_VENV_ARCHIVE=build/ecom-pipeline-venv.tar.gz] \
#     [STACK_NAME=ecom-kpi] [AWS_REGION=eu-west-1] [NOTIFICATION_EMAIL=ops@example.com] \
#     [ECR_REPOSITORY=ecom-pipeline] [IMAGE_TAG=...] [SKIP_IMAGE=1 IMAGE_URI=...] \
#     infra/deploy.sh
#
# Needs: aws CLI v2, docker (with buildx for --platform), python3. The subnets must be private
# with a NAT gateway or VPC endpoints (ECR api+dkr, S3, DynamoDB, SNS, CloudWatch Logs): the
# tasks get no public IP and their security group only allows HTTPS out.
set -euo pipefail

die() {
  echo "deploy.sh: $*" >&2
  exit 1
}

: "${VPC_ID:?set VPC_ID}"
: "${SUBNET_A:?set SUBNET_A (private subnet)}"
: "${SUBNET_B:?set SUBNET_B (private subnet in another AZ)}"
: "${ARTIFACT_BUCKET:?set ARTIFACT_BUCKET (an existing S3 bucket for packaged artifacts)}"
: "${EMR_RELEASE_LABEL:?set EMR_RELEASE_LABEL (an EMR Serverless release whose Spark matches pyspark 4.1)}"
STACK_NAME="${STACK_NAME:-ecom-kpi}"
NOTIFICATION_EMAIL="${NOTIFICATION_EMAIL:-}"
ECR_REPOSITORY="${ECR_REPOSITORY:-ecom-pipeline}"
IMAGE_TAG="${IMAGE_TAG:-$(date -u +%Y%m%dT%H%M%SZ)}"
PYTHON="${PYTHON:-python3}"

REGION="${AWS_REGION:-$(aws configure get region || true)}"
[[ -n "$REGION" ]] || die "set AWS_REGION"
export AWS_REGION="$REGION"
ACCOUNT_ID="$(aws sts get-caller-identity --query Account --output text)"
REGISTRY="${ACCOUNT_ID}.dkr.ecr.${REGION}.amazonaws.com"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p build

# 1. The job image: one image for every job, pushed to ECR and referenced by digest.
if [[ "${SKIP_IMAGE:-}" == "1" ]]; then
  : "${IMAGE_URI:?SKIP_IMAGE=1 needs IMAGE_URI}"
else
  if ! aws ecr describe-repositories --repository-names "$ECR_REPOSITORY" >/dev/null 2>&1; then
    aws ecr create-repository \
      --repository-name "$ECR_REPOSITORY" \
      --image-scanning-configuration scanOnPush=true \
      --image-tag-mutability IMMUTABLE \
      --encryption-configuration encryptionType=AES256 >/dev/null
  fi
  aws ecr get-login-password | docker login --username AWS --password-stdin "$REGISTRY"
  docker build --platform linux/amd64 -f docker/Dockerfile -t "${REGISTRY}/${ECR_REPOSITORY}:${IMAGE_TAG}" .
  docker push "${REGISTRY}/${ECR_REPOSITORY}:${IMAGE_TAG}"
  DIGEST="$(aws ecr describe-images \
    --repository-name "$ECR_REPOSITORY" \
    --image-ids imageTag="$IMAGE_TAG" \
    --query 'imageDetails[0].imageDigest' --output text)"
  IMAGE_URI="${REGISTRY}/${ECR_REPOSITORY}@${DIGEST}"
fi
echo "image: $IMAGE_URI"

# 2. The Lambda zip (trigger.py + the pure-Python modules it imports).
"$PYTHON" infra/build_lambda_zip.py --out build/lambda/trigger.zip

# 3. Upload the local artifacts (Lambda zip, state machine definition) and rewrite their paths.
aws cloudformation package \
  --template-file infra/template.yaml \
  --s3-bucket "$ARTIFACT_BUCKET" \
  --s3-prefix "$STACK_NAME" \
  --output-template-file build/packaged-template.yaml

# 3b. The EMR route's artifacts: the job driver and, when given, the packed venv (README,
# "EMR Serverless route"). Without the venv the stack deploys, and EMR job runs fail until it
# is uploaded.
EMR_ARTIFACTS="s3://${ARTIFACT_BUCKET}/${STACK_NAME}/emr/"
aws s3 cp jobs/spark_driver.py "${EMR_ARTIFACTS}spark_driver.py"
if [[ -n "${EMR_VENV_ARCHIVE:-}" ]]; then
  aws s3 cp "$EMR_VENV_ARCHIVE" "${EMR_ARTIFACTS}ecom-pipeline-venv.tar.gz"
else
  echo "deploy.sh: EMR_VENV_ARCHIVE not set: upload the packed venv to ${EMR_ARTIFACTS}ecom-pipeline-venv.tar.gz before a batch takes the EMR route" >&2
fi

# 4. Create or update the stack.
aws cloudformation deploy \
  --template-file build/packaged-template.yaml \
  --stack-name "$STACK_NAME" \
  --capabilities CAPABILITY_IAM \
  --no-fail-on-empty-changeset \
  --parameter-overrides \
  "ImageUri=${IMAGE_URI}" \
  "ImageRepositoryName=${ECR_REPOSITORY}" \
  "VpcId=${VPC_ID}" \
  "VpcSubnetA=${SUBNET_A}" \
  "VpcSubnetB=${SUBNET_B}" \
  "NotificationEmail=${NOTIFICATION_EMAIL}" \
  "ArtifactBucketName=${ARTIFACT_BUCKET}" \
  "EmrReleaseLabel=${EMR_RELEASE_LABEL}"

aws cloudformation describe-stacks \
  --stack-name "$STACK_NAME" \
  --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' \
  --output table
