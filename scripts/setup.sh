#!/usr/bin/env bash
# Installs everything ember needs on a Debian 12 machine (as root) and creates .venv.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages ember uses, each checked by a file it installs:
#   python3-venv  the venv module            e2fsprogs  mkfs.ext4, e2fsck
#   libnbd-bin    nbdinfo, nbdcopy (tests)   nbdfuse    NBD export as a FUSE file (no kernel NBD here)
#   fuse3         fusermount3                qemu-utils qemu-img, qemu-io (tests)
#   qemu-system-x86  the VMM for Linux guests  busybox-static, cpio, kmod  guest initramfs assembly
#   debootstrap   the default template's Debian root filesystem
#   iptables      iptables-restore/-save: sandbox network slots' NAT and forwarding rules
#   procps, util-linux, iproute2  sysctl, nsenter/setpriv, ip: slots and VMM launches
#   gcc, python3-dev  compile the C extensions (src/ember/*/_*.c: fault loop, mapped reads, diff packing)
#   libpq5       the PostgreSQL client library psycopg loads (ember api -db postgresql://...)
#   postgresql   initdb, pg_ctl, postgres: the API store tests start a throwaway server
#   skopeo, umoci  template builds from OCI images: pull (registry, OCI layout, docker-archive), unpack
#   docker-registry  a local registry the template tests push an image to
apt_packages=()
python3 -c 'import venv, ensurepip' 2>/dev/null || apt_packages+=(python3-venv)
need() { command -v "$1" >/dev/null || [[ -e $1 ]] || apt_packages+=("$2"); }
need mkfs.ext4 e2fsprogs
need nbdinfo libnbd-bin
need nbdfuse nbdfuse
need fusermount3 fuse3
need qemu-img qemu-utils
need qemu-system-x86_64 qemu-system-x86
need /bin/busybox busybox-static
need cpio cpio
need depmod kmod
need /usr/sbin/debootstrap debootstrap
need iptables-restore iptables
need /usr/sbin/sysctl procps
need /usr/bin/nsenter util-linux
need /usr/sbin/ip iproute2
need gcc gcc
need /usr/share/doc/libpq5 libpq5
need /usr/lib/postgresql postgresql
need skopeo skopeo
need umoci umoci
need docker-registry docker-registry
python3 -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_path("include") + "/Python.h"))' \
    || apt_packages+=(python3-dev)
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
stale=0  # the editable install compiles each C extension next to its source
for source in src/ember/*/_*.c; do
    { [[ $source -nt $stamp ]] || ! compgen -G "${source%.c}.*.so" >/dev/null; } && stale=1
done
if [[ ! -f $stamp || pyproject.toml -nt $stamp || $stale == 1 ]]; then
    echo "setup: creating .venv and installing ember with its test dependencies"
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[test]'
    touch "$stamp"
fi

# E2B's JS SDK for tests/e2e/test_js_sdk.py, exactly as tests/e2e/js/package-lock.json pins it
# (npm ci; again only when the lock file is newer than the install). node and npm come from the
# machine; the JS test skips only when node is missing.
js=tests/e2e/js
if command -v npm >/dev/null; then
    installed=$js/node_modules/.package-lock.json  # npm ci writes it last
    if [[ ! -f $installed || $js/package-lock.json -nt $installed ]]; then
        echo "setup: installing E2B's JS SDK for the e2e tests ($js)"
        (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
    fi
else
    echo "setup: npm is not installed: tests/e2e/test_js_sdk.py cannot run (apt-get install nodejs npm)" >&2
fi
