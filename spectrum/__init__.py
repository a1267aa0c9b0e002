"""spectrum: which weight matrices of a language model to fine-tune, by signal-to-noise ratio.

Spectrum (Hartford, Atkins, Fernandes Neto, Golchinfar; arXiv 2406.06623) trains only the
matrices with the highest SNR. This package scores every matrix of a checkpoint, shard by
shard, and writes the list of modules to unfreeze.
"""

__version__ = "0.1.0"

import importlib
from typing import TYPE_CHECKING

# Everything that reads cached scores is imported here; what needs torch (the scanner and the
# score formula) is loaded on first use, so that the CLI's cached path, `load_scores` and `freeze`
# never import torch or transformers.
from .cache import read_scores, scores_path, write_scores  # noqa: E402
from .errors import CacheError, CorruptCheckpointError, SourceError, SpectrumError, UsageError  # noqa: E402
from .freeze import Unfrozen, freeze  # noqa: E402
from .html_report import write_report  # noqa: E402
from .results import load_scores  # noqa: E402
from .scores import ModuleScore, Scores  # noqa: E402
from .store import Outcome, load_or_scan  # noqa: E402
from .summary import TypeSummary, compact_ranges, summarize  # noqa: E402
from .thresholds import THRESHOLDS  # noqa: E402

_LAZY = {
    "scan": "scanner",
    "lora_targets": "lora",
    "score_from_singular_values": "snr",
    "scores_from_singular_values": "snr",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectrum' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .lora import lora_targets
    from .scanner import scan
    from .snr import score_from_singular_values, scores_from_singular_values

__all__ = [
    "__version__",
    "scan",
    "load_scores",
    "freeze",
    "Unfrozen",
    "lora_targets",
    "write_report",
    "summarize",
    "TypeSummary",
    "compact_ranges",
    "THRESHOLDS",
    "load_or_scan",
    "Outcome",
    "Scores",
    "ModuleScore",
    "read_scores",
    "write_scores",
    "scores_path",
    "score_from_singular_values",
    "scores_from_singular_values",
    "SpectrumError",
    "UsageError",
    "SourceError",
    "CorruptCheckpointError",
    "CacheError",
]
