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
# The mint scenarios use wrk (a lean C load generator) when it is installed, so
# that the server rather than the client gets the CPU; else a Rust client.
if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get install -y -qq wrk >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1; } ||
    echo "bench.sh: could not install wrk; the mint scenarios use the Rust client" >&2
fi
# The handshake scenario also measures a Node.js ws + ioredis peer
# (bench/peers/node-ws) when Node is here; its packages are pinned.
if command -v npm >/dev/null 2>&1 && [ ! -d bench/peers/node-ws/node_modules/ioredis ]; then
  (cd bench/peers/node-ws && npm ci --no-audit --no-fund --silent) ||
    echo "bench.sh: could not install the Node peer's packages; it is left out" >&2
fi
exec "$target_dir/release/tessera-bench" run "$@"
