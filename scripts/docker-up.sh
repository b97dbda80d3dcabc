#!/usr/bin/env bash
# Ensure a Docker engine is reachable and print ONLY `DOCKER_HOST=...` on stdout
# (all diagnostics go to stderr), so callers can do: export "$(scripts/docker-up.sh)".
#
# 1. `docker info` works with the current environment → print that DOCKER_HOST
#    (unix:///var/run/docker.sock when DOCKER_HOST is unset).
# 2. Our private engine is already running (pid file alive, socket answers) → print its DOCKER_HOST.
# 3. Otherwise install docker.io if needed and start a private dockerd under
#    DIR=${TF_DOCKER_DIR:-/tmp/tiny-forge-docker} (vfs storage, no iptables), wait for it,
#    write $DIR/started-by-us and print its DOCKER_HOST.
#
# If TF_DOCKER_STARTED_FLAG names a file, it is written when (and only when) this call
# started the private engine (used by scripts/with-docker.sh to stop it afterwards).
set -euo pipefail

DIR=${TF_DOCKER_DIR:-/tmp/tiny-forge-docker}
SOCK="$DIR/docker.sock"
PRIVATE_HOST="unix://$SOCK"
PIDFILE="$DIR/dockerd.pid"
LOG="$DIR/dockerd.log"
WAIT_SECS=${TF_DOCKER_WAIT_SECS:-60}

log() { printf 'docker-up: %s\n' "$*" >&2; }

# `docker info` with a bound, so a hung daemon cannot hang us.
docker_ok() {
    command -v docker >/dev/null 2>&1 || return 1
    timeout 15 docker "$@" info >/dev/null 2>&1
}

pid_alive() {
    local pid
    [[ -s $PIDFILE ]] || return 1
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null
}

# 1. Whatever the environment already points at.
if docker_ok; then
    echo "DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"
    exit 0
fi
if [[ -n ${DOCKER_HOST:-} && $DOCKER_HOST != "$PRIVATE_HOST" ]]; then
    log "DOCKER_HOST=$DOCKER_HOST does not answer; falling back to the private engine"
fi

if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    "$(dirname "${BASH_SOURCE[0]}")/install-deps.sh" docker.io
fi

mkdir -p "$DIR"
# Serialise concurrent callers (e.g. parallel make targets). fd 9 must not leak into dockerd.
exec 9>"$DIR/up.lock"
flock -w 120 9 || { log "timed out waiting for $DIR/up.lock"; exit 1; }

# 2. Our private engine, already running (or still starting up under another caller).
if pid_alive; then
    for _ in $(seq "$WAIT_SECS"); do
        if docker_ok -H "$PRIVATE_HOST"; then
            log "private engine already running (pid $(<"$PIDFILE"))"
            echo "DOCKER_HOST=$PRIVATE_HOST"
            exit 0
        fi
        pid_alive || break
        sleep 1
    done
    if pid_alive; then
        log "dockerd pid $(<"$PIDFILE") is alive but $SOCK does not answer; see $LOG"
        tail -n 30 "$LOG" >&2 || true
        exit 1
    fi
fi

# 3. Start a private engine. Clean up what a dead one left behind.
rm -f "$PIDFILE" "$SOCK" "$DIR/started-by-us"
mkdir -p "$DIR/data" "$DIR/exec"
log "starting private dockerd ($(dockerd --version 2>/dev/null || echo dockerd)), log: $LOG"
{
    echo "=== $(date -u +%FT%TZ) docker-up.sh starting dockerd"
} >>"$LOG"
setsid nohup dockerd \
    --storage-driver=vfs \
    --iptables=false \
    --data-root="$DIR/data" \
    --exec-root="$DIR/exec" \
    --pidfile="$PIDFILE" \
    -H "$PRIVATE_HOST" \
    </dev/null >>"$LOG" 2>&1 9>&- &
launched=$!

for ((i = 0; i < WAIT_SECS; i++)); do
    if docker_ok -H "$PRIVATE_HOST"; then
        pid=$(<"$PIDFILE")
        echo "$pid" >"$DIR/started-by-us"
        if [[ -n ${TF_DOCKER_STARTED_FLAG:-} ]]; then
            echo "$pid" >"$TF_DOCKER_STARTED_FLAG"
        fi
        log "private engine up after ${i}s (pid $pid)"
        echo "DOCKER_HOST=$PRIVATE_HOST"
        exit 0
    fi
    if ! kill -0 "$launched" 2>/dev/null; then
        log "dockerd exited during start-up"
        break
    fi
    sleep 1
done

log "private dockerd did not answer on $SOCK within ${WAIT_SECS}s; last lines of $LOG:"
tail -n 40 "$LOG" >&2 || true
exit 1
