#!/usr/bin/env bash
# Tests the live HTTP API of auth-service against its own OpenAPI document
# (GET /openapi.json) with schemathesis: every check, real credentials (an
# API key with every scope and a session cookie), a bounded number of
# examples per operation. Starts auth-service (debug build) on a free port
# against a fresh Postgres database and its own Redis key prefix, and removes
# all of it afterwards. Exits non-zero on any failure.
#
#   bash scripts/schemathesis.sh [extra `schemathesis run` options]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# Examples per operation: what keeps the run to a few minutes on a 2-core
# machine. MAX_SECONDS only stops a run that hangs.
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-300}"
MAX_SECONDS="${SCHEMATHESIS_MAX_SECONDS:-400}"

bash scripts/ensure-services.sh
ensure_venv .venv-schemathesis tools/schemathesis/requirements.txt
# The same build as scripts/test.sh's (see scripts/e2e.sh): a no-op after the tests.
cargo build --quiet --workspace --all-targets
bin=target/debug/auth-service

run_id="$(date +%s)_$$_${RANDOM}"
database="tessera_schemathesis_${run_id}"
port=$(free_port)
origin="http://127.0.0.1:${port}"
work=$(mktemp -d)
server_pid=""

export DATABASE_URL="postgres://postgres@127.0.0.1:5432/${database}"
export REDIS_URL="redis://127.0.0.1:6379"
export REDIS_PREFIX="schemathesis-${run_id}"
export AUTH_LISTEN="127.0.0.1:${port}"
export ALLOWED_ORIGINS="$origin"
# Plain http: the cookie is `session`, without Secure and the __Host- prefix.
export COOKIE_SECURE=false
# Generous limits for the server under test, so that what they guard is
# tested rather than refused: tickets (60 per user, 1200 per key a minute by
# default), and failed logins (10 per account, 100 per IP in 15 min), which
# schemathesis's wrong passwords would use up, and with them the logins that
# renew its session cookie.
export MINT_LIMIT_PER_USER=1000000
export MINT_LIMIT_PER_KEY=1000000
export LOGIN_MAX_FAILURES_PER_ACCOUNT=1000000
export LOGIN_MAX_FAILURES_PER_IP=1000000
export LOG_FORMAT=json
export RUST_LOG="${RUST_LOG:-warn}"

# Deletes every key matching ARGV[1].
delete_keys='
local cursor = "0"
repeat
  local page = redis.call("SCAN", cursor, "MATCH", ARGV[1], "COUNT", 1000)
  cursor = page[1]
  for _, key in ipairs(page[2]) do redis.call("UNLINK", key) end
until cursor == "0"'

cleanup() {
  local status=$?
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  psql -q -h 127.0.0.1 -U postgres -d postgres -w \
    -c "DROP DATABASE IF EXISTS \"${database}\" WITH (FORCE)" >/dev/null 2>&1 || true
  # In Redis itself: generated channel names make keys no shell pipe carries whole.
  redis-cli -h 127.0.0.1 -p 6379 EVAL "$delete_keys" 0 "${REDIS_PREFIX}:*" >/dev/null 2>&1 || true
  if [ "$status" -ne 0 ] && [ -s "$work/server.log" ]; then
    log "auth-service's log (last 40 lines):"
    tail -n 40 "$work/server.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "database ${database}, Redis prefix ${REDIS_PREFIX}, port ${port}"
password="schemathesis-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# The operator CLI creates the database and the user, then the key.
AUTH_PASSWORD="$password" "$bin" user add schemathesis --key-scopes connect,publish,admin >/dev/null
api_key=$("$bin" api-key create schemathesis --scopes connect,publish,publish_any,admin --name schemathesis)

"$bin" >"$work/server.log" 2>&1 &
server_pid=$!
wait_http "${origin}/healthz" 60 "$server_pid" || { log "auth-service did not start"; exit 1; }

# Both credentials work before schemathesis starts: a login as a browser
# would send it (the session cookie is then fetched again the same way,
# see schemathesis.toml), and the key.
curl -sf -o /dev/null -D "$work/login.headers" -X POST "${origin}/v1/login" \
  -H "Origin: ${origin}" -H 'Content-Type: application/json' \
  -d "{\"username\":\"schemathesis\",\"password\":\"${password}\"}"
grep -qi '^set-cookie: session=' "$work/login.headers" || { log "login set no session cookie"; exit 1; }
curl -sf -o /dev/null -H "Authorization: Bearer ${api_key}" "${origin}/v1/me" ||
  { log "the API key is refused"; exit 1; }

export TESSERA_API_KEY="$api_key"
export TESSERA_USERNAME=schemathesis
export TESSERA_PASSWORD="$password"
log "schemathesis: every check, at most ${MAX_EXAMPLES} examples per operation"
# The credentials are applied by tools/schemathesis/schemathesis.toml, by
# security scheme; the Origin is an allowed one, so cookie requests other than
# GET pass the CSRF check.
# The document is read from a file: schemathesis leaves out the operation that
# serves the document it loaded by URL, and GET /openapi.json is tested too.
curl -sf -o "$work/openapi.json" "${origin}/openapi.json"
# It runs in the scratch directory: its caches (.schemathesis, .hypothesis)
# go with it, so every run starts from nothing.
root=$(pwd)
cd "$work"
timeout --kill-after=10 "$MAX_SECONDS" \
  "$root/.venv-schemathesis/bin/schemathesis" --config-file "$root/tools/schemathesis/schemathesis.toml" run \
  "$work/openapi.json" \
  --url "$origin" \
  --checks all \
  --header "Origin: ${origin}" \
  --max-examples "$MAX_EXAMPLES" \
  --generation-database none \
  --no-color \
  "$@"
