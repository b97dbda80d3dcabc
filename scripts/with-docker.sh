#!/usr/bin/env bash
# Run CMD... with a reachable Docker engine: docker-up.sh, export DOCKER_HOST, run CMD, and stop
# the private engine again if (and only if) this call started it — also when CMD fails or is
# interrupted. Exits with CMD's status.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: scripts/with-docker.sh CMD [ARG...]" >&2
    exit 2
fi
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

flag=$(mktemp "${TMPDIR:-/tmp}/tiny-forge-docker-started.XXXXXX")
: >"$flag"
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    if [[ -s $flag ]]; then
        "$SCRIPTS/docker-down.sh" || true
    fi
    rm -f "$flag"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

host=$(TF_DOCKER_STARTED_FLAG=$flag "$SCRIPTS/docker-up.sh")
export "${host?}"
echo "with-docker: $host" >&2

# Run CMD in the background and wait, so a SIGTERM to this script is forwarded at once
# (bash defers traps while a foreground child runs). Keep CMD's stdin.
"$@" <&0 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
trap 'kill -INT "$child" 2>/dev/null; wait "$child"; exit 130' INT
status=0
wait "$child" || status=$?
exit "$status"
