"""Scans of real and written checkpoints against the float64 NumPy reference."""

import logging
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from reference import reference_score
from spectrum.errors import SpectrumError, UsageError
from spectrum.scoring.checkpoint import scan, take_inventory
from spectrum.cache.staleness import merge, missing_types
from spectrum.scores import ModuleScore, Scores
from spectrum.sources import open_source

MINILM_TYPES = [
    "attention.output.dense",
    "attention.self.key",
    "attention.self.query",
    "attention.self.value",
    "intermediate.dense",
    "output.dense",
]


def stored_weights(path) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file as float64, read by the safetensors library itself."""
    with safe_open(str(path), framework="pt") as handle:
        return {name: handle.get_tensor(name).to(torch.float64).numpy() for name in handle.keys()}


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_real_minilm_matches_reference(minilm_dir, method):
    scores = scan(str(minilm_dir), device="cpu", method=method)
    weights = stored_weights(minilm_dir / "model.safetensors")
    assert scores.types() == MINILM_TYPES
    assert len(scores.entries) == 36
    for module, score in scores.entries.items():
        assert score.snr == pytest.approx(reference_score(weights[module + ".weight"]), rel=1e-9), module
    # File order: by type, then by layer number.
    assert list(scores.entries)[:2] == ["encoder.layer.0.attention.output.dense", "encoder.layer.1.attention.output.dense"]
    assert scores.meta["embeddings"] == {"input": "embeddings.word_embeddings.weight", "output": None}
    assert scores.meta["method"] == method and scores.meta["device"] == "cpu"


def test_selection_is_identical_across_methods_and_workers(minilm_dir, tiny_llama_dir):
    for model in (minilm_dir, tiny_llama_dir):
        runs = [scan(str(model), device="cpu", method=method, threads=threads)
                for method, threads in (("gram", 1), ("svd", 2), ("auto", 2))]
        for percent in ("10", "25", "50", "75"):
            selections = [run.select(percent) for run in runs]
            assert selections[0] == selections[1] == selections[2], (model, percent)


@pytest.mark.parametrize("method", ["gram", "svd"])
def test_sharded_bf16_checkpoint(tiny_llama_dir, method):
    scores = scan(str(tiny_llama_dir), method=method, device="cpu")
    weights = {}
    for shard in sorted(tiny_llama_dir.glob("*.safetensors")):
        weights.update(stored_weights(shard))
    expected_types = ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
                      "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]
    assert scores.types() == expected_types
    assert len(scores.entries) == 3 * 7
    for module, score in scores.entries.items():
        assert score.snr == pytest.approx(reference_score(weights[module + ".weight"]), rel=1e-9), module
    shards = [shard["name"] for shard in scores.meta["source"]["shards"]]
    assert shards == sorted(path.name for path in tiny_llama_dir.glob("*.safetensors"))
    assert scores.meta["dtypes"] == ["BF16"]
    assert scores.meta["embeddings"] == {"input": "model.embed_tokens.weight", "output": "lm_head.weight"}


def test_the_two_cpu_routes_give_the_same_scores(tiny_llama_dir, minilm_dir, monkeypatch):
    """Safetensors on CPU go through NumPy without torch (`spectrum.scoring.svd_numpy`); the same checkpoint read
    as torch tensors (the route of GGUF, .bin and FP8) scores the same."""
    from spectrum.sources.safetensors import ShardedSafetensors

    for model in (tiny_llama_dir, minilm_dir):
        numpy_route = scan(str(model), device="cpu", threads=2)
        monkeypatch.setattr(ShardedSafetensors, "reads_arrays", False)  # the real torch route
        torch_route = scan(str(model), device="cpu", threads=2)
        monkeypatch.undo()
        assert list(numpy_route.entries) == list(torch_route.entries)
        for module, score in numpy_route.entries.items():
            assert score.snr == pytest.approx(torch_route.entries[module].snr, rel=1e-12), module


def test_which_scans_go_without_torch(tiny_llama_dir, tmp_path):
    """NumPy's route needs the CPU, the Gram method, a source of NumPy arrays, dtypes NumPy reads and
    every matrix under 2048 on its short side (torch's eigvalsh is faster from there)."""
    from spectrum.scoring.svd_numpy import resolve_method
    from spectrum.scoring.inventory import Matrix
    from spectrum.scoring.checkpoint import _host_route
    from spectrum.sources.base import TensorInfo

    AUTO = resolve_method("auto")  # the route is chosen for the method `auto` resolves to
    source = open_source(str(tiny_llama_dir))
    matrices = take_inventory(source.tensors()).matrices
    assert _host_route(source, matrices, "cpu", AUTO) and _host_route(source, matrices, "cpu", "gram")
    assert not _host_route(source, matrices, "cpu", "svd")
    assert not _host_route(source, matrices, "cuda", AUTO)
    wide = Matrix(TensorInfo("model.layers.0.mlp.down_proj.weight", "BF16", (2048, 8192), "x"), "model.layers.0.mlp.down_proj",
                  "mlp.down_proj", True)
    assert not _host_route(source, matrices + [wide], "cpu", AUTO)
    fp8 = Matrix(TensorInfo("model.layers.0.mlp.up_proj.weight", "F8_E4M3", (64, 64), "x"), "model.layers.0.mlp.up_proj",
                 "mlp.up_proj", True)
    assert not _host_route(source, [fp8], "cpu", AUTO)
    torch.save({"model.layers.0.mlp.up_proj.weight": torch.randn(16, 8)}, tmp_path / "pytorch_model.bin")
    legacy = open_source(str(tmp_path))  # .bin weights come as torch tensors
    assert not _host_route(legacy, take_inventory(legacy.tensors()).matrices, "cpu", AUTO)


def test_cuda_is_ruled_out_only_where_torch_finds_none():
    """`--device auto` skips importing torch only when torch could not find a GPU anyway."""
    from spectrum.scoring.checkpoint import cuda_ruled_out

    if cuda_ruled_out():
        assert not torch.cuda.is_available()
    if torch.cuda.is_available():
        assert not cuda_ruled_out()


def test_cores_are_counted_where_there_is_no_cpu_affinity(monkeypatch):
    import os

    from spectrum.scoring.checkpoint import cpu_count

    assert cpu_count() == len(os.sched_getaffinity(0))
    monkeypatch.delattr(os, "sched_getaffinity")  # as on macOS and Windows
    assert cpu_count() == os.cpu_count()


def test_cuda_streams_come_from_the_environment(monkeypatch):
    from spectrum.scoring.checkpoint import CUDA_STREAMS_ENV, cuda_streams

    monkeypatch.delenv(CUDA_STREAMS_ENV, raising=False)
    assert cuda_streams() == 1
    monkeypatch.setenv(CUDA_STREAMS_ENV, " 4 ")
    assert cuda_streams() == 4
    for bad in ("0", "65", "two", "-1", "1.5"):
        monkeypatch.setenv(CUDA_STREAMS_ENV, bad)
        with pytest.raises(UsageError, match=f"{CUDA_STREAMS_ENV}='{re.escape(bad)}' is not a number of streams"):
            cuda_streams()


def test_tied_embeddings_have_no_head(tiny_llama_tied_dir):
    scores = scan(str(tiny_llama_tied_dir), device="cpu")
    assert scores.meta["embeddings"] == {"input": "model.embed_tokens.weight", "output": None}
    yaml = scores.to_yaml(50)
    assert "- ^model.embed_tokens.weight$\n" in yaml and "lm_head" not in yaml


def test_type_filter_includes_embeddings_when_asked(tiny_llama_dir):
    scores = scan(str(tiny_llama_dir), type_filter=lambda t: t in {"lm_head", "model.embed_tokens"}, device="cpu")
    assert scores.types() == ["lm_head", "model.embed_tokens"]


def test_inventory_skips_what_is_not_a_float_matrix(tmp_path, caplog):
    rng = torch.Generator().manual_seed(0)
    tensors = {
        "model.layers.0.mlp.up_proj.weight": torch.randn(16, 8, generator=rng),
        "model.layers.1.mlp.up_proj.weight": torch.zeros(16, 8),
        "model.layers.2.mlp.up_proj.weight": torch.full((16, 8), float("nan")),
        "model.layers.3.mlp.up_proj.weight": torch.randn(16, 8, generator=rng).to(torch.float8_e4m3fn),
        "model.layers.0.input_layernorm.weight": torch.ones(8),
        "model.layers.0.mlp.up_proj.bias": torch.zeros(16),
        "embeddings.position_ids": torch.arange(8).unsqueeze(0),
        "model.layers.0.mlp.counts.weight": torch.ones(4, 4, dtype=torch.int32),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    inventory = take_inventory(open_source(str(path)).tensors())
    assert sorted(m.module for m in inventory.matrices) == [f"model.layers.{i}.mlp.up_proj" for i in range(3)]
    assert [info.name for info in inventory.unsupported] == ["model.layers.3.mlp.up_proj.weight"]

    with caplog.at_level(logging.WARNING, logger="spectrum"):
        scores = scan(str(path), device="cpu")
    assert list(scores.entries) == ["model.layers.0.mlp.up_proj", "model.layers.1.mlp.up_proj"]
    assert scores.entries["model.layers.1.mlp.up_proj"].snr == 0.0
    assert scores.entries["model.layers.0.mlp.up_proj"].snr == pytest.approx(
        reference_score(tensors["model.layers.0.mlp.up_proj.weight"].numpy()), rel=1e-9
    )
    messages = " ".join(record.getMessage() for record in caplog.records)
    assert "model.layers.2.mlp.up_proj.weight has NaN or infinite entries" in messages
    assert "model.layers.3.mlp.up_proj.weight is stored as F8_E4M3" in messages


def test_no_matching_type_is_an_error(minilm_dir):
    with pytest.raises(SpectrumError, match="--list-types"):
        scan(str(minilm_dir), type_filter=lambda t: False, device="cpu")


def test_cache_coverage_and_merge():
    meta = {"checkpoint_types": {"mlp.up_proj": {"layered": True}, "lm_head": {"layered": False}}}
    cached = Scores("m", {"l.0.mlp.up_proj": ModuleScore(0.1, "mlp.up_proj")}, meta)
    assert missing_types(cached, None) == set()
    assert missing_types(cached, lambda t: t == "lm_head") == {"lm_head"}
    foreign = Scores("m", {"l.0.mlp.up_proj": ModuleScore(0.1, "mlp.up_proj")})
    assert missing_types(foreign, None) == set()
    assert missing_types(foreign, lambda t: t == "lm_head") is None
    fresh = Scores("m", {"lm_head": ModuleScore(0.2, "lm_head")}, {"new": True})
    combined = merge(cached, fresh)
    assert list(combined.entries) == ["lm_head", "l.0.mlp.up_proj"] and combined.meta == {"new": True}


def test_3d_weights_outside_an_experts_module_are_named_in_a_warning(tmp_path, caplog):
    """GraniteMoE stores its experts as `block_sparse_moe.input_linear.weight` (experts, out, in): not
    under a module called `experts`, so not split into matrices. That is said, not silent."""
    save_file({"model.layers.0.block_sparse_moe.input_linear.weight": torch.randn(4, 16, 8),
               "model.layers.0.self_attn.q_proj.weight": torch.randn(8, 8)}, str(tmp_path / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="spectrum"):
        scores = scan(str(tmp_path), device="cpu")
    assert list(scores.entries) == ["model.layers.0.self_attn.q_proj"]
    assert caplog.messages == ["model.layers.0.block_sparse_moe.input_linear.weight is a 3-D tensor [4, 16, 8] outside an "
                               "`experts` module, which spectrum does not split into matrices; left out"]
