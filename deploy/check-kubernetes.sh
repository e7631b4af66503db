#!/usr/bin/env bash
# Validates the manifests in deploy/kubernetes/ against the JSON schemas of a
# pinned Kubernetes version, offline, with kubernetes-validate in strict mode
# (unknown fields are errors), and checks kustomization.yaml's resource list.
#
# Usage: deploy/check-kubernetes.sh        (from anywhere; no cluster needed)
# Env:   K8S_VERSION  Kubernetes version to validate against (default 1.31.0)
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")
manifests=$deploy/kubernetes
venv=$deploy/.venv
k8s_version=${K8S_VERSION:-1.31.0}
# shellcheck source=scripts/lib.sh
source "$repo/scripts/lib.sh"

# --- tools: deploy/.venv, rebuilt only when requirements.txt changed --------
ensure_venv "$venv" "$deploy/requirements.txt"
validator=$venv/bin/kubernetes-validate
python=$venv/bin/python

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check_file FILE: prints one line, returns non-zero unless every document of
# FILE validated. kubernetes-validate exits 0 with only a warning for a kind
# or apiVersion it has no schema for (a typo, or an API removed in this
# version), and prints nothing for an empty file: so a file counts as valid
# only when the tool says "passed" and says nothing else.
check_file() {
    local file=$1 shown=${1#"$repo"/} out rc=0
    out=$("$validator" --strict --kubernetes-version "$k8s_version" "$file" 2>&1) || rc=$?
    if [[ $rc -eq 0 ]] && grep -q ' passed for resource ' <<<"$out" \
        && ! grep -qv ' passed for resource ' <<<"$out"; then
        local resources
        resources=$(sed -n 's/.* passed for resource \([^ ]*\) .*/\1/p' <<<"$out" | paste -sd, -)
        echo "PASS $shown ($resources)"
        return 0
    fi
    echo "FAIL $shown"
    sed 's/^/     /' <<<"${out:-(no output: no Kubernetes object in the file)}"
    return 1
}

echo "==> kubernetes-validate $("$validator" --version 2>&1 | tail -n1), Kubernetes $k8s_version, strict"

# --- guard: the check must reject broken manifests ---------------------------
# If any of these passes, the validator (or check_file) accepts too much and
# the results below would mean nothing.
guards=0
guard() {
    local name=$1 file
    guards=$((guards + 1))
    file=$tmp/guard-$guards.yaml
    cat > "$file"
    if check_file "$file" > "$tmp/guard.out"; then
        echo "ERROR: guard manifest '$name' PASSED validation; the validator is not checking anything:" >&2
        cat "$tmp/guard.out" >&2
        exit 1
    fi
    echo "guard: rejected as it must be: $name"
}

guard "unknown field spec.replica" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken, namespace: lambda}
spec:
  replica: 2
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers: [{name: c, image: "example.invalid/c:1"}]
YAML

guard "containerPort \"eighty\"" <<'YAML'
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken, namespace: lambda}
spec:
  replicas: 2
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec:
      containers:
        - name: c
          image: "example.invalid/c:1"
          ports: [{containerPort: "eighty"}]
YAML

guard "API removed from Kubernetes (autoscaling/v2beta2)" <<'YAML'
apiVersion: autoscaling/v2beta2
kind: HorizontalPodAutoscaler
metadata: {name: broken, namespace: lambda}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: broken}
  minReplicas: 1
  maxReplicas: 2
YAML

# --- the manifests -------------------------------------------------------------
failed=0
count=0
shopt -s nullglob
files=("$manifests"/*.yaml)
[[ ${#files[@]} -gt 0 ]] || { echo "ERROR: no manifests in $manifests" >&2; exit 1; }
for file in "${files[@]}"; do
    [[ $(basename "$file") == kustomization.yaml ]] && continue
    count=$((count + 1))
    check_file "$file" || failed=$((failed + 1))
done

# kustomization.yaml is not an API object: check instead that it lists every
# existing manifest but the Secret template, and nothing else, and that every
# object is in namespace lambda.
"$python" - "$manifests" <<'PY' || failed=$((failed + 1))
import pathlib
import sys

import yaml

root = pathlib.Path(sys.argv[1])
errors = []
kust = yaml.safe_load((root / "kustomization.yaml").read_text()) or {}
if kust.get("kind") != "Kustomization":
    errors.append("kind is not Kustomization")
if kust.get("namespace") != "lambda":
    errors.append("namespace is not lambda")
listed = kust.get("resources") or []
for name in listed:
    if not (root / name).is_file():
        errors.append(f"lists {name}, which does not exist")
if len(set(listed)) != len(listed):
    errors.append("lists a resource twice")
if "secret.example.yaml" in listed:
    errors.append("lists secret.example.yaml (a template, never to be applied)")
expected = {p.name for p in root.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
for name in sorted(expected - set(listed)):
    errors.append(f"does not list {name}")

for path in sorted(root.glob("*.yaml")):
    if path.name == "kustomization.yaml":
        continue
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        meta = doc.get("metadata") or {}
        where = meta.get("name") if doc.get("kind") == "Namespace" else meta.get("namespace")
        if where != "lambda":
            errors.append(f"{path.name}: {doc.get('kind')}/{meta.get('name')} is not in namespace lambda")

if errors:
    print("FAIL deploy/kubernetes/kustomization.yaml")
    for error in errors:
        print(f"     {error}")
    sys.exit(1)
print(f"PASS deploy/kubernetes/kustomization.yaml ({len(listed)} resources, all present,"
      " every manifest but secret.example.yaml listed, all in namespace lambda)")
PY
count=$((count + 1))

if [[ $failed -ne 0 ]]; then
    echo "==> $failed of $count files FAILED"
    exit 1
fi
echo "==> all $count files valid"
