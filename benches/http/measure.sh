# Shared by benches/http/run.sh and stack.sh (sourced): one wrk measurement appended to a
# results file, and the medians of alternating rounds with ratios to a reference row.
# Needs TOKEN and QUERIES in the environment (benches/http/lookup.lua).

# measure RESULTS NAME URL ROUTE CONNECTIONS DURATION
#   Runs wrk once; prints its summary; appends "NAME C req/s p50_us p99_us" to RESULTS.
#   A run with any answer other than the expected 200 or the uniform 404 stops the script.
measure() {
  local results=$1 name=$2 url=$3 route=$4 c=$5 duration=$6 out expect
  expect='"recovery_password":"'
  [ "$route" = /bench/trivial ] && expect='"outcome":"ok"'
  out=$(EXPECT_200=$expect LOOKUP_PATH=$route wrk -t"$(( c < 2 ? c : 2 ))" -c"$c" -d"$duration" \
    --latency -s benches/http/lookup.lua "$url")
  echo "== $name $route, $c connections, $duration, load $(cut -d' ' -f1 /proc/loadavg)"
  grep -E "Requests/sec|50%|99%|Non-2xx|Socket errors|checked:" <<<"$out"
  if ! grep -q "checked: .*, 0 other" <<<"$out" && [ "$route" = /bench/trivial ]; then
    echo "$name: an answer was not the trivial route's" >&2; exit 1
  fi
  awk -v n="$name" -v c="$c" '
    function us(v) { if (v ~ /us$/) return v + 0; if (v ~ /ms$/) return v * 1000;
                     if (v ~ /s$/) return v * 1e6; return v }
    /Requests\/sec/ { rps = $2 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    END { printf "%s %s %.0f %.0f %.0f\n", n, c, rps, p50, p99 }' <<<"$out" >> "$results"
}

# medians RESULTS REFERENCE_NAME
#   One row per (name, connections): the median req/s, p50 and p99 over its rounds, and the
#   ratios to REFERENCE_NAME's medians at the same connection count.
medians() {
  local results=$1 ref=$2
  echo "| name | connections | rounds | req/s (median) | of $ref | p50 µs | p99 µs | p99 / $ref's |"
  echo "|---|---|---|---|---|---|---|---|"
  sort -k2,2nr -k1,1 "$results" | awk -v ref="$ref" '
    function med(s,   a, n, i, j, t) {
      n = split(s, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 SUBSEP $2; if (!(k in rps)) order[++m] = k
      rps[k] = rps[k] " " $3; p50[k] = p50[k] " " $4; p99[k] = p99[k] " " $5; runs[k]++ }
    END {
      for (i = 1; i <= m; i++) { k = order[i]; split(k, nc, SUBSEP)
        r = med(rps[k]); q = med(p99[k]); rk = ref SUBSEP nc[2]
        rr = (rk in rps) ? sprintf("%.1f%%", 100 * r / med(rps[rk])) : "-"
        qr = (rk in rps) ? sprintf("%.2fx", q / med(p99[rk])) : "-"
        printf "| %s | %s | %d | %.0f | %s | %.0f | %.0f | %s |\n", nc[1], nc[2], runs[k], r, rr, med(p50[k]), q, qr }
    }'
}

# start_server READY_FILE LOG_FILE COMMAND...
#   Starts COMMAND in the background (stdout to READY_FILE, stderr to LOG_FILE), waits up to
#   300 s for its `PORTAL-READY {"url":...}` line and sets SERVER_URL and SERVER_PID (a 10M-key
#   store's start-up reads its keys for ~46 s on a quiet machine, over 60 s under load).
start_server() {
  local ready=$1 log=$2
  shift 2
  "$@" > "$ready" 2> "$log" &
  SERVER_PID=$!
  for _ in $(seq 1 3000); do grep -q PORTAL-READY "$ready" 2>/dev/null && break; sleep 0.1; done
  SERVER_URL=$(sed -n 's/.*"url":"\([^"]*\)".*/\1/p' "$ready")
  [ -n "$SERVER_URL" ] || { echo "$1 did not start: $(tail -5 "$log")" >&2; exit 1; }
}
