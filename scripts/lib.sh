# Sourced by the other scripts: logging, and installing idempotently what a
# fresh machine lacks. Nothing here runs on its own.

# Prints a line to stderr, tagged with the calling script's name.
log() { printf '[%s] %s\n' "$(basename "${0%.sh}")" "$*" >&2; }

# Installs Debian packages (apt-get, as root or through sudo), or stops with
# the list of what to install where there is no apt-get.
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    log "please install: $*"
    exit 1
  fi
  log "installing $*"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ensure_command COMMAND PACKAGE: installs PACKAGE unless COMMAND is on PATH
# (or at the absolute path COMMAND names).
ensure_command() {
  command -v "$1" >/dev/null 2>&1 || apt_install "$2"
  command -v "$1" >/dev/null 2>&1 || { log "$2 installed, but $1 is still missing"; exit 1; }
}

# ensure_venv DIR REQUIREMENTS: a Python virtual environment in DIR holding
# exactly what REQUIREMENTS pins; rebuilt only when that file changed. Tests
# running at once may ask for the same one: the first builds it while the
# others wait (a lock per directory), and a build cut short is redone, since
# the stamp is written last.
ensure_venv() {
  local dir="$1" requirements="$2"
  local stamp="$dir/.requirements"
  local lock
  lock="${TMPDIR:-/tmp}/tessera-venv-$(realpath -m "$dir" | sha256sum | cut -c1-16).lock"
  (
    flock 9
    if [ -x "$dir/bin/python" ] && cmp -s "$requirements" "$stamp" 2>/dev/null; then
      exit 0
    fi
    log "creating $dir from $requirements"
    python3 -m venv --clear "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
  ) 9>"$lock"
}

# A TCP port below the kernel's ephemeral range that nothing listens on, so a
# server told to bind it does not race the ephemeral ports other processes get.
free_port() {
  local port
  for _ in $(seq 1 200); do
    port=$(( 20000 + RANDOM % 12000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
  done
  log "no free port found"
  return 1
}

# wait_http URL SECONDS [PID]: waits until URL answers 2xx; fails early if PID
# (the server being waited for) has exited.
wait_http() {
  local url="$1" seconds="$2" pid="${3:-}"
  local deadline=$(( $(date +%s) + seconds ))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    curl -sf -o /dev/null --max-time 2 "$url" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    sleep 0.2
  done
  return 1
}
