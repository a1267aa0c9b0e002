"""A scan: checkpoint headers -> the matrices to score -> singular values -> scores.

Weights are read shard by shard, one tensor at a time in file order; nothing holds more
than a few tensors. The model is never instantiated and no code from it runs.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping, Protocol

import torch

from . import __version__
from .distributed import World, gather, join, share
from .errors import SpectrumError
from .engine import resolve_device, resolve_method, singular_values
from .naming import (
    is_input_embedding,
    is_layer_module,
    is_output_head,
    module_name,
    module_type,
    natural_key,
    stack_of,
)
from .scores import ModuleScore, Scores
from .pipeline import Batcher, Item, Reader, run_batches
from .snr import DEFAULT_THRESHOLD, scores_from_singular_values
from .sources import TensorInfo, TensorSource, open_source
from .sources.base import SourceDescription
from .sources.quantized import FP8_SCALE_SUFFIX
from .sources.safetensors import DTYPES, FLOAT_DTYPES, FP8_DTYPES

LOG = logging.getLogger("spectrum")

TypeFilter = Callable[[str], bool]
ProgressCallback = Callable[[int, int, int], None]  # (matrices done, matrices total, bytes read)


class Journal(Protocol):
    """Where a scan commits its scores as they come, so that an interrupted scan can resume
    (`spectrum.journal.PartialScan` keeps them beside the cache)."""

    def begin(self, description: SourceDescription, method: str) -> Mapping[str, ModuleScore]:
        """Called once the matrices are chosen: the scores an interrupted scan of the same weights
        already committed. Those matrices are not read again and their scores are part of the result."""

    def record(self, module: str, score: ModuleScore) -> None:
        """Commit one new score (called in the scanning thread, as results arrive)."""


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
    names = {info.name for info in tensors}
    embeddings: dict[str, str | None] = {"input": None, "output": None}
    for info in tensors:
        if info.dtype not in FLOAT_DTYPES and info.dtype not in FP8_DTYPES:
            continue
        experts = _fused_expert_modules(info)
        module = module_name(info.name)
        if experts is None and (module is None or len(info.shape) != 2 or 0 in info.shape):
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
    return Inventory(matrices, unsupported, embeddings)


def default_type_filter(inventory: Inventory) -> TypeFilter:
    """Types inside numbered layers (attention, MLP, experts, routers); not embeddings or heads."""
    layered = {matrix.type for matrix in inventory.matrices if matrix.layered}
    return layered.__contains__


def cpu_count() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0))


def _budgets(device: torch.device, threads: int) -> tuple[int, int, int]:
    """(batch bytes, pending bytes, workers) for a device; batch bytes 0 means one matrix a batch."""
    if device.type != "cuda":
        return 0, 0, threads
    free, _ = torch.cuda.mem_get_info(device)
    # A batch of B stored bytes needs about 10 B on the device at its peak (the stored copy,
    # its float64 conversion and the Gram matrices with eigvalsh's workspace): use half the free memory.
    batch_bytes = max(free // 20, 1)
    return batch_bytes, min(2 * batch_bytes, 4 << 30), 1


@torch.no_grad()
def scan_source(
    source: TensorSource,
    *,
    type_filter: TypeFilter | None = None,
    method: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    share: Callable[[list[Matrix]], list[Matrix]] | None = None,
    batch_bytes: int | None = None,
    threshold: str = DEFAULT_THRESHOLD,
    on_progress: ProgressCallback | None = None,
    journal: Journal | None = None,
) -> tuple[dict[str, ModuleScore], dict]:
    """Score the chosen matrices of an open source.

    Args:
        share: picks this process's part of the work (under torchrun); default: everything.
        batch_bytes: stored bytes of same-shape matrices per batch; default: the device's own
            (one matrix a batch on CPU, a share of free memory on CUDA).
        journal: commits each score as it comes, and supplies those of an interrupted scan.

    Returns:
        (module -> ModuleScore in (type, layer) order, provenance for the sidecar).
    """
    started = time.perf_counter()
    inventory = take_inventory(source.tensors())
    wanted = type_filter or default_type_filter(inventory)
    chosen = [matrix for matrix in inventory.matrices if wanted(matrix.type)]
    if not chosen:
        raise SpectrumError(
            "no weight matrix matches the requested types; run with --list-types to see the checkpoint's types"
        )
    for info in inventory.unsupported:
        if wanted(module_type(module_name(info.name) or info.name)):
            LOG.warning("%s is stored as %s, which needs its scale tensors to dequantize; left out", info.name, info.dtype)
    compute_device = resolve_device(device)
    concrete_method = resolve_method(method, compute_device)
    mine = share(chosen) if share else chosen
    known = journal.begin(source.describe(), concrete_method) if journal else {}
    resumed = {m.module: ModuleScore(known[m.module].snr, m.type) for m in mine if m.module in known}
    workers = threads or cpu_count()
    default_batch, pending_bytes, workers = _budgets(compute_device, workers)
    if batch_bytes is None:
        batch_bytes = default_batch
    else:
        pending_bytes = max(pending_bytes, 2 * batch_bytes)

    by_shard: dict[str, dict[str, list[Matrix]]] = {}  # shard -> tensor name -> its matrices
    for matrix in mine:
        if matrix.module in resumed:
            continue  # scored before an interruption: not read again
        by_shard.setdefault(matrix.info.shard, {}).setdefault(matrix.info.name, []).append(matrix)
    shards = [shard for shard in source.shard_order() if shard in by_shard]

    def produce():
        for position, shard in enumerate(shards):
            source.prefetch(shard)  # queued first: the shard needed now
            if position + 1 < len(shards):
                source.prefetch(shards[position + 1])  # downloads while this one is scanned
            wanted_here = by_shard[shard]
            for info, tensor in source.read(shard, [group[0].info for group in wanted_here.values()]):
                for matrix in wanted_here[info.name]:
                    yield matrix, (tensor if matrix.expert is None else tensor[matrix.expert])
            source.release(shard)

    def compute(batch: list[Item]) -> list[tuple[Matrix, float | None]]:
        """Scores of one batch; None for a matrix with NaN or infinite entries."""
        stack = batch[0].tensor.unsqueeze(0) if len(batch) == 1 else torch.stack([item.tensor for item in batch])
        stack = stack.to(compute_device)  # (N, m, n) as stored
        finite = torch.isfinite(stack).flatten(1).all(dim=1)  # (N,)
        flags = finite.tolist()
        scores = iter(())
        if any(flags):
            rows, cols = batch[0].key.shape
            values = singular_values(stack[finite], method=concrete_method, device=compute_device)
            scores = iter(scores_from_singular_values(values, rows, cols, threshold=threshold).tolist())
        return [(item.key, next(scores) if ok else None) for item, ok in zip(batch, flags)]

    results: dict[str, ModuleScore] = dict(resumed)
    done = len(resumed)
    reader = Reader(produce, depth=workers + 1)

    def on_results(batch_results: list[tuple[Matrix, float | None]]) -> None:
        nonlocal done
        for matrix, score in batch_results:
            if score is None:
                LOG.warning("%s has NaN or infinite entries; left out of the scores", matrix.info.name)
            else:
                results[matrix.module] = ModuleScore(score, matrix.type)
                if journal:
                    journal.record(matrix.module, results[matrix.module])
        done += len(batch_results)
        if on_progress:
            on_progress(done, len(mine), reader.bytes_read)

    items = (((item.key.type, item.key.shape), item) for item in reader)
    if on_progress:
        on_progress(done, len(mine), 0)
    previous_threads = torch.get_num_threads()
    if compute_device.type == "cpu":
        torch.set_num_threads(1)  # one single-threaded worker per core
    try:
        run_batches(items, Batcher(batch_bytes=batch_bytes, pending_bytes=pending_bytes), compute,
                    workers=workers, on_results=on_results)
    finally:
        torch.set_num_threads(previous_threads)

    ordered = dict(sorted(results.items(), key=lambda item: (item[1].type, natural_key(item[0]))))
    description = source.describe()
    provenance = {
        "tool": "spectrum",
        "version": __version__,
        "source": {
            "kind": description.kind,
            "location": description.location,
            "revision": description.revision,
            "shards": [{"name": shard.name, "size": shard.size} for shard in description.shards],
            **({"stored_types": description.stored_types} if description.stored_types else {}),
        },
        "dtypes": sorted({matrix.info.dtype for matrix in chosen}),
        "method": concrete_method,
        "threshold": threshold,
        "device": str(compute_device),
        "workers": workers,
        "seconds": round(time.perf_counter() - started, 3),
        "bytes_read": reader.bytes_read,
        **({"resumed": len(resumed)} if resumed else {}),
        "checkpoint_types": inventory.types(),
        "embeddings": inventory.embeddings,
    }
    return ordered, provenance


def scan(
    model: str,
    *,
    revision: str | None = None,
    type_filter: TypeFilter | None = None,
    method: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    keep_shards: bool = True,
    threshold: str = DEFAULT_THRESHOLD,
    on_progress: ProgressCallback | None = None,
    journal: Journal | None = None,
) -> Scores:
    """Scan a local folder, a `.safetensors` file or a Hub id and return the scores (nothing is written).

    Under `torchrun`, each rank scans its share and every rank returns the whole result;
    `Scores.meta["world_size"]` says how many processes took part. A `journal` (see `scan_source`)
    serves a single process only.
    """
    world = World.from_env()
    device = join(world, device)
    source = open_source(model, revision=revision, keep_shards=keep_shards)
    try:
        entries, provenance = scan_source(
            source,
            type_filter=type_filter,
            method=method,
            device=device,
            threads=threads,
            share=lambda chosen: share(
                world, chosen, lambda m: m.info.shard, lambda m: math.prod(m.shape) * DTYPES[m.info.dtype][1]
            ),
            threshold=threshold,
            on_progress=on_progress if world.is_main else None,
            journal=journal if world.size == 1 else None,
        )
    finally:
        source.close()
    parts = gather(world, (entries, provenance))
    if world.size > 1:
        combined = {module: score for part, _ in parts for module, score in part.items()}
        entries = dict(sorted(combined.items(), key=lambda item: (item[1].type, natural_key(item[0]))))
        provenance["seconds"] = max(meta["seconds"] for _, meta in parts)
        provenance["bytes_read"] = sum(meta["bytes_read"] for _, meta in parts)
        provenance["devices"] = [meta["device"] for _, meta in parts]
        provenance["matrices_per_rank"] = [len(part) for part, _ in parts]
    provenance["world_size"] = world.size
    provenance["model"] = model
    return Scores(model=model, entries=entries, meta=provenance)


def missing_types(scores: Scores, type_filter: TypeFilter | None) -> set[str] | None:
    """Types the request wants that a cached file lacks; None when that cannot be known.

    Without a sidecar (a file made elsewhere) the request is taken as covered when at least
    one cached type matches it, as Axolotl would use the file as it is.
    """
    checkpoint_types = scores.meta.get("checkpoint_types")
    cached = set(scores.types())
    if not isinstance(checkpoint_types, dict):
        if type_filter is None or any(type_filter(type_name) for type_name in cached):
            return set()
        return None
    if type_filter is None:
        wanted = {name for name, entry in checkpoint_types.items() if isinstance(entry, dict) and entry.get("layered")}
    else:
        wanted = {name for name in checkpoint_types if type_filter(name)}
    return wanted - cached


def merge(cached: Scores, fresh: Scores) -> Scores:
    """Cached scores plus freshly scanned types, in (type, layer) order; fresh provenance wins."""
    combined = dict(cached.entries)
    combined.update(fresh.entries)
    ordered = dict(sorted(combined.items(), key=lambda item: (item[1].type, natural_key(item[0]))))
    return Scores(model=fresh.model, entries=ordered, meta=fresh.meta)

