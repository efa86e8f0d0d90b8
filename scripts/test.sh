#!/usr/bin/env bash
# Runs every test, starting Postgres and Redis first if needed, and installing
# what the suites need (nginx, promtool, Chromium, Python and npm packages) if
# missing.
# This is the command CI runs (.ci/run). In order:
#
#   nextest           unit and integration tests of the workspace: real
#                     Postgres, Redis, WebSocket clients, the Python client,
#                     the Grafana dashboard against real /metrics
#   e2e               the end-to-end suite (e2e/) through nginx running the
#                     repository's proxy config, against freshly started
#                     services (scripts/e2e.sh)
#   js-client         the JavaScript client (clients/js): its committed build
#                     reproduced from package-lock.json, its size, unit tests
#                     against a fake WebSocket, integration tests against
#                     real services (scripts/js-tests.sh client)
#   browser           the demo (clients/demo) in headless Chromium against
#                     real services behind nginx (scripts/js-tests.sh browser)
#   schemathesis      a live auth-service against its own /openapi.json,
#                     every check (scripts/schemathesis.sh)
#   compose           docker-compose.yml against the Compose Specification's
#                     schema, and nginx -t on the config it renders
#                     (scripts/check-compose.sh)
#   monitoring        promtool check config (scripts/check-monitoring.sh)
#   fuzz              every cargo-fuzz target in fuzz/ for FUZZ_SECONDS
#                     (default 60) each from its seed corpus; any crash
#                     fails it (scripts/fuzz.sh)
#
# Arguments go to cargo nextest (e.g. a test filter). Every stage runs even
# when an earlier one failed; the last lines name the stages that failed.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
# A one-off build (CI's fresh clone) gains nothing from incremental
# compilation, whose caches would take about as much disk as the build.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

bash scripts/ensure-services.sh || exit 1

failed=()
stage() {
  local name="$1"
  shift
  log "=== $name: $*"
  local started=$SECONDS
  if "$@"; then
    log "=== $name passed ($((SECONDS - started)) s)"
  else
    log "=== $name FAILED ($((SECONDS - started)) s)"
    failed+=("$name")
  fi
}

stage nextest cargo nextest run --workspace --all-targets --profile ci "$@"
stage e2e bash scripts/e2e.sh
stage js-client bash scripts/js-tests.sh client
stage browser bash scripts/js-tests.sh browser
stage schemathesis bash scripts/schemathesis.sh
stage compose bash scripts/check-compose.sh
stage monitoring bash scripts/check-monitoring.sh
stage fuzz bash scripts/fuzz.sh

if [ "${#failed[@]}" -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
log "every stage passed"
