#!/usr/bin/env bash
# Makes sure what the stack and the tests need is installed and running:
# PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379, redis-server for the
# fault tests, and cargo-nextest. Idempotent: does nothing that is already done.
set -euo pipefail

source "$(dirname "$0")/lib.sh"

# --- PostgreSQL -------------------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1 && ! command -v psql >/dev/null 2>&1; then
  apt_install postgresql
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$version" ]; then
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  pg_isready -q -h 127.0.0.1 -p 5432 || { log "PostgreSQL is not answering on 127.0.0.1:5432"; exit 1; }
fi

# A fresh Debian cluster asks for a password on TCP; the local defaults
# (postgres://postgres@127.0.0.1:5432) expect loopback trust, as on a developer
# machine. Only if a password-less connection is refused, and only for the
# loopback addresses, trust is added at the top of pg_hba.conf.
if [ -z "${TEST_DATABASE_URL:-}" ] && ! psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -Atc 'select 1' >/dev/null 2>&1; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if [ -n "$version" ] && [ -f "$hba" ]; then
    log "allowing password-less loopback connections to PostgreSQL ($hba)"
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    pg_ctlcluster --skip-systemctl-redirect "$version" main reload || $SUDO pg_ctlcluster "$version" main reload
    sleep 0.5
  fi
  psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -Atc 'select 1' >/dev/null 2>&1 \
    || { log "cannot connect to PostgreSQL as postgres@127.0.0.1 without a password; set TEST_DATABASE_URL / DATABASE_URL"; exit 1; }
fi

# --- Redis -------------------------------------------------------------------
if ! command -v redis-server >/dev/null 2>&1; then
  apt_install redis-server
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  log "starting Redis on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  for _ in $(seq 1 50); do redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null || { log "Redis did not start"; exit 1; }
fi

# --- A Redis Cluster for the tests --------------------------------------------
# The suites that run against a cluster share this one (each test under its
# own key prefix), as the others share the Redis on 6379: three masters with
# a replica each on 127.0.0.1:7101-7106. Tests that kill or reshard nodes
# start a private cluster instead (testkit::RedisCluster). Skipped when
# TEST_REDIS_CLUSTER_URLS points elsewhere.
if [ -z "${TEST_REDIS_CLUSTER_URLS:-}" ] \
  && ! redis-cli -p 7101 cluster info 2>/dev/null | grep -q cluster_state:ok; then
  dir="${TMPDIR:-/tmp}/tessera-test-cluster"
  log "starting the test Redis Cluster on 127.0.0.1:7101-7106 ($dir)"
  mkdir -p "$dir"
  for port in 7101 7102 7103 7104 7105 7106; do
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    rm -f "$dir/nodes-$port.conf"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
      --cluster-enabled yes --cluster-config-file "$dir/nodes-$port.conf" \
      --cluster-node-timeout 3000 --repl-diskless-sync-delay 0 \
      --dir "$dir" --logfile "$dir/redis-$port.log"
  done
  for port in 7101 7102 7103 7104 7105 7106; do
    for _ in $(seq 1 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  done
  redis-cli --cluster create 127.0.0.1:7101 127.0.0.1:7102 127.0.0.1:7103 \
    127.0.0.1:7104 127.0.0.1:7105 127.0.0.1:7106 --cluster-replicas 1 --cluster-yes >/dev/null
  for _ in $(seq 1 100); do
    ok=1
    for port in 7101 7102 7103 7104 7105 7106; do
      redis-cli -p "$port" cluster info | grep -q cluster_state:ok || ok=0
    done
    [ "$(redis-cli -p 7101 cluster nodes | grep -c slave)" = 3 ] || ok=0
    for port in 7101 7102 7103 7104 7105 7106; do
      if redis-cli -p "$port" info replication | grep -q role:slave; then
        redis-cli -p "$port" info replication | grep -q master_link_status:up || ok=0
      fi
    done
    [ "$ok" = 1 ] && break
    sleep 0.2
  done
  [ "$ok" = 1 ] || { log "the test Redis Cluster did not form"; exit 1; }
fi

# --- Test runner --------------------------------------------------------------
if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi
