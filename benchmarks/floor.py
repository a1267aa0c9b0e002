"""The compute floor of a scan on this machine: what the math alone costs, with no reading or Python.

    python3 benchmarks/floor.py CASE|DIR [--threads N] [--repeats 1]

Lists the matrices a default scan of the checkpoint scores (its headers only), times one matrix
of each distinct shape through `spectrum.scoring.svd_torch.singular_values` (the Gram route on CPU, one
single-threaded call, as a scan worker runs it; random bf16 values cost the same as trained
ones), and prints a Markdown table: per shape, the count, seconds per matrix and core-seconds;
then the sum, and the floor = sum / N workers, the shortest a scan with N workers can take here.
Compare it with the scan time that `run.py` records (the sidecar's `seconds`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

import checkpoints  # noqa: E402 (the benchmark cases)
from spectrum.scoring.svd_torch import singular_values  # noqa: E402
from spectrum.scoring.inventory import default_type_filter, take_inventory  # noqa: E402
from spectrum.sources import open_source  # noqa: E402


def shape_counts(model: str) -> Counter:
    """(rows, cols) -> how many matrices of that shape a default scan scores."""
    source = open_source(model)
    try:
        inventory = take_inventory(source.tensors())
    finally:
        source.close()
    wanted = default_type_filter(inventory)
    return Counter(tuple(matrix.shape) for matrix in inventory.matrices if wanted(matrix.type))


def seconds_per_matrix(shape: tuple[int, int], repeats: int) -> float:
    """Median seconds of one single-threaded Gram-route call on a random bf16 matrix of `shape`."""
    matrix = torch.randn(shape).to(torch.bfloat16).unsqueeze(0)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        singular_values(matrix, method="gram", device=torch.device("cpu"))
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", help=f"a benchmark case ({', '.join(checkpoints.CASES)}) or a checkpoint folder")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="workers (default: every core)")
    parser.add_argument("--repeats", type=int, default=1, help="timed calls per shape (default: 1)")
    args = parser.parse_args()
    model = str(checkpoints.ensure(args.case)) if args.case in checkpoints.CASES else args.case

    counts = shape_counts(model)
    torch.set_num_threads(1)
    rows = []
    with threadpool_limits(limits=1, user_api="blas"):
        for shape, count in sorted(counts.items(), key=lambda item: -item[0][0] * item[0][1]):
            seconds = seconds_per_matrix(shape, args.repeats)
            rows.append((shape, count, seconds))
            print(f"{shape[0]}x{shape[1]}: {seconds:.3f} s", file=sys.stderr, flush=True)
    total = sum(count * seconds for _, count, seconds in rows)
    print(f"Compute floor of `{args.case}` ({sum(counts.values())} matrices), one single-threaded Gram-route "
          f"call per matrix, median of {args.repeats}:\n")
    print("| shape | matrices | s per matrix | core-s |")
    print("|---|---:|---:|---:|")
    for shape, count, seconds in rows:
        print(f"| {shape[0]}×{shape[1]} | {count} | {seconds:.3f} | {count * seconds:.1f} |")
    print(f"| **sum** | {sum(counts.values())} | | **{total:.1f}** |")
    floor = total / args.threads
    minutes = f" ({floor / 60:.1f} min)" if floor >= 60 else ""
    print(f"\nFloor with {args.threads} worker(s): {floor:.1f} s{minutes}.")


if __name__ == "__main__":
    main()
