#!/usr/bin/env bash
# Checks the monitoring profile's Prometheus configuration with promtool
# (from Debian's `prometheus` package, installed if missing). The Grafana
# dashboard is checked against the services' real /metrics by ws-node's
# `monitoring` integration test, which `cargo nextest` runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_command promtool prometheus
promtool check config deploy/prometheus/prometheus.yml
