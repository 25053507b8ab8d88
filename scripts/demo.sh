#!/usr/bin/env bash
# The main job: build in release mode and run the scenario catalog against the embedded
# portal (the harness starts the portal-under-test binary itself).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p harness -p portal-under-test
exec target/release/harness run scenarios/ "$@"
