#!/usr/bin/env bash
# Create ./.venv and install cxrkd with its dev tools, once. Re-runs only when pyproject.toml
# changes. Needs nothing but python3 (>= 3.10) and access to a package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CXRKD_VENV:-.venv}
stamp="$VENV/.cxrkd-installed"
want=$("$PY" -c 'import hashlib,sys;print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV (torch, timm, ray[tune], optuna, ...; a few minutes the first time)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
log="$VENV/install.log"
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check -e ".[dev]" >"$log" 2>&1; then
  grep -v 'is ignored: it is neither a file nor a directory' "$log" | tail -n 30 >&2
  echo "setup failed: see $log" >&2
  exit 1
fi
echo "$want" >"$stamp"
