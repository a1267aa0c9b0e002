"""Spectrum on a model in memory: live scans, `freeze` without scores at hand, learning rates by SNR.

What a notebook or a training script calls with the model it has loaded. It joins the rooms as
`workflow` does for a checkpoint: the live scan (scoring), the cache (scores scanned before), the
selection, and the progress bar (report). The rescanning callback is in `callback.py`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .cache.entry import DEFAULT_CACHE_DIR, CacheEntry
from .provenance import DEFAULT_THRESHOLD
from .scores import Scores
from .selection.freeze import Selection, Unfrozen
from .selection.freeze import freeze as freeze_selection
from .selection.lr_groups import DEFAULT_BOOST, optimizer_groups

if TYPE_CHECKING:
    from .scoring.checkpoint import ProgressCallback

LOG = logging.getLogger("spectrum")


def scan_model(
    model,
    *,
    types: Iterable[str] | None = None,
    device: str | None = None,
    threads: int | None = None,
    method: str = "auto",
    threshold: str | None = None,
    progress: bool = True,
    on_progress: "ProgressCallback | None" = None,
) -> Scores:
    """Score the weight matrices of a `torch.nn.Module` already loaded (transformers or not).

    Args:
        model: the module; its parameters are read one matrix (or one CUDA batch) at a time, never copied whole.
        types: the module types to score (`mlp.down_proj`, ...); default: the types inside numbered
            layers, as a checkpoint scan without `--types`.
        device: where to compute; default: where the weights are (CUDA, batched; or CPU workers).
        threads: CPU workers (default: one per core).
        method, threshold: as `spectrum.scan`.
        progress: a progress bar on a terminal, as the command line shows for a scan.
        on_progress: called with (matrices done, total, bytes read) instead of the bar.

    Returns:
        `Scores` under the module's own parameter names (less `.weight`), a fused 3-D expert parameter
        as one entry per expert (`mlp.experts.3.gate_up_proj`); `provenance.source.kind` is "live".
        They equal a checkpoint scan of the same weights to rounding (the tests ask 1e-9 relative).
    """
    from .scoring.live import score_model
    from .sources.module import model_name

    options = dict(types=types, device=device, threads=threads, method=method, threshold=threshold or DEFAULT_THRESHOLD)
    if on_progress is not None or not progress:
        return score_model(model, on_progress=on_progress, **options)
    from .report.terminal import scan_progress

    with scan_progress(model_name(model), enabled=True) as bar:
        return score_model(model, on_progress=bar, **options)


def scores_for(model, *, cache_dir: str | None = None, threads: int | None = None) -> Scores:
    """The scores `freeze(model, top_percent=K)` uses without a selection: those cached for the model's
    `name_or_path` (in `./model_snr_results`, as the command line writes them), else a scan of the live
    model, which is said once (a warning line). A cached file that cannot be read raises `CacheError`.
    """
    from .cache.lookup import load_scores
    from .sources.module import model_name

    name = model_name(model)
    folder = cache_dir or DEFAULT_CACHE_DIR
    if name != type(model).__name__ and os.path.exists(CacheEntry.of(folder, name).scores):
        return load_scores(name, cache_dir=folder)  # a cache file that cannot be read is an error, not a miss
    LOG.warning("no cached scores for %s in %s; scanning the live model", name, folder)
    return scan_model(model, threads=threads, progress=False)


def freeze(model, selection: Selection | None = None, top_percent: float | str | None = None, *,
           embeddings: bool = True, group_experts: bool = False) -> Unfrozen:
    """Freeze every parameter of `model` except those the selection unfreezes; returns what stays trainable.

    Args:
        model: a `torch.nn.Module` (e.g. a transformers `PreTrainedModel`).
        selection: one of
            - `Scores` (from `spectrum.scan`, `spectrum.scan_model` or `spectrum.load_scores`), with `top_percent`;
            - with `top_percent`, a model id or path, or a scores-file path (see `spectrum.load_scores`);
            - a YAML file path, YAML text, or a parsed dict with `unfrozen_parameters:` (spectrum's output,
              or an Axolotl config), or a list of entries;
            - None, with `top_percent`: the scores cached for the model's `name_or_path` in
              `./model_snr_results`, else a scan of the live model (`spectrum.scan_model`, said in one warning).
        top_percent: K in (0, 100] when `selection` is scores; must be None otherwise.
        embeddings: with scores, also unfreeze the input embeddings and the output head (as the YAML does).
        group_experts: with scores, rank all experts of one MoE projection together.

    With scores, a selected name that is a prefix of another parameter's (`mlp.up` beside `mlp.up_proj`)
    is anchored so that it unfreezes its own module only (`spectrum.selection.topk.entry_for`). A selection that
    keeps no module, or leaves no parameter trainable, is named in a `UserWarning`.

    Returns:
        `Unfrozen`: the trainable names, counts and parameter totals, and the entries that matched nothing.

    Raises:
        ValueError: a selection that is neither, scores without `top_percent` or entries with it, no selection
            and no `top_percent`, or an entry using Axolotl's `[start:end]` row ranges (not supported here).

    Example:
        ```python
        model = AutoModelForCausalLM.from_pretrained("HuggingFaceTB/SmolLM2-135M-Instruct")
        result = spectrum.freeze(model, "HuggingFaceTB/SmolLM2-135M-Instruct", top_percent=25)
        print(result)  # 74 of 272 parameter tensors trainable, ...
        ```
    """
    if selection is None:
        if top_percent is None:
            raise ValueError("freeze() without a selection needs top_percent, e.g. freeze(model, top_percent=25)")
        selection = scores_for(model)
    return freeze_selection(model, selection, top_percent, embeddings=embeddings, group_experts=group_experts)


def param_groups(model, scores: Scores | None, lr: float, *, top_percent: float | str, boost: float = DEFAULT_BOOST,
                 embeddings: bool = True, group_experts: bool = False, weight_decay: float | None = None) -> list[dict]:
    """Torch optimizer parameter groups with learning rates by SNR rank (experimental).

    Each selected module's parameters get `lr * factor`, the factor falling linearly from `boost` (the best
    module of its type) to 1 (the last one the top K% keeps): see `spectrum.selection.lr_groups`. The
    embeddings and output head (with `embeddings`) get `lr`. Parameters outside the selection are in no
    group: freeze them (`spectrum.freeze(model, scores, top_percent=K)`, the same selection).

    Args:
        scores: `spectrum.scan_model(model)`, `spectrum.load_scores(...)` or `spectrum.scan(...)`; None: as
            `freeze(model, top_percent=K)` finds them (cached, else a live scan).
        lr: the base learning rate (the one the run would use for all of them).
        top_percent: K, as for `freeze`.
        boost: the factor of the best module of each type (>= 1).
        weight_decay: put into every group when given.

    Returns:
        `[{"params": [...], "lr": ..., "name": "spectrum x1.5"}, ...]`, highest learning rate first; torch
        optimizers keep the extra `name` key.
    """
    from .selection.lr_groups import check_lr

    check_lr(lr, boost)  # before a scan that a bad argument would waste
    if scores is None:
        scores = scores_for(model)
    return optimizer_groups(model, scores, lr, top_percent=top_percent, boost=boost, embeddings=embeddings,
                            group_experts=group_experts, weight_decay=weight_decay)
