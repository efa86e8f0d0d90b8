#!/usr/bin/env bash
# Renders the proxy's config template (deploy/nginx/nginx.conf.template) to
# OUT with envsubst, the way the official nginx image renders it in
# docker-compose.yml: only the TESSERA_* variables are replaced (nginx's own
# $variables survive), and each must be set. Used by scripts/e2e.sh and
# scripts/check-compose.sh.
#
#   TESSERA_LISTEN=127.0.0.1:8080 TESSERA_AUTH_UPSTREAM='server 127.0.0.1:8081;' ... \
#     bash scripts/render-proxy-config.sh /tmp/nginx.conf
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

out="${1:?usage: render-proxy-config.sh OUT}"
template=deploy/nginx/nginx.conf.template
ensure_command envsubst gettext-base

# Exactly the variables the template documents.
vars=(TESSERA_LISTEN TESSERA_AUTH_UPSTREAM TESSERA_WS_UPSTREAM TESSERA_RESOLVER
      TESSERA_ACCESS_LOG TESSERA_NGINX_TEMP TESSERA_STATIC_ROOT)
list=""
for var in "${vars[@]}"; do
  [ -n "${!var:-}" ] || { log "$var is not set"; exit 1; }
  list+="\${$var} "
done
envsubst "$list" <"$template" >"$out"

# A TESSERA_ variable the template uses but this list lacks would be left in
# place (and nginx would fail on it later, less clearly).
if grep -nE '\$\{?TESSERA_' "$out" >&2; then
  log "$template uses variables not rendered above"
  exit 1
fi
