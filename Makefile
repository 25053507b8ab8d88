# The two commands of the README. Both install missing Debian packages first.
#   make demo   run the scenario catalog against the embedded portal
#   make test   the whole test suite: format, lints, every test
.PHONY: demo test deps bench

# Silence the TSS's own error logging (it logs every refused connection while polling).
export TSS2_LOG ?= all+none

deps:
	@scripts/install-system-deps.sh

demo: deps
	@scripts/demo.sh $(ARGS)

# The harness's gate test runs the catalog against a portal built with fault points; that
# build lives in its own target dir so the default portal binary stays fault-free.
FAILPOINTS_TARGET := target/failpoints

# nextest runs last so its summary closes the output. The portal's suite runs twice: on
# SQLite with the rest, then on PostgreSQL (a private cluster scripts/with-postgres.sh starts
# and always stops; no PostgreSQL installed is an error, never a skip). `--workspace` with a
# filter, not `-p`: the same feature set as the first run, so nothing is rebuilt.
test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo test --workspace --doc --locked
	cargo build -p portal-under-test --features failpoints --target-dir $(FAILPOINTS_TARGET) --locked
	PORTAL_FAILPOINTS_BIN=$(CURDIR)/$(FAILPOINTS_TARGET)/debug/portal-under-test \
	  cargo nextest run --workspace --locked --no-fail-fast
	PORTAL_TEST_ENGINE=postgres scripts/with-postgres.sh \
	  cargo nextest run --workspace --locked --no-fail-fast -E 'package(portal-under-test)'

bench: deps
	cargo bench -p swtpm -p benches
