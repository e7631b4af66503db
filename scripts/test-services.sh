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
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command=${1:?usage: $0 start|stop DIR}
dir=$(realpath -m "${2:?usage: $0 start|stop DIR}")

# The servers' packages, when missing. PostgreSQL's programs are not on PATH
# (postgres_bin_dir finds them), hence no install_missing.
install_servers() {
    local packages=()
    command -v redis-server >/dev/null || packages+=(redis-server)
    postgres_bin_dir >/dev/null || packages+=(postgresql)
    apt_install "${packages[@]}"
}

start() {
    install_servers
    mkdir -p "$dir"
    local redis_port pg_port bin
    redis_port=$(free_port)
    redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir"

    bin=$(postgres_bin_dir)
    pg_port=$(free_port)
    mkdir -p "$dir/pg" "$dir/pg-socket"
    give_to_postgres "$dir/pg" "$dir/pg-socket"
    if is_root; then chmod 755 "$dir"; fi # for postgres to reach them
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
    bin=$(postgres_bin_dir || true)
    if [[ -n $bin && -f $dir/pg/postmaster.pid ]]; then
        as_postgres "$bin/pg_ctl" -D "$dir/pg" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [[ -f $dir/redis.pid ]]; then
        stop_processes "$(cat "$dir/redis.pid")"
    fi
    rm -rf "$dir"
}

"$command"
