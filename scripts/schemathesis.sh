#!/usr/bin/env bash
# Fuzzes the portal's JSON API against its own openapi.json with schemathesis (pinned), on a
# live portal (real binary, real loopback port, fresh SQLite data dir) with valid admin, device
# agent and help desk tokens. Fails on any server error or any answer the document does not
# describe. The venv is made once under target/ (python3-venv: scripts/install-system-deps.sh).
#
#   scripts/schemathesis.sh              # as `make test` runs it (seed and examples fixed in
#                                        # scripts/schemathesis.toml)
#   ST_ARGS="-n 200" scripts/schemathesis.sh
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV=${SCHEMATHESIS_VENV:-target/schemathesis-venv}
if [ "$("$VENV/bin/st" --version 2>/dev/null | grep -o '[0-9][0-9.]*$' || true)" != "$VERSION" ]; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$VERSION"
fi
cargo build -q --locked -p portal-under-test
BIN=target/debug/portal-under-test
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
echo '{"argon2":{"m_cost_kib":64,"t_cost":1,"p_cost":1}}' > "$WORK/config.json"
ADMIN=$("$BIN" admin bootstrap --data-dir "$WORK/data" | tail -1)
"$BIN" serve --data-dir "$WORK/data" --config "$WORK/config.json" --listen 127.0.0.1:0 \
  --insecure-http > "$WORK/ready" 2> "$WORK/portal.log" &
PID=$!
for _ in $(seq 1 200); do grep -q PORTAL-READY "$WORK/ready" 2>/dev/null && break; sleep 0.1; done
URL=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$WORK/ready")
[ -n "$URL" ] || { echo "portal did not start: $(tail -5 "$WORK/portal.log")" >&2; exit 1; }
api() { curl -sf -H "Authorization: Bearer $ADMIN" -H "Content-Type: application/json" "$@"; }
token_of() { sed -n 's/.*"\(token\|credential\)":"\([^"]*\)".*/\2/p'; }
api -X POST "$URL/api/admin/accounts" \
  -d '{"username":"st-helpdesk","password":"st-password-1","role":"advanced_helpdesk"}' > /dev/null
HELPDESK=$(api -X POST "$URL/api/admin/accounts/st-helpdesk/api-tokens" | token_of)
ENROLL=$(api -X POST "$URL/api/admin/enrollment-tokens" | token_of)
AGENT=$(curl -sf -H "Content-Type: application/json" -X POST "$URL/api/agent/enroll" \
  -d "{\"enrollment_token\":\"$ENROLL\",\"device_name\":\"ST-PC\"}" | token_of)
api -X PUT "$URL/api/admin/settings" -d '{"lookup_rate_limit_exempt":["st-helpdesk"]}' > /dev/null
export PORTAL_ADMIN_TOKEN=$ADMIN PORTAL_HELPDESK_TOKEN=$HELPDESK PORTAL_AGENT_TOKEN=$AGENT
echo "schemathesis $VERSION against $URL"
# shellcheck disable=SC2086
"$VENV/bin/st" --config-file scripts/schemathesis.toml run "$URL/openapi.json" \
  --checks all --url "$URL" --no-color ${ST_ARGS:-}
