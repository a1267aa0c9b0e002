"""Which modules to unfreeze: the top K% per module type, and the YAML Axolotl includes. Pure data in, text out."""

from __future__ import annotations

import bisect
import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from statistics import fmean
from typing import Iterable, Protocol

from ..errors import UsageError
from ..naming import module_type, printable, stack_of, without_expert_index

DEFAULT_EMBEDDING_PATTERNS = ("^lm_head.weight$", "^model.embed_tokens.weight$")
_REGEX_SPECIAL = frozenset("^$*+?{}[]\\|()")  # regex metacharacters but the dot, which Axolotl escapes itself


def literal_entry(name: str) -> str:
    """A module or parameter name as an `unfrozen_parameters` entry that Axolotl's rule (every `.` not
    followed by `+` is literal, then `re.match`) reads as that name and nothing else: regex
    metacharacters besides the dot get a backslash. Ordinary names come out unchanged."""
    return "".join("\\" + char if char in _REGEX_SPECIAL else char for char in name)


class NameIndex:
    """Parameter (or tensor) names, sorted once, for the prefix look-ups of `entry_for`."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = sorted(set(names))
        self._known = frozenset(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._known

    def starting_with(self, prefix: str) -> list[str]:
        """Every name that starts with `prefix`, in sorted order."""
        start = bisect.bisect_left(self.names, prefix)
        end = start
        while end < len(self.names) and self.names[end].startswith(prefix):
            end += 1
        return self.names[start:end]


def belongs_to(parameter: str, name: str, names: NameIndex | frozenset[str] | set[str]) -> bool:
    """Whether `parameter` is part of what selecting `name` trains: the parameter `name` itself, the
    parameters of the module `name` (`name.weight`, `name.bias`), or, where `name` is itself a parameter
    (a fused 3-D expert tensor), its own bias `name_bias` (GPT-OSS's layout), as a module's bias is."""
    return (parameter == name or parameter.startswith(name + ".")
            or (parameter == name + "_bias" and name in names))


def entry_for(name: str, parameter_names: Iterable[str] | NameIndex) -> str:
    """The `unfrozen_parameters` entry that makes Axolotl's rule unfreeze what `name` is, and nothing else.

    Axolotl reads an entry as a regex whose dots are literal, applied with `re.match`, so a plain
    name also matches every parameter it is a prefix of: `model.layers.2.mlp.up` matches
    `model.layers.2.mlp.up_proj.weight`. When such another parameter exists (`belongs_to` says what is
    `name`'s own), the entry ends in a dot (a module: `model.layers.2.mlp.up.`, whose final dot Axolotl
    makes a literal one; a backslash would be doubled) or in `$` (a parameter name); every other name comes out as `literal_entry` writes it,
    unchanged. This is the one place the decision is made: the YAML, the plugin's scores file and
    `spectrum.freeze` all use it.

    Args:
        name: a module name (`model.layers.2.mlp.up`) or a parameter name (`...mlp.experts.gate_up_proj`).
        parameter_names: the model's parameter names (the trainer's, or without a view the checkpoint's
            tensor names); pass a `NameIndex` when calling this for many names.
    """
    index = parameter_names if isinstance(parameter_names, NameIndex) else NameIndex(parameter_names)
    entry = literal_entry(name)
    if all(belongs_to(other, name, index) for other in index.starting_with(name)):
        return entry
    return entry + ("$" if name in index else ".")


def smallest_percent_keeping_one(count: int) -> Fraction:
    """The smallest K with two decimals at most that keeps at least one of `count` matrices (floor(count*K/100) >= 1)."""
    return Fraction(math.ceil(Fraction(10000, count)), 100)


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
    """`25` for whole numbers, `12.5` otherwise (as it appears in file names): every digit of a
    decimal K (which `parse_top_percent` makes), so that the name never says another K."""
    if top_percent.denominator == 1:
        return str(top_percent.numerator)
    rest, places = top_percent.denominator, 0
    for prime in (2, 5):
        count = 0
        while rest % prime == 0:
            rest //= prime
            count += 1
        places = max(places, count)
    if rest == 1:  # a decimal: exactly `places` digits after the point
        value = Decimal(f"{top_percent.numerator * 10**places // top_percent.denominator}e-{places}")  # exact: no context rounding
    else:  # not a decimal (a Fraction from the Python API, 1/3 say): 28 significant digits
        value = Decimal(top_percent.numerator) / Decimal(top_percent.denominator)
    return format(value, "f").rstrip("0").rstrip(".")


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


class ParameterNames(Protocol):
    """What selection needs of the trainer's model (see `spectrum.selection.model_view.TrainerView`)."""

    parameters: dict[str, tuple[int, ...]]
    fused: set[str]

    def parameter_of(self, tensor_name: str) -> str: ...


def trainer_entries(
    entries: Iterable[tuple[str, float, str]], view: ParameterNames | None, *, group_experts: bool = False,
    sources: dict[str, int] | None = None,
) -> tuple[list[tuple[str, float, str]], dict[str, str]]:
    """Scored modules restated as what the trainer can freeze.

    - A module transformers loads under another name gets that name.
    - Modules that transformers fuses into one parameter (per-expert MoE weights into a 3-D
      `mlp.experts.gate_up_proj`) become that parameter, scored by the **mean** of its source
      matrices' scores: the trainer can only freeze the fused tensor whole, and the mean is the
      average signal-to-noise of what unfreezing it trains.
    - `group_experts` ranks all experts of one projection together (`mlp.experts.7.down_proj`
      and `mlp.experts.3.down_proj` are both `mlp.experts.down_proj`).

    Returns:
        (name, score, type) in first-appearance order, and type -> a note for the YAML comment.
        `sources`, when given, is filled with fused name -> how many scored matrices it stands for.
    """
    restated: list[tuple[str, float | list[float], str]] = []
    fused_at: dict[str, int] = {}
    notes: dict[str, str] = {}
    for module, score, type_name in entries:
        type_name = without_expert_index(type_name) if group_experts else type_name
        if view is None:
            restated.append((module, score, type_name))
            continue
        split = getattr(view, "split", {}).get(module + ".weight")
        if split:  # one checkpoint tensor, several parameters (Dinov2's SwiGLU weights_in): all of them
            restated.append((tuple(_without_weight(name) for name in split), score, type_name))
            continue
        parameter = view.parameter_of(module + ".weight")
        if parameter not in view.parameters and without_expert_index(module) in view.parameters:
            parameter = without_expert_index(module)  # one expert of a fused 3-D checkpoint tensor
        if parameter in view.fused or parameter == without_expert_index(module) != module:
            if parameter not in fused_at:
                keeps_stack = stack_of(module) is not None and type_name.startswith(f"{stack_of(module)}.")
                fused_type = module_type(parameter, with_stack=keeps_stack)
                fused_at[parameter] = len(restated)
                restated.append((parameter, [], fused_type))
            restated[fused_at[parameter]][1].append(score)  # type: ignore[union-attr]
            continue
        restated.append((_without_weight(parameter), score, type_name))
    result = []
    for name, score, type_name in restated:
        if isinstance(score, list):
            if sources is not None:
                sources[name] = len(score)
            notes[type_name] = (f"fused: each ranked by the mean score of its {len(score)} source matrices, "
                                "as the trainer can only unfreeze the fused tensor whole")
            score = fmean(score)
        result.append((name, score, type_name))
    return result, notes


def _without_weight(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def entry_names(module: str | tuple[str, ...]) -> tuple[str, ...]:
    """The names a selected row stands for: one module, or every parameter a split tensor becomes."""
    return module if isinstance(module, tuple) else (module,)


def render_yaml(
    selection: dict[str, list[str]],
    *,
    header: str,
    embedding_patterns: Iterable[str],
    notes: dict[str, str] | None = None,
    parameter_names: NameIndex | None = None,
) -> str:
    """The `unfrozen_parameters:` YAML, in the reference tool's layout.

    Entries are module names (Axolotl applies them with `re.match` after escaping dots; any other
    regex metacharacter in a name is escaped here, `literal_entry`; a name that is a prefix of another
    of `parameter_names` is anchored, `entry_for`);
    each type gets a `# <type> layers` comment, even when it keeps no module. A name that YAML
    would not read back as that same string (a line break, a control character, `0`, `yes`,
    `a: b`, text that is not valid Unicode) is written double-quoted with escapes, and comments
    escape what is not printable, so a hostile tensor name cannot add entries or break the file.
    """
    lines = [f"# {_comment(line)}" for line in header.splitlines()]
    lines.append("unfrozen_parameters:")
    lines.extend(f"- {_scalar(pattern)}" for pattern in embedding_patterns)
    for type_name, modules in selection.items():
        note = (notes or {}).get(type_name)
        lines.append(f"# {_comment(type_name)} layers" + (f" ({_comment(note)})" if note else ""))
        lines.extend(f"- {_scalar(_entry(name, parameter_names))}" for module in modules for name in entry_names(module))
    return "\n".join(lines) + "\n"


def _entry(name: str, parameter_names: NameIndex | None) -> str:
    return literal_entry(name) if parameter_names is None else entry_for(name, parameter_names)


def plugin_entries(
    entries: Iterable[tuple[str, float, str]], view: ParameterNames
) -> list[tuple[str, float, str]]:
    """The scores file Axolotl's Spectrum plugin reads, under the trainer's names: (key, score, type).

    The plugin groups keys by type, keeps the top `int(n * spectrum_top_fraction)` of each by score
    (a stable sort) and uses each key as an `unfrozen_parameters` entry. So each key is the entry our
    YAML writes for a row of `trainer_entries` (renamed, fused experts as one key with their mean score
    and fused type, anchored by `entry_for` where a name is a prefix of another parameter's), in the
    same order, which makes the plugin's selection the YAML's at every fraction. A tensor split into
    several parameters gives one key per parameter, each typed by its own parameter's type (so each
    group ranks the same layers); the selection keeps those whole at every fraction.
    """
    rows, _ = trainer_entries(entries, view)
    index = NameIndex(view.parameters)
    taken = {type_name for _, _, type_name in rows}
    keyed: list[tuple[str, float, str]] = []
    for name, score, type_name in rows:
        if isinstance(name, tuple):  # a split tensor: each part under a type of its own
            for part in name:
                part_type = f"{type_name}/{part.rsplit('.', 1)[-1]}"
                keyed.append((entry_for(part, index), score, part_type if part_type not in taken else type_name))
            continue
        keyed.append((entry_for(name, index), score, type_name))
    return keyed


_ALWAYS_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*\.[A-Za-z0-9_.\-]*")  # dotted names: never a YAML bool, null or number


def _scalar(text: str) -> str:
    """`text` as a YAML list item: as it is when YAML reads it back unchanged, else double-quoted."""
    import yaml

    if _ALWAYS_PLAIN.fullmatch(text):
        return text
    if text.isprintable() and text == text.strip():
        try:
            if yaml.safe_load(f"- {text}") == [text]:
                return text
        except yaml.YAMLError:
            pass
    return yaml.safe_dump(text, default_style='"', allow_unicode=True, width=math.inf).rstrip("\n")


def _comment(text: str) -> str:
    """`text` for a comment line: anything not printable (line breaks included) as an escape."""
    return printable(text)


def yaml_entries(yaml_text: str) -> list[str]:
    """The list entries of an `unfrozen_parameters:` YAML we wrote (comments skipped)."""
    import yaml

    return [yaml.safe_load(line[2:]) if line.startswith('- "') else line[2:]
            for line in yaml_text.splitlines() if line.startswith("- ")]
