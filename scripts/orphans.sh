#!/usr/bin/env bash
# Kills `harness run` of one short scenario at seeded random moments and counts what it
# leaves behind: processes (swtpm, portal-under-test, chromedriver, ... anything that still
# carries this run's marker in its environment) and entries in its private TMPDIR.
#   scripts/orphans.sh [RUNS] [SEED] [HARNESS_BIN]
# Prints one line a run that leaked and a summary; exits 1 if anything leaked. A run's
# leftovers get SETTLE_S seconds (default 20) to go before they count as a leak.
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-50}
RANDOM=${2:-27}
bin=${3:-target/debug/harness}
scenario=scenarios/control-reboot.yaml
root=$(mktemp -d /tmp/orphans.XXXXXX)
mark="HARNESS_ORPHAN_MARK=$(basename "$root")"
procs_left=0 dirs_left=0 leaky_runs=0 slowest=0
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
  env TMPDIR="$tmp" "$mark" "$bin" run "$scenario" -j 1 >"$root/run-$i.log" 2>&1 &
  pid=$!
  # 100 .. 3000 ms: from start-up to the end of the scenario (about 3 s in a debug build).
  delay=$(( (RANDOM % 30 + 1) * 100 ))
  sig=$([ $((RANDOM % 2)) -eq 0 ] && echo KILL || echo INT)
  sleep "$(awk "BEGIN { print $delay / 1000 }")"
  kill -s "$sig" "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  # Death signals and the janitor are asynchronous, and a killed process in the middle of
  # an fsync (swtpm saving its state) or an `rm -rf` on a loaded CI disk can take seconds to
  # go. A leak is what is still there after SETTLE_S seconds; the slowest clean-up is
  # reported so a slow one is seen before it becomes a failure.
  waited=0
  while :; do
    left=$(survivors)
    nleft=$(echo "$left" | wc -w)
    ndirs=$(find "$tmp" -mindepth 1 -maxdepth 1 | wc -l)
    { [ "$nleft" -eq 0 ] && [ "$ndirs" -eq 0 ]; } && break
    [ "$waited" -ge $((settle_s * 10)) ] && break
    sleep 0.1; waited=$((waited + 1))
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
echo "orphans: $runs runs, $leaky_runs leaked; processes left: $procs_left; temp entries left: $dirs_left; slowest clean-up: $(awk "BEGIN { print $slowest / 10 }") s (limit ${settle_s} s)"
rm -rf "$root"
[ "$procs_left" -eq 0 ] && [ "$dirs_left" -eq 0 ]
