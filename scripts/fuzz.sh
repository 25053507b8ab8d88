#!/usr/bin/env bash
# Runs every cargo-fuzz target of the harness (harness/fuzz) and of the portal
# (portal-under-test/fuzz) for SECS seconds each (default 600), one after another, niced.
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`); `make test` needs
# neither (its stable pass replays the corpora: the fuzz_replay tests). New inputs go to a
# scratch corpus under target/fuzz/, never into the committed seeds. Prints one line a
# target: executions, coverage, time, and whether it crashed (the crash file stays in
# the fuzz crate's artifacts/ dir).
#   scripts/fuzz.sh [SECS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
secs=${1:-600}
shift || true
declare -A crate_of=(
  [fve_metadata]=harness/fuzz [tcg_parse]=harness/fuzz
  [recovery_password]=harness/fuzz [scenario_yaml]=harness/fuzz
  [key_id_input]=portal-under-test/fuzz [import_lines]=portal-under-test/fuzz
  [http_bodies]=portal-under-test/fuzz
)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(recovery_password scenario_yaml key_id_input import_lines http_bodies fve_metadata tcg_parse)
mkdir -p target/fuzz
status=0
for t in "${targets[@]}"; do
  crate=${crate_of[$t]:?unknown fuzz target $t}
  scratch=$root/target/fuzz/corpus-$t
  log=$root/target/fuzz/$t.log
  mkdir -p "$scratch"
  # -s none: no sanitizer (safe Rust; a panic is the crash). -O: release, as libFuzzer wants.
  if (cd "$crate" && nice -n 19 cargo +nightly fuzz run -O -s none "$t" "$scratch" "corpus/$t" -- \
      -max_total_time="$secs" -print_final_stats=1) >"$log" 2>&1; then
    result=ok
  else
    result="CRASHED (see $log)"
    status=1
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' || echo '?')
  echo "fuzz $t: $execs executions in ${took}s, coverage $cov edges, $result"
done
exit $status
