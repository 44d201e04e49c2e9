#!/usr/bin/env bash
# The `stoa bench e2e` throughput case (N workflows x K sequential durable
# steps, all started together; wall time from the first start until all
# completed) run against Restate. See README.md.
#
#   bench/restate/run.sh [--n N] [--k K] [--variants "run call"] [--timeout-s S]
#
# Env equivalents: N, K, VARIANTS, TIMEOUT_S. Prints one JSON line per
# variant on stdout; progress goes to stderr. Each variant gets a fresh
# restate-server (fresh temp base dir, free loopback ports, default durable
# configuration) and a fresh Node service; both are stopped on exit.
# --no-netns (NETNS=0): do not isolate the run in a loopback-only network
# namespace (see below).
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
ORIG_ARGS=("$@")
cd "$(dirname "$SELF")"

N=${N:-200}
K=${K:-20}
VARIANTS=${VARIANTS:-"run call"}
TIMEOUT_S=${TIMEOUT_S:-600}
NETNS=${NETNS:-1}
while [ $# -gt 0 ]; do
  case "$1" in
    --n) N=$2; shift 2 ;;
    --k) K=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    --timeout-s) TIMEOUT_S=$2; shift 2 ;;
    --no-netns) NETNS=0; shift ;;
    -h|--help) sed -n '2,16p' "$SELF"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

log() { echo "[restate-bench] $*" >&2; }

SERVER_BIN=node_modules/@restatedev/restate-server-linux-x64/bin/restate-server
if [ ! -x "$SERVER_BIN" ] || [ ! -f node_modules/@restatedev/restate-sdk/package.json ]; then
  log "installing pinned packages (npm ci)"
  # --ignore-scripts: the only install script is @scarf/scarf's telemetry ping.
  timeout 600 npm ci --ignore-scripts --no-audit --no-fund >&2
fi

# The benchmark itself runs in a private network namespace holding only
# loopback (`unshare -n`, needs root or user namespaces): restate-server
# checks GitHub for a newer release at every start, unconditionally, and this
# keeps that (and anything else) from leaving the machine. Falls back to the
# host namespace, still bound to 127.0.0.1 only, if unshare is unavailable.
if [ "$NETNS" = 1 ] && [ -z "${STOA_BENCH_RESTATE_IN_NETNS:-}" ]; then
  if unshare -n true 2>/dev/null; then
    export STOA_BENCH_RESTATE_IN_NETNS=1
    exec unshare -n -- bash -c 'ip link set lo up 2>/dev/null || true; exec "$0" "$@"' "$SELF" "${ORIG_ARGS[@]}"
  fi
  log "unshare -n unavailable: running in the host network namespace (loopback-bound)"
fi

SERVER_VERSION=$("$SERVER_BIN" --version | awk '{print $2}')
SDK_VERSION=$(node -p 'require("./node_modules/@restatedev/restate-sdk/package.json").version')

SERVER_PID=""
SERVICE_PID=""
WORK=""
stop_pid() { # pid name
  local pid=$1
  [ -n "$pid" ] || return 0
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "$2 ($pid) did not stop within 10s; killing"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
cleanup() {
  stop_pid "$SERVICE_PID" service
  stop_pid "$SERVER_PID" restate-server
  SERVICE_PID=""
  SERVER_PID=""
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then rm -rf "$WORK"; fi
  WORK=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Distinct free loopback ports (bound together, then released).
free_ports() {
  node -e '
    const net = require("net");
    const n = Number(process.argv[1]);
    const servers = Array.from({ length: n }, () => net.createServer());
    Promise.all(servers.map((s) => new Promise((r) => s.listen(0, "127.0.0.1", () => r(s.address().port)))))
      .then((ports) => { console.log(ports.join(" ")); servers.forEach((s) => s.close()); });
  ' "$1"
}

wait_http() { # url seconds what
  local deadline=$((SECONDS + $2))
  until curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then log "$3 not up within $2s"; return 1; fi
    if [ -n "$SERVER_PID" ] && ! kill -0 "$SERVER_PID" 2>/dev/null; then log "restate-server exited"; return 1; fi
    sleep 0.2
  done
}

run_variant() { # variant
  local variant=$1
  WORK=$(mktemp -d /tmp/stoa-bench-restate.XXXXXX)
  read -r FABRIC ADMIN INGRESS SVC < <(free_ports 4)
  log "variant=$variant N=$N K=$K  restate-server $SERVER_VERSION (admin $ADMIN, ingress $INGRESS, fabric $FABRIC), sdk $SDK_VERSION (service $SVC), base dir $WORK"

  # Default configuration except where it listens (loopback TCP, chosen
  # ports, fresh base dir) and telemetry (off: this machine has no network).
  # Durability (WAL, fsync, journaling, retention) is left at its defaults.
  RESTATE_ADMIN__BIND_PORT=$ADMIN \
  RESTATE_INGRESS__BIND_PORT=$INGRESS \
  RESTATE_DISABLE_TELEMETRY=true \
    "$SERVER_BIN" --no-logo --base-dir "$WORK" --bind-ip 127.0.0.1 --bind-port "$FABRIC" \
      --listen-mode tcp --node-name bench --log-disable-ansi-codes true \
      > "$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  wait_http "http://127.0.0.1:$ADMIN/health" 120 "admin API"
  wait_http "http://127.0.0.1:$INGRESS/restate/health" 120 "ingress"

  node service.mjs "$SVC" > "$WORK/service.log" 2>&1 &
  SERVICE_PID=$!
  local deadline=$((SECONDS + 30))
  until grep -q "^listening on" "$WORK/service.log" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "$SERVICE_PID" 2>/dev/null; then
      log "service did not start:"; cat "$WORK/service.log" >&2; return 1
    fi
    sleep 0.1
  done

  curl -fsS --max-time 60 -X POST "http://127.0.0.1:$ADMIN/deployments" \
    -H 'content-type: application/json' \
    -d "{\"uri\": \"http://127.0.0.1:$SVC\"}" > "$WORK/deployment.json" \
    || { log "registering the deployment failed"; cat "$WORK/server.log" >&2; return 1; }

  timeout $((TIMEOUT_S + 120)) node bench.mjs --ingress "http://127.0.0.1:$INGRESS" --variant "$variant" \
    --n "$N" --k "$K" --server-pid "$SERVER_PID" --service-pid "$SERVICE_PID" --timeout-s "$TIMEOUT_S" \
    --version "server $SERVER_VERSION, sdk $SDK_VERSION"
  cleanup
}

for v in $VARIANTS; do
  run_variant "$v"
done
