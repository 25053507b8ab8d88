# The two commands of the README. Both install missing Debian packages first.
#   make demo   run the scenario catalog against the embedded portal
#   make test   the whole test suite: format, lints, every test
.PHONY: demo test deps bench

# Silence the TSS's own error logging (it logs every refused connection while polling).
export TSS2_LOG ?= all+none

deps:
	@scripts/install-system-deps.sh

demo: deps
	@scripts/demo.sh

test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo nextest run --workspace --locked --no-fail-fast
	cargo test --workspace --doc --locked

bench: deps
	cargo bench -p swtpm -p benches
