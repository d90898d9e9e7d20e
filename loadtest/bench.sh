#!/usr/bin/env bash
# The platform next to its limits, measured on this machine in the same run (issue 4, "Limits in
# the same run"), each figure with its ratio to its limit and the issue's targets:
#   1. HTTP: the gateway's GET /v1/members/{id} vs a plain actix-web endpoint serving the same
#      bytes with no lookup (loadtest/src/bin/plain-http.rs), same wrk client, threads,
#      connections, duration, same worker count;
#   2. Redis: redis-benchmark GET/SET vs the hot-cache adapter (loadtest/src/bin/cache-bench.rs);
#   3. ingestion (the ignored tests of tests/tests/bench/ingest_bench.rs): append→applied by one
#      engine node vs the raw append→consume rate of the log behind it, same record size: raw
#      rdkafka on a tansu broker of its own (distributed mode), the raw embedded log (dev mode);
#   4. the embedded store: raw redb durable writes (loadtest/src/bin/store-bench.rs) vs
#      purchases applied end to end in dev mode through HTTP (one purchase = one ledger append);
#   5. checkout p99 at half the maximum sustainable rate (loyalty-loadtest, closed then open);
#   6. memory per idle member: RSS growth per member at 100 000 enrolled and passivated, and the
#      marginal cost of the next 100 000 (what each further member adds, fixed budgets such as
#      the store's page cache excluded), with the default cache and with
#      LOYALTY_CACHE_CAPACITY=1000; and per active actor;
#   7. many nodes as OS processes on PostgreSQL + tansu + redis-server (issue 9; the ignored
#      tests of tests/tests/bench/multiprocess_bench.rs, on the testkit's Cluster): purchases appended
#      straight into the command topic → applied by 1 and by 3 `loyalty engine` processes vs
#      the raw rdkafka produce→consume rate on the same broker, same record size; the handoff
#      after kill -9 of one engine of three (per-partition claims in PostgreSQL) vs the
#      engines' session timeout + 2 s; the checkout mix through two `loyalty gateway`
#      processes (loyalty-loadtest pointed at both) next to the dev-mode figures of part 5;
#      CPU per process, engine stage metrics and pg_stat_statements ("where the time goes");
#   8. dashboards (issue 10): the dashboard request for one year × 50 stores × 100 000 members
#      (tests/tests/bench/dashboard_bench.rs: the history applied by the engine, then p50/p99 of the
#      API for 5 kinds of range) next to the store read of its rows alone; the projection lag
#      (loyalty_engine_lag_seconds) during part 5's open-model run; ingestion with projections
#      on is part 3's dev figure.
# Writes loadtest/results-<date>.md (and prints it).
#
# Usage: loadtest/bench.sh [seconds-per-run]      (default 10; needs wrk, redis-server,
#        redis-benchmark; the broker part installs tansu through scripts/install-tansu.sh;
#        the multi-process part needs PostgreSQL's server binaries too)
# Env: MEMBERS (100000), CONNS (64 wrk connections), WORKERS (2 HTTP workers), SKIP_BROKER=1,
#      MP_EVENTS (40000 purchases per multi-process ingestion run), HANDOFF_ROUNDS (3 kills,
#      each of one engine of three), KEEP_WORK=1 (keep the raw
#      outputs),
#      SKIP_MULTIPROCESS=1, CALM_EACH=1 (each part waits for the load average to fall under
#      CALM_LOAD too, at most CALM_PART_MAX (300) s), CARGO_TARGET_DIR (honoured: the binaries are taken from
#      $CARGO_TARGET_DIR/release), CALM_LOAD (0.7) and CALM_MAX (1800 s): before the first
#      part the script waits, polling every 30 s, until the 1-minute load average is under
#      CALM_LOAD (at most CALM_MAX seconds, then it goes on and says so in the report).
set -euo pipefail
cd "$(dirname "$0")/.."
D=${1:-10}
MEMBERS=${MEMBERS:-100000}
CONNS=${CONNS:-64}
WORKERS=${WORKERS:-2}
PASSIVATE=5
for tool in wrk redis-server redis-benchmark curl python3; do
    command -v $tool >/dev/null || { echo "$tool is required" >&2; exit 1; }
done
DATE=$(date -u +%F)
OUT=${OUT:-loadtest/results-$DATE.md}

echo "building (release)..." >&2
cargo build --release --locked --bin loyalty >&2
cargo build --release --locked -p loyalty-loadtest --bins >&2
cargo test --release --locked -p loyalty-tests --test bench --no-run >&2
BIN=${CARGO_TARGET_DIR:-target}/release

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ -n "${KEEP_WORK:-}" ]; then echo "raw outputs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
LOADS=()
note_load() { LOADS+=("$1: $(load)"); echo "-- $1 (load average $(load))" >&2; }
# Waits up to CALM_SECS (15) s for the 1-minute load average to fall under the core count (others build here).
# With CALM_EACH=1, before each part until the 1-minute load average is under CALM_LOAD (the
# previous part's own load included), polling every 5 s for at most CALM_PART_MAX (300) s.
calm() {
    if [ -n "${CALM_EACH:-}" ]; then
        for _ in $(seq $(( ${CALM_PART_MAX:-300} / 5 ))); do
            awk -v n="${CALM_LOAD:-0.7}" '{exit !($1 < n)}' /proc/loadavg && return; sleep 5
        done
        return
    fi
    for _ in $(seq "${CALM_SECS:-15}"); do awk -v n="$(nproc)" '{exit !($1 < n)}' /proc/loadavg && return; sleep 1; done
}
# Before the first part: until the 1-minute load average is under CALM_LOAD, polling every 30 s
# for at most CALM_MAX seconds.
START_WAIT=0
START_CALM="no: load average $(load) after 0 s"
while :; do
    if awk -v n="${CALM_LOAD:-0.7}" '{exit !($1 < n)}' /proc/loadavg; then
        START_CALM="yes: load average $(load) after ${START_WAIT} s"; break
    fi
    if [ "$START_WAIT" -ge "${CALM_MAX:-1800}" ]; then
        START_CALM="no: load average still $(load) after ${START_WAIT} s (figures taken under load)"; break
    fi
    echo "-- waiting for the load average to fall under ${CALM_LOAD:-0.7} ($(load))" >&2
    sleep 30; START_WAIT=$((START_WAIT + 30))
done
echo "-- calm at the start: $START_CALM" >&2
rss_kib() { awk '/VmRSS/ {print $2}' /proc/"$1"/status; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{100*a/b:.0f} %' if b else 'n/a')" "$1" "$2"; }
fmt() { python3 -c "import sys; print(f'{float(sys.argv[1]):,.0f}'.replace(',', ' '))" "$1"; }
wrk_rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
wrk_pct() { awk -v p="$2" '$1 == p {print $2}' "$1"; }

# ---------------------------------------------------------------- 2. Redis
calm; note_load redis
RPORT=$(free_port)
redis-server --port "$RPORT" --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 50); do redis-cli -p "$RPORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
REDIS_CMD="redis-benchmark -p $RPORT -t get,set -q -c 50 -n 200000 -P 1 -d 400"
$REDIS_CMD 2>/dev/null | tr '\r' '\n' | grep -E '^(GET|SET):.*requests per second' | tail -2 >"$WORK/redis-bench.txt"
cat "$WORK/redis-bench.txt" >&2
R_SET=$(awk -F'[: ]+' '/^SET/ {print $2}' "$WORK/redis-bench.txt")
R_GET=$(awk -F'[: ]+' '/^GET/ {print $2}' "$WORK/redis-bench.txt")
CACHE_CMD="$BIN/cache-bench redis://127.0.0.1:$RPORT/ $D 50"
$CACHE_CMD | tee "$WORK/cache-bench.txt" >&2
C_PUT=$(awk -F': ' '/put_statuses \(1 per call\)/ {split($2,a," "); print a[1]}' "$WORK/cache-bench.txt")
C_GET=$(awk -F': ' '/status get/ {split($2,a," "); print a[1]}' "$WORK/cache-bench.txt")
C_BATCH=$(awk -F': ' '/batches of 32/ {split($2,a," "); print a[1]}' "$WORK/cache-bench.txt")
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'

# ---------------------------------------------------------------- 4a. raw redb
calm; note_load store-bench
STORE_CMD="$BIN/store-bench $WORK/redb $D 64,256 1024"
$STORE_CMD | tee "$WORK/store-bench.txt" >&2
S_SEQ=$(awk '/sequential/ {print $3}' "$WORK/store-bench.txt")
S_GRP=$(awk '/grouped.*\(64 writers/ {print $3}' "$WORK/store-bench.txt")
S_GRP_COMMITS=$(awk '/grouped.*\(64 writers/ {print $7}' "$WORK/store-bench.txt")
S_GRP256=$(awk '/grouped.*\(256 writers/ {print $3}' "$WORK/store-bench.txt")
S_GRP256_COMMITS=$(awk '/grouped.*\(256 writers/ {print $7}' "$WORK/store-bench.txt")

# ---------------------------------------------------------------- loyalty dev (memory, HTTP, purchases)
# Starts `loyalty dev` with the given environment; sets PID, URL, keys.
start_dev() {
    local port
    port=$(free_port)
    rm -rf "$WORK/data"
    # The phone-lookup rate limits are off: the mix looks phones up far faster than a till.
    env LOYALTY_PASSIVATE_AFTER_SECS=$PASSIVATE LOYALTY_HTTP_WORKERS=$WORKERS RUST_LOG=warn \
        LOYALTY_LOOKUP_LIMIT_PER_MINUTE=0 LOYALTY_LOOKUP_ADDRESS_LIMIT_PER_MINUTE=0 "$@" \
        $BIN/loyalty dev --listen 127.0.0.1:"$port" --data-dir "$WORK/data" >"$WORK/dev.log" 2>&1 &
    PID=$!
    PIDS+=($PID)
    URL=http://127.0.0.1:$port
    for _ in $(seq 100); do curl -sf "$URL"/readyz >/dev/null && break; sleep 0.1; done
    # shellcheck disable=SC1091
    source "$WORK/data/demo-keys.env"
    export LOYALTY_STORE_KEY=$STORE1_KEY LOYALTY_MEMBERS=$MEMBERS WRK_THREADS=2
}
stop_dev() { kill "$PID"; wait "$PID" 2>/dev/null || true; unset 'PIDS[-1]'; }
metric() { curl -sf -H "Authorization: Bearer $HQ_KEY" "$URL"/metrics | awk -v m="$1" 'index($0, m) == 1 {print $2}'; }
# Enrols until LOYALTY_MEMBERS (default MEMBERS) members exist.
enrol_all() {
    local n=0 t0 want=${LOYALTY_MEMBERS:-$MEMBERS}
    t0=$(date +%s.%N)
    while [ "${n%.*}" -lt "$want" ]; do
        wrk -t2 -c"$CONNS" -d10s -s loadtest/wrk/enrol.lua "$URL" >"$WORK/enrol.txt"
        n=$(metric 'loyalty_events_applied_total{kind="enrol"}'); n=${n:-0}
    done
    ENROL_SECS=$(python3 -c "import time; print(f'{time.time()-$t0:.0f}')")
}
# Memory of one run: RSS at start, after enrolment (and active actors), after passivation.
memory_run() {
    start_dev "$@"
    M_RSS0=$(rss_kib "$PID")
    enrol_all
    M_RSS1=$(rss_kib "$PID"); M_ACT1=$(metric loyalty_member_actors_active)
    sleep $((PASSIVATE * 3))
    M_RSS2=$(rss_kib "$PID"); M_ACT2=$(metric loyalty_member_actors_active)
    echo "memory ($*): start $M_RSS0 KiB, enrolled $M_RSS1 KiB with $M_ACT1 active actors, passivated $M_RSS2 KiB with $M_ACT2 active (enrolment ${ENROL_SECS}s)" >&2
}
# Then MEMBERS more (phones MEMBERS..2×MEMBERS-1), passivated: RSS3.
memory_more() {
    LOYALTY_MEMBERS=$((2 * MEMBERS)) enrol_all
    sleep $((PASSIVATE * 3))
    M_RSS3=$(rss_kib "$PID")
    echo "memory: $((2 * MEMBERS)) members, passivated: $M_RSS3 KiB (second enrolment ${ENROL_SECS}s)" >&2
}

# 6b. memory with a small cache, first (its process then goes away).
calm; note_load "memory, LOYALTY_CACHE_CAPACITY=1000"
memory_run LOYALTY_CACHE_CAPACITY=1000
memory_more
SMALL=("$M_RSS0" "$M_RSS1" "$M_ACT1" "$M_RSS2" "$M_ACT2" "$M_RSS3")
stop_dev

# 6c. every member's actor active (no passivation during the run), default cache.
calm; note_load "memory, no passivation"
start_dev LOYALTY_PASSIVATE_AFTER_SECS=3600
enrol_all
ACTIVE=("$(rss_kib "$PID")" "$(metric loyalty_member_actors_active)")
echo "memory (no passivation): ${ACTIVE[0]} KiB with ${ACTIVE[1]} active actors" >&2
stop_dev

# 6a. memory with the default cache; this process then serves the HTTP and purchase runs.
calm; note_load "memory, default cache"
memory_run
BIG=("$M_RSS0" "$M_RSS1" "$M_ACT1" "$M_RSS2" "$M_ACT2" "$ENROL_SECS")
memory_more
BIG+=("$M_RSS3")

python3 - "$URL" "$STORE1_KEY" "$WORK/ids.txt" "$MEMBERS" <<'PY'
import http.client, json, sys
url, key, out, members = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
host, port = url.split("//")[1].split(":")
c = http.client.HTTPConnection(host, int(port))
with open(out, "w") as f:
    for i in range(0, members, 50):
        c.request("POST", "/v1/members", json.dumps({"phone": "+3361%07d" % i}), {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        f.write(json.loads(c.getresponse().read())["member_id"] + "\n")
PY
export LOYALTY_IDS_FILE=$WORK/ids.txt

# ---------------------------------------------------------------- 1. HTTP: gateway vs plain
curl -sf -H "Authorization: Bearer $STORE1_KEY" "$URL/v1/members/$(head -1 "$WORK/ids.txt")" >"$WORK/body.json"
BODY_BYTES=$(wc -c <"$WORK/body.json")
WRK="wrk -t2 -c$CONNS -d${D}s --latency -s loadtest/wrk/status.lua"
PPORT=$(free_port)
$BIN/plain-http "$PPORT" "$WORK/body.json" "$WORKERS" 2>"$WORK/plain.log" &
PIDS+=($!)
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$PPORT/v1/members/x" >/dev/null && break; sleep 0.1; done
# Interleaved, twice each (gateway, plain, gateway, plain); the best run of each is kept, so
# that a burst of the other engineers' builds does not decide the ratio.
for i in 1 2; do
    calm; note_load "gateway status ($i)"
    $WRK "$URL" >"$WORK/wrk-gw$i.txt"
    calm; note_load "plain actix-web ($i)"
    $WRK "http://127.0.0.1:$PPORT" >"$WORK/wrk-plain$i.txt"
done
kill "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true; unset 'PIDS[-1]'
best() { for f in "$@"; do echo "$(wrk_rps "$f") $f"; done | sort -g | tail -1 | cut -d' ' -f2; }
cp "$(best "$WORK/wrk-gw1.txt" "$WORK/wrk-gw2.txt")" "$WORK/wrk-gw.txt"
cp "$(best "$WORK/wrk-plain1.txt" "$WORK/wrk-plain2.txt")" "$WORK/wrk-plain.txt"
GW=$(wrk_rps "$WORK/wrk-gw.txt"); PL=$(wrk_rps "$WORK/wrk-plain.txt")
GW_ALL="$(wrk_rps "$WORK/wrk-gw1.txt") / $(wrk_rps "$WORK/wrk-gw2.txt")"
PL_ALL="$(wrk_rps "$WORK/wrk-plain1.txt") / $(wrk_rps "$WORK/wrk-plain2.txt")"
echo "status: gateway $GW req/s (p99 $(wrk_pct "$WORK/wrk-gw.txt" 99%)), plain $PL req/s (p99 $(wrk_pct "$WORK/wrk-plain.txt" 99%))" >&2

# ---------------------------------------------------------------- 4b. purchases applied end to end
applied() { metric 'loyalty_events_applied_total{kind="purchase"}'; }
calm; note_load "purchases"
a0=$(applied); a0=${a0:-0}; t0=$(date +%s.%N)
LOYALTY_RUN=a wrk -t2 -c"$CONNS" -d"${D}"s --latency -s loadtest/wrk/purchase.lua "$URL" >"$WORK/wrk-purchase.txt"
prev=-1; while :; do cur=$(applied); [ "$cur" = "$prev" ] && break; prev=$cur; sleep 0.5; done
t1=$(date +%s.%N)
read -r P_N P_SECS P_RATE < <(python3 -c "n=$prev-$a0; d=$t1-$t0-0.5; print(f'{n:.0f} {d:.1f} {n/d:.0f}')")
P_202=$(wrk_rps "$WORK/wrk-purchase.txt")
echo "purchases: 202 at $P_202 req/s; applied $P_N in $P_SECS s = $P_RATE/s" >&2

# ---------------------------------------------------------------- 5. checkout p99 at half the max rate
LT="$BIN/loyalty-loadtest run --url $URL --members 10000 --no-progress --state $WORK/lt-state.json"
calm; note_load "checkout, closed model"
$LT --model closed --users "$CONNS" --ramp-up 2s --duration "${D}s" --out "$WORK/lt-closed.json" >"$WORK/lt-closed.md" 2>&1 || true
MAX=$(python3 -c "import json; print(round(json.load(open('$WORK/lt-closed.json'))['total']['throughput']))" 2>/dev/null || echo 0)
HALF=$((MAX / 2))
calm; note_load "checkout, open model at half"
# The projection lag: the dashboards' aggregates are committed with each event's effects, so an
# event is in the dashboard when its effect is published: loyalty_engine_lag_seconds (receipt by
# the gateway → effects and aggregates committed and published), over the open-model run.
curl -sf "$URL"/metrics | grep '^loyalty_engine_lag_seconds_bucket' >"$WORK/lag-before.txt" || true
$LT --model open --rate "$HALF" --ramp-up 2s --duration "${D}s" --out "$WORK/lt-open.json" >"$WORK/lt-open.md" 2>&1 || true
curl -sf "$URL"/metrics | grep '^loyalty_engine_lag_seconds_bucket' >"$WORK/lag-after.txt" || true
read -r LAG_N LAG_P50 LAG_P99 < <(python3 - "$WORK/lag-before.txt" "$WORK/lag-after.txt" <<'PY' || echo "0 n/a n/a"
import re, sys
def load(p):
    out = {}
    for line in open(p):
        m = re.search(r'le="([^"]+)"\} ([0-9.e+]+)', line)
        if m:
            out[float('inf') if m.group(1) == '+Inf' else float(m.group(1))] = float(m.group(2))
    return out
a, b = load(sys.argv[1]), load(sys.argv[2])
les = sorted(b)
d = [(le, b[le] - a.get(le, 0)) for le in les]
n = d[-1][1] if d else 0
def q(p):
    for le, c in d:
        if n and c >= p * n:
            return f"{le * 1000:.0f}" if le != float('inf') else "inf"
    return "n/a"
print(f"{n:.0f} {q(0.5)} {q(0.99)}")
PY
)
read -r O_RATE O_P50 O_P99 O_P999 O_ERR O_CHECK < <(python3 - "$WORK/lt-open.json" <<'PY' || echo "0 0 0 0 0 n/a"
import json, sys
r = json.load(open(sys.argv[1]))
t = r["total"]; l = t["latency_ms"]
c = r.get("correctness", {})
ok = c.get("passed", c.get("ok"))
print(f"{t['throughput']:.0f} {l['p50']:.2f} {l['p99']:.2f} {l['p999']:.2f} {t['errors']} {'passed' if ok else ('failed' if ok is not None else 'n/a')}")
PY
)
OPS_P99=$(python3 -c "
import json; r = json.load(open('$WORK/lt-open.json'))
print(', '.join(f\"{k} {v['latency_ms']['p99']:.1f}\" for k, v in r['ops'].items() if v['latency_ms']['count']))" 2>/dev/null || echo n/a)
CLOSED_P99=$(python3 -c "import json; print(f\"{json.load(open('$WORK/lt-closed.json'))['total']['latency_ms']['p99']:.1f}\")" 2>/dev/null || echo n/a)
echo "checkout: max (closed, $CONNS users) $MAX/s p99 $CLOSED_P99 ms; open at $HALF/s: $O_RATE/s p50 $O_P50 ms p99 $O_P99 ms p99.9 $O_P999 ms, errors $O_ERR, check $O_CHECK" >&2
stop_dev

# ---------------------------------------------------------------- 3. ingestion
# Dev mode (embedded log and store), then distributed mode (tansu + Redis) unless SKIP_BROKER.
calm; note_load "ingestion, embedded"
cargo test --release --locked -p loyalty-tests --test bench -- --ignored --nocapture ingest_bench::dev_ >"$WORK/ingest-dev.txt" 2>&1 || true
grep -E '^(records|raw EmbeddedLog|platform append|engine:)' "$WORK/ingest-dev.txt" >&2 || tail -20 "$WORK/ingest-dev.txt" >&2
E_LINES=$(grep -E '^(records|raw EmbeddedLog|platform append|engine:)' "$WORK/ingest-dev.txt" || true)
E_RAW=$(sed -nE 's/.*append→consume \(consumer reading meanwhile\) ([0-9]+)\/s.*/\1/p' "$WORK/ingest-dev.txt" | head -1)
E_E2E=$(sed -nE 's/.*applied durably by one engine node: ([0-9]+)\/s.*/\1/p' "$WORK/ingest-dev.txt")
E_PCT=$(sed -nE 's/.*\(([0-9]+) % of raw.*/\1/p' "$WORK/ingest-dev.txt")
calm; note_load "dashboard, a year of 50 stores and 100 000 members"
cargo test --release --locked -p loyalty-tests --test bench -- --ignored --nocapture dashboard_bench:: >"$WORK/dashboard.txt" 2>&1 || true
grep -E '^(history|year|dashboard)' "$WORK/dashboard.txt" >&2 || tail -20 "$WORK/dashboard.txt" >&2
DB_LINES=$(grep -E '^(history|year|dashboard)' "$WORK/dashboard.txt" || true)
read -r DB_P50 DB_P99 DB_READ50 DB_READ99 < <(sed -nE 's/^dashboard all kinds: p50 ([0-9.]+) ms, p99 ([0-9.]+) ms.*alone: p50 ([0-9.]+) ms, p99 ([0-9.]+) ms.*/\1 \2 \3 \4/p' "$WORK/dashboard.txt" | head -1)
DB_YEAR=$(sed -nE 's/^dashboard year: (.*) \(.*/\1/p' "$WORK/dashboard.txt" | head -1)
B_LINES="(skipped)"; B_RAW=0; B_E2E=0; B_PCT=0; B_PROD=0; B_APPEND=0
if [ -z "${SKIP_BROKER:-}" ]; then
    calm; note_load broker
    cargo test --release --locked -p loyalty-tests --test bench -- --ignored --nocapture ingest_bench::ingestion_rate_next_to_the_raw_broker_rate >"$WORK/ingest.txt" 2>&1 || true
    grep -E '^(records|raw rdkafka|platform append|engine:)' "$WORK/ingest.txt" >&2 || tail -20 "$WORK/ingest.txt" >&2
    B_LINES=$(grep -E '^(records|raw rdkafka|platform append|engine:)' "$WORK/ingest.txt" || true)
    B_PROD=$(sed -nE 's/^raw rdkafka: append ([0-9]+)\/s.*/\1/p' "$WORK/ingest.txt")
    B_RAW=$(sed -nE 's/^raw rdkafka: .*append→consume \(consumer reading meanwhile\) ([0-9]+)\/s.*/\1/p' "$WORK/ingest.txt")
    B_APPEND=$(sed -nE 's/^platform append: ([0-9]+)\/s.*/\1/p' "$WORK/ingest.txt")
    B_E2E=$(sed -nE 's/.*applied durably by one engine node: ([0-9]+)\/s.*/\1/p' "$WORK/ingest.txt")
    B_PCT=$(sed -nE 's/.*\(([0-9]+) % of raw.*/\1/p' "$WORK/ingest.txt")
fi

# ---------------------------------------------------------------- 7. many nodes (issue 9)
# Engines and gateways as OS processes on PostgreSQL + tansu + Redis (the testkit's Cluster).
MP_LINES="(skipped)"; CO_LINES="(skipped)"
MP_RAW1=0; MP_E2E1=0; MP_PCT1=0; MP_RAW3=0; MP_E2E3=0; MP_PCT3=0; MP_ONCE="n/a"
HO_ROUNDS=0; HO_VICTIMS=never; HO_OTHERS=n/a; HO_TARGET=12; HO_VERDICT=missed; HO_REPL=""; HO_ONCE="n/a"; HO_SESSION=10
CO_MAX=0; CO_CP99=n/a; CO_HALF=0; CO_RATE=0; CO_P50=0; CO_P99=0; CO_P999=0; CO_ERR=n/a; CO_CHECK=n/a; CO_OPS=n/a; CO_ENGINES=3
MP_GREP='^(cluster|records|latency |cpu |stages |pg |perf |raw rdkafka|multiprocess|exactly once|handoff|checkout|SKIPPED|loyalty-loadtest)'
if [ -z "${SKIP_MULTIPROCESS:-}" ]; then
    export LOYALTY_BENCH_OUT=$WORK LOYALTY_BENCH_SECS=$D LOYALTY_BENCH_USERS=$CONNS
    command -v perf >/dev/null && export LOYALTY_BENCH_PERF=${LOYALTY_BENCH_PERF:-1}
    calm; note_load "multi-process ingestion and handoff"
    LOYALTY_BENCH_EVENTS=${MP_EVENTS:-40000} LOYALTY_BENCH_HANDOFF_ROUNDS=${HANDOFF_ROUNDS:-3} cargo test --release --locked -p loyalty-tests --test bench -- --ignored --nocapture --exact multiprocess_bench::multiprocess_ingestion_1_and_3_engines_and_handoff_on_postgres >"$WORK/mp-ingest.txt" 2>&1 || true
    MP_LINES=$(grep -E "$MP_GREP" "$WORK/mp-ingest.txt" || tail -30 "$WORK/mp-ingest.txt")
    echo "$MP_LINES" >&2
    mp_rate() { sed -nE "s/^multiprocess $1: .*append→applied on PostgreSQL: ([0-9]+)\/s.*/\1/p" "$WORK/mp-ingest.txt"; }
    mp_raw() { sed -nE "s/^raw rdkafka \($1\): .*append→consume \(consumer reading meanwhile\) ([0-9]+)\/s.*/\1/p" "$WORK/mp-ingest.txt"; }
    mp_pct() { sed -nE "s/^multiprocess $1: .*\(([0-9]+) % of raw.*/\1/p" "$WORK/mp-ingest.txt"; }
    MP_E2E1=$(mp_rate "1 engine"); MP_RAW1=$(mp_raw "1 engine"); MP_PCT1=$(mp_pct "1 engine")
    MP_E2E3=$(mp_rate "3 engines"); MP_RAW3=$(mp_raw "3 engines"); MP_PCT3=$(mp_pct "3 engines")
    MP_ONCE=$(grep -E '^exactly once \((1 engine|3 engines)\)' "$WORK/mp-ingest.txt" | sed -nE 's/.*: (ok|DIFFERENCES)$/\1/p' | sort -u | tr '\n' ' ' | sed 's/ $//')
    # shellcheck disable=SC1090
    eval "$(sed -nE 's/^handoff figures: //p' "$WORK/mp-ingest.txt")"
    calm; note_load "checkout through two gateways"
    cargo test --release --locked -p loyalty-tests --test bench -- --ignored --nocapture --exact multiprocess_bench::checkout_mix_through_two_gateways_on_postgres >"$WORK/mp-checkout.txt" 2>&1 || true
    CO_LINES=$(grep -E "$MP_GREP" "$WORK/mp-checkout.txt" || tail -30 "$WORK/mp-checkout.txt")
    echo "$CO_LINES" >&2
    # shellcheck disable=SC1090
    eval "$(sed -nE 's/^checkout figures: //p' "$WORK/mp-checkout.txt")"
fi

# ---------------------------------------------------------------- report
kib_per() { python3 -c "import sys; print(f'{(float(sys.argv[1])-float(sys.argv[2]))*1024/float(sys.argv[3]):.0f}')" "$@"; }
IDLE_BIG=$(kib_per "${BIG[3]}" "${BIG[0]}" "$MEMBERS")
IDLE_SMALL=$(kib_per "${SMALL[3]}" "${SMALL[0]}" "$MEMBERS")
MARG_BIG=$(kib_per "${BIG[6]}" "${BIG[3]}" "$MEMBERS")
MARG_SMALL=$(kib_per "${SMALL[5]}" "${SMALL[3]}" "$MEMBERS")
ACT=$(python3 -c "a=${ACTIVE[1]:-0}; print(f'{(${ACTIVE[0]}-${BIG[3]})*1024/a:.0f}' if a > 0 else 'n/a')")
mib() { python3 -c "print(f'{$1/1024:.0f}')"; }
met() { python3 -c "import sys; print('**met**' if sys.argv[1] == '1' else '**missed**')" "$1"; }
GW_PCT=$(python3 -c "print(f'{100*$GW/$PL:.0f}')")
{
echo "## Limits side by side, $DATE"
echo
echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/ {print $2}') GiB RAM, $(uname -sr); every process (server, client, Redis, broker) shares the cores. Release build. Command: \`$(env | grep -oE '^(CARGO_TARGET_DIR|CALM_EACH|CALM_LOAD|CALM_MAX|CALM_PART_MAX|MEMBERS|CONNS|WORKERS|MP_EVENTS|HANDOFF_ROUNDS|SKIP_BROKER|SKIP_MULTIPROCESS)=.*' | sort | tr '\n' ' ')loadtest/bench.sh $D\` ($D s per run, wrk 2 threads / $CONNS connections, $WORKERS HTTP workers on both servers)."
echo
echo "| Measure | Platform | Limit (same run) | Ratio | Target | Verdict |"
echo "|---|---:|---:|---:|---|---|"
echo "| \`GET /v1/members/{id}\` (gateway, hot cache) vs plain actix-web, same ${BODY_BYTES}-byte body | $(fmt "$GW") req/s, p99 $(wrk_pct "$WORK/wrk-gw.txt" 99%) (runs: $GW_ALL) | $(fmt "$PL") req/s, p99 $(wrk_pct "$WORK/wrk-plain.txt" 99%) (runs: $PL_ALL) | $GW_PCT % | ≥ 50 % | $(met "$(python3 -c "print(int($GW_PCT >= 50))")") $(python3 -c "d=$GW_PCT-50; print(f'({d:+.0f} points)')") |"
echo "| Dashboard request, one year × ${DB_STORES:-50} stores × ${DB_MEMBERS:-100 000} members (\`loyalty dev\`, history applied by the engine; 5 kinds of range × 40 requests) vs the store read of its rows alone | p50 ${DB_P50:-n/a} ms, p99 ${DB_P99:-n/a} ms (the year: ${DB_YEAR:-n/a}) | store read p50 ${DB_READ50:-n/a} ms, p99 ${DB_READ99:-n/a} ms | | p99 < 50 ms | $(met "$(python3 -c "print(int(0 < float('${DB_P99:-0}') < 50))")") |"
echo "| Projection lag under the checkout mix at half its maximum ($HALF req/s): receipt → effects and dashboard aggregates committed (\`loyalty_engine_lag_seconds\`, ${LAG_N:-0} events; bucket bounds) | p50 ≤ ${LAG_P50:-n/a} ms, p99 ≤ ${LAG_P99:-n/a} ms | | | p99 < 1 s | $(met "$(python3 -c "print(int('${LAG_P99:-inf}' not in ('n/a', 'inf') and float('${LAG_P99:-inf}') < 1000))")") |"
echo "| Redis hot cache: \`RedisCache::status\` (50 tasks, one multiplexed connection) vs redis-benchmark GET (50 clients, 400 B) | $(fmt "$C_GET") gets/s | $(fmt "$R_GET") GET/s | $(ratio "$C_GET" "$R_GET") | (none) | |"
echo "| Redis hot cache: \`put_statuses\`, 1 status per call (Lua compare-and-set) vs redis-benchmark SET | $(fmt "$C_PUT") puts/s | $(fmt "$R_SET") SET/s | $(ratio "$C_PUT" "$R_SET") | (none) | |"
echo "| Redis hot cache: \`put_statuses\` in batches of 32 (how the engine writes) vs redis-benchmark SET | $(fmt "$C_BATCH") statuses/s | $(fmt "$R_SET") SET/s | $(ratio "$C_BATCH" "$R_SET") | (none) | |"
if [ -z "${SKIP_BROKER:-}" ]; then
echo "| Broker (tansu, sqlite): platform append→applied by one engine node vs raw rdkafka produce→consume, same record size | $(fmt "$B_E2E") purchases/s | $(fmt "$B_RAW") records/s | ${B_PCT} % | ≥ 30 % | $(met "$(python3 -c "print(int(${B_PCT:-0} >= 30))")") $(python3 -c "d=${B_PCT:-0}-30; print(f'({d:+.0f} points)')") |"
echo "| Broker: platform append (KafkaLog) vs raw rdkafka produce | $(fmt "$B_APPEND") appends/s | $(fmt "$B_PROD") records/s | $(ratio "$B_APPEND" "$B_PROD") | (none) | |"
fi
echo "| Dev mode: purchases appended to the embedded log → applied by the engine (log fsync'd, store checkpointed) vs raw EmbeddedLog append→consume, same record size | $(fmt "$E_E2E") purchases/s | $(fmt "$E_RAW") records/s | ${E_PCT} % | ≥ 20 000/s | $(met "$(python3 -c "print(int(${E_E2E:-0} >= 20000))")") ($(python3 -c "print(f'{100*${E_E2E:-0}/20000:.0f} % of it')")) |"
echo "| … the same vs issue 9's target, twice the 31 843/s of 2026-11-25 (engines on both cores) | $(fmt "$E_E2E") purchases/s | 63 686/s | $(ratio "$E_E2E" 63686) | ≥ 63 686/s | $(met "$(python3 -c "print(int(${E_E2E:-0} >= 63686))")") |"
if [ -z "${SKIP_MULTIPROCESS:-}" ]; then
echo "| Many nodes: purchases appended straight into the command topic (KafkaLog) → applied by **1 \`loyalty engine\` process** on PostgreSQL vs raw rdkafka produce→consume on the same tansu broker just before, same record size | $(fmt "${MP_E2E1:-0}") purchases/s | $(fmt "${MP_RAW1:-0}") records/s | ${MP_PCT1:-0} % | ≥ 30 % | $(met "$(python3 -c "print(int(${MP_PCT1:-0} >= 30))")") |"
echo "| … **3 \`loyalty engine\` processes** (same cluster, 2 engines added) | $(fmt "${MP_E2E3:-0}") purchases/s | $(fmt "${MP_RAW3:-0}") records/s | ${MP_PCT3:-0} % | ≥ 30 % | $(met "$(python3 -c "print(int(${MP_PCT3:-0} >= 30))")") (exactly once: ${MP_ONCE}) |"
echo "| Handoff: kill -9 of 1 engine of 3 under a steady stream (600 purchases/s) → its partitions applying again on the others (first new claim per partition in PostgreSQL), ${HO_ROUNDS} rounds | ${HO_VICTIMS} (the other partitions paused ${HO_OTHERS}: the rebalance)${HO_REPL:+; $HO_REPL} | session timeout ${HO_SESSION} s + 2 s | | ≤ ${HO_TARGET} s, nothing lost or applied twice | **${HO_VERDICT}** (${HO_ONCE}) |"
echo "| Checkout mix through **two gateways** (${CO_ENGINES} engines, PostgreSQL): max sustainable rate (closed model, $CONNS tills) vs the same mix on \`loyalty dev\` (part 5, same run) | $(fmt "${CO_MAX:-0}") req/s, p99 ${CO_CP99} ms | $(fmt "$MAX") req/s, p99 $CLOSED_P99 ms | $(ratio "${CO_MAX:-0}" "$MAX") | (none) | |"
echo "| … p99 at half of it (open model, ${CO_HALF} req/s) vs dev mode at its own half | p99 ${CO_P99} ms (p50 ${CO_P50}, p99.9 ${CO_P999}; $(fmt "${CO_RATE:-0}") req/s, ${CO_ERR} errors, check ${CO_CHECK}; p99 per operation, ms: ${CO_OPS}) | p99 $O_P99 ms at $HALF req/s | | (none) | |"
fi
echo "| Dev mode through HTTP: \`POST /v1/purchases\` by wrk until applied (server and wrk on the same 2 cores) vs raw redb, 64 writers, group commit, 1 KiB values | $(fmt "$P_RATE") purchases/s | $(fmt "$S_GRP") writes/s ($(fmt "$S_GRP_COMMITS") fsyncs/s) | $(ratio "$P_RATE" "$S_GRP") | | |"
echo "| … the same vs raw redb, 256 writers (groups of up to 256, the store's MAX_GROUP) | $(fmt "$P_RATE") appends/s | $(fmt "$S_GRP256") writes/s ($(fmt "$S_GRP256_COMMITS") fsyncs/s) | $(ratio "$P_RATE" "$S_GRP256") | | |"
echo "| … the same vs raw redb, one writer, one 1 KiB value per durable commit | $(fmt "$P_RATE") appends/s | $(fmt "$S_SEQ") commits/s | $(ratio "$P_RATE" "$S_SEQ") | | |"
echo "| Dev mode: \`POST /v1/purchases\` → 202 (durable in the log) | $(fmt "$P_202") req/s, p99 $(wrk_pct "$WORK/wrk-purchase.txt" 99%) | | | | |"
echo "| Checkout mix (loyalty-loadtest): max sustainable rate (closed model, $CONNS tills) | $(fmt "$MAX") req/s, p99 $CLOSED_P99 ms | | | | |"
echo "| Checkout p99 at half of it (open model, $HALF req/s) | p99 $O_P99 ms (p50 $O_P50, p99.9 $O_P999; $(fmt "$O_RATE") req/s, $O_ERR errors, check $O_CHECK; p99 per operation, ms: $OPS_P99) | | | < 10 ms | $(met "$(python3 -c "print(int(0 < float('$O_P99') < 10))")") |"
echo "| Memory per idle member: each of the next $MEMBERS members, enrolled then passivated (RSS at $MEMBERS → $((2 * MEMBERS)) members: $(mib "${BIG[3]}") → $(mib "${BIG[6]}") MiB) | $MARG_BIG B | | | ≤ 1 024 B | $(met "$(python3 -c "print(int($MARG_BIG <= 1024))")") |"
echo "| … all in: RSS growth from start to $MEMBERS passivated members (RSS $(mib "${BIG[0]}") → $(mib "${BIG[3]}") MiB), fixed budgets included | $IDLE_BIG B | | | | |"
echo "| … with LOYALTY_CACHE_CAPACITY=1000 (no in-process status per member): next $MEMBERS / all in ($(mib "${SMALL[0]}") → $(mib "${SMALL[3]}") → $(mib "${SMALL[5]}") MiB) | $MARG_SMALL B / $IDLE_SMALL B | | | | |"
echo "| Per active actor: (RSS with every actor active, no passivation − RSS after passivation, default cache) / N | $ACT B (N = ${ACTIVE[1]}, RSS $(mib "${ACTIVE[0]}") MiB) | | | documented | |"
echo
echo "Memory: RSS right after enrolment (passivation at ${PASSIVATE} s) $(mib "${BIG[1]}") MiB with ${BIG[2]} actors active; after passivation $(mib "${BIG[3]}") MiB with ${BIG[4]} (the allocator keeps freed memory, so the per-active figure compares two processes)."
echo "Enrolment of $MEMBERS members: ${BIG[5]} s. Calm (1-minute load average under ${CALM_LOAD:-0.7}) at the start: $START_CALM$([ -n "${CALM_EACH:-}" ] && echo "; each part also waited (at most ${CALM_PART_MAX:-300} s) for it, so the load average before each part below is mostly the previous part's own load"). Load average before each part: $(IFS=';'; echo "${LOADS[*]}")."
echo
echo "Commands run by the script:"
echo
echo '```sh'
echo "$REDIS_CMD"
echo "target/release/cache-bench redis://127.0.0.1:PORT/ $D 50"
echo "target/release/store-bench DIR $D 64,256 1024"
echo "$WRK http://GATEWAY        # then the same against target/release/plain-http PORT body.json $WORKERS"
echo "wrk -t2 -c$CONNS -d${D}s --latency -s loadtest/wrk/purchase.lua http://GATEWAY   # until loyalty_events_applied_total{kind=\"purchase\"} stops growing"
echo "target/release/loyalty-loadtest run --members 10000 --model closed --users $CONNS --ramp-up 2s --duration ${D}s"
echo "target/release/loyalty-loadtest run --members 10000 --model open --rate $HALF --ramp-up 2s --duration ${D}s"
echo "cargo test --release -p loyalty-tests --test bench -- --ignored --nocapture ingest_bench::dev_"
echo "cargo test --release -p loyalty-tests --test bench -- --ignored --nocapture ingest_bench::ingestion_rate_next_to_the_raw_broker_rate"
echo "cargo test --release -p loyalty-tests --test bench -- --ignored --nocapture --exact multiprocess_bench::multiprocess_ingestion_1_and_3_engines_and_handoff_on_postgres"
echo "cargo test --release -p loyalty-tests --test bench -- --ignored --nocapture --exact multiprocess_bench::checkout_mix_through_two_gateways_on_postgres   # loyalty-loadtest --url GW1,GW2, closed then open at half"
echo "cargo test --release -p loyalty-tests --test bench -- --ignored --nocapture dashboard_bench::"
echo '```'
echo
echo "Raw output of the dashboard benchmark:"
echo
echo '```'
echo "$DB_LINES"
echo '```'
echo
echo "Raw output of the ingestion tests:"
echo
echo '```'
echo "$E_LINES"
echo "$B_LINES"
echo '```'
echo
echo "Raw output of the multi-process benchmarks (where the time goes: CPU per process, engine stages, PostgreSQL statements):"
echo
echo '```'
echo "$MP_LINES"
echo "$CO_LINES"
echo '```'
} | tee "$OUT"
echo "written: $OUT" >&2
