"""Safetensors files read lazily: headers parsed and checked, tensors read one at a time.

The header is validated before any tensor is trusted: offsets inside the file, byte counts
that match dtype and shape, no overlapping ranges. A tensor is read with one `readinto`
into a buffer of exactly its size, so memory stays at a few tensors whatever the model size.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import CorruptCheckpointError, SourceError
from ..files import read_regular_text
from .base import SourceDescription, TensorInfo, TensorSource, local_shard
from .dtypes import DTYPE_SIZES, FP8_DTYPES, StoredArray, torch_dtype
from .quantized import FP8_SCALE_SUFFIX, dequantize_fp8, fp8_block_size, read_config, refuse_packed_tensors

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger("spectrum")

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors format's own limit

@dataclass(frozen=True)
class _Entry:
    info: TensorInfo
    begin: int  # offset of the first byte in the file
    nbytes: int


class SafetensorsFile:
    """One `.safetensors` file: its checked header, and reads of single tensors."""

    def __init__(self, path: str, shard: str) -> None:
        self.path = path
        self.shard = shard
        self.size = os.path.getsize(path)
        self.entries = _parse_header(path, shard, self.size)
        self._handle = None  # opened at the first read, kept until `close`: a file deleted meanwhile stays readable
        self._handle_lock = threading.Lock()

    def read(self, info: TensorInfo) -> torch.Tensor:
        """The tensor's bytes as a tensor of its stored dtype and shape."""
        import torch

        stored = torch_dtype(info.dtype)
        if stored is None:
            raise CorruptCheckpointError(self.path, f"tensor {info.name} has dtype {info.dtype}, which cannot be read")
        if self.entries[info.name].nbytes == 0:
            return torch.empty(info.shape, dtype=stored)
        return torch.frombuffer(self._bytes(info), dtype=stored).reshape(info.shape)

    def read_array(self, info: TensorInfo) -> "StoredArray":
        """The tensor's bytes as NumPy, without torch; for the dtypes in `spectrum.sources.dtypes.HOST_DTYPES`."""
        return StoredArray.from_bytes(self._bytes(info), info.dtype, info.shape)

    def _bytes(self, info: TensorInfo) -> bytearray:
        """The tensor's bytes, read whole."""
        entry = self.entries[info.name]
        buffer = bytearray(entry.nbytes)
        with self._handle_lock:
            if self._handle is None:
                self._handle = open(self.path, "rb", buffering=0)
            self._handle.seek(entry.begin)
            view = memoryview(buffer)
            filled = 0
            while filled < entry.nbytes:
                count = self._handle.readinto(view[filled:])
                if not count:
                    raise CorruptCheckpointError(self.path, f"file ended inside tensor {info.name} (truncated)")
                filled += count
        return buffer

    def close(self) -> None:
        with self._handle_lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


def _parse_header(path: str, shard: str, size: int) -> dict[str, _Entry]:
    """Parse and check a safetensors header; raise CorruptCheckpointError on any inconsistency."""
    if size < 8:
        raise CorruptCheckpointError(path, f"file is {size} bytes, too short for a safetensors header")
    with open(path, "rb") as handle:
        (header_bytes,) = struct.unpack("<Q", handle.read(8))
        if header_bytes > _MAX_HEADER_BYTES:
            raise CorruptCheckpointError(path, f"header claims {header_bytes} bytes, more than the format allows")
        if 8 + header_bytes > size:
            raise CorruptCheckpointError(path, f"header claims {header_bytes} bytes but the file has {size} (truncated)")
        raw = handle.read(header_bytes)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        raise CorruptCheckpointError(path, f"header names tensor {err.key} twice") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptCheckpointError(path, f"header is not valid JSON ({err})") from err
    except RecursionError as err:
        raise CorruptCheckpointError(path, "header JSON is nested too deeply to be a safetensors header") from err
    if not isinstance(header, dict):
        raise CorruptCheckpointError(path, "header is not a JSON object")

    data_start = 8 + header_bytes
    data_size = size - data_start
    entries: dict[str, _Entry] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _check_spec(path, name, spec)
        if end > data_size:
            raise CorruptCheckpointError(
                path, f"tensor {name} ends at byte {end} of a {data_size}-byte data section (truncated)"
            )
        itemsize = DTYPE_SIZES.get(dtype, 0)
        if itemsize and math.prod(shape) * itemsize != end - begin:
            raise CorruptCheckpointError(
                path, f"tensor {name} is {dtype} {list(shape)} but its offsets span {end - begin} bytes"
            )
        entries[name] = _Entry(TensorInfo(name, dtype, shape, shard), data_start + begin, end - begin)

    # Zero-size tensors may share their offset with the next tensor: sort them first.
    ordered = sorted(entries.values(), key=lambda entry: (entry.begin, entry.nbytes))
    for previous, current in zip(ordered, ordered[1:]):
        if current.begin < previous.begin + previous.nbytes:
            raise CorruptCheckpointError(path, f"tensors {previous.info.name} and {current.info.name} overlap")
    return {entry.info.name: entry for entry in ordered}


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    """A JSON object that names no key twice (json's default keeps the last silently)."""
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _check_spec(path: str, name: str, spec: object) -> tuple[str, tuple[int, ...], int, int]:
    if not isinstance(spec, dict):
        raise CorruptCheckpointError(path, f"tensor {name} has no dtype/shape/offsets entry")
    dtype, shape, offsets = spec.get("dtype"), spec.get("shape"), spec.get("data_offsets")
    if not isinstance(dtype, str):
        raise CorruptCheckpointError(path, f"tensor {name} has no dtype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise CorruptCheckpointError(path, f"tensor {name} has an invalid shape {shape!r}")
    if math.prod(max(d, 1) for d in shape) >= 2**63:  # torch cannot even describe it, zero-size or not
        raise CorruptCheckpointError(path, f"tensor {name} has an impossibly large shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1]
    ):
        raise CorruptCheckpointError(path, f"tensor {name} has invalid data offsets {offsets!r}")
    return dtype, tuple(shape), offsets[0], offsets[1]


class ShardedSafetensors(TensorSource):
    """A checkpoint made of one or more safetensors shards, each opened when it is read."""

    reads_arrays = True

    def __init__(self, shard_names: list[str], weight_map: dict[str, str] | None = None) -> None:
        self.shard_names = shard_names
        self.weight_map = weight_map  # the index's tensor -> shard, when there is an index
        self._files: dict[str, SafetensorsFile] = {}
        self._listing: dict[str, TensorInfo] | None = None
        self._fp8_block: tuple[int, int] | None = None

    def _local_path(self, shard: str) -> str:
        """A local path to the shard (downloading it if needed)."""
        raise NotImplementedError

    def _file(self, shard: str) -> SafetensorsFile:
        if shard not in self._files:
            self._files[shard] = SafetensorsFile(self._local_path(shard), shard)
        return self._files[shard]

    def _shard_tensors(self, shard: str) -> list[TensorInfo]:
        return [entry.info for entry in self._file(shard).entries.values()]

    def _config(self) -> dict | None:
        """The checkpoint's `config.json`, when it can be had (FP8 block size)."""
        return None

    def tensors(self) -> list[TensorInfo]:
        if self._listing is None:
            infos = [info for shard in self.shard_names for info in self._shard_tensors(shard)]
            refuse_packed_tensors([info.name for info in infos], self.describe().location)
            listing: dict[str, TensorInfo] = {}
            for info in infos:
                if info.name in listing:
                    raise CorruptCheckpointError(
                        self._shard_location(info.shard),
                        f"tensor {info.name} is stored in {listing[info.name].shard} as well; the shards do not belong together",
                    )
                listing[info.name] = info
            self._check_index(listing)
            self._listing = listing
        return list(self._listing.values())

    def _shard_location(self, shard: str) -> str:
        return os.path.join(self.describe().location, shard)

    def _check_index(self, listing: dict[str, TensorInfo]) -> None:
        """Every tensor the index maps must be in some shard (a shard replaced by another save drops them)."""
        if not self.weight_map:
            return
        missing = [name for name in self.weight_map if name not in listing]
        if missing:
            shard = self.weight_map[missing[0]]
            raise CorruptCheckpointError(
                self._shard_location(INDEX_FILE),
                f"it maps {len(missing)} tensor(s) that no shard holds ({', '.join(missing[:3])}"
                f"{', ...' if len(missing) > 3 else ''}; the first should be in {shard})",
            )

    def shard_order(self) -> list[str]:
        return list(self.shard_names)

    def read(self, shard: str, infos: list[TensorInfo]):
        """As stored, except FP8 weights with a `*_scale_inv` tensor: those come dequantized, float32."""
        handle = self._file(shard)
        for info in sorted(infos, key=lambda i: handle.entries[i.name].begin):
            tensor = handle.read(info)
            if info.dtype in FP8_DTYPES and (scale := self._fp8_scale(handle, info)) is not None:
                if self._fp8_block is None:
                    self._fp8_block = fp8_block_size(self._config())
                tensor = dequantize_fp8(tensor, scale, self._fp8_block, name=info.name, path=handle.path)
            yield info, tensor

    def read_arrays(self, shard: str, infos: list[TensorInfo]):
        """As `read`, as NumPy `StoredArray`s (no torch); every info's dtype must be in `HOST_DTYPES`."""
        handle = self._file(shard)
        for info in sorted(infos, key=lambda i: handle.entries[i.name].begin):
            yield info, handle.read_array(info)

    def _fp8_scale(self, handle: SafetensorsFile, info: TensorInfo) -> torch.Tensor | None:
        """The `*.weight_scale_inv` of an FP8 weight, from its shard or another one; None without one."""
        name = info.name + FP8_SCALE_SUFFIX
        if name in handle.entries:
            return handle.read(handle.entries[name].info)
        scale = (self._listing or {}).get(name)
        return None if scale is None else self._file(scale.shard).read(scale)

    def release(self, shard: str) -> None:
        handle = self._files.pop(shard, None)
        if handle is not None:
            handle.close()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


class LocalSafetensorsSource(ShardedSafetensors):
    """A local folder (`model.safetensors.index.json`, or every `*.safetensors`) or one file."""

    def __init__(self, root: str, shard_names: list[str], weight_map: dict[str, str] | None = None) -> None:
        super().__init__(shard_names, weight_map)
        self.root = root

    @classmethod
    def from_path(cls, path: str) -> "LocalSafetensorsSource":
        if os.path.isfile(path):
            if not path.endswith(".safetensors"):
                raise SourceError(f"{path} is not a .safetensors file; pass a model folder or a .safetensors file")
            return cls(os.path.dirname(os.path.abspath(path)), [os.path.basename(path)])
        index_path = os.path.join(path, INDEX_FILE)
        if os.path.isfile(index_path):
            weight_map = index_weight_map(index_path)
            shard_names = shards_of(weight_map, index_path)
            require_shards(path, shard_names, index_path)
            return cls(path, shard_names, weight_map)
        shard_names = sorted(name for name in os.listdir(path) if name.endswith(".safetensors"))
        if SINGLE_FILE in shard_names:
            # What transformers loads from a folder without an index: model.safetensors alone, not an
            # adapter_model.safetensors or consolidated.safetensors saved beside it.
            ignored = [name for name in shard_names if name != SINGLE_FILE]
            if ignored:
                LOG.info("%s: scanning %s, as transformers loads it; not %s", path, SINGLE_FILE, ", ".join(ignored))
            shard_names = [SINGLE_FILE]
        if not shard_names:
            others = [name for name in os.listdir(path) if name.endswith((".bin", ".gguf", ".pt", ".pth"))]
            hint = f" (found {others[0]}, which is not a weights file spectrum reads)" if others else ""
            raise SourceError(f"{path} holds no *.safetensors weights{hint}; pass a folder with a safetensors checkpoint")
        return cls(path, shard_names)

    def _local_path(self, shard: str) -> str:
        return os.path.join(self.root, shard)

    def _config(self) -> dict | None:
        return read_config(self.root)

    def describe(self) -> SourceDescription:
        shards = [local_shard(self._local_path(name), name) for name in self.shard_names]
        return SourceDescription(kind="local", location=os.path.abspath(self.root), shards=shards)


def require_shards(folder: str, shard_names: list[str], index_path: str) -> None:
    """Raise SourceError naming the shards `index_path` lists that are not files in `folder`."""
    missing = [name for name in shard_names if not os.path.isfile(os.path.join(folder, name))]
    if missing:
        raise SourceError(
            f"{index_path} names {len(missing)} shard(s) missing from the folder "
            f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}); download them again"
        )


def index_weight_map(index_path: str) -> dict[str, str]:
    """The `weight_map` (tensor -> shard file) of a `model.safetensors.index.json`, checked."""
    try:
        index = json.loads(read_regular_text(index_path))  # a FIFO or a link to /dev/zero: an error naming it
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise TypeError("weight_map is not an object of file names")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(index_path, f"not a valid safetensors index ({err})") from err
    except RecursionError as err:
        raise CorruptCheckpointError(index_path, "not a valid safetensors index (nested too deeply)") from err
    return weight_map


def shards_from_index(index_path: str) -> list[str]:
    """Shard file names from a `model.safetensors.index.json`, sorted (`model-00001-of-00004...` first)."""
    return shards_of(index_weight_map(index_path), index_path)


def shards_of(weight_map: dict[str, str], index_path: str) -> list[str]:
    """The shard file names a weight map names, sorted, each checked to stay inside the model folder."""
    names = sorted(set(weight_map.values()))
    if not names:
        raise CorruptCheckpointError(index_path, "weight_map names no tensor and no shard")
    for name in names:
        if os.path.isabs(name) or ".." in name.replace("\\", "/").split("/"):
            raise CorruptCheckpointError(index_path, f"shard name {name!r} points outside the model folder")
    return names
