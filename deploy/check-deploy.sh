#!/usr/bin/env bash
# Validates every deployment file without a Docker engine or a cluster:
#   - docker-compose.yml with Debian's docker-compose (`config`), with the
#     variables of .env.example, and refused without them (secrets required);
#   - the Dockerfile's sources: every path it copies from the build context
#     exists and is not excluded by .dockerignore;
#   - deploy/caddy/Caddyfile with `caddy validate`, deploy/prometheus with
#     promtool, the Grafana dashboard's static checks;
#   - deploy/kubernetes/ against the Kubernetes schemas (check-kubernetes.sh).
# Each validator must first reject a broken file, so none passes by accident.
# Missing tools are installed with apt-get.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
cd "$(dirname "$0")/.."

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# must_fail WHAT COMMAND...: the command must exit non-zero.
must_fail() {
    local what=$1
    shift
    if "$@" >"$tmp/out" 2>&1; then
        echo "ERROR: $what was accepted: the validator checks nothing" >&2
        exit 1
    fi
    echo "guard: rejected as it must be: $what"
}

install_missing docker-compose=docker-compose caddy=caddy promtool=prometheus

echo "==> docker-compose.yml ($(docker-compose version --short))"
mkdir -p "$tmp/compose"
printf 'services:\n  host:\n    imagee: lambda\n' >"$tmp/compose/docker-compose.yml"
must_fail "a compose file with an unknown key" \
    docker-compose --project-directory "$tmp/compose" -f "$tmp/compose/docker-compose.yml" config -q
: >"$tmp/empty.env"
must_fail "docker-compose.yml without the secrets of .env" \
    docker-compose --env-file "$tmp/empty.env" config -q
grep -q "LAMBDA_JWT_SECRET" "$tmp/out" || { cat "$tmp/out"; exit 1; }
docker-compose --env-file .env.example config -q
services=$(docker-compose --env-file .env.example config --services | sort | paste -sd' ' -)
[[ $services == "grafana host postgres prometheus proxy redis" ]] \
    || { echo "unexpected services: $services" >&2; exit 1; }
echo "PASS docker-compose.yml (services: $services)"

echo "==> Dockerfile"
python3 - <<'PY'
import fnmatch, os, re, sys

ignored = [
    line.strip() for line in open(".dockerignore")
    if line.strip() and not line.startswith("#")
]
def excluded(path):
    parts = path.split("/")
    for pattern in ignored:
        bare = pattern.removeprefix("**/")
        if any(fnmatch.fnmatch(p, bare) for p in parts) or fnmatch.fnmatch(path, pattern):
            return True
    return False

text = re.sub(r"\\\n", " ", open("Dockerfile").read())
problems, checked = [], 0
for line in text.splitlines():
    words = line.split()
    if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
        continue
    sources = [w for w in words[1:-1] if not w.startswith("--")]
    for source in sources:
        checked += 1
        if source != "." and not os.path.exists(source):
            problems.append(f"COPY {source}: no such file in the build context")
        elif source != "." and excluded(source):
            problems.append(f"COPY {source}: excluded by .dockerignore")
for needed in ["HEALTHCHECK", "USER lambda", "EXPOSE 8080"]:
    if needed not in text:
        problems.append(f"the Dockerfile lacks {needed}")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"PASS Dockerfile ({checked} copied paths exist; non-root user, health check, port)")
PY

echo "==> deploy/caddy/Caddyfile ($(caddy version | cut -d' ' -f1))"
printf ':8080 {\n\treverse_proxy {\n\t\tdynamic aaaaa host 8080\n\t}\n}\n' >"$tmp/Caddyfile"
must_fail "a Caddyfile with an unknown upstream source" \
    caddy validate --config "$tmp/Caddyfile" --adapter caddyfile
caddy validate --config deploy/caddy/Caddyfile --adapter caddyfile >"$tmp/out" 2>&1 \
    || { cat "$tmp/out"; exit 1; }
echo "PASS deploy/caddy/Caddyfile"

echo "==> deploy/prometheus/prometheus.yml"
printf 'scrape_configs:\n  - job_name: x\n    scrape_intervall: 5s\n' >"$tmp/prometheus.yml"
must_fail "a Prometheus configuration with an unknown key" promtool check config "$tmp/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml >"$tmp/out" 2>&1 || { cat "$tmp/out"; exit 1; }
echo "PASS deploy/prometheus/prometheus.yml"

echo "==> deploy/grafana"
python3 deploy/check-dashboard.py --static-only

echo "==> deploy/kubernetes"
deploy/check-kubernetes.sh

echo "==> every deployment file is valid"
