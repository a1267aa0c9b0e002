"""Singular values of a stack of same-shape torch tensors, on one device (CUDA, or CPU for sources
that read torch tensors and for matrices of 2048 and more; the rest of CPU scans use
`spectrum.scoring.svd_numpy`, without torch).

Two exact methods:
- "gram": eigenvalues of the float64 Gram matrix of the smaller side, S = sqrt(max(lambda, 0)).
  The float32 weights are exact in float64, so the result agrees with a float64 SVD to
  about 1e-13 relative, and on CPU it is several times faster than an SVD.
  On CPU the Gram matrix is `spectrum.scoring.svd_numpy.gram_matrix`: summed over blocks of about 64 MB of
  float64, one NumPy `syrk` each (OpenBLAS builds one triangle: half the flops, and about 2x
  faster here than torch's matmul, whose MKL takes a generic path on AMD CPUs); its
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

import numpy as np
import torch

from ..errors import UsageError
from ..sources.dtypes import StoredArray
from .svd_numpy import NUMPY_EIGVALSH_BELOW, SAFE_EXPONENT, gram_matrix, values_from_gram


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
    exponents = _extreme_exponents(stack)  # None for 16/32-bit floats and float64 of ordinary size
    if exponents is None:
        return _singular_values(stack, method, device)
    values = _singular_values(_times_power_of_two(stack, -exponents), method, device)
    return _times_power_of_two(values, exponents.cpu())


def _extreme_exponents(stack: torch.Tensor) -> torch.Tensor | None:
    """(N,) binary exponents of float64 matrices whose squares would leave float64's range, 0 for the
    others (see `spectrum.scoring.svd_numpy.extreme_exponent`); None when there is none."""
    if stack.dtype != torch.float64 or stack.numel() == 0:
        return None
    largest = stack.abs().amax(dim=(-2, -1))  # (N,)
    exponent = torch.frexp(largest).exponent.to(torch.int64)
    extreme = (exponent.abs() > SAFE_EXPONENT) & (largest > 0) & torch.isfinite(largest)
    if not bool(extreme.any()):
        return None
    return torch.where(extreme, exponent, torch.zeros_like(exponent))


def _times_power_of_two(values: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """values[i] * 2^exponents[i], exactly: in two halves, so that no factor itself over- or underflows."""
    shape = (-1,) + (1,) * (values.dim() - 1)
    half = torch.div(exponents, 2, rounding_mode="floor")
    for part in (half, exponents - half):
        values = values * torch.exp2(part.to(values.dtype)).view(shape)
    return values


def _singular_values(stack: torch.Tensor, method: str, device: torch.device) -> torch.Tensor:
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


def _stored_array(matrix: torch.Tensor) -> StoredArray:
    """A CPU tensor as NumPy, sharing its memory (bfloat16 as its bits)."""
    if matrix.dtype == torch.bfloat16:
        return StoredArray(matrix.view(torch.int16).numpy().view(np.uint16), "BF16")
    if matrix.dtype not in (torch.float16, torch.float32, torch.float64):
        matrix = matrix.to(torch.float32)  # exact for the narrower floats (dequantized weights are float32 already)
    return StoredArray(matrix.numpy(), {torch.float16: "F16", torch.float32: "F32", torch.float64: "F64"}[matrix.dtype])


def _gram_values_cpu(matrix: torch.Tensor) -> torch.Tensor:
    """Singular values of one (m, n) matrix by the float64 Gram route on CPU, descending, (min(m, n),).

    The caller limits OpenBLAS to one thread per call (`cpu_threads_limited`): parallelism comes
    from the workers.
    """
    gram = gram_matrix(_stored_array(matrix))  # (k, k), k = min(m, n), in blocks (spectrum.scoring.svd_numpy)
    if gram.shape[0] < NUMPY_EIGVALSH_BELOW:
        return torch.from_numpy(values_from_gram(gram).copy())
    eigenvalues = torch.linalg.eigvalsh(torch.from_numpy(gram))  # ascending; copies: the buffer stays intact
    return eigenvalues.flip(-1).clamp_min(0.0).sqrt()
