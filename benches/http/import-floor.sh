#!/usr/bin/env bash
# The write stage's floor: each engine inserting the same rows as an import of N keys (N
# devices, each with its imported user of 1,000 on its row, and N keys: no association rows,
# as the import writes none for a device's first user; same columns and sizes, same indexes, in
# the same order, one transaction, SQLite with the import's pragmas) from SQL alone, with no
# client, no parse, no seal. What `import` can at best reach for its write stage.
#
#   N=1000000 BENCH_PG_URL=postgres://postgres@127.0.0.1:PORT/postgres benches/http/import-floor.sh
#   KEYS=keys-1000000.jsonl N=1000000 BENCH_PG_URL=... benches/http/import-floor.sh
#     (a local cluster: also the CPU of its processes for the floor and for an import of KEYS)
# (PostgreSQL's tables come from the migrations of PORTAL_BIN, default the release build.)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
TMP=$(mktemp -d /tmp/import-floor.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
# The store's tables as the portal creates them (the SQLite migrations' tables for keys:
# version 1's, then version 3's leaner devices and associations, then version 4's imported
# user on the device).
SQLITE_TABLES=$(sed -n -e '/^CREATE TABLE IF NOT EXISTS devices/,/^CREATE INDEX IF NOT EXISTS assoc_user/p' \
  -e '/^CREATE TABLE devices_v3/,/^CREATE INDEX assoc_user/p' \
  -e '/^ALTER TABLE devices ADD COLUMN imported_user TEXT;/,/^  WHERE imported_user_lc IS NOT NULL;/p' \
  portal-under-test/src/store/sqlite/schema.rs)
ROWS="
DROP INDEX devices_imported_user;
INSERT INTO devices(id, device_uuid, name, name_lc, created_at, imported_user, imported_user_lc)
  SELECT value, printf('%08x-0000-4000-8000-%012d', value, value), printf('PC-%08d', value),
         printf('pc-%08d', value), '2026-12-06T00:00:00.000000Z',
         printf('CONTOSO_user%04d', value % 1000), printf('contoso_user%04d', value % 1000)
  FROM generate_series(1, $N);
CREATE INDEX devices_imported_user ON devices(imported_user_lc) WHERE imported_user_lc IS NOT NULL;
INSERT INTO keys(id, key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at)
  SELECT value, CAST(printf('%016d', value) AS BLOB), value, randomblob(16), 'recovery_password',
         randomblob(12), randomblob(71), randomblob(32), '2026-12-06T00:00:00.000000Z'
  FROM generate_series(1, $N);"
. benches/http/pg-cpu.sh
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD); N=$N; uptime:$(uptime)"
echo "-- SQLite $(sqlite3 --version | cut -d' ' -f1): bare inserts, journal_mode=DELETE, synchronous=FULL, 512 MiB cache, foreign keys off"
sqlite3 "$TMP/floor.sqlite3" "$SQLITE_TABLES" >/dev/null
START=$EPOCHREALTIME
/usr/bin/time -f "   SQLite floor CPU: %U s user + %S s sys" sqlite3 "$TMP/floor.sqlite3" <<EOF
PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; PRAGMA cache_size=-524288; PRAGMA foreign_keys=OFF;
BEGIN; $ROWS COMMIT;
EOF
echo "   SQLite floor, $N keys: $(awk "BEGIN{s=$EPOCHREALTIME-$START; printf \"%.1f s = %.0f keys/s\", s, $N/s}")"
rm -f "$TMP/floor.sqlite3"
if [ -n "${BENCH_PG_URL:-}" ]; then
  DB="portal_floor_$$"
  psql -q "$BENCH_PG_URL" -c "CREATE DATABASE $DB"
  URL="${BENCH_PG_URL%/*}/$DB"
  # The portal's own tables: its migrations run at the first open.
  "${PORTAL_BIN:-target/release/portal-under-test}" admin bootstrap --data-dir "$TMP/data" --database-url "$URL" >/dev/null 2>&1
  PG_ROWS=$(printf '%s' "$ROWS" | sed -e 's/generate_series(1, \([0-9]*\))/generate_series(1, \1) AS value/' \
    -e 's/randomblob(\([0-9]*\))/substr(sha256(value::text::bytea) || sha256(value::text::bytea) || sha256(value::text::bytea), 1, \1)/g' \
    -e "s/CAST(printf('%016d', value) AS BLOB)/int8send(value) || int8send(value)/" \
    -e "s/printf('%08x-0000-4000-8000-%012d', value, value)/lpad(to_hex(value), 8, '0') || '-0000-4000-8000-' || lpad(value::text, 12, '0')/" \
    -e "s/printf('PC-%08d', value)/'PC-' || lpad(value::text, 8, '0')/" \
    -e "s/printf('pc-%08d', value)/'pc-' || lpad(value::text, 8, '0')/" \
    -e "s/printf('contoso_user%04d', value % 1000)/'contoso_user' || lpad((value % 1000)::text, 4, '0')/" \
    -e "s/printf('CONTOSO_user%04d', value % 1000)/'CONTOSO_user' || lpad((value % 1000)::text, 4, '0')/" \
    -e '/^DROP INDEX devices_imported_user;$/d' -e '/^CREATE INDEX devices_imported_user/d')
  echo "-- PostgreSQL $(psql -tA "$URL" -c 'SHOW server_version'): INSERT ... SELECT on the server (the import's COPY sends the rows from the client); secondary indexes and the device reference built after the load, as the import does into empty tables"
  CPU0=$(pg_cpu "$BENCH_PG_URL")
  START=$EPOCHREALTIME
  psql -q -v ON_ERROR_STOP=1 "$URL" <<EOF
BEGIN;
SET LOCAL maintenance_work_mem = '512MB';
ALTER TABLE keys DROP CONSTRAINT keys_device_id_fkey;
ALTER TABLE keys DROP CONSTRAINT keys_key_id_key;
DROP INDEX keys_changed;
ALTER TABLE devices DROP CONSTRAINT devices_name_lc_key;
DROP INDEX devices_imported_user;
$PG_ROWS
ALTER TABLE devices ADD CONSTRAINT devices_name_lc_key UNIQUE (name_lc);
CREATE INDEX devices_imported_user ON devices(imported_user_lc) WHERE imported_user_lc IS NOT NULL;
ALTER TABLE keys ADD CONSTRAINT keys_key_id_key UNIQUE (key_id);
CREATE INDEX keys_changed ON keys(changed_xid);
ALTER TABLE keys ADD CONSTRAINT keys_device_id_fkey FOREIGN KEY (device_id) REFERENCES devices(id);
COMMIT;
EOF
  echo "   PostgreSQL floor, $N keys: $(awk "BEGIN{s=$EPOCHREALTIME-$START; printf \"%.1f s = %.0f keys/s\", s, $N/s}")"
  CPU1=$(pg_cpu "$BENCH_PG_URL")
  [ -z "$CPU0" ] || echo "   PostgreSQL floor CPU (the cluster's processes): $(awk "BEGIN{printf \"%.2f s\", $CPU1 - $CPU0}")"
  # The import of the same number of keys on the same cluster, for its server CPU beside
  # the floor's (KEYS: a JSON Lines file of N keys, e.g. from harness keys generate).
  if [ -n "${KEYS:-}" ] && [ -n "$CPU0" ]; then
    IMPORT_DB="portal_floor_import_$$"
    psql -q "$BENCH_PG_URL" -c "CREATE DATABASE $IMPORT_DB"
    CPU0=$(pg_cpu "$BENCH_PG_URL")
    /usr/bin/time -f "   import: %e s wall, importer CPU %U s user + %S s sys" \
      "${PORTAL_BIN:-target/release/portal-under-test}" import "$KEYS" --data-dir "$TMP/import" \
      --database-url "${BENCH_PG_URL%/*}/$IMPORT_DB" 2>&1 | grep -E '^   import:|^imported'
    CPU1=$(pg_cpu "$BENCH_PG_URL")
    echo "   import server CPU (the cluster's processes): $(awk "BEGIN{printf \"%.2f s\", $CPU1 - $CPU0}")"
    psql -q "$BENCH_PG_URL" -c "DROP DATABASE $IMPORT_DB"
  fi
  psql -q "$BENCH_PG_URL" -c "DROP DATABASE $DB"
fi
