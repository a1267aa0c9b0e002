"""A Hugging Face Hub id resolved to files in the local HF cache, one shard at a time.

Only the index and the safetensors shards are fetched, each when the scan reaches it.
The cache is reused, `HF_HUB_OFFLINE=1` works when the files are cached, and `HF_TOKEN`
opens gated repositories. No code from the repository is ever run.
"""

from __future__ import annotations

import os

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import SourceError
from .base import ShardInfo, SourceDescription
from .safetensors import INDEX_FILE, SINGLE_FILE, ShardedSafetensors, shards_from_index


class _Missing(Exception):
    """The file is not in the repository, or not in the cache while offline."""

    def __init__(self, offline: bool) -> None:
        super().__init__()
        self.offline = offline


class HubSource(ShardedSafetensors):
    """Safetensors weights of a Hub repository `org/name` at an optional revision."""

    def __init__(self, repo_id: str, *, revision: str | None = None) -> None:
        self.repo_id = repo_id
        self.requested_revision = revision
        self.commit: str | None = None
        super().__init__(self._resolve_shards())

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

    def _resolve_shards(self) -> list[str]:
        try:
            return shards_from_index(self._download(INDEX_FILE))
        except _Missing:
            pass
        try:
            self._download(SINGLE_FILE)
            return [SINGLE_FILE]
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

    def _local_path(self, shard: str) -> str:
        try:
            return self._download(shard)
        except _Missing as err:
            raise SourceError(
                f"{self.repo_id}: shard {shard} named by its index could not be fetched"
                + (" (offline and not cached)" if err.offline else " (missing from the repository)"),
                model=self.repo_id,
            ) from err

    def describe(self) -> SourceDescription:
        shards = []
        for name in self.shard_names:
            path = self._local_path(name)
            shards.append(ShardInfo(name, os.path.getsize(path)))
        return SourceDescription(kind="hub", location=self.repo_id, revision=self.commit, shards=shards)


def _commit_of(path: str) -> str | None:
    """The commit hash of a file inside an HF cache snapshot folder (`.../snapshots/<commit>/...`)."""
    parts = os.path.normpath(path).split(os.sep)
    if "snapshots" in parts:
        position = len(parts) - 1 - parts[::-1].index("snapshots")
        if position + 1 < len(parts):
            return parts[position + 1]
    return None
