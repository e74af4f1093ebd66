#!/usr/bin/env bash
# The main job on the embedded defaults: build a sandbox template from the default Debian
# image under QEMU, inspect the build, then copy it with everything it references.
# Needs root (network namespaces, NBD-served disks). Kernel and image are cached in
# /var/cache/ember, so only the first run downloads them.
set -euo pipefail
cd "$(dirname "$0")/.."
storage=${1:-.local-build}
copy="${storage%/}-copy"
py=.venv/bin/python
ember=.venv/bin/ember
build=$($py -c 'import uuid; print(uuid.uuid4())')

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
summary() { sed -n '1,11p;/^MAPPING (/p;/^MAPPING SUMMARY/,$p'; }

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: run as root (create-build needs network namespaces and devices)" >&2
    exit 1
fi
step $ember create-build -to-build "$build" -storage "$storage" -hugepages=false -memory 512 -disk 1024 \
    -start-cmd "python3 -m http.server 8000 --directory /root >/tmp/http.log 2>&1" \
    -ready-cmd "python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8000/\")'"
step $ember inspect-build -build "$build" -storage "$storage" | summary
step $ember inspect-build -build "$build" -storage "$storage" -rootfs | summary
step $ember copy-build -build "$build" -from "$storage" -to "$copy"
echo
echo "Build $build is in $storage/templates/$build (and copied to $copy)."
