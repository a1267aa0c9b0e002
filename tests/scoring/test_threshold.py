"""--threshold gavish-donoho: the formula against an independent NumPy computation, and a cache made with one
threshold never answering a request for the other."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from helpers import load_json
from reference import reference_score_from_values
from spectrum.scoring.snr import gavish_donoho_omega, score_from_singular_values, scores_from_singular_values
from spectrum.workflow import load_or_scan


def gd_reference_score(values: np.ndarray, rows: int, cols: int) -> float:
    """The score with the Gavish-Donoho cut, written from the formula: omega(beta) * median(S)."""
    s = np.sort(np.asarray(values, dtype=np.float64))[::-1]
    beta = min(rows, cols) / max(rows, cols)
    omega = 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43
    cut = omega * np.median(s)
    signal, noise_values = s[s > cut].sum(), s[s <= cut]
    noise = noise_values.sum() if noise_values.size and noise_values.sum() > 0 else 1.0
    return float(signal / noise / s[0]) if s[0] > 0 else 0.0


def exact_omega(beta: float) -> float:
    """omega(beta) = lambda*(beta) / sqrt(median of the Marchenko-Pastur law), by numerical integration."""
    low, high = (1 - np.sqrt(beta)) ** 2, (1 + np.sqrt(beta)) ** 2
    x = np.linspace(low, high, 2_000_001)[1:-1]  # (the density is infinite at 0 when beta = 1)
    density = np.sqrt((high - x) * (x - low)) / (2 * np.pi * beta * x)
    cumulative = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(x))])
    median = np.interp(0.5, cumulative / cumulative[-1], x)
    optimal = np.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + np.sqrt(beta**2 + 14 * beta + 1)))
    return float(optimal / np.sqrt(median))


@pytest.mark.parametrize("beta", [0.1, 0.25, 0.5, 0.75, 1.0])
def test_omega_is_the_papers_fit(beta):
    # The cubic is the paper's fit of the exact omega(beta); omega(1) = 2.858 in the paper's Table.
    assert gavish_donoho_omega(beta) == pytest.approx(0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43, abs=1e-15)
    assert abs(gavish_donoho_omega(beta) - exact_omega(beta)) < 0.01


def test_hand_computed():
    # S = 5,3,2,1,0.5,0.1 for a 6x10 matrix: median = 1.5, beta = 0.6,
    # omega = 0.56*0.216 - 0.95*0.36 + 1.82*0.6 + 1.43 = 2.30296, cut = 3.45444: signal = 5, noise = 6.6.
    values = torch.tensor([5.0, 3.0, 2.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    assert score_from_singular_values(values, 6, 10, threshold="gavish-donoho") == pytest.approx(5 / 6.6 / 5, rel=1e-15)
    # The default is untouched: the reference rule's value for the same spectrum.
    assert score_from_singular_values(values, 6, 10) == pytest.approx(8 / 3.6 / 5, rel=1e-15)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (80, 48), (33, 200), (7, 5)])
def test_against_numpy(shape):
    rows, cols = shape
    k = min(shape)
    rng = np.random.default_rng(k)
    spectra = np.stack([
        np.sort(np.linalg.svd(rng.standard_normal(shape), compute_uv=False))[::-1],  # pure noise
        np.sort(np.concatenate([rng.uniform(5, 40, 3), rng.uniform(0.1, 1.0, k - 3)]))[::-1],  # signal + noise
        np.sort(rng.pareto(1.5, k) + 0.1)[::-1],  # heavy-tailed
        np.ones(k),  # flat: nothing above the cut
    ])
    got = scores_from_singular_values(torch.from_numpy(spectra), rows, cols, threshold="gavish-donoho")
    expected = [gd_reference_score(values, rows, cols) for values in spectra]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)
    default = scores_from_singular_values(torch.from_numpy(spectra), rows, cols)
    np.testing.assert_allclose(default, [reference_score_from_values(v, rows, cols) for v in spectra], rtol=1e-12)


def test_unknown_threshold():
    with pytest.raises(ValueError, match="gavish-donoho"):
        scores_from_singular_values(torch.ones(1, 3, dtype=torch.float64), 3, 3, threshold="mp")


def test_cache_of_another_threshold_is_not_reused(tiny_llama_dir, tmp_path):
    cache = str(tmp_path / "cache")
    model = tmp_path / "weights"
    shutil.copytree(tiny_llama_dir, model)

    default = load_or_scan(str(model), cache_dir=cache, name="t", threads=1)
    assert default.scanned and default.scores.meta["threshold"] == "marchenko-pastur"
    gd = load_or_scan(str(model), cache_dir=cache, name="t", threads=1, threshold="gavish-donoho")
    assert gd.scanned, "a cache made with the default threshold must not answer gavish-donoho"
    assert load_json(tmp_path / "cache" / "snr_results_t.meta.json")["threshold"] == "gavish-donoho"
    assert set(gd.scores.entries) == set(default.scores.entries)
    assert any(gd.scores.entries[m].snr != default.scores.entries[m].snr for m in gd.scores.entries)
    assert load_or_scan(str(model), cache_dir=cache, name="t", threshold="gavish-donoho").scanned is False

    again = load_or_scan(str(model), cache_dir=cache, name="t", threads=1)
    assert again.scanned, "a cache made with gavish-donoho must not answer the default"
    assert {m: s.snr for m, s in again.scores.entries.items()} == {m: s.snr for m, s in default.scores.entries.items()}
