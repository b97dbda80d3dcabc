#!/usr/bin/env bash
# Run CMD... with a real Kubernetes API server: builds kube-apiserver from Debian's source
# package once (scripts/kube-build.sh, cached under ~/.cache/kube-test), starts it with etcd on
# loopback (scripts/kube-up.sh; from empty etcd data when it starts it), exports KUBECONFIG and
# TINY_FORGE_TEST_KUBE=1, runs CMD, and stops the server again if (and only if) this call started
# it. Exits with CMD's status.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: scripts/with-kube.sh CMD [ARG...]" >&2
    exit 2
fi
SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HOME_DIR=${KUBE_TEST_HOME:-$HOME/.cache/kube-test}
STATE=$HOME_DIR/run

if [[ ! -x $HOME_DIR/bin/kube-apiserver ]]; then
    echo "with-kube: building kube-apiserver (once; about 4-6 minutes)" >&2
    "$SCRIPTS/kube-build.sh" >"${TMPDIR:-/tmp}/tiny-forge-kube-build.log" 2>&1 || {
        tail -40 "${TMPDIR:-/tmp}/tiny-forge-kube-build.log" >&2
        exit 1
    }
fi

started=0
running() { [[ -s $STATE/kube-apiserver.pid ]] && [[ -d /proc/$(cat "$STATE/kube-apiserver.pid") ]]; }
if ! running; then
    started=1
fi
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
    if ((started)); then
        "$SCRIPTS/kube-down.sh" "$STATE" >/dev/null 2>&1 || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A server this call starts begins from empty etcd data (KUBE_FRESH=1): objects a crashed or
# failed earlier run left behind (Stages in its namespaces) must not be deployed by the next
# controller started against this cluster. A server that was already running is reused as is.
if ((started)); then
    "$SCRIPTS/kube-down.sh" "$STATE" >/dev/null 2>&1 || true # a stray etcd of a dead run
    line=$(KUBE_FRESH=1 "$SCRIPTS/kube-up.sh" 2>"${TMPDIR:-/tmp}/tiny-forge-kube-up.log" | tail -n1) || {
        cat "${TMPDIR:-/tmp}/tiny-forge-kube-up.log" >&2
        exit 1
    }
else
    line=$("$SCRIPTS/kube-up.sh" 2>/dev/null | tail -n1)
fi
export "${line?}" TINY_FORGE_TEST_KUBE=1
echo "with-kube: $line" >&2

"$@" <&0 &
child=$!
trap 'kill -TERM "$child" 2>/dev/null; wait "$child"; exit 143' TERM
trap 'kill -INT "$child" 2>/dev/null; wait "$child"; exit 130' INT
status=0
wait "$child" || status=$?
exit "$status"
