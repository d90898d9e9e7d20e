#!/usr/bin/env bash
# Installs cargo-deny (the dependency audit: licences, bans, sources, advisories) once into a
# cache dir and prints the path of the binary. Used by scripts/test.sh (LOYALTY_CARGO_DENY_BIN).
#   LOYALTY_CACHE_DIR  cache root (default: $HOME/.cache/loyalty)
#
# cargo-deny 0.20 has no cargo features to trim: no git or HTTP library is linked in (it shells
# out to `git` only to fetch an advisory database, which we never ask of it: scripts/test.sh runs
# it --offline on a snapshot). About 5.5 minutes of CPU on a cold cache (8 to 11 minutes of wall
# time on 2 cores shared with other builds).
set -euo pipefail
VERSION=0.20.2
DIR="${LOYALTY_CACHE_DIR:-$HOME/.cache/loyalty}/cargo-deny-$VERSION"
BIN="$DIR/bin/cargo-deny"
if [ ! -x "$BIN" ]; then
  mkdir -p "$DIR"
  # A private target dir so the workspace target dir is not locked during the build.
  CARGO_TARGET_DIR="$DIR/build" cargo install --locked cargo-deny --version "$VERSION" \
    --root "$DIR" >&2
  rm -rf "$DIR/build"
fi
echo "$BIN"
