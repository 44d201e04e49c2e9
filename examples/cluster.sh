#!/usr/bin/env bash
# A Stoa cluster on one machine: a throwaway PostgreSQL, three servers on
# it, one worker that knows only the first server, video-encode workflows
# started through all three. Midway, the second server is killed (SIGKILL);
# once its leases run out the other two take its partitions over and every
# workflow completes. Prints who holds how many partitions, second by
# second, so you see it happen. Stops everything it started on exit.
#
#   examples/cluster.sh       # STOA_CLUSTER_WORKFLOWS (default 60), STOA_CLUSTER_WORK_SCALE
#                             # (default 0.5: the worker's simulated work) to change the load;
#                             # STOA_BIN=DIR to use built binaries instead of building
set -euo pipefail
cd "$(dirname "$0")/.."
workflows="${STOA_CLUSTER_WORKFLOWS:-60}"
work_scale="${STOA_CLUSTER_WORK_SCALE:-0.5}"
lease_ms=3000
token="cluster-token-0001"

if [ -n "${STOA_BIN:-}" ]; then
    bin="$STOA_BIN"
else
    cargo build --release -q -p stoa-cli -p stoa-functions
    bin=target/release
fi
pgbin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
if [ ! -x "$pgbin/initdb" ]; then
    echo "cluster.sh: PostgreSQL's binaries are missing: run pgstore/setup.sh" >&2
    exit 1
fi

work="$(mktemp -d /tmp/stoa-cluster.XXXXXX)"
chmod 755 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL refuses to run as root: as the postgres user, then.
as_pg=()
if [ "$(id -u)" = 0 ]; then
    chown postgres "$work"
    as_pg=(runuser -u postgres --)
fi
"${as_pg[@]}" "$pgbin/initdb" -D "$work/pg" -A trust -U postgres > "$work/initdb.log"
"${as_pg[@]}" "$pgbin/postgres" -D "$work/pg" -k "$work" -c listen_addresses='' -c fsync=off > "$work/pg.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do [ -S "$work/.s.PGSQL.5432" ] && break; sleep 0.1; done
"${as_pg[@]}" "$pgbin/createdb" -h "$work" -U postgres stoa
url="postgresql://postgres@${work//\//%2F}/stoa"
psql() { "${as_pg[@]}" "$pgbin/psql" -h "$work" -U postgres -d stoa -At -c "$1"; }
echo "PostgreSQL on $work"

addrs=()
for i in 1 2 3; do
    "$bin/stoa" serve --listen 127.0.0.1:0 --store "$url" --lease-ms "$lease_ms" --token "demo=$token" \
        > "$work/server$i.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 1 100); do grep -q "listening on" "$work/server$i.log" 2>/dev/null && break; sleep 0.1; done
    addrs+=("$(sed -n 's/^listening on //p' "$work/server$i.log")")
    echo "server $i: ${addrs[$((i - 1))]} (pid ${pids[$i]})"
done
victim_pid="${pids[2]}"

# Who holds how many partitions, and how many workflows have completed;
# sets `completed`, `owners` and `held` for the loop below.
status() {
    local line
    line="$(psql "SELECT
        (SELECT string_agg(m.address || ': ' || n, ', ' ORDER BY m.address) FROM
            (SELECT owner, count(*) AS n FROM partitions WHERE expires_at > now() GROUP BY owner) p
            JOIN members m ON m.id = p.owner),
        (SELECT count(*) FROM workflows WHERE status = 'completed'),
        (SELECT count(DISTINCT owner) FROM partitions WHERE expires_at > now()),
        (SELECT count(*) FROM partitions WHERE expires_at > now())")"
    IFS='|' read -r partitions completed owners held <<< "$line"
    printf '%s  partitions {%s}  completed %s/%s\n' "$(date +%T)" "$partitions" "$completed" "$workflows"
}

# The partitions spread over the three.
for _ in $(seq 1 40); do
    status > /dev/null
    [ "$owners" = 3 ] && [ "$held" = 256 ] && break
    sleep 0.25
done
status

STOA_SERVER="http://${addrs[0]}" STOA_TOKEN="$token" "$bin/stoa" deploy examples/packs/video-encode > /dev/null
echo "deployed video-encode through server 1"
"$bin/stoa-worker-media" --server "http://${addrs[0]}" --token "$token" --concurrency 16 --work-scale "$work_scale" \
    > "$work/worker.log" 2>&1 &
pids+=($!)
echo "a worker connected to server 1 (it learns the others)"

for n in $(seq 1 "$workflows"); do
    server="${addrs[$((n % 3))]}"
    STOA_SERVER="http://$server" STOA_TOKEN="$token" "$bin/stoa" start video-encode \
        --facts examples/packs/video-encode/facts.json --request-id "cluster-$n" > /dev/null
done
echo "started $workflows workflows through all three servers"
status

sleep 1
status
{ kill -9 "$victim_pid" && wait "$victim_pid"; } 2>/dev/null || true
echo "killed server 2 (${addrs[1]}) with SIGKILL; its leases run out in ${lease_ms} ms"

done_at=""
for _ in $(seq 1 240); do
    sleep 1
    status
    # Done once every workflow completed and the two left hold everything.
    if [ "$completed" = "$workflows" ] && [ "$owners" = 2 ] && [ "$held" = 256 ]; then
        done_at=1
        break
    fi
done
if [ -z "$done_at" ]; then
    echo "not every workflow completed; logs are in $work" >&2
    trap - EXIT
    exit 1
fi
echo "all $workflows workflows completed; server 2's partitions moved to servers 1 and 3"
