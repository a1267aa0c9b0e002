"""The Spectrum score of a weight matrix, from its singular values. Pure math: no files, no devices.

For W of shape (m, n) with singular values S (descending), following the reference
implementation (Hartford et al., arXiv 2406.06623):

    sigma     = (q75(S) - q25(S)) / 1.349           # noise scale from the interquartile range
    threshold = sigma * (1 + sqrt(min(m,n)/max(m,n)))  # Marchenko-Pastur bulk edge
    signal    = sum(S[S >  threshold])
    noise     = sum(S[S <= threshold])   (1.0 when that set is empty, or sums to 0)
    score     = signal / noise / S[0]    (0.0 for an all-zero matrix)

Quantiles use linear interpolation (numpy's and torch's default).

`threshold="gavish-donoho"` (opt-in, a departure from the reference) replaces the threshold with
the optimal hard threshold for an unknown noise level of Gavish & Donoho ("The Optimal Hard
Threshold for Singular Values is 4/sqrt(3)", IEEE Trans. Inf. Theory 60(8), 2014; arXiv 1305.5870):

    threshold = omega(beta) * median(S),  beta = min(m,n)/max(m,n)
    omega(beta) ~= 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43   # the paper's cubic fit

Signal, noise and the score are then computed as above.
"""

from __future__ import annotations

import math

import torch

from .thresholds import DEFAULT_THRESHOLD, THRESHOLDS, gavish_donoho_omega

IQR_TO_SIGMA = 1.349  # interquartile range of a standard normal distribution


def mp_threshold(sigma: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Marchenko-Pastur threshold for singular values of an (rows, cols) noise matrix of scale sigma."""
    beta = min(rows, cols) / max(rows, cols)
    return sigma * (1.0 + math.sqrt(beta))


def gd_threshold(median: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """Gavish-Donoho threshold omega(beta) * median(S) for singular values of an (rows, cols) matrix."""
    return median * gavish_donoho_omega(min(rows, cols) / max(rows, cols))


@torch.no_grad()
def scores_from_singular_values(
    singular_values: torch.Tensor, rows: int, cols: int, *, threshold: str = DEFAULT_THRESHOLD
) -> torch.Tensor:
    """Scores of a batch of (rows, cols) matrices from their singular values.

    Args:
        singular_values: (N, k) with k = min(rows, cols), each row sorted descending.
        rows, cols: the matrices' shape (only the aspect ratio matters).
        threshold: "marchenko-pastur" (the reference's rule) or "gavish-donoho".

    Returns:
        (N,) float64 scores, always finite.
    """
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {', '.join(THRESHOLDS)}, not {threshold!r}")
    S = singular_values.to(torch.float64)  # (N, k)
    largest = S[:, 0]  # (N,)
    if threshold == "gavish-donoho":
        median = torch.quantile(S, 0.5, dim=1)  # (N,) interpolated, as numpy's median (torch.median is the lower)
        cut = gd_threshold(median, rows, cols).unsqueeze(1)  # (N, 1)
    else:
        quartiles = torch.quantile(S, torch.tensor([0.25, 0.75], dtype=S.dtype, device=S.device), dim=1)  # (2, N)
        sigma = (quartiles[1] - quartiles[0]) / IQR_TO_SIGMA  # (N,)
        cut = mp_threshold(sigma, rows, cols).unsqueeze(1)  # (N, 1)
    is_signal = S > cut  # (N, k)
    zero = torch.zeros((), dtype=S.dtype, device=S.device)
    signal = torch.where(is_signal, S, zero).sum(dim=1)
    noise = torch.where(is_signal, zero, S).sum(dim=1)
    # The reference uses 1.0 when no value is noise; a zero noise sum (exactly rank-deficient
    # matrix) would make the score infinite, so it gets the same rule.
    noise = torch.where(noise > 0, noise, torch.ones_like(noise))
    safe_largest = torch.where(largest > 0, largest, torch.ones_like(largest))
    return torch.where(largest > 0, signal / noise / safe_largest, zero)


def score_from_singular_values(
    singular_values: torch.Tensor, rows: int, cols: int, *, threshold: str = DEFAULT_THRESHOLD
) -> float:
    """Score of one matrix from its (k,) descending singular values."""
    return float(scores_from_singular_values(singular_values.unsqueeze(0), rows, cols, threshold=threshold)[0])
