"""`spectrum ARGS...` as a benchmark child: the same entry point as the console script, run with the
benchmark's interpreter (no launcher shim in the measurement), plus its own peak RSS and the peak CUDA memory on stderr.

    python3 benchmarks/_spectrum_child.py --model DIR --rescan --quiet ...
"""

from __future__ import annotations

import sys

from _peak import report_peak_rss
from spectrum.cli import main

if __name__ == "__main__":
    code = main(sys.argv[1:])
    torch = sys.modules.get("torch")  # a scan that never imported torch used no GPU either
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        peak = sum(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count()))
        print(f"BENCH_PEAK_CUDA_BYTES={peak}", file=sys.stderr)
    report_peak_rss()
    sys.exit(code)
