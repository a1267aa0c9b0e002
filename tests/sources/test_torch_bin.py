"""Legacy `pytorch_model*.bin` checkpoints: read with the weights-only unpickler one shard at a time,
scored like their safetensors twin, and never trusted with anything but tensors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import save_torch_state_dict

from helpers import run_cli, expect_cli_failure
from spectrum.errors import CorruptCheckpointError, UnsupportedFormatError
from spectrum.scoring.checkpoint import scan
from spectrum.sources import open_source
from spectrum.sources.safetensors import LocalSafetensorsSource
from spectrum.sources.torch_bin import BIN_INDEX_FILE, TorchBinSource


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=96, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config).to(torch.bfloat16)


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> tuple[Path, Path]:
    """One model saved twice: sharded `.bin` and sharded safetensors.

    transformers 5 no longer writes `.bin`; transformers 4's `save_pretrained(safe_serialization=False)`
    handed the state dict to huggingface_hub's `save_torch_state_dict`, which is called here directly.
    """
    model = tiny_llama()
    bin_dir, safetensors_dir = tmp_path_factory.mktemp("llama-bin"), tmp_path_factory.mktemp("llama-safetensors")
    save_torch_state_dict(model.state_dict(), bin_dir, safe_serialization=False, max_shard_size="40KB")
    model.save_pretrained(safetensors_dir, max_shard_size="40KB")
    assert (bin_dir / BIN_INDEX_FILE).is_file() and len(list(bin_dir.glob("pytorch_model-*.bin"))) > 1
    return bin_dir, safetensors_dir


def test_sharded_bin_scores_like_its_safetensors_twin(twins):
    bin_dir, safetensors_dir = twins
    source = open_source(str(bin_dir))
    assert isinstance(source, TorchBinSource)
    assert source.shard_order() == sorted(path.name for path in bin_dir.glob("pytorch_model-*.bin"))
    from_bin, from_safetensors = scan(str(bin_dir), device="cpu"), scan(str(safetensors_dir), device="cpu")
    assert len(from_bin.entries) == 3 * 7
    assert list(from_bin.entries) == list(from_safetensors.entries)
    for module, score in from_bin.entries.items():
        assert score == from_safetensors.entries[module], module
    assert from_bin.meta["dtypes"] == ["BF16"]
    assert [shard["name"] for shard in from_bin.meta["source"]["shards"]] == source.shard_order()
    assert from_bin.meta["embeddings"] == from_safetensors.meta["embeddings"]


def test_listing_matches_the_safetensors_headers(twins):
    bin_dir, safetensors_dir = twins
    from_bin = {info.name: (info.dtype, info.shape) for info in open_source(str(bin_dir)).tensors()}
    from_safetensors = {info.name: (info.dtype, info.shape) for info in open_source(str(safetensors_dir)).tensors()}
    assert from_bin == from_safetensors
    weight_map = json.loads((bin_dir / BIN_INDEX_FILE).read_text())["weight_map"]
    assert {info.name: info.shard for info in open_source(str(bin_dir)).tensors()} == weight_map


def test_single_bin_file_and_legacy_non_zip_format(tmp_path):
    state = {"model.layers.0.mlp.up_proj.weight": torch.randn(16, 8),
             "model.layers.0.mlp.up_proj.bias": torch.randn(16)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    torch.save(state, tmp_path / "old.pt", _use_new_zipfile_serialization=False)  # cannot be memory-mapped
    for path in (tmp_path / "pytorch_model.bin", tmp_path, tmp_path / "old.pt"):
        source = open_source(str(path))
        ((info, tensor),) = list(source.read(source.shard_order()[0], [source.tensors()[0]]))
        assert info.name == "model.layers.0.mlp.up_proj.weight" and info.dtype == "F32" and info.shape == (16, 8)
        assert torch.equal(tensor, state[info.name])


def test_safetensors_win_when_a_folder_has_both(twins, tmp_path):
    bin_dir, safetensors_dir = twins
    both = tmp_path / "both"
    shutil.copytree(safetensors_dir, both)
    for path in bin_dir.iterdir():
        shutil.copy(path, both / path.name)
    source = open_source(str(both))
    assert isinstance(source, LocalSafetensorsSource)
    assert all(shard.endswith(".safetensors") for shard in source.shard_order())


class Payload:
    """Pickles to a call of `open(target, "w")`: unpickling it creates the file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return open, (self.target, "w")


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    model_dir, proof_dir = tmp_path / "model", tmp_path / "proof"
    model_dir.mkdir()
    proof_dir.mkdir()
    target = tmp_path / "pwned"
    torch.save({"model.layers.0.mlp.up_proj.weight": torch.randn(4, 4), "x": Payload(str(target))},
               model_dir / "pytorch_model.bin")

    # The payload is real: an unrestricted load of the same kind of file creates its target.
    proof = tmp_path / "proof-created"
    torch.save({"x": Payload(str(proof))}, proof_dir / "pytorch_model.bin")
    torch.load(proof_dir / "pytorch_model.bin", weights_only=False)
    assert proof.exists()

    with pytest.raises(UnsupportedFormatError, match="refused to unpickle") as caught:
        open_source(str(model_dir)).tensors()
    assert "\n" not in str(caught.value)
    assert not target.exists()

    result = run_cli("--model", str(model_dir), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused to unpickle" in lines[0] and "Traceback" not in result.stderr
    assert "pytorch_model.bin" in lines[0]
    assert not target.exists()


def test_damaged_bin_is_a_corrupt_checkpoint(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CorruptCheckpointError, match="torch.load cannot read it") as caught:
        open_source(str(tmp_path)).tensors()
    assert str(tmp_path / "pytorch_model.bin") in str(caught.value)
    expect_cli_failure(tmp_path, str(caught.value))


def test_index_naming_a_missing_shard(twins, tmp_path):
    bin_dir, _ = twins
    partial = tmp_path / "partial"
    shutil.copytree(bin_dir, partial)
    first = min(partial.glob("pytorch_model-*.bin"))
    os.unlink(first)
    from spectrum.errors import SourceError

    with pytest.raises(SourceError, match=f"missing from the folder \\({first.name}") as caught:
        open_source(str(partial))
    expect_cli_failure(partial, str(caught.value))


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_one_shard_of_a_sharded_checkpoint_is_scanned_with_one_warning(twins, tmp_path, kind):
    folder = twins[0] if kind == "bin" else twins[1]
    index = json.loads((folder / (BIN_INDEX_FILE if kind == "bin" else "model.safetensors.index.json")).read_text())
    files = sorted(set(index["weight_map"].values()))
    shard = folder / files[-1]
    result = run_cli("--model", str(shard), "--name", "one-shard", "--no-check", "--quiet", "--top-percent", "100", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"warning: {shard} is one shard of the checkpoint in {folder} (its index lists "
                             f"{len(files)} files); scanning this file only; pass --model {folder} for the whole model\n")
    # The whole folder, or a file with no index beside it, says nothing.
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(shard, lone / shard.name)
    for model in (folder, lone / shard.name):
        result = run_cli("--model", str(model), "--name", f"quiet-{model.name}", "--no-check", "--quiet", "--top-percent", "100",
                         cwd=tmp_path)
        assert result.returncode == 0 and result.stderr == "", result.stderr
