"""A scan: checkpoint headers -> the matrices to score -> singular values -> scores.

Weights are read shard by shard, one tensor at a time in file order; nothing holds more
than a few tensors. The model is never instantiated and no code from it runs.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Mapping, Protocol

from .._version import __version__
from .distributed import World, gather, join, share
from ..errors import NoMatrixError, UnsupportedFormatError, UsageError, WeightsChangedError
from .svd_numpy import NUMPY_EIGVALSH_BELOW, cpu_threads_limited, keep_gram_buffers, resolve_method
from .svd_numpy import singular_values as host_singular_values
from .inventory import Inventory, Matrix, TypeFilter, default_type_filter, take_inventory  # noqa: F401 (re-exported)
from ..naming import is_layer_module, module_name, module_type, natural_key, without_expert_index
from ..provenance import Embeddings, LeftOut, Provenance, ShardRecord, SourceRecord, TypeRecord
from ..scores import ModuleScore, Scores
from .pipeline import Batcher, Item, Reader, run_batches
from .snr import DEFAULT_THRESHOLD, scores_from_singular_values
from ..sources import TensorSource, open_source
from ..files import sample_digest
from ..sources.base import ShardInfo, SourceDescription, TensorInfo
from ..sources.quantized import FP8_SCALE_SUFFIX
from ..sources.dtypes import DTYPE_SIZES, HOST_DTYPES

if TYPE_CHECKING:
    import torch

LOG = logging.getLogger("spectrum")

ProgressCallback = Callable[[int, int, int], None]  # (matrices done, matrices total, bytes read)
_worker_stream = threading.local()  # a CUDA worker's own stream, when a scan issues on several


class Journal(Protocol):
    """Where a scan commits its scores as they come, so that an interrupted scan can resume
    (`spectrum.cache.journal.PartialScan` keeps them beside the cache)."""

    def begin(self, description: SourceDescription, method: str) -> Mapping[str, ModuleScore]:
        """Called once the matrices are chosen: the scores an interrupted scan of the same weights
        already committed. Those matrices are not read again and their scores are part of the result."""

    def record(self, module: str, score: ModuleScore) -> None:
        """Commit one new score (called in the scanning thread, as results arrive)."""


def cpu_count() -> int:
    """Cores this process may use (its CPU affinity on Linux; every core where there is none: macOS, Windows)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def cuda_ruled_out() -> bool:
    """True when `--device auto` cannot find CUDA, known without importing torch: no torch, a
    CPU-only build of it (version `+cpu`), or macOS. Otherwise torch has to be asked."""
    import sys
    from importlib import metadata

    if sys.platform == "darwin":
        return True
    try:
        return "+cpu" in metadata.version("torch")
    except metadata.PackageNotFoundError:
        return True


def _host_route(source: TensorSource, matrices: list[Matrix], device: str, method: str) -> bool:
    """Whether these matrices are scored without torch (`spectrum.scoring.svd_numpy`): on CPU, by the Gram route
    (`method` as resolved), from a source that reads NumPy arrays, in the dtypes NumPy reads, all
    under the size where torch's eigvalsh becomes the faster one."""
    on_cpu = device == "cpu" or (device == "auto" and cuda_ruled_out())
    return (
        on_cpu
        and method == "gram"
        and source.reads_arrays
        and all(m.info.dtype in HOST_DTYPES and min(m.shape) < NUMPY_EIGVALSH_BELOW for m in matrices)
    )


WORKERS_PER_CORE = 4  # the most CPU workers a scan starts per core: more only add memory (each holds a matrix)


def capped_workers(threads: int | None) -> int:
    """CPU workers for `threads` (default: one per core), at most `WORKERS_PER_CORE` per core, with a warning."""
    cores = cpu_count()
    if not threads:
        return cores
    cap = WORKERS_PER_CORE * cores
    if threads > cap:
        LOG.warning("--threads %d is more than %d workers per core; using %d (%d cores)",
                    threads, WORKERS_PER_CORE, cap, cores)
        return cap
    return threads


CUDA_STREAMS_ENV = "SPECTRUM_CUDA_STREAMS"


def cuda_streams() -> int:
    """CUDA streams a scan issues its batches on, one worker thread each: `$SPECTRUM_CUDA_STREAMS`,
    default 1. cuSOLVER's eigenvalue solver is latency-bound at the sizes of large models, so more
    streams may keep a GPU busier; whether they do is measured by benchmarks/cuda_eig.py."""
    text = os.environ.get(CUDA_STREAMS_ENV, "").strip()
    if not text:
        return 1
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise UsageError(f"{CUDA_STREAMS_ENV}={text!r} is not a number of streams; use 1 to 64, or unset it")
    return int(text)


def _budgets(device: "torch.device", threads: int) -> tuple[int, int, int]:
    """(batch bytes, pending bytes, workers) for a device; batch bytes 0 means one matrix a batch."""
    if device.type != "cuda":
        return 0, 0, threads
    import torch

    streams = cuda_streams()
    free, _ = torch.cuda.mem_get_info(device)
    # A batch of B stored bytes needs about 10 B on the device at its peak (the stored copy,
    # its float64 conversion and the Gram matrices with eigvalsh's workspace): use half the free
    # memory, shared by the streams' batches in flight.
    batch_bytes = max(free // (20 * streams), 1)
    return batch_bytes, min(2 * batch_bytes * streams, 4 << 30), streams


def _cuda_worker_setup(device: "torch.device") -> None:
    """Give this worker thread a CUDA stream of its own on `device` (when a scan uses several)."""
    import torch

    _worker_stream.stream = torch.cuda.Stream(device=device)


def _worker_stream_context():
    """The calling worker's own CUDA stream, as a context; a no-op where it has none."""
    import torch

    stream = getattr(_worker_stream, "stream", None)
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


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
) -> tuple[dict[str, ModuleScore], Provenance]:
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
    chosen = _chosen_matrices(inventory, type_filter)
    mine = share(chosen) if share else chosen
    route = _Route.choose(source, mine, method, device, threads, batch_bytes)
    description = source.describe()  # before any weight is read: what the scores will be of
    shard_states = {shard.name: state for shard in description.shards if (state := _ShardState.take(shard))}
    known = journal.begin(description, route.method) if journal else {}
    resumed = {m.module: ModuleScore(known[m.module].snr, m.type) for m in mine if m.module in known}
    shards, by_shard = _unread_by_shard(source, [m for m in mine if m.module not in resumed])
    reader = Reader(functools.partial(_read_matrices, source, shards, by_shard, route.host), depth=route.workers + 1)
    collected = _Collected(dict(resumed), len(mine), reader, journal, on_progress)
    try:
        _score_all(route, reader, threshold, collected)
    finally:
        reader.stop()  # after a failure too: no read goes on while the caller closes the source
    _check_unchanged(description, shard_states)
    ordered = dict(sorted(collected.results.items(), key=lambda item: (item[1].type, natural_key(item[0]))))
    after = {shard.name: shard for shard in source.describe().shards}  # Hub shard sizes are known once downloaded
    shards = [after.get(shard.name, shard) if shard.path is None else shard for shard in description.shards]
    provenance = Provenance(
        tool="spectrum",
        version=__version__,
        source=SourceRecord(
            kind=description.kind,
            location=description.location,
            revision=description.revision,
            shards=tuple(_shard_record(shard, shard_states.get(shard.name)) for shard in shards),
            stored_types=description.stored_types or None,
        ),
        dtypes=tuple(sorted({matrix.info.dtype for matrix in chosen})),
        method=route.method,
        threshold=threshold,
        device=str(route.device),
        workers=route.workers,
        seconds=round(time.perf_counter() - started, 3),
        bytes_read=reader.bytes_read,
        resumed=len(resumed) or None,
        checkpoint_types={name: TypeRecord(entry["count"], tuple(map(tuple, entry["shapes"])), entry["layered"])
                          for name, entry in inventory.types().items()},
        embeddings=Embeddings(inventory.embeddings.get("input"), inventory.embeddings.get("output")),
        left_out=dict(sorted(collected.left_out.items())) or None,
        fused_tensors=tuple(fused_tensor_names(chosen)) or None,
    )
    return ordered, provenance


def _chosen_matrices(inventory: Inventory, type_filter: TypeFilter | None) -> list[Matrix]:
    """The matrices of the wanted types (default: those inside numbered layers); what is left out and why is said.

    Raises:
        UnsupportedFormatError: every wanted matrix is FP8 without its scale tensors.
        NoMatrixError: no matrix is of a wanted type.
    """
    wanted = type_filter or default_type_filter(inventory)
    chosen = [matrix for matrix in inventory.matrices if wanted(matrix.type)]
    without_scales = [info for info in inventory.unsupported if _wanted_unsupported(info, type_filter)]
    if not chosen and without_scales:
        first = without_scales[0]
        which = (f"all {len(without_scales)} weight matrices of the requested types are" if len(without_scales) > 1
                 else "the one weight matrix of the requested types is")
        raise UnsupportedFormatError(
            f"{which} FP8 without the scale tensors needed to dequantize them ({first.name} is {first.dtype} and "
            f"there is no {first.name}{FP8_SCALE_SUFFIX}); download the checkpoint again with its "
            f"*.weight{FP8_SCALE_SUFFIX} tensors, or scan the unquantized model",
            format="FP8",
        )
    if not chosen:
        raise NoMatrixError(
            "no weight matrix matches the requested types; run with --list-types to see the checkpoint's types"
        )
    _warn_without_scales(without_scales)
    for info in inventory.unsplit:
        LOG.warning("%s is a 3-D tensor %s outside an `experts` module, which spectrum does not split into matrices; "
                    "left out", info.name, list(info.shape))
    return chosen


@dataclass(frozen=True)
class _Route:
    """How a scan computes: on the host with NumPy (`host`), or with torch on `device`; its workers and
    batch budgets (batch bytes 0: one matrix a batch)."""

    host: bool
    method: str  # as resolved: "gram" or "svd"
    device: "torch.device | str"
    workers: int
    batch_bytes: int
    pending_bytes: int

    @classmethod
    def choose(cls, source: TensorSource, matrices: list[Matrix], method: str, device: str, threads: int | None,
               batch_bytes: int | None) -> "_Route":
        concrete_method = resolve_method(method)
        host = _host_route(source, matrices, device, concrete_method)
        if host:
            compute_device = "cpu"
        else:
            from .svd_torch import resolve_device

            compute_device = resolve_device(device)
        workers = capped_workers(threads)
        default_batch, pending_bytes, workers = (0, 0, workers) if host else _budgets(compute_device, workers)
        if batch_bytes is None:
            batch_bytes = default_batch
        else:
            pending_bytes = max(pending_bytes, 2 * batch_bytes)
        return cls(host, concrete_method, compute_device, workers, batch_bytes, pending_bytes)


def _unread_by_shard(source: TensorSource, matrices: list[Matrix]) -> tuple[list[str], dict[str, dict[str, list[Matrix]]]]:
    """The shards to read, in the source's order, and in each the matrices of every stored tensor (a fused
    expert tensor holds several): the matrices a journal did not already score."""
    by_shard: dict[str, dict[str, list[Matrix]]] = {}  # shard -> tensor name -> its matrices
    for matrix in matrices:
        by_shard.setdefault(matrix.info.shard, {}).setdefault(matrix.info.name, []).append(matrix)
    return [shard for shard in source.shard_order() if shard in by_shard], by_shard


def _read_matrices(source: TensorSource, shards: list[str], by_shard: dict[str, dict[str, list[Matrix]]], host: bool):
    """(matrix, its array or tensor), shard by shard, each stored tensor read once (a fused expert tensor
    yields each expert); the next shard is prefetched while this one is read."""
    read = source.read_arrays if host else source.read
    for position, shard in enumerate(shards):
        source.prefetch(shard)  # queued first: the shard needed now
        if position + 1 < len(shards):
            source.prefetch(shards[position + 1])  # downloads while this one is scanned
        wanted_here = by_shard[shard]
        for info, tensor in read(shard, [group[0].info for group in wanted_here.values()]):
            for matrix in wanted_here[info.name]:
                yield matrix, (tensor if matrix.expert is None else tensor[matrix.expert])
        source.release(shard)


def _score_on_host(batch: list[Item], threshold: str) -> list[tuple[Matrix, float | None]]:
    """Scores of one batch of NumPy arrays, one matrix at a time; None for a matrix with NaN or infinite entries."""
    scored = []
    for item in batch:
        values = host_singular_values(item.tensor)
        rows, cols = item.key.shape
        score = None if values is None else float(
            scores_from_singular_values(values[None, :], rows, cols, threshold=threshold)[0]
        )
        scored.append((item.key, score))
    return scored


def _score_with_torch(batch: list[Item], route: _Route, threshold: str) -> list[tuple[Matrix, float | None]]:
    """Scores of one batch of torch tensors; None for a matrix with NaN or infinite entries."""
    import torch

    from .svd_torch import singular_values

    stack = batch[0].tensor.unsqueeze(0) if len(batch) == 1 else torch.stack([item.tensor for item in batch])
    with _worker_stream_context():  # this worker's own CUDA stream, if the scan uses several
        stack = stack.to(route.device)  # (N, m, n) as stored
        finite = torch.isfinite(stack).flatten(1).all(dim=1)  # (N,)
        flags = finite.tolist()  # waits for this stream only
        scores = iter(())
        if any(flags):
            rows, cols = batch[0].key.shape
            values = singular_values(stack[finite], method=route.method, device=route.device)
            scores = iter(scores_from_singular_values(values, rows, cols, threshold=threshold).tolist())
    return [(item.key, next(scores) if ok else None) for item, ok in zip(batch, flags)]


@dataclass
class _Collected:
    """The scores as they arrive (in the scanning thread): kept, journalled, counted for the progress;
    a matrix without a finite score is left out with its reason."""

    results: dict[str, ModuleScore]  # starts with those resumed from a journal
    total: int
    reader: Reader
    journal: Journal | None
    on_progress: ProgressCallback | None
    left_out: dict[str, LeftOut] = field(default_factory=dict)  # module -> its type and why it has no score

    def __post_init__(self) -> None:
        self.done = len(self.results)

    def add(self, batch_results: list[tuple[Matrix, float | None]]) -> None:
        for matrix, score in batch_results:
            if score is not None and math.isfinite(score):
                self.results[matrix.module] = ModuleScore(score, matrix.type)
                if self.journal:
                    self.journal.record(matrix.module, self.results[matrix.module])
                continue
            if score is None:
                reason = "nan_or_inf_entries"
                LOG.warning("%s has NaN or infinite entries; left out of the scores", matrix.info.name)
            elif math.isinf(score):  # finite singular values, but signal / noise / largest overflows
                reason = "score_overflow"
                LOG.warning("%s has a score beyond float64's range (its singular values are so small that dividing "
                            "by the largest overflows); left out of the scores", matrix.info.name)
            else:
                reason = "singular_values_overflow"
                LOG.warning("%s has singular values beyond float64's range; left out of the scores", matrix.info.name)
            self.left_out[matrix.module] = LeftOut(matrix.type, reason)
        self.done += len(batch_results)
        self.report(self.reader.bytes_read)

    def report(self, bytes_read: int) -> None:
        if self.on_progress:
            self.on_progress(self.done, self.total, bytes_read)


def _score_all(route: _Route, reader: Reader, threshold: str, collected: _Collected) -> None:
    """Score every matrix the reader yields, in batches of one shape (whatever their type: all experts of a
    layer go to the GPU together), one single-threaded worker per core on CPU."""
    items = ((item.key.shape, item) for item in reader)
    collected.report(0)
    limits = contextlib.nullcontext()
    worker_setup = keep_gram_buffers
    if route.host:
        compute = functools.partial(_score_on_host, threshold=threshold)
        limits = cpu_threads_limited()  # one single-threaded OpenBLAS worker per core
    else:
        compute = functools.partial(_score_with_torch, route=route, threshold=threshold)
        if route.device.type == "cuda" and route.workers > 1:
            worker_setup = functools.partial(_cuda_worker_setup, route.device)  # one stream per worker
    torch_threads = None  # torch's thread count to restore
    if not route.host and route.device.type == "cpu":
        import torch

        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)  # one single-threaded worker per core
        limits = cpu_threads_limited()  # NumPy's OpenBLAS too
    try:
        with limits:
            run_batches(items, Batcher(batch_bytes=route.batch_bytes, pending_bytes=route.pending_bytes), compute,
                        workers=route.workers, on_results=collected.add, worker_setup=worker_setup)
    finally:
        if torch_threads is not None:
            import torch

            torch.set_num_threads(torch_threads)


def _wanted_unsupported(info: TensorInfo, type_filter: TypeFilter | None) -> bool:
    """Whether an FP8 weight without scales is one the request wants: of a requested type, or by default
    inside a numbered layer (its type may be in no other matrix, so the default filter cannot tell)."""
    module = module_name(info.name) or info.name
    return type_filter(module_type(module)) if type_filter else is_layer_module(module)


_LISTED_WITHOUT_SCALES = 5  # more FP8 weights without scales than this are reported in one line


def _warn_without_scales(infos: list[TensorInfo]) -> None:
    """Say which wanted FP8 weights are left out for lack of scale tensors: one line each, or one for all."""
    if len(infos) <= _LISTED_WITHOUT_SCALES:
        for info in infos:
            LOG.warning("%s is stored as %s, which needs its scale tensors to dequantize; left out", info.name, info.dtype)
        return
    LOG.warning("%d weights (%s, ...) are stored as %s without their scale tensors (*%s), which are needed to "
                "dequantize them; left out", len(infos), ", ".join(info.name for info in infos[:3]),
                "/".join(sorted({info.dtype for info in infos})), FP8_SCALE_SUFFIX)


def fused_tensor_names(matrices: list[Matrix]) -> list[str]:
    """The stored 3-D expert tensors (module names) whose experts were scored one by one: the YAML
    names those tensors, which are what exists, also when no view of the trainer's model is at hand."""
    return sorted({without_expert_index(matrix.module) for matrix in matrices if matrix.expert is not None})


@dataclass(frozen=True)
class _ShardState:
    """A local weight file as a scan starts reading it: compared with the file as the scan ends."""

    path: str
    size: int
    mtime_ns: int
    file_id: tuple[int, int]  # (device, inode): os.replace puts another file at the path
    digest: str | None  # `sample_digest`; None when it could not be read

    @classmethod
    def take(cls, shard: ShardInfo) -> "_ShardState | None":
        """The state of a local shard now; None for a shard that is not a local file (a Hub download to come)."""
        if shard.path is None:
            return None
        try:
            status = os.stat(shard.path)
        except OSError:
            return None
        try:
            digest = sample_digest(shard.path)
        except OSError:
            digest = None
        return cls(shard.path, status.st_size, status.st_mtime_ns, (status.st_dev, status.st_ino), digest)

    def change(self, now: "_ShardState | None") -> str | None:
        """How the file differs from `now` (the same path later), in words; None when it does not."""
        if now is None:
            return "it is gone"
        if now.file_id != self.file_id:
            return "another file was put in its place"
        if now.size != self.size:
            return f"it was {self.size} bytes and is {now.size} bytes now"
        if now.mtime_ns != self.mtime_ns:
            return "it was written to"
        if now.digest != self.digest:
            return "same size, other content"
        return None


def _check_unchanged(description: SourceDescription, states: dict[str, _ShardState]) -> None:
    """Raise WeightsChangedError when a local shard is not the file it was when the scan started."""
    for shard in description.shards:
        state = states.get(shard.name)
        if state is not None and (change := state.change(_ShardState.take(shard))) is not None:
            raise WeightsChangedError(state.path, change)


def _shard_record(shard: ShardInfo, state: _ShardState | None = None) -> ShardRecord:
    """A shard in the sidecar: name and size; for a local file also its mtime and a sampled digest (taken
    as the scan started), so that a later run can tell new weights of the same size (`cache.staleness.stale_reason`)."""
    if shard.path is None:
        return ShardRecord(shard.name, shard.size)
    return ShardRecord(shard.name, shard.size, shard.mtime_ns, state.digest if state is not None else None)


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
    `Scores.provenance.world_size` says how many processes took part. A `journal` (see `scan_source`)
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
                world, chosen, lambda m: m.info.shard, lambda m: math.prod(m.shape) * DTYPE_SIZES[m.info.dtype]
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
        left_out = {module: why for _, rank in parts for module, why in (rank.left_out or {}).items()}
        provenance = provenance.updated(
            seconds=max(rank.seconds for _, rank in parts),
            bytes_read=sum(rank.bytes_read for _, rank in parts),
            devices=tuple(rank.device for _, rank in parts),
            matrices_per_rank=tuple(len(part) for part, _ in parts),
            left_out=dict(sorted(left_out.items())) or None,
        )
    provenance = provenance.updated(world_size=world.size, model=model)
    if revision is not None and provenance.source.kind == "hub":  # what a later run's --revision is compared with
        provenance = provenance.updated(source=replace(provenance.source, requested_revision=revision))
    return Scores(model=model, entries=entries, provenance=provenance)
