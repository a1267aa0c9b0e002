"""The CPU Gram route in NumPy, on weights as stored: no torch.

A CPU scan of safetensors weights in float64/32/16 or bfloat16 whose matrices are all under 2048
on their short side (where NumPy's OpenBLAS `eigvalsh` is the faster one) never imports torch:
the bytes are read into NumPy, converted to float64 a block at a time, and each block's Gram
matrix is one OpenBLAS `syrk`. That saves torch's import (about 2 s and 200 MB here) on every
such scan. `spectrum.scoring.svd_torch` uses the same blocked Gram matrix for torch tensors on CPU.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from ..errors import UsageError
from ..sources.dtypes import StoredArray

METHODS = ("auto", "gram", "svd")
NUMPY_EIGVALSH_BELOW = 2048  # CPU: NumPy's (OpenBLAS) eigvalsh is faster below this size, torch's (MKL) from it up
_GRAM_BLOCK_BYTES = 64 << 20  # float64 bytes of one block of the matrix, converted at a time
_buffers = threading.local()  # a scan worker's buffers, reused from one matrix to the next


def resolve_method(method: str, device: object = None) -> str:
    """The concrete method for `auto`.

    The float64 Gram route was faster than the float64 SVD on every shape measured, on CPU
    (benchmarks/METHODS.md has the figures) and is exact, so `auto` is always "gram".
    """
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not known; use one of {', '.join(METHODS)}")
    return "gram" if method == "auto" else method


def keep_gram_buffers() -> None:
    """Let this thread keep its Gram buffers between matrices (a scan's workers do: no fresh
    pages per matrix). Other threads allocate them per call, so nothing outlives the call."""
    _buffers.keep = True
    _buffers.by_shape = {}


def cpu_threads_limited():
    """A context in which NumPy's BLAS runs one thread per call (restored after), for single-threaded workers."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


def _gram_buffers(k: int, long: int, bf16: bool) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, int]:
    """(flat float64 block, flat uint32 scratch for bfloat16 or None, Gram matrix, partial Gram, block
    length) for the k x k Grams of matrices whose long side is `long`."""
    step = max(1, min(long, _GRAM_BLOCK_BYTES // (8 * k)))
    key = (k, step, bf16)
    kept = _buffers.by_shape if getattr(_buffers, "keep", False) else {}
    if key not in kept:
        kept.clear()  # one shape at a time: a worker holds at most one set
        bits = np.empty(k * step, dtype=np.uint32) if bf16 else None
        kept[key] = (np.empty(k * step), bits, np.empty((k, k)), np.empty((k, k)))
    flat, bits, gram, part = kept[key]
    return flat, bits, gram, part, step


def gram_matrix(matrix: StoredArray) -> np.ndarray:
    """The float64 Gram matrix of the smaller side of one (m, n) matrix: W^T W when m >= n, else W W^T.

    The matrix is converted to float64 a block at a time (rows of a tall matrix, columns of a wide
    one; about 64 MB each) and the blocks' Grams, one OpenBLAS `syrk` each, are summed, so a
    128256 x 4096 embedding needs 64 MB of float64 rather than 4.2 GB. In a thread that keeps its
    buffers (`keep_gram_buffers`) the result is one of them, valid until the thread's next call.
    """
    rows, cols = matrix.shape
    tall = rows >= cols
    k, long = (cols, rows) if tall else (rows, cols)
    flat, bits, gram, part, step = _gram_buffers(k, long, matrix.dtype == "BF16")
    for start in range(0, long, step):
        width = min(step, long - start)
        shape = (width, k) if tall else (k, width)  # rows start:start+width, or those columns
        block = flat[: width * k].reshape(shape)
        piece = matrix[start : start + width] if tall else matrix[:, start : start + width]
        piece.to_float64(block, None if bits is None else bits[: width * k].reshape(shape))
        left, right = (block.T, block) if tall else (block, block.T)
        with np.errstate(over="ignore", invalid="ignore"):  # NaN or inf entries: found from the Gram diagonal
            np.matmul(left, right, out=gram if start == 0 else part)  # one syrk: NumPy sees A^T A / A A^T
            if start:
                gram += part
    return gram


def singular_values(matrix: StoredArray) -> np.ndarray | None:
    """All singular values of one matrix by the float64 Gram route, descending, (min(m, n),); None when
    the matrix has NaN or infinite entries (its Gram diagonal, the squared norms of every row or
    column, then is not finite).

    Uses NumPy's `eigvalsh`: meant for k < NUMPY_EIGVALSH_BELOW, where it is the faster library
    (`spectrum.scoring.svd_torch` takes torch's from there up). The caller limits OpenBLAS to one thread.
    """
    if matrix.dtype == "F64":
        largest = _largest_magnitude(matrix.values)
        if not math.isfinite(largest):
            return None  # float64 squares could overflow: look at the entries themselves
        exponent = _exponent_if_extreme(largest)
        if exponent:  # squares would leave float64's range: scale by a power of two, exactly
            values = singular_values(StoredArray(np.ldexp(matrix.values, -exponent), "F64"))
            if values is None:
                return None
            with np.errstate(over="ignore"):  # beyond float64: inf, and the scan leaves the matrix out
                return np.ldexp(values, exponent)
    gram = gram_matrix(matrix)
    if not np.isfinite(np.diagonal(gram)).all():
        return None
    return values_from_gram(gram)


SAFE_EXPONENT = 256  # float64 entries of magnitude 2^±256 and within square (and sum) well inside its range


def extreme_exponent(values: np.ndarray) -> int:
    """0, or the binary exponent e of a float64 matrix's largest |entry| when its squares would under- or
    overflow float64 (|e| > SAFE_EXPONENT): the Gram route then works on the matrix times 2^-e
    (exact) and multiplies the singular values by 2^e. The stored 16- and 32-bit floats never need it."""
    return _exponent_if_extreme(_largest_magnitude(values))


def _largest_magnitude(values: np.ndarray) -> float:
    """max |entry| (NaN or inf when an entry is), 0 for an empty matrix."""
    return float(np.max(np.abs(values))) if values.size else 0.0


def _exponent_if_extreme(largest: float) -> int:
    if largest == 0.0:
        return 0
    exponent = int(np.frexp(largest)[1])
    return exponent if abs(exponent) > SAFE_EXPONENT else 0


def values_from_gram(gram: np.ndarray) -> np.ndarray:
    """Singular values from a float64 Gram matrix by NumPy's `eigvalsh`: sqrt(max(lambda, 0)), descending."""
    eigenvalues = np.linalg.eigvalsh(gram)  # ascending; gram is copied first
    return np.sqrt(np.maximum(eigenvalues[::-1], 0.0))
