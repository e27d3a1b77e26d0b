#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints, and all tests (unit, property, end to end
# through the emulator, the real alsa-lib through null/FIFO PCMs). No network, no sound card.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Packaging checks need cargo-deb, dpkg-dev and ansible (installed once, idempotently).
scripts/ci-extras.sh
export PATH="$HOME/.local/bin:$HOME/.cargo/bin:$PATH"

export CARGO_TERM_COLOR=never
# --workspace: the firmware and the emulator crate (default-members is the firmware only).
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --all-targets --locked
