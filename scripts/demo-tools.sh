#!/usr/bin/env bash
# The seed tools on the embedded defaults: build a sandbox template from the default Debian
# image under QEMU, resume it, run a command in it, pause it into a diff build, resume that,
# and inspect the chain. Needs root (network namespaces, NBD and FUSE served devices).
# Kernel, image and agent are cached in /var/cache/ember: only the first run downloads them.
set -euo pipefail
cd "$(dirname "$0")/.."
storage=${1:-.local-build}
py=.venv/bin/python
ember=.venv/bin/ember
read -r build paused < <($py -c 'import uuid; print(uuid.uuid4(), uuid.uuid4())')

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
summary() { sed -n '1,11p;/^MAPPING (/p;/^MAPPING SUMMARY/,$p'; }

if [[ $(id -u) -ne 0 ]]; then
    echo "demo: run as root (sandboxes need network namespaces and devices)" >&2
    exit 1
fi
step $ember create-build -to-build "$build" -storage "$storage" -hugepages=false -memory 512 -disk 1024 \
    -start-cmd "python3 -m http.server 8000 --directory /root >/tmp/http.log 2>&1" \
    -ready-cmd "python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8000/\")'"
step $ember resume-build -from-build "$build" -storage "$storage" -iterations 3
step $ember resume-build -from-build "$build" -to-build "$paused" -storage "$storage" \
    -cmd-pause "echo 'written before the pause' > /root/note.txt && uname -a"
step $ember resume-build -from-build "$paused" -storage "$storage" \
    -cmd "cat /root/note.txt; python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:8000/note.txt\").read())'"
step $ember inspect-build -build "$paused" -storage "$storage" | summary
step $ember inspect-build -build "$paused" -storage "$storage" -rootfs | summary
echo
echo "Builds: $build (template) <- $paused (paused diff), in $storage/templates/"
