#!/usr/bin/env python3
"""Summarise a multi-seed `cargo bench --bench pipeline -- adaptive ...` table.

Reads the bench's output on stdin and prints, per profile, format and position in the
sequence (u1, u2, ...), the median and range of ttfa - limit over the seeds, how many runs
had audible silences (and their total length), and the largest share played slowed.

    cargo bench --bench pipeline -- adaptive profiles=wifi,wifi-long formats=opus \
        seeds=1,2,3,4,5,6,7,8 | scripts/sweep-summary.py
"""

import re
import statistics
import sys
from collections import defaultdict

ROW = re.compile(
    r"^(?P<profile>.+?)(?:, seed \d+)?\s+(?P<fmt>opus|pcm|auto)\s+(?P<u>\d+)\s+"
    r"(?P<start>cold|learned)\s+-?\d+\s+-?\d+\s+(?P<over>[+-]\d+)\s+"
    r"(?P<gaps>\d+) \((?P<gap_ms>\d+) ms\)\s+\d+ \(\d+ ms\)\s+(?P<slowed>[\d.]+)%"
)


def main() -> int:
    runs = defaultdict(list)
    for line in sys.stdin:
        m = ROW.match(line.rstrip())
        if m:
            key = (m["profile"].strip(), m["fmt"], int(m["u"]), m["start"])
            runs[key].append(m)
    if not runs:
        print("sweep-summary: no adaptive rows on stdin", file=sys.stderr)
        return 1
    for (profile, fmt, u, start), rows in runs.items():
        over = [int(r["over"]) for r in rows]
        gapped = [r for r in rows if int(r["gaps"]) > 0]
        gap_ms = sum(int(r["gap_ms"]) for r in gapped)
        slowed = max(float(r["slowed"]) for r in rows)
        print(
            f"{profile[:14]:<14} {fmt} u{u} {start:<7}: {len(rows)} seeds, "
            f"median {statistics.median(over):+.0f} range {min(over):+d}..{max(over):+d}, "
            f"gaps {len(gapped)} ({gap_ms} ms), slowed <= {slowed:.1f} %"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
