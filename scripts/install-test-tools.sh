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

# The package prometheus holds both prometheus and promtool. PostgreSQL's
# programs are off PATH (postgres_bin_dir finds them).
install_missing redis-server=redis-server docker-compose=docker-compose caddy=caddy \
    promtool=prometheus
postgres_bin_dir >/dev/null || apt_install postgresql

ensure_venv fuzz/.venv fuzz/requirements.txt
ensure_venv deploy/.venv deploy/requirements.txt
