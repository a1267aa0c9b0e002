"""Apply a Spectrum selection to a PyTorch / transformers model: what Axolotl does with `unfrozen_parameters`.

For TRL, plain transformers or any training loop: every parameter is frozen except those whose name
matches an entry under Axolotl's rule (`re.match` after turning every `.` not followed by `+` into a
literal dot).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union

from ..scores import Scores
from .topk import NameIndex, entry_for, format_percent, parse_top_percent, smallest_percent_keeping_one
from .model_view import TrainerView, axolotl_pattern, live_view, view_of_model

Selection = Union[Scores, str, "os.PathLike[str]", dict, Iterable[str]]

# Axolotl's own extension `name[start:end]`, `name[row]` or `name[]` (train only those embedding rows)
# is not a regex; Axolotl recognises it with this pattern.
_ROW_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")


@dataclass(frozen=True)
class Unfrozen:
    """What `freeze` left trainable.

    Args:
        names: trainable parameter names, in `model.named_parameters()` order.
        tensors: trainable parameter tensors; `total_tensors`: all of the model's.
        parameters: trainable elements; `total_parameters`: all of the model's.
        patterns: the entries that were applied.
        unmatched: entries that matched no parameter name (a warning was issued for them).
    """

    names: tuple[str, ...]
    tensors: int
    total_tensors: int
    parameters: int
    total_parameters: int
    patterns: tuple[str, ...]
    unmatched: tuple[str, ...]

    @property
    def fraction(self) -> float:
        """Trainable share of the model's elements (0.0 for a model without parameters)."""
        return self.parameters / self.total_parameters if self.total_parameters else 0.0

    def __str__(self) -> str:
        return (
            f"{self.tensors} of {self.total_tensors} parameter tensors trainable, "
            f"{self.parameters:,} of {self.total_parameters:,} parameters ({100 * self.fraction:.1f}%)"
        )


def freeze(model, selection: Selection, top_percent: float | str | None = None, *, embeddings: bool = True,
           group_experts: bool = False) -> Unfrozen:
    """Freeze every parameter of `model` except those `selection` unfreezes: `spectrum.freeze` (which also
    takes no selection, and documents the arguments) once the selection is at hand."""
    patterns = entries_for(model, selection, top_percent, embeddings=embeddings, group_experts=group_experts)
    compiled = []
    for entry in patterns:
        if _ROW_RANGE.search(entry):
            raise ValueError(f"{entry!r}: Axolotl's row ranges ([start:end], [row]) are not supported by spectrum.freeze")
        compiled.append(axolotl_pattern(entry))
    matched = [False] * len(compiled)
    names: list[str] = []
    tensors = trainable = total = 0
    for name, parameter in model.named_parameters():
        hits = [index for index, pattern in enumerate(compiled) if pattern.match(name)]
        for index in hits:
            matched[index] = True
        parameter.requires_grad_(bool(hits))
        tensors += 1
        total += parameter.numel()
        if hits:
            names.append(name)
            trainable += parameter.numel()
    if total and not names:
        warnings.warn(f"no parameter of {type(model).__name__} stays trainable: every one is frozen, and the model "
                      "will not train; select more (a larger top_percent) or check the entries", UserWarning, stacklevel=3)
    unmatched = tuple(entry for entry, hit in zip(patterns, matched) if not hit)
    if unmatched:
        shown = ", ".join(unmatched[:5]) + (f" and {len(unmatched) - 5} more" if len(unmatched) > 5 else "")
        warnings.warn(
            f"{len(unmatched)} of {len(patterns)} entries matched no parameter of {type(model).__name__} ({shown}); "
            "compare them with model.named_parameters() names",
            UserWarning,
            stacklevel=3,
        )
    return Unfrozen(tuple(names), len(names), tensors, trainable, total, tuple(patterns), unmatched)


def entries_for(model, selection: Selection, top_percent, *, embeddings: bool, group_experts: bool) -> list[str]:
    """The entries to apply, from whichever form the selection takes."""
    if isinstance(selection, (str, os.PathLike)) and top_percent is not None:
        from ..cache.lookup import load_scores

        selection = load_scores(os.fspath(selection))
    if isinstance(selection, Scores):
        if top_percent is None:
            raise ValueError("freeze() needs top_percent with scores, e.g. freeze(model, scores, top_percent=25)")
        percent = parse_top_percent(top_percent)
        view = trainer_view(model, selection)
        index = NameIndex(name for name, _ in model.named_parameters())
        entries = [entry_for(module, index) for module in selection.select(percent, view=view, group_experts=group_experts)]
        if not entries and selection.entries:
            counts = selection.type_counts(view=view, group_experts=group_experts)
            warnings.warn(f"top {format_percent(percent)}% selects no module of any type, so "
                          + ("only the embeddings stay" if embeddings else "nothing stays") + " trainable; top_percent="
                          f"{format_percent(smallest_percent_keeping_one(min(counts.values())))} keeps one of every type",
                          UserWarning, stacklevel=4)
        return (selection.embedding_patterns(view) if embeddings else []) + entries
    if top_percent is not None:
        raise ValueError("top_percent applies to scores only; a YAML or a list of entries is used as it is")
    if isinstance(selection, (str, os.PathLike)):
        text = os.fspath(selection)
        if "\n" not in text and os.path.isfile(text):
            with open(text, encoding="utf-8") as handle:
                text = handle.read()
        return _entries_from_yaml(text)
    if isinstance(selection, dict):
        return _entries_from_parsed(selection)
    entries = list(selection)
    if not all(isinstance(entry, str) for entry in entries):
        raise ValueError("freeze() takes Scores, a YAML file or text, a dict, or a list of strings")
    return entries


def _entries_from_yaml(text: str) -> list[str]:
    import yaml

    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"not a YAML file or YAML text: {err}") from err
    return _entries_from_parsed(parsed)


def _entries_from_parsed(parsed: object) -> list[str]:
    if isinstance(parsed, dict):
        parsed = parsed.get("unfrozen_parameters")
    if not isinstance(parsed, list) or not all(isinstance(entry, str) for entry in parsed):
        raise ValueError("expected an `unfrozen_parameters:` list of names (spectrum's YAML or an Axolotl config)")
    return parsed


def trainer_view(model, scores: Scores) -> TrainerView | None:
    """The scores' checkpoint names restated as this model's parameters, with transformers' conversion mapping.

    None (names taken as stored) for a model transformers did not build, or an older transformers.
    Scores of a live scan already bear the model's names: its own parameters are the view.
    """
    try:
        from transformers import PreTrainedModel
        from transformers.conversion_mapping import get_model_conversion_mapping  # noqa: F401 (transformers 5)
    except ImportError:
        return None
    if not isinstance(model, PreTrainedModel):
        return None
    if scores.provenance.is_live:
        return live_view(model)
    return view_of_model(model, [module + ".weight" for module in scores.entries])
