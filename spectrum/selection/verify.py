"""`spectrum verify CONFIG.yml`: whether an Axolotl config trains what it says, before a long run.

The failures users meet on the trainer's side are mostly silent: an `unfrozen_parameters` entry
that matches no parameter (or also a longer-named module), a Spectrum plugin whose scores file is
missing, unreadable or keyed by names the model does not have (Axolotl then trains every parameter,
or crashes, or trains only the embeddings), a `spectrum_top_fraction` given as a percent, LoRA
targets that match no module. The model is built on the meta device from its config, as `--check`
does (no weights, no remote code), and every rule is the trainer's own:

- `unfrozen_parameters`: Axolotl's `freeze_layers_except` (`re.match` after making every `.` not
  followed by `+` literal; a trailing `[start:end]` row range is not part of the regex).
- The Spectrum plugin (`plugins: [axolotl.integrations.spectrum.SpectrumPlugin]`): it reads
  `./model_snr_results/snr_results_<slug>.json` from the directory Axolotl runs in (here: the
  current directory), groups by `type`, sorts by `snr`, keeps `int(count * spectrum_top_fraction)`
  per type (0.5 when the key is absent: the schema's default) and puts `^lm_head.weight$` and
  `^model.embed_tokens.weight$` first.
- `lora_target_modules`: PEFT's (a list entry matches a module named exactly so or ending in
  `.<entry>`; a string is a regex, `re.fullmatch`); `lora_target_parameters`: the same on
  `<module>.<parameter>` names.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field

from ..errors import SpectrumError, UsageError
from .topk import belongs_to
from .model_view import axolotl_pattern

PLUGIN = "axolotl.integrations.spectrum.SpectrumPlugin"
PLUGIN_FOLDER = "model_snr_results"
PLUGIN_URL = "https://raw.githubusercontent.com/cognitivecomputations/spectrum/main/model_snr_results/"
_ROW_RANGE = re.compile(r"^(.+)\[([0-9]*)(?::([0-9]*))?\]$")  # Axolotl's `name[start:end]` extension


@dataclass
class Verdict:
    """What a config trains and what makes it train something else.

    Args:
        architecture: the class built from the config.
        problems: one line each.
        trains: one line: what will train.
    """

    architecture: str
    problems: list[str] = field(default_factory=list)
    trains: str = ""


def read_config(path: str) -> dict:
    """The Axolotl config as a mapping; a usage error when it cannot be read as one."""
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            parsed = yaml.safe_load(handle)
    except OSError as err:
        raise UsageError(f"{path}: cannot read it ({err.strerror or err})") from err
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{path}: not a YAML file ({reason})") from err
    if not isinstance(parsed, dict):
        raise UsageError(f"{path}: not an Axolotl config (a YAML mapping of keys such as base_model:)")
    return parsed


def _count(number: int, noun: str) -> str:
    """`1 entry`, `2 entries`: a count with its noun."""
    if number == 1:
        return f"1 {noun}"
    return f"{number} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


def _shown(items: list[str], limit: int = 5) -> str:
    quoted = [repr(item) for item in items[:limit]]
    return ", ".join(quoted) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _owner(parameter: str) -> str:
    """The module a parameter belongs to (`mlp.experts.gate_up_proj` belongs to `mlp.experts`)."""
    module = parameter.rpartition(".")[0]
    return module if module else parameter


def check_unfrozen(entries: list, parameters: list[str], modules: set[str], *, source: str) -> tuple[list[str], set[str]]:
    """Problems with `unfrozen_parameters` entries, and the parameters they unfreeze."""
    problems: list[str] = []
    unfrozen: set[str] = set()
    unmatched: list[str] = []
    invalid: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            invalid.append(str(entry))
            continue
        ranged = _ROW_RANGE.match(entry)
        regex = ranged.group(1) if ranged else entry
        try:
            pattern = axolotl_pattern(regex)
        except re.error:
            invalid.append(entry)
            continue
        hits = [name for name in parameters if pattern.match(name)]
        if not hits:
            unmatched.append(entry)
            continue
        unfrozen.update(hits)
        plain = regex.removeprefix("^").removesuffix("$").replace("\\.", ".")
        if plain in modules or plain in parameters:  # the entry names one module (or parameter)
            own = set(parameters)
            others = sorted({_owner(name) for name in hits if not belongs_to(name, plain, own)})
            if others:
                problems.append(f"{source} entry {entry!r} also unfreezes {_shown(others)}, whose names it is a prefix of "
                                f"(Axolotl's re.match); end it with a dot (a module) or $ (a parameter) to unfreeze "
                                f"{plain} alone, as spectrum's YAML does")
    if invalid:
        problems.append(f"{source}: not a valid regular expression: {_count(len(invalid), 'entry')} ({_shown(invalid)}); "
                        "Axolotl stops on them")
    if unmatched:
        hint = ("the scores file is keyed by names the model does not have: paste spectrum's YAML into "
                "unfrozen_parameters instead" if "plugin" in source else "compare them with the model's parameter names")
        problems.append(f"{source}: no parameter of the model matches {_count(len(unmatched), 'entry')} "
                        f"({_shown(unmatched)}), which train nothing; {hint}")
    return problems, unfrozen


def plugin_entries(config: dict, base: str, directory: str) -> tuple[list[str], list[str] | None]:
    """(problems, the `unfrozen_parameters` the Spectrum plugin would set; None when it sets none)."""
    from ..cache.entry import CacheEntry

    name = config.get("spectrum_model_name") or base
    relative = CacheEntry.of(PLUGIN_FOLDER, str(name)).scores
    path = os.path.join(directory, relative)
    fallback = (f"Axolotl then fetches {PLUGIN_URL}{os.path.basename(relative)}, and when that fails too "
                "trains every parameter")
    problems: list[str] = []
    fraction = config.get("spectrum_top_fraction", 0.5)
    if fraction is None or isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        problems.append(f"spectrum_top_fraction: {fraction!r} is not a number; Axolotl stops on it")
        fraction = None
    elif not (math.isfinite(fraction) and 0 < fraction <= 1):
        what = "every module" if fraction > 1 else "no module (only the two embedding lines)"
        problems.append(f"spectrum_top_fraction: {fraction} is outside (0, 1]: it is a fraction, not a percent, and "
                        f"selects {what}; write e.g. 0.25 for the top 25%")
    if not os.path.isfile(path):
        problems.append(f"the Spectrum plugin's scores file ./{relative} is missing; {fallback}; scan it with "
                        f"spectrum --model {name} in this folder")
        return problems, None
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        reason = getattr(err, "strerror", None) or str(err).splitlines()[0][:120]
        problems.append(f"./{relative} is unreadable ({reason}); {fallback}")
        return problems, None
    if not data:
        problems.append(f"./{relative} holds no scores; {fallback}")
        return problems, None
    if not isinstance(data, dict):
        problems.append(f"./{relative} is not a JSON object of scores; Axolotl stops on it")
        return problems, None
    rows = []
    for module, info in data.items():
        if not (isinstance(info, dict) and "type" in info and "snr" in info):
            problems.append(f"./{relative} is not in the layout Axolotl reads ({{module: {{snr, type}}}}; "
                            "this looks like the sorted {type: {module: snr}} layout), and Axolotl stops on it; "
                            "write it again with spectrum")
            return problems, None
        rows.append((module, info["snr"], info["type"]))
    bad = [module for module, snr, _ in rows
           if isinstance(snr, bool) or not isinstance(snr, (int, float)) or math.isnan(snr)]
    if bad:
        problems.append(f"./{relative} holds {len(bad)} scores that are NaN or not numbers ({_shown(bad)}), "
                        "which rank arbitrarily (or stop Axolotl); scan the model again")
        return problems, None
    if fraction is None:
        return problems, None
    by_type: dict[str, list[tuple[str, float]]] = {}
    for module, snr, type_name in rows:
        by_type.setdefault(type_name, []).append((module, snr))
    entries = ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    for members in by_type.values():
        ranked = sorted(members, key=lambda member: member[1], reverse=True)
        entries.extend(module for module, _ in ranked[: int(len(members) * fraction)])
    return problems, entries


def check_lora(config: dict, layout, model) -> tuple[list[str], list[str], list[str]]:
    """Problems with the LoRA targets, and the modules and parameters the adapters go on (PEFT's rules)."""
    from .lora import _regex_rewritten_by_peft, _rewritten_by_peft

    problems: list[str] = []
    modules = [name for name, _ in model.named_modules() if name]
    targets = config.get("lora_target_modules") or []
    adapted: list[str] = []
    if config.get("lora_target_linear"):
        problems.append("lora_target_linear: true adds every linear layer to lora_target_modules, so adapters go on "
                        "all of them, not only the listed ones")
    if isinstance(targets, str):
        try:
            pattern = re.compile(targets)
        except re.error as err:
            problems.append(f"lora_target_modules: {targets!r} is not a valid regular expression ({err})")
            pattern = None
        if pattern is not None:
            adapted = [name for name in modules if pattern.fullmatch(name)]
            if not adapted:
                problems.append(f"lora_target_modules: the regex {targets!r} matches no module name (re.fullmatch)")
            if _regex_rewritten_by_peft(model, sorted(layout.layers)):
                problems.append("lora_target_modules is a regex, which PEFT turns into bare module names on this "
                                "architecture (its MoE conversion), putting adapters on every layer; list the names")
    elif isinstance(targets, list):
        unmatched = []
        for target in targets:
            hits = [name for name in modules if name == target or name.endswith(f".{target}")] \
                if isinstance(target, str) else []
            if not hits:
                unmatched.append(str(target))
            adapted.extend(hits)
        if unmatched:
            problems.append(f"lora_target_modules: no module matches {_count(len(unmatched), 'entry')} ({_shown(unmatched)}); "
                            "PEFT matches a module by its full name or a dotted suffix of it")
        unwrappable = sorted({name for name in adapted if name not in layout.layers})
        if unwrappable:
            problems.append(f"lora_target_modules names {_count(len(unwrappable), 'module')} PEFT cannot put a LoRA layer on "
                            f"({_shown(unwrappable)}: not nn.Linear, Embedding or Conv); PEFT stops on them: "
                            "target their weight through lora_target_parameters")
        rewritten = _rewritten_by_peft(model, [t for t in targets if isinstance(t, str)])
        if rewritten:
            problems.append(f"lora_target_modules: PEFT's MoE conversion rewrites {_shown(sorted(rewritten))} into "
                            "bare target_parameters, which match that parameter in every layer; list their weights "
                            "(<module>.weight) under lora_target_parameters instead")
    parameters = config.get("lora_target_parameters") or []
    if isinstance(parameters, str):
        parameters = [parameters]
    adapted_parameters: list[str] = []
    unmatched = []
    for target in parameters:
        hits = [name for name in layout.parameters if name == target or name.endswith(f".{target}")]
        if not hits:
            unmatched.append(str(target))
        adapted_parameters.extend(hits)
    if unmatched:
        problems.append(f"lora_target_parameters: no parameter matches {_count(len(unmatched), 'entry')} ({_shown(unmatched)})")
    if not targets and not parameters and not config.get("lora_target_linear"):
        problems.append("adapter is set but lora_target_modules and lora_target_parameters are empty: PEFT then "
                        "picks its own default modules for this architecture")
    return problems, list(dict.fromkeys(adapted)), list(dict.fromkeys(adapted_parameters))


def verify(config: dict, *, source: str, model_config: str, directory: str = ".") -> Verdict:
    """Check an Axolotl config (a parsed mapping) against the model its `base_model` names, built from
    `model_config` (that model's config.json: `spectrum.sources.resolve.config_path_of`)."""
    from .lora import layout_of
    from .model_view import _build_model

    base = config.get("base_model")
    if not isinstance(base, str) or not base:
        raise UsageError(f"{source}: no base_model: to check against (give --model MODEL for a bare YAML)")
    config_source = config.get("base_model_config") or base
    built = _build_model(model_config)
    if built is None:
        raise SpectrumError(f"{config_source}: transformers cannot build this model from its config.json without "
                            "remote code, so its parameter names cannot be checked")
    model = built[0]
    layout = layout_of(model)
    parameters = list(layout.parameters)
    module_names = {name for name, _ in model.named_modules() if name}
    verdict = Verdict(type(model).__name__)
    plugins = config.get("plugins") or []
    uses_plugin = isinstance(plugins, list) and PLUGIN in plugins
    entries = config.get("unfrozen_parameters")
    if isinstance(entries, str):
        entries = [entries]
    where = "unfrozen_parameters"
    if uses_plugin:
        problems, generated = plugin_entries(config, base, directory)
        verdict.problems += problems
        if generated is not None:
            entries, where = generated, "the Spectrum plugin's unfrozen_parameters"
    frozen = bool(entries)
    unfrozen: set[str] = set(parameters)
    if entries:
        problems, unfrozen = check_unfrozen(list(entries), parameters, module_names, source=where)
        verdict.problems += problems
        if not unfrozen:
            verdict.problems.append(f"{where} unfreeze no parameter at all: Axolotl trains nothing "
                                    "(\"All parameters are frozen\")")
    gradient = config.get("gradient_checkpointing_kwargs") or {}
    if frozen and isinstance(gradient, dict) and gradient.get("use_reentrant") is True:
        verdict.problems.append("gradient_checkpointing_kwargs.use_reentrant: true with frozen parameters: no gradient "
                                "reaches the layers before the first trainable one (Axolotl refuses it for "
                                "unfrozen_parameters, but not for the plugin's); set it to false")
    total = sum(math.prod(shape) for shape in layout.parameters.values())
    adapter = config.get("adapter")
    if adapter:
        if frozen:
            verdict.problems.append(
                f"adapter: {adapter} with {where}: Axolotl applies them to the PEFT model after adding the adapters, "
                "whose parameter names start with base_model.model., so every parameter the entries miss (the "
                "adapters too) is frozen; put the selection in lora_target_modules instead (spectrum --lora)")
        problems, modules, lora_parameters = check_lora(config, layout, model)
        verdict.problems += problems
        verdict.trains = (f"adapters on {_count(len(modules), 'module')} and {_count(len(lora_parameters), 'parameter')}"
                          f" of {verdict.architecture}")
        return verdict
    count = sum(math.prod(layout.parameters[name]) for name in unfrozen)
    share = 100 * count / total if total else 0.0
    verdict.trains = (f"{len(unfrozen)} of {len(parameters)} parameter tensors of {verdict.architecture}, "
                      f"{count:,} of {total:,} parameters ({share:.1f}%)" + ("" if frozen else ": the whole model"))
    return verdict
