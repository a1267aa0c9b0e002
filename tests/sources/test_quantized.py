"""Packed quantized checkpoints (GPTQ, AWQ, bitsandbytes 4-bit and 8-bit) are refused with one line that
names the format and points to the unquantized base model, exit code 1, whether the format shows in
config.json or only in the tensor names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from helpers import run_cli
from spectrum.errors import UnsupportedFormatError
from spectrum.sources import open_source

PREFIX = "model.layers.0.self_attn.q_proj"


def gptq_tensors() -> dict[str, torch.Tensor]:
    """A GPTQ 4-bit linear as AutoGPTQ / GPTQModel save it: int32 words of 8 packed values."""
    return {
        f"{PREFIX}.qweight": torch.zeros(64 // 8, 64, dtype=torch.int32),
        f"{PREFIX}.qzeros": torch.zeros(1, 64 // 8, dtype=torch.int32),
        f"{PREFIX}.scales": torch.ones(1, 64, dtype=torch.float16),
        f"{PREFIX}.g_idx": torch.zeros(64, dtype=torch.int32),
    }


def awq_tensors() -> dict[str, torch.Tensor]:
    """An AWQ 4-bit linear as AutoAWQ saves it (no g_idx)."""
    return {
        f"{PREFIX}.qweight": torch.zeros(64, 64 // 8, dtype=torch.int32),
        f"{PREFIX}.qzeros": torch.zeros(1, 64 // 8, dtype=torch.int32),
        f"{PREFIX}.scales": torch.ones(1, 64, dtype=torch.float16),
    }


def bnb4_tensors() -> dict[str, torch.Tensor]:
    """A bitsandbytes NF4 linear as transformers saves it: packed uint8 weight plus its quant state."""
    return {
        f"{PREFIX}.weight": torch.zeros(64 * 64 // 2, 1, dtype=torch.uint8),
        f"{PREFIX}.weight.absmax": torch.ones(64, dtype=torch.float32),
        f"{PREFIX}.weight.quant_map": torch.linspace(-1, 1, 16),
        f"{PREFIX}.weight.quant_state.bitsandbytes__nf4": torch.zeros(80, dtype=torch.uint8),
    }


def bnb8_tensors() -> dict[str, torch.Tensor]:
    """A bitsandbytes LLM.int8 linear: int8 weight, per-row scales SCB, weight_format."""
    return {
        f"{PREFIX}.weight": torch.zeros(64, 64, dtype=torch.int8),
        f"{PREFIX}.SCB": torch.ones(64, dtype=torch.float32),
        f"{PREFIX}.weight_format": torch.zeros((), dtype=torch.uint8),
    }


def checkpoint(folder: Path, tensors: dict[str, torch.Tensor], quant_method: str | None = None,
               *, as_bin: bool = False) -> Path:
    folder.mkdir()
    tensors = {"model.embed_tokens.weight": torch.randn(32, 64).half(), **tensors}
    if as_bin:
        torch.save(tensors, folder / "pytorch_model.bin")
    else:
        save_file(tensors, str(folder / "model.safetensors"))
    if quant_method is not None:
        (folder / "config.json").write_text(json.dumps(
            {"architectures": ["LlamaForCausalLM"], "quantization_config": {"quant_method": quant_method, "bits": 4}}
        ))
    return folder


CASES = {
    # name: (tensors, config quant_method, format named in the message)
    "gptq": (gptq_tensors, "gptq", "GPTQ"),
    "gptq-names-only": (gptq_tensors, None, "GPTQ"),
    "awq": (awq_tensors, "awq", "AWQ"),
    "awq-names-only": (awq_tensors, None, "AWQ"),
    "bnb-4bit": (bnb4_tensors, "bitsandbytes", "bitsandbytes"),
    "bnb-4bit-names-only": (bnb4_tensors, None, "bitsandbytes 4-bit"),
    "bnb-8bit-names-only": (bnb8_tensors, None, "bitsandbytes 8-bit"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_packed_formats_are_refused(tmp_path, case):
    make, method, format_name = CASES[case]
    folder = checkpoint(tmp_path / case, make(), method)
    with pytest.raises(UnsupportedFormatError) as caught:
        open_source(str(folder)).tensors()
    message = str(caught.value)
    assert f"is a {format_name}-quantized checkpoint" in message
    assert "scan the unquantized base model" in message and "\n" not in message
    assert caught.value.exit_code == 1


def test_config_alone_is_enough_and_names_the_base_model(tmp_path):
    """A config that declares GPTQ is refused before any weight is opened; the model card's base_model is named."""
    folder = checkpoint(tmp_path / "gptq", {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 8)}, "gptq")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nbase_model: Qwen/Qwen2.5-0.5B\n---\n# A GPTQ model\n")
    with pytest.raises(UnsupportedFormatError, match=r"GPTQ-quantized.*config.json quant_method 'gptq'.*"
                                                     r"\(Qwen/Qwen2.5-0.5B, per its model card\)"):
        open_source(str(folder))


def test_bin_checkpoints_are_checked_too(tmp_path):
    folder = checkpoint(tmp_path / "gptq-bin", gptq_tensors(), None, as_bin=True)
    with pytest.raises(UnsupportedFormatError, match="is a GPTQ-quantized checkpoint"):
        open_source(str(folder)).tensors()


def test_fp8_is_not_refused(tmp_path):
    folder = checkpoint(tmp_path / "fp8", {"model.layers.0.mlp.up_proj.weight": torch.randn(8, 8)}, "fp8")
    assert "model.layers.0.mlp.up_proj.weight" in {info.name for info in open_source(str(folder)).tensors()}


@pytest.mark.parametrize("case", ["gptq", "bnb-4bit-names-only"])
def test_command_line_says_it_in_one_line(tmp_path, case):
    make, method, format_name = CASES[case]
    folder = checkpoint(tmp_path / case, make(), method)
    result = run_cli("--model", str(folder), "--quiet", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert f"{format_name}-quantized" in lines[0] and "unquantized base model" in lines[0]
    assert not list(tmp_path.glob("*.yaml")) and not (tmp_path / "model_snr_results").exists()
