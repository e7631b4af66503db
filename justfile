# lambda-microservice: `just --list` explains every recipe.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Pinned tool versions, installed by `setup` when missing.
wasm_tools_version := "1.263.0"
# Where builds of the predefined functions land, for `inspect`.
components_out := "target/components"
host := "target/release/lambda-host"

# List the recipes.
default:
    @just --list

# Install what this machine lacks: the wasm32-wasip2 target, wasm-tools, componentize-js, componentize-py.
setup: setup-toolchains setup-wasm-tools

# What building functions needs: the wasm32-wasip2 target, componentize-js, componentize-py.
setup-toolchains: setup-rust setup-js setup-python

# wasm-tools, for `inspect` (a four-minute build from crates.io: the tests do not need it).
setup-wasm-tools:
    command -v wasm-tools >/dev/null && wasm-tools --version | grep -q "{{wasm_tools_version}}" \
        || cargo install wasm-tools --locked --version {{wasm_tools_version}}

# The Rust toolchain's target for functions.
setup-rust:
    rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# componentize-js and its pinned dependencies, from the lockfile (again only when it changed).
setup-js:
    #!/usr/bin/env bash
    set -euo pipefail
    cd toolchains/js
    command -v node >/dev/null || { echo "node is required: apt-get install nodejs npm" >&2; exit 1; }
    stamp=node_modules/.lockfile-sha256
    want=$(sha256sum package-lock.json | cut -d' ' -f1)
    if [[ ! -f $stamp || $(cat $stamp) != "$want" ]]; then
        npm ci --no-audit --no-fund
        echo "$want" > $stamp
    fi

# componentize-py in toolchains/python/.venv, pinned by requirements.txt (again only when it changed).
setup-python:
    #!/usr/bin/env bash
    set -euo pipefail
    source scripts/lib.sh
    ensure_venv toolchains/python/.venv toolchains/python/requirements.txt

# Build the host in release mode.
build: setup-toolchains
    cargo build --release --locked

# Build every function under components/ into target/components/<language-title>.wasm.
build-components: build
    {{host}} build-components --out-dir {{components_out}}

# Print the WIT world of a component: a path, or a predefined function's name.
inspect component: setup
    #!/usr/bin/env bash
    set -euo pipefail
    path="{{component}}"
    if [[ "$path" != *.wasm ]]; then
        path="{{components_out}}/$path.wasm"
        [[ -f "$path" ]] || just build-components
    fi
    wasm-tools component wit "$path"

# Run the tests: formatting, lints, unit and integration tests (real guests, real toolchains, and throwaway Redis and PostgreSQL servers), the deployment files, the dashboard on a native stack.
test: setup-toolchains
    #!/usr/bin/env bash
    set -euo pipefail
    cargo fmt --all --check
    # The servers, validators and fuzzer of the later steps are installed
    # while the tests compile (little CPU); the log is shown if it fails.
    mkdir -p target
    scripts/install-test-tools.sh >target/install-test-tools.log 2>&1 &
    installing=$!
    # Clippy's lints, warnings denied, run while the tests compile: clippy's
    # driver compiles our crate for real (as `cargo clippy` does, through
    # the same two variables, for a check), so the dependencies are built
    # once instead of also being checked by `cargo clippy` (six minutes on
    # a clean 2-core machine). Every target of the workspace is compiled,
    # so every one is linted.
    export RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver)"
    export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
    cargo test --workspace --locked --no-run
    installed=0
    wait $installing || installed=$?
    cat target/install-test-tools.log
    ((installed == 0))
    services=target/test-services
    scripts/test-services.sh stop "$services"
    scripts/test-services.sh start "$services"
    trap 'scripts/test-services.sh stop "$services"' EXIT
    source "$services/env"
    cargo test --workspace --locked
    # The API fuzzed from its own OpenAPI document (schemathesis), on the
    # embedded stores and on Redis + PostgreSQL: 30 seconds each (about
    # 1,500 cases each; `just fuzz` runs ten minutes each). On the caches of
    # the tests (through the CLI tests' data directory, which links them):
    # the predefined functions and interpreters are built and compiled.
    export FUZZ_CACHES_FROM=target/test-cli-data
    scripts/fuzz.sh embedded 30
    scripts/fuzz.sh production 30
    # The deployment files, then the dashboard against a real stack: two
    # replicas of the host just built, Redis, PostgreSQL, Caddy, Prometheus.
    deploy/check-deploy.sh
    STACK_DIR=target/test-stack LAMBDA_HOST_BIN=target/debug/lambda-host \
        LAMBDA_RUST_TARGET_DIR=target/guest-rust scripts/stack.sh smoke

# Serve the REST API on 127.0.0.1:8080 with the embedded stores (state in .lambda/).
run: build
    {{host}} serve

# The API fuzzed from its OpenAPI document for longer: SECONDS on each kind of stores.
fuzz seconds="600": setup-toolchains
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --locked -p lambda-host
    services=target/test-services
    scripts/test-services.sh stop "$services"
    scripts/test-services.sh start "$services"
    trap 'scripts/test-services.sh stop "$services"' EXIT
    source "$services/env"
    scripts/fuzz.sh embedded {{seconds}}
    scripts/fuzz.sh production {{seconds}}

# A mixed load for 10 minutes on Redis + PostgreSQL: RSS over time, unexpected statuses, log rows.
soak seconds="600": setup-toolchains
    python3 bench/soak.py --seconds {{seconds}}

# The soak for one minute.
soak-quick: (soak "60")

# The first run also builds the host of commit 8f84179, the "before" of fresh instances, into target/bench-before.
# Benchmarks (25-50 minutes, with the machine's speed): bench/results.json and docs/benchmarks.md.
bench: setup-toolchains
    python3 bench/run.py

# Benchmarks at 16 connections only, short runs (10-30 minutes, most of it hosts building their interpreters).
bench-quick: setup-toolchains
    python3 bench/run.py --quick

# Fresh instances only, ours against commit 8f84179's, three alternating runs of 5 s per function.
bench-fresh: setup-toolchains
    python3 bench/run.py --fresh-only

# One spin-sdk HTTP component under `wasmtime serve` and at /fn/... (about 1 minute).
bench-spin: setup-toolchains
    python3 bench/run.py --spin-only

# Print a token for the local host: just token alice "execute:all read:functions".
token sub="demo" scope="execute:all read:functions":
    @{{host}} token --sub {{sub}} --scope "{{scope}}"

# Run one function once: just invoke rust-data_validator '{"data":{},"rules":["required"]}'.
invoke function params="{}": build
    {{host}} invoke {{function}} --params '{{params}}'

# Rewrite the settings table in README.md from `lambda-host settings` (a test checks it).
settings-reference:
    #!/usr/bin/env bash
    set -euo pipefail
    table=$(cargo run --quiet --locked -p lambda-host -- settings)
    TABLE="$table" python3 - <<'PY'
    import os, re
    begin = "<!-- BEGIN SETTINGS (generated by `lambda-host settings`) -->\n"
    end = "<!-- END SETTINGS -->"
    text = open("README.md").read()
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    open("README.md", "w").write(head + begin + os.environ["TABLE"] + "\n" + end + tail)
    PY

# Validate the deployment files: docker-compose.yml, Dockerfile sources, Caddy, Prometheus, the Grafana dashboard, deploy/kubernetes/.
check-deploy:
    deploy/check-deploy.sh

# Start the compose stack natively (Redis, PostgreSQL, two host replicas, Caddy, Prometheus) in target/stack/.
stack: build
    scripts/stack.sh up

# A short load on the native stack, then every dashboard query through Prometheus's API.
stack-check:
    scripts/stack.sh check

# Stop the native stack.
stack-down:
    scripts/stack.sh down
