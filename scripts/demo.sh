#!/usr/bin/env bash
# Install (first run only), then run the pneumonia-kd study with the demo profile on the built-in
# SYNTHETIC phantom data (imported on first use) and print the comparison table.
# Extra arguments go to `cxrkd search run`, e.g. `bash scripts/demo.sh --num-samples 2`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${CXRKD_VENV:-.venv}
exec "$VENV/bin/cxrkd" search run pneumonia-kd --profile demo "$@"
