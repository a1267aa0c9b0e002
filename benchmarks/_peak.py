"""A benchmark child's own peak resident set, printed on stderr for `run.py`.

`os.wait4`'s `ru_maxrss` is not enough: at `exec` Linux folds the high-water mark of the memory
the child was forked (or vforked) from, the parent's, into it, so every child of a parent that
imported torch reported at least the parent's ~300 MB. `VmHWM` in `/proc/self/status` belongs to
the process's own memory since `exec`.
"""

from __future__ import annotations

import sys

PEAK_RSS_PREFIX = "BENCH_PEAK_RSS_BYTES="


def report_peak_rss() -> None:
    """Print `BENCH_PEAK_RSS_BYTES=<VmHWM in bytes>` on stderr (Linux; nothing elsewhere)."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    print(f"{PEAK_RSS_PREFIX}{int(line.split()[1]) * 1024}", file=sys.stderr)
                    return
    except OSError:
        pass
