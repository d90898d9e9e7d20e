#!/usr/bin/env bash
# The whole test suite: unit, property, API and crash tests. What `.ci/run` runs.
set -euo pipefail
cd "$(dirname "$0")/.."

# The crash tests run the real binary; build it in the same profile as the tests so that the
# dependencies are compiled once.
cargo build --locked --bin loyalty

if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --locked --workspace --no-fail-fast "$@"
else
    echo "cargo-nextest not found; using cargo test"
    cargo test --locked --workspace --no-fail-fast "$@"
fi
