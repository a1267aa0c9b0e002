"""Quantized checkpoints: FP8 weights are dequantized; packed integer formats are refused.

FP8 (DeepSeek-V3, Qwen3-FP8): an `F8_E4M3` weight `W8` of shape (m, n) comes with a float
`*.weight_scale_inv` of shape (ceil(m / bm), ceil(n / bn)), one factor per (bm, bn) block
(`quantization_config.weight_block_size` in `config.json`, [128, 128] when absent). Despite its
name the factor multiplies: W = W8.float() * scale_inv, each factor repeated over its block and
the edges cropped, as transformers' FP8 loader and llama.cpp's converter compute it.

GPTQ, AWQ and bitsandbytes store weights as packed integers plus zero points, scales and
lookup tables; their matrices are not the model's weights, so scoring them would rank noise.
They are refused with a message pointing to the unquantized base model.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING

from ..errors import SpecialFileError, UnsupportedFormatError
from ..files import read_regular_text

if TYPE_CHECKING:
    import torch

FP8_SCALE_SUFFIX = "_scale_inv"  # `x.weight` -> `x.weight_scale_inv`
DEFAULT_BLOCK = (128, 128)

# quantization_config.quant_method -> the format's name, for methods whose weights are packed integers.
PACKED_METHODS = {
    "gptq": "GPTQ",
    "awq": "AWQ",
    "bitsandbytes": "bitsandbytes",
    "aqlm": "AQLM",
    "hqq": "HQQ",
    "eetq": "EETQ",
    "quanto": "Quanto",
    "vptq": "VPTQ",
    "higgs": "HIGGS",
    "spqr": "SpQR",
    "bitnet": "BitNet",
}

# Tensor-name endings that only packed formats write, and the format they reveal.
_PACKED_SUFFIXES = (
    (".g_idx", "GPTQ"),
    (".qweight", "AWQ"),  # GPTQ writes it too, with g_idx (checked first)
    (".qzeros", "AWQ"),
    (".weight.absmax", "bitsandbytes 4-bit"),
    (".weight.quant_map", "bitsandbytes 4-bit"),
    (".weight.nested_absmax", "bitsandbytes 4-bit"),
    (".weight.quant_state.bitsandbytes__nf4", "bitsandbytes 4-bit"),
    (".weight.quant_state.bitsandbytes__fp4", "bitsandbytes 4-bit"),
    (".SCB", "bitsandbytes 8-bit"),
    (".weight_format", "bitsandbytes 8-bit"),
    (".weight_packed", "compressed-tensors (packed integers)"),
)


def read_config(folder: str) -> dict | None:
    """`config.json` in `folder` as a dict, or None when absent or unreadable (the weights decide then)."""
    path = os.path.join(folder, "config.json")
    try:
        config = json.loads(read_regular_text(path))  # a FIFO or a link to /dev/zero: an error naming it
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def _quantization_config(config: dict | None) -> dict:
    section = (config or {}).get("quantization_config")
    return section if isinstance(section, dict) else {}


def _base_model_hint(folder: str | None) -> str:
    """`base_model` from the model card's front matter, when the folder has one."""
    if folder is None:
        return ""
    try:
        lines = read_regular_text(os.path.join(folder, "README.md"))[: 64 * 1024].splitlines()
    except (OSError, UnicodeDecodeError, SpecialFileError):  # a hint only: a model card that is a FIFO or too large gives none
        return ""
    if not lines or lines[0].strip() != "---":
        return ""
    for line in lines[1:]:
        if line.strip() == "---":
            break
        key, _, value = line.partition(":")
        if key.strip() == "base_model" and value.strip():
            return f" ({value.strip()}, per its model card)"
    return ""


def _refusal(location: str, format_name: str, evidence: str, folder: str | None) -> UnsupportedFormatError:
    return UnsupportedFormatError(
        f"{location} is a {format_name}-quantized checkpoint ({evidence}): its packed integer weights cannot be "
        f"scored; scan the unquantized base model it was made from{_base_model_hint(folder)} instead",
        path=location,
        format=format_name,
    )


def refuse_packed_config(config: dict | None, location: str, *, folder: str | None = None) -> None:
    """Raise UnsupportedFormatError when `config.json` declares a packed quantization method."""
    method = _quantization_config(config).get("quant_method")
    if isinstance(method, str) and method.lower() in PACKED_METHODS:
        raise _refusal(location, PACKED_METHODS[method.lower()], f"config.json quant_method {method!r}", folder)


def refuse_packed_tensors(names: list[str], location: str, *, folder: str | None = None) -> None:
    """Raise UnsupportedFormatError when tensor names show a packed quantization format."""
    for suffix, format_name in _PACKED_SUFFIXES:
        for name in names:
            if name.endswith(suffix):
                raise _refusal(location, format_name, f"tensor {name}", folder)


def fp8_block_size(config: dict | None) -> tuple[int, int]:
    """The FP8 scale block (rows, columns) from `quantization_config.weight_block_size`, else [128, 128]."""
    block = _quantization_config(config).get("weight_block_size")
    if (
        isinstance(block, (list, tuple))
        and len(block) == 2
        and all(isinstance(size, int) and not isinstance(size, bool) and size > 0 for size in block)
    ):
        return int(block[0]), int(block[1])
    return DEFAULT_BLOCK


def dequantize_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int], *, name: str,
                   path: str) -> torch.Tensor:
    """W = weight.float() * scale_inv, one factor per `block` of each (m, n) matrix (edges cropped).

    `weight` is (..., m, n) (a fused expert tensor has a leading expert dimension) and `scale_inv`
    (..., ceil(m / bm), ceil(n / bn)); a scale with a single element applies to the whole tensor.
    Returns float32 of the weight's shape.
    """
    import torch

    scale = scale_inv.to(torch.float32)
    if scale.numel() == 1:
        return weight.to(torch.float32) * scale.reshape(())
    *lead, rows, cols = weight.shape
    block_rows, block_cols = block
    expected = (*lead, math.ceil(rows / block_rows), math.ceil(cols / block_cols))
    if tuple(scale.shape) != expected:
        raise UnsupportedFormatError(
            f"{path}: {name}{FP8_SCALE_SUFFIX} has shape {list(scale.shape)}, but a {list(weight.shape)} weight in "
            f"{block_rows}x{block_cols} blocks needs {list(expected)}; check quantization_config.weight_block_size "
            "in config.json",
            path=path,
            format="FP8",
        )
    expanded = scale.repeat_interleave(block_rows, dim=-2)[..., :rows, :]
    expanded = expanded.repeat_interleave(block_cols, dim=-1)[..., :cols]  # (..., m, n)
    return weight.to(torch.float32) * expanded
