"""spectrum: which weight matrices of a language model to fine-tune, by signal-to-noise ratio.

Spectrum (Hartford, Atkins, Fernandes Neto, Golchinfar; arXiv 2406.06623) trains only the
matrices with the highest SNR. This package scores every matrix of a checkpoint, shard by
shard, and writes the list of modules to unfreeze.
"""

__version__ = "0.1.0"

import importlib
import sys
import types

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds of start-up)

# Every public name is loaded on first use, so that `import spectrum` (which the command line does
# before it can catch a Ctrl-C) costs nothing, and what needs torch (the scanner and the score
# formula) is imported only by a scan: the CLI's cached path, `load_scores` and `freeze` never
# import torch or transformers.
_LAZY = {
    "read_scores": "cache",
    "scores_path": "cache",
    "write_scores": "cache",
    "CacheError": "errors",
    "CorruptCheckpointError": "errors",
    "SourceError": "errors",
    "SpectrumError": "errors",
    "UsageError": "errors",
    "Unfrozen": "freeze",
    "freeze": "freeze",
    "write_report": "html_report",
    "load_scores": "results",
    "ModuleScore": "scores",
    "Scores": "scores",
    "Outcome": "store",
    "load_or_scan": "store",
    "TypeSummary": "summary",
    "compact_ranges": "summary",
    "summarize": "summary",
    "THRESHOLDS": "thresholds",
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


class _Package(types.ModuleType):
    """The package module. `spectrum.freeze` is the function, also once the submodule of the same
    name has been imported (the import system then binds the submodule to the package's attribute)."""

    def __setattr__(self, name: str, value) -> None:
        if name == "freeze" and isinstance(value, types.ModuleType):
            value = value.freeze
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:
    from .cache import read_scores, scores_path, write_scores
    from .errors import CacheError, CorruptCheckpointError, SourceError, SpectrumError, UsageError
    from .freeze import Unfrozen, freeze
    from .html_report import write_report
    from .lora import lora_targets
    from .results import load_scores
    from .scanner import scan
    from .scores import ModuleScore, Scores
    from .snr import score_from_singular_values, scores_from_singular_values
    from .store import Outcome, load_or_scan
    from .summary import TypeSummary, compact_ranges, summarize
    from .thresholds import THRESHOLDS

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
