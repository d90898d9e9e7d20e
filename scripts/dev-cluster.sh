#!/usr/bin/env bash
# The distributed platform on this machine, as separate processes on loopback ports:
# PostgreSQL (the shared store, its own cluster in $DATA/postgres), redis-server, the tansu
# Kafka-compatible broker, `loyalty migrate`, two `loyalty gateway` and three `loyalty engine`.
#
#   scripts/dev-cluster.sh [start]   # starts everything in the background, prints URLs and keys
#   scripts/dev-cluster.sh status    # what runs, and whether it answers /readyz
#   scripts/dev-cluster.sh stop      # gateways, then engines (each drains), broker, Redis, PostgreSQL
#
# Settings (environment): DATA (./cluster-data), GATEWAY_PORTS (8080 8081), ENGINE_PORTS
# (8090 8091 8092), PG_PORT (15432), REDIS_PORT (6379), KAFKA_PORT (9092), PARTITIONS (12),
# LOYALTY_TANSU_BIN (else scripts/install-tansu.sh, minutes on first use), LOYALTY_BIN (else
# `cargo build --release --bin loyalty`). Data is kept across stop/start; `rm -rf cluster-data`
# starts afresh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA=${DATA:-./cluster-data}
mkdir -p "$DATA"
DATA=$(cd "$DATA" && pwd)
GATEWAY_PORTS=(${GATEWAY_PORTS:-8080 8081})
ENGINE_PORTS=(${ENGINE_PORTS:-8090 8091 8092})
PG_PORT=${PG_PORT:-15432}
REDIS_PORT=${REDIS_PORT:-6379}
KAFKA_PORT=${KAFKA_PORT:-9092}
PARTITIONS=${PARTITIONS:-12}
PIDS=$DATA/pids
LOGS=$DATA/logs
PGDATA_DIR=$DATA/postgres
PG_URL="postgres://loyalty@127.0.0.1:$PG_PORT/loyalty"
mkdir -p "$PIDS" "$LOGS"

say() { echo "dev-cluster: $*" >&2; }
die() { say "$*"; exit 1; }

# As root, PostgreSQL runs as the package's `postgres` user (initdb refuses root).
as_pg() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
    local b
    b=$(ls -1 /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1)
    [ -n "$b" ] || die "$1 not found: apt-get install -y postgresql"
    echo "$b"
}

# A pid that exists and is not a zombie (an exited child waiting for PID 1 to reap it).
running() { kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]; }

alive() { [ -f "$PIDS/$1.pid" ] && running "$(cat "$PIDS/$1.pid")"; }

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits (at most $2 seconds) until command "$3..." succeeds; fails naming $1.
wait_for() {
    local what=$1 secs=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $deadline ] || die "$what not up after ${secs}s (logs in $LOGS)"
        sleep 0.2
    done
}

ready() { curl -fsS -o /dev/null "http://127.0.0.1:$1/readyz"; }

# Runs "$2..." in the background, detached from this shell's session, logging to $LOGS/$1.log.
launch() {
    local name=$1; shift
    if command -v setsid >/dev/null; then
        setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    else
        nohup "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
    fi
    echo $! >"$PIDS/$name.pid"
}

names() {
    local i
    for i in "${!GATEWAY_PORTS[@]}"; do echo "gateway-$i"; done
    for i in "${!ENGINE_PORTS[@]}"; do echo "engine-$i"; done
    echo broker
    echo redis
}

platform_env() {
    echo "LOYALTY_KAFKA_BROKERS=127.0.0.1:$KAFKA_PORT"
    echo "LOYALTY_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/"
    echo "LOYALTY_POSTGRES_URL=$PG_URL"
    echo "LOYALTY_ADMIN_KEY=$(cat "$DATA/admin-key")"
    echo "LOYALTY_PII_KEYS=$(cat "$DATA/pii-keys")"
    echo "LOYALTY_PARTITIONS=$PARTITIONS"
}

start_postgres() {
    local initdb pg_ctl
    initdb=$(pg_bin initdb)
    pg_ctl=$(pg_bin pg_ctl)
    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        say "initialising PostgreSQL in $PGDATA_DIR"
        mkdir -p "$PGDATA_DIR"
        if [ "$(id -u)" -eq 0 ]; then
            id postgres >/dev/null 2>&1 || die "no postgres user: apt-get install -y postgresql"
            chown postgres "$PGDATA_DIR"
            chmod 700 "$PGDATA_DIR"
            as_pg test -w "$PGDATA_DIR" ||
                die "the postgres user cannot write $PGDATA_DIR (set DATA to a directory it can reach)"
        fi
        as_pg "$initdb" -D "$PGDATA_DIR" -A trust -U loyalty >"$LOGS/initdb.log" 2>&1 ||
            die "initdb failed: $(tail -5 "$LOGS/initdb.log")"
    fi
    if as_pg "$pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        say "PostgreSQL already runs"
    else
        port_busy "$PG_PORT" && die "port $PG_PORT (PG_PORT) is taken"
        touch "$LOGS/postgres.log"
        [ "$(id -u)" -ne 0 ] || chown postgres "$LOGS/postgres.log"
        as_pg "$pg_ctl" -D "$PGDATA_DIR" -l "$LOGS/postgres.log" -w -t 60 \
            -o "-p $PG_PORT -k $PGDATA_DIR -c listen_addresses=127.0.0.1" start >/dev/null ||
            die "PostgreSQL did not start: $(tail -5 "$LOGS/postgres.log")"
    fi
    local psql createdb
    psql=$(pg_bin psql)
    createdb=$(pg_bin createdb)
    if [ "$("$psql" -h 127.0.0.1 -p "$PG_PORT" -U loyalty -d postgres -tAc \
        "SELECT 1 FROM pg_database WHERE datname = 'loyalty'")" != 1 ]; then
        "$createdb" -h 127.0.0.1 -p "$PG_PORT" -U loyalty loyalty
    fi
}

stop_postgres() {
    [ -f "$PGDATA_DIR/PG_VERSION" ] || return 0
    local pg_ctl
    pg_ctl=$(pg_bin pg_ctl)
    if as_pg "$pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        as_pg "$pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null && say "stopped postgres"
    fi
}

# SIGTERM, then waits (30 s) for the process to exit; SIGKILL past that.
stop_one() {
    local name=$1 pid
    alive "$name" || { rm -f "$PIDS/$name.pid"; return 0; }
    pid=$(cat "$PIDS/$name.pid")
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while running "$pid"; do
        if [ $SECONDS -ge $deadline ]; then
            say "$name (pid $pid) still running after 30 s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            break
        fi
        sleep 0.1
    done
    rm -f "$PIDS/$name.pid"
    say "stopped $name"
}

cmd_stop() {
    local n
    # Gateways first (no new commands), then each engine drains and commits, then the servers.
    for n in $(names); do stop_one "$n"; done
    stop_postgres
}

cmd_status() {
    local n i up=0
    for n in $(names); do
        if alive "$n"; then
            up=$((up + 1))
            printf '%-10s running (pid %s)' "$n" "$(cat "$PIDS/$n.pid")"
            case $n in
                gateway-*) i=${n#gateway-}; port=${GATEWAY_PORTS[$i]} ;;
                engine-*) i=${n#engine-}; port=${ENGINE_PORTS[$i]} ;;
                *) port= ;;
            esac
            if [ -n "$port" ]; then
                if ready "$port"; then printf ', ready on http://127.0.0.1:%s' "$port"
                else printf ', not ready on http://127.0.0.1:%s' "$port"; fi
            fi
            echo
        else
            printf '%-10s stopped\n' "$n"
        fi
    done
    if [ -f "$PGDATA_DIR/PG_VERSION" ] && as_pg "$(pg_bin pg_ctl)" -D "$PGDATA_DIR" status >/dev/null 2>&1; then
        echo "postgres   running on 127.0.0.1:$PG_PORT"; up=$((up + 1))
    else
        echo "postgres   stopped"
    fi
    [ $up -gt 0 ]
}

cmd_start() {
    local n
    for n in $(names); do
        alive "$n" && die "$n already runs (scripts/dev-cluster.sh status; stop it with scripts/dev-cluster.sh stop)"
    done
    command -v redis-server >/dev/null || die "redis-server is required: apt-get install -y redis-server"
    command -v curl >/dev/null || die "curl is required: apt-get install -y curl"
    local p
    for p in "$REDIS_PORT" "$KAFKA_PORT" "${GATEWAY_PORTS[@]}" "${ENGINE_PORTS[@]}"; do
        port_busy "$p" && die "port $p is taken (see the port settings at the top of $0)"
    done
    local tansu loyalty
    tansu=${LOYALTY_TANSU_BIN:-$(scripts/install-tansu.sh)}
    if [ -n "${LOYALTY_BIN:-}" ]; then
        loyalty=$LOYALTY_BIN
    else
        cargo build --release --locked --bin loyalty >&2
        loyalty=$ROOT/target/release/loyalty
    fi
    [ -f "$DATA/admin-key" ] || { od -An -tx1 -N16 /dev/urandom | tr -d ' \n' | sed 's/^/admin-/' >"$DATA/admin-key"; chmod 600 "$DATA/admin-key"; }
    # The key ring that seals members' personal data (README "Personal data at rest").
    [ -f "$DATA/pii-keys" ] || { "$loyalty" privacy new-key cluster >"$DATA/pii-keys"; chmod 600 "$DATA/pii-keys"; }

    # If anything below fails, stop what was started.
    STARTING=1
    trap 'if [ "${STARTING:-0}" = 1 ]; then say "start failed; stopping what was started"; cmd_stop; fi' EXIT

    start_postgres
    say "postgres on 127.0.0.1:$PG_PORT"

    mkdir -p "$DATA/redis"
    launch redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$DATA/redis" \
        --save "" --appendonly no
    wait_for redis 10 port_busy "$REDIS_PORT"
    say "redis on 127.0.0.1:$REDIS_PORT"

    mkdir -p "$DATA/broker"
    (cd "$DATA/broker" && launch broker env -u CLUSTER_ID -u SCHEMA_REGISTRY -u DATA_LAKE \
        RUST_LOG="${LOYALTY_TANSU_LOG:-warn}" "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine sqlite:///broker.db)
    wait_for "broker" 30 port_busy "$KAFKA_PORT"
    say "kafka (tansu) on 127.0.0.1:$KAFKA_PORT"

    env $(platform_env) "$loyalty" migrate >"$LOGS/migrate.log" 2>&1 ||
        die "loyalty migrate failed: $(tail -5 "$LOGS/migrate.log")"
    say "$(tail -1 "$LOGS/migrate.log")"

    # The first gateway creates the topics and, on a new store, the demo franchise (keys in
    # $DATA/gateway-0/demo-keys.env); the other processes start after it.
    local i
    for i in "${!GATEWAY_PORTS[@]}"; do
        mkdir -p "$DATA/gateway-$i"
        launch "gateway-$i" env $(platform_env) LOYALTY_LISTEN="127.0.0.1:${GATEWAY_PORTS[$i]}" \
            LOYALTY_DATA_DIR="$DATA/gateway-$i" LOYALTY_DEMO="$([ "$i" = 0 ] && echo true || echo false)" \
            "$loyalty" gateway
        [ "$i" != 0 ] || wait_for gateway-0 120 ready "${GATEWAY_PORTS[0]}"
    done
    for i in "${!ENGINE_PORTS[@]}"; do
        mkdir -p "$DATA/engine-$i"
        launch "engine-$i" env $(platform_env) LOYALTY_LISTEN="127.0.0.1:${ENGINE_PORTS[$i]}" \
            LOYALTY_DATA_DIR="$DATA/engine-$i" "$loyalty" engine
    done
    for i in "${!GATEWAY_PORTS[@]}"; do wait_for "gateway-$i" 120 ready "${GATEWAY_PORTS[$i]}"; done
    for i in "${!ENGINE_PORTS[@]}"; do wait_for "engine-$i" 120 ready "${ENGINE_PORTS[$i]}"; done
    STARTING=0

    {
        for i in "${!GATEWAY_PORTS[@]}"; do echo "GATEWAY$((i + 1))=http://127.0.0.1:${GATEWAY_PORTS[$i]}"; done
        for i in "${!ENGINE_PORTS[@]}"; do echo "ENGINE$((i + 1))=http://127.0.0.1:${ENGINE_PORTS[$i]}"; done
        echo "ADMIN_KEY=$(cat "$DATA/admin-key")"
        platform_env
    } >"$DATA/cluster.env"
    chmod 600 "$DATA/cluster.env"

    echo "cluster up (data and logs in $DATA):"
    for i in "${!GATEWAY_PORTS[@]}"; do echo "  gateway-$i  http://127.0.0.1:${GATEWAY_PORTS[$i]}"; done
    for i in "${!ENGINE_PORTS[@]}"; do echo "  engine-$i   http://127.0.0.1:${ENGINE_PORTS[$i]}  (/healthz /readyz /metrics)"; done
    echo "  postgres   $PG_URL"
    echo "  redis      redis://127.0.0.1:$REDIS_PORT/"
    echo "  kafka      127.0.0.1:$KAFKA_PORT (tansu)"
    echo "  admin key  $(cat "$DATA/admin-key")"
    if [ -f "$DATA/gateway-0/demo-keys.env" ]; then
        echo "  demo keys  $DATA/gateway-0/demo-keys.env:"
        sed 's/^/    /' "$DATA/gateway-0/demo-keys.env"
    fi
    echo "  all of it  $DATA/cluster.env (source it, with the demo keys, for curl)"
    echo "stop with: scripts/dev-cluster.sh stop"
}

case ${1:-start} in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) die "usage: $0 [start|status|stop]" ;;
esac
