"""spectrum: which weight matrices of a language model to fine-tune, by signal-to-noise ratio.

Spectrum (Hartford, Atkins, Fernandes Neto, Golchinfar; arXiv 2406.06623) trains only the
matrices with the highest SNR. This package scores every matrix of a checkpoint, shard by
shard, and writes the list of modules to unfreeze.
"""

__version__ = "0.1.0"

from .cache import read_scores, scores_path, write_scores  # noqa: E402
from .errors import CacheError, CorruptCheckpointError, SourceError, SpectrumError, UsageError  # noqa: E402
from .freeze import Unfrozen, freeze  # noqa: E402
from .html_report import write_report  # noqa: E402
from .results import load_scores  # noqa: E402
from .scan import scan  # noqa: E402
from .scores import ModuleScore, Scores  # noqa: E402
from .store import Outcome, load_or_scan  # noqa: E402
from .snr import THRESHOLDS, score_from_singular_values, scores_from_singular_values  # noqa: E402
from .summary import TypeSummary, compact_ranges, summarize  # noqa: E402

__all__ = [
    "__version__",
    "scan",
    "load_scores",
    "freeze",
    "Unfrozen",
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
