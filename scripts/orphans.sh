#!/usr/bin/env bash
# Kills `harness run` of one short scenario at seeded random moments and counts what it
# leaves behind: processes (swtpm, portal-under-test, chromedriver, ... anything that still
# carries this run's marker in its environment) and entries in its private TMPDIR.
#   scripts/orphans.sh [RUNS] [SEED] [HARNESS_BIN]
# Prints one line a run that leaked and a summary; exits 1 if anything leaked. A run's
# leftovers get SETTLE_S seconds (default 20) to go before they count as a leak.
# The browser pass: ORPHANS_ARGS=--browser ORPHANS_SCENARIO=scenarios/firmware-update-uefi.yaml
# ORPHANS_WAIT_FOR=chromedriver: the delay counts from when the run's chromedriver appears
# (it then lives for a few seconds), so the kills meet the browser.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
RANDOM=${2:-27}
bin=${3:-target/debug/harness}
scenario=${ORPHANS_SCENARIO:-scenarios/control-reboot.yaml}
# Word-split on purpose: extra `harness run` arguments.
read -ra extra_args <<<"${ORPHANS_ARGS:-}"
# The kill comes MIN_MS .. MAX_MS after the start, in steps of 100 ms. The defaults span
# start-up to the end of control-reboot (about 3 s in a debug build).
min_ms=${ORPHANS_MIN_MS:-100} max_ms=${ORPHANS_MAX_MS:-3000}
root=$(mktemp -d /tmp/orphans.XXXXXX)
mark="HARNESS_ORPHAN_MARK=$(basename "$root")"
procs_left=0 dirs_left=0 leaky_runs=0 slowest=0 browser_kills=0
settle_s=${SETTLE_S:-20}
# The processes that still carry this run's marker (zombies have no environment left),
# as name(pid,state).
survivors() {
  grep -lz "^$mark\$" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | while read -r p; do
    # name(pid,state): a process stuck in D (uninterruptible I/O) is slow, not leaked.
    printf '%s(%s,%s) ' "$(cat /proc/"$p"/comm 2>/dev/null)" "$p" \
      "$(sed 's/.*) \(.\).*/\1/' /proc/"$p"/stat 2>/dev/null)"; done
}
for i in $(seq 1 "$runs"); do
  tmp=$root/tmp-$i
  mkdir -p "$tmp"
  env TMPDIR="$tmp" "$mark" "$bin" run "$scenario" -j 1 "${extra_args[@]}" >"$root/run-$i.log" 2>&1 &
  pid=$!
  delay=$(( min_ms + (RANDOM % ((max_ms - min_ms) / 100 + 1)) * 100 ))
  sig=$([ $((RANDOM % 2)) -eq 0 ] && echo KILL || echo INT)
  if [ -n "${ORPHANS_WAIT_FOR:-}" ]; then
    for _ in $(seq 300); do
      case " $(survivors)" in *" $ORPHANS_WAIT_FOR("*) break ;; esac
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  sleep "$(awk "BEGIN { print $delay / 1000 }")"
  # Whether the kill meets a browser: the browser pass must, or it proves nothing.
  case " $(survivors)" in *" chromedriver("*) browser_kills=$((browser_kills + 1)) ;; esac
  kill -s "$sig" "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  # Death signals and the janitor are asynchronous, and a killed process in the middle of
  # an fsync (swtpm saving its state) or an `rm -rf` on a loaded CI disk can take seconds to
  # go. A leak is what is still there after SETTLE_S seconds; the slowest clean-up is
  # reported so a slow one is seen before it becomes a failure.
  # Wall-clock tenths of a second (a scan of /proc takes a while on a loaded machine).
  killed_at=${EPOCHREALTIME//[!0-9]/}
  while :; do
    left=$(survivors)
    nleft=$(echo "$left" | wc -w)
    ndirs=$(find "$tmp" -mindepth 1 -maxdepth 1 | wc -l)
    waited=$(( (${EPOCHREALTIME//[!0-9]/} - killed_at) / 100000 ))
    { [ "$nleft" -eq 0 ] && [ "$ndirs" -eq 0 ]; } && break
    [ "$waited" -ge $((settle_s * 10)) ] && break
    sleep 0.1
  done
  [ "$waited" -gt "$slowest" ] && slowest=$waited
  if [ "$nleft" -gt 0 ] || [ "$ndirs" -gt 0 ]; then
    leaky_runs=$((leaky_runs + 1))
    echo "run $i (SIG$sig after ${delay} ms): processes left: ${left:-none}; temp entries left: $ndirs $(ls "$tmp" | head -3 | tr '\n' ' ')"
    # Clean up what leaked so the next run starts clean.
    for p in $(echo "$left" | grep -o '([0-9]*,' | tr -d '(,'); do kill -KILL "$p" 2>/dev/null; done
  fi
  procs_left=$((procs_left + nleft)); dirs_left=$((dirs_left + ndirs))
done
echo "orphans: $runs runs, $leaky_runs leaked; processes left: $procs_left; temp entries left: $dirs_left; slowest clean-up: $(awk "BEGIN { print $slowest / 10 }") s (limit ${settle_s} s); killed with chromedriver up: $browser_kills"
rm -rf "$root"
[ "$procs_left" -eq 0 ] && [ "$dirs_left" -eq 0 ]
