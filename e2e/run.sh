#!/bin/sh
# Entry point of the e2e image: loads the credentials file that compose's
# e2e-setup service wrote (E2E_CREDENTIALS: E2E_USERNAME, E2E_PASSWORD,
# E2E_API_KEY), then runs the suite; arguments go to pytest.
set -eu
if [ -n "${E2E_CREDENTIALS:-}" ]; then
  if [ ! -r "$E2E_CREDENTIALS" ]; then
    echo "e2e: cannot read the credentials file $E2E_CREDENTIALS" >&2
    exit 2
  fi
  set -a
  . "$E2E_CREDENTIALS"
  set +a
fi
cd "$(dirname "$0")"
exec python -m pytest "$@"
