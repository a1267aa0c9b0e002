"""The scores of one model: module -> (score, type), in the order of the scores file."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from . import __version__
from .select import DEFAULT_EMBEDDING_PATTERNS, format_percent, parse_top_percent, render_yaml, select_by_type


@dataclass(frozen=True)
class ModuleScore:
    """One scored matrix: its score (`snr` in the cache file, as Axolotl reads it) and its module type."""

    snr: float
    type: str


@dataclass
class Scores:
    """Scores of every scanned matrix of a model, plus what is known of where they came from.

    Args:
        model: the model id or path they belong to.
        entries: module name -> ModuleScore, in file order.
        meta: provenance from the sidecar file, when there is one.
    """

    model: str
    entries: dict[str, ModuleScore]
    meta: dict = field(default_factory=dict)

    def types(self) -> list[str]:
        """Module types in first-appearance order."""
        return list(dict.fromkeys(score.type for score in self.entries.values()))

    def by_type(self, types: set[str] | None = None, top_percent: float | str | Fraction = 100) -> dict[str, list[str]]:
        """type -> the top `top_percent`% of its modules, best first."""
        percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
        rows = ((module, score.snr, score.type) for module, score in self.entries.items())
        return select_by_type(rows, percent, types)

    def select(self, top_percent: float | str | Fraction, types: set[str] | None = None) -> list[str]:
        """The modules to unfreeze: the top `top_percent`% of each type."""
        return [module for modules in self.by_type(types, top_percent).values() for module in modules]

    def embedding_patterns(self) -> list[str]:
        """`^<name>$` lines for the input embeddings and output head, under the checkpoint's real
        tensor names when a scan recorded them, else the reference tool's two lines."""
        recorded = self.meta.get("embeddings")
        if not isinstance(recorded, dict):
            return list(DEFAULT_EMBEDDING_PATTERNS)
        names = [recorded.get("output"), recorded.get("input")]
        return [f"^{name}$" for name in names if isinstance(name, str)]

    def to_yaml(
        self, top_percent: float | str | Fraction, *, types: set[str] | None = None, embeddings: bool = True
    ) -> str:
        """The `unfrozen_parameters:` YAML for Axolotl."""
        percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
        header = f"spectrum {__version__}: top {format_percent(percent)}% of modules per type by SNR, model {self.model}"
        patterns = self.embedding_patterns() if embeddings else []
        return render_yaml(self.by_type(types, percent), header=header, embedding_patterns=patterns)
