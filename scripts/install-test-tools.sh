#!/usr/bin/env bash
# Installs what the steps after the test build need, so that `just test` can
# run it while the tests compile: downloads and unpacking, which leave the
# compiler its two cores. Each step installs the same again when missing, so
# this is only a head start:
#   - Redis and PostgreSQL (scripts/test-services.sh),
#   - docker-compose, Caddy and Prometheus (deploy/check-deploy.sh, stack.sh),
#   - schemathesis into fuzz/.venv (scripts/fuzz.sh),
#   - kubernetes-validate into deploy/.venv (deploy/check-kubernetes.sh).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

# One apt-get for every package: two at once would wait on dpkg's lock.
packages=()
for pair in redis-server=redis-server docker-compose=docker-compose caddy=caddy \
    promtool=prometheus prometheus=prometheus; do
    command -v "${pair%%=*}" >/dev/null || packages+=("${pair#*=}")
done
postgres_bin_dir >/dev/null || packages+=(postgresql)
# prometheus and promtool are one package.
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u | sed '/^$/d')
apt_install "${packages[@]}"

ensure_venv fuzz/.venv fuzz/requirements.txt
ensure_venv deploy/.venv deploy/requirements.txt
