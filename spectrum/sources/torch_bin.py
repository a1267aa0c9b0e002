"""Legacy PyTorch checkpoints: `pytorch_model.bin`, or shards listed in `pytorch_model.bin.index.json`.

Each shard is opened with `torch.load(weights_only=True, mmap=True)`: the restricted unpickler
rebuilds tensors, dicts and plain values only, so no code stored in the file can run, and
memory-mapping reads a tensor's bytes only when it is used. One shard is open at a time.

A mapped file that shrinks while it is read would kill the process with SIGBUS: before each tensor
is copied out of the map, the file's size is checked against its size when it was opened, and the
copy is made right away (the tensor handed on is never backed by the map).
"""

from __future__ import annotations

import os
import pickle
import re
from typing import TYPE_CHECKING

from ..errors import CorruptCheckpointError, SourceError, UnsupportedFormatError
from .base import SourceDescription, TensorInfo, TensorSource, local_shard
from .quantized import FP8_SCALE_SUFFIX, dequantize_fp8, fp8_block_size, read_config, refuse_packed_tensors
from .dtypes import DTYPE_SIZES, FP8_DTYPES, torch_dtype
from .safetensors import require_shards, shards_from_index

if TYPE_CHECKING:
    import torch

BIN_INDEX_FILE = "pytorch_model.bin.index.json"
BIN_SUFFIXES = (".bin", ".pt", ".pth")
_BIN_SHARD = re.compile(r"^pytorch_model(-\d+-of-\d+)?\.bin$")


def bin_shards_in(folder: str) -> list[str]:
    """The `pytorch_model*.bin` shards of a folder: from its index when there is one, else by file name."""
    index_path = os.path.join(folder, BIN_INDEX_FILE)
    if os.path.isfile(index_path):
        return shards_from_index(index_path)
    return sorted(name for name in os.listdir(folder) if _BIN_SHARD.match(name))


class TorchBinSource(TensorSource):
    """`torch.save`d state dicts, read one shard at a time with the weights-only unpickler."""

    def __init__(self, root: str, shard_names: list[str]) -> None:
        self.root = root
        self.shard_names = shard_names
        self._listing: list[TensorInfo] | None = None
        self._shard_of: dict[str, str] | None = None  # tensor name -> shard, for scales stored elsewhere

    @classmethod
    def from_path(cls, path: str) -> TorchBinSource:
        if os.path.isfile(path):
            return cls(os.path.dirname(os.path.abspath(path)), [os.path.basename(path)])
        shard_names = bin_shards_in(path)
        require_shards(path, shard_names, os.path.join(path, BIN_INDEX_FILE))
        return cls(path, shard_names)

    def _load(self, shard: str) -> dict[str, torch.Tensor]:
        """The shard's tensors by name, memory-mapped; anything but tensors is refused or ignored."""
        import torch

        path = os.path.join(self.root, shard)
        try:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as err:
                if "zipfile" not in str(err) and "_use_new_zipfile_serialization" not in str(err):
                    raise
                # Files written before torch 1.6 (not zip archives) cannot be memory-mapped.
                state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise UnsupportedFormatError(
                f"{path}: refused to unpickle: it holds Python objects besides tensors, and loading them could run "
                f"code ({_unpickler_reason(err)}); use a safetensors copy of the model, or convert this file with "
                "a tool you trust",
                path=path,
                format="pickle",
            ) from err
        except (RuntimeError, EOFError, ValueError, OSError) as err:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CorruptCheckpointError(path, f"torch.load cannot read it ({reason})") from err
        if not isinstance(state, dict):
            raise SourceError(f"{path} holds a {type(state).__name__}, not a state dict of tensors")
        tensors = {name: value for name, value in state.items()
                   if isinstance(name, str) and isinstance(value, torch.Tensor)}
        if not tensors:
            raise SourceError(f"{path} holds no tensors at its top level; pass a checkpoint saved as a state dict")
        return tensors

    def tensors(self) -> list[TensorInfo]:
        if self._listing is None:
            names = {torch_dtype(name): name for name in DTYPE_SIZES}
            names.pop(None, None)
            listing = []
            for shard in self.shard_names:
                state = self._load(shard)  # memory-mapped: names and shapes only, no tensor bytes read
                for name, tensor in state.items():
                    dtype = names.get(tensor.dtype, str(tensor.dtype).removeprefix("torch."))
                    listing.append(TensorInfo(name, dtype, tuple(tensor.shape), shard))
                del state
            refuse_packed_tensors([info.name for info in listing], self.root, folder=self.root)
            self._listing = listing
        return list(self._listing)

    def shard_order(self) -> list[str]:
        return list(self.shard_names)

    def read(self, shard: str, infos: list[TensorInfo]):
        """As stored, except FP8 weights with a `*_scale_inv` (in their shard or another one): dequantized, float32.
        Each tensor is a copy, out of the memory map."""
        path = os.path.join(self.root, shard)
        with open(path, "rb") as handle:  # the file mapped next: its size now, and later
            opened = os.fstat(handle.fileno()).st_size
            state = self._load(shard)
            loaded = {shard: state}  # other shards opened for their scales, once per call
            block = None
            for info in infos:
                _still_whole(handle, opened, path, info.name)
                tensor = state[info.name]
                scale = None
                if info.dtype in FP8_DTYPES:
                    scale = state.get(info.name + FP8_SCALE_SUFFIX)
                    if scale is None:
                        scale = self._tensor_elsewhere(info.name + FP8_SCALE_SUFFIX, loaded)
                if scale is not None:
                    block = block or fp8_block_size(read_config(self.root))
                    tensor = dequantize_fp8(tensor, scale, block, name=info.name, path=path)
                else:
                    tensor = tensor.clone()
                yield info, tensor

    def _tensor_elsewhere(self, name: str, loaded: dict):
        """A tensor of another shard, by name (memory-mapped: only its bytes are read); None when no
        shard has it. `loaded`: shard -> state dict already opened by this read."""
        if self._shard_of is None:
            self._shard_of = {info.name: info.shard for info in self.tensors()}
        shard = self._shard_of.get(name)
        if shard is None:
            return None
        if shard not in loaded:
            loaded[shard] = self._load(shard)
        return loaded[shard][name].clone()  # out of the map at once (a scale: small)

    def describe(self) -> SourceDescription:
        shards = [local_shard(os.path.join(self.root, name), name) for name in self.shard_names]
        return SourceDescription(kind="local", location=os.path.abspath(self.root), shards=shards)


def _still_whole(handle, opened: int, path: str, name: str) -> None:
    """Raise CorruptCheckpointError when the open file is now shorter than `opened` bytes (reading
    its memory map past the new end would be a SIGBUS)."""
    size = os.fstat(handle.fileno()).st_size
    if size < opened:
        raise CorruptCheckpointError(path, f"file shrank from {opened} to {size} bytes while it was scanned, "
                                     f"before tensor {name} was read (truncated)")


def _unpickler_reason(err: Exception) -> str:
    """The line of torch's long weights-only message that says what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("WeightsUnpickler error:"):
            reason = line.removeprefix("WeightsUnpickler error:").strip().split(". ")[0]  # not torch's allowlist hint
            return "torch.load weights_only: " + reason.rstrip(".")
    return "torch.load weights_only refused it"
