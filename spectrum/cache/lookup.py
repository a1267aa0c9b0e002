"""Finding scores already made: a scores file, or the cached scores of a model (`spectrum.load_scores`)."""

from __future__ import annotations

import os

from .scores_file import DEFAULT_CACHE_DIR, read_scores, scores_path
from ..errors import CacheError
from ..scores import Scores


def load_scores(path_or_model: str | os.PathLike, *, cache_dir: str = DEFAULT_CACHE_DIR) -> Scores:
    """Scores from a scores file, or the cached scores of a model; no weights are read.

    Args:
        path_or_model: a scores file (`snr_results_<slug>.json`, either layout Axolotl reads); or a model id
            or path, or the `--name` it was scanned under, looked up in `cache_dir` by Axolotl's slug rule.
        cache_dir: the folder of scores files (default `./model_snr_results`).

    Returns:
        `Scores`, with the sidecar's provenance in `provenance` (and as its JSON object in `meta`) when there
        is one; `model` is the name it was scanned under when the sidecar records it.

    Raises:
        CacheError: nothing cached for that model (the message says how to scan it), or an unreadable file.
    """
    text = os.fspath(path_or_model)
    if text.endswith(".json") and os.path.isfile(text):
        scores = read_scores(text, text)
        recorded = scores.provenance.scanned_as
        return Scores(recorded if recorded is not None else text, scores.entries, provenance=scores.provenance)
    cache_file = scores_path(cache_dir, text)
    if not os.path.isfile(cache_file):
        raise CacheError(
            cache_file, f"no cached scores for {text}; scan it first (spectrum --model {text}), "
            "or pass the scores file or its folder (--cache-dir)"
        )
    return read_scores(cache_file, text)
