"""spectrum: which weight matrices of a language model to fine-tune, by signal-to-noise ratio.

Spectrum (Hartford, Atkins, Fernandes Neto, Golchinfar; arXiv 2406.06623) trains only the
matrices with the highest SNR. This package scores every matrix of a checkpoint, shard by
shard, and writes the list of modules to unfreeze.

This module is the public API and nothing else; no module of the package imports it. The code
lives in five rooms: `sources` (weights in), `scoring` (weights -> scores), `cache` (scores on
disk), `selection` (scores -> what to train) and `report` (what a person sees), joined by
`workflow`, which the command line (`cli`) and this API share, and for a model in memory by
`training` (live scans, freeze, learning rates by SNR) and `callback` (rescanning while training).
"""

from ._version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds of start-up)

# Every public name is loaded on first use, so that `import spectrum` (which the command line does
# before it can catch a Ctrl-C) costs nothing, and what needs torch (the scanner and the score
# formula) is imported only by a scan: the CLI's cached path, `load_scores` and `freeze` never
# import torch or transformers.
_LAZY = {
    "read_scores": "cache.scores_file",
    "scores_path": "cache.scores_file",
    "write_scores": "cache.scores_file",
    "load_scores": "cache.lookup",
    "CacheError": "errors",
    "CorruptCheckpointError": "errors",
    "SourceError": "errors",
    "SpectrumError": "errors",
    "UsageError": "errors",
    "ModuleScore": "scores",
    "Scores": "scores",
    "Unfrozen": "selection.freeze",
    "freeze": "training",
    "scan_model": "training",
    "param_groups": "training",
    "SpectrumCallback": "callback",
    "lora_targets": "workflow",
    "write_report": "report.html",
    "TypeSummary": "report.summary",
    "compact_ranges": "report.summary",
    "summarize": "report.summary",
    "THRESHOLDS": "scores",
    "scan": "scoring.checkpoint",
    "score_from_singular_values": "scoring.snr",
    "scores_from_singular_values": "scoring.snr",
    "Outcome": "workflow",
    "ScanOptions": "workflow",
    "RunResult": "workflow",
    "run": "workflow",
    "load_or_scan": "workflow",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'spectrum' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .cache.lookup import load_scores
    from .cache.scores_file import read_scores, scores_path, write_scores
    from .workflow import Outcome, RunResult, ScanOptions, load_or_scan, run
    from .errors import CacheError, CorruptCheckpointError, SourceError, SpectrumError, UsageError
    from .report.html import write_report
    from .report.summary import TypeSummary, compact_ranges, summarize
    from .scoring.checkpoint import scan
    from .scoring.snr import score_from_singular_values, scores_from_singular_values
    from .scores import THRESHOLDS
    from .scores import ModuleScore, Scores
    from .callback import SpectrumCallback
    from .selection.freeze import Unfrozen
    from .training import freeze, param_groups, scan_model
    from .workflow import lora_targets

__all__ = [
    "__version__",
    "scan",
    "scan_model",
    "load_scores",
    "freeze",
    "Unfrozen",
    "lora_targets",
    "param_groups",
    # SpectrumCallback is public too, but not here: `from spectrum import *` would import transformers.
    "write_report",
    "summarize",
    "TypeSummary",
    "compact_ranges",
    "THRESHOLDS",
    "run",
    "ScanOptions",
    "RunResult",
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
