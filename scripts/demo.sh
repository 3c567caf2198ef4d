#!/usr/bin/env bash
# Install (first run only), then run the pneumonia-kd study with the demo profile on the built-in
# SYNTHETIC phantom data (imported on first use) and print the comparison table. The first run
# also pretrains the ResNet-18 backbone on the other phantom preset, `findings` (about a
# minute; cached in $CXRKD_HOME/weights/phantom-findings-<recipe>/ and reused): the demo's
# stand-in for ImageNet weights, which cannot be downloaded here.
# Extra arguments go to `cxrkd search run`, e.g. `bash scripts/demo.sh --num-samples 2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh base  # the package without the test tools
VENV=${CXRKD_VENV:-.venv}
exec "$VENV/bin/cxrkd" search run pneumonia-kd --profile demo "$@"
