#!/usr/bin/env bash
# The main job end to end on small generated data, served over gRPC and measured:
# synth -> prepare -> train -> build-index -> export -> nann-tf serve -> queries -> table.
# Usage: bash scripts/demo.sh [WORKDIR] [CONFIG] [more nann-tf demo flags, e.g. --fresh]
# (defaults: work/, ci-synth). A second run with the same WORKDIR reuses every artefact.
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-work}
CONFIG=${2:-ci-synth}
shift $(( $# > 2 ? 2 : $# ))
if [ ! -x .venv/bin/nann-tf ]; then
  bash scripts/test.sh --collect-only -q >/dev/null  # installs .venv, runs nothing
fi
exec .venv/bin/nann-tf demo --workdir "$WORK" --config "$CONFIG" "$@"
