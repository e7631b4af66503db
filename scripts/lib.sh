# shellcheck shell=bash
# Shell helpers shared by the scripts of this repository, in one place.
#
# Sourced, never executed: it defines functions only, and sets no shell
# options (each script keeps its own `set -euo pipefail`). A script in
# scripts/ sources it, before any `cd`, with
#     source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# and one in another directory with the path from there, e.g. deploy/:
#     source "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"
#
#   free_port                     print a free TCP port on 127.0.0.1
#   free_ports N                  print N distinct free ports, space-separated
#   port_is_free PORT             succeed if PORT can be bound on 127.0.0.1
#   wait_for_http URL SECONDS [PID]
#                                 wait until URL answers 2xx; fail after
#                                 SECONDS, or as soon as process PID exits
#   wait_for_interpreters BASE SECONDS
#                                 wait until the host at BASE has its
#                                 interpreters (tier 0) ready
#   stop_processes PID...         SIGTERM to each, wait up to STOP_SECONDS (30)
#                                 for their exit, then SIGKILL; returns once
#                                 all are gone
#   is_root                       succeed if running as root
#   as_postgres COMMAND...        run COMMAND as the postgres user when root
#   give_to_postgres PATH...      chown PATHs to postgres when root
#   postgres_bin_dir              print Debian's newest PostgreSQL bin directory
#   apt_install PACKAGE...        apt-get install PACKAGEs (none: do nothing)
#   install_missing COMMAND=PACKAGE...
#                                 install PACKAGE for each COMMAND not on PATH
#   ensure_venv VENV REQUIREMENTS
#                                 a Python venv with REQUIREMENTS, rebuilt only
#                                 when REQUIREMENTS changed

# --- ports ------------------------------------------------------------------

# The kernel picks the ports (bind to port 0). They are free when printed and
# released at once: a caller binds them soon after, a race the scripts accept.
free_ports() { # N
    python3 -c '
import socket, sys
# All bound at once, so that the N ports differ.
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
' "$1"
}

free_port() {
    free_ports 1
}

port_is_free() { # PORT
    python3 -c 'import socket, sys; s = socket.socket(); s.bind(("127.0.0.1", int(sys.argv[1])))' "$1" 2>/dev/null
}

# Polls URL every half second. With PID, gives up as soon as that process
# (the server being waited for) has exited, instead of waiting out SECONDS.
wait_for_http() { # URL SECONDS [PID]
    local url=$1 tries=$(($2 * 2)) pid=${3:-} try
    for ((try = 0; try < tries; try++)); do
        curl -fs -o /dev/null "$url" 2>/dev/null && return 0
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        sleep 0.5
    done
    return 1
}

# Polls a host's /health until its interpreters (tier 0) are ready: until
# then a new JavaScript or Python function waits for its build.
wait_for_interpreters() { # BASE_URL SECONDS
    local url=$1/health tries=$(($2 * 2)) try
    for ((try = 0; try < tries; try++)); do
        curl -fs "$url" 2>/dev/null | python3 -c '
import json, sys
states = json.load(sys.stdin)["components"]["interpreters"].values()
sys.exit(0 if all(s in ("ready", "off") for s in states) else 1)' && return 0
        sleep 0.5
    done
    return 1
}

# --- processes ----------------------------------------------------------------

# A server's directory may be removed only once the server is gone: a host
# that got SIGTERM still finishes its requests, writes its queued logs and
# may be writing a compiled artifact, and `rm -rf` beside it fails with
# "Directory not empty" when a file appears mid-removal. A zombie (an exited
# child of this shell not yet reaped) counts as gone.
stop_processes() { # PID...
    local seconds=${STOP_SECONDS:-30} pid running=() try
    # All signalled first, then waited for together: one deadline, not one
    # per process.
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null && running+=("$pid")
    done
    for ((try = 0; try < seconds * 10 && ${#running[@]} > 0; try++)); do
        sleep 0.1
        mapfile -t running < <(still_running "${running[@]}")
    done
    for pid in "${running[@]}"; do
        echo "process $pid did not stop within $seconds s of SIGTERM: killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
    done
    while [[ -n $(still_running "${running[@]}") ]]; do sleep 0.1; done
}

# Prints those of the PIDs still running.
still_running() { # PID...
    local pid
    for pid in "$@"; do
        if process_is_running "$pid"; then echo "$pid"; fi
    done
}

process_is_running() { # PID
    local state
    # The third field of /proc/PID/stat; the second, the command in
    # parentheses, holds no spaces for the programs stopped here.
    state=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $state && $state != Z && $state != X ]]
}

# --- PostgreSQL ---------------------------------------------------------------

is_root() {
    [[ $(id -u) == 0 ]]
}

# PostgreSQL refuses to run as root (initdb and postgres exit with an error),
# so as root its programs run as the postgres user, which Debian's package
# creates; as anyone else, as that user.
as_postgres() { # COMMAND...
    if is_root; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The directories a server started with as_postgres writes to must then be
# the postgres user's.
give_to_postgres() { # PATH...
    if is_root; then chown postgres "$@"; fi
}

# Debian installs initdb, pg_ctl and postgres off PATH, in
# /usr/lib/postgresql/VERSION/bin. Fails when no version is installed.
postgres_bin_dir() {
    local bin
    # shellcheck disable=SC2012 # the paths are Debian's, without odd characters
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [[ -n $bin && -x $bin/initdb ]] && echo "$bin"
}

# --- packages -----------------------------------------------------------------

# Debian's packages start no services here (no init system): the scripts
# start servers of their own. Needs root, as apt-get does.
apt_install() { # PACKAGE...
    if (($# == 0)); then
        return 0
    fi
    echo "installing $*" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2
}

install_missing() { # COMMAND=PACKAGE...
    local pair packages=()
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null || packages+=("${pair#*=}")
    done
    apt_install "${packages[@]}"
}

# --- Python tools -------------------------------------------------------------

# Pinned Python tools without a pip run on every use: the venv is built from
# scratch when REQUIREMENTS's sha256 differs from the one recorded in
# VENV/.requirements-sha256 by the last build (or when there is none).
ensure_venv() { # VENV REQUIREMENTS
    local venv=$1 requirements=$2 stamp=$1/.requirements-sha256 want
    want=$(sha256sum "$requirements" | cut -d' ' -f1)
    if [[ -f $stamp && $(cat "$stamp") == "$want" ]]; then
        return 0
    fi
    echo "==> installing $requirements into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$want" >"$stamp"
}
