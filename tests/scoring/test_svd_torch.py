"""Singular values by each method against float64 LAPACK, on constructed and real matrices."""

import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers import constructed
from reference import reference_score
from spectrum.scoring.svd_torch import resolve_device, singular_values
from spectrum.errors import UsageError
from spectrum.scoring.svd_numpy import resolve_method
from spectrum.scoring.snr import scores_from_singular_values

SHAPES = [(96, 96), (64, 200), (200, 64), (1, 50), (50, 1)]


@pytest.mark.parametrize("method", ["gram", "svd"])
@pytest.mark.parametrize("rows,cols", SHAPES)
def test_methods_agree_with_float64_svd(method, rows, cols):
    for name, matrix in constructed(rows, cols, seed=rows + cols).items():
        expected = np.linalg.svd(matrix.astype(np.float64), compute_uv=False)
        got = singular_values(torch.from_numpy(matrix).unsqueeze(0), method=method)[0].numpy()
        assert got.shape == expected.shape
        assert np.all(np.diff(got) <= 0), "descending"
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * expected[0], err_msg=name)
        score = float(scores_from_singular_values(torch.from_numpy(got).unsqueeze(0), rows, cols)[0])
        assert score == pytest.approx(reference_score(matrix), rel=1e-6), name


def test_stack_equals_single():
    rng = np.random.default_rng(3)
    stack = torch.from_numpy(rng.standard_normal((4, 30, 70)).astype(np.float32))
    together = singular_values(stack, method="gram")
    for index in range(4):
        np.testing.assert_allclose(together[index], singular_values(stack[index : index + 1], method="gram")[0])


def test_bfloat16_is_upcast_exactly(minilm_dir):
    with safe_open(str(minilm_dir / "model.safetensors"), framework="pt") as handle:
        weight = handle.get_tensor("encoder.layer.0.attention.self.query.weight")
    stored = weight.to(torch.bfloat16)
    expected = np.linalg.svd(stored.to(torch.float64).numpy(), compute_uv=False)
    got = singular_values(stored.unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12 * expected[0])


def test_zero_matrix():
    values = singular_values(torch.zeros(1, 5, 8), method="gram")
    assert torch.equal(values, torch.zeros(1, 5, dtype=torch.float64))


def test_device_and_method_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_method("auto", torch.device("cpu")) == "gram"
    with pytest.raises(UsageError):
        resolve_method("qr", torch.device("cpu"))
    with pytest.raises(UsageError):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_cuda_matches_cpu(method):
    matrix = constructed(128, 300, seed=5)["outlier-dominated"]
    stack = torch.from_numpy(matrix).unsqueeze(0).to(torch.bfloat16)
    on_cpu = singular_values(stack, method=method)
    on_gpu = singular_values(stack, method=method, device=torch.device("cuda"))
    np.testing.assert_allclose(on_gpu.numpy(), on_cpu.numpy(), rtol=0, atol=1e-5 * float(on_cpu[0, 0]))
