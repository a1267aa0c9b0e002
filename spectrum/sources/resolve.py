"""What the model argument names (a local folder or weights file, or a Hub id) and where its config.json is.

Every question about a model argument is answered here: whether it is a path or spelled like a Hub id,
which source reads its weights, and where its `config.json` is (beside the weights, in the Hugging
Face cache, or on the Hub when it answers quickly).
"""

from __future__ import annotations

import logging
import os
import re

from ..errors import SourceError, SpectrumError, UsageError
from ..naming import shown
from .base import TensorSource

LOG = logging.getLogger("spectrum")


def is_local(model: str) -> bool:
    """Whether `model` names an existing path (after `~` expansion): a local model, never a Hub id."""
    return os.path.exists(os.path.expanduser(model))


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


_HUB_NAME_MAX = 96  # the Hub's longest user, organisation or repository name


def looks_like_hub_id(model: str) -> bool:
    """`org/name` or `name` spelled as the Hub allows, and not a file name."""
    return (bool(_HUB_ID.match(model)) and not model.endswith((".safetensors", ".json", ".gguf", ".bin"))
            and all(len(part) <= _HUB_NAME_MAX for part in model.split("/")))


def require_model(model: str) -> None:
    """Raise SourceError when `model` is neither an existing path nor spelled like a Hub id (before a
    lock or a cache file is made for it)."""
    if not is_local(model) and not looks_like_hub_id(model):
        raise _no_such_model(model)


def _no_such_model(model: str) -> SourceError:
    return SourceError(
        f"{shown(model)}: no such file or folder; pass a model folder, a .safetensors, .gguf or .bin file, "
        "or a Hub id org/name",
        model=model,
    )


def check_revision(model: str, revision: str | None) -> None:
    """Raise UsageError when `--revision` is given for a local path (it names Hub revisions only)."""
    if revision is not None and os.path.exists(os.path.expanduser(model)):
        raise UsageError(f"--revision applies to Hub ids, but {model} is a local path; drop --revision")


def open_source(model: str, *, revision: str | None = None, keep_shards: bool = True) -> TensorSource:
    """Open a local folder, a weights file (`.safetensors`, `.gguf`, `.bin`), or a Hub id `org/name`.

    `keep_shards=False` lets a Hub source delete the shards it downloaded once they are scanned.
    """
    expanded = os.path.expanduser(model)
    check_revision(model, revision)
    if os.path.exists(expanded):
        from .local import open_local

        return open_local(expanded)
    if looks_like_hub_id(model):
        from .hub import HubSource  # huggingface_hub is imported for Hub ids only

        return HubSource(model, revision=revision, keep_shards=keep_shards)
    raise _no_such_model(model)


def gguf_file(model: str) -> str | None:
    """The `.gguf` file a local model argument names (the file, or a folder's only one), else None."""
    expanded = os.path.expanduser(model)
    if os.path.isfile(expanded):
        return expanded if expanded.endswith(".gguf") else None
    if os.path.isdir(expanded):
        from .local import gguf_files_in

        found = gguf_files_in(expanded)
        return os.path.join(expanded, found[0]) if len(found) == 1 else None
    return None


def find_config(model: str, revision: str | None = None) -> str | None:
    """`config.json` beside the weights: in the local folder, or for a Hub id from the HF cache (else the Hub)."""
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        path = os.path.join(expanded, "config.json")
        return path if os.path.isfile(path) else None
    if os.path.isfile(expanded):
        path = os.path.join(os.path.dirname(os.path.abspath(expanded)), "config.json")
        return path if os.path.isfile(path) else None
    try:
        return hub_config(model, revision)
    except Exception:  # noqa: BLE001 - no config reachable: the check is skipped, not the run
        return None


HUB_PROBE_SECONDS = 3.0  # per attempt (huggingface_hub makes two): whether the Hub answers at all
_unreachable: set[str] = set()  # Hub endpoints that did not answer in this process (said once)


def hub_config(model: str, revision: str | None) -> str | None:
    """A Hub model's `config.json`: from the local HF cache, else fetched; None when it cannot be had.

    Before fetching, a request with a short timeout asks the Hub for the file's metadata:
    huggingface_hub retries a Hub that does not answer for half a minute or more, which a run that
    the cache answers (cached scores, no weights to read) should not wait for. When the Hub cannot
    be reached, one warning says so and the check is skipped.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError

    cached = try_to_load_from_cache(model, "config.json", revision=revision)
    if isinstance(cached, str):  # the scan fetched it: no network on later runs
        return cached
    if cached is not None or constants.HF_HUB_OFFLINE or constants.ENDPOINT in _unreachable:
        return None  # known to be absent, offline, or a Hub already found silent
    try:
        get_hf_file_metadata(hf_hub_url(model, "config.json", revision=revision), timeout=HUB_PROBE_SECONDS)
    except HfHubHTTPError:
        return None  # the Hub answered: no such file or repository, or no access
    except Exception as err:  # noqa: BLE001 - a refused connection, a timeout, no route, a proxy's failure
        _unreachable.add(constants.ENDPOINT)
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        LOG.warning("the Hugging Face Hub cannot be reached (%s); %s's config.json is not in the local cache, so "
                    "names are not checked (set HF_HUB_OFFLINE=1 to skip this attempt)", reason, model)
        return None
    return hf_hub_download(model, "config.json", revision=revision)


def config_path_of(model: str, revision: str | None = None) -> str:
    """`config.json` of a local model folder, or of a Hub id from the Hugging Face cache (never the network)."""
    expanded = os.path.expanduser(model)
    if os.path.isdir(expanded):
        path = os.path.join(expanded, "config.json")
        if os.path.isfile(path):
            return path
        raise SpectrumError(f"{model}: the folder has no config.json, so the model cannot be built to check names")
    if os.path.exists(expanded) or model.count("/") != 1:
        raise SpectrumError(f"{model}: not a model folder with config.json, nor a Hub id org/name")
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(model, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - an id the hub library refuses, a broken cache
        cached = None
    if isinstance(cached, str):
        return cached
    raise SpectrumError(f"{model}: config.json is not in the Hugging Face cache; fetch it first "
                        f"(huggingface-cli download {model} config.json) and run verify again")
