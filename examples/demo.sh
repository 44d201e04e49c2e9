#!/usr/bin/env bash
# The main job, end to end: a Stoa server with the embedded store, the
# video-encode pack deployed, an example worker connected, and one workflow
# followed live until it completes. Stops everything it started on exit.
#
#   examples/demo.sh            # STOA_DEMO_PORT, STOA_DEMO_HTTP_PORT, STOA_DEMO_DATA to change where
#
# The web console is on http://127.0.0.1:8080/ (log in with the token
# below); run from a terminal, the demo keeps it up until Enter.
set -euo pipefail
cd "$(dirname "$0")/.."
port="${STOA_DEMO_PORT:-7233}"
http_port="${STOA_DEMO_HTTP_PORT:-8080}"
data="${STOA_DEMO_DATA:-./stoa-data}"
token="demo-token-0001"
export STOA_SERVER="http://127.0.0.1:$port" STOA_TOKEN="$token"

cargo build --release -q -p stoa-cli -p stoa-functions
bin="${CARGO_TARGET_DIR:-target}/release"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

"$bin/stoa" serve --listen "127.0.0.1:$port" --http-listen "127.0.0.1:$http_port" --data "$data" \
    --token "demo=$token" > "$data.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do grep -q "listening on" "$data.log" 2>/dev/null && break; sleep 0.1; done
grep "listening on" "$data.log"
echo "console: http://127.0.0.1:$http_port/ (log in with the token $token)"

"$bin/stoa" deploy examples/packs/video-encode
"$bin/stoa-worker-media" --concurrency 8 > "$data.worker.log" 2>&1 &
pids+=($!)

# A fresh request id each run; --watch follows the timeline until the end.
# Its first line is "<workflow id> started".
started="$data.start.out"
"$bin/stoa" start video-encode --facts examples/packs/video-encode/facts.json \
    --request-id "demo-$(date +%s%N)" --watch | tee "$started"
wf="$(head -1 "$started" | cut -d' ' -f1)"
rm -f "$started"
"$bin/stoa" ls --limit 5

# What to type to look at what just ran. The server stops with this script;
# its data stays in $data, so the same server serves it again.
show() { printf '  %-64s # %s\n' "$1" "$2"; }
echo
echo "Workflow $wf ran on the server above (logs: $data.log, worker: $data.worker.log)."
echo "To look at it: the server is up while this script waits for Enter (from a terminal);"
echo "after that, start it again on the same data (the first line below), then ask it:"
echo
show "$bin/stoa serve --listen 127.0.0.1:$port --http-listen 127.0.0.1:$http_port --data $data --token demo=$token &" "the same server, in the background"
show "export STOA_SERVER=$STOA_SERVER STOA_TOKEN=$STOA_TOKEN" "where the commands below go"
show "$bin/stoa ls" "workflows, newest first"
show "$bin/stoa describe $wf" "status, times, what it waits on, its last turns"
show "$bin/stoa get $wf" "status, result, facts"
show "$bin/stoa watch $wf" "its timeline: every turn, call and answer"
show "$bin/stoa explain $wf \"assemble\"" "why a rule fired (or does not), with values"
show "$bin/stoa --help" "every command"
show "http://127.0.0.1:$http_port/workflows/$wf" "the same in the web console (token $token)"
if [ -t 0 ]; then
    read -r -p "The console stays up at http://127.0.0.1:$http_port/ (token $token); press Enter to stop. "
fi
