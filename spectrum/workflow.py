"""One run of spectrum for one model: scores (cached, or scanned and cached), the selection checked
against the model the trainer builds, and the files written. The command line and the Python API
both come through here; printing is the caller's (`cli`).

    ScanOptions ──> load_or_scan ──> cache (staleness, lock, journal) or scoring (scan) ──> Scores
                    run ───────────> selection (view of the trainer's model, YAML / LoRA / regex)
                                     ──> the selection file, the plugin's file, the summaries
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Callable

from .cache.entry import DEFAULT_CACHE_DIR, CacheEntry
from .cache.journal import ScanInterrupted, PartialScan
from .cache.lock import EntryLock
from .cache.scores_file import remove_stale_temporaries, write_output_text, write_scores
from .cache.entry import PARTIAL_SUFFIX
from .cache.staleness import (
    Plan,
    check_entry_names,
    identity,
    keep_or_discard,
    merge,
    plan,
    refresh_plugin_file,
    report_wait,
)
from .errors import NoMatrixError, SpectrumError, UsageError, WeightsChangedError
from .naming import TypeFilter, compile_type_patterns, type_matches
from .report.summary import TypeSummary, summarize, summary_record
from .scores import DEFAULT_THRESHOLD, Scores
from .scoring.distributed import World
from .selection.topk import format_percent, parse_top_percent
from .sources.resolve import find_config, gguf_file, require_model

LOG = logging.getLogger("spectrum")

ProgressCallback = Callable[[int, int, int], None]  # (matrices done, matrices total, bytes read)


@dataclass(frozen=True)
class ScanOptions:
    """What one run does: the command line's flags, and the Python API's arguments, in one record.

    Args:
        model: a local folder or weights file, or a Hub id `org/name`.
        revision: Hub branch, tag or commit (Hub ids only).
        types: regular expressions (`re.search`) of the module types to scan and select; empty: the
            types inside numbered layers.
        type_filter: instead of `types`, a predicate on type names (the interactive checklist's choice).
        top_percent: K in (0, 100]: the top K% of each type is selected.
        check: build the model from its config and check every entry against it (None: when possible).
        lora / regex: write LoRA targets, or one regular expression, instead of the YAML.
        output: the selection's path; "-" writes no file (the caller prints `RunResult.text`);
            None: `snr_results_<slug>_unfrozenparameters_<K>percent.yaml` in the current folder.
        lr_groups: experimental: also write Axolotl's `lr_groups:` for the selection, base learning rate
            `lr_groups`, the best module of each type at `lr_groups * lr_boost`
            (`snr_results_<slug>_lrgroups_<K>percent.yaml`; see `spectrum.selection.lr_groups`).
    """

    model: str
    # What to scan
    revision: str | None = None
    types: tuple[str, ...] = ()
    type_filter: TypeFilter | None = None
    # How to compute
    method: str = "auto"
    device: str = "auto"
    threads: int | None = None
    keep_shards: bool = True
    threshold: str = DEFAULT_THRESHOLD
    # The cache
    cache_dir: str = DEFAULT_CACHE_DIR
    name: str | None = None
    rescan: bool = False
    # What to select and write
    top_percent: Fraction = Fraction(50)
    group_experts: bool = False
    embeddings: bool = True
    check: bool | None = None
    lora: bool = False
    regex: bool = False
    output: str | None = None
    lr_groups: float | None = None
    lr_boost: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.top_percent, Fraction):
            object.__setattr__(self, "top_percent", parse_top_percent(self.top_percent))
        if isinstance(self.types, str):
            object.__setattr__(self, "types", (self.types,))

    @property
    def entry(self) -> CacheEntry:
        """The model's cache entry (named after `name`, else `model`)."""
        return CacheEntry.of(self.cache_dir, self.name or self.model)

    @property
    def wanted(self) -> TypeFilter | None:
        """The types to scan as a predicate; None: the default ones."""
        if self.type_filter is not None:
            return self.type_filter
        patterns = type_patterns(self.types)
        return (lambda type_name: type_matches(type_name, patterns)) if patterns else None

    @property
    def percent_text(self) -> str:
        return format_percent(self.top_percent)

    def selection_file(self) -> str | None:
        """Where the selection is written (None: to the caller, for stdout)."""
        if self.output == "-":
            return None
        kind = "lora" if self.lora else "unfrozenparameters"
        return self.output or self.entry.selection_file(self.percent_text, kind=kind,
                                                        suffix=".regex" if self.regex else ".yaml")

    def lr_groups_file(self) -> str:
        """Where `lr_groups:` are written: beside the selection's default file, whatever `output` says."""
        return self.entry.selection_file(self.percent_text, kind="lrgroups")


def type_patterns(values: tuple[str, ...] | list[str] | None) -> list[re.Pattern[str]] | None:
    """The compiled `--types` expressions (None when not given); a bad one is a usage error."""
    if not values:
        return None
    try:
        return compile_type_patterns(list(values))
    except re.error as err:
        raise UsageError(f"--types: {err.pattern!r} is not a valid regular expression ({err})") from err


@dataclass
class Outcome:
    """What `load_or_scan` did: the scores, where they are cached, and whether weights were read."""

    scores: Scores
    cache_file: str
    scanned: bool


def load_or_scan(
    options: ScanOptions | str,
    *,
    on_progress: ProgressCallback | None = None,
    on_scan_start: Callable[[], None] | None = None,
    **fields,
) -> Outcome:
    """Cached scores when they cover the request and are still valid; otherwise scan (only the
    missing types, when the cache has some) and write the cache. Under torchrun only rank 0 writes.

    `options` is a `ScanOptions`, or a model with the options as keywords (`load_or_scan("org/name",
    cache_dir=..., device="cpu")`; `type_filter=` a predicate on type names). `on_scan_start` is called
    once, when a scan has checked the headers and is about to read weights (never when the cache
    answers; under torchrun on rank 0 only).

    Scores made with another `threshold` (the sidecar's; none recorded means the default) cover
    nothing: the model is scanned again and the file replaced.

    A scan resumes an interrupted scan of the same weights from its `.partial.jsonl`, and holds
    the entry's lock: a concurrent call for the same entry waits, then reuses this one's result.

    Raises:
        ScanInterrupted: (a KeyboardInterrupt) on Ctrl-C during a scan; says what is saved.
    """
    options = ScanOptions(options, **fields) if isinstance(options, str) else replace(options, **fields)
    entry = _EntryScan(options, World.from_env(), on_progress, on_scan_start)
    chosen = Plan(wanted=options.wanted)
    if not options.rescan:
        chosen = entry.consult()
        if chosen.reuse is not None:  # no lock needed to read: files are only ever replaced whole
            return Outcome(chosen.reuse, entry.cache_file, scanned=False)
    require_model(options.model)  # before a lock file is made for it
    check_entry_names(entry.cache_file, named=options.name is not None)
    if entry.world.size > 1:  # the ranks scan together; rank 0 writes (no journal, no lock)
        return entry.settle(chosen, None)
    return entry.under_lock()


@dataclass
class _EntryScan:
    """One `load_or_scan` of a cache entry: what it asks, and the steps it takes."""

    options: ScanOptions
    world: World
    on_progress: ProgressCallback | None
    on_scan_start: Callable[[], None] | None
    total: list[int] = field(default_factory=list)  # matrices the scan has to score, once it knows

    @property
    def cache_file(self) -> str:
        return self.options.entry.scores

    def consult(self) -> Plan:
        """What the cache offers for this request (under --name, cached scores are named by it)."""
        options = self.options
        found = plan(self.cache_file, options.model, revision=options.revision, type_filter=options.wanted,
                     threshold=options.threshold)
        for cached in (found.reuse, found.keep):
            if cached is not None and options.name:
                cached.model = options.name
        return found

    def under_lock(self) -> Outcome:
        """Consult the cache again under the entry's lock (another process may have written it meanwhile),
        then scan with a journal that an interrupted scan resumes from."""
        options, cache_file = self.options, self.cache_file
        before = identity(cache_file)
        with EntryLock(options.entry.lock, on_wait=lambda pid: report_wait(cache_file, pid)):
            chosen = Plan(wanted=options.wanted)
            if not options.rescan or identity(cache_file) != before:
                chosen = self.consult()
                if chosen.stale:
                    LOG.warning("%s: cached scores are out of date (%s); scanning again", cache_file, chosen.stale)
            if chosen.reuse is not None:
                return Outcome(chosen.reuse, cache_file, scanned=False)
            for leftover in remove_stale_temporaries(cache_file, (PARTIAL_SUFFIX,)):
                LOG.info("removed %s, left by a writer that was killed", leftover)
            journal = PartialScan(options.entry.partial, context={"threshold": options.threshold})
            try:
                outcome = self.settle(chosen, journal)
            except KeyboardInterrupt as err:
                keep_or_discard(journal)
                raise ScanInterrupted(journal.saved, self.total[0] if self.total else None, journal.path) from err
            except WeightsChangedError:
                journal.discard()  # its scores may be of the weights before the change, or of both
                raise
            except BaseException:
                keep_or_discard(journal)
                raise
            journal.discard()  # its scores are in the scores file now
            return outcome

    def settle(self, chosen: Plan, journal: PartialScan | None) -> Outcome:
        """The plan carried out: the cached scores, or a scan (of the missing types, merged with the kept ones)
        written to the cache by rank 0."""
        if chosen.reuse is not None:
            return Outcome(chosen.reuse, self.cache_file, scanned=False)
        try:
            scores = self.scan(chosen.wanted, journal)
        except NoMatrixError as err:
            if chosen.keep is None:
                raise
            raise SpectrumError(f"{self.cache_file}: its sidecar lists module types this checkpoint does not hold "
                                "(was it edited?); rerun with --rescan to scan the model afresh") from err
        if chosen.keep is not None:
            scores = merge(chosen.keep, scores)
        if self.world.is_main:
            write_scores(self.cache_file, scores)
        return Outcome(scores, self.cache_file, scanned=True)

    def scan(self, wanted: TypeFilter | None, journal: PartialScan | None) -> Scores:
        from .scoring.checkpoint import scan

        options = self.options
        scores = scan(options.model, revision=options.revision, type_filter=wanted, method=options.method,
                      device=options.device, threads=options.threads, keep_shards=options.keep_shards,
                      threshold=options.threshold, on_progress=self.progress, journal=journal)
        if options.name:  # the name stands for the model everywhere (YAML header, sidecar); source.location keeps the path
            scores.provenance = scores.provenance.updated(model=options.name, name=options.name)
            scores.model = options.name
        return scores

    def progress(self, done: int, count: int, nbytes: int) -> None:
        if not self.total and self.on_scan_start:  # the scan's first word: headers checked, weights next
            self.on_scan_start()
        self.total[:] = [count]
        if self.on_progress:
            self.on_progress(done, count, nbytes)


@dataclass
class RunResult:
    """What `run` did for one model.

    Args:
        scores: the scores the selection was made from (less the modules transformers drops on load).
        cache_file: the scores file.
        scanned: whether weights were read (else the cache answered).
        text: the selection as written (YAML, LoRA YAML or regex).
        selection_file: where it was written; None when `output` was "-".
        summaries: per-type figures of the selection, as the YAML ranks them.
        seconds: the run's wall time.
    """

    options: ScanOptions
    scores: Scores
    cache_file: str
    scanned: bool
    text: str
    selection_file: str | None
    summaries: list[TypeSummary] = field(default_factory=list)
    seconds: float = 0.0

    def record(self) -> dict:
        """The machine-readable summary (`--json`)."""
        return summary_record(
            self.options.name or self.options.model, self.summaries, top_percent=self.options.top_percent,
            scanned=self.scanned, seconds=self.seconds, scores_file=self.cache_file,
            yaml_file=self.selection_file or "<stdout>", threshold=self.scores.provenance.threshold_used,
        )


def run(options: ScanOptions, *, on_progress: ProgressCallback | None = None) -> RunResult | None:
    """Scores (cached or scanned), the selection checked against the trainer's model, the selection
    file (unless `output` is "-") and the plugin's file; None on a torchrun rank other than 0."""
    from .selection.model_view import checked_yaml, start_model_build, view_for_check

    started = time.perf_counter()
    builds: list = []  # the name check's model, built while the scan computes
    configs: list[str | None] = []  # looked up once, when first needed: a Hub run asks for config.json
    # only after the shards' headers were read, and a cached run not before the cache answered

    def config_of() -> str | None:
        if not configs:
            configs.append(model_config(options))
        return configs[0]

    def start_build() -> None:  # called on rank 0 only, which writes the YAML
        config = config_of()
        builds.append(start_model_build(config) if config else None)

    outcome = load_or_scan(options, on_progress=on_progress, on_scan_start=start_build)
    scores, cache_file = outcome.scores, outcome.cache_file
    if not World.from_env().is_main:  # under torchrun, rank 0 writes everything
        return None
    types = types_to_select(scores, options)  # a bad --types fails before config.json is looked for
    config = config_of()
    view = None
    try:
        view = view_for_check(scores, config=config, model=options.model, check=options.check,
                              build=builds[0] if builds else None)
        checked = checked_yaml(scores, options.top_percent, view=view, types=types, embeddings=options.embeddings,
                               group_experts=options.group_experts)
    finally:  # the plugin's file under the trainer's names, whatever K makes of the YAML
        if view is not None:
            refresh_plugin_file(cache_file, scores, view)
    if checked.dropped:
        scores = scores.without(checked.dropped)
    text = checked.text
    if options.lora or options.regex:
        from .selection.lora import selection_text

        text = selection_text(
            scores, options.top_percent, text, config=None if config and config.endswith(".gguf") else config,
            model=options.model, name=options.name or options.model,
            types=types, group_experts=options.group_experts, check=options.check, lora=options.lora,
            regex=options.regex,
        )
    lr_groups = None
    if options.lr_groups is not None:  # experimental: beside the selection, for the same modules
        from .selection.lr_groups import lr_groups_text

        lr_groups = lr_groups_text(scores, options.top_percent, options.lr_groups, boost=options.lr_boost, view=view,
                                   types=types, group_experts=options.group_experts)  # a refusal writes no file
    selection_file = options.selection_file()
    if selection_file is not None:
        write_output_text(selection_file, text)
    if lr_groups is not None:
        write_output_text(options.lr_groups_file(), lr_groups)
    summaries = summarize(scores, options.top_percent, types=types, group_experts=options.group_experts, as_yaml=True,
                          view=view)
    return RunResult(options, scores, cache_file, outcome.scanned, text, selection_file, summaries,
                     time.perf_counter() - started)


def model_config(options: ScanOptions) -> str | None:
    """The config the name check builds the model from (None: the check is off, or none is found):
    config.json beside the weights or in the HF cache; with `check=True`, a GGUF file's metadata."""
    if options.check is False:
        return None
    config = find_config(options.model, options.revision)
    if config is None and options.check:
        config = gguf_file(options.model)  # --check on a GGUF: its metadata gives the config (slower to read)
    return config


def types_to_select(scores: Scores, options: ScanOptions) -> set[str] | None:
    """The types the run selects from: those asked for (by `types` or `type_filter`), else the default ones.

    Raises:
        SpectrumError: `types` matches no scored type (the scan would have said it; the cache says it too).
    """
    if options.type_filter is not None:
        return {t for t in scores.types() if options.type_filter(t)}
    patterns = type_patterns(options.types)
    if not patterns:
        return default_types_of(scores)
    selected = {t for t in scores.types() if type_matches(t, patterns)}
    if not selected:  # as the scan says it, when the scores are cached
        if any(type_matches(entry.type, patterns) for entry in (scores.provenance.left_out or {}).values()):
            raise SpectrumError("every matrix of the requested types was left out when scanned (NaN or infinite "
                                "entries, or values beyond float64; the scan named each); choose other --types")
        raise SpectrumError("no weight matrix matches the requested types; run with --list-types to see the checkpoint's types")
    return selected


def default_types_of(scores: Scores) -> set[str] | None:
    """The types a run without --types selects: those inside numbered layers, as a scan without --types
    scores them, even when the cache also holds others an earlier `--types` run added. None (every
    cached type) for a file without a sidecar, which cannot tell."""
    layered = scores.provenance.default_types
    return None if layered is None else {type_name for type_name in scores.types() if type_name in layered}


def checkpoint_types(model: str, revision: str | None = None):
    """The checkpoint's matrix types (`Inventory`, from the headers only: no weight is read)."""
    from .scoring.inventory import take_inventory
    from .sources.resolve import open_source

    source = open_source(model, revision=revision)
    try:
        return take_inventory(source.tensors())
    finally:
        source.close()


def local_path_named(result: RunResult) -> bool:
    """Whether a fresh scan's cache file is named after a local path (no --name): the plugin, which
    looks for the Hub id, would not find it."""
    return result.scanned and not result.options.name and os.path.exists(os.path.expanduser(result.options.model))


def lora_targets(selection, top_percent=None, *, model=None, embeddings: bool = False,
                 group_experts: bool = False) -> dict:
    """LoRA / QLoRA targets for `peft.LoraConfig(**targets, r=...)`: adapters on the selected modules only
    (`spectrum.selection.lora.lora_targets_for` has the whole story). Without `model`, the model is built
    on the meta device from the checkpoint's config.json, when one is found, to name the targets as the
    trainer's model does."""
    from .scores import Scores
    from .selection.lora import lora_targets_for

    config = None
    if model is None and top_percent is not None:
        if isinstance(selection, Scores):
            config = find_config(selection.model)
        elif isinstance(selection, (str, os.PathLike)):
            config = find_config(os.fspath(selection))
    return lora_targets_for(selection, top_percent, model=model, config=config, embeddings=embeddings,
                            group_experts=group_experts)


def verify_config(path: str, *, model: str | None = None):
    """`spectrum verify`: an Axolotl config (or, with `model`, a YAML spectrum wrote) checked against the
    model its base_model names, built on the meta device (`spectrum.selection.verify.Verdict`)."""
    from .selection.verify import read_config, verify
    from .sources.resolve import config_path_of

    config = read_config(path)
    if model:
        config = dict(config, base_model=model)
        config.pop("base_model_config", None)
    base = config.get("base_model")
    if not isinstance(base, str) or not base:
        raise UsageError(f"{path}: no base_model: to check against (give --model MODEL for a bare YAML)")
    source = config.get("base_model_config") or base
    revision = config.get("revision_of_model")
    model_config = config_path_of(str(source), revision if isinstance(revision, str) else None)
    return verify(config, source=path, model_config=model_config)


def checked_yaml(scores: Scores, top_percent, *, model: str, revision: str | None = None, types: set[str] | None = None,
                 embeddings: bool = True, group_experts: bool = False, check: bool | None = None) -> str:
    """The `unfrozen_parameters:` YAML of `scores` under the names of the model `model`'s config builds,
    checked against it, as `run` writes it (no cache involved); see `ScanOptions.check`."""
    from .selection.model_view import checked_yaml as checked, view_for_check

    options = ScanOptions(model, revision=revision, check=check)
    view = view_for_check(scores, config=model_config(options), model=model, check=check)
    return checked(scores, top_percent, view=view, types=types, embeddings=embeddings, group_experts=group_experts).text
