#!/usr/bin/env bash
# Runs a command with a private, throw-away PostgreSQL cluster: `initdb` in a temp dir, `pg_ctl`
# on a free loopback port, as the `postgres` user (initdb refuses root, and CI runs as root).
# The command sees PORTAL_TEST_PG_URL (a superuser URL on that cluster; the portal's tests
# create one database per test on it). The cluster is stopped and removed on exit, whatever
# the command's result. No PostgreSQL installed: a clear error naming the Debian package
# (never a silent skip).
#   scripts/with-postgres.sh CMD [ARGS...]
set -euo pipefail

bindir=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && bindir="$d"   # the newest version wins (glob order)
done
if [ -z "$bindir" ]; then
  echo "error: PostgreSQL is not installed: the portal's PostgreSQL tests need Debian's" \
       "'postgresql' package (make deps, or: apt-get install postgresql)" >&2
  exit 1
fi

run_as_pg=()
if [ "$(id -u)" -eq 0 ]; then
  id postgres >/dev/null 2>&1 || { echo "error: no 'postgres' user (reinstall Debian's postgresql)" >&2; exit 1; }
  run_as_pg=(runuser -u postgres --)
fi

tmp=$(mktemp -d /tmp/portal-pg.XXXXXX)
chmod 755 "$tmp"
[ ${#run_as_pg[@]} -eq 0 ] || chown postgres "$tmp"
data="$tmp/data"
stop() {
  "${run_as_pg[@]}" "$bindir/pg_ctl" -D "$data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap stop EXIT

"${run_as_pg[@]}" "$bindir/initdb" -D "$data" -A trust -U postgres --no-sync >"$tmp/initdb.log" 2>&1 || {
  cat "$tmp/initdb.log" >&2; echo "error: initdb failed" >&2; exit 1; }
# A free loopback port: try random ones until the server starts (a port in use makes it
# exit at once). Below Linux's ephemeral range (32768-60999), so that no outgoing
# connection of the tests can have taken it between our pick and the server's bind. fsync off: a test cluster thrown away at the end; its socket in the temp
# dir only.
started=""
for _ in 1 2 3 4 5 6 7 8; do
  port=$(( 20000 + RANDOM % 12768 ))
  opts="-h 127.0.0.1 -p $port -k $tmp -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
  if "${run_as_pg[@]}" "$bindir/pg_ctl" -D "$data" -l "$tmp/server.log" -w -t 60 -o "$opts" \
      start >/dev/null 2>&1; then
    started=yes; break
  fi
done
[ -n "$started" ] || { cat "$tmp/server.log" >&2; echo "error: PostgreSQL did not start" >&2; exit 1; }

export PORTAL_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
# For the replica test that restarts the server (portal-under-test/tests/it/replicas.rs):
# pg_ctl on this cluster (words split on spaces: the temp paths have none), and the start
# options that bring it back on the same port.
export PORTAL_TEST_PG_CTL="${run_as_pg[*]} $bindir/pg_ctl -D $data -l $tmp/server.log"
export PORTAL_TEST_PG_OPTS="$opts"
echo "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port for: $*" >&2
"$@"
