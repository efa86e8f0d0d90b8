#!/usr/bin/env bash
# Runs every test of the workspace against real Postgres and Redis, starting
# them first if needed. This is the command CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-services.sh
cargo nextest run --workspace --all-targets --profile ci "$@"
