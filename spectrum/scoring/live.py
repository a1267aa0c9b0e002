"""Scoring a model in memory: `scan_source` over a `ModelSource`, on the device the weights are on.

The scan is the checkpoint scan's (`scan_source`), so the scores of a live model equal those of its
weights saved and scanned from disk; only where it computes is chosen differently (where the weights
are, unless asked). `candidates` names every matrix a live scan would score without reading a weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import UsageError
from ..provenance import Embeddings, Provenance, SourceRecord
from ..scores import ModuleScore, Scores
from ..sources.module import LIVE_KIND, ModelSource, model_name
from .checkpoint import fused_tensor_names, scan_source
from .inventory import default_type_filter, take_inventory
from .snr import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from .checkpoint import ProgressCallback


def compute_device(source: ModelSource, requested: str | None) -> str:
    """Where a live scan computes: as asked, else (None or "auto") where the weights are (their first CUDA
    device, else the CPU)."""
    if requested is not None and requested != "auto":
        return requested
    devices = source.devices()
    cuda = [device for device in devices if device.startswith("cuda")]
    if cuda:
        return cuda[0] if ":" in cuda[0] else "cuda:0"
    if any(device != "cpu" for device in devices):
        raise UsageError(f"the model's weights are on {', '.join(devices)}; pass device='cpu' or a CUDA device "
                         "(they are copied there one matrix at a time)")
    return "cpu"


def score_model(
    model,
    *,
    types: Iterable[str] | None = None,
    device: str | None = None,
    threads: int | None = None,
    method: str = "auto",
    threshold: str = DEFAULT_THRESHOLD,
    on_progress: "ProgressCallback | None" = None,
) -> Scores:
    """The scores of a `torch.nn.Module`'s weight matrices under its own parameter names (see
    `spectrum.scan_model`, which adds the progress bar)."""
    import torch

    name = model_name(model)
    source = ModelSource(model, name)
    wanted = None if types is None else set(types).__contains__
    compute_on = compute_device(source, device)
    if len(source.devices()) > 1 and compute_on != "cpu":
        source.compute_device = torch.device(compute_on)
    for each in source.devices():  # the weights as the last optimizer step left them: a scan reads on its own streams
        if each.startswith("cuda"):
            torch.cuda.synchronize(each)
    with torch.no_grad():
        entries, provenance = scan_source(source, type_filter=wanted, method=method, device=compute_on,
                                          threads=threads, threshold=threshold, on_progress=on_progress)
    return Scores(model=name, entries=entries, provenance=provenance.updated(world_size=1, model=name))


def candidates(model) -> Scores:
    """Every matrix a live scan of `model` scores by default, each with score 0, from the parameters' names
    and shapes alone (no weight is read): the top 100% of these is every parameter a rescan may select."""
    inventory = take_inventory(ModelSource(model).tensors())
    wanted = default_type_filter(inventory)
    matrices = [matrix for matrix in inventory.matrices if wanted(matrix.type)]
    provenance = Provenance(
        source=SourceRecord(kind=LIVE_KIND),
        embeddings=Embeddings(inventory.embeddings.get("input"), inventory.embeddings.get("output")),
        fused_tensors=tuple(fused_tensor_names(matrices)) or None,
    )
    return Scores(model_name(model), {matrix.module: ModuleScore(0.0, matrix.type) for matrix in matrices},
                  provenance=provenance)
