#!/usr/bin/env bash
# Webhook throughput side by side, in one run, with wrk: the same signed GitHub `push` delivery
# (tests/fixtures/webhooks/github/push.with-new-branch.json, compact JSON, 7.7 KB) with a unique
# X-GitHub-Delivery per request, against
#   ceiling     nginx, `return 202;` (reads and drops the body)
#   peer        adnanh/webhook (Debian `webhook`), one hook with a payload-hmac-sha256 rule on
#               X-Hub-Signature-256 and no command, answering 202
#   tiny-forge  the release binary, `run` standalone: a Project with gitSource
#               Codertocat/Hello-World, webhook.secretRef (sealed in the store) and gitEvents
#               [push], a Stage without tag policy and without autoDeploy — every delivery is
#               verified, matched, recorded durably (SQLite WAL, synchronous=FULL, group commit)
#               and answered 202 after its commit.
# Rounds alternate the order of the three. The table goes between the markers
# <!-- peers:start --> / <!-- peers:end --> of docs/BENCHMARKS.md (BENCH_WRITE_DOC=0: print only).
#
# Env: BENCH_ROUNDS (5), BENCH_SECONDS (10), BENCH_CONNECTIONS (64), BENCH_WARMUP_SECONDS (3),
#      TF_BIN (target/release/tiny-forge, built when missing or stale), BENCH_DIR (a temp dir).
# Needs: wrk, nginx, webhook (apt-get install wrk nginx-light webhook), a Docker engine for the
# controller side of `run` (scripts/docker-up.sh; nothing is deployed).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${BENCH_ROUNDS:-5}
SECONDS_PER=${BENCH_SECONDS:-10}
CONNS=${BENCH_CONNECTIONS:-64}
WARMUP=${BENCH_WARMUP_SECONDS:-3}
TF_BIN=${TF_BIN:-$ROOT/target/release/tiny-forge}
FIXTURE=tests/fixtures/webhooks/github/push.with-new-branch.json
HMAC_SECRET=bench-github-hmac-secret
DOC=docs/BENCHMARKS.md

log() { printf 'bench-peers: %s\n' "$*" >&2; }
for tool in wrk nginx webhook python3 sqlite3; do
    command -v "$tool" >/dev/null || { log "missing $tool (make bench-deps installs it)"; exit 1; }
done
if [ "$TF_BIN" = "$ROOT/target/release/tiny-forge" ]; then
    cargo build --release --quiet
fi
[ -z "${DOCKER_HOST:-}" ] && export "$(scripts/docker-up.sh)"

DIR=${BENCH_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/bench-peers.XXXXXX")}
mkdir -p "$DIR"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    # A directory of our own goes (the store holds every delivery of the run); BENCH_DIR stays.
    [ -n "${BENCH_DIR:-}" ] || rm -rf "$DIR"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT
    local i
    for i in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    log "nothing listens on 127.0.0.1:$1"; exit 1
}

# The body (compact JSON) and its signature: the signature covers the body only, so every request
# carries the same pair and a delivery id of its own.
python3 - "$FIXTURE" "$DIR/body.json" <<'PY'
import json, sys
json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], "w"), separators=(",", ":"))
PY
BODY_BYTES=$(stat -c %s "$DIR/body.json")
SIG=sha256=$(openssl dgst -sha256 -hmac "$HMAC_SECRET" -hex <"$DIR/body.json" | sed 's/^.*= //')

cat >"$DIR/push.lua" <<LUA
local f = io.open("$DIR/body.json", "rb")
local body = f:read("*a")
f:close()
local n = 0
local run = tostring(os.time()) .. "-" .. tostring(math.random(1, 1e9))
request = function()
  n = n + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-GitHub-Event"] = "push",
    ["X-Hub-Signature-256"] = "$SIG",
    ["X-GitHub-Delivery"] = run .. "-" .. n,
  }, body)
end
LUA

# --- ceiling: nginx -------------------------------------------------------------------------
NGINX_PORT=$(free_port)
mkdir -p "$DIR/nginx"
cat >"$DIR/nginx/nginx.conf" <<NGX
daemon off;
worker_processes auto;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $DIR/nginx/body;
    client_max_body_size 1m;
    client_body_buffer_size 64k;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / { return 202; }
    }
}
NGX
nginx -c "$DIR/nginx/nginx.conf" -p "$DIR/nginx" &
PIDS+=($!)

# --- peer: adnanh/webhook ---------------------------------------------------------------------
HOOK_PORT=$(free_port)
cat >"$DIR/hooks.json" <<HOOKS
[{
  "id": "github",
  "execute-command": "",
  "success-http-response-code": 202,
  "trigger-rule": {"match": {
    "type": "payload-hmac-sha256",
    "secret": "$HMAC_SECRET",
    "parameter": {"source": "header", "name": "X-Hub-Signature-256"}
  }}
}]
HOOKS
webhook -hooks "$DIR/hooks.json" -ip 127.0.0.1 -port "$HOOK_PORT" -nopanic >"$DIR/webhook.log" 2>&1 &
PIDS+=($!)

# --- tiny-forge -------------------------------------------------------------------------------
TF_PORT=$(free_port)
mkdir -p "$DIR/manifests" "$DIR/state"
cat >"$DIR/manifests/bench.yaml" <<'YAML'
apiVersion: tinyforge.dev/v1alpha1
kind: Project
metadata: {name: hello}
spec:
  image: ghcr.io/codertocat/hello-world
  gitSource: {provider: github, repository: Codertocat/Hello-World}
  webhook:
    secretRef: {name: github, key: hmac}
    gitEvents: [push]
---
apiVersion: tinyforge.dev/v1alpha1
kind: Stage
metadata: {name: hello-dev}
spec: {projectRef: hello}
YAML
printf %s "$HMAC_SECRET" | "$TF_BIN" secret set github hmac --state-dir "$DIR/state" >/dev/null 2>&1
# Made here, before the controller starts (it would otherwise make one of its own).
URL_SECRET=$("$TF_BIN" webhook url --state-dir "$DIR/state" 2>/dev/null | sed 's#.*/api/webhook/##')
"$TF_BIN" run --manifests "$DIR/manifests" --state-dir "$DIR/state" --instance bench-peers \
    --listen "127.0.0.1:$TF_PORT" --webhook-rate 0 --no-auto-create >"$DIR/tiny-forge.log" 2>&1 &
TF_PID=$!
PIDS+=($TF_PID)

wait_port "$NGINX_PORT"; wait_port "$HOOK_PORT"; wait_port "$TF_PORT"
declare -A URL=(
    [nginx]="http://127.0.0.1:$NGINX_PORT/"
    [webhook]="http://127.0.0.1:$HOOK_PORT/hooks/github"
    [tiny-forge]="http://127.0.0.1:$TF_PORT/api/webhook/$URL_SECRET/github"
)
# Each answers the delivery as expected before anything is measured.
for side in nginx webhook tiny-forge; do
    code=$(curl -s -o "$DIR/first.$side" -w '%{http_code}' -X POST "${URL[$side]}" \
        -H 'Content-Type: application/json' -H 'X-GitHub-Event: push' \
        -H "X-Hub-Signature-256: $SIG" -H "X-GitHub-Delivery: first-$side" --data-binary @"$DIR/body.json")
    [ "$code" = 202 ] || { log "$side answered $code: $(head -c 300 "$DIR/first.$side")"; exit 1; }
done
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST "${URL[webhook]}" -H 'Content-Type: application/json' \
    -H "X-Hub-Signature-256: sha256=$(printf '0%.0s' $(seq 64))" --data-binary @"$DIR/body.json")
[ "$code" != 202 ] || { log "the peer accepted a wrong signature: its rule is not checked"; exit 1; }
log "peer with a wrong signature answers $code (the rule is checked)"

run_wrk() { # run_wrk SIDE SECONDS OUT
    wrk -t1 -c"$CONNS" -d"${2}s" --latency -s "$DIR/push.lua" "${URL[$1]}" >"$3" 2>&1
}
cpu_of() { awk '{print $14 + $15}' "/proc/$1/stat"; }

log "warm-up, ${WARMUP}s each"
for side in nginx webhook tiny-forge; do run_wrk "$side" "$WARMUP" "$DIR/warmup.$side"; done

ORDERS=("nginx webhook tiny-forge" "tiny-forge webhook nginx" "webhook tiny-forge nginx")
: >"$DIR/results.tsv"
for r in $(seq 1 "$ROUNDS"); do
    order=${ORDERS[$(((r - 1) % 3))]}
    for side in $order; do
        load0=$(awk '{print $1}' /proc/loadavg)
        tf0=$(cpu_of "$TF_PID")
        run_wrk "$side" "$SECONDS_PER" "$DIR/round$r.$side"
        tf1=$(cpu_of "$TF_PID")
        python3 - "$DIR/round$r.$side" "$r" "$side" "$load0" "$((tf1 - tf0))" >>"$DIR/results.tsv" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = {}
for p in ("50", "90", "99"):
    m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    lat[p] = ms(*m.groups())
total = int(re.search(r"(\d+) requests in", text).group(1))
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
errors = re.search(r"Socket errors: (.*)", text)
print("\t".join([sys.argv[2], sys.argv[3], f"{rps:.0f}", f"{lat['50']:.2f}", f"{lat['90']:.2f}",
                 f"{lat['99']:.2f}", str(total), bad.group(1) if bad else "0",
                 errors.group(1).strip() if errors else "-", sys.argv[4], sys.argv[5]]))
PY
        log "round $r $side: $(tail -n1 "$DIR/results.tsv" | cut -f3-8)"
    done
done

# Every tiny-forge 202 is a committed delivery: count them in the store (warm-up and checks too).
sleep 0.5
STORED=$(sqlite3 "file:$DIR/state/state.db?mode=ro" 'select count(*) from deliveries' 2>/dev/null || echo "?")
RSS=$(awk '/VmHWM/ {print $2" "$3}' "/proc/$TF_PID/status")

python3 - "$DIR" "$ROUNDS" "$SECONDS_PER" "$CONNS" "$BODY_BYTES" "$STORED" "$RSS" "$DOC" \
    "${BENCH_WRITE_DOC:-1}" "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' + local changes')" <<'PY'
import os, platform, statistics, subprocess, sys, datetime
d, rounds, secs, conns, body, stored, rss, doc, write, commit = sys.argv[1:11]
rows = [l.rstrip("\n").split("\t") for l in open(os.path.join(d, "results.tsv"))]
sides = ["nginx", "webhook", "tiny-forge"]
names = {"nginx": "ceiling: nginx `return 202`", "webhook": "peer: adnanh/webhook 2.8 (HMAC rule, no command)",
         "tiny-forge": "tiny-forge (verify, match, durable record, 202)"}
med = {}
for s in sides:
    rs = [r for r in rows if r[1] == s]
    med[s] = {k: statistics.median(float(r[i]) for r in rs) for k, i in
              (("rps", 2), ("p50", 3), ("p90", 4), ("p99", 5))}
    med[s]["worst99"] = max(float(r[5]) for r in rs)
    med[s]["bad"] = sum(int(r[7]) for r in rs)
    med[s]["total"] = sum(int(r[6]) for r in rs)
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
ncpu = os.cpu_count()
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
c = med["nginx"]["rps"]
tf_rounds = [r for r in rows if r[1] == "tiny-forge"]
tf_cpu_per_req = statistics.median(int(r[10]) * 10_000 / max(1, int(r[6])) for r in tf_rounds)  # clock ticks (10 ms) -> µs
out = []
out.append("## Webhook throughput beside nginx and adnanh/webhook (wrk)\n")
out.append(f"Measured {now} at commit {commit} on {cpu} ({ncpu} CPUs), loopback, a machine shared with other builds "
           f"(1-minute load average at the start of each phase in the last table). {rounds} rounds; in each, every server "
           f"gets `wrk -t1 -c{conns} -d{secs}s --latency` in turn (the order rotates from round to round), after a warm-up of "
           f"the same per server. Each request is the same signed GitHub `push` delivery "
           f"(`tests/fixtures/webhooks/github/push.with-new-branch.json`, compact, {body} bytes, `X-Hub-Signature-256`) "
           f"with its own `X-GitHub-Delivery`. tiny-forge is the release binary (`run`, standalone, `--webhook-rate 0`): "
           f"a Project with `gitSource` Codertocat/Hello-World, `webhook.secretRef` and `gitEvents: [push]`, a Stage that "
           f"records the tag and deploys nothing; each 202 goes out after the SQLite commit of its delivery (WAL, "
           f"`synchronous=FULL`, group commit). nginx runs `worker_processes auto`; adnanh/webhook checks the HMAC rule "
           f"and runs no command. wrk and the servers share the machine.\n")
out.append("Reproduce: `scripts/bench-peers.sh` (`BENCH_ROUNDS`, `BENCH_SECONDS`, `BENCH_CONNECTIONS`; "
           "`BENCH_WRITE_DOC=0` prints only; needs `apt-get install wrk nginx-light webhook sqlite3`).\n")
out.append(f"| {conns} connections, medians over {rounds} rounds | req/s | p50 | p90 | p99 | worst p99 | ÷ ceiling | ÷ peer | non-2xx |")
out.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in sides:
    m = med[s]
    out.append(f"| {names[s]} | {m['rps']:.0f} | {m['p50']:.2f} ms | {m['p90']:.2f} ms | {m['p99']:.2f} ms | "
               f"{m['worst99']:.2f} ms | {m['rps']/c:.2f} | {m['rps']/med['webhook']['rps']:.2f} | {m['bad']} |")
out.append("")
t = med["tiny-forge"]
ratio = t["rps"] / c
out.append("Targets (issue 18):\n")
out.append(f"* tiny-forge ≥ 0.5 of the ceiling: **{'met' if ratio >= 0.5 else 'not met'}** — {ratio:.2f} "
           f"({t['rps']:.0f} of {c:.0f} req/s, medians).")
out.append(f"* p99 ≤ 10 ms: **{'met' if t['p99'] <= 10 else 'not met'}** — median p99 {t['p99']:.2f} ms, "
           f"worst round {t['worst99']:.2f} ms.")
out.append(f"* Durability: {t['total']} tiny-forge requests answered in the measured rounds, {t['bad']} of them not 2xx; "
           f"the store holds {stored} delivery ids afterwards (measured rounds, warm-up and the checks). "
           f"tiny-forge's CPU per request (utime + stime of its process over a round ÷ its requests, median): "
           f"{tf_cpu_per_req:.0f} µs; peak RSS {rss}.\n")
out.append("| round | server | req/s | p50 | p90 | p99 | requests | non-2xx | socket errors | load avg |")
out.append("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
for r in rows:
    out.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} ms | {r[4]} ms | {r[5]} ms | {r[6]} | {r[7]} | {r[8]} | {r[9]} |")
table = "\n".join(out) + "\n"
print(table)
if write == "1":
    start, end = "<!-- peers:start -->", "<!-- peers:end -->"
    text = open(doc).read()
    block = f"{start}\n{table}{end}"
    if start in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        marker = "<!-- webhook:start -->"
        text = text.replace(marker, block + "\n\n" + marker, 1)
    open(doc, "w").write(text)
    print(f"wrote {doc}", file=sys.stderr)
PY
