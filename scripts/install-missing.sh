#!/usr/bin/env bash
# Installs, with apt-get, the Debian package of every command that is not on
# PATH: scripts/install-missing.sh COMMAND=PACKAGE...
# (Debian's packages start no services here: our scripts start their own.)
set -euo pipefail

packages=()
for pair in "$@"; do
    command -v "${pair%%=*}" >/dev/null || packages+=("${pair#*=}")
done
if ((${#packages[@]})); then
    echo "installing ${packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
fi
