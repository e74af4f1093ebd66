#!/usr/bin/env bash
# The main job: a self-hosted E2B on this machine (ember serve), driven by E2B's own Python SDK
# (scripts/demo_sdk.py): create a sandbox, run a command, write and read a file, pause it,
# resume it with connect, find the file, kill it. Needs root (sandboxes use network namespaces
# and FUSE). The first run builds the base template (a few minutes; kept in the storage dir).
set -euo pipefail
cd "$(dirname "$0")/.."
storage=${1:-.local-build}
if [[ $(id -u) -ne 0 ]]; then
    echo "demo: run as root (sandboxes need network namespaces and devices)" >&2
    exit 1
fi
env_file=$(mktemp)
.venv/bin/ember serve -storage "$storage" > "$env_file" &
serve=$!
trap 'kill -TERM $serve 2>/dev/null; wait $serve; rm -f "$env_file"' EXIT
echo "Starting ember serve (storage: $storage); its progress follows on stderr" >&2
until [[ $(wc -l < "$env_file") -ge 4 ]]; do
    kill -0 $serve 2>/dev/null || { echo "demo: ember serve exited" >&2; exit 1; }
    sleep 1
done
printf '\n\033[1m$ ember serve prints:\033[0m\n'
cat "$env_file"
set -a; . "$env_file"; set +a
printf '\n\033[1m$ python scripts/demo_sdk.py\033[0m\n'
.venv/bin/python scripts/demo_sdk.py
