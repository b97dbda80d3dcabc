#!/usr/bin/env bash
# Build the port holder statically and bake its image locally (nothing is pulled):
#   tiny-forge-holder:<version of holder/Cargo.toml>
# FROM scratch with the static binary and the label tinyforge.dev/holder-build=<sha256 of the
# binary>; an image whose label already matches is not rebuilt. The holder is its own small
# crate (hyper + tokio, no TLS, no Docker client), so this build takes seconds, not the
# controller's minutes. Uses DOCKER_HOST from the environment (see docker-up.sh), and
# CARGO_TARGET_DIR if set. HOLDER_IMAGE names another image (a test's, say).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf 'holder-image: %s\n' "$*" >&2; }

# The host's own target (aarch64 as well as x86_64), spelled out so that RUSTFLAGS below reach
# only this build. A FROM scratch image runs on Linux only, and the binary must match the
# Docker engine's architecture: building on the Docker host is what makes both true.
TARGET=$(rustc -vV | sed -n 's/^host: //p')
case $TARGET in
*-linux-gnu* | *-linux-musl*) ;;
*)
    log "error: host target $TARGET is not Linux; build on the Docker host (or cross-compile for it)"
    exit 1
    ;;
esac
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$TARGET/release/tiny-forge-holder"
LABEL=tinyforge.dev/holder-build
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT/holder/Cargo.toml" | head -1)
IMAGE=${HOLDER_IMAGE:-tiny-forge-holder:$VERSION}

if ! timeout 15 docker info >/dev/null 2>&1; then
    log "no Docker engine at DOCKER_HOST=${DOCKER_HOST:-<unset>}; run: export \"\$(scripts/docker-up.sh)\""
    exit 1
fi

log "building static tiny-forge-holder ($TARGET)"
(
    cd "$ROOT"
    # With an explicit --target, RUSTFLAGS only apply to target/$TARGET: the host build is kept.
    RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --quiet -p tiny-forge-holder --target "$TARGET"
)
if ldd "$BIN" >/dev/null 2>&1 && ! ldd "$BIN" 2>&1 | grep -q 'statically linked'; then
    log "error: $BIN is dynamically linked; it cannot run in a FROM scratch image"
    ldd "$BIN" >&2 || true
    exit 1
fi
HASH=$(sha256sum "$BIN" | cut -d' ' -f1)
current=$(docker image inspect -f "{{ index .Config.Labels \"$LABEL\" }}" "$IMAGE" 2>/dev/null || true)
if [[ $current == "$HASH" ]]; then
    log "$IMAGE is up to date"
    exit 0
fi

CTX=$(mktemp -d "${TMPDIR:-/tmp}/tiny-forge-holder-image.XXXXXX")
trap 'rm -rf "$CTX"' EXIT
cp "$BIN" "$CTX/tiny-forge-holder"
chmod 0755 "$CTX/tiny-forge-holder"
log "baking $IMAGE"
{
    echo 'FROM scratch'
    echo 'COPY tiny-forge-holder /tiny-forge-holder'
    echo 'ENTRYPOINT ["/tiny-forge-holder"]'
    echo "LABEL $LABEL=$HASH"
} >"$CTX/Dockerfile"
if ! DOCKER_BUILDKIT=0 docker build --quiet -t "$IMAGE" "$CTX" >&2; then
    log "legacy 'docker build' failed; falling back to 'docker import'"
    tar -C "$CTX" --owner=0 --group=0 -cf - tiny-forge-holder |
        docker import -c 'ENTRYPOINT ["/tiny-forge-holder"]' -c "LABEL $LABEL=$HASH" - "$IMAGE" >&2
fi
docker image prune -f --filter "label=$LABEL" >/dev/null 2>&1 || true
docker image ls tiny-forge-holder >&2
