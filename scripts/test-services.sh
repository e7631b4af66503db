#!/usr/bin/env bash
# Throwaway Redis and PostgreSQL servers for the tests, on free ports, from
# the installed binaries (installed with apt-get when missing).
#
#   scripts/test-services.sh start DIR   start both; writes DIR/env
#   scripts/test-services.sh stop DIR    stop both
#
# DIR/env exports LAMBDA_TEST_REDIS_URL, LAMBDA_TEST_DATABASE_URL (the
# `postgres` database: tests create a database of their own in it) and
# LAMBDA_TEST_REDIS_SERVER / LAMBDA_TEST_PG_BIN, so tests that stop and
# start servers can run their own instances.
set -euo pipefail

command=${1:?usage: $0 start|stop DIR}
dir=$(realpath -m "${2:?usage: $0 start|stop DIR}")

as_postgres() {
    # PostgreSQL refuses to run as root.
    if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_bin() {
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $bin && -x $bin/initdb ]] && echo "$bin"
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

install_missing() {
    local packages=()
    command -v redis-server >/dev/null || packages+=(redis-server)
    pg_bin >/dev/null || packages+=(postgresql)
    if ((${#packages[@]})); then
        echo "installing ${packages[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        apt-get install -y -qq "${packages[@]}" >&2
    fi
    # Debian's packages start their own services; the tests use theirs only.
}

start() {
    install_missing
    mkdir -p "$dir"
    local redis_port pg_port bin
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"

    bin=$(pg_bin)
    pg_port=$(free_port)
    mkdir -p "$dir/pg" "$dir/pg-socket"
    [[ $(id -u) == 0 ]] && chown postgres "$dir/pg" "$dir/pg-socket" && chmod 755 "$dir"
    as_postgres "$bin/initdb" -D "$dir/pg" -U postgres -A trust --no-sync >"$dir/initdb.log"
    as_postgres "$bin/pg_ctl" -D "$dir/pg" -l "$dir/pg/server.log" -w \
        -o "-p $pg_port -k $dir/pg-socket -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null

    for _ in $(seq 50); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    cat >"$dir/env" <<ENV
export LAMBDA_TEST_REDIS_URL=redis://127.0.0.1:$redis_port/
export LAMBDA_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/postgres
export LAMBDA_TEST_REDIS_SERVER=$(command -v redis-server)
export LAMBDA_TEST_PG_BIN=$bin
ENV
    echo "test services: redis on $redis_port, postgres on $pg_port" >&2
}

stop() {
    local bin
    bin=$(pg_bin || true)
    if [[ -n $bin && -f $dir/pg/postmaster.pid ]]; then
        as_postgres "$bin/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [[ -f $dir/redis.pid ]]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
    fi
    rm -rf "$dir"
}

"$command"
