#!/usr/bin/env bash
# Bulk import benchmark: `portal-under-test import` end to end (JSON Lines file -> a store
# the portal serves) on SQLite and on PostgreSQL, side by side in one run, at each size in
# SIZES; then the portal's start-up on that store (the key-ID index read from the store and
# built). Prints the import's own stage timings and one summary line per engine and size.
# Every file and store lives in a temp dir under WORK and is deleted right after its run
# (10M keys: a 2.8 GB file, stores of several GB).
#
#   BENCH_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres benches/http/import.sh
#   SIZES="1000000" ENGINES=sqlite benches/http/import.sh
#   PORTAL_BIN=/tmp/old/portal-under-test benches/http/import.sh   (another build's importer)
#   PORTAL_BINS="/tmp/old/portal-under-test target/release/portal-under-test" ...
#     (several importers, each on the same file one after the other: a before/after run)
#   HARNESS_BIN=target/debug/harness ...   (the key generator of another build; no build)
#   KEYS_DIR=DIR ...   (DIR/keys-N.jsonl, where it exists, instead of generating N keys)
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZES=${SIZES:-"1000000 10000000"}
ENGINES=${ENGINES:-"sqlite postgres"}
WORK=${WORK:-/tmp}
if [ -z "${HARNESS_BIN:-}" ]; then
  cargo build --release -q --locked -p harness -p portal-under-test
fi
HARNESS_BIN=${HARNESS_BIN:-target/release/harness}
BINS=${PORTAL_BINS:-${PORTAL_BIN:-$PWD/target/release/portal-under-test}}
. benches/http/pg-cpu.sh
TMP=$(mktemp -d "$WORK/import-bench.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD); uptime:$(uptime)"
for N in $SIZES; do
  KEYS="$TMP/keys-$N.jsonl"
  if [ -f "${KEYS_DIR:-/nonexistent}/keys-$N.jsonl" ]; then
    KEYS="$KEYS_DIR/keys-$N.jsonl"
    echo "-- keys: $KEYS ($(wc -l < "$KEYS") lines)"
  else
    "$HARNESS_BIN" keys generate --count "$N" --seed 7 --out "$KEYS"
  fi
  for ENGINE in $ENGINES; do
    for BIN in $BINS; do
      DATA="$TMP/data"
      rm -rf "$DATA"
      DB_ARGS=()
      if [ "$ENGINE" = postgres ]; then
        [ -n "${BENCH_PG_URL:-}" ] || { echo "ENGINES has postgres: set BENCH_PG_URL" >&2; exit 2; }
        DB="portal_import_${N}_$$"
        psql -q "$BENCH_PG_URL" -c "CREATE DATABASE $DB"
        DB_ARGS=(--database-url "${BENCH_PG_URL%/*}/$DB")
      fi
      echo "-- $ENGINE, $N keys, $BIN; uptime:$(uptime)"
      [ "$ENGINE" != postgres ] || CPU0=$(pg_cpu "$BENCH_PG_URL")
      START=$EPOCHREALTIME
      /usr/bin/time -f "   %e s wall, %U s user + %S s sys CPU, %M KiB max RSS" "$BIN" import "$KEYS" --data-dir "$DATA" "${DB_ARGS[@]}" 2>&1 \
        | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/   /'
      SECS=$(awk "BEGIN{print $EPOCHREALTIME - $START}")
      echo "   import $ENGINE $N keys: $(awk "BEGIN{printf \"%.1f s = %.0f keys/s\", $SECS, $N / $SECS}")"
      if [ "$ENGINE" = postgres ] && [ -n "$CPU0" ]; then
        echo "   server CPU (the local cluster's processes): $(awk "BEGIN{printf \"%.2f s\", $(pg_cpu "$BENCH_PG_URL") - $CPU0}")"
      fi
      # Start-up: from launch to PORTAL-READY, and the index's own read + build times.
      START=$EPOCHREALTIME
      RUST_LOG=info "$BIN" serve --data-dir "$DATA" "${DB_ARGS[@]}" --listen 127.0.0.1:0 --insecure-http \
        > "$TMP/ready" 2> "$TMP/serve.log" &
      PID=$!
      for _ in $(seq 1 1200); do grep -q PORTAL-READY "$TMP/ready" 2>/dev/null && break; sleep 0.05; done
      READY=$(awk "BEGIN{printf \"%.1f\", $EPOCHREALTIME - $START}")
      kill $PID; wait $PID || true
      echo "   start-up $ENGINE $N keys: $READY s to PORTAL-READY;" \
        "$(grep -o 'key-ID index loaded.*' "$TMP/serve.log" | sed 's/\x1b\[[0-9;]*m//g')"
      rm -rf "$DATA"
      if [ "$ENGINE" = postgres ]; then psql -q "$BENCH_PG_URL" -c "DROP DATABASE $DB"; fi
    done
  done
  rm -f "$TMP/keys-$N.jsonl"
done
