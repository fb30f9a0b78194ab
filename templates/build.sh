#!/usr/bin/env bash
# Builds the pipelines' container image (launcher + workers) and one pipeline's Flex Template spec.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=gs://my-bucket bash templates/build.sh [PIPELINE]
#
# Variables: PROJECT, REGION, BUCKET (gs://..., where the template spec goes) are required;
# REPOSITORY (Artifact Registry Docker repository, default "dataflow", created if missing) and TAG
# (default: the git commit) are optional. PIPELINE defaults to sli.
set -euo pipefail
cd "$(dirname "$0")/.."

PIPELINE=${1:-sli}
: "${PROJECT:?set PROJECT to the Google Cloud project}"
: "${REGION:?set REGION, e.g. us-central1}"
: "${BUCKET:?set BUCKET to a gs:// bucket for the template spec}"
REPOSITORY=${REPOSITORY:-dataflow}
TAG=${TAG:-$(git rev-parse --short HEAD)}
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/beam-pipelines:${TAG}"
SPEC="${BUCKET}/templates/${PIPELINE}.json"
[[ -f "templates/${PIPELINE}/metadata.json" ]] || { echo "no template for pipeline '${PIPELINE}'" >&2; exit 1; }

gcloud artifacts repositories describe "$REPOSITORY" --project "$PROJECT" --location "$REGION" >/dev/null 2>&1 ||
  gcloud artifacts repositories create "$REPOSITORY" --project "$PROJECT" --location "$REGION" --repository-format docker
gcloud builds submit --project "$PROJECT" --region "$REGION" --tag "$IMAGE" .
gcloud dataflow flex-template build "$SPEC" --project "$PROJECT" \
  --image "$IMAGE" --sdk-language PYTHON \
  --metadata-file "templates/${PIPELINE}/metadata.json" \
  --env "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/templates/${PIPELINE}/main.py"

cat <<EOT
Template spec: ${SPEC}
Run it (parameters as in templates/${PIPELINE}/metadata.json; the image doubles as the worker image):
  gcloud dataflow flex-template run "${PIPELINE}-\$(date +%Y%m%d-%H%M%S)" --project ${PROJECT} --region ${REGION} \\
    --template-file-gcs-location ${SPEC} \\
    --parameters sdk_container_image=${IMAGE},NAME=VALUE,...
EOT
