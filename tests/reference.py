"""An independent float64 NumPy computation of the Spectrum score, for the tests to compare against."""

from __future__ import annotations

import numpy as np


def reference_score_from_values(singular_values: np.ndarray, rows: int, cols: int) -> float:
    """The score from singular values, written directly from the formula in issue 2."""
    s = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]
    if s[0] == 0:
        return 0.0
    q25, q75 = np.quantile(s, [0.25, 0.75])
    sigma = (q75 - q25) / 1.349
    beta = min(rows, cols) / max(rows, cols)
    threshold = sigma * (1 + np.sqrt(beta))
    signal = s[s > threshold].sum()
    noise_values = s[s <= threshold]
    noise = noise_values.sum() if noise_values.size and noise_values.sum() > 0 else 1.0
    return float(signal / noise / s[0])


def reference_score(matrix: np.ndarray) -> float:
    """The score of a matrix, from a float64 LAPACK SVD."""
    matrix = np.asarray(matrix, dtype=np.float64)
    values = np.linalg.svd(matrix, compute_uv=False)
    return reference_score_from_values(values, *matrix.shape)


def matrix_with_spectrum(values: np.ndarray, rows: int, cols: int, seed: int = 0) -> np.ndarray:
    """A (rows, cols) float64 matrix with exactly these singular values (random orthogonal factors)."""
    rng = np.random.default_rng(seed)
    k = min(rows, cols)
    assert len(values) == k
    left, _ = np.linalg.qr(rng.standard_normal((rows, k)))
    right, _ = np.linalg.qr(rng.standard_normal((cols, k)))
    return (left * np.asarray(values, dtype=np.float64)) @ right.T
