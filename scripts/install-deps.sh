#!/usr/bin/env bash
# Install the Debian packages a target needs, only those missing; diagnostics on stderr.
#
#   scripts/install-deps.sh test      what `make test` needs (see TEST below)
#   scripts/install-deps.sh PKG...    these packages
#
# Package scripts are kept from starting system services (a system dockerd, nginx, etcd): the
# tests start their own, by pid file. `apt-get update` runs at most once per process tree
# (TF_APT_UPDATED=1 once done). Needs root (or sudo) only when something is missing.
set -euo pipefail

# docker.io: the engine the tests deploy to. docker-registry + skopeo: a real registry and a way
# to push into it (tests/registry_e2e.rs). nginx: the data plane behind the NPM test double.
# etcd-server, golang-go, dpkg-dev, openssl: the real kube-apiserver, built from Debian's source
# package (scripts/kube-build.sh). python3-venv: Helm's engine for the chart checks
# (scripts/render-chart.sh). curl, iproute2 (ss): the scripts' own probes. git: builds fetch
# with it, and tests/build.rs serves its repositories with `git daemon`.
TEST=(docker.io docker-registry skopeo nginx etcd-server golang-go dpkg-dev openssl python3-venv
    ca-certificates curl iproute2 git)

log() { printf 'install-deps: %s\n' "$*" >&2; }

if [[ $# -eq 0 ]]; then
    echo "usage: scripts/install-deps.sh test | PKG..." >&2
    exit 2
fi
if [[ $1 == test ]]; then
    set -- "${TEST[@]}"
fi

missing=()
for pkg in "$@"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
((${#missing[@]})) || exit 0

SUDO=()
if ((EUID != 0)); then
    command -v sudo >/dev/null 2>&1 || {
        log "missing ${missing[*]}; run as root (or install sudo) to install them"
        exit 1
    }
    SUDO=(sudo)
fi

log "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
created_policy=0
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d
    created_policy=1
fi
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() { if ((created_policy)); then "${SUDO[@]}" rm -f /usr/sbin/policy-rc.d; fi; }
trap cleanup EXIT

if [[ ${TF_APT_UPDATED:-} != 1 ]]; then
    "${SUDO[@]}" apt-get update -qq >&2
fi
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
