"""The scores of one model: module -> (score, type), in the order of the scores file."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from ._version import __version__
from .naming import is_input_embedding, is_output_head, module_name
from .provenance import DEFAULT_THRESHOLD, Provenance
from .selection.topk import (
    DEFAULT_EMBEDDING_PATTERNS,
    NameIndex,
    ParameterNames,
    format_percent,
    parse_top_percent,
    entry_names,
    literal_entry,
    plugin_entries,
    render_yaml,
    select_by_type,
    trainer_entries,
)

THRESHOLDS = (DEFAULT_THRESHOLD, "gavish-donoho")  # what a score can be made with (the sidecar records which)


@dataclass(frozen=True)
class ModuleScore:
    """One scored matrix: its score (`snr` in the cache file, as Axolotl reads it) and its module type."""

    snr: float
    type: str


@dataclass
class _StoredFused:
    """Without a view of the trainer's model: the checkpoint's own fused 3-D expert tensors (recorded by
    the scan as `fused_tensors`), so that their experts' scores are restated as those tensors, which
    exist, rather than as per-expert names that exist nowhere. Every other name stays as stored."""

    parameters: dict[str, tuple[int, ...]]
    fused: set[str]

    @classmethod
    def of(cls, provenance: Provenance) -> "_StoredFused | None":
        fused = set(provenance.fused_tensors or ())
        return cls(dict.fromkeys(fused, ()), fused) if fused else None

    def parameter_of(self, tensor_name: str) -> str:
        return tensor_name


@dataclass(init=False, repr=False)
class Scores:
    """Scores of every scanned matrix of a model, plus what is known of where they came from.

    Args:
        model: the model id or path they belong to.
        entries: module name -> ModuleScore, in file order.
        meta: provenance as the sidecar's JSON object (as `Scores.meta` gives it); or
        provenance: the typed record itself (`spectrum.provenance.Provenance`). Neither: none is known.
    """

    model: str
    entries: dict[str, ModuleScore]
    provenance: Provenance

    def __init__(
        self, model: str, entries: dict[str, ModuleScore], meta: Mapping[str, Any] | None = None, *,
        provenance: Provenance | None = None,
    ) -> None:
        if meta is not None and provenance is not None:
            raise TypeError("Scores() takes meta or provenance, not both")
        self.model = model
        self.entries = entries
        self.provenance = provenance if provenance is not None else Provenance.from_json_dict(meta or {})

    @property
    def meta(self) -> dict[str, Any]:
        """The provenance as the sidecar's JSON object (`{}` without one): a new dict on each access, so
        changing it changes nothing; assign `meta` (or `provenance`) to change the provenance."""
        return self.provenance.to_json_dict()

    @meta.setter
    def meta(self, value: Mapping[str, Any]) -> None:
        self.provenance = Provenance.from_json_dict(value)

    def __repr__(self) -> str:  # as it read when the provenance was a dict: the sidecar's keys, not every field
        return f"Scores(model={self.model!r}, entries={self.entries!r}, meta={self.meta!r})"

    def types(self) -> list[str]:
        """Module types in first-appearance order."""
        return list(dict.fromkeys(score.type for score in self.entries.values()))

    def _rows(
        self, types: set[str] | None, view: ParameterNames | None, group_experts: bool,
        sources: dict[str, int] | None = None,
    ) -> tuple[list[tuple[str, float, str]], dict[str, str]]:
        rows = [(module, score.snr, score.type) for module, score in self.entries.items()
                if types is None or score.type in types]
        return trainer_entries(rows, view or _StoredFused.of(self.provenance), group_experts=group_experts, sources=sources)

    def type_counts(
        self, types: set[str] | None = None, *, view: ParameterNames | None = None, group_experts: bool = False
    ) -> dict[str, int]:
        """type -> how many modules the YAML ranks in it (a fused expert tensor counts once)."""
        rows, _ = self._rows(types, view, group_experts)
        counts: dict[str, int] = {}
        for _, _, type_name in rows:
            counts[type_name] = counts.get(type_name, 0) + 1
        return counts

    def parameter_names(self, view: ParameterNames | None = None) -> NameIndex:
        """The names entries are checked against for prefixes (`selection.topk.entry_for`): the trainer's
        parameters with `view`, else the checkpoint's tensors as far as the scores know them (every scored
        matrix, the stored fused expert tensors, the recorded embeddings)."""
        if view is not None:
            return NameIndex(view.parameters)
        names = [module + ".weight" for module in self.entries]
        names += self.provenance.fused_tensors or ()
        recorded = self.provenance.embeddings
        names += recorded.tensor_names() if recorded is not None else []
        return NameIndex(names)

    def plugin_view(self, view: ParameterNames) -> dict[str, ModuleScore]:
        """The scores as Axolotl's Spectrum plugin should read them for the model `view` describes: keys
        under the trainer's names, so that the plugin trains what our YAML does (`selection.topk.plugin_entries`).
        Tensors transformers drops on load (`view.drops`) are left out, as the YAML leaves them out."""
        drops = getattr(view, "drops", None)
        rows = [(module, score.snr, score.type) for module, score in self.entries.items()
                if drops is None or not drops(module + ".weight")]
        return {key: ModuleScore(score, type_name) for key, score, type_name in plugin_entries(rows, view)}

    def without(self, modules: Iterable[str]) -> "Scores":
        """These scores less the given modules (same provenance)."""
        gone = set(modules)
        return Scores(self.model, {module: score for module, score in self.entries.items() if module not in gone},
                      provenance=self.provenance)

    def by_type(
        self,
        types: set[str] | None = None,
        top_percent: float | str | Fraction = 100,
        *,
        view: ParameterNames | None = None,
        group_experts: bool = False,
    ) -> dict[str, list[str]]:
        """type -> the top `top_percent`% of its modules, best first (under the trainer's names with `view`)."""
        percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
        rows, _ = self._rows(types, view, group_experts)
        return select_by_type(rows, percent)

    def select(
        self,
        top_percent: float | str | Fraction,
        types: set[str] | None = None,
        *,
        view: ParameterNames | None = None,
        group_experts: bool = False,
    ) -> list[str]:
        """The modules to unfreeze: the top `top_percent`% of each type."""
        selection = self.by_type(types, top_percent, view=view, group_experts=group_experts)
        return [name for modules in selection.values() for module in modules for name in entry_names(module)]

    def embedding_patterns(self, view: ParameterNames | None = None) -> list[str]:
        """`^<name>$` lines for the output head and the input embeddings.

        Under the model's real parameter names when the trainer's model is known (none for a
        tied head), else the checkpoint's recorded tensor names, else the reference's two lines.
        """
        if view is not None:
            known = getattr(view, "embeddings", None)  # the model's own get_input/output_embeddings()
            if known is not None:
                inputs, output = known
            else:
                output = next((p for p in view.parameters if is_output_head(module_name(p) or p)), None)
                inputs = next((p for p in view.parameters if is_input_embedding(module_name(p) or p)), None)
            return [f"^{literal_entry(name)}$" for name in (output, inputs) if name]
        recorded = self.provenance.embeddings
        if recorded is None:
            return list(DEFAULT_EMBEDDING_PATTERNS)
        return [f"^{literal_entry(name)}$" for name in (recorded.output, recorded.input) if name is not None]

    def to_yaml(
        self,
        top_percent: float | str | Fraction,
        *,
        types: set[str] | None = None,
        embeddings: bool = True,
        view: ParameterNames | None = None,
        group_experts: bool = False,
    ) -> str:
        """The `unfrozen_parameters:` YAML for Axolotl (under the trainer's parameter names with `view`)."""
        percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
        header = f"spectrum {__version__}: top {format_percent(percent)}% of modules per type by SNR, model {self.model}"
        if group_experts:
            header += "\nexperts of one projection ranked together (--group-experts)"
        rows, notes = self._rows(types, view, group_experts)
        patterns = self.embedding_patterns(view) if embeddings else []
        return render_yaml(select_by_type(rows, percent), header=header, embedding_patterns=patterns, notes=notes,
                           parameter_names=self.parameter_names(view))
