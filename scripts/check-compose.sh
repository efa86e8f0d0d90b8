#!/usr/bin/env bash
# Checks docker-compose.yml and the proxy config it runs, without Docker:
#
# 1. validates the file against the Compose Specification's JSON schema, plus
#    the cross-references Compose itself checks (depends_on targets, declared
#    volumes, bind-mounted paths) and the rule that only nginx publishes a
#    port (tools/compose-check/check-compose.mjs);
# 2. proves that check bites: broken copies of the file (an unknown key, a
#    misspelt condition, an unknown restart policy, a YAML error, an
#    undeclared volume, a published Redis port) must each be refused;
# 3. renders deploy/nginx/nginx.conf.template with the nginx service's own
#    environment from the file and runs `nginx -t` on it (Debian's nginx).
#    Outside Docker the upstream names do not resolve and nginx 1.22 lacks
#    the `resolve` parameter, so those two are swapped for 127.0.0.1 (the
#    ports are kept), and file locations go to a temp dir; the image's nginx
#    version is checked to support `resolve` instead. Everything else is the
#    compose rendering: listen address, resolver, limits, locations, maps,
#    log format, error pages.
#
# Installs what it needs if missing (Node.js and npm, nginx, the
# validator's packages from tools/compose-check/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

compose=docker-compose.yml
tools=tools/compose-check
ensure_command node nodejs
ensure_command npm npm
ensure_command nginx nginx
if ! cmp -s "$tools/package-lock.json" "$tools/node_modules/.tessera-lock" 2>/dev/null; then
  log "installing the validator's packages into $tools/node_modules"
  (cd "$tools" && npm ci --no-audit --no-fund --loglevel=error)
  cp "$tools/package-lock.json" "$tools/node_modules/.tessera-lock"
fi
check() { node "$tools/check-compose.mjs" "$@"; }

work=$(mktemp -d /tmp/tessera-check-compose.XXXXXX)
trap 'rm -rf "$work"' EXIT

# --- 1. The file --------------------------------------------------------------
check validate "$compose"

# --- 2. Broken copies must be refused -----------------------------------------
# Each is the real file with one mistake (perl: first match only).
broken() {
  local name="$1" edit="$2"
  local copy="$work/broken-$name.yml"
  perl -0pe "$edit" "$compose" >"$copy"
  if cmp -s "$copy" "$compose"; then
    log "self-test '$name' did not change the file: update its edit"
    exit 1
  fi
  if check validate "$copy" 2>"$work/broken-$name.err" >/dev/null; then
    log "a broken compose file was accepted ($name): the check does not work"
    exit 1
  fi
  log "refused as it should be ($name): $(head -n 1 "$work/broken-$name.err")"
}
broken unknown-key       's/\n    restart: unless-stopped\n/\n    restrat: unless-stopped\n/'
broken bad-condition     's/condition: service_healthy/condition: service_healty/'
broken bad-restart       's/\n    restart: unless-stopped\n/\n    restart: sometimes\n/'
broken yaml-syntax       's/"--maxmemory-policy", "noeviction"\]/"--maxmemory-policy", "noeviction"/'
broken undeclared-volume 's/- redis-data:\/data/- redis-dta:\/data/'
broken public-redis      's/\n  redis:\n/\n  redis:\n    ports: ["6379:6379"]\n/'

# --- 3. The proxy config as compose renders it ----------------------------------
eval "$(check env "$compose" nginx)"
image=$(sed -n 's/^    image: nginx:\([0-9][0-9.]*\).*/\1/p' "$compose" | head -n 1)
if printf '%s\n' "$TESSERA_AUTH_UPSTREAM" "$TESSERA_WS_UPSTREAM" | grep -q ' resolve'; then
  # `server ... resolve` in an upstream needs nginx >= 1.27.3.
  if [ -z "$image" ] || [ "$(printf '%s\n' 1.27.3 "$image" | sort -V | head -n 1)" != 1.27.3 ]; then
    log "the upstreams use 'resolve', which needs nginx >= 1.27.3; the compose file's image is nginx:${image:-?}"
    exit 1
  fi
fi
for var in TESSERA_AUTH_UPSTREAM TESSERA_WS_UPSTREAM; do
  if ! printf '%s' "${!var}" | grep -Eq '^ *(server [^;]+; *)+$'; then
    log "$var in $compose is not a list of 'server ...;' lines: ${!var}"
    exit 1
  fi
  local_lines=$(printf '%s' "${!var}" | sed -E 's/server [^ :;]+:/server 127.0.0.1:/g; s/ resolve//g')
  export "$var=$local_lines"
done
mkdir -p "$work/temp" "$work/static"
export TESSERA_ACCESS_LOG="$work/access.log" TESSERA_NGINX_TEMP="$work/temp" TESSERA_STATIC_ROOT="$work/static"
bash scripts/render-proxy-config.sh "$work/nginx.conf"
nginx -t -q -p "$work/" -c "$work/nginx.conf" -g "pid $work/nginx.pid;"
log "nginx -t: the proxy config as $compose renders it (listen $TESSERA_LISTEN, resolver $TESSERA_RESOLVER; upstreams $TESSERA_AUTH_UPSTREAM $TESSERA_WS_UPSTREAM) is valid"
