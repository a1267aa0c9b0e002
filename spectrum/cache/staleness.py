"""Scores of a model from its cache file when that answers the request, else from a scan that is then cached.

This is where the cache and the scanner meet: the CLI and the Python API both call `load_or_scan`.
It is also where a cache entry is kept whole when scans are interrupted or run side by side:

- **Validity**: the sidecar records what the scores were computed from. A local folder whose
  shards changed (names or sizes), or a Hub id whose revision now points to another commit in
  the local Hugging Face cache, is reported and scanned again instead of reused. A local shard
  that changes while it is scanned (`spectrum.scoring.checkpoint` compares it with the file as the scan
  started) fails the scan: nothing is cached and the partial scan is discarded.
- **Resume**: a scan commits each score to `snr_results_<slug>.partial.jsonl` as it comes
  (`spectrum.cache.journal`); an interrupted scan resumes from it, and it is deleted once the scores
  file is written. Axolotl never reads it: it is not named like a scores file.
- **Concurrency**: a scan holds the entry's lock (`spectrum.cache.lock`) from the cache decision to the
  rename of the scores file into place. A second process scanning the same model into the same
  folder waits, then reuses the first one's result. Readers need no lock: every file is replaced
  by an atomic rename.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass

from .scores_file import (
    overlong_name,
    plugin_text_differs,
    read_scores,
    write_scores,
)
from ..errors import SpecialFileError, SpectrumError, UsageError
from ..files import read_regular_text, sample_digest
from .journal import PartialScan, partial_path
from .lock import EntryLock, lock_path
from ..provenance import LeftOut, Provenance, ShardRecord
from ..scores import Scores
from ..sources.base import ShardInfo
from ..naming import TypeFilter, natural_key, shown


LOG = logging.getLogger("spectrum")

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Plan:
    """What the cache file can do for a request."""

    reuse: Scores | None = None  # the cached scores answer it
    keep: Scores | None = None  # cached scores to keep; scan `wanted` and add them
    wanted: TypeFilter | None = None  # what to scan (None: the default types)
    stale: str | None = None  # why the cached scores were not used, to report


def refresh_plugin_file(cache_file: str, scores: Scores, view) -> bool:
    """Put the scores file Axolotl's plugin reads under the trainer's names (`Scores.plugin_view`) when
    it is not already: after a scan (which writes the checkpoint's names, the view being built meanwhile)
    or for a cached file written without a view. Under the entry's lock, and only when the cache still
    holds these scores (another process may have replaced them). Returns whether it wrote; a cache that
    cannot be written is a warning (the YAML is unaffected).
    """
    plugin = scores.plugin_view(view)
    if not plugin or not plugin_text_differs(cache_file, plugin):
        return False
    try:
        with EntryLock(lock_path(cache_file)):
            if not os.path.exists(cache_file):
                return False
            cached = read_scores(cache_file, scores.model)
            if cached.provenance.sidecar_mismatch or cached.entries != scores.entries:
                return False  # replaced meanwhile: the run that wrote them writes its own
            if not plugin_text_differs(cache_file, plugin):
                return False
            write_scores(cache_file, cached, plugin=plugin)
    except SpectrumError as err:
        LOG.warning("%s stays in the checkpoint's names, which Axolotl's Spectrum plugin would not find in "
                    "%s (%s); use the YAML instead of the plugin", cache_file, view.architecture, err)
        return False
    return True


def check_entry_names(cache_file: str, *, named: bool) -> None:
    """Raise UsageError when the longest file name of a cache entry (the temporary file of its partial
    scan, `.snr_results_<slug>.partial.jsonl.XXXXXXXX.tmp`) does not fit its folder's file system."""
    too_long = overlong_name(partial_path(cache_file))
    if too_long is None:
        return
    length, limit = too_long
    scores_name = os.path.basename(cache_file)
    fix = "give a shorter --name" if named else "name the cache files with --name SHORT (e.g. the Hub id it was made from)"
    raise UsageError(
        f"the cache files {shown(scores_name)} and its siblings would have names of up to {length} bytes, more than "
        f"the {limit} a file name may have in {shown(os.path.dirname(cache_file) or '.')}; {fix}"
    )


def keep_or_discard(journal: PartialScan) -> None:
    """After a failed scan: keep the journal for a later run to resume, unless it holds nothing."""
    if journal.saved:
        journal.close()
    else:
        journal.discard()


def report_wait(cache_file: str, pid: int | None) -> None:
    holder = f"process {pid}" if pid else "another spectrum process"
    LOG.warning("%s: %s is scanning this model; waiting for it, then using its scores", cache_file, holder)


def identity(path: str) -> tuple[int, int, int] | None:
    """Which file is at `path` (an atomic rename gives a new inode), or None."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_size, status.st_mtime_ns


def plan(cache_file: str, model: str, *, revision: str | None, type_filter: TypeFilter | None, threshold: str) -> Plan:
    if not os.path.exists(cache_file):
        return Plan(wanted=type_filter)
    cached = read_scores(cache_file, model)
    if cached.provenance.sidecar_mismatch:
        return Plan(wanted=type_filter, stale="their sidecar describes other scores (a write was cut short)")
    if not cached.provenance.made_with(threshold):
        return Plan(wanted=type_filter)
    reason = stale_reason(cached.provenance, model, revision)
    if reason:
        return Plan(wanted=type_filter, stale=reason)
    missing = missing_types(cached, type_filter)
    if missing == set():
        _note_left_out(cache_file, cached)
        return Plan(reuse=cached)
    return Plan(keep=cached, wanted=missing.__contains__ if missing else type_filter)


def stale_reason(provenance: Provenance, model: str, revision: str | None = None) -> str | None:
    """Why cached scores no longer describe `model`'s weights, or None when they do (or it cannot be told).

    A local folder is compared by shard names and sizes, listed without reading any weights. A
    Hub id is compared by commit, when the local Hugging Face cache says which commit `revision`
    (default `main`) points to; the Hub itself is not asked. A `revision` the cache cannot resolve
    must be the one the scores were made for (or a short hash of their commit). A cache without
    provenance (made elsewhere), or whose weights are gone, cannot be checked and is trusted.
    """
    source = provenance.source
    if source is None:
        return None
    expanded = os.path.expanduser(model)
    if os.path.exists(expanded):
        return _shards_changed(source.shards, _local_shards(expanded))
    if source.kind != "hub":
        return None
    location = source.location
    if location is not None and location.lower() != model.lower():  # another repo under the same slug
        return f"they are for {location}, another repository whose name gives the same file name"
    commit = _cached_commit(model, revision)
    recorded = source.revision
    if commit and recorded is not None and recorded != commit:
        return (f"they are for commit {recorded[:12]}, and {revision or 'main'} is now commit {commit[:12]} "
                "in the Hugging Face cache")
    if commit is None and revision is not None and not _names_commit(revision, recorded):
        asked_then = source.requested_revision  # None: main (or a file made before it was recorded)
        if asked_then != revision:
            return (f"they are for {asked_then or 'main'}"
                    + (f" (commit {recorded[:12]})" if recorded is not None else "")
                    + f", and --revision {revision} is not known to the Hugging Face cache")
    return None


def _names_commit(revision: str, recorded: str | None) -> bool:
    """Whether `revision` is the recorded commit, or a short hash of it (7 hex digits or more)."""
    return (recorded is not None and len(revision) >= 7 and re.fullmatch(r"[0-9a-f]+", revision) is not None
            and recorded.startswith(revision))


def _local_shards(path: str) -> list[ShardInfo] | None:
    """Each weight file of a local model (name, size, mtime), from a listing; None when it cannot be opened."""
    from ..sources.local import open_local

    try:
        source = open_local(path)
        try:
            description = source.describe()
        finally:
            source.close()
    except (SpectrumError, OSError):
        return None
    return description.shards


def _shards_changed(recorded: tuple[ShardRecord, ...] | None, current: list[ShardInfo] | None) -> str | None:
    """Why the shards differ from those recorded, or None. Names and sizes come from the listing; a
    shard whose mtime changed is compared by its sampled digest (a copy of the same files is not stale)."""
    if current is None or not recorded:
        return None
    then = {entry.name: entry for entry in recorded if entry.name is not None}
    now = {shard.name: shard for shard in current}
    if set(then) != set(now):
        gone, new = sorted(set(then) - set(now), key=str), sorted(set(now) - set(then))
        parts = ([f"{_names(gone)} gone"] if gone else []) + ([f"{_names(new)} new"] if new else [])
        return "the weight files changed: " + ", ".join(parts)
    for name, shard in now.items():
        size = then[name].size
        if size is not None and shard.size is not None and size != shard.size:
            return f"{name} was {size} bytes when scanned and is {shard.size} bytes now"
    for name, shard in now.items():
        digest = then[name].sample_sha256
        if digest is None or shard.path is None or then[name].mtime_ns == shard.mtime_ns:
            continue
        try:
            if sample_digest(shard.path) != digest:
                return f"{name} was rewritten since it was scanned (same size, other content)"
        except OSError:
            return None
    return None


def _names(names: list) -> str:
    return ", ".join(str(name) for name in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _cached_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit `revision` points to in the local Hugging Face cache (`refs/<revision>`), or None."""
    if revision and _COMMIT.match(revision):
        return revision
    from huggingface_hub import constants

    ref = os.path.join(constants.HF_HUB_CACHE, f"models--{repo_id.replace('/', '--')}", "refs", revision or "main")
    try:
        commit = read_regular_text(ref, limit=4096).strip()
    except (OSError, UnicodeDecodeError, ValueError, SpecialFileError):
        return None
    return commit if _COMMIT.match(commit) else None


def missing_types(scores: Scores, type_filter: TypeFilter | None) -> set[str] | None:
    """Types the request wants that a cached file lacks; None when that cannot be known.

    Without a sidecar (a file made elsewhere) the request is taken as covered when at least
    one cached type matches it, as Axolotl would use the file as it is.
    """
    checkpoint_types = scores.provenance.checkpoint_types
    cached = set(scores.types()) | {entry.type for entry in (scores.provenance.left_out or {}).values()}
    if checkpoint_types is None:
        if type_filter is None or any(type_filter(type_name) for type_name in cached):
            return set()
        return None
    if type_filter is None:
        wanted = scores.provenance.default_types
    else:
        wanted = {name for name in checkpoint_types if type_filter(name)}
    return wanted - cached


def merge(cached: Scores, fresh: Scores) -> Scores:
    """Cached scores plus freshly scanned types, in (type, layer) order; fresh provenance wins, except
    that `seconds` and `bytes_read` add up over the increments: the sidecar tells the whole scan's cost."""
    combined = dict(cached.entries)
    combined.update(fresh.entries)
    ordered = dict(sorted(combined.items(), key=lambda item: (item[1].type, natural_key(item[0]))))
    before, now = cached.provenance, fresh.provenance
    dropped: dict[str, LeftOut] = {module: why for module, why in (before.left_out or {}).items()
                                   if module not in fresh.entries}
    dropped.update(now.left_out or {})
    provenance = now.updated(left_out=dict(sorted(dropped.items())) or None)
    if before.seconds is not None and now.seconds is not None:
        provenance = provenance.updated(seconds=round(before.seconds + now.seconds, 3))
    if before.bytes_read is not None and now.bytes_read is not None:
        provenance = provenance.updated(bytes_read=before.bytes_read + now.bytes_read)
    return Scores(fresh.model, ordered, provenance=provenance)


_REASONS = {
    "nan_or_inf_entries": "NaN or infinite entries",
    "singular_values_overflow": "singular values beyond float64's range",
    "score_overflow": "a score beyond float64's range",
}


def _note_left_out(cache_file: str, cached: Scores) -> None:
    """One line, when cached scores answer, for the matrices their scan left out (it named each one)."""
    dropped = cached.provenance.left_out
    if dropped:
        reasons = sorted({_REASONS.get(entry.reason, "no score") for entry in dropped.values()})
        LOG.warning("%s: %d matrices have no score (%s), as their scan said; --rescan lists them again",
                    cache_file, len(dropped), ", ".join(reasons))

