#!/usr/bin/env bash
# The build-format tools on a synthetic three-layer chain (no VM, no root): inspect, diff, copy.
set -euo pipefail
cd "$(dirname "$0")/.."
storage=${1:-.local-build}
copy="${storage%/}-copy"
py=.venv/bin/python
ember=.venv/bin/ember
read -r b1 b2 b3 < <($py -c 'import uuid; print(*(uuid.uuid4() for _ in range(3)))')

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "Writing a sample chain of three builds to $storage: $b1 <- $b2 <- $b3"
$py scripts/make_sample_chain.py "$storage" "$b1" "$b2" "$b3"
step $ember inspect-build -build "$b3" -storage "$storage"
step $ember inspect-build -build "$b3" -storage "$storage" -rootfs -data -end 8
step $ember show-build-diff -from-build "$b2" -to-build "$b3" -storage "$storage" -visualize
step $ember copy-build -build "$b3" -from "$storage" -to "$copy"
step $ember copy-build -build "$b3" -from "$storage" -to "$copy"
step $ember inspect-build -build "$b3" -storage "$copy" -json
