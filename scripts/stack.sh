#!/usr/bin/env bash
# Runs the whole stack on this machine: auth-service on 127.0.0.1:8080 and two
# ws-nodes on 127.0.0.1:8081 and 127.0.0.1:8082 (release builds), against the
# local Postgres and Redis (started first if needed). Ctrl-C stops everything.
# Every setting can be overridden through the environment (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-services.sh
cargo build --release -p auth-service -p ws-node
export RUST_LOG="${RUST_LOG:-info}"
trap 'trap - EXIT; kill 0 2>/dev/null' EXIT INT TERM
target/release/auth-service &
# Give auth-service a moment to create and migrate the database on first run.
for _ in $(seq 1 50); do curl -sf http://127.0.0.1:8080/healthz >/dev/null 2>&1 && break; sleep 0.2; done
WS_LISTEN=127.0.0.1:8081 NODE_ID=node-1 target/release/ws-node &
WS_LISTEN=127.0.0.1:8082 NODE_ID=node-2 target/release/ws-node &
echo "stack running: auth-service http://127.0.0.1:8080, ws-nodes ws://127.0.0.1:8081/ws and ws://127.0.0.1:8082/ws (Ctrl-C stops)" >&2
wait
