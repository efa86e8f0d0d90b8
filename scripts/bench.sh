#!/usr/bin/env bash
# Benchmarks the stack on this machine: builds the release binaries, makes
# sure Postgres and Redis run, then starts auth-service and the ws-nodes,
# runs the load scenarios and writes bench-results/report.{md,json}.
#
#   bash scripts/bench.sh --quick               # about a minute, indicative figures
#   bash scripts/bench.sh                       # full size: the real figures
#   bash scripts/bench.sh --quick --only fanout # one scenario
#   bash scripts/bench.sh --help                # every option
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
cargo build --release -p auth-service -p ws-node -p bench
bash scripts/ensure-services.sh
exec "$target_dir/release/tessera-bench" run "$@"
