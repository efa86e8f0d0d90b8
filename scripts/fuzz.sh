#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60),
# starting from a temporary copy of its committed seed corpus, so the seeds
# stay as committed and what a run discovers is thrown away. Fails on any
# crash, failed assertion, timeout or out-of-memory, printing where libFuzzer
# wrote the input (fuzz/artifacts/<target>/). Prints per target how many
# inputs were executed.
#
#   bash scripts/fuzz.sh                      every target, 60 s each
#   FUZZ_SECONDS=600 bash scripts/fuzz.sh channel_name client_frame
#
# cargo-fuzz needs nightly-only compiler flags (sanitizers, coverage
# instrumentation). Only stable Rust can be counted on, so the flags are
# unlocked on it with RUSTC_BOOTSTRAP=1, for this script's builds only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

CARGO_FUZZ_VERSION=0.13.1
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
export RUSTC_BOOTSTRAP=1
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz $CARGO_FUZZ_VERSION"
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list)
fi

log "building ${targets[*]}"
cargo fuzz build

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for target in "${targets[@]}"; do
  corpus="$work/corpus-$target"
  mkdir -p "$corpus"
  cp -R "fuzz/corpus/$target/." "$corpus/"
  output="$work/$target.log"
  log "running $target for ${FUZZ_SECONDS} s ($(find "$corpus" -type f | wc -l) seeds)"
  # -timeout: an input taking 10 s is a hang worth failing on, not the
  # 20 minutes libFuzzer waits by default.
  if cargo fuzz run "$target" "$corpus" -- \
    -max_total_time="$FUZZ_SECONDS" -timeout=10 -print_final_stats=1 >"$output" 2>&1; then
    status=ok
  else
    status=FAILED
    failed+=("$target")
    tail -n 40 "$output" >&2
  fi
  executions="$(sed -n 's/^stat::number_of_executed_units: *//p' "$output" | tail -n 1)"
  log "$target: $status, ${executions:-?} executions in ${FUZZ_SECONDS} s"
  if [ "$status" = FAILED ]; then
    artifact="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$output" | tail -n 1)"
    log "$target: input saved at ${artifact:-(none written: see the output above)}"
    [ -z "$artifact" ] || log "reproduce: RUSTC_BOOTSTRAP=1 cargo fuzz run $target $artifact"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  log "failed: ${failed[*]}"
  exit 1
fi
log "no target failed"
