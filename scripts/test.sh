#!/usr/bin/env bash
# The whole test suite: unit, property, API, crash, server-backed and multi-process tests. What
# `.ci/run` runs. Arguments go to `cargo nextest run` (or `cargo test`).
#
# This script starts no server: each test starts the servers it needs (PostgreSQL, redis-server,
# tansu, `loyalty` processes) on free loopback ports through loyalty-testkit, and stops them.
# Run as root, it installs what is missing from Debian first (postgresql, redis-server, kcat,
# chromium and chromium-driver for the dashboard page's browser test, python3-venv for the chart
# checks); tansu comes from scripts/install-tansu.sh (LOYALTY_TANSU_BIN), PyPI helm-python-sdk
# and kubernetes-validate go to a venv under the cache dir (deploy_python), and PyPI schemathesis
# for the property-based API test to the same venv (api_python), PyPI aiosmtpd for the SMTP
# adapter's tests too (smtp_python, before the tests run); cargo-deny for the dependency
# audit from scripts/install-cargo-deny.sh (LOYALTY_CARGO_DENY_BIN). A test whose server
# is missing prints `SKIPPED: <reason>`; the last lines of this script list the suites that ran
# and the tests that were skipped, with their reasons. `LOYALTY_REQUIRE_SERVERS=1` (set by CI)
# turns every such skip into a failure.
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
    # The dashboard page's browser test (tests/tests/e2e/dashboard_page.rs): headless Chromium.
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    # The Helm chart and image checks run in a Python venv (deploy_python below).
    command -v python3 >/dev/null 2>&1 || missing+=(python3)
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || missing+=(python3-venv)
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

# The Helm chart and image checks (scripts/check_chart.py, scripts/smoke_image.py) need PyPI
# helm-python-sdk (Helm's own Go SDK, offline) and kubernetes-validate: a venv under the cache
# dir, made and filled when they are missing. Sets deploy_skip to the reason when it cannot.
VENV="${LOYALTY_CACHE_DIR:-$HOME/.cache/loyalty}/venv"
DEPLOY_PY_PACKAGES=(helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML jsonschema)
deploy_skip=""
deploy_python() {
    "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, yaml, jsonschema' \
        >/dev/null 2>&1 && return 0
    if ! command -v python3 >/dev/null 2>&1; then
        deploy_skip="no python3"; return 1
    fi
    echo "== installing ${DEPLOY_PY_PACKAGES[*]} into $VENV"
    if ! { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; }; then
        deploy_skip="python3 -m venv $VENV failed"; return 1
    fi
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c scripts/python-constraints.txt "${DEPLOY_PY_PACKAGES[@]}"; then
        deploy_skip="pip install ${DEPLOY_PY_PACKAGES[*]} failed (PyPI unreachable?)"; return 1
    fi
}

# The property-based API test (scripts/schemathesis.py) needs PyPI schemathesis, pinned, in the
# same venv. Sets api_skip to the reason when it cannot.
SCHEMATHESIS_VERSION=4.32.5
API_PY_PACKAGES=(schemathesis==$SCHEMATHESIS_VERSION)
api_skip=""
api_python() {
    "$VENV/bin/python" -c "import schemathesis, sys, importlib.metadata as m
sys.exit(m.version('schemathesis') != '$SCHEMATHESIS_VERSION')" >/dev/null 2>&1 && return 0
    if ! command -v python3 >/dev/null 2>&1; then
        api_skip="no python3"; return 1
    fi
    echo "== installing ${API_PY_PACKAGES[*]} into $VENV"
    if ! { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; }; then
        api_skip="python3 -m venv $VENV failed"; return 1
    fi
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c scripts/python-constraints.txt "${API_PY_PACKAGES[@]}"; then
        api_skip="pip install ${API_PY_PACKAGES[*]} failed (PyPI unreachable?)"; return 1
    fi
}

# The e-mail adapter's tests (libs/smtp/tests) deliver to a real SMTP server: PyPI aiosmtpd,
# pinned, in the same venv, which loyalty-testkit's SmtpSink runs (it looks there, or at
# $LOYALTY_PYTHON). Installed before the tests; when it cannot be, those tests say SKIPPED (and
# fail under LOYALTY_REQUIRE_SERVERS=1).
AIOSMTPD_VERSION=1.4.6
smtp_python() {
    "$VENV/bin/python" -c "import aiosmtpd.controller, sys, importlib.metadata as m
sys.exit(m.version('aiosmtpd') != '$AIOSMTPD_VERSION')" >/dev/null 2>&1 && return 0
    if ! command -v python3 >/dev/null 2>&1; then
        echo "test.sh: no python3: the SMTP tests will say SKIPPED" >&2; return 0
    fi
    echo "== installing aiosmtpd==$AIOSMTPD_VERSION into $VENV"
    { [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"; } &&
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
            -c scripts/python-constraints.txt "aiosmtpd==$AIOSMTPD_VERSION" ||
        echo "test.sh: installing aiosmtpd into $VENV failed (PyPI unreachable?): the SMTP tests will say SKIPPED" >&2
}
smtp_python

# The crash and multi-process tests run the real binary; build it in the same profile as the
# tests so that the dependencies are compiled once.
cargo build --locked --bin loyalty
# Where cargo put it (CARGO_TARGET_DIR, when set, moves the whole target directory).
LOYALTY_BIN_PATH="${CARGO_TARGET_DIR:-target}/debug/loyalty"

mkdir -p target
OUT=target/test-output.log
# The multi-process test writes its table beside its profile directory (CARGO_TARGET_DIR).
REPORT="${CARGO_TARGET_DIR:-target}/multiprocess-report.txt"
MATRIX="${CARGO_TARGET_DIR:-target}/fault-matrix-report.txt"
rm -f "$REPORT" "$MATRIX"
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

# The Helm chart (lint, render, Kubernetes schemas, values schema) and the image's smoke test (the
# binary run as the Dockerfile and the chart run it), each with its report in a log.
CHART_LOG=target/chart-check.log
IMAGE_LOG=target/image-smoke.log
if deploy_python; then
    echo; echo "== Helm chart: scripts/check_chart.py"
    if "$VENV/bin/python" scripts/check_chart.py 2>&1 | tee "$CHART_LOG"; then
        chart_result="passed ($(tail -1 "$CHART_LOG" | sed 's/^.*passed: //') checks)"
    else
        chart_result="FAILED (see $CHART_LOG)"; [ "$status" -ne 0 ] || status=1
    fi
    echo; echo "== image smoke test: scripts/smoke_image.py"
    if "$VENV/bin/python" scripts/smoke_image.py --binary "$LOYALTY_BIN_PATH" 2>&1 |
        tee "$IMAGE_LOG"; then
        image_result="passed ($(tail -1 "$IMAGE_LOG" | sed 's/^.*passed: //') checks)"
    else
        image_result="FAILED (see $IMAGE_LOG)"; [ "$status" -ne 0 ] || status=1
    fi
else
    chart_result="SKIPPED: $deploy_skip"; image_result="SKIPPED: $deploy_skip"
    echo "test.sh: chart and image checks SKIPPED: $deploy_skip" >&2
    if [ "${LOYALTY_REQUIRE_SERVERS:-}" = 1 ]; then
        chart_result="FAILED ($deploy_skip; LOYALTY_REQUIRE_SERVERS=1)"; image_result=$chart_result
        [ "$status" -ne 0 ] || status=1
    fi
fi

# The property-based API test: schemathesis generates requests from the OpenAPI document and
# sends them to `loyalty dev` (every operation, every check, with the store, HQ and admin keys):
# no 5xx, every answer as documented, nothing valid refused, nothing invalid accepted. Its report
# in a log (and per key in target/schemathesis/).
API_LOG=target/schemathesis.log
if api_python; then
    echo; echo "== property-based API test: scripts/schemathesis.py"
    if "$VENV/bin/python" scripts/schemathesis.py --binary "$LOYALTY_BIN_PATH" 2>&1 |
        tee "$API_LOG"; then
        api_result="passed ($(tail -1 "$API_LOG" | sed -E 's/^.*passed: ([0-9]+ operations, [0-9]+ checks).*$/\1/'))"
    else
        # What failed, in the summary itself (CI may show only the output's last lines).
        api_why=$(grep -E '^  (store|hq|admin) +[0-9]+ operations|^ +(FAIL|NOT TESTED)|exited with|key no longer works|erased during|^schemathesis FAILED' \
            "$API_LOG" | sed -E 's/^ +//' | head -12 | cut -c1-300)
        api_result="FAILED (see $API_LOG)${api_why:+:
$api_why}"; [ "$status" -ne 0 ] || status=1
    fi
else
    api_result="SKIPPED: $api_skip"
    echo "test.sh: property-based API test SKIPPED: $api_skip" >&2
    if [ "${LOYALTY_REQUIRE_SERVERS:-}" = 1 ]; then
        api_result="FAILED ($api_skip; LOYALTY_REQUIRE_SERVERS=1)"
        [ "$status" -ne 0 ] || status=1
    fi
fi

# The dependency audit: cargo-deny (LOYALTY_CARGO_DENY_BIN, or built once by
# scripts/install-cargo-deny.sh) checks licences, bans and sources against deny.toml, and
# advisories against a snapshot of the RustSec advisory database that is never fetched
# (--offline): LOYALTY_ADVISORY_DB, by default shared/advisory-db beside the clone (README:
# "Dependency audit"). Without a snapshot the other checks run and the summary says so.
DENY_LOG=target/cargo-deny.log
ADVISORY_DB="${LOYALTY_ADVISORY_DB:-../shared/advisory-db}"
deny_bin="${LOYALTY_CARGO_DENY_BIN:-}"
if [ -z "$deny_bin" ]; then
    echo; echo "== installing cargo-deny (scripts/install-cargo-deny.sh, once)"
    deny_bin=$(scripts/install-cargo-deny.sh 2>target/cargo-deny-install.log) || deny_bin=""
fi
if [ -n "$deny_bin" ] && [ -x "$deny_bin" ]; then
    echo; echo "== dependency audit: cargo deny check"
    deny_checks=(licenses bans sources)
    db_date=$(sed -n 's/^date=//p' "$ADVISORY_DB/SNAPSHOT" 2>/dev/null || true)
    if [ -d "$ADVISORY_DB/crates" ] && [ -n "$db_date" ] && date -d "$db_date" >/dev/null 2>&1; then
        # cargo-deny reads the default database from <db-path>/advisory-db-<hash of its URL>/crates
        # and dates it by .git/FETCH_HEAD's mtime: the snapshot's commit date (deny.toml bounds
        # its age).
        db_dir="$PWD/target/advisory-dbs/advisory-db-3157b0e258782691"
        rm -rf "$PWD/target/advisory-dbs" && mkdir -p "$db_dir/.git"
        cp -R "$ADVISORY_DB/crates" "$db_dir/" && touch -d "$db_date" "$db_dir/.git/FETCH_HEAD"
        deny_checks+=(advisories)
        db_commit=$(sed -n 's/^commit=//p' "$ADVISORY_DB/SNAPSHOT")
        db_age=$(( ($(date +%s) - $(date -d "$db_date" +%s)) / 86400 ))
        db_note="advisory DB snapshot of ${db_date%%T*}, commit ${db_commit:0:12}, $db_age days old"
    else
        db_note="advisories NOT CHECKED: no advisory DB snapshot (crates/, SNAPSHOT) at $ADVISORY_DB"
        echo "test.sh: $db_note" >&2
    fi
    if LOYALTY_ADVISORY_DBS="$PWD/target/advisory-dbs" "$deny_bin" --color never --offline \
        --locked check "${deny_checks[@]}" >"$DENY_LOG" 2>&1; then
        # Its findings' headlines here, the inclusion graphs (thousands of lines) in the log.
        grep -E '^(warning|error)\[' "$DENY_LOG" || true
        deny_warnings=$(grep -c '^warning\[' "$DENY_LOG" || true)
        deny_result="passed ($(tail -1 "$DENY_LOG"); $deny_warnings warnings); $db_note"
    else
        grep -E '^(warning|error)\[' "$DENY_LOG" || tail -20 "$DENY_LOG"
        deny_result="FAILED (see $DENY_LOG): $(grep -E '^error\[' "$DENY_LOG" | head -5 | tr '\n' ';'); $db_note"
        [ "$status" -ne 0 ] || status=1
    fi
else
    deny_result="SKIPPED: no cargo-deny (${deny_bin:-install failed: target/cargo-deny-install.log})"
    echo "test.sh: dependency audit $deny_result" >&2
    if [ "${LOYALTY_REQUIRE_SERVERS:-}" = 1 ]; then
        deny_result="FAILED (no cargo-deny; LOYALTY_REQUIRE_SERVERS=1)"
        [ "$status" -ne 0 ] || status=1
    fi
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
            cur = $(NF-1) " " $NF; status[cur] = $1; s = $(NF-1)
            # The end-to-end binary holds one module per scenario file: list each as a suite.
            if (s ~ /::e2e$/ && index($NF, "::") > 0) s = s "::" substr($NF, 1, index($NF, "::") - 1)
            suite[cur] = s; next
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
page=$(grep -E '(PASS|FAIL|SIGSEGV|TIMEOUT|SIGABRT|SIGKILL) .*dashboard_page::the_dashboard_page_in_a_headless_browser|^test dashboard_page::the_dashboard_page_in_a_headless_browser ' "$OUT" | tail -1 || true)
if [ -z "$page" ]; then
    echo "dashboard page (headless Chromium): did not run"
elif grep -q 'SKIPPED: .*chrom' "$OUT"; then
    echo "dashboard page (headless Chromium): SKIPPED (no browser; see above)"
elif echo "$page" | grep -qE 'PASS|\.\.\. ok'; then
    echo "dashboard page (headless Chromium): passed; screenshot target/dashboard-page.png"
else
    echo "dashboard page (headless Chromium): FAILED"
fi
echo "helm chart (lint --strict, render, kubernetes-validate, values schema): $chart_result"
echo "image smoke test (Dockerfile's ENTRYPOINT/CMD/HEALTHCHECK, chart's commands): $image_result"
echo "schemathesis (OpenAPI document against loyalty dev, all checks, store/HQ/admin keys): $api_result"
echo "dependency audit (cargo deny: licences, bans, sources, advisories; deny.toml): $deny_result"
echo "ignored on purpose (benchmarks and probes): scripts/run-ignored.sh"
if [ -f "$REPORT" ]; then
    echo "multi-process report: $REPORT"
    grep -E '^\| (phase|total)' "$REPORT" || true
fi
if [ -f "$MATRIX" ]; then
    echo "fault matrix (servers): $MATRIX"
    grep -E '^\| (fault|phase)' "$MATRIX" || true
fi
echo "full output: $OUT"
exit "$status"
