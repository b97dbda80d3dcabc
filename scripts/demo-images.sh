#!/usr/bin/env bash
# Build the demo app statically and bake the local demo images (nothing can be pulled):
#   tiny-forge-demo:1.0.0, tiny-forge-demo:1.1.0, tiny-forge-demo:1.2.0-broken (DEMO_BROKEN=1)
# Each is FROM scratch with the static binary, a HEALTHCHECK running `tiny-forge-demo check`,
# and the label tinyforge.dev/demo-build=<sha256 of the binary>; an image whose label already
# matches the binary is not rebuilt. Uses DOCKER_HOST from the environment (see docker-up.sh).
#
# TF_DEMO_IMAGES_IMPORT=1 forces the `docker import` path (used when the CLI refuses legacy builds).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET=x86_64-unknown-linux-gnu
BIN="$ROOT/target/$TARGET/release/tiny-forge-demo"
LABEL=tinyforge.dev/demo-build
REPO=tiny-forge-demo
# tag  DEMO_VERSION  DEMO_BROKEN
IMAGES=(
    "1.0.0 1.0.0 0"
    "1.1.0 1.1.0 0"
    "1.2.0-broken 1.2.0 1"
)

log() { printf 'demo-images: %s\n' "$*" >&2; }

if ! timeout 15 docker info >/dev/null 2>&1; then
    log "no Docker engine at DOCKER_HOST=${DOCKER_HOST:-<unset>}; run: export \"\$(scripts/docker-up.sh)\""
    exit 1
fi

log "building static tiny-forge-demo ($TARGET)"
(
    cd "$ROOT"
    # RUSTFLAGS with an explicit --target only applies to target/$TARGET, so the host build
    # (target/release, target/debug) is not invalidated.
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --quiet -p tiny-forge-demo --target "$TARGET"
)
if ldd "$BIN" >/dev/null 2>&1 && ! ldd "$BIN" 2>&1 | grep -q 'statically linked'; then
    log "error: $BIN is dynamically linked; it cannot run in a FROM scratch image"
    ldd "$BIN" >&2 || true
    exit 1
fi
HASH=$(sha256sum "$BIN" | cut -d' ' -f1)
log "binary sha256 $HASH"

CTX=$(mktemp -d "${TMPDIR:-/tmp}/tiny-forge-demo-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
cp "$BIN" "$CTX/tiny-forge-demo"
chmod 0755 "$CTX/tiny-forge-demo"

healthcheck='HEALTHCHECK --interval=2s --timeout=2s --retries=3 CMD ["/tiny-forge-demo","check"]'

build_with_dockerfile() { # tag version broken
    local tag=$1 version=$2 broken=$3
    local env="DEMO_VERSION=$version PORT=8080"
    if [[ $broken == 1 ]]; then env+=" DEMO_BROKEN=1"; fi
    # Shared instructions first, so the legacy builder's cache reuses them across the three tags.
    {
        echo 'FROM scratch'
        echo 'COPY tiny-forge-demo /tiny-forge-demo'
        echo 'EXPOSE 8080'
        echo "$healthcheck"
        echo 'ENTRYPOINT ["/tiny-forge-demo"]'
        echo "LABEL $LABEL=$HASH"
        echo "ENV $env"
    } >"$CTX/Dockerfile"
    # The legacy builder needs no BuildKit/buildx and works offline against any daemon;
    # the CLI prints a deprecation notice for it.
    DOCKER_BUILDKIT=0 docker build --quiet -t "$REPO:$tag" "$CTX" >&2
}

build_with_import() { # tag version broken
    local tag=$1 version=$2 broken=$3
    local -a changes=(
        -c "ENV DEMO_VERSION=$version"
        -c 'ENV PORT=8080'
        -c 'EXPOSE 8080'
        -c "$healthcheck"
        -c "LABEL $LABEL=$HASH"
        -c 'ENTRYPOINT ["/tiny-forge-demo"]'
    )
    if [[ $broken == 1 ]]; then changes+=(-c 'ENV DEMO_BROKEN=1'); fi
    tar -C "$CTX" --owner=0 --group=0 -cf - tiny-forge-demo |
        docker import "${changes[@]}" - "$REPO:$tag" >&2
}

use_import=${TF_DEMO_IMAGES_IMPORT:-0}
for spec in "${IMAGES[@]}"; do
    read -r tag version broken <<<"$spec"
    current=$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$REPO:$tag" 2>/dev/null || true)
    if [[ $current == "$HASH" ]]; then
        log "$REPO:$tag is up to date"
        continue
    fi
    if [[ $broken == 1 ]]; then extra=', DEMO_BROKEN=1'; else extra=; fi
    log "baking $REPO:$tag (DEMO_VERSION=$version$extra)"
    if [[ $use_import != 1 ]]; then
        if ! build_with_dockerfile "$tag" "$version" "$broken"; then
            log "legacy 'docker build' failed; falling back to 'docker import'"
            use_import=1
        fi
    fi
    if [[ $use_import == 1 ]]; then
        build_with_import "$tag" "$version" "$broken"
    fi
done
rm -f "$CTX/Dockerfile"

# Drop superseded demo images left dangling by a rebuild.
docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
docker image ls "$REPO" >&2
