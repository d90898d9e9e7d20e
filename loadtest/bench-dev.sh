#!/usr/bin/env bash
# Measures `loyalty dev` (release build, durability on) on this machine with wrk:
#   1. enrols LOYALTY_MEMBERS members (default 100 000) and reports the resident memory;
#   2. GET /v1/members/{id} (the checkout hot path);
#   3. POST /v1/purchases (202 once durable in the log), then with ?wait_ms=5000 (200 once
#      applied: durable in the store);
#   4. resident memory once idle actors are passivated.
# Usage: loadtest/bench-dev.sh [duration-seconds]   (needs wrk: apt-get install -y wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-15}
MEMBERS=${LOYALTY_MEMBERS:-100000}
CONNS=${CONNS:-64}
command -v wrk >/dev/null || { echo "wrk is required: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --locked --bin loyalty >&2

WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
LOYALTY_PASSIVATE_AFTER_SECS=${PASSIVATE:-20} RUST_LOG=warn \
  target/release/loyalty dev --listen 127.0.0.1:$PORT --data-dir "$WORK/data" >"$WORK/out.log" 2>&1 &
PID=$!
URL=http://127.0.0.1:$PORT
for _ in $(seq 100); do curl -sf $URL/readyz >/dev/null && break; sleep 0.1; done
# shellcheck disable=SC1091
source "$WORK/data/demo-keys.env"
export LOYALTY_STORE_KEY=$STORE1_KEY LOYALTY_MEMBERS=$MEMBERS WRK_THREADS=2
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$PID/status; }

echo "## loyalty dev on $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(date -u +%F)"
echo "rss at start: $(rss)"
start=$(date +%s)
# Enrol until every phone of the range is a member (each wrk request enrols or finds one).
while :; do
  wrk -t2 -c$CONNS -d10s -s loadtest/wrk/enrol.lua $URL >"$WORK/enrol.txt"
  n=$(curl -sf -H "Authorization: Bearer $HQ_KEY" $URL/metrics | awk '/^loyalty_events_applied_total\{kind="enrol"\}/ {print $2}')
  [ "${n:-0}" -ge "$MEMBERS" ] && break
done
echo "enrolled $n members in $(( $(date +%s) - start )) s; rss: $(rss)"

python3 - "$URL" "$STORE1_KEY" "$WORK/ids.txt" <<'PY'
import http.client, json, sys
url, key, out = sys.argv[1], sys.argv[2], sys.argv[3]
host, port = url.split("//")[1].split(":")
c = http.client.HTTPConnection(host, int(port))
with open(out, "w") as f:
    for i in range(0, 100000, 50):
        c.request("POST", "/v1/members", json.dumps({"phone": "+3361%07d" % i}), {"Authorization": "Bearer " + key, "Content-Type": "application/json"})
        f.write(json.loads(c.getresponse().read())["member_id"] + "\n")
PY
export LOYALTY_IDS_FILE=$WORK/ids.txt

echo; echo "### GET /v1/members/{id}"
wrk -t2 -c$CONNS -d${DURATION}s --latency -s loadtest/wrk/status.lua $URL | grep -E "Requests/sec|Latency|50%|90%|99%|Non-2xx|Socket"
applied() { curl -sf $URL/metrics | awk '/^loyalty_events_applied_total\{kind="purchase"\}/ {print $2}'; }
echo; echo "### POST /v1/purchases (202: durable in the log)"
a0=$(applied); a0=${a0:-0}; t0=$(date +%s.%N)
LOYALTY_RUN=a wrk -t2 -c$CONNS -d${DURATION}s --latency -s loadtest/wrk/purchase.lua $URL | grep -E "Requests/sec|Latency|50%|90%|99%|Non-2xx|Socket"
# End to end: from the first request until the engine has applied (durably) every purchase.
prev=-1; while :; do cur=$(applied); [ "$cur" = "$prev" ] && break; prev=$cur; sleep 0.5; done
t1=$(date +%s.%N)
python3 -c "n=$prev-$a0; d=$t1-$t0-0.5; print(f'applied end to end: {n:.0f} purchases in {d:.1f} s = {n/d:.0f} purchases/s (durable in the store)')"
echo; echo "### POST /v1/purchases?wait_ms=5000 (200: applied, durable in the store)"
LOYALTY_RUN=b LOYALTY_WAIT_MS=5000 wrk -t2 -c$CONNS -d${DURATION}s --latency -s loadtest/wrk/purchase.lua $URL | grep -E "Requests/sec|Latency|50%|90%|99%|Non-2xx|Socket"
curl -sf $URL/metrics | grep -E '^loyalty_(events_applied_total|member_actors_active|events_replayed_total)' || true
echo "rss after the runs: $(rss)"
sleep $(( ${PASSIVATE:-20} * 2 ))
echo "rss after passivation of idle actors: $(rss)"
curl -sf $URL/metrics | grep -E '^loyalty_member_actors_active' || true
