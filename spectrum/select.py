"""Which modules to unfreeze: the top K% per module type, and the YAML Axolotl includes. Pure data in, text out."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Iterable

from .errors import UsageError

DEFAULT_EMBEDDING_PATTERNS = ("^lm_head.weight$", "^model.embed_tokens.weight$")


def parse_top_percent(value: str | float | int) -> Fraction:
    """K as an exact fraction; a number in (0, 100], decimals allowed."""
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        number = None
    if number is None or not number.is_finite() or not 0 < number <= 100:
        raise UsageError(f"--top-percent must be a number greater than 0 and at most 100, not {value!r}")
    return Fraction(number)


def format_percent(top_percent: Fraction) -> str:
    """`25` for whole numbers, `12.5` otherwise (as it appears in file names)."""
    if top_percent.denominator == 1:
        return str(top_percent.numerator)
    return format(Decimal(top_percent.numerator) / Decimal(top_percent.denominator), "f").rstrip("0")


def keep_count(total: int, top_percent: Fraction) -> int:
    """floor(total * K / 100), computed exactly."""
    return math.floor(total * top_percent / 100)


def select_by_type(
    entries: Iterable[tuple[str, float, str]], top_percent: Fraction, types: set[str] | None = None
) -> dict[str, list[str]]:
    """The top K% modules of each type.

    Args:
        entries: (module, score, type) in the order of the scores file.
        top_percent: K in (0, 100].
        types: restrict to these types (None: every type present).

    Returns:
        type -> selected modules, best first; types in first-appearance order. Ties keep the
        scores file's order (Python's sort is stable), as the reference tool and Axolotl do.
    """
    by_type: dict[str, list[tuple[str, float]]] = {}
    for module, score, type_name in entries:
        if types is None or type_name in types:
            by_type.setdefault(type_name, []).append((module, score))
    selection = {}
    for type_name, members in by_type.items():
        ranked = sorted(members, key=lambda member: member[1], reverse=True)
        selection[type_name] = [module for module, _ in ranked[: keep_count(len(members), top_percent)]]
    return selection


def render_yaml(selection: dict[str, list[str]], *, header: str, embedding_patterns: Iterable[str]) -> str:
    """The `unfrozen_parameters:` YAML, in the reference tool's layout.

    Entries are plain module names (Axolotl applies them with `re.match` after escaping dots);
    each type gets a `# <type> layers` comment, even when it keeps no module.
    """
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("unfrozen_parameters:")
    lines.extend(f"- {pattern}" for pattern in embedding_patterns)
    for type_name, modules in selection.items():
        lines.append(f"# {type_name} layers")
        lines.extend(f"- {module}" for module in modules)
    return "\n".join(lines) + "\n"
