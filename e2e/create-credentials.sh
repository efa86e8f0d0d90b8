#!/bin/sh
# Run by compose's e2e-setup service (profile test) in the application image:
# creates a user and an API key for the end-to-end suite with the operator CLI
# and writes them to $OUT for the e2e service. A new random user each run; the
# previous run's user (named in the old file) is disabled first, so test users
# with admin keys do not pile up in a running stack.
set -eu
OUT="${E2E_CREDENTIALS_OUT:-/var/lib/tessera/credentials.env}"

if [ -f "$OUT" ]; then
  old=$(sed -n "s/^E2E_USERNAME='\(.*\)'$/\1/p" "$OUT")
  if [ -n "$old" ]; then
    auth-service user disable "$old" || echo "e2e-setup: could not disable $old" >&2
  fi
fi

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }
username="e2e-$(random_hex 6)"
AUTH_PASSWORD=$(random_hex 18)
export AUTH_PASSWORD
auth-service user add "$username" --key-scopes connect,publish,admin
key=$(auth-service api-key create "$username" --scopes connect,publish,publish_any,admin)

umask 077
printf "E2E_USERNAME='%s'\nE2E_PASSWORD='%s'\nE2E_API_KEY='%s'\n" "$username" "$AUTH_PASSWORD" "$key" >"$OUT.tmp"
mv "$OUT.tmp" "$OUT"
echo "e2e-setup: credentials of $username written to $OUT" >&2
