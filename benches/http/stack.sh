#!/usr/bin/env bash
# What the portal's HTTP stack costs every route: the portal's in-process trivial route
# (`POST /bench/trivial`, --features bench-routes) with all its layers, with one layer left
# out at a time (PORTAL_BENCH_SKIP_LAYERS), with none, and a bare axum server
# (benches/http/hello.rs, no middleware) answering the same route, all on empty stores,
# measured in alternating rounds under wrk; medians and ratios to the bare server.
#
#   benches/http/stack.sh                         # 5 rounds of 5 s at 64 and 2 connections
#   ROUNDS=7 DURATION=10s CONNS="2" benches/http/stack.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/http/measure.sh
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNS=${CONNS:-64 2}
WORK=${WORK:-target/http-stack}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 2; }
cargo build --release -q -p portal-under-test -p benches --features portal-under-test/bench-routes
rm -rf "$WORK"; mkdir -p "$WORK"
# The trivial route reads no query; lookup.lua needs a token and a query file all the same.
echo 00000000 > "$WORK/queries"
export TOKEN=unused QUERIES="$WORK/queries"
# name:layers left out
VARIANTS=("portal:" "no-trace:trace" "no-headers:headers" "no-body-limit:body_limit"
  "no-layers:trace,body_limit,headers")
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
start_server "$WORK/hello.ready" "$WORK/hello.log" target/release/axum-hello
PIDS+=("$SERVER_PID"); NAMES=(axum-hello); URLS=("$SERVER_URL")
for v in "${VARIANTS[@]}"; do
  name=${v%%:*}
  start_server "$WORK/$name.ready" "$WORK/$name.log" \
    env RUST_LOG=warn PORTAL_BENCH_SKIP_LAYERS="${v#*:}" target/release/portal-under-test serve \
    --data-dir "$WORK/data-$name" --listen 127.0.0.1:0 --insecure-http
  PIDS+=("$SERVER_PID"); NAMES+=("$name"); URLS+=("$SERVER_URL")
done
echo "load: $(cat /proc/loadavg)"
for C in $CONNS; do
  for R in $(seq 1 "$ROUNDS"); do
    for i in "${!NAMES[@]}"; do
      measure "$WORK/results" "${NAMES[$i]}" "${URLS[$i]}" /bench/trivial "$C" "$DURATION"
    done
  done
done
echo "load: $(cat /proc/loadavg)"
medians "$WORK/results" axum-hello
