#!/usr/bin/env bash
# The main job: build in release mode and run the scenario catalog against the embedded
# portal (the harness starts the portal-under-test binary itself), with cryptsetup and
# dislocker judging every recovery password the portal hands out against the device's
# real BitLocker volume image (both are installed by scripts/install-system-deps.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p harness -p portal-under-test
exec target/release/harness run scenarios/ --check-volume-with cryptsetup,dislocker "$@"
