#!/usr/bin/env bash
# Runs the end-to-end suite (e2e/) against a stack started here without
# Docker: auth-service and two ws-nodes (debug builds) on free ports, against a
# fresh Postgres database and a private Redis key prefix, behind Debian's nginx
# running the repository's own proxy config (deploy/nginx/nginx.conf.template,
# rendered with these upstreams). The suite talks to nginx only.
#
# Installs what it needs if missing (nginx, gettext-base, a Python venv
# in .venv-e2e), stops everything it started and drops the database on exit,
# and exits with the suite's status. Extra arguments go to pytest
# (e.g. -k logout). Bounded: each wait has a limit, the suite 120 s.
# The logs (services, nginx, its access log) are kept when the suite fails,
# or always with E2E_KEEP_LOGS=1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

bash scripts/ensure-services.sh
ensure_command nginx nginx
ensure_command envsubst gettext-base
ensure_venv .venv-e2e e2e/requirements.txt
# The same build as scripts/test.sh's (every target of the workspace, so the
# same feature set): after the tests this is a no-op. Building only
# `-p auth-service -p ws-node` would unify features differently and compile
# every dependency a second time.
cargo build --quiet --workspace --all-targets

work=$(mktemp -d /tmp/tessera-e2e.XXXXXX)
# nginx's workers run unprivileged and need to reach their files in here.
chmod 755 "$work"
suffix=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
database="tessera_e2e_$suffix"
prefix="tessera-e2e-$suffix"
pids=()

cleanup() {
  local status=$?
  # Ignored from here on, not reset: a signal that arrived during the suite is
  # delivered only now, and would otherwise kill the cleanup half-way.
  trap - EXIT
  trap '' INT TERM
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -qAtc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" \
    >/dev/null 2>&1 || log "could not drop database $database"
  redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$prefix:*" | xargs -r -n 500 redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ] || [ "${E2E_KEEP_LOGS:-}" = 1 ]; then
    for file in "$work"/*.log; do
      [ -s "$file" ] || continue
      log "--- last lines of $file"
      tail -n 30 "$file" >&2
    done
    [ "$status" -eq 0 ] || log "FAILED (exit $status)"
    log "logs kept in $work"
  else
    rm -rf "$work"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Distinct free ports; the proxy takes 8080 unless something (such as a
# running stack) already has it.
taken=" "
pick_port() {
  local port
  while :; do
    port=$(free_port)
    case "$taken" in *" $port "*) continue ;; esac
    taken+="$port "
    echo "$port"
    return
  done
}
if (exec 3<>/dev/tcp/127.0.0.1/8080) 2>/dev/null; then proxy_port=$(pick_port); else proxy_port=8080; taken+="8080 "; fi
auth_port=$(pick_port)
ws1_port=$(pick_port)
ws2_port=$(pick_port)
# Each process's private /metrics listener (METRICS_LISTEN), as in compose.
auth_metrics_port=$(pick_port)
ws1_metrics_port=$(pick_port)
ws2_metrics_port=$(pick_port)
base_url="http://127.0.0.1:$proxy_port"

# What both services share, as docker-compose.yml sets it (behind the proxy).
export REDIS_URL=redis://127.0.0.1:6379
export REDIS_PREFIX="$prefix"
export ALLOWED_ORIGINS="$base_url"
export COOKIE_SECURE=true
export TRUST_PROXY_HEADERS=1
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$database"
# Short drains, so the cleanup does not wait.
export SHUTDOWN_TIMEOUT_SECS=2 DRAIN_TIMEOUT_SECS=2

log "auth-service :$auth_port, ws-nodes :$ws1_port :$ws2_port, nginx $base_url, database $database, Redis prefix $prefix"
AUTH_LISTEN="127.0.0.1:$auth_port" PUBLIC_WS_URL="ws://127.0.0.1:$proxy_port/ws" \
METRICS_LISTEN="127.0.0.1:$auth_metrics_port" \
  target/debug/auth-service >"$work/auth-service.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$auth_port/readyz" 60 "${pids[-1]}" || { log "auth-service did not become ready"; exit 1; }
for n in 1 2; do
  port_var="ws${n}_port"
  metrics_port_var="ws${n}_metrics_port"
  WS_LISTEN="127.0.0.1:${!port_var}" NODE_ID="e2e-node-$n" \
  METRICS_LISTEN="127.0.0.1:${!metrics_port_var}" \
    target/debug/ws-node >"$work/ws-node-$n.log" 2>&1 &
  pids+=($!)
done
wait_http "http://127.0.0.1:$ws1_port/readyz" 30 "${pids[1]}" || { log "ws-node 1 did not become ready"; exit 1; }
wait_http "http://127.0.0.1:$ws2_port/readyz" 30 "${pids[2]}" || { log "ws-node 2 did not become ready"; exit 1; }

# The suite's user and API key, made with the operator CLI as an operator would.
username="e2e-$suffix"
password=$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')
AUTH_PASSWORD="$password" target/debug/auth-service user add "$username" --key-scopes connect,publish,admin \
  2>>"$work/cli.log"
api_key=$(target/debug/auth-service api-key create "$username" --scopes connect,publish,publish_any,admin 2>>"$work/cli.log")

# The proxy: the repository's template with local upstreams. The static root
# (the demo, as in compose) is copied next to it so the workers can read it
# wherever the checkout is.
mkdir -p "$work/nginx-temp"
cp -r clients/demo "$work/static"
TESSERA_LISTEN="127.0.0.1:$proxy_port" \
TESSERA_AUTH_UPSTREAM="server 127.0.0.1:$auth_port;" \
TESSERA_WS_UPSTREAM="server 127.0.0.1:$ws1_port; server 127.0.0.1:$ws2_port;" \
TESSERA_RESOLVER=127.0.0.1 \
TESSERA_ACCESS_LOG="$work/access.log" \
TESSERA_NGINX_TEMP="$work/nginx-temp" \
TESSERA_STATIC_ROOT="$work/static" \
  bash scripts/render-proxy-config.sh "$work/nginx.conf"
nginx -t -q -p "$work/" -c "$work/nginx.conf" -g "pid $work/nginx.pid;"
nginx -p "$work/" -c "$work/nginx.conf" -g "daemon off; pid $work/nginx.pid;" >"$work/nginx.log" 2>&1 &
pids+=($!)
wait_http "$base_url/healthz" 10 "${pids[-1]}" || { log "nginx did not start"; exit 1; }

log "running the suite through $base_url"
E2E_BASE_URL="$base_url" \
E2E_ORIGIN="$base_url" \
E2E_USERNAME="$username" \
E2E_PASSWORD="$password" \
E2E_API_KEY="$api_key" \
E2E_PROXY_ACCESS_LOG="$work/access.log" \
E2E_METRICS_URLS="http://127.0.0.1:$auth_metrics_port/metrics http://127.0.0.1:$ws1_metrics_port/metrics http://127.0.0.1:$ws2_metrics_port/metrics" \
PYTHONDONTWRITEBYTECODE=1 \
  timeout 120 .venv-e2e/bin/python -m pytest -c e2e/pytest.ini --rootdir e2e e2e "$@"
