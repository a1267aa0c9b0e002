"""Learning rates by SNR (experimental): the selected modules of each type train faster the higher they rank.

The paper's conclusion names this as a direction under experimentation ("assign higher learning rates
to the most informative layers"); it is opt-in here and nothing else changes when it is not used.

The factor of a selected module is linear in its rank within its type's selection:

    factor(r) = boost - (boost - 1) * r / (k - 1)      (k > 1);   boost when k == 1

where r = 0 is the best of the k modules the top K% keeps of that type. The best module of every type
trains at `lr * boost`, the last one kept at `lr`, and the embeddings (and anything else trainable) at `lr`.
Why the rank and not the score itself: SNR values differ by orders of magnitude between module types
(a `k_proj` and a `down_proj` are not on one scale), and Spectrum already compares modules only within
a type, by rank; a rank is scale-free, so `boost` means the same thing for every type and every model.
Why linear and bounded: the base `lr` is the one tuned for the run, so every factor stays in [1, boost].

`optimizer_groups` gives torch optimizer groups (`spectrum.param_groups` finds the scores for it); `lr_groups_text` writes Axolotl's `lr_groups:`
(`name`, `modules`, `lr`), which Axolotl applies by substring (`module in parameter_name`) to the
parameters it gives weight decay (weights, not biases or norms); entries are written so that none is a
substring of a parameter name outside its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from .._version import __version__
from ..errors import SpectrumError, UsageError
from ..scores import Scores
from ..naming import printable
from .topk import NameIndex, ParameterNames, belongs_to, entry_for, entry_names, format_percent, parse_top_percent

DEFAULT_BOOST = 2.0


@dataclass(frozen=True)
class RankedModule:
    """A selected module (or parameter) and the learning-rate factor its rank within its type gives it.

    Args:
        name: module name under the trainer's names (`model.layers.3.mlp.down_proj`), or a parameter name
            for a fused expert tensor (`model.layers.3.mlp.experts.gate_up_proj`).
        type: its module type.
        rank: 0 for the best of its type.
        kept: how many of its type the selection keeps.
        factor: the multiplier of the base learning rate (`lr_factor`).
    """

    name: str
    type: str
    rank: int
    kept: int
    factor: Fraction


def lr_factor(rank: int, kept: int, boost: float | Fraction) -> Fraction:
    """boost - (boost - 1) * rank / (kept - 1), exactly; `boost` for a type that keeps one module."""
    top = Fraction(boost)
    if kept <= 1:
        return top
    return top - (top - 1) * Fraction(rank, kept - 1)


def check_lr(lr: float | None, boost: float) -> None:
    """Raise UsageError for a learning rate that is not a positive number, or a boost under 1."""
    if lr is not None and not (isinstance(lr, (int, float)) and lr > 0 and lr == lr and lr != float("inf")):
        raise UsageError(f"the learning rate must be a positive number, not {lr!r}")
    if not (isinstance(boost, (int, float)) and 1 <= boost < float("inf")):
        raise UsageError(f"boost must be a number of at least 1 (1 = every selected module at lr), not {boost!r}")


def ranked_selection(
    scores: Scores,
    top_percent: float | str | Fraction,
    *,
    boost: float = DEFAULT_BOOST,
    view: ParameterNames | None = None,
    types: set[str] | None = None,
    group_experts: bool = False,
) -> list[RankedModule]:
    """The modules the top K% keeps (as the YAML names them), each with its rank and factor."""
    check_lr(None, boost)
    percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
    ranked = []
    for type_name, modules in scores.by_type(types, percent, view=view, group_experts=group_experts).items():
        for rank, module in enumerate(modules):
            factor = lr_factor(rank, len(modules), boost)
            ranked.extend(RankedModule(name, type_name, rank, len(modules), factor) for name in entry_names(module))
    return ranked


def optimizer_groups(
    model,
    scores: Scores,
    lr: float,
    *,
    top_percent: float | str,
    boost: float = DEFAULT_BOOST,
    embeddings: bool = True,
    group_experts: bool = False,
    weight_decay: float | None = None,
) -> list[dict]:
    """`spectrum.param_groups` (documented there) once the scores are at hand: a group per distinct factor,
    highest first, each selected module's parameters (weight and bias) at `lr * factor`, the embeddings at `lr`."""
    from .freeze import trainer_view
    from .model_view import axolotl_pattern

    check_lr(lr, boost)
    view = trainer_view(model, scores)
    named = list(model.named_parameters())
    index = NameIndex(name for name, _ in named)
    rules: list[tuple[object, Fraction]] = [
        (axolotl_pattern(entry_for(module.name, index)), module.factor)
        for module in ranked_selection(scores, top_percent, boost=boost, view=view, group_experts=group_experts)
    ]
    if embeddings:
        rules += [(axolotl_pattern(pattern), Fraction(1)) for pattern in scores.embedding_patterns(view)]
    grouped: dict[Fraction, list] = {}
    for name, parameter in named:
        factor = next((factor for pattern, factor in rules if pattern.match(name)), None)
        if factor is not None:
            grouped.setdefault(factor, []).append(parameter)
    groups = []
    for factor in sorted(grouped, reverse=True):
        group = {"params": grouped[factor], "lr": lr * float(factor), "name": f"spectrum x{float(factor):.6g}"}
        if weight_decay is not None:
            group["weight_decay"] = weight_decay
        groups.append(group)
    return groups


@dataclass(frozen=True)
class LrGroup:
    """One entry of Axolotl's `lr_groups:`: a name, the module substrings it applies to, and its learning rate."""

    name: str
    modules: tuple[str, ...]
    lr: float
    factor: Fraction


def axolotl_lr_groups(
    scores: Scores,
    top_percent: float | str | Fraction,
    lr: float,
    *,
    boost: float = DEFAULT_BOOST,
    view: ParameterNames | None = None,
    types: set[str] | None = None,
    group_experts: bool = False,
) -> list[LrGroup]:
    """Axolotl `lr_groups` for the selection, one group per distinct factor (highest first).

    A module is written as `name.` (it matches `name.weight`, never `name_x` or `name2`); a parameter
    (a fused expert tensor) as its own name. Axolotl tests `entry in parameter_name`, so an entry that is
    a substring of a parameter outside its own module would move that parameter too: that is refused.

    Raises:
        SpectrumError: an entry that Axolotl's substring rule would also apply to another module's parameter.
    """
    check_lr(lr, boost)
    names = scores.parameter_names(view)
    by_factor: dict[Fraction, list[str]] = {}
    for module in ranked_selection(scores, top_percent, boost=boost, view=view, types=types, group_experts=group_experts):
        entry = module.name if module.name in names else module.name + "."
        strays = [other for other in names.names if entry in other and not belongs_to(other, module.name, names)]
        if strays:
            raise SpectrumError(f"lr_groups entry {entry!r} is also a substring of {strays[0]}, which Axolotl would "
                                "put in the same group; this model's names cannot be written as lr_groups")
        by_factor.setdefault(module.factor, []).append(entry)
    return [LrGroup(f"spectrum_{position}", tuple(entries), lr * float(factor), factor)
            for position, (factor, entries) in enumerate(sorted(by_factor.items(), reverse=True), start=1)]


def lr_groups_text(
    scores: Scores,
    top_percent: float | str | Fraction,
    lr: float,
    *,
    boost: float = DEFAULT_BOOST,
    view: ParameterNames | None = None,
    types: set[str] | None = None,
    group_experts: bool = False,
) -> str:
    """Axolotl's `lr_groups:` YAML for the selection (use it with the `unfrozen_parameters:` YAML of the same K)."""
    import yaml

    percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
    groups = axolotl_lr_groups(scores, percent, lr, boost=boost, view=view, types=types, group_experts=group_experts)
    header = [
        f"# spectrum {__version__}: learning rates by SNR rank (experimental), top {format_percent(percent)}% per type, "
        f"model {printable(scores.model)}",
        f"# lr = {lr:g} * factor, factor = boost - (boost - 1) * rank / (kept - 1), boost = {boost:g}; "
        "rank 0 is the best of its type; the embeddings and every other parameter train at learning_rate",
        f"# set learning_rate: {lr:g} and include the unfrozen_parameters YAML of the same top percent",
    ]
    body = yaml.safe_dump(
        {"lr_groups": [{"name": group.name, "modules": list(group.modules), "lr": group.lr} for group in groups]},
        sort_keys=False, allow_unicode=True, width=1 << 16,
    )
    return "\n".join(header) + "\n" + body
