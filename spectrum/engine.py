"""Singular values of a stack of same-shape matrices, on one device.

Two exact methods:
- "gram": eigenvalues of the float64 Gram matrix of the smaller side, S = sqrt(max(lambda, 0)).
  The float32 weights are exact in float64, so the result agrees with a float64 SVD to
  about 1e-13 relative, and on CPU it is several times faster than an SVD. Only the lower
  triangle is built, in column blocks (eigvalsh reads nothing else): ~44% fewer flops.
- "svd": float64 `torch.linalg.svdvals` on the tall orientation (the same singular values;
  LAPACK is faster on tall matrices than on wide ones).
Neither computes in float32: a float32 SVD is off by ~1e-7 * S[0] in every value, which moves the
noise sum of a matrix with one dominant direction by more than 1e-6 relative, and a float32 Gram
matrix squares the condition number and loses the small values entirely.
"""

from __future__ import annotations

import torch

from .errors import UsageError

METHODS = ("auto", "gram", "svd")
_GRAM_BLOCKS = 8  # column blocks of the lower-triangle Gram: 56% of the full product's flops


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


def lower_gram(tall: torch.Tensor, blocks: int = _GRAM_BLOCKS) -> torch.Tensor:
    """XᵀX for tall (N, m, n) X, with only the lower triangle (and diagonal blocks) filled."""
    count, _, n = tall.shape
    gram = torch.zeros(count, n, n, dtype=tall.dtype, device=tall.device)  # (N, n, n)
    blocks = max(1, min(blocks, n // 256))  # small matrices: one block, no overhead
    edges = [n * i // blocks for i in range(blocks + 1)]
    for start, stop in zip(edges, edges[1:]):
        # rows start:stop of the Gram, columns 0:stop (the diagonal block and everything left of it)
        gram[:, start:stop, :stop] = tall[:, :, start:stop].mT @ tall[:, :, :stop]  # (N, b, stop)
    return gram


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
    tall = _tall(stack.to(device)).to(torch.float64)  # (N, m', n') with m' >= n'
    if method == "gram":
        if device.type == "cuda":
            gram = tall.mT @ tall  # (N, n', n'); one launch beats the blocked saving on GPU
        else:
            gram = lower_gram(tall)  # (N, n', n'), lower triangle
        del tall
        eigenvalues = torch.linalg.eigvalsh(gram)  # (N, n') ascending; reads the lower triangle
        values = eigenvalues.flip(-1).clamp_min(0.0).sqrt()
    elif method == "svd":
        values = torch.linalg.svdvals(tall)  # (N, n') descending
    else:
        raise UsageError(f"unknown method {method!r}; use gram or svd")
    return values.cpu()
