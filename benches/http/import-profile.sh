#!/usr/bin/env bash
# Where an import's time goes, per stage: one `portal-under-test import` of FILE run under
# `perf record` (the importer's own threads, sampled at 499 Hz), its samples split by the
# stage boundaries the import logs (parse + validate + seal, then each store phase, then the
# commit). Prints each stage's wall seconds beside the CPU seconds the importer spent in it:
# on a loaded machine the gap is time spent waiting for a core (or, on PostgreSQL, for the
# server, whose own CPU is not in these samples). Then the importer's top symbols.
#
#   benches/http/import-profile.sh FILE [--database-url URL]      (a fresh DATA dir is made)
#   PORTAL_BIN=/tmp/old/portal-under-test benches/http/import-profile.sh FILE
set -euo pipefail
FILE=$1
shift
BIN=${PORTAL_BIN:-target/release/portal-under-test}
TMP=$(mktemp -d /tmp/import-profile.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
echo "== $(date -u +%FT%TZ) $BIN; uptime:$(uptime)"
perf record -q -k CLOCK_REALTIME -F 499 -o "$TMP/perf.data" -- "$BIN" import "$FILE" --data-dir "$TMP/data" "$@" 2>&1 \
  | sed 's/\x1b\[[0-9;]*m//g' > "$TMP/log"
grep -E 'import (stage|store phases|committed|done)' "$TMP/log" | sed 's/^/   /'
# Stage lengths in the order they ran: the parse, each `*_secs` of the store phases, then
# PostgreSQL's commit (logged on a line of its own).
STAGES=$( {
  grep -o 'parsed, validated and sealed.*' "$TMP/log" | grep -o ' secs=[0-9.]*' | sed 's/ secs=/parse /'
  grep 'import store phases' "$TMP/log" | grep -o '[a-z_]*_secs=[0-9.]*' | sed 's/_secs=/ /'
  grep 'import committed' "$TMP/log" | grep -o 'commit_secs=[0-9.]*' | sed 's/_secs=/ /'  || true
} )
echo "   stage: wall s, importer CPU s (all its threads)"
# The parse's start (the end logged, less its length) anchors the stages on the clock of the
# samples (both real time).
PARSED_AT=$(date -d "$(grep 'parsed, validated and sealed' "$TMP/log" | cut -d' ' -f1)" +%s.%N)
perf script -i "$TMP/perf.data" -F time 2>/dev/null | tr -d ': ' | awk -v stages="$STAGES" -v parsed="$PARSED_AT" '
  BEGIN { n = split(stages, f, /[ \n]+/); for (i = 1; i < n; i += 2) { k++; name[k] = f[i]; end[k] = (k > 1 ? end[k-1] : 0) + f[i+1] }
          t0 = parsed - end[1] }
  { t = $1 - t0; if (t < 0) { before++; next } for (j = 1; j <= k && t >= end[j]; j++); cpu[j]++ }
  END { for (j = 1; j <= k; j++) printf "   %-22s %7.2f %7.2f\n", name[j], end[j] - (j > 1 ? end[j-1] : 0), cpu[j] / 499
        printf "   %-22s %7s %7.2f\n", "(before: read, open)", "", before / 499
        printf "   %-22s %7s %7.2f\n", "(after)", "", cpu[k+1] / 499 }'
echo "   top symbols (self):"
perf report -i "$TMP/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null \
  | grep -v '^#' | grep -v '^$' | sed -n 1,15p | sed -E -e 's/[[:space:]]+-[[:space:]]+-[[:space:]]*$//' -e 's/^/   /'
