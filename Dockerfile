# One image with both services: auth-service (the default command) and
# ws-node. Built by docker-compose.yml; by hand:
#
#   docker build -t tessera .
#   docker run --rm tessera auth-service --help
#
# Two stages: a Rust build, then a small Debian runtime with only the two
# binaries, CA certificates and curl (for the healthchecks), running as an
# unprivileged user.

# ---------------------------------------------------------------------------
# Build. The toolchain is pinned: the workspace needs Rust >= 1.94 (sqlx 0.9's
# minimum; Cargo.lock decides), edition 2024. The image has the C compiler and
# make that ws-node's jemalloc build needs.
FROM rust:1.95.0-bookworm AS build
WORKDIR /src

# Dependencies first, in their own layer: the manifests and the lock file with
# every workspace member's sources replaced by empty stubs. This layer is
# rebuilt only when a manifest or Cargo.lock changes, not for a source edit.
# (Every member needs its manifest and a target to exist for the workspace to
# load, including testkit and bench, which are not built here.)
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY auth-service/Cargo.toml auth-service/
COPY ws-node/Cargo.toml ws-node/
COPY testkit/Cargo.toml testkit/
COPY bench/Cargo.toml bench/
RUN set -eux; \
    for lib in shared auth-service ws-node testkit; do \
        mkdir -p "$lib/src"; touch "$lib/src/lib.rs"; \
    done; \
    for bin in auth-service ws-node bench; do \
        mkdir -p "$bin/src"; echo 'fn main() {}' > "$bin/src/main.rs"; \
    done; \
    cargo build --release --locked -p auth-service -p ws-node

# The sources (auth-service embeds migrations/ at compile time). Their entry
# files are touched: cargo decides what to rebuild by modification times, and
# the copied files may be older than the stubs' build. The --help runs fail
# the build, rather than the container, should a stub have slipped through.
COPY shared shared
COPY auth-service auth-service
COPY ws-node ws-node
COPY migrations migrations
RUN set -eux; \
    touch shared/src/lib.rs auth-service/src/lib.rs auth-service/src/main.rs \
          ws-node/src/lib.rs ws-node/src/main.rs; \
    cargo build --release --locked -p auth-service -p ws-node; \
    ./target/release/auth-service --help | grep -q 'api-key'; \
    ./target/release/ws-node --help | grep -q 'WS_LISTEN'

# ---------------------------------------------------------------------------
# Runtime: the same Debian release as the build image (the binaries link
# against its glibc).
FROM debian:bookworm-slim AS runtime
# The user tessera, uid/gid 10001: compose's e2e service runs as that id to
# read what its e2e-setup service (this image) writes.
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --gid 10001 tessera; \
    useradd --uid 10001 --gid tessera --no-log-init --no-create-home \
            --home-dir /var/lib/tessera --shell /usr/sbin/nologin tessera; \
    install -d -o tessera -g tessera -m 0750 /var/lib/tessera

COPY --from=build /src/target/release/auth-service /src/target/release/ws-node /usr/local/bin/

USER tessera:tessera
WORKDIR /var/lib/tessera

# Listen on every interface of the container (the defaults are loopback).
# The other settings come from the environment (see README, Configuration).
ENV AUTH_LISTEN=0.0.0.0:8080 \
    WS_LISTEN=0.0.0.0:8081
# auth-service, ws-node, and /metrics where METRICS_LISTEN puts it.
EXPOSE 8080 8081 9100

# For the default command (auth-service on 8080); docker-compose.yml gives
# each service its own check (ws-node: port 8081) with the same curl.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "--max-time", "2", "http://127.0.0.1:8080/healthz"]

CMD ["auth-service"]
