#!/usr/bin/env bash
# Create ./.venv and install cxrkd into it, once: `scripts/setup.sh` with its dev tools (what
# the tests need: pytest, the trackers, Ray's dashboard, ...), `scripts/setup.sh base` without
# them (what the demo needs). Re-runs only when pyproject.toml or cluster/constraints.txt
# change. Needs nothing but python3 (>= 3.10) and access to a package index.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${CXRKD_VENV:-.venv}
want=$("$PY" -c 'import hashlib;print(hashlib.sha256(b"".join(open(p,"rb").read() for p in ("pyproject.toml","cluster/constraints.txt"))).hexdigest())')
# The dev install holds the base one: either stamp, if current, is enough for `base`.
case "${1:-dev}" in
  dev) target=".[dev]"; stamp="$VENV/.cxrkd-installed"; enough=("$stamp") ;;
  base) target="."; stamp="$VENV/.cxrkd-installed-base"; enough=("$stamp" "$VENV/.cxrkd-installed") ;;
  *) echo "usage: scripts/setup.sh [dev|base]" >&2; exit 2 ;;
esac
for s in "${enough[@]}"; do
  if [ -f "$s" ] && [ "$(cat "$s")" = "$want" ]; then
    exit 0
  fi
done
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
if ! "$VENV/bin/python" -m pip install --disable-pip-version-check "${constraints[@]}" -e "$target" >"$log" 2>&1; then
  grep -v 'is ignored: it is neither a file nor a directory' "$log" | tail -n 30 >&2
  echo "setup failed: see $log" >&2
  exit 1
fi
echo "$want" >"$stamp"
