# syntax=docker/dockerfile:1
#
# The lambda host and the three toolchains it builds functions with:
#   - Rust (rustup, the wasm32-wasip2 target, the shared dependencies of every
#     Rust function already compiled and their crates fetched, cargo offline),
#   - JavaScript (Node.js and componentize-js from toolchains/js/package-lock.json),
#   - Python (componentize-py pinned by toolchains/python/requirements.txt),
# plus the predefined functions, built and compiled to native code ahead of
# time. The image runs as an unprivileged user and answers on port 8080.
# Builds of user source run in the host's own sandbox (docs/security.md): on
# a Linux 6.12+ host the default seccomp profile is all it needs.
#
#   docker build -t lambda-microservice/host .
#   docker run -p 8080:8080 -e LAMBDA_JWT_SECRET=... lambda-microservice/host

ARG RUST_VERSION=1.95
ARG NODE_VERSION=20

# Node.js from its official image: Debian's 18.x is older than componentize-js wants.
FROM node:${NODE_VERSION}-bookworm-slim AS node

# componentize-js and friends, exactly as the lockfile pins them.
FROM node AS js-packages
WORKDIR /opt/lambda/toolchains/js
COPY toolchains/js/package.json toolchains/js/package-lock.json ./
RUN npm ci --no-audit --no-fund && npm cache clean --force

# What both the build and the final image need: Rust with the functions'
# target, Python with venv, Node.js, curl for the health check.
FROM rust:${RUST_VERSION}-slim-bookworm AS base
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv curl ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
RUN rustup target add wasm32-wasip2

# The host binary, in release mode. The cache mounts keep crates.io downloads
# and the target directory between builds of the image.
FROM base AS host-build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p lambda-host \
    && cp target/release/lambda-host /usr/local/bin/lambda-host

FROM base AS runtime
# An unprivileged user owns the state; nothing in the image runs as root.
RUN groupadd --system --gid 10001 lambda \
    && useradd --system --uid 10001 --gid lambda --home-dir /var/lib/lambda \
        --shell /usr/sbin/nologin lambda \
    && mkdir -p /var/lib/lambda /opt/lambda/cargo \
    && chown lambda:lambda /var/lib/lambda /opt/lambda/cargo \
    && chmod 700 /var/lib/lambda

# Functions' crates and cargo's locks live in a directory the user owns.
ENV CARGO_HOME=/opt/lambda/cargo \
    LAMBDA_DATA_DIR=/var/lib/lambda \
    LAMBDA_COMPONENTS_DIR=/opt/lambda/components \
    LAMBDA_TOOLCHAINS_DIR=/opt/lambda/toolchains \
    LAMBDA_LISTEN=0.0.0.0:8080 \
    LAMBDA_LOG_FORMAT=json
WORKDIR /opt/lambda

COPY toolchains/js/build.mjs toolchains/js/glue.js toolchains/js/package.json toolchains/js/
COPY --from=js-packages /opt/lambda/toolchains/js/node_modules toolchains/js/node_modules
COPY toolchains/python/requirements.txt toolchains/python/build.py toolchains/python/glue.py toolchains/python/stdlib.py toolchains/python/
RUN python3 -m venv toolchains/python/.venv \
    && toolchains/python/.venv/bin/pip install --no-cache-dir --disable-pip-version-check \
        -r toolchains/python/requirements.txt
COPY components components
COPY --from=host-build /usr/local/bin/lambda-host /usr/local/bin/lambda-host

USER lambda
# Build the predefined functions (the Rust one fetches the crates every Rust
# function uses and compiles them into the shared target directory) and run
# each once, which leaves its native code in the AOT cache. Then cargo goes
# offline: a user's Rust function builds from what is here, and a build never
# reaches the network.
#
# These sources are the project's own, and the machine running `docker build`
# may lack what the sandbox needs (a 6.12 kernel): this step alone builds
# unconfined. Every build at run time is confined.
RUN export LAMBDA_BUILD_SANDBOX=off \
    && lambda-host invoke rust-data_validator --params '{"data":{"age":25},"rules":["required","numeric"]}' \
    && lambda-host invoke nodejs-calculator --params '{"operation":"add","a":5,"b":3}' \
    && lambda-host invoke python-text_processor --params '{"action":"count_words","text":"Hello world"}' \
    && printf '[net]\noffline = true\n' > "$CARGO_HOME/config.toml"

EXPOSE 8080
# 200 when serving (ok or degraded), 503 when no toolchain works.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health > /dev/null || exit 1
ENTRYPOINT ["lambda-host"]
CMD ["serve"]
