"""The score formula against an independent float64 NumPy computation."""

import numpy as np
import pytest
import torch

from reference import matrix_with_spectrum, reference_score, reference_score_from_values
from spectrum.scoring.snr import score_from_singular_values, scores_from_singular_values


def spectra(k: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Spectra like trained weights: a few large directions over a noise bulk, and harder shapes."""
    bulk = np.sort(rng.uniform(0.5, 1.5, k))[::-1]
    return {
        "outlier-dominated": np.concatenate([[400.0, 60.0, 20.0], bulk[3:]]),
        "low-rank-plus-noise": np.concatenate([np.linspace(30, 10, 8), 1e-3 * bulk[8:]]),
        "heavy-tailed": np.sort(rng.pareto(1.5, k) + 0.1)[::-1],
        "flat": np.ones(k),
        "marchenko-pastur": np.sort(np.linalg.svd(rng.standard_normal((k, 2 * k)), compute_uv=False))[::-1],
    }


class TestKnownValues:
    def test_hand_computed(self):
        # S = 5,3,2,1,0.5,0.1 for a 6x10 matrix: q25 = 0.625, q75 = 2.75, sigma = 2.125/1.349,
        # threshold = sigma * (1 + sqrt(0.6)) = 2.7973...: signal = 5+3 = 8, noise = 2+1+0.5+0.1 = 3.6.
        values = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
        assert score_from_singular_values(values, 6, 10) == pytest.approx(8 / 3.6 / 5, rel=1e-15)

    def test_no_noise_uses_one(self):
        # Equal singular values: sigma = 0, threshold = 0, every value is signal, noise = 1.0.
        values = torch.full((4,), 2.0, dtype=torch.float64)
        assert score_from_singular_values(values, 4, 4) == pytest.approx(8.0 / 1.0 / 2.0)

    def test_all_zero_scores_zero(self):
        assert score_from_singular_values(torch.zeros(5, dtype=torch.float64), 5, 7) == 0.0

    def test_rank_deficient_is_finite(self):
        # More than 3/4 of the values are exactly 0: threshold 0, noise sums to 0 -> 1.0.
        values = torch.tensor([3.0, 2.0] + [0.0] * 8, dtype=torch.float64)
        score = score_from_singular_values(values, 10, 10)
        assert np.isfinite(score) and score == pytest.approx(5.0 / 1.0 / 3.0)


@pytest.mark.parametrize("rows,cols", [(64, 64), (48, 160), (160, 48), (1, 32), (32, 1)])
def test_constructed_spectra_match_numpy(rows, cols):
    rng = np.random.default_rng(rows * 1000 + cols)
    k = min(rows, cols)
    for name, values in spectra(k, rng).items():
        expected = reference_score_from_values(values, rows, cols)
        got = score_from_singular_values(torch.from_numpy(values.copy()), rows, cols)
        assert got == pytest.approx(expected, rel=1e-12), name


def test_batch_equals_one_by_one():
    rng = np.random.default_rng(1)
    batch = np.stack([np.sort(rng.gamma(2.0, 1.0, 40))[::-1] for _ in range(7)])
    together = scores_from_singular_values(torch.from_numpy(batch), 40, 90)
    for row, score in zip(batch, together):
        assert float(score) == pytest.approx(reference_score_from_values(row, 40, 90), rel=1e-12)


def test_matrix_reference_is_consistent():
    """The test helper's matrix has the spectrum it was built with (guards the reference itself)."""
    values = np.linspace(10, 1, 20)
    matrix = matrix_with_spectrum(values, 20, 50)
    assert reference_score(matrix) == pytest.approx(reference_score_from_values(values, 20, 50), rel=1e-10)


def test_non_finite_singular_values_give_nan_not_a_score():
    """A row whose singular values are not all finite has no score (NaN: the scanner leaves it out);
    the other rows of the batch are scored as alone."""
    good = np.array([3.0, 1.0, 0.5, 0.25])
    batch = np.stack([good, [np.inf, 1.0, 0.5, 0.25], [np.nan, 1.0, 0.5, 0.25]])
    scores = scores_from_singular_values(batch, 8, 4)
    assert scores[0] == scores_from_singular_values(good[None], 8, 4)[0] and np.isnan(scores[1:]).all()


@pytest.mark.parametrize("threshold", ["marchenko-pastur", "gavish-donoho"])
def test_singular_values_near_float64s_largest_are_scored_without_a_warning(threshold):
    """Singular values near 1e308 (float64 weights near 1e306) whose sums leave float64: scored all the
    same, as the same spectrum scaled down is (the score scales as 1 / S[0]), and NumPy warns of nothing."""
    import warnings

    rng = np.random.default_rng(3)
    batch = np.stack(list(spectra(16, rng).values()))  # (5, 16) descending
    batch = batch / batch[:, :1] * 8.0  # each S[0] = 8: times 2^1020 is 8.99e307, whose 16 values sum past 1.8e308
    scale = 2.0**1020
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NumPy RuntimeWarning fails the test
        scaled = scores_from_singular_values(batch * scale, 16, 40, threshold=threshold)
    # Scaling by a power of two is exact in every step: a score halves when the values double, or stays
    # as it is where no value is noise (the reference's noise of 1.0 makes it scale-free) or it is 0.
    plain = scores_from_singular_values(batch, 16, 40, threshold=threshold)
    doubled = scores_from_singular_values(batch * 2.0, 16, 40, threshold=threshold)
    scale_free = doubled == plain
    assert (doubled[~scale_free] == plain[~scale_free] / 2).all() and (~scale_free).sum() >= 2
    assert scaled == pytest.approx(np.where(scale_free, plain, plain / scale), rel=1e-14, abs=0)
