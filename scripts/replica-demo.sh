#!/usr/bin/env bash
# A recorded run of the production shape: two host processes (A and B) on
# one Redis and one PostgreSQL, with the faults of issue 5.
#   scripts/replica-demo.sh [outage-seconds]     (default 30)
# Starts everything it needs on free ports and stops it at the end.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
outage=${1:-30}
host=$PWD/target/release/lambda-host
work=$(mktemp -d)
chmod 755 "$work"
pids=()
cleanup() {
    stop_processes "${pids[@]}"
    [[ -n ${pg_bin:-} ]] && as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
say() { printf '\n### %s\n' "$*"; }

redis_port=$(free_port); pg_port=$(free_port); port_a=$(free_port); port_b=$(free_port)
start_redis() {
    redis-server --port "$redis_port" --bind 127.0.0.1 --appendonly yes --dir "$work" \
        --daemonize yes --pidfile "$work/redis.pid" --logfile "$work/redis.log"
    sleep 0.3
}
pg_bin=$(postgres_bin_dir)
mkdir -p "$work/pg"; give_to_postgres "$work/pg"
as_postgres "$pg_bin/initdb" -D "$work/pg" -U postgres -A trust >/dev/null
pg() { as_postgres "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" -w \
        -o "-p $pg_port -k $work/pg -c listen_addresses=127.0.0.1" "$@" >/dev/null; }
start_redis
pg start

export LAMBDA_REDIS_URL=redis://127.0.0.1:$redis_port/
export LAMBDA_DATABASE_URL=postgres://postgres@127.0.0.1:$pg_port/postgres
export LAMBDA_JWT_SECRET=replica-demo-secret-that-is-long-enough
export LAMBDA_RUST_TARGET_DIR=$PWD/target/guest-rust
serve() { # name port
    LAMBDA_DATA_DIR=$work/$1 $host serve --listen 127.0.0.1:$2 --rate-limit-execute 1000000 \
        >"$work/$1.log" 2>&1 &
    pids+=($!)
    wait_for_http "http://127.0.0.1:$2/health" 300 && return
    echo "$1 did not start"; cat "$work/$1.log"; exit 1
}
say "host A on :$port_a (builds the predefined functions into PostgreSQL)"
serve a "$port_a"
say "host B on :$port_b (fetches them by digest)"
serve b "$port_b"
A=http://127.0.0.1:$port_a; B=http://127.0.0.1:$port_b
TOKEN=$(LAMBDA_DATA_DIR=$work/a $host token --sub demo)
auth=(-H "Authorization: Bearer $TOKEN")
builds() { curl -s "$1/metrics" | grep '^lambda_component_builds_total' | grep -v ' 0$' || echo "(no builds)"; }

say "initialize on A, execute on B"
curl -s -X POST "$A/api/v1/initialize" "${auth[@]}" -H 'Language-Title: nodejs-calculator' -H 'X-Request-ID: demo-calc' -d '{}'; echo
curl -s -X POST "$B/api/v1/execute/demo-calc" "${auth[@]}" -d '{"params":{"operation":"multiply","a":6,"b":7}}'; echo

say "build on A, initialize the same source on B"
src='{"script_content":"export default (e) => ({ twice: e.params.n * 2 });\n"}'
curl -s -X POST "$A/api/v1/initialize" "${auth[@]}" -H 'Language-Title: nodejs-twice' -d "$src"; echo
curl -s -X POST "$B/api/v1/initialize" "${auth[@]}" -H 'Language-Title: nodejs-twice' -H 'X-Request-ID: demo-twice' -d "$src"; echo
curl -s -X POST "$B/api/v1/execute/demo-twice" "${auth[@]}" -d '{"params":{"n":21}}'; echo
echo "A's builds:"; builds "$A"
echo "B's builds:"; builds "$B"

say "Redis stopped mid-run"
kill "$(cat "$work/redis.pid")"; sleep 0.5
curl -s -X POST "$B/api/v1/execute/demo-calc" "${auth[@]}" -d '{"params":{"operation":"add","a":1,"b":1}}'; echo
curl -s "$B/health"; echo
say "Redis back"
start_redis; sleep 1.5
curl -s "$B/health"; echo
for _ in 1 2; do
    curl -s -X POST "$B/api/v1/execute/demo-calc" "${auth[@]}" -d '{"params":{"operation":"add","a":2,"b":2}}'; echo
done

say "PostgreSQL stopped for ${outage}s under load on A and B"
before=$(psql -qtA "$LAMBDA_DATABASE_URL" -c "select count(*) from public.request_logs where user_id = 'demo'")
pg stop -m fast
TOKEN=$TOKEN A=$A B=$B OUTAGE=$outage python3 - <<'PY' >"$work/load.txt" &
import http.client, json, os, time, urllib.parse
token, outage = os.environ["TOKEN"], float(os.environ["OUTAGE"])
conns = [http.client.HTTPConnection(urllib.parse.urlparse(os.environ[k]).netloc) for k in ("A", "B")]
sent = ok = 0
end = time.time() + outage
while time.time() < end:
    c = conns[sent % 2]
    c.request("POST", "/api/v1/execute/demo-calc", json.dumps({"params": {"operation": "add", "a": sent, "b": 1}}),
              {"Authorization": f"Bearer {token}", "X-Cache-Control": "no-cache"})
    r = c.getresponse(); r.read()
    sent += 1; ok += r.status == 200
print(sent, ok)
PY
load=$!
sleep "$outage"; wait $load
read -r sent ok < "$work/load.txt"
echo "requests during the outage: $sent sent, $ok answered 200"
curl -s "$A/health"; echo
pg start
echo "PostgreSQL back; waiting for the queued logs"
for _ in $(seq 60); do
    after=$(psql -qtA "$LAMBDA_DATABASE_URL" -c "select count(*) from public.request_logs where user_id = 'demo'")
    (( after - before >= sent )) && break
    sleep 1
done
echo "request_logs rows for those requests: $((after - before)) (requests made: $sent)"
curl -s "$A/metrics" | grep '^lambda_log_records_dropped_total'
