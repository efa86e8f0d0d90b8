#!/usr/bin/env bash
# The JavaScript client's tests (clients/js) and the demo's (clients/demo) in
# headless Chromium:
#
#   scripts/js-tests.sh client    the committed build is what the sources and
#                                 package-lock.json make (byte for byte), its
#                                 size, the state machine against a fake
#                                 WebSocket, and the client against real
#                                 services (auth-service + two ws-nodes)
#   scripts/js-tests.sh browser   the demo in Debian's Chromium (driven by
#                                 playwright-core) against real services
#                                 behind nginx running the repository's
#                                 proxy config
#   scripts/js-tests.sh           both
#
# The tests start the services themselves (clients/js/test/support/stack.mjs):
# the workspace's debug binaries on free ports, a fresh Postgres database
# and a Redis key prefix per test file, all removed when the file ends.
#
# Installs what it needs if missing, idempotently: Node.js >= 20 and npm,
# clients/js's packages (npm ci from package-lock.json), and for the browser
# tests Debian's chromium, nginx and gettext-base; Postgres and Redis are
# started by ensure-services.sh. Never downloads a browser.
#
# Bounded: every test has its own time limit and each run of the test runner
# is stopped after 5 minutes. What a test process killed hard would leave
# behind (processes, databases, Redis keys: the tests list them in a registry
# file) is cleaned up here. The browser tests write a screenshot of the demo
# to clients/js/test-artifacts/ (TESSERA_ARTIFACTS to change it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

what="${1:-all}"
case "$what" in
  client | browser | all) ;;
  *) log "usage: js-tests.sh [client|browser|all]"; exit 2 ;;
esac

bash scripts/ensure-services.sh
ensure_command node nodejs
ensure_command npm npm
ensure_command redis-cli redis-tools
ensure_command psql postgresql-client
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  log "Node.js $(node --version) is too old: the client and its tests need Node >= 20"
  exit 1
fi
if [ "$what" != client ]; then
  ensure_command chromium chromium
  ensure_command nginx nginx
  ensure_command envsubst gettext-base
fi

js=clients/js
if ! cmp -s "$js/package-lock.json" "$js/node_modules/.tessera-lock" 2>/dev/null; then
  log "installing clients/js's packages (npm ci)"
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$js/package-lock.json" "$js/node_modules/.tessera-lock"
fi
# The same build as scripts/test.sh's (see scripts/e2e.sh): after the
# nextest stage, a no-op.
cargo build --quiet --workspace --all-targets

failed=0
work=$(mktemp -d /tmp/tessera-js-tests.XXXXXX)
export TESSERA_JS_REGISTRY="$work/registry"
touch "$TESSERA_JS_REGISTRY"

cleanup() {
  local status=$?
  trap - EXIT
  trap '' INT TERM
  # Only what the tests registered, and a process only while its command
  # line still holds the marker registered with it (its binary's path, or
  # the test's work directory): a pid reused meanwhile is left alone.
  local kind value marker pids=()
  while read -r kind value marker; do
    if [ "$kind" = pid ] && [ -n "$marker" ] && [ -r "/proc/$value/cmdline" ] &&
      tr '\0' ' ' <"/proc/$value/cmdline" | grep -qF -- "$marker"; then
      pids+=("$value")
    fi
  done <"$TESSERA_JS_REGISTRY"
  if [ "${#pids[@]}" -gt 0 ]; then
    log "stopping what the tests left running: ${pids[*]}"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    sleep 2
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  while read -r kind value _; do
    case "$kind" in
      db) psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -qAtc "DROP DATABASE IF EXISTS \"$value\" WITH (FORCE)" >/dev/null 2>&1 || true ;;
      prefix) redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$value:*" | xargs -r -n 500 redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1 || true ;;
    esac
  done <"$TESSERA_JS_REGISTRY"
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# run NAME TEST_TIMEOUT_MS DIR...: node's test runner on test files, one
# file at a time (each starts its own services), every test stopped after
# TEST_TIMEOUT_MS unless it sets its own limit, the whole run after 5
# minutes; then one plain line of counts.
run() {
  local name="$1" test_timeout="$2"
  shift 2
  log "running the $name tests"
  local status=0
  (cd "$js" && timeout --kill-after=20 300 node --test --test-concurrency=1 --test-timeout="$test_timeout" \
    --test-reporter=spec --test-reporter-destination=stdout \
    --test-reporter=tap --test-reporter-destination="$work/$name.tap" "$@") || status=$?
  # Cancelled tests (a time limit, a promise that never settled) count as failed.
  local passed failed_count cancelled
  passed=$(sed -n 's/^# pass \([0-9]*\)$/\1/p' "$work/$name.tap" 2>/dev/null | tail -n 1)
  failed_count=$(sed -n 's/^# fail \([0-9]*\)$/\1/p' "$work/$name.tap" 2>/dev/null | tail -n 1)
  cancelled=$(sed -n 's/^# cancelled \([0-9]*\)$/\1/p' "$work/$name.tap" 2>/dev/null | tail -n 1)
  echo "$name: ${passed:-0} passed, $((${failed_count:-0} + ${cancelled:-0})) failed"
  if [ "$status" -ne 0 ]; then
    [ "$status" -eq 124 ] && log "the $name tests ran out of time"
    failed=1
  fi
}

if [ "$what" != browser ]; then
  # The built module is committed (clients/js/dist, and clients/demo, which
  # must be servable without npm). A rebuild with the locked tools must give
  # the same bytes: that proves the build reproducible, and the committed
  # files current.
  log "rebuilding clients/js (npm run build) and comparing with the committed build"
  (cd "$js" && npm run --silent build)
  built=("$js/dist" clients/demo/tessera.js)
  if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    log "not a git checkout: cannot compare the rebuild with the committed build"
  elif [ -n "$(git status --porcelain --untracked-files=all -- "${built[@]}")" ]; then
    git status --short --untracked-files=all -- "${built[@]}" >&2
    git diff --stat -- "${built[@]}" >&2
    log "the committed build differs from a rebuild: run 'npm run build' in clients/js and commit the result"
    failed=1
  else
    log "the committed build is reproduced byte for byte"
  fi
  run js-client-unit 20000 test/unit/
  run js-client-integration 120000 test/integration/
fi
if [ "$what" != client ]; then
  run browser 120000 test/browser/
fi
exit "$failed"
