#!/usr/bin/env bash
# What writing keys in file order would cost SQLite's writer (the question behind overlapping
# the parse with the write: a writer fed by a bounded channel gets rows in file order, whose
# key IDs are random). N keys into the store's own keys table (schema.rs), one transaction
# with the import's pragmas, three ways:
#   sorted: in key-ID order, the inline UNIQUE index on key_id grows by appends (the import
#           today, which sorts every row first);
#   file:   in file order (random key IDs): each one goes into that index at a random place;
#   late:   in file order into a keys table without the UNIQUE, the unique index built after
#           the load by CREATE UNIQUE INDEX (SQLite's sorter; what a streaming import would
#           need, with a migration, since an inline UNIQUE cannot be dropped).
# Each way twice, alternating; the rows are prepared first (not timed); CPU seconds too.
#
#   N=1000000 benches/http/import-order.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${N:-1000000}
TMP=$(mktemp -d /tmp/import-order.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
KEYS_TABLE=$(sed -n '/^CREATE TABLE IF NOT EXISTS keys(/,/);$/p' portal-under-test/src/store/sqlite/schema.rs)
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD); N=$N; SQLite $(sqlite3 --version | cut -d' ' -f1); uptime:$(uptime)"
for WAY in sorted file late sorted file late; do
  if [ "$WAY" = late ]; then
    sqlite3 "$TMP/k.db" "${KEYS_TABLE/key_id BLOB NOT NULL UNIQUE/key_id BLOB NOT NULL}"
    AFTER="CREATE UNIQUE INDEX keys_key_id ON keys(key_id);"
  else
    sqlite3 "$TMP/k.db" "$KEYS_TABLE"
    AFTER=""
  fi
  ORDER=$([ "$WAY" = sorted ] && echo "kid" || echo "rowid")
  sqlite3 "$TMP/k.db" "CREATE TABLE src(kid BLOB);
    INSERT INTO src SELECT randomblob(16) FROM generate_series(1, $N);
    CREATE TABLE rows AS SELECT row_number() OVER (ORDER BY $ORDER) AS id, kid FROM src;
    DROP TABLE src;"
  START=$EPOCHREALTIME
  /usr/bin/time -f "   $WAY: %U s user + %S s sys CPU" sqlite3 "$TMP/k.db" <<EOF >/dev/null
PRAGMA journal_mode=DELETE; PRAGMA synchronous=FULL; PRAGMA cache_size=-524288; PRAGMA foreign_keys=OFF;
BEGIN;
INSERT INTO keys(id, key_id, device_id, volume_id, protector_type, nonce, ciphertext, fingerprint, created_at)
  SELECT id, kid, id, randomblob(16), 'recovery_password', randomblob(12), randomblob(71),
         randomblob(32), '2026-12-06T00:00:00.000000Z'
  FROM rows ORDER BY id;
$AFTER
COMMIT;
EOF
  echo "   $WAY, $N keys: $(awk "BEGIN{printf \"%.2f s wall\", $EPOCHREALTIME - $START}"); uptime:$(uptime)"
  rm -f "$TMP/k.db"
done
