#!/usr/bin/env bash
# Fuzzes the API from its own OpenAPI document with schemathesis (pinned in
# fuzz/requirements.txt, installed into fuzz/.venv): every operation, every
# check, against a live host with a valid token.
#
#   scripts/fuzz.sh embedded|production SECONDS
#
# `production` puts the host on Redis and a fresh PostgreSQL database of the
# test services (`scripts/test-services.sh`, started by `just test`: source
# target/test-services/env first). Fails on a failure of the host (a 5xx that
# is not a function's own error, a full host or a deadline: fuzz/hooks.py), a
# response the document does not describe, or a hang (90 s per request; a
# build may take 60). FUZZ_CACHES_FROM=DIR: the data directory whose
# caches (artifacts, compiled code, toolchain cache) and secret the host
# uses, as links, instead of building and compiling everything again.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
stores=${1:?usage: $0 embedded|production SECONDS}
seconds=${2:?usage: $0 embedded|production SECONDS}

venv=fuzz/.venv
ensure_venv "$venv" fuzz/requirements.txt

host=${LAMBDA_HOST_BIN:-target/debug/lambda-host}
# Kept between runs, and one for both kinds of stores: the predefined
# functions are built and compiled once (artifacts, compiled code and the
# secret that seals them live in the data directory whatever the stores;
# the embedded registry's files are unused on Redis + PostgreSQL).
data=target/fuzz-data
log=$data/host-$stores.log
mkdir -p "$data"
chmod 700 "$data"
if [[ -n ${FUZZ_CACHES_FROM:-} ]]; then
    for cache in artifacts aot toolchain-cache; do
        mkdir -p "$FUZZ_CACHES_FROM/$cache"
        rm -rf "${data:?}/$cache"
        ln -s "$(realpath "$FUZZ_CACHES_FROM/$cache")" "$data/$cache"
    done
    install -m 600 "$FUZZ_CACHES_FROM/jwt-secret" "$data/jwt-secret"
fi
export LAMBDA_DATA_DIR=$data LAMBDA_RUST_TARGET_DIR=${LAMBDA_RUST_TARGET_DIR:-target/guest-rust}
unset LAMBDA_JWT_SECRET LAMBDA_REDIS_URL LAMBDA_DATABASE_URL
if [[ $stores == production ]]; then
    : "${LAMBDA_TEST_DATABASE_URL:?start the test services and source target/test-services/env}"
    database=fuzz_$(date +%s)_$$
    "$LAMBDA_TEST_PG_BIN/psql" -q "$LAMBDA_TEST_DATABASE_URL" -c "CREATE DATABASE $database"
    export LAMBDA_DATABASE_URL=${LAMBDA_TEST_DATABASE_URL%/*}/$database
    export LAMBDA_REDIS_URL=$LAMBDA_TEST_REDIS_URL
fi

port=$(free_port)
# Rate limits lifted (they have tests of their own, and a 429 hides what a
# request would have met), except the one on builds, which bounds the CPU
# the run spends compiling random sources.
LAMBDA_BUILD_TIMEOUT_SECS=60 "$host" serve --listen "127.0.0.1:$port" \
    --rate-limit-execute 1000000000 --rate-limit-functions 1000000000 \
    --rate-limit-initialize 1000000000 > "$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
# A host that exits shows its log; one that does not answer in time fails the
# fuzzing run below.
if ! wait_for_http "http://127.0.0.1:$port/health" 300 "$pid"; then
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
fi
token=$("$host" token --sub fuzz)

# Without the coverage phase: in schemathesis 4.32.5 it sends header values
# that break the header's pattern as if they were valid (`X-Cache-Control: 0`)
# and at times fails inside hypothesis ("AST constructor recursion depth
# mismatch"). The fuzzing and stateful phases send valid and invalid input.
echo "==> fuzzing the API on the $stores stores for $seconds s"
SCHEMATHESIS_HOOKS=fuzz.hooks PYTHONPATH=. "$venv/bin/st" --config-file fuzz/schemathesis.toml run \
    "http://127.0.0.1:$port/api/v1/openapi.json" \
    -H "Authorization: Bearer $token" \
    --checks all --exclude-checks not_a_server_error \
    --max-time "$seconds" --workers 2 --request-timeout 90 \
    --phases examples,fuzzing,stateful \
    --warnings off
