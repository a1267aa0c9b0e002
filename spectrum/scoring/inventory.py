"""What a checkpoint holds, from its headers alone: the weight matrices to score, and their types.

No tensor is read here and torch is not imported: `--list-types` and the checklist use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..naming import TypeFilter, is_input_embedding, is_layer_module, is_output_head, module_name, module_type, stack_of
from ..sources.base import TensorInfo
from ..sources.quantized import FP8_SCALE_SUFFIX
from ..sources.dtypes import FLOAT_DTYPES, FP8_DTYPES



@dataclass(frozen=True)
class Matrix:
    """A 2-D floating-point weight to score: a whole 2-D tensor, or one expert of a fused 3-D one."""

    info: TensorInfo
    module: str
    type: str
    layered: bool  # inside a numbered layer
    expert: int | None = None  # index into a fused (experts, out, in) tensor

    @property
    def shape(self) -> tuple[int, int]:
        return self.info.shape[-2:]  # type: ignore[return-value]


@dataclass
class Inventory:
    """What a checkpoint holds, from its headers alone."""

    matrices: list[Matrix]
    unsupported: list[TensorInfo] = field(default_factory=list)  # 2-D weights we cannot score (FP8 without scales)
    unsplit: list[TensorInfo] = field(default_factory=list)  # 3-D weights in numbered layers not under an `experts` module
    embeddings: dict[str, str | None] = field(default_factory=dict)  # "input"/"output" -> tensor name

    def types(self) -> dict[str, dict]:
        """type -> {"count", "shapes", "layered"} for every scorable matrix type."""
        summary: dict[str, dict] = {}
        for matrix in self.matrices:
            entry = summary.setdefault(matrix.type, {"count": 0, "shapes": [], "layered": matrix.layered})
            entry["count"] += 1
            shape = list(matrix.shape)
            if shape not in entry["shapes"]:
                entry["shapes"].append(shape)
        return dict(sorted(summary.items()))


def _fused_expert_modules(info: TensorInfo) -> list[str] | None:
    """Per-expert module names of a fused (experts, out, in) tensor under an `experts` module, else None.

    `model.layers.0.mlp.experts.gate_up_proj` with 8 experts -> `model.layers.0.mlp.experts.0.gate_up_proj`, ...
    (the per-expert naming of unfused checkpoints, so that types follow the reference per expert).
    """
    if len(info.shape) != 3 or 0 in info.shape:
        return None
    name = module_name(info.name) or info.name
    parts = name.split(".")
    if "experts" not in parts[:-1]:
        return None
    position = len(parts) - 1 - parts[::-1].index("experts")
    head, tail = ".".join(parts[: position + 1]), ".".join(parts[position + 1 :])
    return [f"{head}.{expert}.{tail}" for expert in range(info.shape[0])]


def take_inventory(tensors: list[TensorInfo]) -> Inventory:
    """Every 2-D floating-point `*.weight` tensor (and each expert of a fused 3-D expert tensor), typed.

    1-D and non-float tensors are left out. When the checkpoint has more than one stack of
    numbered layers, types carry their stack so each stack is ranked on its own.
    """
    candidates: list[tuple[TensorInfo, str, int | None]] = []
    unsupported = []
    unsplit = []
    names = {info.name for info in tensors}
    embeddings: dict[str, str | None] = {"input": None, "output": None}
    for info in tensors:
        if info.dtype not in FLOAT_DTYPES and info.dtype not in FP8_DTYPES:
            continue
        experts = _fused_expert_modules(info)
        module = module_name(info.name)
        if experts is None and (module is None or len(info.shape) != 2 or 0 in info.shape):
            if module is not None and len(info.shape) == 3 and 0 not in info.shape and is_layer_module(module):
                unsplit.append(info)  # e.g. GraniteMoE's block_sparse_moe.input_linear: experts by another name
            continue  # not a weight matrix (1-D, other 3-D, or empty)
        if info.dtype in FP8_DTYPES and info.name + FP8_SCALE_SUFFIX not in names:  # with a scale: dequantized
            unsupported.append(info)
            continue
        if experts is not None:
            candidates.extend((info, expert_module, index) for index, expert_module in enumerate(experts))
            continue
        candidates.append((info, module, None))
        if is_input_embedding(module) and embeddings["input"] is None:
            embeddings["input"] = info.name
        if is_output_head(module) and embeddings["output"] is None:
            embeddings["output"] = info.name
    stacks = {stack for _, module, _ in candidates if (stack := stack_of(module)) is not None}
    with_stack = len(stacks) > 1
    matrices = [
        Matrix(info, module, module_type(module, with_stack=with_stack), is_layer_module(module), expert)
        for info, module, expert in candidates
    ]
    return Inventory(matrices, unsupported, unsplit=unsplit, embeddings=embeddings)


def default_type_filter(inventory: Inventory) -> TypeFilter:
    """Types inside numbered layers (attention, MLP, experts, routers); not embeddings or heads."""
    layered = {matrix.type for matrix in inventory.matrices if matrix.layered}
    return layered.__contains__
