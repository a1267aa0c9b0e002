"""Singular values of a stack of same-shape matrices, on one device.

Two exact methods:
- "gram": eigenvalues of the float64 Gram matrix of the smaller side, S = sqrt(max(lambda, 0)).
  The float32 weights are exact in float64, so the result agrees with a float64 SVD to
  about 1e-13 relative, and on CPU it is several times faster than an SVD.
  On CPU the Gram matrix is summed over blocks of about 64 MB of float64, one NumPy `syrk` each
  (OpenBLAS builds one triangle: half the flops, and about 2x faster here than torch's matmul,
  whose MKL takes a generic path on AMD CPUs), in buffers each worker reuses; its
  eigenvalues come from NumPy's `eigvalsh` below 2048 rows and torch's (MKL) from 2048 up, the
  faster of the two on each side of that size (benchmarks/METHODS.md). On CUDA it is one batched
  matmul and `eigvalsh` in torch.
- "svd": float64 `torch.linalg.svdvals` on the tall orientation (the same singular values;
  LAPACK is faster on tall matrices than on wide ones).
Neither computes in float32: a float32 SVD is off by ~1e-7 * S[0] in every value, which moves the
noise sum of a matrix with one dominant direction by more than 1e-6 relative, and a float32 Gram
matrix squares the condition number and loses the small values entirely.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import numpy as np

from .errors import UsageError

METHODS = ("auto", "gram", "svd")
_NUMPY_EIGVALSH_BELOW = 2048  # CPU: NumPy's (OpenBLAS) eigvalsh is faster below this size, torch's (MKL) from it up


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when available, else CPU; `cpu`, `cuda`, `cuda:N` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UsageError(f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name} asked for CUDA, but no CUDA GPU is available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def resolve_method(method: str, device: torch.device) -> str:
    """The concrete method for `auto`.

    The float64 Gram route was faster than the float64 SVD on every shape measured, on CPU
    (benchmarks/README.md has the figures) and is exact, so `auto` is always "gram".
    """
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not known; use one of {', '.join(METHODS)}")
    return "gram" if method == "auto" else method


def _tall(matrices: torch.Tensor) -> torch.Tensor:
    """(N, m, n) -> the same matrices with m >= n (a transposed view where needed)."""
    rows, cols = matrices.shape[-2:]
    return matrices if rows >= cols else matrices.mT


@torch.no_grad()
def singular_values(stack: torch.Tensor, *, method: str = "gram", device: torch.device | None = None) -> torch.Tensor:
    """All singular values of each matrix in `stack`.

    Args:
        stack: (N, m, n) floating-point matrices in their stored dtype; moved to `device` as
            stored (bf16 stays 2 bytes on the wire) and converted there.
        method: "gram" or "svd" (see the module docstring).
        device: where to compute; defaults to the stack's device.

    Returns:
        (N, min(m, n)) float64 on the CPU, each row descending.
    """
    device = device or stack.device
    if method == "gram" and device.type == "cpu":
        return torch.stack([_gram_values_cpu(matrix) for matrix in stack])  # (N, min(m, n))
    tall = _tall(stack.to(device)).to(torch.float64)  # (N, m', n') with m' >= n'
    if method == "gram":
        gram = tall.mT @ tall  # (N, n', n'); one launch beats the blocked saving on GPU
        del tall
        eigenvalues = torch.linalg.eigvalsh(gram)  # (N, n') ascending; reads the lower triangle
        values = eigenvalues.flip(-1).clamp_min(0.0).sqrt()
    elif method == "svd":
        values = torch.linalg.svdvals(tall)  # (N, n') descending
    else:
        raise UsageError(f"unknown method {method!r}; use gram or svd")
    return values.cpu()


_GRAM_BLOCK_BYTES = 64 << 20  # CPU: float64 bytes of one block of the matrix, converted at a time
_buffers = threading.local()  # a scan worker's float64 buffers, reused from one matrix to the next


def keep_gram_buffers() -> None:
    """Let this thread keep its CPU Gram buffers between matrices (a scan's workers do: no fresh
    pages per matrix). Other threads allocate them per call, so nothing outlives the call."""
    _buffers.keep = True
    _buffers.by_shape = {}


def _gram_buffers(k: int, long: int) -> tuple[torch.Tensor, "np.ndarray", "np.ndarray", int]:
    """(flat conversion buffer, Gram matrix, partial Gram, block length) for k x k Grams of a
    matrix whose long side is `long`."""
    import numpy as np

    step = max(1, min(long, _GRAM_BLOCK_BYTES // (8 * k)))
    key = (k, step)
    kept = _buffers.by_shape if getattr(_buffers, "keep", False) else {}
    if key not in kept:
        kept.clear()  # one shape at a time: a worker holds at most one set
        kept[key] = (torch.empty(k * step, dtype=torch.float64), np.empty((k, k)), np.empty((k, k)))
    flat, gram, part = kept[key]
    return flat, gram, part, step


def gram_matrix_cpu(matrix: torch.Tensor) -> "np.ndarray":
    """The float64 Gram matrix of the smaller side of one (m, n) matrix: W^T W when m >= n, else W W^T.

    The matrix is converted to float64 a block at a time (rows of a tall matrix, columns of a wide
    one; about 64 MB each) and the blocks' Grams, one OpenBLAS `syrk` each, are summed, so a
    128256 x 4096 embedding needs 64 MB of float64 rather than 4.2 GB. In a thread that keeps its
    buffers (`keep_gram_buffers`) the result is one of them, valid until the thread's next call.
    """
    import numpy as np

    rows, cols = matrix.shape
    tall = rows >= cols
    k, long = (cols, rows) if tall else (rows, cols)
    flat, gram, part, step = _gram_buffers(k, long)
    for start in range(0, long, step):
        width = min(step, long - start)
        if tall:
            block = flat[: width * k].view(width, k)  # rows start:start+width, contiguous
            block.copy_(matrix[start : start + width])
            a = block.numpy()
            np.matmul(a.T, a, out=gram if start == 0 else part)  # syrk
        else:
            block = flat[: k * width].view(k, width)  # columns start:start+width, contiguous
            block.copy_(matrix[:, start : start + width])
            a = block.numpy()
            np.matmul(a, a.T, out=gram if start == 0 else part)  # syrk
        if start:
            gram += part
    return gram


def _gram_values_cpu(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of one (m, n) matrix by the float64 Gram route on CPU, descending, (min(m, n),).

    The caller limits OpenBLAS to one thread per call (`cpu_threads_limited`): parallelism comes
    from the workers.
    """
    import numpy as np

    gram = gram_matrix_cpu(matrix)  # (k, k), k = min(m, n)
    if gram.shape[0] < _NUMPY_EIGVALSH_BELOW:
        eigenvalues = torch.from_numpy(np.linalg.eigvalsh(gram))  # ascending; gram is copied first
    else:
        eigenvalues = torch.linalg.eigvalsh(torch.from_numpy(gram))  # copies too: the buffer stays intact
    return eigenvalues.flip(-1).clamp_min(0.0).sqrt()


def cpu_threads_limited():
    """A context in which NumPy's BLAS runs one thread per call (restored after), for single-threaded workers."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")
