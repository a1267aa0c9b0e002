"""Scores of a model from its cache file when that answers the request, else from a scan that is then cached.

This is where the cache and the scanner meet: the CLI and the Python API both call `load_or_scan`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .cache import read_scores, scores_path, write_scores
from .distributed import World
from .scan import ProgressCallback, TypeFilter, merge, missing_types, scan
from .scores import Scores


@dataclass
class Outcome:
    """What `load_or_scan` did: the scores, where they are cached, and whether weights were read."""

    scores: Scores
    cache_file: str
    scanned: bool


def load_or_scan(
    model: str,
    *,
    # Cache
    cache_dir: str = "model_snr_results",
    name: str | None = None,
    rescan: bool = False,
    # What to scan
    revision: str | None = None,
    type_filter: TypeFilter | None = None,
    # How
    method: str = "auto",
    device: str = "auto",
    threads: int | None = None,
    keep_shards: bool = True,
    on_progress: ProgressCallback | None = None,
) -> Outcome:
    """Cached scores when they cover the request; otherwise scan (only the missing types, when the
    cache has some) and write the cache. Under torchrun only rank 0 writes."""
    cache_file = scores_path(cache_dir, name or model)

    def fresh(wanted: TypeFilter | None) -> Scores:
        scores = scan(model, revision=revision, type_filter=wanted, method=method, device=device,
                      threads=threads, keep_shards=keep_shards, on_progress=on_progress)
        if name:
            scores.meta["name"] = name
        return scores

    if os.path.exists(cache_file) and not rescan:
        cached = read_scores(cache_file, model)
        missing = missing_types(cached, type_filter)
        if missing == set():
            return Outcome(cached, cache_file, scanned=False)
        scores = merge(cached, fresh(missing.__contains__ if missing else type_filter))
    else:
        scores = fresh(type_filter)
    if World.from_env().is_main:
        write_scores(cache_file, scores)
    return Outcome(scores, cache_file, scanned=True)
