#!/usr/bin/env bash
# The main job on small generated data: synth -> prepare -> train -> evaluate (brute force).
# Usage: bash scripts/pipeline.sh [WORKDIR] [CONFIG]   (defaults: work/, ci-synth)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-work}
CONFIG=${2:-ci-synth}
if [ ! -x .venv/bin/nann-tf ]; then
  bash scripts/test.sh --collect-only -q >/dev/null  # installs .venv, runs nothing
fi
NT=.venv/bin/nann-tf
mkdir -p "$WORK"
$NT synth --config "$CONFIG" --output "$WORK/log.csv"
$NT prepare --format userbehavior --config "$CONFIG" --input "$WORK/log.csv" --output "$WORK/data" --overwrite
for variant in attention two_tower; do
  $NT train --config "$CONFIG" --data "$WORK/data" --output "$WORK/model-$variant" \
    --set model.variant=$variant --overwrite
  $NT evaluate --model "$WORK/model-$variant" --data "$WORK/data" --brute-force
done
