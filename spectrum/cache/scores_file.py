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

Files in the cache folder are the tool's own: a symbolic link there is replaced by the rename (the
file it pointed to is never written), and reads follow links but take regular files only
(`spectrum.files`). A user's output (`--output`, the report's `--png`/`--html`) is written where
the user pointed: a device or a FIFO is written through, and a link's target is replaced
(`write_output_text`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import sys
import tempfile
import time

from ..errors import CacheError, SpectrumError
from ..files import kind_of, read_regular_text
from .entry import DEFAULT_CACHE_DIR, CacheEntry  # noqa: F401 (DEFAULT_CACHE_DIR re-exported)
from ..provenance import Provenance
from ..scores import ModuleScore, Scores

def scores_path(cache_dir: str, slug_source: str) -> str:
    """Path of the scores file for a model id or path (Axolotl's slug rule)."""
    return CacheEntry.of(cache_dir, slug_source).scores


def meta_path(scores_file: str) -> str:
    """Path of the provenance sidecar beside a scores file."""
    return CacheEntry(scores_file).meta


def tensors_path(scores_file: str) -> str:
    """Path of the per-checkpoint-tensor scores beside a scores file in the trainer's names."""
    return CacheEntry(scores_file).tensors


def atomic_write_text(path: str, text: str) -> None:
    """Write `text` (UTF-8) to `path` so that readers see the old file or the whole new one, never a part."""
    _atomic_write(path, text, "w")


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write `data` to `path` the same way (the report's PNG and HTML)."""
    _atomic_write(path, data, "wb")


def _atomic_write(path: str, content: str | bytes, mode: str) -> None:
    """Write to a temporary file beside `path`, fsync it, and rename it into place. The temporary file
    is created with O_EXCL (never through a link) and flocked until renamed, which tells
    `remove_stale_temporaries` that its writer is alive."""
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=directory)
    except OSError as err:
        raise CacheError(path, f"cannot write here ({err.strerror}); choose another location") from err
    try:
        with os.fdopen(handle, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as out:
            fcntl.flock(out.fileno(), fcntl.LOCK_EX)  # dropped when closed, after the rename
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


TEMPORARY_NAME_EXTRA = len("..XXXXXXXX.tmp")  # mkstemp's name beside a file: "." + name + "." + 8 characters + ".tmp"


def name_max(folder: str) -> int:
    """The longest file name, in bytes, the file system of `folder` (or of its nearest existing parent) takes."""
    folder = os.path.abspath(folder or ".")
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def overlong_name(path: str, *, temporary: bool = True) -> tuple[int, int] | None:
    """`(bytes, limit)` when the file name of `path` (with `temporary`, the name of the temporary file
    written beside it, which is longer) is too long for its folder; None when it fits."""
    length = len(os.fsencode(os.path.basename(path))) + (TEMPORARY_NAME_EXTRA if temporary else 0)
    limit = name_max(os.path.dirname(path))
    return (length, limit) if length > limit else None


def _temporary_prefix(path: str) -> str:
    """`.<name>.`: the start of a temporary file's name beside `path`, cut short where the whole name
    would not fit (a user's output whose own name is near the limit; cache names are checked to fit)."""
    prefix = f".{os.path.basename(path)}."
    encoded = os.fsencode(prefix)
    if len(encoded) + TEMPORARY_NAME_EXTRA - 2 <= 200:
        return prefix
    room = name_max(os.path.dirname(path)) - (TEMPORARY_NAME_EXTRA - 2)
    return os.fsdecode(encoded[:room]) if len(encoded) > room else prefix


_MAX_LINKS = 40  # as the kernel's own limit on links followed in one path


def output_target(path: str) -> tuple[bool, str]:
    """How a user's output path is written: `(True, path)` to write through it (a character device, a
    FIFO, or a process's open file such as `/dev/stdout`); `(False, file)` to replace `file` by a
    temporary file and a rename, where `file` is `path` itself (a regular file, or nothing yet) or,
    for a symbolic link, the file it ends at (the link stays a link).

    Raises:
        CacheError: `path` is a block device or a socket, or its links do not end.
    """
    current = path
    for _ in range(_MAX_LINKS):
        try:
            status = os.lstat(current)
        except (FileNotFoundError, NotADirectoryError):
            return False, current  # a new file (or what a dangling link names); its folder is checked when written
        except OSError as err:
            raise CacheError(path, f"cannot write there ({err.strerror}); choose another path") from err
        if stat.S_ISLNK(status.st_mode):
            parent = os.path.realpath(os.path.dirname(os.path.abspath(current)))
            if parent == "/proc" or parent.startswith("/proc/"):  # /dev/stdout, /dev/fd/N: an open file's link
                return True, current
            current = os.path.join(parent, os.readlink(current))
            continue
        if stat.S_ISCHR(status.st_mode) or stat.S_ISFIFO(status.st_mode):
            return True, current
        if stat.S_ISREG(status.st_mode) or stat.S_ISDIR(status.st_mode):
            return False, current
        raise CacheError(path, f"is {kind_of(status.st_mode)}; give the path of a file")
    raise CacheError(path, f"cannot write there ({os.strerror(errno.ELOOP)}); choose another path")


def write_output_text(path: str, text: str) -> None:
    """Write a user's output file (the YAML): see `output_target` for devices, FIFOs and links."""
    write_output_bytes(path, text.encode("utf-8"))


def write_output_bytes(path: str, data: bytes) -> None:
    """Write a user's output file (the report's PNG and HTML): see `output_target`."""
    through, target = output_target(path)
    if not through:
        _atomic_write(target, data, "wb")
        return
    try:
        sys.stdout.flush()  # what this process printed before comes first, when the target is its stdout
    except (OSError, ValueError, AttributeError):
        pass
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)  # a FIFO waits here for its reader
    except OSError as err:
        raise CacheError(path, f"cannot write ({err.strerror})") from err
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):  # a process's stdout that is a file: after what it holds
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as err:
        raise CacheError(path, f"cannot write ({err.strerror})") from err
    finally:
        os.close(fd)


def scores_to_json(entries: dict[str, ModuleScore]) -> str:
    """The scores file's text: module -> {"snr", "type"}, indented like the reference tool's."""
    payload = {module: {"snr": score.snr, "type": score.type} for module, score in entries.items()}
    return json.dumps(payload, indent=4) + "\n"


SIDECAR_MISMATCH = "sidecar_mismatch"  # the `Scores.meta` key of `Provenance.sidecar_mismatch`


def _text_digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def write_scores(path: str, scores: Scores, *, plugin: dict[str, ModuleScore] | None = None) -> None:
    """Write the sidecar (when provenance is known), then the scores. The sidecar records the SHA-256
    of the scores text it describes and goes first, so that a run cut short between the renames
    leaves either no scores file (a first scan: the next run scans) or the previous scores beside a
    sidecar that names other scores (`SIDECAR_MISMATCH`: the next run scans again); never new
    scores without their sidecar, which would be trusted as a file made elsewhere.

    `plugin`: the scores under the trainer's names (`Scores.plugin_view`). When they differ from the
    checkpoint's, they become the scores file Axolotl reads and `scores` go to `tensors_path(path)`;
    the sidecar (always written then) records both digests and goes first too: one that describes a
    tensors file not yet in place is scanned again, never trusted.
    """
    text = scores_to_json(scores.entries)
    plugin_text = None if plugin is None else scores_to_json(plugin)
    # What this function records is its own to set: whatever the scores carried of it is dropped.
    provenance = scores.provenance.updated(scores_sha256=None, plugin_names=None, plugin_sha256=None,
                                           sidecar_mismatch=False)
    sidecar = meta_path(path)
    if plugin_text is not None and plugin_text != text:
        provenance = provenance.updated(scores_sha256=_text_digest(text), plugin_names="trainer",
                                        plugin_sha256=_text_digest(plugin_text))
        atomic_write_text(sidecar, sidecar_text(provenance))
        atomic_write_text(tensors_path(path), text)
        atomic_write_text(path, plugin_text)
        return
    if not provenance.is_empty():
        atomic_write_text(sidecar, sidecar_text(provenance.updated(scores_sha256=_text_digest(text))))
    else:
        try:  # a sidecar left from earlier scores would vouch for none of these
            os.unlink(sidecar)
        except FileNotFoundError:
            pass
        except OSError as err:
            raise CacheError(sidecar, f"cannot replace the sidecar ({err.strerror}); delete it") from err
    atomic_write_text(path, text)
    try:  # checkpoint scores left beside a scores file that holds them now: no longer read
        os.unlink(tensors_path(path))
    except OSError:
        pass


def sidecar_text(provenance: Provenance) -> str:
    """The sidecar file's text: keys sorted, two-space indents (the layout of every sidecar written so far)."""
    return json.dumps(provenance.to_json_dict(), indent=2, sort_keys=True) + "\n"


STALE_TEMPORARY_SECONDS = 5.0  # older than the gap between a temporary file's creation and its flock


def remove_stale_temporaries(scores_file: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    """Delete the temporary files a killed writer left beside `scores_file` (`.snr_results_<slug>.json.*.tmp`,
    and the same for its sidecar, its `.tensors.json` and each name in `suffixes`); the names removed.

    Call it holding the entry's lock. Only regular files of these names are touched, and only those
    no live process has flocked (a writer holds its temporary file's flock until the rename) and
    that are older than `STALE_TEMPORARY_SECONDS`.
    """
    folder = os.path.dirname(scores_file) or "."
    base = os.path.basename(scores_file)[: -len(".json")] if scores_file.endswith(".json") else os.path.basename(scores_file)
    prefixes = tuple(f".{base}{suffix}." for suffix in (".json", ".meta.json", ".tensors.json", *suffixes))
    try:
        names = [name for name in os.listdir(folder) if name.startswith(prefixes) and name.endswith(".tmp")]
    except OSError:
        return []
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue  # gone meanwhile, or a link: not ours
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or time.time() - status.st_mtime < STALE_TEMPORARY_SECONDS:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its writer is alive
            current = os.lstat(path)
            if (current.st_dev, current.st_ino) == (status.st_dev, status.st_ino):
                os.unlink(path)
                removed.append(name)
        except OSError:
            continue
        finally:
            os.close(fd)
    return removed


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
    that records another scores text gives the provenance `Provenance(sidecar_mismatch=True)` (with the
    scores file's own entries, whatever names they have)."""
    text = _read_text(path)
    provenance = Provenance.from_json_dict(read_meta(meta_path(path)))
    recorded = provenance.scores_sha256
    if provenance.plugin_names == "trainer":
        try:
            tensors_text = _read_text(tensors_path(path))
        except CacheError:
            tensors_text = None
        if tensors_text is not None and recorded == _text_digest(tensors_text):
            # The scores file itself may be older or newer (a rewrite cut short): the next run with a
            # view of the model writes it again; these scores are what the sidecar describes.
            return Scores(model, parse_scores(tensors_text, tensors_path(path)), provenance=provenance)
        return Scores(model, parse_scores(text, path), provenance=Provenance(sidecar_mismatch=True))
    entries = parse_scores(text, path)
    if recorded is not None and recorded != _text_digest(text):
        provenance = Provenance(sidecar_mismatch=True)  # its provenance is another file's: none of it applies
    return Scores(model, entries, provenance=provenance)


def _read_text(path: str) -> str:
    try:
        text = read_regular_text(path, fix="delete it or rerun with --rescan")
        return text.replace("\r\n", "\n").replace("\r", "\n")  # as open()'s universal newlines read it
    except UnicodeDecodeError as err:
        raise CacheError(path, "scores file is not UTF-8 text; delete it or rerun with --rescan") from err
    except OSError as err:
        raise CacheError(path, f"cannot read scores file ({err.strerror})") from err


def plugin_text_differs(path: str, plugin: dict[str, ModuleScore]) -> bool:
    """Whether the scores file at `path` is not (or cannot be read as) exactly these plugin scores."""
    try:
        return _read_text(path) != scores_to_json(plugin)
    except SpectrumError:  # unreadable, or not a regular file: write ours in its place
        return True


def read_meta(path: str) -> dict:
    """The sidecar's JSON object (`Provenance.from_json_dict` reads it), or {} when it is missing or unreadable (it is advisory).

    Raises:
        SpecialFileError: the sidecar is a FIFO, a device or far too large (reading it would hang).
    """
    try:
        meta = json.loads(read_regular_text(path, fix="delete it or rerun with --rescan"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}

