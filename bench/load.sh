#!/usr/bin/env bash
# Load on execute: starts the release host on a free port over a fresh data
# directory (rate limits lifted), initializes each predefined function and
# runs wrk against execute at the given connection counts.
#   bench/load.sh [connections...]        default: 16
# Prints wrk's summary (requests/s, latency percentiles) and the host's RSS
# idle and right after each run.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$(dirname "$0")/.."
host=target/release/lambda-host
connections=("${@:-16}")
duration=${DURATION:-10s}
data=$(mktemp -d)
port=$(free_port)
export LAMBDA_DATA_DIR=$data LAMBDA_RUST_TARGET_DIR=$PWD/target/guest-rust
# Reuse the components built by earlier runs.
[[ -d .lambda/artifacts ]] && mkdir -p "$data" && cp -r .lambda/artifacts .lambda/aot "$data"/ 2>/dev/null || true
$host serve --listen 127.0.0.1:$port --rate-limit-execute 1000000000 > "$data/host.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$data"' EXIT
wait_for_http "http://127.0.0.1:$port/health" 300 || true # if not up, wrk reports it
rss() { awk '/VmRSS/ {printf "%.0f MiB", $2/1024}' /proc/$pid/status; }
export TOKEN=$($host token --sub bench)
declare -A params=(
  [nodejs-calculator]='{"operation":"add","a":5,"b":3}'
  [python-text_processor]='{"action":"count_words","text":"Hello world"}'
  [rust-data_validator]='{"data":{"age":25},"rules":["required","numeric"]}'
)
for function in rust-data_validator nodejs-calculator python-text_processor; do
  id=bench-$function
  curl -sf -X POST http://127.0.0.1:$port/api/v1/initialize -H "Authorization: Bearer $TOKEN" \
    -H "Language-Title: $function" -H "X-Request-ID: $id" -d '{}' >/dev/null
  export PARAMS=${params[$function]}
  # Warm the pool's slots for this function before measuring.
  wrk -t1 -c4 -d1s -s bench/execute.lua http://127.0.0.1:$port/api/v1/execute/$id >/dev/null
  echo "idle RSS: $(rss)"
  for c in "${connections[@]}"; do
    echo "== $function, $c connections, $duration"
    wrk -t2 -c"$c" -d"$duration" --latency -s bench/execute.lua http://127.0.0.1:$port/api/v1/execute/$id \
      | grep -E 'Requests/sec|^ +(50|99)%|Non-2xx|Socket errors'
    echo "RSS right after: $(rss)"
  done
done
