#!/usr/bin/env bash
# Installs, with apt-get, the Debian package of every command that is not on
# PATH: scripts/install-missing.sh COMMAND=PACKAGE...
# The command-line form of install_missing in scripts/lib.sh, which scripts
# that source lib.sh call directly.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
install_missing "$@"
