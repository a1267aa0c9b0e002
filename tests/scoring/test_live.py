"""`spectrum.scan_model`: scores of a model in memory equal a checkpoint scan of the same weights, under the
model's own names; `freeze(model, top_percent=K)` without scores (cached, else a live scan)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import torch

import spectrum
from helpers import save_tiny_llama, smollm2_weights
from reference import reference_score
from spectrum.errors import UsageError
from spectrum.sources.module import ModelSource


def assert_same_scores(live: spectrum.Scores, stored: spectrum.Scores) -> None:
    assert list(live.entries) == list(stored.entries)
    for module, score in stored.entries.items():
        assert live.entries[module].type == score.type
        assert live.entries[module].snr == pytest.approx(score.snr, rel=1e-9), module


def trainable(model) -> set[str]:
    return {name for name, parameter in model.named_parameters() if parameter.requires_grad}


@pytest.fixture(scope="module")
def smollm2_and_scores(tmp_path_factory):
    folder = smollm2_weights(tmp_path_factory)
    return folder, spectrum.scan(str(folder), threads=2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_smollm2_live_equals_the_checkpoint_scan(smollm2_and_scores, dtype):
    from transformers import AutoModelForCausalLM

    folder, stored = smollm2_and_scores
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    live = spectrum.scan_model(model, threads=2, progress=False)
    assert len(live.entries) == 7 * 30 and live.meta["source"]["kind"] == "live"
    assert live.meta["dtypes"] == [{torch.bfloat16: "BF16", torch.float32: "F32"}[dtype]]
    assert_same_scores(live, stored)
    # an independent float64 LAPACK SVD of one matrix, from the parameter itself
    weight = model.get_parameter("model.layers.7.mlp.down_proj.weight").detach().float().numpy()
    assert live.entries["model.layers.7.mlp.down_proj"].snr == pytest.approx(reference_score(weight), rel=1e-9)
    # the selection is the CLI's
    fresh = spectrum.freeze(model, stored, top_percent=25).names
    assert spectrum.freeze(model, live, top_percent=25).names == fresh


def test_a_fused_moe_model_is_scored_per_expert_under_its_own_names(tmp_path):
    """transformers 5 builds Mixtral's experts as 3-D parameters: scored per expert, as a checkpoint that stores
    them fused (the model's state_dict written with safetensors) is, and ranked as the YAML ranks them."""
    from safetensors.torch import save_file
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                           num_local_experts=4, num_experts_per_tok=2)
    model = MixtralForCausalLM(config)
    assert model.get_parameter("model.layers.0.mlp.experts.gate_up_proj").dim() == 3
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, tmp_path / "model.safetensors")
    stored = spectrum.scan(str(tmp_path / "model.safetensors"), threads=1)
    live = spectrum.scan_model(model, threads=1, progress=False)
    assert "model.layers.1.mlp.experts.3.gate_up_proj" in live.entries
    assert live.meta["fused_tensors"] == stored.meta["fused_tensors"]
    assert_same_scores(live, stored)
    expert = model.get_parameter("model.layers.1.mlp.experts.down_proj")[2].detach().numpy()
    assert live.entries["model.layers.1.mlp.experts.2.down_proj"].snr == pytest.approx(reference_score(expert), rel=1e-9)
    assert live.to_yaml(50).split("\n", 1)[1] == stored.to_yaml(50).split("\n", 1)[1]  # past the header's model name
    names = spectrum.freeze(model, live, top_percent=50).names
    assert names == spectrum.freeze(model, stored, top_percent=50).names
    assert sum(name.endswith("experts.gate_up_proj") for name in names) == 1


def test_types_and_a_module_that_is_not_transformers():
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList()
    for _ in range(3):
        block = torch.nn.Module()
        block.up, block.down = torch.nn.Linear(24, 40), torch.nn.Linear(40, 24)
        model.layers.append(block)
    every = spectrum.scan_model(model, threads=1, progress=False)
    assert every.types() == ["down", "up"] and every.model == "Module" and len(every.entries) == 6
    scores = spectrum.scan_model(model, types={"up"}, threads=1, progress=False)
    assert list(scores.entries) == ["layers.0.up", "layers.1.up", "layers.2.up"]
    for index in range(3):
        expected = reference_score(model.layers[index].up.weight.detach().numpy())
        assert scores.entries[f"layers.{index}.up"].snr == pytest.approx(expected, rel=1e-9)
        assert every.entries[f"layers.{index}.up"].snr == scores.entries[f"layers.{index}.up"].snr
    assert spectrum.freeze(model, scores, top_percent=34, embeddings=False).names == (
        f"{max(scores.entries, key=lambda m: scores.entries[m].snr)}.weight",
        f"{max(scores.entries, key=lambda m: scores.entries[m].snr)}.bias")


def test_parameters_are_read_in_place_not_copied():
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 8).to(torch.bfloat16)
    source = ModelSource(model)
    [(info, tensor)] = list(source.read("cpu", [i for i in source.tensors() if i.name == "weight"]))
    assert info.dtype == "BF16" and tensor.data_ptr() == model.weight.data_ptr()
    [(_, array)] = list(source.read_arrays("cpu", [info]))
    assert array.values.ctypes.data == model.weight.data_ptr() and array.dtype == "BF16"
    bits = model.weight.detach().view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(array.values, bits)


def test_meta_weights_are_refused_in_one_line():
    with torch.device("meta"):
        model = torch.nn.Linear(8, 8)
    with pytest.raises(UsageError, match="meta device") as caught:
        spectrum.scan_model(model, progress=False)
    assert "\n" not in str(caught.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_weights_are_scored_on_their_device(tmp_path):
    from transformers import AutoModelForCausalLM

    folder = save_tiny_llama(tmp_path / "tiny")
    stored = spectrum.scan(str(folder), device="cpu", threads=1)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to("cuda")
    live = spectrum.scan_model(model, progress=False)
    assert live.meta["device"].startswith("cuda")
    assert_same_scores(live, stored)


def test_freeze_without_scores_uses_the_cache_else_scans_once(tmp_path, monkeypatch, caplog):
    from transformers import AutoModelForCausalLM

    from helpers import run_cli

    folder = save_tiny_llama(tmp_path / "tiny", dtype="float32")
    monkeypatch.chdir(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    # nothing cached: a live scan, said once
    with caplog.at_level(logging.WARNING, logger="spectrum"):
        scanned = spectrum.freeze(model, top_percent=34)
    said = [record for record in caplog.records if "scanning the live model" in record.getMessage()]
    assert len(said) == 1
    # the CLI's YAML for the same weights unfreezes the same parameters
    result = run_cli("--model", str(folder), "--top-percent", "34", "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    [yaml_file] = tmp_path.glob("snr_results_*_unfrozenparameters_34percent.yaml")
    other = AutoModelForCausalLM.from_pretrained(str(folder))
    assert spectrum.freeze(other, str(yaml_file)).names == scanned.names
    # now cached for the model's name_or_path: no scan
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spectrum"):
        cached = spectrum.freeze(model, top_percent=34)
    assert not [record for record in caplog.records if "scanning" in record.getMessage()]
    assert cached.names == scanned.names and os.path.isdir(tmp_path / "model_snr_results")
    with pytest.raises(ValueError, match="needs top_percent"):
        spectrum.freeze(model)
    # a cached file that cannot be read is said, not taken for a miss and scanned over
    [scores_file] = [path for path in (tmp_path / "model_snr_results").glob("snr_results_*.json")
                     if not path.name.endswith((".meta.json", ".tensors.json"))]
    scores_file.write_text("{not json")
    with pytest.raises(spectrum.CacheError):
        spectrum.freeze(model, top_percent=34)


def test_device_auto_is_where_the_weights_are():
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList()
    for _ in range(2):
        block = torch.nn.Module()
        block.up = torch.nn.Linear(24, 16)
        model.layers.append(block)
    auto = spectrum.scan_model(model, device="auto", threads=1, progress=False)
    assert auto.meta["device"] == "cpu" and len(auto.entries) == 2
    assert auto.entries == spectrum.scan_model(model, threads=1, progress=False).entries
