#!/usr/bin/env bash
# Creates .venv with the Python example client's dependencies (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
req=clients/python/requirements.txt
stamp=.venv/.requirements
if [ -x .venv/bin/python ] && cmp -s "$req" "$stamp" 2>/dev/null; then
  exit 0
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
