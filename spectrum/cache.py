"""Scores on disk: `model_snr_results/snr_results_<slug>.json`, its `.meta.json` sidecar, and its
`.tensors.json` when the first is in the trainer's names.

The scores file is exactly what Axolotl's Spectrum plugin reads: one JSON object of
`{"<module>": {"snr": <float>, "type": "<type>"}}` and nothing else. Its keys are the checkpoint's
modules, or, when the model transformers builds names them otherwise (fused MoE experts, vision-language
prefixes), that model's (`Scores.plugin_view`), so that the plugin trains what our YAML does; spectrum's
own per-checkpoint-tensor scores are then in `snr_results_<slug>.tensors.json`, in the same layout. The
sidecar says which (`plugin_names: "trainer"`; absent: the checkpoint's) and records the SHA-256 of each text, so a
set of files that a cut-short write left mixed is never trusted. Provenance lives in the sidecar. Every
write goes to a temporary file first and is renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile

from .errors import CacheError
from .naming import slug
from .scores import ModuleScore, Scores

DEFAULT_CACHE_DIR = "model_snr_results"


def scores_path(cache_dir: str, slug_source: str) -> str:
    """Path of the scores file for a model id or path (Axolotl's slug rule)."""
    return os.path.join(cache_dir, f"snr_results_{slug(slug_source)}.json")


def meta_path(scores_file: str) -> str:
    """Path of the provenance sidecar beside a scores file."""
    base = scores_file[: -len(".json")] if scores_file.endswith(".json") else scores_file
    return base + ".meta.json"


def tensors_path(scores_file: str) -> str:
    """Path of the per-checkpoint-tensor scores beside a scores file in the trainer's names."""
    base = scores_file[: -len(".json")] if scores_file.endswith(".json") else scores_file
    return base + ".tensors.json"


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that readers see the old file or the whole new one, never a part."""
    _atomic_write(path, text, "w")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` the same way (the report's PNG and HTML)."""
    _atomic_write(path, data, "wb")


def _atomic_write(path: str, content: str | bytes, mode: str) -> None:
    """Write to a temporary file beside `path`, fsync it, and rename it into place."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    except OSError as err:
        raise CacheError(path, f"cannot write here ({err.strerror}); choose another location") from err
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as out:
            out.write(content)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as err:
        raise CacheError(path, f"cannot write ({err.strerror}); the previous file, if any, is unchanged") from err
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def scores_to_json(entries: dict[str, ModuleScore]) -> str:
    """The scores file's text: module -> {"snr", "type"}, indented like the reference tool's."""
    payload = {module: {"snr": score.snr, "type": score.type} for module, score in entries.items()}
    return json.dumps(payload, indent=4) + "\n"


SIDECAR_MISMATCH = "sidecar_mismatch"  # the meta of scores whose sidecar describes another scores file
PLUGIN_NAMES = "plugin_names"  # sidecar: "trainer" when the scores file holds the trainer's names (absent: the checkpoint's)
_WRITTEN_KEYS = ("scores_sha256", PLUGIN_NAMES, "plugin_sha256", SIDECAR_MISMATCH)  # set by write_scores only


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_scores(path: str, scores: Scores, *, plugin: dict[str, ModuleScore] | None = None) -> None:
    """Write the scores file and, when provenance is known, its sidecar, which records the scores
    text's SHA-256: the two are replaced one after the other, and a sidecar left from before (the
    second write failed) is then known not to describe the new scores.

    `plugin`: the scores under the trainer's names (`Scores.plugin_view`). When they differ from the
    checkpoint's, they become the scores file Axolotl reads, `scores` go to `tensors_path(path)`, and the
    sidecar (always written then) records both digests; it is written last, and one from before
    describes neither new text, so an interrupted write is scanned again, never trusted.
    """
    text = scores_to_json(scores.entries)
    plugin_text = None if plugin is None else scores_to_json(plugin)
    meta = {key: value for key, value in scores.meta.items() if key not in _WRITTEN_KEYS}
    if plugin_text is not None and plugin_text != text:
        atomic_write_text(tensors_path(path), text)
        atomic_write_text(path, plugin_text)
        meta.update({"scores_sha256": _text_digest(text), PLUGIN_NAMES: "trainer",
                     "plugin_sha256": _text_digest(plugin_text)})
        atomic_write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return
    atomic_write_text(path, text)
    if meta:
        meta["scores_sha256"] = _text_digest(text)
        atomic_write_text(meta_path(path), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    try:  # checkpoint scores left beside a scores file that holds them now: no longer read
        os.unlink(tensors_path(path))
    except OSError:
        pass


def parse_scores(text: str, path: str = "<scores>") -> dict[str, ModuleScore]:
    """Scores from either layout: flat `{module: {"snr", "type"}}` or sorted `{type: {module: snr}}`."""
    if not text.strip():
        raise CacheError(path, "scores file is empty; delete it or rerun with --rescan")
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as err:
        raise CacheError(path, f"scores file is not valid JSON ({err.msg} at line {err.lineno}); delete it or rerun with --rescan") from err
    except RecursionError as err:
        raise CacheError(path, "scores file is JSON nested too deeply to hold scores; delete it or rerun with --rescan") from err
    if not isinstance(payload, dict) or not payload:
        raise CacheError(path, "scores file holds no scores; delete it or rerun with --rescan")
    entries: dict[str, ModuleScore] = {}
    for key, value in payload.items():
        if isinstance(value, dict) and "snr" in value and "type" in value and _is_number(value["snr"]):
            if not isinstance(value["type"], str):
                raise CacheError(path, f"entry {key} has a non-text type; delete the file or rerun with --rescan")
            entries[key] = ModuleScore(float(value["snr"]), value["type"])
        elif isinstance(value, dict) and isinstance(value.get("snr"), int) and not isinstance(value["snr"], bool):
            raise CacheError(path, f"entry {key} has a score beyond a float's range; delete the file or rerun with --rescan")
        elif isinstance(value, dict) and all(_is_number(score) for score in value.values()):
            for module, score in value.items():  # sorted layout: key is the type
                entries[module] = ModuleScore(float(score), key)
        else:
            raise CacheError(
                path, f"entry {key!r} is neither {{\"snr\": ..., \"type\": ...}} nor {{module: score}}; "
                "delete the file or rerun with --rescan"
            )
    if not entries:
        raise CacheError(path, "scores file holds no scores; delete it or rerun with --rescan")
    for module, score in entries.items():
        if math.isnan(score.snr):  # NaN cannot be ranked: the selection would depend on where it stands
            raise CacheError(path, f"entry {module!r} has a NaN score; delete the file or rerun with --rescan")
    return entries


def _is_number(value: object) -> bool:
    """A JSON number a float can hold (an integer beyond 1.8e308 cannot)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        float(value)
    except OverflowError:
        return False
    return True


def read_scores(path: str, model: str) -> Scores:
    """Read a scores file (and its sidecar, if present): the per-checkpoint-tensor scores, from
    `tensors_path(path)` when the sidecar says the scores file is in the trainer's names. A sidecar
    that records another scores text gives the meta `{SIDECAR_MISMATCH: True}` (with the scores file's
    own entries, whatever names they have)."""
    text = _read_text(path)
    meta = read_meta(meta_path(path))
    recorded = meta.get("scores_sha256")
    if meta.get(PLUGIN_NAMES) == "trainer":
        try:
            tensors_text = _read_text(tensors_path(path))
        except CacheError:
            tensors_text = None
        if tensors_text is not None and recorded == _text_digest(tensors_text):
            # The scores file itself may be older or newer (a rewrite cut short): the next run with a
            # view of the model writes it again; these scores are what the sidecar describes.
            return Scores(model=model, entries=parse_scores(tensors_text, tensors_path(path)), meta=meta)
        return Scores(model=model, entries=parse_scores(text, path), meta={SIDECAR_MISMATCH: True})
    entries = parse_scores(text, path)
    if isinstance(recorded, str) and recorded != _text_digest(text):
        meta = {SIDECAR_MISMATCH: True}  # its provenance is another file's: none of it applies
    return Scores(model=model, entries=entries, meta=meta)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as err:
        raise CacheError(path, "scores file is not UTF-8 text; delete it or rerun with --rescan") from err
    except OSError as err:
        raise CacheError(path, f"cannot read scores file ({err.strerror})") from err


def plugin_text_differs(path: str, plugin: dict[str, ModuleScore]) -> bool:
    """Whether the scores file at `path` is not (or cannot be read as) exactly these plugin scores."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read() != scores_to_json(plugin)
    except (OSError, UnicodeDecodeError):
        return True


def read_meta(path: str) -> dict:
    """The sidecar's provenance, or {} when it is missing or unreadable (it is advisory)."""
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}

