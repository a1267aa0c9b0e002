"""Tensor names -> module names, module types and file-name slugs.

The rules are the reference tool's and Axolotl's: a module's type is the part of
its name after the first all-digit component (`model.layers.12.mlp.down_proj` ->
`mlp.down_proj`); a name without one is its own type (`lm_head`).
"""

from __future__ import annotations

import re
from typing import Callable

TypeFilter = Callable[[str], bool]  # which module types a request wants

WEIGHT_SUFFIX = ".weight"

# Top-level tensors that hold the input embeddings or the output head, by the last
# component of their module name, across the common architectures.
_INPUT_EMBEDDING_LEAVES = ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in", "shared")
_OUTPUT_HEAD_LEAVES = ("lm_head", "embed_out")


def module_name(tensor_name: str) -> str | None:
    """The module a `*.weight` tensor belongs to, or None for any other tensor."""
    if not tensor_name.endswith(WEIGHT_SUFFIX) or tensor_name == WEIGHT_SUFFIX:
        return None
    return tensor_name[: -len(WEIGHT_SUFFIX)]


def _first_layer_index(parts: list[str]) -> int | None:
    for position, part in enumerate(parts):
        if part.isdigit():
            return position
    return None


def module_type(name: str, *, with_stack: bool = False) -> str:
    """The module type: everything after the first all-digit component, else the name itself.

    With `with_stack`, the stack (the part before that component) is kept in front, so that a
    checkpoint with several stacks of layers (encoder and decoder, vision tower and language
    model) ranks each stack on its own: `encoder.block.3.layer.0.SelfAttention.q` ->
    `encoder.block.layer.0.SelfAttention.q`.
    """
    parts = name.split(".")
    position = _first_layer_index(parts)
    if position is None or position == len(parts) - 1:
        return name
    rest = ".".join(parts[position + 1 :])
    return ".".join(parts[:position] + [rest]) if with_stack and position > 0 else rest


def stack_of(name: str) -> str | None:
    """The stack a layered module belongs to: the name up to its first all-digit component."""
    parts = name.split(".")
    position = _first_layer_index(parts)
    if position is None or position == len(parts) - 1:
        return None
    return ".".join(parts[:position])


_EXPERT_INDEX = re.compile(r"(^|\.)experts\.\d+\.")


def without_expert_index(name: str) -> str:
    """`mlp.experts.7.down_proj` -> `mlp.experts.down_proj` (all experts of one projection together)."""
    return _EXPERT_INDEX.sub(r"\1experts.", name, count=1)


def layer_index(name: str) -> int | None:
    """The value of the first all-digit component (the layer number), if any."""
    parts = name.split(".")
    position = _first_layer_index(parts)
    return None if position is None else int(parts[position])


def is_layer_module(name: str) -> bool:
    """True for modules inside a numbered layer (attention, MLP, experts, routers)."""
    parts = name.split(".")
    position = _first_layer_index(parts)
    return position is not None and position < len(parts) - 1


def natural_key(name: str) -> tuple:
    """Sort key that orders `layers.2` before `layers.10`."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def slug(model: str) -> str:
    """The cache slug Axolotl computes from a model id or path: `/` and `_` become `-`."""
    return model.replace("/", "-").replace("_", "-")


def is_input_embedding(name: str) -> bool:
    """True for a top-level input-embedding module (`model.embed_tokens`, `transformer.wte`, ...)."""
    return not is_layer_module(name) and layer_index(name) is None and name.split(".")[-1] in _INPUT_EMBEDDING_LEAVES


def is_output_head(name: str) -> bool:
    """True for a top-level output head (`lm_head`, `embed_out`)."""
    return layer_index(name) is None and name.split(".")[-1] in _OUTPUT_HEAD_LEAVES


def compile_type_patterns(patterns: list[str]) -> list[re.Pattern[str]]:
    """Compile `--types` regular expressions; raises `re.error` on a bad one."""
    return [re.compile(pattern) for pattern in patterns]


def type_matches(type_name: str, patterns: list[re.Pattern[str]]) -> bool:
    """True when any pattern is found in the type (`re.search`)."""
    return any(pattern.search(type_name) for pattern in patterns)


def printable(text: str) -> str:
    """`text` safe to show on a terminal: every character that is not printable (control characters
    such as ESC and BEL, line breaks, DEL, C1 controls, bidirectional overrides, lone surrogates) as
    its Python escape, so that a hostile tensor or file name cannot move the cursor, retitle the
    window, write the clipboard (OSC 52) or reorder the line; ordinary names come out unchanged."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def shown(text: str, limit: int = 200) -> str:
    """`text` for a message: a very long one (a model argument of 100 KB) cut in the middle."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]}...({len(text)} characters)...{text[-limit // 4:]}"
