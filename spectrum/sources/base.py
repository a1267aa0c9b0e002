"""The tensor-source interface and the factory that picks an implementation."""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING


if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a checkpoint header describes it, before any byte is read.

    Args:
        name: the tensor's name in the checkpoint (`model.layers.0.mlp.down_proj.weight`).
        dtype: the stored dtype's name in safetensors spelling (`BF16`, `F32`, `I64`, ...).
        shape: the stored shape.
        shard: the file holding it (a name relative to the source).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    shard: str


@dataclass(frozen=True)
class ShardInfo:
    """A weight file of the checkpoint: its name relative to the source and its size in bytes; for a
    local file also its path and modification time (what tells a stale cache without reading it)."""

    name: str
    size: int | None
    path: str | None = None
    mtime_ns: int | None = None


def local_shard(path: str, name: str) -> ShardInfo:
    """The ShardInfo of a local file, from one stat."""
    status = os.stat(path)
    return ShardInfo(name, status.st_size, os.path.abspath(path), status.st_mtime_ns)


@dataclass
class SourceDescription:
    """Provenance of a source, for the sidecar file."""

    kind: str
    location: str
    revision: str | None = None
    shards: list[ShardInfo] = field(default_factory=list)
    stored_types: dict[str, int] = field(default_factory=dict)  # e.g. GGUF {"Q4_1": 210}: tensors per stored type


class TensorSource(abc.ABC):
    """A checkpoint read lazily, one shard at a time.

    `tensors()` lists every tensor from the headers alone; `read(shard, infos)` yields the
    given tensors of one shard, in file order, so each shard is opened once.
    """

    @abc.abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every tensor of the checkpoint, from headers only, grouped by shard in file order."""

    @abc.abstractmethod
    def read(self, shard: str, infos: list[TensorInfo]):
        """Yield `(info, tensor)` for the given tensors of one shard, as stored (no dtype change), except
        quantized weights (GGUF, FP8 with scales), which come dequantized to float32."""

    reads_arrays = False  # True: `read_arrays` serves the weights as NumPy arrays, without torch

    def read_arrays(self, shard: str, infos: list[TensorInfo]):
        """As `read`, as `spectrum.sources.dtypes.StoredArray`s, for the dtypes in `spectrum.sources.dtypes.HOST_DTYPES`
        (only where `reads_arrays`)."""
        raise NotImplementedError(f"{type(self).__name__} reads torch tensors only")

    @abc.abstractmethod
    def describe(self) -> SourceDescription:
        """Where the weights came from: kind, location, revision and shard sizes."""

    def shard_order(self) -> list[str]:
        """Shards in the order they should be read."""
        seen: dict[str, None] = {}
        for info in self.tensors():
            seen.setdefault(info.shard, None)
        return list(seen)

    def prefetch(self, shard: str) -> None:
        """Start fetching a shard the scan will read next (a no-op for local files)."""

    def release(self, shard: str) -> None:
        """The scan is done with a shard (a Hub source may delete what it downloaded)."""

    def close(self) -> None:
        """Release open files."""


def as_float32(tensor: torch.Tensor) -> torch.Tensor:
    """Exact upcast of a floating tensor to float32 (float64 is rounded, as the reference does)."""
    import torch

    return tensor if tensor.dtype == torch.float32 else tensor.to(torch.float32)
