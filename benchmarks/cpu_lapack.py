"""Which library computes each half of the CPU Gram route faster: torch (MKL) or NumPy (OpenBLAS).

    python3 benchmarks/cpu_lapack.py [--repeats 3] [--sizes 576 1024 1536 2048 2560 3072 4096]

One thread each (the scan runs one single-threaded worker per core). For a k x k Gram matrix of a
(k + 500) x k float64 matrix X, it times XᵀX in torch (`X.mT @ X`) and in NumPy (`X.T @ X`, which
OpenBLAS computes as `syrk`, one triangle), and `eigvalsh` of the result in each, plus LAPACK's
two-stage eigenvalue driver (`dsyevd_2stage`, eigenvalues only) from the OpenBLAS inside NumPy's
wheel where that library exports it. It prints a Markdown table of the fastest of `--repeats` runs;
`spectrum.scoring.svd_torch` follows what it shows (benchmarks/METHODS.md).
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
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


def two_stage_eigvalsh():
    """`dsyevd_2stage` (jobz N) of the OpenBLAS bundled with NumPy's wheel, as a function of a
    float64 matrix; None where no such library or symbol is found (another NumPy build)."""
    libraries = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas64*"))
    try:
        routine = ctypes.CDLL(libraries[0]).scipy_LAPACKE_dsyevd_2stage64_
    except (IndexError, OSError, AttributeError):
        return None
    routine.restype = ctypes.c_int64
    routine.argtypes = [ctypes.c_int, ctypes.c_char, ctypes.c_char, ctypes.c_int64, ctypes.c_void_p,
                        ctypes.c_int64, ctypes.c_void_p]

    def eigenvalues(matrix: np.ndarray) -> np.ndarray:
        work = np.array(matrix, order="C", copy=True)  # overwritten
        values = np.empty(work.shape[0])
        info = routine(101, b"N", b"L", work.shape[0], work.ctypes.data, work.shape[0], values.ctypes.data)
        if info != 0:
            raise RuntimeError(f"dsyevd_2stage: info {info}")
        return values

    return eigenvalues


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[576, 1024, 1536, 2048, 2560, 3072, 4096])
    args = parser.parse_args()
    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")
    print(f"torch {torch.__version__}, numpy {np.__version__}, 1 thread, fastest of {args.repeats}\n")
    two_stage = two_stage_eigvalsh()
    print("| k | XᵀX torch (s) | XᵀX numpy (s) | eigvalsh torch (s) | eigvalsh numpy (s) | two-stage (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    for size in args.sizes:
        x = rng.standard_normal((size + 500, size))
        xt = torch.from_numpy(x)
        gram = x.T @ x
        product_torch = fastest(lambda: xt.mT @ xt, args.repeats)
        product_numpy = fastest(lambda: x.T @ x, args.repeats)
        eig_torch = fastest(lambda: torch.linalg.eigvalsh(torch.from_numpy(gram)), args.repeats)
        eig_numpy = fastest(lambda: np.linalg.eigvalsh(gram), args.repeats)
        eig_two_stage = "–"
        if two_stage is not None:
            difference = np.max(np.abs(two_stage(gram) - np.linalg.eigvalsh(gram))) / np.linalg.norm(gram, 2)
            assert difference < 1e-12, f"two-stage eigenvalues differ by {difference:.1e}"
            eig_two_stage = f"{fastest(lambda: two_stage(gram), args.repeats):.3f}"
        print(f"| {size} | {product_torch:.3f} | {product_numpy:.3f} | {eig_torch:.3f} | {eig_numpy:.3f} | "
              f"{eig_two_stage} |", flush=True)


if __name__ == "__main__":
    main()
