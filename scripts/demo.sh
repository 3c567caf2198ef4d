#!/usr/bin/env bash
# Install (first run only), import the built-in SYNTHETIC phantom data and write its preview.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${CXRKD_VENV:-.venv}
cxrkd() { "$VENV/bin/cxrkd" "$@"; }
cxrkd data import phantom pneumonia --exist-ok
cxrkd data show phantom-pneumonia
mkdir -p out
cxrkd data preview phantom-pneumonia --out out/phantom-pneumonia.png
