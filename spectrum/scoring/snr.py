"""The Spectrum score of a weight matrix, from its singular values. Pure math: no files, no devices.

For W of shape (m, n) with singular values S (descending), following the reference
implementation (Hartford et al., arXiv 2406.06623):

    sigma     = (q75(S) - q25(S)) / 1.349           # noise scale from the interquartile range
    threshold = sigma * (1 + sqrt(min(m,n)/max(m,n)))  # Marchenko-Pastur bulk edge
    signal    = sum(S[S >  threshold])
    noise     = sum(S[S <= threshold])   (1.0 when that set is empty, or sums to 0)
    score     = signal / noise / S[0]    (0.0 for an all-zero matrix)

Quantiles use linear interpolation (numpy's default, as the reference).

`threshold="gavish-donoho"` (opt-in, a departure from the reference) replaces the threshold with
the optimal hard threshold for an unknown noise level of Gavish & Donoho ("The Optimal Hard
Threshold for Singular Values is 4/sqrt(3)", IEEE Trans. Inf. Theory 60(8), 2014; arXiv 1305.5870):

    threshold = omega(beta) * median(S),  beta = min(m,n)/max(m,n)
    omega(beta) ~= 0.56 beta^3 - 0.95 beta^2 + 1.82 beta + 1.43   # the paper's cubic fit

Signal, noise and the score are then computed as above.
"""

from __future__ import annotations

import math

import numpy as np

from ..scores import DEFAULT_THRESHOLD, THRESHOLDS

IQR_TO_SIGMA = 1.349  # interquartile range of a standard normal distribution


def mp_threshold(sigma, rows: int, cols: int):
    """Marchenko-Pastur threshold for singular values of an (rows, cols) noise matrix of scale sigma."""
    beta = min(rows, cols) / max(rows, cols)
    return sigma * (1.0 + math.sqrt(beta))


def gd_threshold(median, rows: int, cols: int):
    """Gavish-Donoho threshold omega(beta) * median(S) for singular values of an (rows, cols) matrix."""
    return median * gavish_donoho_omega(min(rows, cols) / max(rows, cols))


def scores_from_singular_values(singular_values, rows: int, cols: int, *, threshold: str = DEFAULT_THRESHOLD) -> np.ndarray:
    """Scores of a batch of (rows, cols) matrices from their singular values.

    Args:
        singular_values: (N, k) with k = min(rows, cols), each row sorted descending: a NumPy
            array or a CPU torch tensor.
        rows, cols: the matrices' shape (only the aspect ratio matters).
        threshold: "marchenko-pastur" (the reference's rule) or "gavish-donoho".

    Returns:
        (N,) float64 scores: finite, or NaN for a row whose singular values are not all finite
        (no score: the caller leaves that matrix out).
    """
    if threshold not in THRESHOLDS:
        raise ValueError(f"threshold must be one of {', '.join(THRESHOLDS)}, not {threshold!r}")
    S = np.asarray(singular_values, dtype=np.float64)  # (N, k)
    finite = np.isfinite(S).all(axis=1)  # (N,)
    if not finite.all():
        with np.errstate(invalid="ignore", over="ignore"):
            scores = scores_from_singular_values(np.where(finite[:, None], S, 0.0), rows, cols, threshold=threshold)
        return np.where(finite, scores, np.nan)
    largest = S[:, 0]  # (N,)
    huge = largest > np.finfo(np.float64).max / (S.shape[1] + 3)  # (N,) sums or threshold could leave float64
    if huge.any():
        scores = np.empty(len(S))
        scores[~huge] = scores_from_singular_values(S[~huge], rows, cols, threshold=threshold)
        scores[huge] = _scores_in_units_of_largest(S[huge], rows, cols, threshold)
        return scores
    signal, noise = _signal_and_noise(S, rows, cols, threshold)
    # The reference uses 1.0 when no value is noise; a zero noise sum (exactly rank-deficient
    # matrix) would make the score infinite, so it gets the same rule.
    noise = np.where(noise > 0, noise, 1.0)
    safe_largest = np.where(largest > 0, largest, 1.0)
    with np.errstate(over="ignore"):  # a score beyond float64 (tiny subnormal weights) is inf: the scan says so
        return np.where(largest > 0, signal / noise / safe_largest, 0.0)


def _signal_and_noise(S: np.ndarray, rows: int, cols: int, threshold: str) -> tuple[np.ndarray, np.ndarray]:
    """(N,) sums of the singular values above the threshold (signal) and of the rest (noise)."""
    if threshold == "gavish-donoho":
        median = np.quantile(S, 0.5, axis=1)  # (N,) interpolated (linear), as the reference's numpy median
        cut = gd_threshold(median, rows, cols)[:, None]  # (N, 1)
    else:
        q25, q75 = np.quantile(S, [0.25, 0.75], axis=1)  # (N,) each, linear interpolation
        sigma = (q75 - q25) / IQR_TO_SIGMA  # (N,)
        cut = mp_threshold(sigma, rows, cols)[:, None]  # (N, 1)
    is_signal = S > cut  # (N, k)
    return np.where(is_signal, S, 0.0).sum(axis=1), np.where(is_signal, 0.0, S).sum(axis=1)


def _scores_in_units_of_largest(S: np.ndarray, rows: int, cols: int, threshold: str) -> np.ndarray:
    """Scores of rows whose largest singular value is within a factor k + 3 of float64's largest (float64
    weights near 1e306), where the sums or the threshold would overflow: the same formula on S / S[0],
    whose threshold and sums are those of S in units of S[0]. signal / noise / S[0] is then
    (signal / S[0]) / (noise / S[0]) / S[0], and with no noise (the reference's 1.0) signal / S[0]."""
    largest = S[:, 0]  # (M,)
    signal, noise = _signal_and_noise(S / largest[:, None], rows, cols, threshold)  # in units of S[0]
    return np.where(noise > 0, signal / np.where(noise > 0, noise, 1.0) / largest, signal)


def score_from_singular_values(singular_values, rows: int, cols: int, *, threshold: str = DEFAULT_THRESHOLD) -> float:
    """Score of one matrix from its (k,) descending singular values."""
    values = np.asarray(singular_values, dtype=np.float64)[None, :]
    return float(scores_from_singular_values(values, rows, cols, threshold=threshold)[0])


def gavish_donoho_omega(beta: float) -> float:
    """omega(beta), the multiple of median(S) that is the optimal hard threshold when the noise level is unknown.

    The cubic approximation from Gavish & Donoho (2014), for the aspect ratio 0 < beta <= 1;
    omega(1) ~= 2.86.
    """
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
