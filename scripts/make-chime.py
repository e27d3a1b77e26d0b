#!/usr/bin/env python3
"""Makes herald's default chime, deploy/chimes/ding.wav: a two-note "ding-dong" synthesised
here from sines (so the sound and its licence are the project's own), 48 kHz mono 16-bit.

The first note starts at full level after a 3 ms attack (a chime exists to be heard at once:
no leading silence); each note decays exponentially; the whole is under a second so the
speech fetched meanwhile is usually ready when it ends. Deterministic: the same bytes on
every run (tests/package.rs checks the committed file against this script).

Usage: scripts/make-chime.py [OUT.wav]
"""
import math
import struct
import sys
import wave

RATE = 48_000
PEAK = 0.5  # -6 dBFS: room for the volume curve, no clipping after resampling
ATTACK_S = 0.003
LENGTH_S = 0.9
# (start s, fundamental Hz): E6 then C6, a falling major third like a door chime.
NOTES = [(0.0, 1318.51), (0.28, 1046.50)]
# Partials of a struck bar: (ratio to the fundamental, relative level, decay time s).
PARTIALS = [(1.0, 1.0, 0.30), (2.0, 0.25, 0.12), (3.0, 0.08, 0.06)]


def sample(t):
    v = 0.0
    for start, f in NOTES:
        dt = t - start
        if dt < 0:
            continue
        env = min(1.0, dt / ATTACK_S)
        for ratio, level, tau in PARTIALS:
            v += env * level * math.exp(-dt / tau) * math.sin(2 * math.pi * f * ratio * dt)
    return v


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "deploy/chimes/ding.wav"
    n = int(RATE * LENGTH_S)
    raw = [sample(i / RATE) for i in range(n)]
    scale = PEAK / max(abs(x) for x in raw)
    # A 20 ms fade to zero at the end: no click where the file stops.
    fade = int(RATE * 0.02)
    frames = bytearray()
    for i, x in enumerate(raw):
        g = min(1.0, (n - 1 - i) / fade)
        frames += struct.pack("<h", int(round(x * scale * g * 32767)))
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(bytes(frames))


if __name__ == "__main__":
    main()
