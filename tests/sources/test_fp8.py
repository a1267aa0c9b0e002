"""FP8 checkpoints (DeepSeek-V3 / Qwen3-FP8 layout): F8_E4M3 weights with per-block `weight_scale_inv`
are dequantized, then scored exactly like the same weights saved as float32."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import run_cli
from spectrum.errors import SpectrumError, UnsupportedFormatError
from spectrum.scoring.checkpoint import scan, take_inventory
from spectrum.sources import open_source

# Shapes that are and are not multiples of the block, so edge blocks get cropped.
SHAPES = {
    "self_attn.q_proj": (256, 192),
    "self_attn.o_proj": (192, 256),
    "mlp.up_proj": (300, 192),
    "mlp.down_proj": (192, 300),
}


def reference_dequantize(weight: torch.Tensor, scale: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """Block by block, as the layout defines it: W[block] = float(W8[block]) * scale_inv[block index]."""
    out = torch.empty(weight.shape, dtype=torch.float32)
    rows, cols = weight.shape
    for i in range(math.ceil(rows / block[0])):
        for j in range(math.ceil(cols / block[1])):
            part = (slice(i * block[0], (i + 1) * block[0]), slice(j * block[1], (j + 1) * block[1]))
            out[part] = weight[part].to(torch.float32) * scale[i, j]
    return out


def write_fp8_checkpoint(folder: Path, *, block: tuple[int, int] | None, layers: int = 2,
                         shards: int = 1) -> dict[str, torch.Tensor]:
    """An FP8 checkpoint (bf16 embeddings and norms, FP8 projections with F32 scale_inv) and, in
    `folder/../<name>-f32`, the same weights dequantized to float32. Returns the float32 weights."""
    folder.mkdir()
    rng = torch.Generator().manual_seed(0)
    used = block or (128, 128)
    stored: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(64, 192, generator=rng).bfloat16()}
    dequantized: dict[str, torch.Tensor] = {"model.embed_tokens.weight": stored["model.embed_tokens.weight"].float()}
    for layer in range(layers):
        stored[f"model.layers.{layer}.input_layernorm.weight"] = torch.ones(192, dtype=torch.bfloat16)
        for module, (rows, cols) in SHAPES.items():
            name = f"model.layers.{layer}.{module}.weight"
            weight = (torch.randn(rows, cols, generator=rng) * 4).to(torch.float8_e4m3fn)
            scale = torch.rand(math.ceil(rows / used[0]), math.ceil(cols / used[1]), generator=rng) / 64 + 1e-4
            stored[name], stored[name + "_scale_inv"] = weight, scale
            dequantized[name] = reference_dequantize(weight, scale, used)
    names = list(stored)
    if shards == 1:
        save_file(stored, str(folder / "model.safetensors"))
    else:
        # Scales in another shard than their weights: the last shard holds every scale.
        weight_map = {}
        groups = [[n for n in names if not n.endswith("_scale_inv")], [n for n in names if n.endswith("_scale_inv")]]
        for index, group in enumerate(groups, start=1):
            shard = f"model-{index:05d}-of-{len(groups):05d}.safetensors"
            save_file({n: stored[n] for n in group}, str(folder / shard))
            weight_map.update(dict.fromkeys(group, shard))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = {"architectures": ["DeepseekV3ForCausalLM"],
              "quantization_config": {"quant_method": "fp8", "fmt": "e4m3"}}
    if block is not None:
        config["quantization_config"]["weight_block_size"] = list(block)
    (folder / "config.json").write_text(json.dumps(config))
    twin = folder.parent / f"{folder.name}-f32"
    twin.mkdir()
    save_file(dequantized, str(twin / "model.safetensors"))
    return dequantized


@pytest.mark.parametrize("block, shards", [(None, 1), ((64, 128), 1), ((128, 128), 2)])
def test_fp8_scores_equal_those_of_float32_weights(tmp_path, block, shards):
    folder = tmp_path / "fp8"
    dequantized = write_fp8_checkpoint(folder, block=block, shards=shards)
    from_fp8 = scan(str(folder), device="cpu")
    from_f32 = scan(str(tmp_path / "fp8-f32"), device="cpu")
    assert len(from_fp8.entries) == 2 * len(SHAPES)
    assert list(from_fp8.entries) == list(from_f32.entries)
    for module, score in from_fp8.entries.items():
        assert score == from_f32.entries[module], module
    assert from_fp8.meta["dtypes"] == ["F8_E4M3"]
    # The source hands out exactly the block-by-block dequantization.
    source = open_source(str(folder))
    infos = [info for info in source.tensors() if info.dtype == "F8_E4M3"]
    for shard in source.shard_order():
        for info, tensor in source.read(shard, [i for i in infos if i.shard == shard]):
            assert tensor.dtype == torch.float32 and torch.equal(tensor, dequantized[info.name]), info.name


def test_sharded_bin_fp8_with_its_scales_in_another_shard(tmp_path):
    """The same two-shard layout as legacy `.bin` files: each weight's scale is found in the other shard."""
    from safetensors.torch import load_file

    folder = tmp_path / "fp8"
    write_fp8_checkpoint(folder, block=(128, 128), shards=2)
    legacy = tmp_path / "fp8-bin"
    legacy.mkdir()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    renamed = {shard: shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
               for shard in set(index["weight_map"].values())}
    for shard, bin_name in renamed.items():
        torch.save(load_file(str(folder / shard)), legacy / bin_name)
    (legacy / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {name: renamed[shard] for name, shard in index["weight_map"].items()}}))
    (legacy / "config.json").write_text((folder / "config.json").read_text())
    from_bin = scan(str(legacy), device="cpu")
    from_f32 = scan(str(tmp_path / "fp8-f32"), device="cpu")
    assert len(from_bin.entries) == 2 * len(SHAPES)
    assert from_bin.entries == from_f32.entries


def test_scales_are_not_matrices_and_fp8_without_scale_is_left_out(tmp_path, caplog):
    folder = tmp_path / "fp8"
    write_fp8_checkpoint(folder, block=None, layers=1)
    inventory = take_inventory(open_source(str(folder)).tensors())
    assert sorted(matrix.type for matrix in inventory.matrices) == sorted([*SHAPES, "model.embed_tokens"])
    assert inventory.unsupported == []

    bare = tmp_path / "bare"
    bare.mkdir()
    save_file({"model.layers.0.mlp.up_proj.weight": torch.randn(16, 8).to(torch.float8_e4m3fn),
               "model.layers.1.mlp.up_proj.weight": torch.randn(16, 8)}, str(bare / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="spectrum"):
        scores = scan(str(bare), device="cpu")
    assert list(scores.entries) == ["model.layers.1.mlp.up_proj"]
    assert "model.layers.0.mlp.up_proj.weight is stored as F8_E4M3" in caplog.text


def test_scale_that_does_not_fit_the_block(tmp_path):
    folder = tmp_path / "fp8"
    write_fp8_checkpoint(folder, block=None, layers=1)
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["weight_block_size"] = [64, 64]  # the scales were made for 128 x 128
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedFormatError, match=r"weight_scale_inv has shape \[2, 3\], but a \[192, 300\] "
                       r"weight in 64x64 blocks needs \[3, 5\]; check quantization_config.weight_block_size"):
        scan(str(folder), device="cpu")


def test_fp8_without_scales_is_named_when_it_is_all_there_is(tmp_path, caplog):
    """FP8 weights without `*_scale_inv`: a type they alone make up still gets its warnings, and a
    request that only they could answer fails saying so (not 'no weight matrix matches')."""
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    save_file({**{f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 8).to(torch.float8_e4m3fn) for i in range(2)},
               **{f"model.layers.{i}.mlp.down_proj.weight": torch.randn(8, 16) for i in range(2)}},
              str(mixed / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="spectrum"):
        scores = scan(str(mixed), device="cpu")
    assert list(scores.entries) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    assert [record.getMessage() for record in caplog.records] == [
        f"model.layers.{i}.mlp.up_proj.weight is stored as F8_E4M3, which needs its scale tensors to dequantize; "
        "left out" for i in range(2)]

    many = tmp_path / "many"
    many.mkdir()
    save_file({f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 8).to(torch.float8_e4m3fn) for i in range(8)},
              str(many / "model.safetensors"))
    message = ("all 8 weight matrices of the requested types are FP8 without the scale tensors needed to dequantize "
               "them (model.layers.0.mlp.up_proj.weight is F8_E4M3 and there is no "
               "model.layers.0.mlp.up_proj.weight_scale_inv); download the checkpoint again with its "
               "*.weight_scale_inv tensors, or scan the unquantized model")
    with pytest.raises(UnsupportedFormatError) as caught:
        scan(str(many), device="cpu")
    assert str(caught.value) == message
    with pytest.raises(SpectrumError, match="^no weight matrix matches the requested types"):
        scan(str(many), device="cpu", type_filter=lambda type_name: False)  # none of them requested
    result = run_cli("--model", str(many), "--no-check", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", f"spectrum: error: {message}\n")


def test_many_fp8_weights_without_scales_are_one_warning(tmp_path, caplog):
    folder = tmp_path / "many"
    folder.mkdir()
    save_file({**{f"model.layers.{i}.mlp.up_proj.weight": torch.randn(16, 8).to(torch.float8_e4m3fn) for i in range(8)},
               "model.layers.0.mlp.down_proj.weight": torch.randn(8, 16)}, str(folder / "model.safetensors"))
    with caplog.at_level(logging.WARNING, logger="spectrum"):
        scores = scan(str(folder), device="cpu")
    assert list(scores.entries) == ["model.layers.0.mlp.down_proj"]
    assert [record.getMessage() for record in caplog.records] == [
        "8 weights (model.layers.0.mlp.up_proj.weight, model.layers.1.mlp.up_proj.weight, "
        "model.layers.2.mlp.up_proj.weight, ...) are stored as F8_E4M3 without their scale tensors (*_scale_inv), "
        "which are needed to dequantize them; left out"]
