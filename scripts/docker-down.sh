#!/usr/bin/env bash
# Stop the private Docker engine started by scripts/docker-up.sh, by the pid in its pid file,
# and only if docker-up.sh started it ($DIR/started-by-us). SIGTERM, wait up to 20 s, SIGKILL.
# Images and containers stay in $DIR/data, so the next docker-up.sh starts fast.
set -euo pipefail

DIR=${TF_DOCKER_DIR:-/tmp/tiny-forge-docker}
PIDFILE="$DIR/dockerd.pid"
MARKER="$DIR/started-by-us"

log() { printf 'docker-down: %s\n' "$*" >&2; }

if [[ ! -f $MARKER ]]; then
    log "no private engine started by docker-up.sh in $DIR; nothing to stop"
    exit 0
fi

pid=$(<"$MARKER")
if [[ -s $PIDFILE ]]; then
    pid=$(<"$PIDFILE")
fi
if ! [[ $pid =~ ^[0-9]+$ ]] || ! kill -0 "$pid" 2>/dev/null; then
    log "private engine (pid ${pid:-?}) is not running"
    rm -f "$MARKER" "$PIDFILE" "$DIR/docker.sock"
    exit 0
fi
# Guard against a recycled pid: it must be a dockerd process.
if [[ $(cat "/proc/$pid/comm" 2>/dev/null) != dockerd ]]; then
    log "pid $pid is not dockerd; leaving it alone"
    rm -f "$MARKER" "$PIDFILE"
    exit 0
fi

log "stopping private dockerd (pid $pid)"
kill -TERM "$pid"
for ((i = 0; i < 20; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
done
if kill -0 "$pid" 2>/dev/null; then
    log "dockerd $pid still running after 20s; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 1
else
    log "stopped after ${i}s"
fi
rm -f "$MARKER" "$PIDFILE" "$DIR/docker.sock"
