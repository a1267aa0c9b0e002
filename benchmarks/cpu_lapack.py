"""Which library computes each half of the CPU Gram route faster: torch (MKL) or NumPy (OpenBLAS).

    python3 benchmarks/cpu_lapack.py [--repeats 3] [--sizes 576 1024 1536 2048 2560 3072 4096]

One thread each (the scan runs one single-threaded worker per core). For a k x k Gram matrix of a
(k + 500) x k float64 matrix X, it times XᵀX in torch (`X.mT @ X`) and in NumPy (`X.T @ X`, which
OpenBLAS computes as `syrk`, one triangle), and `eigvalsh` of the result in each. It prints a
Markdown table of the fastest of `--repeats` runs; `spectrum.engine` follows what it shows
(benchmarks/METHODS.md).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits


def fastest(function, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[576, 1024, 1536, 2048, 2560, 3072, 4096])
    args = parser.parse_args()
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 thread, fastest of {args.repeats}\n")
    print("| k | XᵀX torch (s) | XᵀX numpy (s) | eigvalsh torch (s) | eigvalsh numpy (s) |")
    print("|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        x = rng.standard_normal((size + 500, size))
        xt = torch.from_numpy(x)
        gram = x.T @ x
        product_torch = fastest(lambda: xt.mT @ xt, args.repeats)
        product_numpy = fastest(lambda: x.T @ x, args.repeats)
        eig_torch = fastest(lambda: torch.linalg.eigvalsh(torch.from_numpy(gram)), args.repeats)
        eig_numpy = fastest(lambda: np.linalg.eigvalsh(gram), args.repeats)
        print(f"| {size} | {product_torch:.3f} | {product_numpy:.3f} | {eig_torch:.3f} | {eig_numpy:.3f} |", flush=True)


if __name__ == "__main__":
    main()
