#!/usr/bin/env bash
# A distributed-mode platform on this machine, on loopback ports: redis-server, the tansu
# Kafka-compatible broker (installed by scripts/install-tansu.sh if missing) and a
# `loyalty node` (gateway + engine on Kafka and Redis). Everything runs in the foreground
# until Ctrl-C, then stops cleanly (node first, so its last batch is committed).
#
#   scripts/dev-cluster.sh                 # ports 8080 (HTTP), 9092 (Kafka), 6379 (Redis)
#   HTTP_PORT=8090 KAFKA_PORT=19092 REDIS_PORT=16379 DATA=./cluster-data scripts/dev-cluster.sh
set -euo pipefail
cd "$(dirname "$0")/.."
HTTP_PORT=${HTTP_PORT:-8080}
KAFKA_PORT=${KAFKA_PORT:-9092}
REDIS_PORT=${REDIS_PORT:-6379}
DATA=$(mkdir -p "${DATA:-./cluster-data}" && cd "${DATA:-./cluster-data}" && pwd)
command -v redis-server >/dev/null || { echo "redis-server is required: apt-get install -y redis-server" >&2; exit 1; }
TANSU=${LOYALTY_TANSU_BIN:-$(scripts/install-tansu.sh)}
cargo build --release --locked --bin loyalty >&2

pids=()
cleanup() {
    trap - INT TERM EXIT
    echo "stopping..."
    for pid in $(printf '%s\n' "${pids[@]}" | tac); do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup INT TERM EXIT

mkdir -p "$DATA/redis" "$DATA/broker" "$DATA/node"
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DATA/redis" --save "" --appendonly no \
    >"$DATA/redis.log" 2>&1 &
pids+=($!)
(cd "$DATA/broker" && exec "$TANSU" broker --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" --storage-engine sqlite:///broker.db) \
    >"$DATA/broker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$KAFKA_PORT") 2>/dev/null && break; sleep 0.1; done

LOYALTY_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT LOYALTY_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/ \
    target/release/loyalty node --listen 127.0.0.1:"$HTTP_PORT" --data-dir "$DATA/node" &
pids+=($!)
echo "redis 127.0.0.1:$REDIS_PORT, kafka 127.0.0.1:$KAFKA_PORT, API http://127.0.0.1:$HTTP_PORT"
echo "logs and data in $DATA; keys in $DATA/node/demo-keys.env; Ctrl-C stops everything"
wait "${pids[-1]}"
