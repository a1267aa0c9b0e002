"""The torch-free CPU route: NumPy reads of stored weights, the blocked float64 Gram matrix, and
the singular values, against float64 LAPACK and against the torch route."""

import threading

import numpy as np
import pytest
import torch

from reference import reference_score
from spectrum.scoring import svd_numpy as host
from spectrum.scoring.svd_torch import singular_values
from spectrum.scoring.svd_numpy import gram_matrix, keep_gram_buffers
from spectrum.sources.dtypes import StoredArray
from spectrum.scoring.snr import scores_from_singular_values
from helpers import constructed


def stored(matrix: torch.Tensor) -> StoredArray:
    """A torch tensor's bytes as the NumPy array a safetensors read gives."""
    name = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64"}[matrix.dtype]
    raw = matrix.contiguous().view(torch.uint8).numpy().tobytes()
    return StoredArray.from_bytes(bytearray(raw), name, tuple(matrix.shape))


def test_every_bfloat16_bit_pattern_converts_as_torch_does():
    bits = np.arange(1 << 16, dtype=np.uint16)
    out = np.empty(bits.shape)
    StoredArray(bits, "BF16").to_float64(out)
    expected = torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16).to(torch.float64).numpy()
    np.testing.assert_array_equal(out, expected)  # NaNs in the same places, every other value exact


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("rows,cols", [(96, 40), (40, 96), (50, 50)])
def test_singular_values_agree_with_float64_svd(dtype, rows, cols):
    for name, matrix in constructed(rows, cols, seed=rows + 2 * cols).items():
        weight = torch.from_numpy(matrix).to(dtype)
        exact = weight.to(torch.float64).numpy()
        expected = np.linalg.svd(exact, compute_uv=False)
        got = host.singular_values(stored(weight))
        assert got.shape == expected.shape and np.all(np.diff(got) <= 0), name
        # narrow dtypes leave values near 0, where sqrt(lambda) is good to ~sqrt(eps64) * S[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7 * expected[0], err_msg=name)
        score = float(scores_from_singular_values(got[None, :], rows, cols)[0])
        assert score == pytest.approx(reference_score(exact), rel=1e-6), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64])
def test_same_values_as_the_torch_route(dtype):
    weight = torch.from_numpy(constructed(120, 48, seed=5)["outlier-dominated"]).to(dtype)
    np.testing.assert_allclose(host.singular_values(stored(weight)), singular_values(weight.unsqueeze(0))[0].numpy(),
                               rtol=1e-14, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_entries_give_none(dtype, bad):
    for shape in [(30, 8), (8, 30)]:
        weight = torch.ones(shape, dtype=torch.float64)
        weight[3, 5] = bad
        assert host.singular_values(stored(weight.to(dtype))) is None


@pytest.mark.parametrize("rows,cols", [(203, 17), (17, 203), (64, 64)])
def test_gram_in_blocks_equals_one_product(monkeypatch, rows, cols):
    """Blocks of five rows (columns of a wide matrix), the last one short, sum to the whole Gram
    matrix; the outlier-dominated spectrum survives the sum."""
    monkeypatch.setattr(host, "_GRAM_BLOCK_BYTES", 8 * min(rows, cols) * 5)
    for name, matrix in constructed(rows, cols, seed=rows * cols).items():
        weight = torch.from_numpy(matrix).to(torch.bfloat16)
        exact = weight.to(torch.float64).numpy()
        expected_gram = exact.T @ exact if rows >= cols else exact @ exact.T
        np.testing.assert_allclose(gram_matrix(stored(weight)), expected_gram, rtol=0,
                                   atol=1e-14 * np.abs(expected_gram).max(), err_msg=name)
        got = host.singular_values(stored(weight))
        score = float(scores_from_singular_values(got[None, :], rows, cols)[0])
        assert score == pytest.approx(reference_score(exact), rel=1e-6), name


def test_gram_buffers_follow_the_shape():
    """A scan worker reuses its buffers for one shape and replaces them for the next, with right
    results; any other thread gets fresh arrays, so nothing outlives its call."""
    rng = np.random.default_rng(11)
    matrices = [rng.standard_normal(shape) for shape in [(40, 12), (40, 12), (12, 40), (7, 7), (40, 12)]]
    results = []

    def worker():
        keep_gram_buffers()
        for matrix in matrices:
            gram = gram_matrix(StoredArray(matrix, "F64"))
            results.append((id(gram), gram.copy()))

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    for matrix, (_, gram) in zip(matrices, results):
        expected = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
        np.testing.assert_allclose(gram, expected, rtol=1e-13, atol=1e-13)
    assert results[0][0] == results[1][0]  # the same buffer for the same shape
    first = gram_matrix(StoredArray(matrices[0], "F64"))
    assert gram_matrix(StoredArray(matrices[0], "F64")) is not first  # this thread keeps nothing


def test_experts_index_the_stored_array():
    fused = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    expert = StoredArray(fused, "F32")[1]
    assert expert.shape == (3, 4) and expert.dtype == "F32" and expert.nbytes == 48
    np.testing.assert_array_equal(expert.values, fused[1])


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-170, 1e160, 1e300])
def test_float64_far_outside_the_squares_range_scores_exactly(scale, tmp_path):
    """The Gram route squares the entries: float64 weights below about 1e-154 or above 1e154 are scaled
    by a power of two first (exactly) on every route, where they used to score 0 or be left out."""
    from safetensors.numpy import save_file

    from spectrum.scoring.checkpoint import scan

    matrix = constructed(40, 24, seed=3)["outlier-dominated"].astype(np.float64) * scale
    expected = reference_score(matrix)
    assert host.extreme_exponent(matrix) != 0
    by_host = host.singular_values(StoredArray(matrix, "F64"))
    assert scores_from_singular_values(by_host[None], 40, 24)[0] == pytest.approx(expected, rel=1e-9)
    for method in ("gram", "svd"):
        by_torch = singular_values(torch.from_numpy(matrix)[None], method=method)
        assert scores_from_singular_values(by_torch, 40, 24)[0] == pytest.approx(expected, rel=1e-9), method
    save_file({"model.layers.0.mlp.up_proj.weight": matrix}, str(tmp_path / "model.safetensors"))
    scores = scan(str(tmp_path), device="cpu")
    assert scores.entries["model.layers.0.mlp.up_proj"].snr == pytest.approx(expected, rel=1e-9)


def test_ordinary_float64_is_not_rescaled():
    for scale in (1e-60, 1.0, 1e60):
        assert host.extreme_exponent(np.full((3, 2), scale)) == 0
    assert host.extreme_exponent(np.zeros((3, 2))) == 0


def test_singular_values_beyond_float64_are_left_out_by_name(tmp_path, caplog):
    import logging

    from safetensors.numpy import save_file

    from spectrum.scoring.checkpoint import scan

    huge = np.full((64, 32), 1e308)  # finite entries; the largest singular value is 4.5e309
    save_file({"model.layers.0.mlp.up_proj.weight": huge, "model.layers.1.mlp.up_proj.weight": np.eye(64, 32)},
              str(tmp_path / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="spectrum"):
        scores = scan(str(tmp_path), device="cpu")
    assert list(scores.entries) == ["model.layers.1.mlp.up_proj"]
    assert caplog.messages == ["model.layers.0.mlp.up_proj.weight has singular values beyond float64's range; "
                               "left out of the scores"]
