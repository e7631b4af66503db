# Sourced by scripts/run and scripts/test: makes sure `just` is on PATH,
# installing the pinned release from PyPI (a prebuilt binary, seconds) or,
# failing that, from crates.io (a build, a minute or two).
JUST_VERSION=1.59.0

if ! command -v just >/dev/null 2>&1 || ! just --version | grep -q "$JUST_VERSION"; then
    echo "installing just $JUST_VERSION" >&2
    if python3 -m pip install --quiet --disable-pip-version-check "rust-just==$JUST_VERSION" >&2; then
        PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
    else
        cargo install just --locked --version "$JUST_VERSION" >&2
        PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    fi
    export PATH
fi
