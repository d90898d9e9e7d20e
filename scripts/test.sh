#!/usr/bin/env bash
# The whole test suite: unit, property, API, crash, server-backed and multi-process tests. What
# `.ci/run` runs. Arguments go to `cargo nextest run` (or `cargo test`).
#
# This script starts no server: each test starts the servers it needs (PostgreSQL, redis-server,
# tansu, `loyalty` processes) on free loopback ports through loyalty-testkit, and stops them.
# Run as root, it installs what is missing from Debian first (postgresql, redis-server, kcat,
# chromium and chromium-driver for the dashboard page's browser test);
# tansu comes from scripts/install-tansu.sh (LOYALTY_TANSU_BIN). A test whose server is missing
# prints `SKIPPED: <reason>`; the last lines of this script list the suites that ran and the
# tests that were skipped, with their reasons. `LOYALTY_REQUIRE_SERVERS=1` (set by CI) turns
# every such skip into a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

have_initdb() {
    command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}

# Debian packages the tests use, installed when missing and when we may (root, apt-get).
install_missing() {
    local missing=()
    have_initdb || missing+=(postgresql)
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    command -v kcat >/dev/null 2>&1 || missing+=(kcat)
    # The dashboard page's browser test (tests/tests/dashboard_page.rs): headless Chromium.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    [ ${#missing[@]} -gt 0 ] || return 0
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "test.sh: not installing ${missing[*]} (needs root and apt-get); the tests that need them will say SKIPPED" >&2
        return 0
    fi
    echo "== installing ${missing[*]}"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
        echo "test.sh: apt-get install ${missing[*]} failed; the tests that need them will say SKIPPED" >&2
}
install_missing

# The crash and multi-process tests run the real binary; build it in the same profile as the
# tests so that the dependencies are compiled once.
cargo build --locked --bin loyalty

mkdir -p target
OUT=target/test-output.log
REPORT=target/multiprocess-report.txt
rm -f "$REPORT"
status=0
if cargo nextest --version >/dev/null 2>&1; then
    RUNNER=nextest
    # Successful tests' output is kept too (at the end), so their SKIPPED lines can be listed.
    cargo nextest run --locked --workspace --no-fail-fast --success-output final \
        --failure-output final "$@" 2>&1 | tee "$OUT" || status=$?
else
    RUNNER=cargo-test
    echo "cargo-nextest not found; using cargo test"
    cargo test --locked --workspace --no-fail-fast "$@" -- --show-output 2>&1 | tee "$OUT" ||
        status=$?
fi

# The summary: suites run (with their counts), tests skipped and why, the multi-process report.
echo
echo "================================ summary ================================"
if [ "$RUNNER" = nextest ]; then
    # Status lines: "        PASS [   0.508s] (1/4) crate::binary test" (live, then again above
    # each test's captured output, where a test's SKIPPED lines are).
    awk '
        # "SLOW" marks a test still running (or, in the final list, one that passed slowly):
        # not a result.
        /^ +SLOW +\[/ { cur = $(NF-1) " " $NF; next }
        /^ +[A-Z]+( [0-9]+)?( [A-Z]+)? +\[ *[0-9.]+s\]/ {
            cur = $(NF-1) " " $NF; status[cur] = $1; suite[cur] = $(NF-1); next
        }
        /SKIPPED: / && cur != "" {
            r = $0; sub(/.*SKIPPED: /, "", r); skip[cur] = r
        }
        END {
            for (t in status) {
                n[suite[t]]++
                if (status[t] != "PASS" && status[t] != "LEAK" && status[t] != "FLAKY") f[suite[t]]++
                if (t in skip) k[suite[t]]++
            }
            for (s in n) printf "ran     %-42s %4d tests%s%s\n", s, n[s], \
                (f[s] ? sprintf(", %d FAILED", f[s]) : ""), (k[s] ? sprintf(", %d skipped", k[s]) : "")
            for (t in skip) printf "skipped %s: %s\n", t, skip[t]
        }' "$OUT" | sort
    grep -E '^ *Summary \[' "$OUT" | tail -1 || true
else
    grep -E '^ *Running ' "$OUT" | sed -E 's/^ *Running /ran     /' || true
    awk '/^---- .* stdout ----/ {t = $2; next}
         /SKIPPED: / {r = $0; sub(/.*SKIPPED: /, "", r); printf "skipped %s: %s\n", t, r}' "$OUT" | sort -u
    grep -E '^test result:' "$OUT" | awk '{p += $4; f += $6; i += $8} END {printf "cargo test: %d passed, %d failed, %d ignored\n", p, f, i}'
fi
# The dashboard page in headless Chromium: its result, and the screenshot it saves.
page=$(grep -E '(PASS|FAIL|SIGSEGV|TIMEOUT|SIGABRT|SIGKILL) .*dashboard_page the_dashboard_page_in_a_headless_browser|^test the_dashboard_page_in_a_headless_browser ' "$OUT" | tail -1 || true)
if [ -z "$page" ]; then
    echo "dashboard page (headless Chromium): did not run"
elif grep -q 'SKIPPED: .*chrom' "$OUT"; then
    echo "dashboard page (headless Chromium): SKIPPED (no browser; see above)"
elif echo "$page" | grep -qE 'PASS|\.\.\. ok'; then
    echo "dashboard page (headless Chromium): passed; screenshot target/dashboard-page.png"
else
    echo "dashboard page (headless Chromium): FAILED"
fi
echo "ignored on purpose (benchmarks and probes): scripts/run-ignored.sh"
if [ -f "$REPORT" ]; then
    echo "multi-process report: $REPORT"
    grep -E '^\| (phase|total)' "$REPORT" || true
fi
echo "full output: $OUT"
exit "$status"
