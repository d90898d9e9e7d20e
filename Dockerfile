# syntax=docker/dockerfile:1.7
#
# The image of the `loyalty` binary: every command (dev, node, gateway, engine, migrate, cache
# rebuild, projections rebuild) in one small non-root image. Two stages:
#
# 1. builder: the Rust toolchain on Debian, plus what rdkafka's build needs (Cargo.toml builds
#    librdkafka from source with its own configure/make, and links the system zlib: the C
#    toolchain, make, pkg-config, zlib1g-dev). `cargo build --release --locked --bin loyalty`,
#    with BuildKit cache mounts so a rebuild reuses the registry and the target directory.
# 2. runtime: debian-slim of the same release (same glibc) with the two shared libraries the
#    binary needs besides glibc (zlib, libgcc_s: `ldd target/release/loyalty`), CA certificates,
#    a `loyalty` user (uid/gid 10001) and the binary. No shell tool is needed at run time but
#    bash, which the HEALTHCHECK uses.
#
#   docker build -t loyalty:0.1.0 .
#   docker run --rm -p 8080:8080 loyalty:0.1.0       # `loyalty dev`: the whole platform, no server
#   docker run --rm -e LOYALTY_KAFKA_BROKERS=... loyalty:0.1.0 engine   # what the Helm chart runs
#
# The container listens on 0.0.0.0:8080 (LOYALTY_LISTEN) and keeps data in /var/lib/loyalty
# (LOYALTY_DATA_DIR; only `loyalty dev` and `node` on the embedded store write there: mount a
# volume to keep it). It runs with a read-only root filesystem (the chart does so). On SIGTERM
# every command drains and exits 0 (docs/operations.md, "Rolling upgrades").
#
# No Docker engine runs on the project's machines: ./scripts/test.sh runs the same binary with
# this file's ENTRYPOINT, CMD, ENV and HEALTHCHECK (scripts/smoke_image.py parses them).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      build-essential pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin loyalty \
 && install -m 0755 target/release/loyalty /usr/local/bin/loyalty \
 && /usr/local/bin/loyalty --version

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates zlib1g libgcc-s1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 loyalty \
 && useradd --system --uid 10001 --gid loyalty --home-dir /var/lib/loyalty \
      --no-create-home --shell /usr/sbin/nologin loyalty \
 && install -d -o loyalty -g loyalty -m 0750 /var/lib/loyalty
COPY --from=builder /usr/local/bin/loyalty /usr/local/bin/loyalty
ENV LOYALTY_LISTEN=0.0.0.0:8080 \
    LOYALTY_DATA_DIR=/var/lib/loyalty \
    LOYALTY_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/loyalty
EXPOSE 8080
STOPSIGNAL SIGTERM
# Liveness, for Docker and Compose (Kubernetes uses the chart's probes): GET /healthz on the
# port of LOYALTY_LISTEN, with bash alone (no curl in the image).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${LOYALTY_LISTEN##*:} && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["loyalty"]
CMD ["dev"]
