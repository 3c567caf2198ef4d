#!/usr/bin/env bash
# Install (first run only) and run the whole test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` or `bash scripts/test.sh tests/data`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${CXRKD_VENV:-.venv}
"$VENV/bin/ruff" check .
# The dashboard's browser test needs headless Chromium: the Debian package, installed here when
# missing and the machine allows it (root with apt-get); otherwise that test skips, saying why.
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (Debian package) for the dashboard's browser test" >&2
    (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) ||
      echo "note: could not install chromium; the dashboard's browser test will skip" >&2
  else
    echo "note: chromium not found and not installable here (needs root and apt-get);" \
      "the dashboard's browser test will skip" >&2
  fi
fi
# Two test processes side by side (pytest-xdist): a test uses about one core (its trials wait on
# Ray, processes start, files sync), so two keep a 2-core machine busy. Tests that write GBs
# (the paper rehearsals) share one process (`xdist_group`). CXRKD_TEST_WORKERS=0: one process.
exec "$VENV/bin/python" -m pytest -n "${CXRKD_TEST_WORKERS:-2}" --dist loadgroup "$@"
