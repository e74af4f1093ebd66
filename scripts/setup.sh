#!/usr/bin/env bash
# Installs everything ember needs on a Debian 12 machine (as root) and creates .venv.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages ember uses: the venv module for Python, and e2fsprogs for the ext4 tools.
apt_packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_packages+=(python3-venv)
command -v mkfs.ext4 >/dev/null || apt_packages+=(e2fsprogs)
if ((${#apt_packages[@]})); then
    if [[ $(id -u) -ne 0 ]]; then
        echo "setup: missing Debian packages: ${apt_packages[*]}; run as root or apt-get install them" >&2
        exit 1
    fi
    echo "setup: installing Debian packages: ${apt_packages[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${apt_packages[@]}"
fi

stamp=.venv/.installed
if [[ ! -f $stamp || pyproject.toml -nt $stamp ]]; then
    echo "setup: creating .venv and installing ember with its test dependencies"
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi
