"""The partial state of a scan in progress: `snr_results_<slug>.partial.jsonl` beside the scores file.

A scan commits each score as it comes, so that an interrupted scan (Ctrl-C, `kill -9`, a crash,
a lost connection) resumes where it stopped. The file is never named like a scores file, so
Axolotl's plugin, which reads `snr_results_<slug>.json`, can never take it for a complete result.

Format, one JSON value per line:

    {"spectrum_partial": 1, "fingerprint": {"version", "method", "kind", "location", "revision", "shards"}}
    ["model.layers.0.mlp.down_proj", 0.0311407, "mlp.down_proj"]
    ...

The first line says what the scores were computed from (for a local folder its shard names and
sizes; for a Hub id its commit and shard names) and how; a scan resumes only a file whose
fingerprint is its own, so its final scores file is byte for byte the one an uninterrupted scan
writes. The header is written whole (temporary file, then rename); each score line is appended
with one `write` and flushed, and the file is fsynced every few seconds and when the scan stops.
A line cut short by a crash is dropped when the file is read back. The file is opened with
`O_NOFOLLOW` and must be a regular file: a link (or a FIFO) at its path is an error naming it,
and nothing is read or written through it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import stat
import time
from typing import Mapping

from .._version import __version__
from .entry import PARTIAL_SUFFIX, CacheEntry  # noqa: F401 (PARTIAL_SUFFIX re-exported)
from .scores_file import atomic_write_text
from ..errors import CacheError
from ..files import kind_of, read_regular
from ..scores import ModuleScore
from ..sources.base import SourceDescription

LOG = logging.getLogger("spectrum")

_FORMAT = 1


def partial_path(scores_file: str) -> str:
    """`model_snr_results/snr_results_<slug>.partial.jsonl` for `.../snr_results_<slug>.json`."""
    return CacheEntry(scores_file).partial


def fingerprint(description: SourceDescription, method: str, context: dict | None = None) -> dict:
    """What a scan's scores depend on: the weights (by shard names, sizes and modification times, or
    Hub commit), the method, and any other setting in `context` (e.g. the threshold rule).

    Hub shard sizes are left out: they are known only once a shard is downloaded. A local shard
    rewritten since the interruption (a new mtime) makes the scan start over.
    """
    hub = description.kind == "hub"
    return {
        "version": __version__,
        "method": method,
        **(context or {}),
        "kind": description.kind,
        "location": description.location,
        "revision": description.revision,
        "shards": [shard.name if hub else [shard.name, shard.size, shard.mtime_ns] for shard in description.shards],
    }


def encode_line(module: str, score: ModuleScore) -> bytes:
    """One score line (ASCII: any tensor name, even one that is not valid Unicode, survives)."""
    return (json.dumps([module, score.snr, score.type]) + "\n").encode("ascii")


def decode_line(line: bytes) -> tuple[str, ModuleScore] | None:
    """A score line read back, or None when it is not one (cut short, or garbage)."""
    try:
        value = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not (isinstance(value, list) and len(value) == 3):
        return None
    module, snr, type_name = value
    if not isinstance(module, str) or not isinstance(type_name, str):
        return None
    if not isinstance(snr, (int, float)) or isinstance(snr, bool) or not math.isfinite(snr):
        return None
    return module, ModuleScore(float(snr), type_name)


class ScanInterrupted(KeyboardInterrupt):
    """Raised instead of KeyboardInterrupt when a scan is interrupted (Ctrl-C); its message says what is saved.

    Args:
        saved: scores in the partial file, ready for the next run to resume from.
        total: matrices the scan had to score, when known.
        path: the partial file.
    """

    def __init__(self, saved: int, total: int | None, path: str) -> None:
        if saved:
            of = f" of {total}" if total else ""
            message = (f"the scores of {saved}{of} matrices are saved in {path}; "
                       "run the same command again to resume")
        else:
            message = "no matrix was scored yet, so nothing was saved"
        super().__init__(message)
        self.saved = saved
        self.total = total
        self.path = path


class PartialScan:
    """The journal of one scan: `begin` reads back what an interrupted scan of the same weights saved,
    `record` commits a score. See the module docstring for the file format.

    Args:
        path: the `.partial.jsonl` file (see `partial_path`).
        context: settings the scores depend on besides the weights and the method (see `fingerprint`).
        sync_seconds: at most this long between fsyncs (a `kill -9` loses nothing that was written;
            the fsyncs are for power loss).
    """

    def __init__(self, path: str, *, context: dict | None = None, sync_seconds: float = 2.0) -> None:
        self.path = path
        self.context = dict(context or {})
        self.sync_seconds = sync_seconds
        self.saved = 0  # score lines in the file
        self.resumed = 0  # of which read back from an interrupted scan
        self._fd: int | None = None
        self._opened = False  # begin opened the file: it is this scan's to delete
        self._synced = 0.0

    def begin(self, description: SourceDescription, method: str) -> Mapping[str, ModuleScore]:
        """Open the journal for a scan of `description` by `method`; the scores it already holds."""
        wanted = json.loads(json.dumps(fingerprint(description, method, self.context)))
        known, valid_bytes = self._read(wanted)
        if known is None:
            try:
                atomic_write_text(self.path, json.dumps({"spectrum_partial": _FORMAT, "fingerprint": wanted}) + "\n")
            except CacheError as err:
                reason = getattr(err.__cause__, "strerror", None) or err.reason
                raise CacheError(self.path, f"cannot start a scan here ({reason}); free some space or choose "
                                 "another --cache-dir") from err
            known = {}
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            status = os.fstat(self._fd)
            if not stat.S_ISREG(status.st_mode):  # put there since it was read or written: not ours
                os.close(self._fd)
                self._fd = None
                raise CacheError(self.path, f"the partial scan is {kind_of(status.st_mode)}, not a regular file; delete it")
            size = status.st_size
            if valid_bytes is not None and size > valid_bytes:
                os.ftruncate(self._fd, valid_bytes)  # drop a line cut short, so the next one starts clean
            elif valid_bytes is not None and size < valid_bytes:
                os.write(self._fd, b"\n")  # the header's own newline was cut off: the next line starts after it
        except OSError as err:
            if os.path.islink(self.path):
                raise CacheError(self.path, "the partial scan is a symbolic link, which spectrum never writes "
                                 "through; delete the link") from err
            raise CacheError(self.path, f"cannot write the partial scan ({err.strerror}); choose another --cache-dir") from err
        self._opened = True
        self.saved = self.resumed = len(known)
        if known:
            LOG.warning("resuming an interrupted scan: %d matrices already scored in %s", len(known), self.path)
        self._synced = time.monotonic()
        return known

    def _read(self, wanted: dict) -> tuple[dict[str, ModuleScore] | None, int | None]:
        """(scores, bytes of whole lines) of an existing journal for these weights; (None, None) for none."""
        try:
            data = read_regular(self.path, follow_links=False, fix="delete it")
        except FileNotFoundError:
            return None, None
        except OSError as err:
            raise CacheError(self.path, f"cannot read the partial scan ({err.strerror}); delete it") from err
        first, _, rest = data.partition(b"\n")
        try:
            header = json.loads(first)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            header = None
        if not isinstance(header, dict) or header.get("spectrum_partial") != _FORMAT:
            LOG.warning("%s is not a partial scan this version can resume; starting over", self.path)
            return None, None
        if header.get("fingerprint") != wanted:
            LOG.warning("%s was made from other weights or settings (%s); starting over",
                        self.path, _difference(header.get("fingerprint"), wanted))
            return None, None
        known: dict[str, ModuleScore] = {}
        valid = len(first) + 1
        for line in rest.split(b"\n")[:-1]:  # the last piece has no newline: empty, or a line cut short
            entry = decode_line(line)
            if entry is None:
                break
            known[entry[0]] = entry[1]
            valid += len(line) + 1
        return known, valid

    def record(self, module: str, score: ModuleScore) -> None:
        """Commit one score: appended with a single write, fsynced every `sync_seconds`."""
        if self._fd is None:
            raise RuntimeError("PartialScan.record before begin")
        line = encode_line(module, score)
        try:
            written = 0
            while written < len(line):
                written += os.write(self._fd, line[written:])
            if time.monotonic() - self._synced >= self.sync_seconds:
                os.fsync(self._fd)
                self._synced = time.monotonic()
        except OSError as err:
            raise CacheError(
                self.path, f"cannot save progress ({err.strerror}); {self.saved} scores are saved, "
                "free some space and run the same command again to resume"
            ) from err
        self.saved += 1

    def close(self) -> None:
        """Flush the journal to disk and close it; it stays for a later run to resume."""
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def discard(self) -> None:
        """Close and delete the journal (its scores are in the scores file now, or there were none); one
        `begin` did not open (a scan that failed first, a link it refused) is left as it is."""
        self.close()
        if not self._opened:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as err:
            LOG.warning("cannot delete %s (%s); delete it by hand", self.path, err.strerror)


def _difference(recorded: object, wanted: dict) -> str:
    """Which part of the fingerprint changed, in words."""
    if not isinstance(recorded, dict):
        return "no fingerprint"
    changed = [key for key in wanted if recorded.get(key) != wanted[key]]
    return "different " + ", ".join(changed) if changed else "different fingerprint"
