"""A local path -> the source for its format: safetensors first, then `pytorch_model*.bin`, then one `.gguf`."""

from __future__ import annotations

import json
import logging
import os

from ..errors import SourceError
from ..files import require_regular
from .base import TensorSource
from .quantized import read_config, refuse_packed_config
from .safetensors import INDEX_FILE, LocalSafetensorsSource
from .torch_bin import BIN_INDEX_FILE, BIN_SUFFIXES, TorchBinSource, bin_shards_in

LOG = logging.getLogger("spectrum")
_WARNED_SHARDS: set[str] = set()  # one warning a file a process, however often it is opened


def warn_if_one_shard(path: str) -> None:
    """A file that the index beside it lists among several shards is scanned alone, but said once:
    the scores then cover part of the model."""
    folder = os.path.dirname(os.path.abspath(path))
    index_name = BIN_INDEX_FILE if path.endswith(BIN_SUFFIXES) else INDEX_FILE
    try:
        with open(os.path.join(folder, index_name), encoding="utf-8") as handle:
            files = set(json.load(handle)["weight_map"].values())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, KeyError, TypeError, AttributeError):
        return  # no index, or one the folder's own scan would report: nothing to say about this file
    if os.path.basename(path) in files and len(files) > 1 and path not in _WARNED_SHARDS:
        _WARNED_SHARDS.add(path)
        LOG.warning("%s is one shard of the checkpoint in %s (its index lists %d files); scanning this file only; "
                    "pass --model %s for the whole model", path, folder, len(files), folder)


_WEIGHT_SUFFIXES = (".safetensors", ".gguf", ".index.json", *BIN_SUFFIXES)


def gguf_files_in(folder: str) -> list[str]:
    """The `.gguf` file names in a folder, sorted (a folder is scanned as GGUF when it holds exactly one)."""
    return sorted(name for name in os.listdir(folder) if name.endswith(".gguf"))


def open_local(path: str) -> TensorSource:
    """Open a weights file or a model folder.

    A folder is read as safetensors when it has any (they win over `.bin` copies of the same
    weights), else as `pytorch_model*.bin`, else as the one `.gguf` file it holds. A folder
    whose `config.json` declares a packed quantization (GPTQ, AWQ, bitsandbytes) is refused. A weights
    file or index that is a FIFO, a device or a socket is refused by name (reading one would block).
    """
    require_regular(path, "pass a model folder or the weights file itself")
    if os.path.isfile(path):
        if path.endswith(".gguf"):
            from .gguf import GGUFSource  # the gguf package is imported only for GGUF files

            return GGUFSource(path)
        folder = os.path.dirname(os.path.abspath(path))
        refuse_packed_config(read_config(folder), path, folder=folder)
        warn_if_one_shard(path)
        if path.endswith(BIN_SUFFIXES):
            return TorchBinSource.from_path(path)
        return LocalSafetensorsSource.from_path(path)

    refuse_packed_config(read_config(path), path, folder=path)
    names = os.listdir(path)
    for name in names:
        if name.endswith(_WEIGHT_SUFFIXES):
            require_regular(os.path.join(path, name), "replace it with the file itself")
    if INDEX_FILE in names or any(name.endswith(".safetensors") for name in names):
        return LocalSafetensorsSource.from_path(path)
    if bin_shards_in(path):
        return TorchBinSource.from_path(path)
    ggufs = gguf_files_in(path)
    if len(ggufs) == 1:
        from .gguf import GGUFSource

        return GGUFSource(os.path.join(path, ggufs[0]))
    if len(ggufs) > 1:
        raise SourceError(
            f"{path} holds {len(ggufs)} .gguf files ({', '.join(ggufs[:3])}{', ...' if len(ggufs) > 3 else ''}); "
            "pass the one to scan as --model FOLDER/FILE.gguf"
        )
    return LocalSafetensorsSource.from_path(path)  # raises: no weights here
