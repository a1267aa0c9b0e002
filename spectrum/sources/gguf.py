"""GGUF files (llama.cpp) behind the same interface: dequantized, renamed, rows restored.

The `gguf` package's `GGUFReader` memory-maps the file and parses its metadata and tensor
table. A tensor's bytes are then read from the file with `readinto`, never through the map: a file
that shrinks during the scan is a "truncated" error, not a SIGBUS. Each tensor is dequantized to float32
with `gguf.quants.dequantize` (every quantization type that package implements), its
dimensions are reversed (GGUF lists the fastest-varying first; torch lists it last), and its
llama.cpp name is mapped to the Hugging Face name (`blk.3.attn_q.weight` ->
`model.layers.3.self_attn.q_proj.weight`).

llama.cpp's converter (`convert_hf_to_gguf.py`, `LlamaModel.undo_permute = True`) reorders the
rows of q_proj and k_proj for the llama architecture, which is also what Mistral and Mixtral
convert to, so that its rotary embedding can pair adjacent rows:

    w.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)

with n_head = head_count for q and head_count_kv for k. It is undone here, so singular values
and names are those of the Hugging Face weights. (A row permutation leaves singular values
unchanged; it is undone so that the tensors are the model's, not for the scores.) The Qwen2,
Qwen3 and Gemma converters do not permute (their `modify_tensors` only renames; the gguf
package itself never permutes). Gemma's converters store RMSNorm weights as w + 1; 1 is taken
off again (norms are not scored).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import CorruptCheckpointError, UnsupportedFormatError
from .base import SourceDescription, TensorInfo, TensorSource, local_shard

try:
    import gguf
except ImportError as err:  # pragma: no cover - gguf is a dependency
    raise UnsupportedFormatError("reading .gguf files needs the gguf package: pip install gguf",
                                 format="GGUF") from err

# Stored types returned as they are; every other floating type is dequantized to float32.
_PLAIN = {
    gguf.GGMLQuantizationType.F32: "F32",
    gguf.GGMLQuantizationType.F16: "F16",
    gguf.GGMLQuantizationType.F64: "F64",
    gguf.GGMLQuantizationType.I8: "I8",
    gguf.GGMLQuantizationType.I16: "I16",
    gguf.GGMLQuantizationType.I32: "I32",
    gguf.GGMLQuantizationType.I64: "I64",
}

_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_DROPPED = {"rope_freqs"}  # computed by the converter from the rope config; no tensor in the HF model

_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",  # qwen3, gemma3
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
}
_PRE_FFN_NORM = {"ffn_norm": "post_attention_layernorm"}  # llama, qwen, gemma: the norm before the MLP
_SANDWICH_NORMS = {  # gemma2, gemma3: norms before and after both blocks
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}


@dataclass(frozen=True)
class Family:
    """How one `general.architecture` maps to Hugging Face tensors."""

    layer_names: dict[str, str]
    permuted_qk: bool = False  # rows of q/k reordered by llama.cpp's LlamaModel converter
    norm_offset: float = 0.0  # the converter stored norm weights as w + offset


ARCHITECTURES = {
    "llama": Family({**_LAYER_NAMES, **_PRE_FFN_NORM}, permuted_qk=True),  # also Mistral, as converted
    "mistral3": Family({**_LAYER_NAMES, **_PRE_FFN_NORM}, permuted_qk=True),
    "qwen2": Family({**_LAYER_NAMES, **_PRE_FFN_NORM}),
    "qwen3": Family({**_LAYER_NAMES, **_PRE_FFN_NORM}),
    "gemma": Family({**_LAYER_NAMES, **_PRE_FFN_NORM}, norm_offset=1.0),
    "gemma2": Family({**_LAYER_NAMES, **_SANDWICH_NORMS}, norm_offset=1.0),
    "gemma3": Family({**_LAYER_NAMES, **_SANDWICH_NORMS}, norm_offset=1.0),
}

_LAYER = re.compile(r"^blk\.(\d+)\.(.+)$")


def hf_name(gguf_name: str, family: Family) -> str | None:
    """The Hugging Face name of a llama.cpp tensor name; None when the family has no mapping for it."""
    stem, dot, suffix = gguf_name.rpartition(".")
    if not dot or suffix not in ("weight", "bias"):
        return None
    if (match := _LAYER.match(stem)) is not None:
        mapped = family.layer_names.get(match.group(2))
        return None if mapped is None else f"model.layers.{match.group(1)}.{mapped}.{suffix}"
    mapped = _GLOBAL_NAMES.get(stem)
    return None if mapped is None else f"{mapped}.{suffix}"


def unpermute_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's `LlamaModel.permute`: (rows, ...) in GGUF order -> Hugging Face order."""
    rows = weight.shape[0]
    return weight.reshape(n_head, rows // n_head // 2, 2, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


class GGUFSource(TensorSource):
    """One `.gguf` file, memory-mapped; tensors come out float32 under Hugging Face names."""

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.shard = os.path.basename(path)
        self._fields: dict[str, object] = {}  # metadata values, by key, each read from the map once
        self._handle = None  # the file, for tensor bytes (opened at the first read)
        try:
            self._reader = gguf.GGUFReader(self.path, "r")
        except ValueError as err:
            if "GGMLQuantizationType" in str(err):
                raise UnsupportedFormatError(
                    f"{path}: uses a tensor type the installed gguf package does not know ({err}); "
                    "upgrade it (pip install -U gguf)",
                    path=path,
                    format="GGUF",
                ) from err
            raise CorruptCheckpointError(path, f"not a readable GGUF file ({err})") from err
        except (OSError, KeyError, IndexError, OverflowError) as err:
            raise CorruptCheckpointError(path, f"not a readable GGUF file ({type(err).__name__}: {err})") from err
        self.architecture = str(self._field("general.architecture", ""))
        self.family = ARCHITECTURES.get(self.architecture)
        if self.family is None:
            raise UnsupportedFormatError(
                f"{path}: GGUF architecture {self.architecture!r} has no Hugging Face name mapping here "
                f"(supported: {', '.join(sorted(ARCHITECTURES))}); scan the original Hugging Face checkpoint instead",
                path=path,
                format="GGUF",
            )
        if int(self._field("split.count", 1) or 1) > 1:
            raise UnsupportedFormatError(
                f"{path}: is one part of a split GGUF; merge the parts first (llama-gguf-split --merge) and pass "
                "the merged file",
                path=path,
                format="GGUF",
            )
        if self.family.permuted_qk:  # read now: later reads stay off the memory map
            self._field(f"{self.architecture}.attention.head_count")
            self._field(f"{self.architecture}.attention.head_count_kv")
        self._stored: dict[str, object] = {}  # Hugging Face name -> gguf ReaderTensor
        self._infos: list[TensorInfo] = []
        unmapped = []
        for tensor in sorted(self._reader.tensors, key=lambda t: t.data_offset):
            name = hf_name(tensor.name, self.family)
            if name is None:
                if tensor.name.rpartition(".")[0] not in _DROPPED:
                    unmapped.append(tensor.name)
                continue
            shape = tuple(int(size) for size in reversed(tensor.shape.tolist()))  # torch order
            if tensor.tensor_type not in _PLAIN and not _can_dequantize(tensor.tensor_type):
                raise UnsupportedFormatError(
                    f"{path}: tensor {tensor.name} is stored as {tensor.tensor_type.name}, which the installed gguf "
                    "package cannot dequantize; upgrade it (pip install -U gguf) or use a file with another "
                    "quantization",
                    path=path,
                    format="GGUF",
                )
            self._stored[name] = tensor
            self._infos.append(TensorInfo(name, _PLAIN.get(tensor.tensor_type, "F32"), shape, self.shard))
        if unmapped:
            raise UnsupportedFormatError(
                f"{path}: {len(unmapped)} tensor(s) of this {self.architecture} GGUF have no Hugging Face name "
                f"mapping ({', '.join(unmapped[:3])}{', ...' if len(unmapped) > 3 else ''}; mixture-of-experts "
                "GGUFs are not supported yet); scan the original Hugging Face checkpoint instead",
                path=path,
                format="GGUF",
            )

    def _field(self, key: str, default: object = None) -> object:
        if key not in self._fields:
            self._fields[key] = self._read_field(key)
        value = self._fields[key]
        return default if value is None else value

    def _read_field(self, key: str) -> object:
        field = self._reader.get_field(key)
        if field is None:
            return None
        if hasattr(field, "contents"):
            return field.contents()
        value = field.parts[field.data[0]]  # gguf < 0.11
        return bytes(value).decode("utf-8") if value.dtype == np.uint8 else value.tolist()[0]

    def _stored_array(self, stored) -> np.ndarray:
        """A tensor's stored bytes, read from the file into an array of the reader's dtype and shape (a
        writable copy; the memory map is not touched, so a file cut short is an error, not a SIGBUS)."""
        buffer = bytearray(stored.n_bytes)
        if self._handle is None:
            self._handle = open(self.path, "rb", buffering=0)
        self._handle.seek(stored.data_offset)
        view = memoryview(buffer)
        filled = 0
        while filled < stored.n_bytes:
            count = self._handle.readinto(view[filled:])
            if not count:
                raise CorruptCheckpointError(self.path, f"file ended inside tensor {stored.name} (truncated)")
            filled += count
        return np.frombuffer(buffer, dtype=stored.data.dtype).reshape(stored.data.shape)

    def _head_count(self, key: str, layer: int, fallback: int | None = None) -> int:
        value = self._field(f"{self.architecture}.attention.{key}", fallback)
        if isinstance(value, list):  # per-layer head counts
            value = value[layer]
        if not isinstance(value, int) or value <= 0:
            raise CorruptCheckpointError(self.path, f"metadata {self.architecture}.attention.{key} is {value!r}")
        return value

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, shard: str, infos: list[TensorInfo]):
        """Each tensor dequantized (float32 unless stored F16/F64/integer), torch dimension order, HF rows."""
        for info in sorted(infos, key=lambda i: self._stored[i.name].data_offset):
            stored = self._stored[info.name]
            array = self._stored_array(stored)
            if stored.tensor_type not in _PLAIN:
                try:
                    array = gguf.quants.dequantize(array, stored.tensor_type)
                except NotImplementedError as err:  # _can_dequantize said yes; kept for safety
                    raise UnsupportedFormatError(
                        f"{self.path}: tensor {stored.name} is stored as {stored.tensor_type.name}, which cannot be "
                        "dequantized",
                        path=self.path,
                        format="GGUF",
                    ) from err
            tensor = torch.from_numpy(np.ascontiguousarray(array)).reshape(info.shape)
            yield info, self._to_hf(info.name, stored.name, tensor)

    def _to_hf(self, name: str, gguf_name: str, tensor: torch.Tensor) -> torch.Tensor:
        if self.family.permuted_qk and name.endswith((".self_attn.q_proj.weight", ".self_attn.q_proj.bias",
                                                      ".self_attn.k_proj.weight", ".self_attn.k_proj.bias")):
            layer = int(gguf_name.split(".")[1])
            n_head = self._head_count("head_count", layer)
            if ".k_proj." in name:
                n_head = self._head_count("head_count_kv", layer, fallback=n_head)
            if tensor.shape[0] % (2 * n_head):
                raise CorruptCheckpointError(
                    self.path, f"{gguf_name} has {tensor.shape[0]} rows, not a multiple of 2 x {n_head} heads"
                )
            tensor = unpermute_rows(tensor, n_head)
        if self.family.norm_offset and name.endswith("norm.weight"):
            tensor = tensor - self.family.norm_offset
        return tensor

    def shard_order(self) -> list[str]:
        return [self.shard]

    def describe(self) -> SourceDescription:
        stored_types = Counter(tensor.tensor_type.name for tensor in self._stored.values())
        return SourceDescription(
            kind="gguf",
            location=self.path,
            shards=[local_shard(self.path, self.shard)],
            stored_types=dict(sorted(stored_types.items())),
        )

    def close(self) -> None:
        self._stored.clear()
        self._reader = None
        if self._handle is not None:
            self._handle.close()
            self._handle = None


_DEQUANTIZABLE: dict[object, bool] = {}


def _can_dequantize(qtype: object) -> bool:
    """Whether `gguf.quants.dequantize` implements a type: tried once on one all-zero block."""
    if qtype not in _DEQUANTIZABLE:
        block_size, type_size = gguf.GGML_QUANT_SIZES.get(qtype, (0, 0))
        try:
            gguf.quants.dequantize(np.zeros((1, type_size), dtype=np.uint8), qtype)
            _DEQUANTIZABLE[qtype] = block_size > 0
        except Exception:  # noqa: BLE001 - a probe: any failure means the type cannot be read
            _DEQUANTIZABLE[qtype] = False
    return _DEQUANTIZABLE[qtype]
