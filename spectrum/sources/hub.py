"""A Hugging Face Hub id resolved to files in the local HF cache, one shard at a time.

Only the index and the safetensors shards are fetched, each when the scan reaches it.
The cache is reused, `HF_HUB_OFFLINE=1` works when the files are cached, and `HF_TOKEN`
opens gated repositories. No code from the repository is ever run.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    SafetensorsParsingError,
)

from ..errors import CorruptCheckpointError, SourceError
from .base import ShardInfo, SourceDescription, TensorInfo
from .quantized import read_config
from .safetensors import INDEX_FILE, SINGLE_FILE, SafetensorsFile, ShardedSafetensors, index_weight_map, shards_of


class _Missing(Exception):
    """The file is not in the repository, or not in the cache while offline."""

    def __init__(self, offline: bool) -> None:
        super().__init__()
        self.offline = offline


class HubSource(ShardedSafetensors):
    """Safetensors weights of a Hub repository `org/name` at an optional revision.

    Headers of shards that are not cached yet are read remotely (HTTP range requests), so the
    scan can start before any shard is downloaded; `prefetch` downloads the next shard in the
    background while the current one is scanned. With `keep_shards=False`, shards this scan
    downloaded itself are deleted from the cache once scanned (shards that were already
    cached, for this commit or as the same contents under another one, are never touched).
    """

    def __init__(self, repo_id: str, *, revision: str | None = None, keep_shards: bool = True) -> None:
        self.repo_id = repo_id
        self.requested_revision = revision
        self.keep_shards = keep_shards
        self.commit: str | None = None
        self._downloads: dict[str, Future] = {}
        self._downloaded_here: set[str] = set()
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spectrum-download")
        super().__init__(*self._resolve_shards())

    def _download(self, filename: str) -> str:
        """Local path of one repository file, fetched into the HF cache if needed."""
        try:
            path = hf_hub_download(self.repo_id, filename, revision=self.commit or self.requested_revision)
        except LocalEntryNotFoundError as err:
            raise _Missing(offline=True) from err
        except EntryNotFoundError as err:
            raise _Missing(offline=False) from err
        except GatedRepoError as err:
            raise SourceError(
                f"{self.repo_id} is gated: accept its license on the Hub, then set HF_TOKEN to a token with access",
                model=self.repo_id,
            ) from err
        except RepositoryNotFoundError as err:
            raise SourceError(
                f"{self.repo_id}: no such local path, and no such model on the Hub "
                "(or it is private: set HF_TOKEN); check the spelling",
                model=self.repo_id,
            ) from err
        except RevisionNotFoundError as err:
            raise SourceError(
                f"{self.repo_id} has no revision {self.requested_revision!r}; pass a branch, tag or commit that exists",
                model=self.repo_id,
            ) from err
        except HFValidationError as err:
            raise SourceError(f"{self.repo_id}: no such file or folder, and not a valid Hub id", model=self.repo_id) from err
        except OfflineModeIsEnabled as err:
            raise _Missing(offline=True) from err
        self.commit = self.commit or _commit_of(path)
        return path

    def _resolve_shards(self) -> tuple[list[str], dict[str, str] | None]:
        """(shard names, the index's weight map or None for a single file)."""
        try:
            index_path = self._download(INDEX_FILE)
        except _Missing:
            pass
        else:
            weight_map = index_weight_map(index_path)
            return shards_of(weight_map, index_path), weight_map
        already_cached = self._cached_path(SINGLE_FILE) is not None
        blobs_before = self._blob_names()
        try:
            path = self._download(SINGLE_FILE)
        except _Missing as err:
            if err.offline:
                raise SourceError(
                    f"{self.repo_id} is not a local path, and its weights are not in the Hugging Face cache while the Hub "
                    f"cannot be reached (offline); download it when online (hf download {self.repo_id}) "
                    "or pass a local folder",
                    model=self.repo_id,
                ) from err
            raise SourceError(
                f"{self.repo_id} has no safetensors weights ({SINGLE_FILE} or {INDEX_FILE}); "
                "only safetensors checkpoints are supported so far",
                model=self.repo_id,
            ) from err
        if not already_cached and self._new_blob(path, blobs_before):
            self._downloaded_here.add(SINGLE_FILE)
        self._sizes[SINGLE_FILE] = os.path.getsize(path)
        done: Future = Future()
        done.set_result(path)
        self._downloads[SINGLE_FILE] = done
        return [SINGLE_FILE], None

    def _config(self) -> dict | None:
        """`config.json` of the repository (fetched only for FP8 weights, which need its block size)."""
        try:
            return read_config(os.path.dirname(self._download("config.json")))
        except _Missing:
            return None

    def _cached_path(self, shard: str) -> str | None:
        path = try_to_load_from_cache(self.repo_id, shard, revision=self.commit or self.requested_revision)
        return path if isinstance(path, str) else None

    def _blobs_dir(self) -> str:
        """The repository's `blobs/` folder in the HF cache: the file contents that snapshots link to."""
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        return os.path.join(constants.HF_HUB_CACHE, repo_folder_name(repo_id=self.repo_id, repo_type="model"), "blobs")

    def _blob_names(self) -> frozenset[str]:
        try:
            return frozenset(os.listdir(self._blobs_dir()))
        except OSError:
            return frozenset()

    def _new_blob(self, path: str, blobs_before: frozenset[str]) -> bool:
        """Whether the file behind `path` is a blob that was not in the cache before this download.

        The cache stores a file's contents once, shared by every snapshot that has it: a shard
        unchanged since a commit the user downloaded before is linked, not fetched, and is theirs.
        A file that is not a blob of this repository's cache (a copy where links are unsupported)
        counts as theirs too: nothing is deleted unless this scan is known to have fetched it.
        """
        blob = os.path.realpath(path)
        return os.path.dirname(blob) == os.path.realpath(self._blobs_dir()) and os.path.basename(blob) not in blobs_before

    def _fetch(self, shard: str) -> str:
        already_cached = self._cached_path(shard) is not None
        blobs_before = self._blob_names()
        try:
            path = self._download(shard)
        except _Missing as err:
            raise self._unfetchable(shard, err.offline) from err
        if not already_cached and self._new_blob(path, blobs_before):
            self._downloaded_here.add(shard)
        self._sizes[shard] = os.path.getsize(path)
        return path

    def _unfetchable(self, shard: str, offline: bool) -> SourceError:
        return SourceError(
            f"{self.repo_id}: shard {shard} named by its index could not be fetched"
            + (" (offline and not cached)" if offline else " (missing from the repository)"),
            model=self.repo_id,
        )

    def prefetch(self, shard: str) -> None:
        with self._lock:
            if shard not in self._downloads and shard not in self._files:
                self._downloads[shard] = self._pool.submit(self._fetch, shard)

    def _local_path(self, shard: str) -> str:
        self.prefetch(shard)
        return self._downloads[shard].result()

    def _shard_tensors(self, shard: str) -> list[TensorInfo]:
        """From the local header when the shard is cached, else from a remote read of the header alone."""
        if shard in self._files or self._cached_path(shard) is not None:
            return super()._shard_tensors(shard)
        try:
            header = HfApi().parse_safetensors_file_metadata(self.repo_id, shard, revision=self.commit)
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as err:
            raise self._unfetchable(shard, offline=True) from err
        except EntryNotFoundError as err:
            raise self._unfetchable(shard, offline=False) from err
        except SafetensorsParsingError as err:
            raise CorruptCheckpointError(f"{self.repo_id}/{shard}", f"its header, read remotely, is not a safetensors header ({err})") from err
        return [
            TensorInfo(name, info.dtype, tuple(info.shape), shard)
            for name, info in sorted(header.tensors.items(), key=lambda item: item[1].data_offsets[0])
        ]

    def release(self, shard: str) -> None:
        handle: SafetensorsFile | None = self._files.get(shard)
        self._downloads.pop(shard, None)
        super().release(shard)  # closes the file
        if self.keep_shards or shard not in self._downloaded_here or handle is None:
            return
        _delete_cached(handle.path)

    def close(self) -> None:
        """Stop downloading; with `keep_shards=False`, also delete the shards this scan downloaded and
        did not get to release (a scan that failed or was interrupted leaves no shard of its own)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()
        if self.keep_shards:
            return
        for shard, download in list(self._downloads.items()):
            if shard in self._downloaded_here and download.done() and not download.cancelled() and download.exception() is None:
                _delete_cached(download.result())
        self._downloads.clear()

    def describe(self) -> SourceDescription:
        shards = []
        for name in self.shard_names:
            size = self._sizes.get(name)
            if size is None and (cached := self._cached_path(name)) is not None:
                size = os.path.getsize(cached)
            shards.append(ShardInfo(name, size))
        return SourceDescription(kind="hub", location=self.repo_id, revision=self.commit, shards=shards)


def _delete_cached(path: str) -> None:
    """Delete a file of the HF cache: the snapshot's link and the blob it points to."""
    blob = os.path.realpath(path)
    for name in (path, blob):
        try:
            os.unlink(name)
        except FileNotFoundError:
            pass


def _commit_of(path: str) -> str | None:
    """The commit hash of a file inside an HF cache snapshot folder (`.../snapshots/<commit>/...`)."""
    parts = os.path.normpath(path).split(os.sep)
    if "snapshots" in parts:
        position = len(parts) - 1 - parts[::-1].index("snapshots")
        if position + 1 < len(parts):
            return parts[position + 1]
    return None
