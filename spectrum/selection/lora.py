"""LoRA / QLoRA targets from a Spectrum selection: adapters on the selected modules only.

The paper (arXiv 2406.06623) also evaluates Spectrum with QLoRA: adapters on the top-K% modules
instead of every linear layer. PEFT takes those as `target_modules` (module names: a list entry
matches a module whose full name equals it or ends with `.<entry>`, so a full name from the root
names that module and no other) and `target_parameters` (parameter names, for what is not a layer
PEFT can wrap: fused 3-D MoE experts such as `mlp.experts.gate_up_proj`, and routers that
transformers 5 builds as custom modules).

One trap is PEFT's own: on models whose experts transformers 5 fuses (the Mixtral and Qwen2-MoE
families, Qwen3-MoE, DeepSeek-V3, ...), PEFT rewrites list entries that end in a pre-v5 expert or
router name (`.gate`, `.w1`, `.gate_proj`, `.down_proj`, ...) into bare `target_parameters`
suffixes, which then match that parameter in every layer (or no module at all). A selected module
with such a name is therefore targeted through `target_parameters` as `<module>.weight`, which
PEFT matches exactly. The rule is PEFT's: when PEFT is installed, its own conversion says which
names it rewrites; otherwise the names it rewrites today are assumed (the leaves of checkpoint
tensors transformers fuses, and `gate`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .topk import literal_entry


def module_entry(name: str) -> str:
    """One module's `unfrozen_parameters` entry. The single place where a module becomes an entry
    here, so that it can follow whatever rule `spectrum.selection.topk` settles on for entries that must
    match only their own module."""
    return literal_entry(name)


@dataclass(frozen=True)
class ModelLayout:
    """What LoRA targeting needs of the model the adapters go on.

    Args:
        parameters: parameter name -> shape.
        modules: module name -> class name, for every module that holds a parameter of its own.
        layers: the modules PEFT can put a LoRA layer on (`nn.Linear` and its quantized subclasses,
            `nn.Embedding`, `nn.Conv1d/2d/3d`, transformers' `Conv1D`, `nn.MultiheadAttention`).
        rewritten: modules whose name PEFT's transformers-v5 MoE conversion would rewrite as a
            `target_modules` entry (see the module docstring).
        embeddings: (input embeddings, output head) module names, None where there is none.
    """

    parameters: dict[str, tuple[int, ...]]
    modules: dict[str, str]
    layers: frozenset[str]
    rewritten: frozenset[str] = frozenset()
    embeddings: tuple[str | None, str | None] = (None, None)
    regex_rewritten: bool = False


def _peft_layer_types() -> tuple[type, ...]:
    import torch.nn as nn

    kinds: list[type] = [nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.MultiheadAttention]
    try:
        from transformers.pytorch_utils import Conv1D

        kinds.append(Conv1D)
    except ImportError:
        pass
    return tuple(kinds)


def layout_of(model, *, fused_sources: dict[str, str] | None = None) -> ModelLayout:
    """The layout of a built model (real weights or the meta device).

    `fused_sources`: checkpoint tensor -> the fused parameter it goes into (from the trainer view),
    used to guess PEFT's rewritten names when PEFT is not installed.
    """
    kinds = _peft_layer_types()
    parameters = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    modules: dict[str, str] = {}
    layers: set[str] = set()
    by_object = {}
    for name, module in model.named_modules():
        by_object[id(module)] = name
        if next(module.parameters(recurse=False), None) is None and not isinstance(module, kinds):
            continue
        modules[name] = type(module).__name__
        if isinstance(module, kinds):
            layers.add(name)
    embeddings = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        try:
            found = getattr(model, getter)()
        except (AttributeError, NotImplementedError, TypeError, ValueError):
            found = None
        embeddings.append(None if found is None else by_object.get(id(found)))
    if embeddings[1] is not None and embeddings[0] is not None:
        tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
        if tied:
            embeddings[1] = None
    rewritten = _rewritten_by_peft(model, sorted(layers))
    regex_rewritten = _regex_rewritten_by_peft(model, sorted(layers))
    if rewritten is None or regex_rewritten is None:  # PEFT not installed: what it rewrites today
        rewritten = _assumed_rewritten(sorted(layers), fused_sources or {})
        regex_rewritten = bool(fused_sources)
    return ModelLayout(parameters, modules, frozenset(layers), frozenset(rewritten), (embeddings[0], embeddings[1]),
                       regex_rewritten)


def _rewritten_by_peft(model, names: list[str]) -> set[str] | None:
    """The names PEFT's transformers-v5 MoE conversion rewrites when given as `target_modules`
    entries, by running that conversion on each; None when PEFT is not installed."""
    try:
        from peft import LoraConfig
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:
        return None
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "model_type"):
        return set()
    rewritten = set()
    for name in names:
        probe = LoraConfig(target_modules=[name])
        try:
            convert_peft_config_for_transformers(probe, model=model, conversions=None)
        except Exception:  # noqa: BLE001 - PEFT refuses the entry (half of a fused pair): it is rewritten
            rewritten.add(name)
            continue
        if set(probe.target_modules or ()) != {name} or probe.target_parameters:
            rewritten.add(name)
    return rewritten


def _regex_rewritten_by_peft(model, layers: list[str]) -> bool | None:
    """Whether PEFT replaces a string `target_modules` on this model (its MoE conversion turns a regex
    into the bare leaf names it matches, which then match in every layer); None without PEFT."""
    try:
        from peft import LoraConfig
        from peft.utils.transformers_weight_conversion import convert_peft_config_for_transformers
    except ImportError:
        return None
    if not layers or not hasattr(getattr(model, "config", None), "model_type"):
        return False
    probe = LoraConfig(target_modules=module_regex(layers[:1]))
    try:
        convert_peft_config_for_transformers(probe, model=model, conversions=None)
    except Exception:  # noqa: BLE001 - PEFT refuses it: not usable either
        return True
    return probe.target_modules != module_regex(layers[:1])


def _assumed_rewritten(names: list[str], fused_sources: dict[str, str]) -> set[str]:
    """Without PEFT: on a model with fused experts, the modules named like a fused checkpoint tensor's
    module (`w1`, `gate_proj`, ...) or a router (`gate`), which PEFT's conversion rewrites today."""
    if not fused_sources:
        return set()
    leaves = {"gate"}
    for source in fused_sources:
        module = source[: -len(".weight")] if source.endswith(".weight") else source
        leaves.add(module.rsplit(".", 1)[-1])
    return {name for name in names if name.rsplit(".", 1)[-1] in leaves}


@dataclass(frozen=True)
class LoraTargets:
    """Where the adapters go: `target_modules` and `target_parameters` for `peft.LoraConfig`, the
    selected names neither could take (`unmatched`), and `modules_to_save` when asked for."""

    target_modules: tuple[str, ...]
    target_parameters: tuple[str, ...]
    unmatched: tuple[str, ...] = ()
    modules_to_save: tuple[str, ...] = ()

    def as_config(self) -> dict:
        """The keyword arguments for `peft.LoraConfig`."""
        config: dict = {"target_modules": list(self.target_modules), "target_parameters": list(self.target_parameters)}
        if self.modules_to_save:
            config["modules_to_save"] = list(self.modules_to_save)
        return config


def targets_for(names: list[str], layout: ModelLayout | None, *, fused: set[str] | None = None,
                embeddings: bool = False) -> LoraTargets:
    """The selected trainer names (modules, or fused parameters) as LoRA targets on `layout`.

    Without a layout (no model could be built), names are taken as stored: `fused` names (the
    checkpoint's own 3-D expert tensors) are parameters, the others modules.
    """
    modules: list[str] = []
    parameters: list[str] = []
    unmatched: list[str] = []
    for name in dict.fromkeys(names):
        if layout is None:
            (parameters if name in (fused or set()) else modules).append(name)
        elif name in layout.parameters:  # a parameter of its own: a fused 3-D expert tensor
            parameters.append(name)
        elif name in layout.layers and name not in layout.rewritten:
            modules.append(name)
        elif f"{name}.weight" in layout.parameters:  # a router, or a name PEFT would rewrite
            parameters.append(f"{name}.weight")
        else:
            unmatched.append(name)
    saved: tuple[str, ...] = ()
    if embeddings and layout is not None:
        saved = tuple(name for name in layout.embeddings if name)
    return LoraTargets(tuple(modules), tuple(parameters), tuple(unmatched), saved)


def lora_targets_for(selection, top_percent=None, *, model=None, config: str | None = None, embeddings: bool = False,
                     group_experts: bool = False) -> dict:
    """LoRA / QLoRA targets for `peft.LoraConfig(**targets, r=...)`: adapters on the selected modules only.

    Args:
        selection: as in `spectrum.freeze`: `Scores`, or a model id / path / scores file with
            `top_percent` (cached scores, `spectrum.load_scores`); or, with `model`, an
            `unfrozen_parameters` YAML (file, text or dict) or a list of entries, whose matches on
            `model` under Axolotl's rule become the targets.
        top_percent: K in (0, 100] with scores.
        model: the model the adapters go on (a transformers model, or any `torch.nn.Module`): names
            are its own, restated with transformers' conversion mapping as `--check` does. Without
            it, the model is built on the meta device from the checkpoint's `config.json` when one
            is found (`selection` a model id or path), else names are taken as the checkpoint stores them.
        config: that `config.json` (`spectrum.lora_targets` finds it; None: names as stored).
        embeddings: also return `modules_to_save` with the input embeddings and the output head
            (trained whole beside the adapters, as `unfrozen_parameters` would; none for a tied head).
        group_experts: with scores, rank all experts of one MoE projection together.

    Returns:
        `{"target_modules": [...], "target_parameters": [...]}` (and `"modules_to_save"` with
        `embeddings=True`): full names from the model's root, which PEFT matches exactly.

    Raises:
        ValueError: nothing selected, a selected name that is neither a module PEFT can wrap nor a
            parameter, or a selection form that needs `model`.
    """
    from .freeze import entries_for, trainer_view
    from ..scores import Scores
    from .topk import parse_top_percent

    import os

    scores = None
    if isinstance(selection, Scores):
        scores = selection
    elif isinstance(selection, (str, os.PathLike)) and top_percent is not None:
        from ..cache.lookup import load_scores

        scores = load_scores(os.fspath(selection))
    if scores is not None:
        if top_percent is None:
            raise ValueError("lora_targets() needs top_percent with scores, e.g. lora_targets(scores, 25)")
        percent = parse_top_percent(top_percent)
        if model is not None:
            view = trainer_view(model, scores)
            if view is not None and view.ignored:
                scores = scores.without(m for m in scores.entries if view.drops(m + ".weight"))
            names = scores.select(percent, view=view, group_experts=group_experts)
            fused_sources = {} if view is None else {s: t for s, t in view.renamed.items() if t in view.fused}
            layout = layout_of(model, fused_sources=fused_sources)
        else:
            built = built_for(scores, config)
            if built is None:
                names = scores.select(percent, group_experts=group_experts)
                layout = None
            else:
                model_built, view = built
                names = scores.select(percent, view=view, group_experts=group_experts)
                fused_sources = {s: t for s, t in view.renamed.items() if t in view.fused}
                layout = layout_of(model_built, fused_sources=fused_sources)
        targets = targets_for(names, layout, fused=set(scores.provenance.fused_tensors or ()), embeddings=embeddings)
    else:
        if model is None:
            raise ValueError("lora_targets() with a YAML or a list of entries needs model= (the entries are "
                             "matched against its parameter names)")
        patterns = entries_for(model, selection, top_percent, embeddings=False, group_experts=group_experts)
        layout = layout_of(model)
        targets = targets_for(_owners(patterns, layout), layout, embeddings=embeddings)
    if targets.unmatched:
        shown = ", ".join(targets.unmatched[:5]) + (f" and {len(targets.unmatched) - 5} more"
                                                     if len(targets.unmatched) > 5 else "")
        raise ValueError(f"{len(targets.unmatched)} selected names are neither a layer PEFT can wrap nor a parameter "
                         f"of the model ({shown})")
    if not targets.target_modules and not targets.target_parameters:
        raise ValueError("the selection holds no module: raise top_percent")
    return targets.as_config()


def _owners(patterns: list[str], layout: ModelLayout) -> list[str]:
    """The modules (or parameters of their own) whose parameters `unfrozen_parameters` entries unfreeze
    under Axolotl's rule, in the model's order."""
    from .model_view import axolotl_pattern

    compiled = [axolotl_pattern(entry) for entry in patterns]
    owners: list[str] = []
    for name in layout.parameters:
        if not any(pattern.match(name) for pattern in compiled):
            continue
        module, _, _ = name.rpartition(".")
        owners.append(module if module in layout.layers else name)
    return list(dict.fromkeys(owners))


def built_for(scores, config: str | None):
    """(the model built on the meta device from the checkpoint's config.json, its trainer view), or
    None when there is no config or transformers cannot build it."""
    from .model_view import _build_model, view_of_model

    if config is None:
        return None
    built = _build_model(config)
    if built is None:
        return None
    tensor_names = [module + ".weight" for module in scores.entries]
    return built[0], view_of_model(built[0], tensor_names)


def checkpoint_targets(scores, top_percent, *, config: str | None, model: str, types: set[str] | None = None,
                       group_experts: bool = False, check: bool | None = None) -> tuple[LoraTargets, ModelLayout | None]:
    """The command line's LoRA targets: the model built on the meta device from the checkpoint's
    config (as `--check` does), or with `check=False` (or no usable config) names as stored.

    Raises:
        SpectrumError: `check=True` and the model cannot be built; a selected name the model lacks;
            nothing selected.
    """
    from ..errors import SpectrumError

    built = None if check is False else built_for(scores, config)
    if built is None and check:
        raise SpectrumError(f"--check needs the model's config.json and an architecture transformers knows; none of "
                            f"that is usable for {model} (pass --no-check to write the names as stored)")
    if built is None:
        layout, view = None, None
    else:
        model_built, view = built
        fused_sources = {source: target for source, target in view.renamed.items() if target in view.fused}
        layout = layout_of(model_built, fused_sources=fused_sources)
    names = scores.select(top_percent, types, view=view, group_experts=group_experts)
    targets = targets_for(names, layout, fused=set(scores.provenance.fused_tensors or ()))
    if targets.unmatched:
        shown = ", ".join(targets.unmatched[:5]) + (f" and {len(targets.unmatched) - 5} more"
                                                     if len(targets.unmatched) > 5 else "")
        raise SpectrumError(f"{len(targets.unmatched)} selected modules are neither a layer PEFT can wrap nor a "
                            f"parameter of {model} as transformers builds it ({shown}); pass --no-check to write "
                            "the names as stored")
    if not targets.target_modules and not targets.target_parameters:
        raise SpectrumError("no module is selected, so no adapter would be trained; raise --top-percent")
    return targets, layout


def render_lora_yaml(targets: LoraTargets, *, header: str) -> str:
    """Axolotl's `lora_target_modules:` (and `lora_target_parameters:` when there are any)."""
    from .topk import _comment, _scalar

    lines = [f"# {_comment(line)}" for line in header.splitlines()]
    lines.append("lora_target_modules:")
    lines.extend(f"- {_scalar(name)}" for name in targets.target_modules)
    if targets.target_parameters:
        lines.append("# fused MoE experts and routers are parameters, not layers: PEFT wraps them through target_parameters")
        lines.append("lora_target_parameters:")
        lines.extend(f"- {_scalar(name)}" for name in targets.target_parameters)
    if targets.modules_to_save:
        lines.append("lora_modules_to_save:")
        lines.extend(f"- {_scalar(name)}" for name in targets.modules_to_save)
    return "\n".join(lines) + "\n"


def parameter_regex(names: list[str]) -> str:
    """One anchored regex for a selection of parameters: each name (a module, or a parameter) or one of
    its own parameters (`name.weight`, `name.bias`). It means the same under `re.search` (ms-swift's
    `trainable_parameters_regex`), `re.match` and `re.fullmatch`."""
    return "^(?:" + "|".join(re.escape(name) for name in dict.fromkeys(names)) + r")(?:\.[^.]+)?$"


def module_regex(names: list[str]) -> str:
    """One anchored regex matching exactly these module names (PEFT's string `target_modules`, applied
    with `re.fullmatch` to every module name)."""
    return "^(?:" + "|".join(re.escape(name) for name in dict.fromkeys(names)) + ")$"


def _entry_name(entry: str) -> str:
    """The name an `unfrozen_parameters` entry we wrote stands for: `^name$` lines and escaped
    metacharacters undone, and a trailing literal dot (an entry made to match only its module) dropped."""
    if entry.startswith("^") and entry.endswith("$"):
        entry = entry[1:-1]
    name = re.sub(r"\\(.)", r"\1", entry)
    return name[:-1] if name.endswith(".") else name


def selection_text(scores, top_percent, unfrozen_yaml: str, *, config: str | None, model: str, name: str,
                   types: set[str] | None, group_experts: bool, check: bool | None, lora: bool, regex: bool) -> str:
    """What `--lora` and `--format regex` write instead of the `unfrozen_parameters` YAML.

    - `--format regex`: the checked YAML's entries (embedding lines included) as one parameter regex.
    - `--lora`: Axolotl's `lora_target_modules` / `lora_target_parameters` YAML.
    - both: the LoRA targets as one module regex for PEFT's string `target_modules`, when one regex
      can say it (no fused parameters, and a model PEFT does not rewrite a regex on).
    """
    from .._version import __version__
    from ..errors import SpectrumError
    from .topk import format_percent, yaml_entries

    if not lora:
        names = [_entry_name(entry) for entry in yaml_entries(unfrozen_yaml)]
        if not names:
            raise SpectrumError("no module is selected, so the regex would match nothing; raise --top-percent")
        return parameter_regex(names) + "\n"
    targets, layout = checkpoint_targets(scores, top_percent, config=config, model=model, types=types,
                                         group_experts=group_experts, check=check)
    if regex:
        if targets.target_parameters:
            raise SpectrumError(
                f"{len(targets.target_parameters)} selected targets are parameters, not layers (fused MoE experts or "
                f"routers, e.g. {targets.target_parameters[0]}), which only PEFT's target_parameters list reaches; "
                "drop --format regex and use the YAML's lists")
        if layout is not None and layout.regex_rewritten:
            raise SpectrumError(
                "PEFT turns a regex target_modules into bare module names on this architecture (its MoE conversion), "
                "which would put adapters on every layer; drop --format regex and use the YAML's lists")
        return module_regex(list(targets.target_modules)) + "\n"
    saved = [] if layout is None else [each for each in layout.embeddings if each]
    header = (
        f"spectrum {__version__}: LoRA/QLoRA adapters on the top {format_percent(top_percent)}% of modules per type "
        f"by SNR, model {name}\n"
        "Spectrum with QLoRA (arXiv 2406.06623): adapters on the selected modules only, e.g. adapter: qlora,\n"
        "load_in_4bit: true. Leave unfrozen_parameters out of this config: it would freeze the adapters.\n"
        + (f"To also train the embeddings and the head whole: lora_modules_to_save: [{', '.join(saved)}]\n"
           if saved else "")
        + ("lora_target_parameters needs lora_dropout: 0 (PEFT's ParamWrapper)\n" if targets.target_parameters else "")
        + ("not checked against the model: names as the checkpoint stores them\n" if layout is None else "")
    )
    return render_lora_yaml(targets, header=header.rstrip("\n"))
