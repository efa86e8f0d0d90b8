#!/usr/bin/env bash
# Creates .venv with the Python example client's dependencies (idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_venv .venv clients/python/requirements.txt
