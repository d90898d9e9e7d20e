#!/usr/bin/env bash
# Installs the tansu 0.6.0 Kafka-compatible broker once into a cache dir and prints the
# path of the binary. Used by the Kafka adapter tests (libs/kafka/tests) through
# loyalty_testkit::tansu. About 8 minutes on a cold cache.
#   LOYALTY_CACHE_DIR  cache root (default: $HOME/.cache/loyalty)
set -euo pipefail
VERSION=0.6.0
DIR="${LOYALTY_CACHE_DIR:-$HOME/.cache/loyalty}/tansu-$VERSION"
BIN="$DIR/bin/tansu"
if [ ! -x "$BIN" ]; then
  mkdir -p "$DIR"
  # A private target dir so the workspace target dir is not locked during the build.
  CARGO_TARGET_DIR="$DIR/build" cargo install --locked tansu --version "$VERSION" \
    --features dynostore,libsql --root "$DIR" >&2
  rm -rf "$DIR/build"
fi
echo "$BIN"
