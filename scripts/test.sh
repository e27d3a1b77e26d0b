#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and all tests (unit, property, end to end
# through the emulator, the real alsa-lib through null/FIFO PCMs). No network, no sound card.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
