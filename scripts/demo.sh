#!/usr/bin/env bash
# The main job: build herald and speak a sentence on the default ALSA device.
# With OPENAI_API_KEY set it talks to OpenAI; otherwise it starts the bundled emulator on
# 127.0.0.1. Without a sound card it writes demo.wav instead.
#   scripts/demo.sh ["Text to speak"]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
TEXT=${1:-"Hello from herald. Dinner is ready."}

# The emulator is its own workspace crate (emulator/). Two builds, not one `-p herald -p
# herald-emulator`: built together, cargo would unify their features (hyper's server side)
# into the herald binary, which would then not be the one that ships.
cargo build --release --locked -p herald
cargo build --release --locked -p herald-emulator
BIN=target/release

OUT_ARGS=()
if ! aplay -l >/dev/null 2>&1 || ! aplay -l 2>/dev/null | grep -q '^card'; then
  echo "demo: no sound card found, writing demo.wav instead"
  OUT_ARGS=(--out demo.wav)
fi

if [ -n "${OPENAI_API_KEY:-}" ]; then
  echo "demo: speaking through OpenAI"
  exec "$BIN/herald" speak "${OUT_ARGS[@]}" "$TEXT"
fi

echo "demo: OPENAI_API_KEY is not set, using the local emulator"
KEY=sk-herald-demo
TMP=$(mktemp -d)
"$BIN/herald-emulator" --listen 127.0.0.1:0 --key "$KEY" >"$TMP/url" 2>"$TMP/emulator.log" &
EMU=$!
trap 'kill $EMU 2>/dev/null || true; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do [ -s "$TMP/url" ] && break; sleep 0.1; done
BASE=$(head -1 "$TMP/url")
OPENAI_API_KEY=$KEY "$BIN/herald" speak --api-base "$BASE" "${OUT_ARGS[@]}" "$TEXT"
