#!/usr/bin/env bash
# Installs what building and testing herald needs on Debian / Raspberry Pi OS, skipping
# whatever is already there. Safe to run repeatedly.
set -euo pipefail

# Build: alsa-lib, libopus and libsonic (the time-stretcher, src/audio/stretch.rs; linked
# by every binary of the crate, so nothing links without it) headers. Tests: espeak-ng (the
# emulator's voice, and herald's own fallback voice, a program it runs: tests/fallback.rs;
# no -dev package, nothing links it), opus-tools and sox (fixtures), alsa-utils (aplay for
# manual checks), systemd (systemd-analyze), snapserver and snapclient (tests/snapcast.rs:
# house-wide announcements through real Snapcast 0.26 on loopback).
PKGS=(pkg-config libasound2-dev libopus-dev libsonic-dev espeak-ng opus-tools sox alsa-utils ca-certificates systemd snapserver snapclient)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain; install one with rustup (https://rustup.rs), then re-run" >&2
  exit 1
fi
