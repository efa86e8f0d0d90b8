#!/usr/bin/env bash
# Runs the whole stack on this machine from release builds: auth-service and
# two ws-nodes, against the local Postgres and Redis (started first if
# needed). Ctrl-C stops everything; so does any of them failing.
#
# Every service setting can be set in the environment (see the README's
# Configuration) and reaches all three processes. The per-process ones have
# their own variables here:
#   AUTH_LISTEN   auth-service's address          (default 127.0.0.1:8080)
#   WS_NODES      the ws-nodes' addresses, space-separated, one node each
#                 (default "127.0.0.1:8081 127.0.0.1:8082"); node i is named
#                 NODE_ID_PREFIX-i (default node-1, node-2, ...)
#   PUBLIC_WS_URL defaults to the first node's ws://…/ws
#   STATIC_DIR    what auth-service serves at / (default: the demo,
#                 clients/demo; set it empty to serve nothing there)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

for per_node in WS_LISTEN NODE_ID METRICS_LISTEN; do
  if [ -n "${!per_node:-}" ]; then
    log "$per_node would be the same for every process; use WS_NODES (and NODE_ID_PREFIX) instead, or run the binaries yourself"
    exit 2
  fi
done
export AUTH_LISTEN="${AUTH_LISTEN:-127.0.0.1:8080}"
read -r -a nodes <<<"${WS_NODES:-127.0.0.1:8081 127.0.0.1:8082}"
[ "${#nodes[@]}" -ge 1 ] || { log "WS_NODES names no address"; exit 2; }
export PUBLIC_WS_URL="${PUBLIC_WS_URL:-ws://${nodes[0]}/ws}"
export STATIC_DIR="${STATIC_DIR-$PWD/clients/demo}"
[ -n "$STATIC_DIR" ] || unset STATIC_DIR
export RUST_LOG="${RUST_LOG:-info}"

# The address to check a listener at: a wildcard bind is reached on loopback.
local_url() {
  local addr="$1"
  addr="${addr/#0.0.0.0:/127.0.0.1:}"
  addr="${addr/#[::]:/[::1]:}"
  echo "http://$addr"
}

# Another program on one of the ports would answer the readiness checks in
# place of ours: refuse to start rather than report someone else's health.
for addr in "$AUTH_LISTEN" "${nodes[@]}"; do
  url=$(local_url "$addr")
  hostport="${url#http://}"
  host="${hostport%:*}"; host="${host#[}"; host="${host%]}"
  if (exec 3<>"/dev/tcp/$host/${hostport##*:}") 2>/dev/null; then
    log "$addr is already in use (another stack running?); stop it or choose other addresses (AUTH_LISTEN, WS_NODES)"
    exit 1
  fi
done

bash scripts/ensure-services.sh
cargo build --release -p auth-service -p ws-node

pids=()
names=()
stop_all() {
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# start NAME URL COMMAND...: starts a process and waits until URL/readyz
# answers 200, or stops the stack with an error if it exits or takes too long.
start() {
  local name="$1" url="$2"
  shift 2
  "$@" &
  pids+=("$!")
  names+=("$name")
  if ! wait_http "$url/readyz" 120 "$!"; then
    if kill -0 "$!" 2>/dev/null; then
      log "$name did not become ready at $url/readyz within 120 s (its log is above); stopping"
    else
      log "$name failed to start (its log is above); stopping"
    fi
    exit 1
  fi
}

start auth-service "$(local_url "$AUTH_LISTEN")" target/release/auth-service
for i in "${!nodes[@]}"; do
  n=$((i + 1))
  start "ws-node $n" "$(local_url "${nodes[$i]}")" \
    env WS_LISTEN="${nodes[$i]}" NODE_ID="${NODE_ID_PREFIX:-node}-$n" target/release/ws-node
done

log "stack running: auth-service $(local_url "$AUTH_LISTEN"), ws-nodes: $(printf 'ws://%s/ws ' "${nodes[@]}")(Ctrl-C stops)"
[ -z "${STATIC_DIR:-}" ] || log "the demo: open $(local_url "$AUTH_LISTEN") in a browser"
# Whichever process ends first ends the stack: a node alone, or an
# auth-service without nodes, is not a working stack.
set +e
wait -n "${pids[@]}"
status=$?
set -e
for i in "${!pids[@]}"; do
  if ! kill -0 "${pids[$i]}" 2>/dev/null; then
    log "${names[$i]} exited (status $status); stopping the stack"
  fi
done
exit 1
