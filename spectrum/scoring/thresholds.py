"""The names of the signal/noise thresholds (no torch here: the CLI's cached path reads them)."""

from __future__ import annotations

DEFAULT_THRESHOLD = "marchenko-pastur"  # the reference's rule
THRESHOLDS = (DEFAULT_THRESHOLD, "gavish-donoho")


def gavish_donoho_omega(beta: float) -> float:
    """omega(beta), the multiple of median(S) that is the optimal hard threshold when the noise level is unknown.

    The cubic approximation from Gavish & Donoho (2014), for the aspect ratio 0 < beta <= 1;
    omega(1) ~= 2.86.
    """
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
