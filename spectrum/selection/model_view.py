"""The model as the trainer builds it: parameter names, and how checkpoint tensors map onto them.

The YAML is applied (by Axolotl, or `spectrum.freeze`) to `model.named_parameters()` of the model
the installed transformers builds, which is not always what the checkpoint stores: transformers 5
fuses per-expert MoE weights into 3-D `mlp.experts.gate_up_proj` / `down_proj` parameters, and
vision-language checkpoints load under `model.language_model.`. The model is built on the meta
device from its config alone (no weights, no remote code) and transformers' own conversion
mapping renames each checkpoint tensor, so no hand-written copy of those rules is kept here.

Building it imports torch, transformers and the model's code (seconds), so the command line starts
it in a background thread as a scan begins (`start_model_build`), and the result is kept in a small
cache of its own (`view_cache_dir()`, `views/<config key>/<names key>.json`), keyed by the installed
transformers version, `config.json` less the keys that only name or date a checkpoint
(`CONFIG_KEYS_IGNORED`) and the tensor names: a second run, or a fine-tune of a model scanned
before, answers without transformers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import metadata

from ..errors import SpecialFileError
from ..files import read_regular, read_regular_text

LOG = logging.getLogger("spectrum")

VIEW_CACHE_ENV = "SPECTRUM_CACHE"
_VIEW_FORMAT = 2  # bump when TrainerView's fields or their meaning change


def axolotl_pattern(entry: str) -> re.Pattern[str]:
    """How Axolotl reads an `unfrozen_parameters` entry: every `.` not followed by `+` is a literal dot."""
    return re.compile(re.sub(r"\.(?!\+)", r"\\.", entry))


def unmatched_entries(entries: list[str], parameter_names: list[str]) -> list[str]:
    """Entries that `re.match` no parameter name under Axolotl's rule."""
    missing = []
    for entry in entries:
        pattern = axolotl_pattern(entry)
        if not any(pattern.match(name) for name in parameter_names):
            missing.append(entry)
    return missing


_METACHARACTERS = frozenset("^$*+?{}[]|()\\")


def _entry_literal(entry: str) -> tuple[str, bool] | None:
    """(the text an entry matches literally, whether it is anchored at its end: `$` or a final dot), for an
    entry that is a plain name (escapes undone, a leading `^` dropped); None for a real regex."""
    text = entry[1:] if entry.startswith("^") else entry
    anchored = text.endswith("$") and not text.endswith("\\$")
    text = text[:-1] if anchored else text
    literal, escaped = [], False
    for position, char in enumerate(text):
        if escaped:
            literal.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in _METACHARACTERS or (char == "." and text[position + 1: position + 2] == "+"):
            return None
        else:
            literal.append(char)
    if escaped:
        return None
    name = "".join(literal)
    return name, anchored or name.endswith(".")


def overreaching_entries(entries: list[str], parameter_names: list[str]) -> dict[str, list[str]]:
    """Entries that are a plain name but also unfreeze parameters outside it under Axolotl's rule
    (`model.layers.2.mlp.up` matches `model.layers.2.mlp.up_proj.weight`): entry -> those parameters.
    What an entry owns is what `selection.topk.belongs_to` says; real regular expressions are not judged."""
    from .topk import NameIndex, belongs_to

    index = NameIndex(parameter_names)
    found: dict[str, list[str]] = {}
    for entry in entries:
        plain = _entry_literal(entry)
        if plain is None or plain[1]:
            continue
        name = plain[0]
        pattern = axolotl_pattern(entry)
        extra = [other for other in index.starting_with(name)
                 if pattern.match(other) and not belongs_to(other, name, index)]
        if extra:
            found[entry] = extra
    return found


@dataclass
class TrainerView:
    """Parameter names of the model as built, and checkpoint tensor -> parameter.

    Args:
        architecture: the class that was built (`MixtralForCausalLM`).
        parameters: parameter name -> shape.
        renamed: checkpoint tensor name -> parameter name, for every tensor transformers renames or fuses.
        fused: parameter names built from several checkpoint tensors (e.g. fused experts).
        ignored: the model's `_keys_to_ignore_on_load_unexpected`: patterns (`re.search`) of checkpoint
            tensors transformers drops on load, such as DeepSeek-V3's multi-token-prediction layer 61.
        split: checkpoint tensor -> every parameter transformers splits it into (Dinov2's SwiGLU
            `mlp.weights_in` -> `mlp.gate_proj` and `mlp.up_proj`); `renamed` gives the first.
        embeddings: (input, output) embedding parameter names, from the model's own
            `get_input_embeddings()` / `get_output_embeddings()` (None for a tied or missing head);
            None when not known (the names are then guessed from the parameters).
    """

    architecture: str
    parameters: dict[str, tuple[int, ...]]
    renamed: dict[str, str] = field(default_factory=dict)
    fused: set[str] = field(default_factory=set)
    ignored: tuple[str, ...] = ()
    embeddings: tuple[str | None, str | None] | None = None
    split: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def parameter_of(self, tensor_name: str) -> str:
        """The parameter a checkpoint tensor loads into (itself when transformers keeps the name)."""
        return self.renamed.get(tensor_name, tensor_name)

    def drops(self, tensor_name: str) -> bool:
        """Whether transformers drops this checkpoint tensor on load (it becomes no parameter)."""
        return any(re.search(pattern, tensor_name) for pattern in self.ignored)


def view_cache_dir() -> str:
    """Where built trainer views are kept: `$SPECTRUM_CACHE`, else `$XDG_CACHE_HOME/spectrum`, else `~/.cache/spectrum`."""
    chosen = os.environ.get(VIEW_CACHE_ENV)
    if chosen:
        return chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "spectrum")


def _view_to_json(view: TrainerView | None) -> dict:
    if view is None:
        return {"format": _VIEW_FORMAT, "view": None}
    return {
        "format": _VIEW_FORMAT,
        "view": {
            "architecture": view.architecture,
            "parameters": {name: list(shape) for name, shape in view.parameters.items()},
            "renamed": view.renamed,
            "fused": sorted(view.fused),
            "ignored": list(view.ignored),
            "embeddings": None if view.embeddings is None else list(view.embeddings),
            "split": {name: list(targets) for name, targets in view.split.items()},
        },
    }


def _view_from_json(payload: object) -> tuple[bool, TrainerView | None]:
    """(valid, view) from a cached file's content; a file of another format or shape is not valid."""
    if not isinstance(payload, dict) or payload.get("format") != _VIEW_FORMAT or "view" not in payload:
        return False, None
    raw = payload["view"]
    if raw is None:
        return True, None
    try:
        view = TrainerView(
            architecture=str(raw["architecture"]),
            parameters={str(name): tuple(int(d) for d in shape) for name, shape in raw["parameters"].items()},
            renamed={str(source): str(target) for source, target in raw["renamed"].items()},
            fused={str(name) for name in raw["fused"]},
            ignored=tuple(str(pattern) for pattern in raw["ignored"]),
            embeddings=None if raw["embeddings"] is None else tuple(
                None if name is None else str(name) for name in raw["embeddings"][:2]),
            split={str(name): tuple(str(target) for target in targets) for name, targets in raw["split"].items()},
        )
        for pattern in view.ignored:
            re.compile(pattern)
    except (KeyError, TypeError, ValueError, AttributeError, re.error):
        return False, None
    return True, view


# Top-level config.json keys that name, date or tune a checkpoint without changing the model
# transformers builds from it (its parameters' names and shapes; the check builds under float32
# whatever the dtype says). Fine-tunes of one base model mostly differ in these, so they share a view.
CONFIG_KEYS_IGNORED = frozenset({
    "_name_or_path", "_commit_hash", "transformers_version", "torch_dtype", "dtype", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id",
})


def config_digest(raw: bytes) -> str:
    """A config.json's digest for the view cache: its JSON object without `CONFIG_KEYS_IGNORED`, in
    canonical form (so key order and white space do not count either); its bytes when it is not a
    JSON object."""
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        config = None
    if not isinstance(config, dict):
        return hashlib.sha256(raw).hexdigest()
    kept = {key: value for key, value in config.items() if key not in CONFIG_KEYS_IGNORED}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _config_key(config_path: str) -> str | None:
    """What a view depends on besides the tensor names: the view format, the installed transformers
    and the config (`config_digest`; a GGUF's sampled digest). None when either cannot be read."""
    try:
        transformers_version = metadata.version("transformers")
        if config_path.endswith(".gguf"):  # a large file: its sampled digest stands for its metadata
            from ..files import sample_digest

            digest = sample_digest(config_path)
        else:
            digest = config_digest(read_regular(config_path))
    except (metadata.PackageNotFoundError, OSError, SpecialFileError):
        return None
    return hashlib.sha256(json.dumps([_VIEW_FORMAT, transformers_version, digest]).encode("utf-8")).hexdigest()


def _views_of(config_key: str) -> str:
    """The folder of one config's cached views (a file per set of tensor names)."""
    return os.path.join(view_cache_dir(), "views", config_key)


def cached_view(config_path: str, tensor_names: list[str], *, build: ModelBuild | None = None) -> TrainerView | None:
    """`build_view`, remembered: the same transformers, config (`config_digest`) and tensor names give the same view.

    `build`: this config's model, already being built (`start_model_build`), for a cache miss.
    A view that cannot be read from or written to the cache is simply built again.
    """
    from ..cache.scores_file import atomic_write_text
    from ..errors import CacheError

    config_key = _config_key(config_path)
    path = None
    if config_key is not None:
        names_key = hashlib.sha256(json.dumps(sorted(tensor_names)).encode("utf-8")).hexdigest()
        path = os.path.join(_views_of(config_key), f"{names_key}.json")
        try:
            valid, view = _view_from_json(json.loads(read_regular_text(path)))
            if valid:
                return view
        except (OSError, UnicodeDecodeError, ValueError, SpecialFileError):
            pass
    if build is not None and build.config_path == config_path:  # built (or found unbuildable) meanwhile
        built = build.result()
        view = None if built is None else view_of_model(built[0], tensor_names)
    else:
        view = build_view(config_path, tensor_names)
    if path is not None:
        try:
            atomic_write_text(path, json.dumps(_view_to_json(view)) + "\n")
        except CacheError as err:
            LOG.debug("trainer view not cached: %s", err)
    return view


class ModelBuild:
    """A config's model, built on the meta device in a background thread while the scan computes.

    Building it is mostly importing torch, transformers and the model's code (about 7 s of one core
    here), which would otherwise follow the scan; a CPU scan spends its time in OpenBLAS, which
    releases the GIL.
    """

    def __init__(self, config_path: str) -> None:
        import threading

        self.config_path = config_path
        self._built: tuple | None = None
        # Not a daemon: a run that fails meanwhile waits for the build to end rather than having the
        # interpreter stop the thread inside torch's or transformers' import at exit.
        self._thread = threading.Thread(target=self._run, name="spectrum-model-build")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._built = _build_model(self.config_path)
        except Exception as err:  # noqa: BLE001 - _build_model logs what it expects; this is a bug's trace
            LOG.info("building the model failed (%s); names are not checked", err)

    def result(self) -> tuple | None:
        """(the model, the config's architectures) once built; None when it could not be built."""
        self._thread.join()
        return self._built


NAME_CHECK_TRANSFORMERS = 5  # the first major version with the conversion mapping the check reads
_SKIP_NOTICE_GIVEN: list[bool] = []  # the default check's skip is said once a process


def name_check_version_problem(version: str | None) -> str | None:
    """Why this transformers version cannot run the name check (it needs 5 or newer), or None when it can.
    A version that does not start with a number is given the benefit of the doubt."""
    if version is None:
        return "transformers is not installed; the name check needs transformers 5 or newer: pip install -U \"transformers>=5\""
    major = re.match(r"\s*v?(\d+)", version)
    if major is None or int(major.group(1)) >= NAME_CHECK_TRANSFORMERS:
        return None
    return (f"transformers {version} is installed and the name check needs 5 or newer: "
            'pip install -U "transformers>=5"')


def installed_transformers() -> str | None:
    """The installed transformers version, or None."""
    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def start_model_build(config: str) -> ModelBuild | None:
    """Start building the model of `config` (a config.json, or a .gguf file) that the name check needs,
    unless this config already has a cached view (a model scanned before answers without transformers)."""
    config_key = _config_key(config)
    views = None if config_key is None else _views_of(config_key)
    if views is not None and os.path.isdir(views) and os.listdir(views):
        return None
    return ModelBuild(config)


def build_view(config_path: str, tensor_names: list[str]) -> TrainerView | None:
    """Build the model on the meta device from `config.json` (or from a `.gguf` file's metadata, read
    by transformers' GGUF support) and map the checkpoint's tensor names.

    Returns None (and logs why) when transformers does not know the architecture without remote code.
    """
    built = _build_model(config_path)
    return None if built is None else view_of_model(built[0], tensor_names)


def _build_model(config_path: str) -> tuple | None:
    """(the model built on the meta device, the config's architectures), or None (logged) when
    transformers cannot build it without remote code. transformers' own log lines (deprecated config
    keys, initialisation notes) are about a model nobody trains here: they are kept off the terminal."""
    try:
        from transformers.utils import logging as transformers_logging
    except ImportError:
        return _build_model_quietly(config_path)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return _build_model_quietly(config_path)
    finally:
        transformers_logging.set_verbosity(verbosity)


def _build_model_quietly(config_path: str) -> tuple | None:
    try:
        import torch
        import transformers
        from transformers import AutoConfig
        from transformers.conversion_mapping import get_model_conversion_mapping  # noqa: F401 (transformers 5)
    except ImportError as err:  # an older transformers: names are taken as stored
        LOG.info("transformers lacks the conversion mapping (%s); names are taken as stored", err)
        return None
    try:
        if config_path.endswith(".gguf"):
            config = AutoConfig.from_pretrained(os.path.dirname(config_path), gguf_file=os.path.basename(config_path))
            raw = {"architectures": getattr(config, "architectures", None) or []}
        else:
            raw = json.loads(read_regular_text(config_path))  # a FIFO here would block transformers' own read
            config = AutoConfig.from_pretrained(os.path.dirname(config_path), trust_remote_code=False)
    except Exception as err:  # noqa: BLE001 - unknown model type, custom code, broken config
        LOG.info("transformers cannot build this model from its config (%s); names are not checked", err)
        return None
    # Built under float32, torch's default already: under the config's dtype transformers would switch
    # the process-wide default dtype for a moment (`local_torch_dtype`), under a scan running beside it.
    config.dtype = torch.float32
    candidates = [getattr(transformers, name, None) for name in raw.get("architectures") or []]
    candidates += [transformers.AutoModelForCausalLM, transformers.AutoModel]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            with torch.device("meta"):  # this thread's default device only
                if hasattr(candidate, "from_config"):
                    model = candidate.from_config(config, trust_remote_code=False)
                else:
                    model = candidate(config)
            return model, raw.get("architectures")
        except Exception:  # noqa: BLE001 - try the next class
            continue
    LOG.info("no transformers class builds %s; names are not checked", raw.get("architectures"))
    return None


def view_of_model(model, tensor_names: list[str]) -> TrainerView:
    """A built transformers model's parameters, and where transformers' conversion mapping puts each
    checkpoint tensor (renamed, or fused into a parameter built from several tensors)."""
    from transformers.conversion_mapping import get_model_conversion_mapping
    from transformers.core_model_loading import WeightConverter, WeightRenaming, rename_source_key

    parameters = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    transforms = get_model_conversion_mapping(model)
    renamings = [t for t in transforms if isinstance(t, WeightRenaming)]
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    state = model.state_dict()
    renamed: dict[str, str] = {}
    fused: set[str] = set()
    split: dict[str, tuple[str, ...]] = {}
    converted: set[str] = set()  # converter targets seen so far
    for name in tensor_names:
        target, source_pattern = rename_source_key(name, renamings, converters, model.base_model_prefix, state)
        if target != name:
            renamed[name] = target
        if source_pattern is None:
            continue
        targets = _split_targets(target, source_pattern, converters)
        if targets is not None and all(each in parameters for each in targets):
            split[name] = targets  # one tensor, several parameters: each is unfrozen
            continue
        # Fused: several tensors into one parameter (a second one arrives, or the pattern names every
        # expert, for when one expert was scored). One tensor into one parameter (a transpose, a
        # permutation) changes its layout, not what it is: that is a rename.
        if target in converted or "*" in source_pattern:
            fused.add(target)
        converted.add(target)
    ignored = tuple(str(pattern) for pattern in getattr(model, "_keys_to_ignore_on_load_unexpected", None) or ())
    embeddings = (_embedding_parameter(model, "get_input_embeddings", parameters),
                  _embedding_parameter(model, "get_output_embeddings", parameters))
    return TrainerView(type(model).__name__, parameters, renamed, fused, ignored, embeddings, split)


def _split_targets(target: str, source_pattern: str, converters) -> tuple[str, ...] | None:
    """Every parameter of a one-to-many converter (one source pattern, several targets), from the
    first, which is all `rename_source_key` returns; None for any other converter, or for patterns
    that are not plain names."""
    for converter in converters:
        sources, targets = list(converter.source_patterns), list(converter.target_patterns)
        if source_pattern not in sources:
            continue
        if len(sources) != 1 or len(targets) < 2 or targets[0] not in target or any("\\" in t for t in targets):
            return None
        head = target[: target.rindex(targets[0])]
        tail = target[target.rindex(targets[0]) + len(targets[0]):]
        return tuple(head + each + tail for each in targets)
    return None


def live_view(model) -> TrainerView:
    """A model's own parameters as the view for scores of a live scan (`spectrum.scan_model`), which already
    bear these names: nothing renamed, the 3-D parameters under an `experts` module fused, and the
    embeddings the model's own getters return."""
    parameters = {name: tuple(parameter.shape) for name, parameter in model.named_parameters()}
    fused = {name for name, shape in parameters.items() if len(shape) == 3 and "experts" in name.split(".")[:-1]}
    embeddings = (_embedding_parameter(model, "get_input_embeddings", parameters),
                  _embedding_parameter(model, "get_output_embeddings", parameters))
    return TrainerView(type(model).__name__, parameters, fused=fused, embeddings=embeddings)


def _embedding_parameter(model, getter: str, parameters: dict) -> str | None:
    """The weight of the module `model.<getter>()` returns, by its parameter name; None when there is
    none, or when it is not a parameter of its own (a head tied to the input embeddings)."""
    try:
        module = getattr(model, getter)()
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None
    if module is None:
        return None
    for name, candidate in model.named_modules():
        if candidate is module:
            weight = f"{name}.weight" if name else "weight"
            return weight if weight in parameters else None
    return None


def _without_dropped(scores, view: TrainerView) -> tuple:
    """The scores less the matrices transformers drops on load: they become no parameter, so an entry
    for one could only fail the check, or with --no-check push a real module out of the selection."""
    dropped = [module for module in scores.entries if view.drops(module + ".weight")]
    if not dropped:
        return scores, []
    LOG.warning("%d scored matrices are checkpoint tensors %s drops on load (%s%s); left out of the YAML",
                len(dropped), view.architecture, ", ".join(dropped[:3]), ", ..." if len(dropped) > 3 else "")
    return scores.without(dropped), dropped


def view_for_check(scores, *, config: str | None, model: str, check: bool | None = None,
                   build: ModelBuild | None = None) -> TrainerView | None:
    """The model the YAML is written for: built on the meta device from `config` (its config.json, or a
    .gguf file; `spectrum.sources.resolve` finds it), or None (names as stored).

    Args:
        check: True: fail if the model cannot be built; None (default): build it when `config` is found
            and transformers knows the architecture, else None; False: None.
        build: the model, already being built (`start_model_build`, during the scan).

    Raises:
        SpectrumError: `check=True` and the model cannot be built (`model` names it in the message).
    """
    from ..errors import SpectrumError

    if check is False:
        return None
    view = None
    if config is not None:
        tensor_names = [module + ".weight" for module in scores.entries]
        recorded = scores.provenance.embeddings
        if recorded is not None:
            tensor_names += recorded.tensor_names()
        view = cached_view(config, tensor_names, build=build)
    too_old = name_check_version_problem(installed_transformers()) if config is not None else None
    if view is None and check:
        if config is None:
            reason = f"no config.json beside the weights of {model} (nor in the Hugging Face cache)"
        elif too_old:
            reason = too_old
        else:
            reason = (f"transformers {installed_transformers()} cannot build the architecture of {config} "
                      "without the model's own code")
        raise SpectrumError(f"--check cannot check the names: {reason} (pass --no-check to write the names as stored)")
    if view is None and too_old and not _SKIP_NOTICE_GIVEN:
        _SKIP_NOTICE_GIVEN.append(True)
        LOG.warning("the names are not checked (written as stored): %s", too_old)
    return view


@dataclass(frozen=True)
class CheckedYaml:
    """The YAML for the trainer's model, and the scored modules left out of it because transformers
    drops them on load (so out of the summary too)."""

    text: str
    dropped: tuple[str, ...] = ()


def checked_yaml(
    scores,
    top_percent,
    *,
    view: TrainerView | None,
    types: set[str] | None = None,
    embeddings: bool = True,
    group_experts: bool = False,
) -> CheckedYaml:
    """The YAML under the names of the model `view` describes (`view_for_check`), verified against it;
    None: the names as stored.

    Raises:
        SpectrumError: an entry matches no parameter or unfreezes another module's parameters, or the
            selection holds no module (`top_percent` too small for every type).
    """
    from ..errors import SpectrumError
    from .topk import yaml_entries

    dropped: list[str] = []
    if view is not None and view.ignored:
        scores, dropped = _without_dropped(scores, view)
    empty_types = check_selection_keeps_modules(scores, top_percent, types=types, view=view, group_experts=group_experts)
    text = scores.to_yaml(top_percent, types=types, embeddings=embeddings, view=view, group_experts=group_experts)
    if view is not None:
        entries = yaml_entries(text)
        missing = unmatched_entries(entries, list(view.parameters))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise SpectrumError(
                f"{len(missing)} YAML entries match no parameter of {view.architecture} as transformers builds it "
                f"({shown}); the checkpoint's names differ from the model's: report this, or pass --no-check"
            )
        wider = overreaching_entries(entries, list(view.parameters))
        if wider:
            entry, extra = next(iter(wider.items()))
            raise SpectrumError(
                f"{len(wider)} YAML entries also unfreeze parameters of other modules of {view.architecture} "
                f"({entry} matches {extra[0]}{' and more' if len(extra) > 1 else ''}); report this, or pass --no-check"
            )
        LOG.info("checked: every entry matches a parameter of %s, and only its own", view.architecture)
    if empty_types:
        LOG.warning("%s", empty_types)
    return CheckedYaml(text, tuple(dropped))


def check_selection_keeps_modules(scores, top_percent, *, types: set[str] | None = None, view=None,
                                  group_experts: bool = False) -> str | None:
    """Fail when the top `top_percent`% keeps no module at all (a YAML of embeddings or nothing, which
    Axolotl reads as "train everything" when the list is empty); else the warning naming the types that
    keep none (None when every type keeps one). Both say the smallest --top-percent that keeps one module
    of every type (counted as the YAML ranks them: a fused expert tensor is one)."""
    from fractions import Fraction

    from ..errors import SpectrumError
    from .topk import format_percent, keep_count, parse_top_percent, smallest_percent_keeping_one

    percent = top_percent if isinstance(top_percent, Fraction) else parse_top_percent(top_percent)
    counts = scores.type_counts(types, view=view, group_experts=group_experts)
    if not counts:
        return None
    empty = [type_name for type_name, count in counts.items() if keep_count(count, percent) == 0]
    fewest = min(counts, key=counts.get)
    each = format_percent(smallest_percent_keeping_one(counts[fewest]))
    if len(empty) == len(counts):
        most = max(counts.values())
        held = f"every type holds {most}" if counts[fewest] == most else f"types hold {counts[fewest]} to {most}"
        total = format_percent(smallest_percent_keeping_one(most))
        advice = (f"the smallest --top-percent that keeps one of every type is {each}" if total == each else
                  f"the smallest --top-percent that keeps one of every type is {each} ({fewest} holds "
                  f"{counts[fewest]}), one module in total {total}")
        raise SpectrumError(f"top {format_percent(percent)}% selects no module ({held}): {advice}; no YAML written")
    if not empty:
        return None
    shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
    kinds = "type" if len(empty) == 1 else "types"
    return (f"top {format_percent(percent)}% keeps no module of {len(empty)} {kinds} ({shown}); "
            f"--top-percent {each} keeps one of every type")
