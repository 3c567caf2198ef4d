#!/usr/bin/env bash
# Create ./.venv and install cxrkd with its dev tools, once. Re-runs only when pyproject.toml
# changes. Needs nothing but python3 (>= 3.10) and access to a package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CXRKD_VENV:-.venv}
stamp="$VENV/.cxrkd-installed"
want=$("$PY" -c 'import hashlib;print(hashlib.sha256(b"".join(open(p,"rb").read() for p in ("pyproject.toml","cluster/constraints.txt"))).hexdigest())')
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setting up $VENV (torch, timm, ray[tune], optuna, ...; a few minutes the first time)" >&2
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
log="$VENV/install.log"
# The versions the tests pass with are the versions the cluster nodes install: both come from
# cluster/constraints.txt (scripts/constraints.sh writes it from a tested .venv). It was made
# for one Python version; another Python installs the newest versions pyproject.toml allows.
constraints=()
made_for=$(sed -n 's/.*(Python \([0-9]*\.[0-9]*\).*/\1/p;1q' cluster/constraints.txt 2>/dev/null || true)
if [ -n "$made_for" ] && [ "$("$PY" -c 'import sys;print("%d.%d"%sys.version_info[:2])')" = "$made_for" ]; then
  constraints=(-c cluster/constraints.txt)
else
  echo "note: cluster/constraints.txt is for Python ${made_for:-?}; installing unpinned" >&2
fi
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "${constraints[@]}" -e ".[dev]" >"$log" 2>&1; then
  grep -v 'is ignored: it is neither a file nor a directory' "$log" | tail -n 30 >&2
  echo "setup failed: see $log" >&2
  exit 1
fi
echo "$want" >"$stamp"
