#!/usr/bin/env bash
# The Kubernetes controller benchmark (benches/k8s.rs), all of the shipped binary: memory idle and
# with N Stages, a full resync of N unchanged Stages (timed from its /metrics) and the Docker calls
# it makes. Results go to docs/BENCHMARKS.md between <!-- k8s:start --> and <!-- k8s:end -->.
#
# Reuses a running kube-apiserver (scripts/kube-up.sh's pid file) or starts one, and reuses a
# reachable Docker engine or starts the private one (scripts/with-docker.sh); stops only what
# this call started. Extra arguments go to `cargo bench --bench k8s`.
# Env: BENCH_STAGES (default 100,1000), BENCH_RUNNING (20), BENCH_WRITE_DOC=0, BENCH_KEEP_LOGS=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
CARGO=${CARGO:-cargo}
STATE="${KUBE_TEST_HOME:-$HOME/.cache/kube-test}/run"

kube_alive() {
    [[ -s $STATE/kube-apiserver.pid ]] && kill -0 "$(<"$STATE/kube-apiserver.pid")" 2>/dev/null
}

started_kube=0
if [[ -z ${KUBECONFIG:-} ]]; then
    if ! kube_alive; then
        if [[ ! -x ${KUBE_TEST_HOME:-$HOME/.cache/kube-test}/bin/kube-apiserver ]]; then
            echo "bench-k8s: building kube-apiserver first (scripts/kube-build.sh, several minutes)" >&2
            scripts/kube-build.sh >&2
        fi
        started_kube=1
    fi
    # Prints KUBECONFIG=... last; reuses a running server.
    kc=$(scripts/kube-up.sh | tail -n 1)
    export "${kc?}"
fi
cleanup() {
    if ((started_kube)); then scripts/kube-down.sh || true; fi
}
trap cleanup EXIT

scripts/with-docker.sh bash -c "scripts/demo-images.sh && $CARGO bench --bench k8s $*"
