#!/usr/bin/env bash
# Replicas on one PostgreSQL database (portal-under-test/API.md §1 "Replicas"), one run:
#  1. replica lag: a key escrowed through A, polled for through B (benches/http/replica_lag.py);
#  2. the help desk JSON lookup at 64 connections against one replica (A), then against two
#     (32 connections on A and 32 on B at the same time), N keys imported, rate limiting
#     off for the benchmark account. Release build, plain HTTP on loopback, wrk.
#
#   scripts/with-postgres.sh benches/http/replicas.sh           # N=100000, DURATION=10s
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres N=1000000 benches/http/replicas.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-100000}
DURATION=${DURATION:-10s}
LAG_ROUNDS=${LAG_ROUNDS:-300}
WORK=${WORK:-target/replica-bench}
PG=${BENCH_PG_URL:-${PORTAL_TEST_PG_URL:-}}
[ -n "$PG" ] || { echo "run under scripts/with-postgres.sh, or set BENCH_PG_URL" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
mkdir -p "$WORK"
# PORTAL_BIN / HARNESS_BIN: measure already built binaries instead of building release ones.
if [ -z "${PORTAL_BIN:-}" ]; then
  cargo build --release -q -p harness -p portal-under-test
fi
BIN=${PORTAL_BIN:-target/release/portal-under-test}
HARNESS=${HARNESS_BIN:-target/release/harness}
KEYS="$WORK/keys-$N.jsonl"
Q="$WORK/queries-$N.txt"
[ -e "$KEYS" ] || "$HARNESS" keys generate --count "$N" --seed 7 --out "$KEYS"
# Queries as benches/http/run.sh: present prefixes (every 997th key) and random absent ones.
grep -o '"key_protector_id":"{[0-9A-F]\{8\}' "$KEYS" | cut -c22-29 > "$Q.all"
awk 'NR % 997 == 0' "$Q.all" | awk 'NR <= 5000' > "$Q.hits"
sort -u "$Q.all" > "$Q.sorted"
od -An -tx4 -N40000 /dev/urandom | tr -s ' ' '\n' | grep . | tr a-f A-F | sort -u \
  | comm -23 - "$Q.sorted" | awk 'NR <= 5000' > "$Q.misses"
cat "$Q.hits" "$Q.misses" | shuf --random-source=<(yes) > "$Q"
rm -f "$Q.all" "$Q.sorted" "$Q.hits" "$Q.misses"

DB="portal_replicas_${N}_$$"
psql -q "$PG" -c "CREATE DATABASE $DB"
DB_URL="${PG%/*}/$DB"
DATA="$WORK/data"
rm -rf "$DATA"
"$BIN" import "$KEYS" --data-dir "$DATA" --database-url "$DB_URL" > /dev/null
ADMIN=$("$BIN" admin bootstrap --data-dir "$DATA" --database-url "$DB_URL" --username bench-admin | tail -1)
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
start_replica() {  # $1: name; prints the URL
  RUST_LOG=warn "$BIN" serve --data-dir "$DATA" --database-url "$DB_URL" --listen 127.0.0.1:0 \
    --insecure-http > "$WORK/ready-$1" 2> "$WORK/serve-$1.log" &
  PIDS+=($!)
  for _ in $(seq 1 600); do grep -q PORTAL-READY "$WORK/ready-$1" 2>/dev/null && break; sleep 0.1; done
}
start_replica a
start_replica b
URL_A=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$WORK/ready-a")
URL_B=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$WORK/ready-b")
[ -n "$URL_A" ] && [ -n "$URL_B" ] || { echo "a replica did not start" >&2; exit 1; }
echo "== $N keys on one PostgreSQL database; replica A $URL_A, replica B $URL_B"
H=(-H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json")
curl -s "${H[@]}" -X POST "$URL_A/api/admin/accounts" \
  -d '{"username":"bench-helpdesk","password":"bench-password-1","role":"advanced_helpdesk"}' > /dev/null
TOKEN=$(curl -s "${H[@]}" -X POST "$URL_A/api/admin/accounts/bench-helpdesk/api-tokens" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
curl -s "${H[@]}" -X PUT "$URL_A/api/admin/settings" -d '{"lookup_rate_limit_exempt":["bench-helpdesk"]}' > /dev/null
sleep 1  # the setting reaches B (replicas follow within 1 s)
export TOKEN QUERIES="$Q" LOOKUP_PATH=/api/helpdesk/lookup EXPECT_200='"recovery_password":"'
echo "load: $(cat /proc/loadavg)"
python3 benches/http/replica_lag.py "$URL_A" "$URL_B" "$ADMIN" "$TOKEN" "$LAG_ROUNDS"
SHOW="Requests/sec|Latency|50%|99%|Non-2xx|Socket errors|checked:"
echo "== one replica: /api/helpdesk/lookup, 64 connections on A, $DURATION"
wrk -t2 -c64 -d"$DURATION" --latency -s benches/http/lookup.lua "$URL_A" | grep -E "$SHOW"
echo "load: $(cat /proc/loadavg)"
echo "== two replicas: /api/helpdesk/lookup, 32 connections on A + 32 on B at once, $DURATION"
wrk -t1 -c32 -d"$DURATION" --latency -s benches/http/lookup.lua "$URL_A" > "$WORK/wrk-a.txt" &
W=$!
wrk -t1 -c32 -d"$DURATION" --latency -s benches/http/lookup.lua "$URL_B" > "$WORK/wrk-b.txt"
wait $W
for R in a b; do echo "-- replica $R"; grep -E "$SHOW" "$WORK/wrk-$R.txt"; done
awk '/Requests\/sec/ {s += $2} END {printf "two replicas together: %.0f requests/sec\n", s}' "$WORK/wrk-a.txt" "$WORK/wrk-b.txt"
echo "load: $(cat /proc/loadavg)"
kill "${PIDS[@]}"; wait 2>/dev/null || true
trap - EXIT
psql -q "$PG" -c "DROP DATABASE $DB" || true
rm -rf "$DATA" "$KEYS"
