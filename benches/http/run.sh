#!/usr/bin/env bash
# HTTP benchmark: the help desk JSON lookup (authenticated, audited, rate limiting off for the
# benchmark account) against a trivial handler in the same portal process, with N keys
# loaded, under wrk at 64 and 2 connections on loopback. See benches/README.md.
#
# In the same run, a bare axum server (benches/http/hello.rs, no middleware) answers the same
# trivial route: ROUNDS alternating rounds (bare, trivial, lookup), then the medians and the
# ratios to the portal's trivial route (benches/http/measure.sh).
#
#   benches/http/run.sh                 # N=10000000 (imports once into target/http-bench)
#   N=100000 DURATION=5s ROUNDS=5 benches/http/run.sh
#   WAL_SOAK=120 benches/http/run.sh    # then 120 s of lookups at 64 connections, watching
#                                       # the SQLite WAL's size and the audit table's growth
#   ENGINES="sqlite postgres" BENCH_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres \
#     N=100000 benches/http/run.sh      # the same measurements on both store engines, one run
#   BASE_BIN=path/to/older/portal N=1000000 ROUNDS=5 DURATION=5s benches/http/run.sh
#                                       # also measures BASE_BIN's lookup in the same rounds,
#                                       # serving the same store (started after the set-up)
# On PostgreSQL each run imports into a fresh database `portal_bench_<N>_<pid>` made on the
# server at BENCH_PG_URL (bulk import by binary COPY; benches/http/import.sh measures it).
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/http/measure.sh
N=${N:-10000000}
DURATION=${DURATION:-20s}
ROUNDS=${ROUNDS:-1}
WORK=${WORK:-target/http-bench}
ENGINES=${ENGINES:-sqlite}
mkdir -p "$WORK"
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
# PORTAL_BIN: measure an already built portal (e.g. two commits in turn) instead of building.
if [ -z "${PORTAL_BIN:-}" ]; then
  cargo build --release -q -p harness -p portal-under-test -p benches --features portal-under-test/bench-routes
else
  cargo build --release -q -p harness -p benches
fi
BIN=${PORTAL_BIN:-target/release/portal-under-test}
KEYS="$WORK/keys-$N.jsonl"
# Queries: 5000 present prefixes (every 997th key) and 5000 random absent ones, shuffled.
Q="$WORK/queries-$N.txt"
if [ ! -e "$Q.hit1" ]; then
  [ -e "$KEYS" ] || target/release/harness keys generate --count "$N" --seed 7 --out "$KEYS"
  awk 'NR % 997 == 0' "$KEYS" | grep -o '"key_protector_id":"{[0-9A-F]\{8\}' | cut -c22-29 | awk 'NR <= 5000' > "$Q.hits"
  grep -o '"key_protector_id":"{[0-9A-F]\{8\}' "$KEYS" | cut -c22-29 | sort -u > "$Q.all"
  od -An -tx4 -N40000 /dev/urandom | tr -s ' ' '\n' | grep . | tr a-f A-F | sort -u \
    | comm -23 - "$Q.all" | awk 'NR <= 5000' > "$Q.misses"
  cat "$Q.hits" "$Q.misses" | shuf --random-source=<(yes) > "$Q"
  head -1 "$Q.hits" > "$Q.hit1"; head -1 "$Q.misses" > "$Q.miss1"
  rm -f "$Q.all" "$Q.hits" "$Q.misses"
fi

bench_engine() {
ENGINE=$1
DB_ARGS=()
if [ "$ENGINE" = postgres ]; then
  [ -n "${BENCH_PG_URL:-}" ] || { echo "ENGINES has postgres: set BENCH_PG_URL" >&2; exit 2; }
  DB="portal_bench_${N}_$$"
  psql -q "$BENCH_PG_URL" -c "CREATE DATABASE $DB"
  DB_ARGS=(--database-url "${BENCH_PG_URL%/*}/$DB")
  DATA="$WORK/pg-data-$N"
  rm -rf "$DATA"
  [ -e "$KEYS" ] || target/release/harness keys generate --count "$N" --seed 7 --out "$KEYS"
  /usr/bin/time -f "import ($ENGINE): %e s wall, %M KiB max RSS" "$BIN" import "$KEYS" --data-dir "$DATA" "${DB_ARGS[@]}"
else
  DATA="$WORK/data-$N"
  if [ ! -e "$DATA/.imported" ]; then
    rm -rf "$DATA"
    target/release/harness keys generate --count "$N" --seed 7 --out "$KEYS"
    /usr/bin/time -f "import: %e s wall, %M KiB max RSS" "$BIN" import "$KEYS" --data-dir "$DATA"
    touch "$DATA/.imported"
  fi
fi
ADMIN=$("$BIN" admin bootstrap --data-dir "$DATA" "${DB_ARGS[@]}" --username bench-admin | tail -1)
STARTED=$EPOCHREALTIME
start_server "$WORK/ready" "$WORK/serve.log" env RUST_LOG=warn "$BIN" serve --data-dir "$DATA" \
  "${DB_ARGS[@]}" --listen 127.0.0.1:0 --insecure-http
PID=$SERVER_PID URL=$SERVER_URL
start_server "$WORK/hello.ready" "$WORK/hello.log" target/release/axum-hello
HELLO_PID=$SERVER_PID HELLO_URL=$SERVER_URL
trap 'kill $PID $HELLO_PID 2>/dev/null || true' EXIT
echo "== engine $ENGINE: portal at $URL (pid $PID), $N keys; start-up (index load from the store): $(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $STARTED}") s"
H=(-H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json")
curl -s "${H[@]}" -X POST "$URL/api/admin/accounts" \
  -d '{"username":"bench-helpdesk","password":"bench-password-1","role":"advanced_helpdesk"}' > /dev/null
TOKEN=$(curl -s "${H[@]}" -X POST "$URL/api/admin/accounts/bench-helpdesk/api-tokens" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
curl -s "${H[@]}" -X PUT "$URL/api/admin/settings" -d '{"lookup_rate_limit_exempt":["bench-helpdesk"]}' > /dev/null
export TOKEN QUERIES="$Q"
BASE_URL=
if [ -n "${BASE_BIN:-}" ]; then
  # Started after the account, token and settings exist: it loads them at start.
  start_server "$WORK/base.ready" "$WORK/base.log" env RUST_LOG=warn "$BASE_BIN" serve \
    --data-dir "$DATA" "${DB_ARGS[@]}" --listen 127.0.0.1:0 --insecure-http
  BASE_PID=$SERVER_PID BASE_URL=$SERVER_URL
  trap 'kill $PID $HELLO_PID $BASE_PID 2>/dev/null || true' EXIT
fi
# Sanity: a present key answers 200 with its recovery password, an absent one the uniform
# 404; stop here rather than measure error answers.
HIT=$(head -1 "$WORK/queries-$N.txt.hit1")
MISS=$(head -1 "$WORK/queries-$N.txt.miss1")
ask() { curl -s -o "$WORK/answer" -w '%{http_code}' -H "Authorization: Bearer $TOKEN" \
  -H "Content-Type: application/json" -X POST "$URL/api/helpdesk/lookup" \
  -d "{\"key_id\":\"$1\",\"reason\":\"Lost PIN\"}"; }
CODE=$(ask "$HIT"); echo "sample hit $HIT: $CODE $(cut -c1-70 "$WORK/answer")"
[ "$CODE" = 200 ] && grep -q '"recovery_password":"[0-9-]\{55\}"' "$WORK/answer" \
  || { echo "a present key did not answer 200 with its password" >&2; exit 1; }
CODE=$(ask "$MISS"); echo "sample miss $MISS: $CODE $(cat "$WORK/answer")"
[ "$CODE" = 404 ] && grep -q '"code":"not_found"' "$WORK/answer" \
  || { echo "an absent key did not answer the uniform 404" >&2; exit 1; }
echo "load: $(cat /proc/loadavg)"
RESULTS="$WORK/results-$ENGINE"
rm -f "$RESULTS"
for C in 64 2; do
  for R in $(seq 1 "$ROUNDS"); do
    measure "$RESULTS" axum-hello "$HELLO_URL" /bench/trivial "$C" "$DURATION"
    measure "$RESULTS" trivial "$URL" /bench/trivial "$C" "$DURATION"
    measure "$RESULTS" helpdesk-lookup "$URL" /api/helpdesk/lookup "$C" "$DURATION"
    [ -z "$BASE_URL" ] || measure "$RESULTS" lookup-base-bin "$BASE_URL" /api/helpdesk/lookup "$C" "$DURATION"
  done
done
echo "load: $(cat /proc/loadavg)"
echo "== engine $ENGINE, $N keys: medians of $ROUNDS rounds of $DURATION"
medians "$RESULTS" trivial
# WAL soak (SQLite): the audited lookup at 64 connections for WAL_SOAK seconds while the size of
# portal.sqlite3-wal is sampled every second; then the audit table's growth per request
# (pages added to the store file per audit row; nothing else writes meanwhile). Needs the
# sqlite3 command-line shell.
if [ -n "${WAL_SOAK:-}" ] && [ "$ENGINE" = sqlite ]; then
  command -v sqlite3 >/dev/null || { echo "sqlite3 is missing: apt-get install sqlite3" >&2; exit 2; }
  STORE_FILE="$DATA/portal.sqlite3"
  store_stats() { sqlite3 -cmd ".timeout 5000" "$STORE_FILE" "SELECT (SELECT max(id) FROM audit), (SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size());"; }
  BEFORE=$(store_stats)
  echo "== WAL soak: /api/helpdesk/lookup, 64 connections, ${WAL_SOAK} s; WAL size every 10 s (MB):"
  EXPECT_200='"recovery_password":"' LOOKUP_PATH=/api/helpdesk/lookup \
    wrk -t2 -c64 -d"${WAL_SOAK}s" --latency -s benches/http/lookup.lua "$URL" > "$WORK/soak.txt" &
  WRK=$!
  MAX=0; S=0; LINE=""
  while kill -0 $WRK 2>/dev/null; do
    SIZE=$(stat -c %s "$STORE_FILE-wal" 2>/dev/null || echo 0)
    [ "$SIZE" -gt "$MAX" ] && MAX=$SIZE
    [ $((S % 10)) = 0 ] && LINE="$LINE $(awk "BEGIN{printf \"%.1f\", $SIZE/1e6}")"
    S=$((S + 1)); sleep 1
  done
  wait $WRK
  grep -E "Requests/sec|Latency|99%|Non-2xx|Socket errors|checked:" "$WORK/soak.txt"
  echo "WAL samples:$LINE"
  echo "WAL largest sample: $(awk "BEGIN{printf \"%.1f\", $MAX/1e6}") MB; now $(stat -c %s "$STORE_FILE-wal" 2>/dev/null || echo 0) bytes"
  AFTER=$(store_stats)
  echo "audit rows and store bytes before: $BEFORE, after: $AFTER"
  awk -F'|' -v b="$BEFORE" -v a="$AFTER" 'BEGIN{split(b,x,"|"); split(a,y,"|");
    printf "audit growth: %d rows, %.1f MB, %.0f bytes per row\n", y[1]-x[1], (y[2]-x[2])/1e6, (y[2]-x[2])/(y[1]-x[1])}'
  echo "load: $(cat /proc/loadavg)"
fi
kill $PID $HELLO_PID ${BASE_PID:-}; wait $PID $HELLO_PID ${BASE_PID:-} 2>/dev/null || true
trap - EXIT
}

for ENGINE in $ENGINES; do bench_engine "$ENGINE"; done
rm -f "$KEYS"  # 2.8 GB at 10M; regenerated (same seed) only if needed again
