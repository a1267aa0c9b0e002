"""Per-type figures of a selection (count, selected, min / median / max score, selected layers). Pure data."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from fractions import Fraction
from statistics import median

from ..naming import layer_index
from ..scores import Scores
from ..selection.topk import ParameterNames, entry_names, format_percent, parse_top_percent, select_by_type, trainer_entries


@dataclass(frozen=True)
class TypeSummary:
    """One module type of a selection.

    Args:
        type: the module type.
        count: matrices of that type.
        selected: how many are kept.
        min, median, max: of the type's scores.
        selected_layers: layer indices of the kept modules, ascending (none for a type outside numbered layers).
        selected_modules: the kept modules, best first.
        ranked: (module, score) of every member, best first (ties in file order).
        matrices: for a type of fused expert tensors (one row per layer, as the YAML ranks them), the
            scored matrices its rows stand for; None for every other type (one row per matrix).
    """

    type: str
    count: int
    selected: int
    min: float
    median: float
    max: float
    selected_layers: tuple[int, ...]
    selected_modules: tuple[str, ...]
    ranked: tuple[tuple[str, float], ...]
    matrices: int | None = None

    @property
    def layer_ranges(self) -> str:
        return compact_ranges(self.selected_layers)


def compact_ranges(indices: Iterable[int]) -> str:
    """Sorted, distinct indices as runs: [0, 1, 2, 3, 7, 29] -> `0-3, 7, 29`; [] -> ``."""
    values = sorted(set(indices))
    runs: list[str] = []
    start = 0
    for position in range(1, len(values) + 1):
        if position == len(values) or values[position] != values[position - 1] + 1:
            first, last = values[start], values[position - 1]
            runs.append(str(first) if first == last else f"{first}-{last}")
            start = position
    return ", ".join(runs)


def summarize(
    scores: Scores,
    top_percent: float | str | Fraction,
    *,
    types: set[str] | None = None,
    group_experts: bool = False,
    as_yaml: bool = False,
    view: ParameterNames | None = None,
) -> list[TypeSummary]:
    """Per-type figures of the top `top_percent`% selection, under the scores file's module names.

    Types in first-appearance order; `types` restricts them, `group_experts` ranks all experts of one
    projection together (as `Scores.select` does). `as_yaml`: the rows the YAML ranks instead, under the
    names of the model `view` describes (or the stored fused tensors without one): a fused MoE expert
    tensor is one row per layer (with `matrices` set), scored by the mean of its experts, as it is trained.
    """
    percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
    sources: dict[str, int] = {}
    parts: dict[str, tuple[str, ...]] = {}  # a split tensor's row (its parameters joined) -> its parameters
    if as_yaml:
        rows, _ = scores._rows(types, view, group_experts, sources)
        for name, _, _ in rows:
            if isinstance(name, tuple):
                parts[", ".join(name)] = entry_names(name)
        rows = [(", ".join(entry_names(name)), score, type_name) for name, score, type_name in rows]
    else:
        rows = [(module, score.snr, score.type) for module, score in scores.entries.items()
                if types is None or score.type in types]
        rows, _ = trainer_entries(rows, None, group_experts=group_experts)
    selection = select_by_type(rows, percent)
    members: dict[str, list[tuple[str, float]]] = {}
    for module, score, type_name in rows:
        members.setdefault(type_name, []).append((module, score))
    summaries = []
    for type_name, kept in selection.items():
        values = [score for _, score in members[type_name]]
        ranked = sorted(members[type_name], key=lambda member: member[1], reverse=True)
        layers = sorted({index for module in kept if (index := layer_index(module)) is not None})
        fused = [sources[module] for module, _ in members[type_name] if module in sources]
        summaries.append(TypeSummary(
            type=type_name,
            count=len(values),
            selected=len(kept),
            min=min(values),
            median=median(values),
            max=max(values),
            selected_layers=tuple(layers),
            selected_modules=tuple(name for module in kept for name in parts.get(module, (module,))),
            ranked=tuple(ranked),
            matrices=sum(fused) + len(values) - len(fused) if fused else None,
        ))
    return summaries


def percent_number(top_percent: Fraction) -> int | float | str:
    """K as a JSON number with format_percent's digits (25, 12.5); a K that no float writes with
    those digits (1/3 from the Python API) stays the string, so that no digit is ever changed."""
    text = format_percent(top_percent)
    if top_percent.denominator == 1:
        return top_percent.numerator
    return float(text) if repr(float(text)) == text else text


def summary_record(
    model: str,
    summaries: list[TypeSummary],
    *,
    top_percent: Fraction,
    scanned: bool,
    seconds: float,
    scores_file: str,
    yaml_file: str,
    threshold: str | None = None,
) -> dict:
    """The machine-readable summary of one model (`--json`): plain JSON types only."""
    types = []
    for summary in summaries:
        entry = asdict(summary)
        del entry["ranked"]
        entry["selected_layers"] = list(summary.selected_layers)
        entry["selected_modules"] = list(summary.selected_modules)
        entry["selected_ranges"] = summary.layer_ranges
        if summary.matrices is None:
            del entry["matrices"]
        types.append(entry)
    fused = any(summary.matrices is not None for summary in summaries)
    scored = {"scored_matrices": sum(summary.matrices or summary.count for summary in summaries)} if fused else {}
    return {
        "model": model,
        "ok": True,
        "top_percent": percent_number(top_percent),
        "threshold": threshold,
        "scanned": scanned,
        "seconds": round(seconds, 3),
        "matrices": sum(summary.count for summary in summaries),
        "selected": sum(summary.selected for summary in summaries),
        **scored,
        "scores_file": scores_file,
        "yaml_file": yaml_file,
        "types": types,
    }
