"""The files of one model's cache entry, all named after `snr_results_<slug>`: the one place that knows them.

    model_snr_results/snr_results_<slug>.json            the scores (what Axolotl's Spectrum plugin reads)
    model_snr_results/snr_results_<slug>.meta.json       the sidecar: provenance
    model_snr_results/snr_results_<slug>.tensors.json    per-checkpoint-tensor scores, when the first is in trainer names
    model_snr_results/snr_results_<slug>.partial.jsonl   an interrupted scan's journal
    model_snr_results/snr_results_<slug>.lock            held by the process scanning it
    ./snr_results_<slug>_unfrozenparameters_<K>percent.yaml   the selection (or _lora_, or .regex)
    ./snr_results_<slug>_<K>percent.png / .html          the report
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..naming import slug

DEFAULT_CACHE_DIR = "model_snr_results"  # where Axolotl's Spectrum plugin looks
PARTIAL_SUFFIX = ".partial.jsonl"
LOCK_SUFFIX = ".lock"


@dataclass(frozen=True)
class CacheEntry:
    """One model's cache entry, given by the path of its scores file."""

    scores: str

    @classmethod
    def of(cls, cache_dir: str, slug_source: str) -> "CacheEntry":
        """The entry of a model id or path (or the `--name` standing for it), by Axolotl's slug rule."""
        return cls(os.path.join(cache_dir, f"snr_results_{slug(slug_source)}.json"))

    @property
    def stem(self) -> str:
        """The scores file's path without `.json`."""
        return self.scores[: -len(".json")] if self.scores.endswith(".json") else self.scores

    @property
    def meta(self) -> str:
        return self.stem + ".meta.json"

    @property
    def tensors(self) -> str:
        return self.stem + ".tensors.json"

    @property
    def partial(self) -> str:
        return self.stem + PARTIAL_SUFFIX

    @property
    def lock(self) -> str:
        return self.stem + LOCK_SUFFIX

    def selection_file(self, percent_text: str, *, kind: str = "unfrozenparameters", suffix: str = ".yaml") -> str:
        """`snr_results_<slug>_<kind>_<K>percent<suffix>` in the current folder: the selection's file without
        --output (`unfrozenparameters` or `lora`; `.regex` for `--format regex`)."""
        return f"{os.path.basename(self.stem)}_{kind}_{percent_text}percent{suffix}"

    def report_files(self, percent_text: str) -> tuple[str, str]:
        """`snr_results_<slug>_<K>percent.png` and `.html` in the current folder."""
        stem = f"{os.path.basename(self.stem)}_{percent_text}percent"
        return stem + ".png", stem + ".html"
