#!/usr/bin/env bash
# The main job for now: write a sample build chain, then inspect, diff and copy it with the
# seed's tools. Later issues replace the sample chain with a real VM build and resume.
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
