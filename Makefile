# The two commands of the README. Both install missing Debian packages first.
#   make demo   run the scenario catalog against the embedded portal
#   make test   the whole test suite: format, lints, every test
.PHONY: demo test deps bench mutants firmware-lab import-crash fuzz faults orphans

# Silence the TSS's own error logging (it logs every refused connection while polling).
export TSS2_LOG ?= all+none

deps:
	@scripts/install-system-deps.sh

demo: deps
	@scripts/demo.sh $(ARGS)

# The harness's gate test runs the catalog against a portal built with fault points, and the
# portal's own fault tests (portal-under-test/tests/it/faults.rs, compiled only with the
# feature) run in that build; it lives in its own target dir so the default portal binary
# stays fault-free. Only the fault tests run there: the rest of the portal suite runs once,
# in the default build, below.
FAILPOINTS_TARGET := target/failpoints

# nextest runs last so its summary closes the output. The portal's suite runs twice: on
# SQLite with the rest, then on PostgreSQL (a private cluster scripts/with-postgres.sh starts
# and always stops; no PostgreSQL installed is an error, never a skip). `--workspace` with a
# filter, not `-p`: the same feature set as the first run, so nothing is rebuilt. The fault
# tests run on both engines too, in the failpoints build.
#
# The replica tests (portal-under-test/tests/it/replicas.rs: several `serve` processes on one
# database; harness/tests/it/replicas.rs: the harness gating them) need PostgreSQL, so they
# run only in the PostgreSQL run; the one that restarts the server runs alone, on a cluster
# of its own (~30 s for all of them).
#
# scripts/schemathesis.sh fuzzes the live portal's JSON API against openapi.json
# (schemathesis pinned, seed and examples fixed in scripts/schemathesis.toml; ~30 s).
#
# The mutation test of the runner (harness/tests/it/mutants.rs) plays its mutants with the
# release harness and portal: `make test` runs one mutant per stated expectation,
# `make mutants` every mutant. Both print the counts and keep the mutants in target/mutants/.
RELEASE_BUILD := cargo build --release --locked -p harness -p portal-under-test
# --workspace: the same features, so the same test build as the run above (no rebuild).
MUTANTS := cargo nextest run --workspace --locked --run-ignored ignored-only --no-capture -E

test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --workspace --doc --locked
	cargo build -p portal-under-test --features failpoints --target-dir $(FAILPOINTS_TARGET) --locked
	cargo nextest run -p portal-under-test --features failpoints --target-dir $(FAILPOINTS_TARGET) \
	  --locked --no-fail-fast -E 'test(/^faults::/)'
	PORTAL_FAILPOINTS_BIN=$(CURDIR)/$(FAILPOINTS_TARGET)/debug/portal-under-test \
	  cargo nextest run --workspace --locked --no-fail-fast -E 'not test(/^replicas::/)'
	scripts/schemathesis.sh
	$(RELEASE_BUILD)
	$(MUTANTS) 'test(=mutants::one_mutant_per_field_fails_at_its_step)'
	PORTAL_TEST_ENGINE=postgres scripts/with-postgres.sh \
	  cargo nextest run --workspace --locked --no-fail-fast \
	  -E '(package(portal-under-test) & not test(/^replicas::pg_restart_/)) | (package(harness) & test(/^replicas::/))'
	PORTAL_TEST_ENGINE=postgres scripts/with-postgres.sh \
	  cargo nextest run --workspace --locked --no-fail-fast -E 'test(/^replicas::pg_restart_/)'
	PORTAL_TEST_ENGINE=postgres scripts/with-postgres.sh \
	  cargo nextest run -p portal-under-test --features failpoints --target-dir $(FAILPOINTS_TARGET) \
	  --locked --no-fail-fast -E 'test(/^faults::/)'

mutants: deps
	$(RELEASE_BUILD)
	$(MUTANTS) 'test(=mutants::every_mutant_fails_at_its_step)'

bench: deps
	cargo bench -p swtpm -p benches

# Real firmware (crates/firmware-boot, device::real_firmware): boot every change (db/dbx
# update, Secure Boot off, another OVMF build, an option ROM, the boot order, the loader
# configuration) under QEMU + OVMF on a swtpm, one boot at a time, and write the
# model-vs-reality table to target/firmware-lab/table.md (about 10 boots of 15-40 s); then
# the crate's own three-boot test (the kept TPM state). `make test` plays the real-firmware
# scenarios (harness run --filter tag:real-firmware) instead.
firmware-lab: deps
	cargo run --locked -p device --example firmware-lab -- matrix --out target/firmware-lab
	cargo nextest run --workspace --locked --run-ignored ignored-only \
	  -E 'package(firmware-boot) & test(/^real_firmware_/)'

# The import crash test at full size (make test runs it at 100k keys and 5 kills, debug
# build): 1M keys, 20 SIGKILLs of the release `portal-under-test import`, then the store is
# opened and must hold none or all of the keys; on SQLite, then on PostgreSQL.
IMPORT_CRASH := IMPORT_CRASH_KEYS=1000000 IMPORT_CRASH_KILLS=20 \
  PORTAL_IMPORT_BIN=$(CURDIR)/target/release/portal-under-test \
  cargo nextest run -p portal-under-test --locked --no-capture \
  -E 'test(=import_crash::a_killed_import_leaves_none_or_all_of_the_keys)'

import-crash: deps
	cargo build --release --locked -p portal-under-test
	$(IMPORT_CRASH)
	PORTAL_TEST_ENGINE=postgres scripts/with-postgres.sh $(IMPORT_CRASH)

# Every cargo-fuzz target (harness/fuzz, portal-under-test/fuzz) for FUZZ_SECS each (600: the
# issue's 10 minutes), one after another; needs nightly and cargo-fuzz (`cargo install
# cargo-fuzz`). `make test` needs neither: its stable pass is the fuzz_replay tests (every
# committed seed, then a bounded proptest of mutated seeds, through the targets' own check
# functions). Prints executions and coverage a target.
FUZZ_SECS ?= 600
fuzz: deps
	scripts/fuzz.sh $(FUZZ_SECS)

# The fault tests at full size (make test runs them small): 20 SIGKILLs of the portal during
# escrow and help desk lookup traffic, on SQLite, then on PostgreSQL.
KILL_TRAFFIC := PORTAL_KILLS=20 cargo nextest run -p portal-under-test --locked --no-capture \
  -E 'test(=kill_traffic::a_killed_portal_keeps_every_acknowledged_key_and_every_shown_keys_audit_row)'

faults: deps
	$(KILL_TRAFFIC)
	PORTAL_TEST_ENGINE=postgres scripts/with-postgres.sh $(KILL_TRAFFIC)

# 1,000 `harness run`s of one short scenario, each SIGKILLed or SIGINTed at a seeded random
# moment, and 50 of a self-service scenario played in Chromium (make test runs 50 and 5):
# no process left (swtpm, portal, chromedriver, Chromium), no temporary directory left.
orphans: deps
	HARNESS_ORPHAN_RUNS=1000 HARNESS_ORPHAN_BROWSER_RUNS=50 cargo nextest run --workspace --profile orphans \
	  --locked --no-capture -E 'test(/^orphans::killed_/)'

# `harness fleet` at the BENCHMARKS.md size (issue 26): 10,000 devices escrowing and 1,000
# concurrent recoveries against the embedded portal on SQLite (`fleet-pg`: on a throw-away
# PostgreSQL cluster), release build; `fleet-soak`: the 10-minute soak. `make test` runs
# the 200-device / 20-recovery version and a 1-minute soak (harness/tests/it/fleet.rs).
FLEET := target/release/harness fleet --devices 10000 --recoveries 1000 -j 64 --seed 26
.PHONY: fleet fleet-pg fleet-soak
fleet: deps
	cargo build --release --locked -p harness -p portal-under-test
	$(FLEET) --json target/fleet.json --junit target/fleet.xml --html target/fleet-html $(ARGS)
fleet-pg: deps
	cargo build --release --locked -p harness -p portal-under-test
	scripts/with-postgres.sh sh -c '$(FLEET) --json target/fleet-pg.json \
	  --database-url "$$PORTAL_TEST_PG_URL" $(ARGS)'
fleet-soak: deps
	cargo build --release --locked -p harness -p portal-under-test
	target/release/harness fleet --devices 1000 --recoveries 100 -j 64 --duration 10m --seed 27 \
	  --json target/fleet-soak.json --html target/fleet-soak-html $(ARGS)
