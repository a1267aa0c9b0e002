"""Where scores came from: the record a scan makes and the sidecar `snr_results_<slug>.meta.json` holds.

`Provenance` is the one place that knows the sidecar's keys. A scan builds it; the cache writes it
(`to_json_dict`) and reads it back (`from_json_dict`); every other module reads its typed fields.

It lives beside `scores.py`, not in `cache/`, because the scan (`scoring/`) builds it and `scoring/`
may not import `cache/`; `Scores` holds it, and `scores.py` is below both.

Reading is as lenient as the code that read the plain dict before it: a value of the wrong type
reads as absent (a `checkpoint_types` that is not an object: the types are unknown), an entry that
cannot be read inside a collection is skipped (a shard without a name is not compared). Nothing of
a sidecar is lost: keys this version does not know, and any value its typed fields would not write
back identically (a hand edit, an older layout), are kept in `verbatim` and written back unchanged,
so that a sidecar read and written again is the same bytes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

LIVE_KIND = "live"  # the source kind of a live scan (spectrum.sources.module.LIVE_KIND)
DEFAULT_THRESHOLD = "marchenko-pastur"  # the reference's signal/noise split; what a sidecar without "threshold" means
FORMAT = 1  # the sidecar layout this module reads and writes; see `Provenance.format`


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _number(value: object) -> int | float | None:
    """An int or a float as written (a bool is neither): `merge` adds these up only when both are numbers."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _texts(value: object) -> tuple[str, ...] | None:
    """The text items of a list (others are skipped, as the readers of the plain list skipped them)."""
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list) else None


def _ints(value: object) -> tuple[int, ...] | None:
    return tuple(item for item in value if _int(item) is not None) if isinstance(value, list) else None


def _to_json(value: Any) -> Any:
    """A typed value as the JSON the sidecar holds (records by their own `to_json`, tuples as lists)."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if isinstance(value, tuple):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    return value


def _identical(a: object, b: object) -> bool:
    """Whether two JSON values would be written as the same text: same types all the way down (1 and 1.0,
    or 1 and true, are not the same sidecar), dicts with the same keys (the sidecar sorts them)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_identical(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_identical(x, y) for x, y in zip(a, b))
    return a == b


@dataclass(frozen=True)
class ShardRecord:
    """One weight file as the scan saw it: what tells a later run that the weights changed
    (`cache.staleness`). `size` is None for a Hub shard not downloaded; `mtime_ns` and `sample_sha256`
    are there for a local file only (the digest of sampled bytes tells a rewrite of the same size)."""

    name: str | None
    size: int | None = None
    mtime_ns: int | None = None
    sample_sha256: str | None = None

    @classmethod
    def from_json(cls, value: object) -> "ShardRecord":
        """Any list item: one that is not an object reads as a shard without a name (never compared)."""
        if not isinstance(value, dict):
            return cls(None)
        size = value.get("size")
        return cls(_text(value.get("name")), size if isinstance(size, int) else None,  # int as compared before
                   _int(value.get("mtime_ns")), _text(value.get("sample_sha256")))

    def to_json(self) -> dict:
        record: dict = {"name": self.name, "size": self.size}
        if self.mtime_ns is not None:
            record["mtime_ns"] = self.mtime_ns
        if self.sample_sha256 is not None:
            record["sample_sha256"] = self.sample_sha256
        return record


@dataclass(frozen=True)
class SourceRecord:
    """What the weights were: `kind` (`local`, `hub`, `gguf`), `location` (a path or a Hub id), the Hub
    commit (`revision`), each weight file, and for a Hub scan the `--revision` asked for, which a later
    run's `--revision` is compared with when the Hugging Face cache cannot resolve it."""

    kind: str | None = None
    location: str | None = None
    revision: str | None = None
    shards: tuple[ShardRecord, ...] | None = None
    stored_types: dict[str, int] | None = None  # a GGUF's tensors per stored type, e.g. {"Q4_1": 210}
    requested_revision: str | None = None

    @classmethod
    def from_json(cls, value: object) -> "SourceRecord | None":
        if not isinstance(value, dict):
            return None
        shards = value.get("shards")
        stored = value.get("stored_types")
        return cls(
            _text(value.get("kind")), _text(value.get("location")), _text(value.get("revision")),
            tuple(ShardRecord.from_json(item) for item in shards) if isinstance(shards, list) else None,
            ({key: count for key, count in stored.items() if _int(count) is not None}
             if isinstance(stored, dict) else None),
            _text(value.get("requested_revision")),
        )

    def to_json(self) -> dict:
        record: dict = {"kind": self.kind, "location": self.location, "revision": self.revision,
                        "shards": _to_json(self.shards)}
        if self.stored_types:
            record["stored_types"] = dict(self.stored_types)
        if self.requested_revision is not None:
            record["requested_revision"] = self.requested_revision
        return record


@dataclass(frozen=True)
class TypeRecord:
    """A matrix type of the checkpoint (`checkpoint_types`): how many matrices, their shapes, and whether
    it lives in numbered layers, which is what a run without `--types` selects from."""

    count: int | None
    shapes: tuple[tuple[int, ...], ...] | None
    layered: bool

    @classmethod
    def from_json(cls, value: object) -> "TypeRecord":
        """Any value: one that is not an object still names a type of the checkpoint, not a layered one."""
        if not isinstance(value, dict):
            return cls(None, None, False)
        shapes = value.get("shapes")
        readable = isinstance(shapes, list) and all(isinstance(shape, list) for shape in shapes)
        return cls(_int(value.get("count")), tuple(_ints(shape) for shape in shapes) if readable else None,
                   bool(value.get("layered")))  # any true value, as `entry.get("layered")` was read

    def to_json(self) -> dict:
        return {"count": self.count, "shapes": _to_json(self.shapes), "layered": self.layered}


@dataclass(frozen=True)
class Embeddings:
    """The checkpoint's input embedding and output head tensors (None: it has none, e.g. a tied head):
    the YAML unfreezes them under these names when no view of the trainer's model is at hand."""

    input: str | None = None
    output: str | None = None

    @classmethod
    def from_json(cls, value: object) -> "Embeddings | None":
        if not isinstance(value, dict):
            return None
        return cls(_text(value.get("input")), _text(value.get("output")))

    def tensor_names(self) -> list[str]:
        return [name for name in (self.input, self.output) if name is not None]

    def to_json(self) -> dict:
        return {"input": self.input, "output": self.output}


@dataclass(frozen=True)
class LeftOut:
    """A matrix the scan could not score (NaN or infinite entries, values beyond float64), and why. Its
    type stays covered by the cache: scanning it again would only say the same."""

    type: str
    reason: str | None  # `nan_or_inf_entries`, `singular_values_overflow` or `score_overflow`
    verbatim: dict | None = None  # the entry as a hand-edited sidecar had it, carried over and written back as it was

    @classmethod
    def from_json(cls, value: object) -> "LeftOut | None":
        """None for an entry without a text `type` (skipped, as before)."""
        if not isinstance(value, dict) or not isinstance(value.get("type"), str):
            return None
        entry = cls(value["type"], _text(value.get("reason")))
        return entry if _identical(entry.to_json(), value) else replace(entry, verbatim=copy.deepcopy(value))

    def to_json(self) -> dict:
        return copy.deepcopy(self.verbatim) if self.verbatim is not None else {"type": self.type, "reason": self.reason}


def _left_out(value: object) -> dict[str, LeftOut] | None:
    if not isinstance(value, dict):
        return None
    return {module: entry for module, item in value.items() if (entry := LeftOut.from_json(item)) is not None}


def _checkpoint_types(value: object) -> dict[str, TypeRecord] | None:
    return {name: TypeRecord.from_json(entry) for name, entry in value.items()} if isinstance(value, dict) else None


def _sidecar_mismatch(value: object) -> bool:
    return bool(value)  # any true value, as it was tested before


def _format(value: object) -> int:
    return _int(value) or FORMAT


def _read(reader: Callable[[object], Any], default: Any = None) -> Any:
    """A field of the sidecar: `reader` turns its JSON value into the typed one (None: unreadable)."""
    return field(default=default, metadata={"read": reader})


@dataclass(frozen=True)
class Provenance:
    """What scores were computed from and how: the sidecar beside a scores file, typed.

    Fields are in the order a scan records them; each is None when the sidecar does not have it (a
    file made elsewhere has none). The field names are the sidecar's keys.
    """

    # The sidecar layout. 1 is every sidecar written so far, which carry no "format" key (so that their
    # bytes stay as they are); a later layout writes its number, and a reader can tell it from this one.
    format: int = _read(_format, FORMAT)
    tool: str | None = _read(_text)  # "spectrum"
    version: str | None = _read(_text)  # of spectrum, that scanned
    source: SourceRecord | None = _read(SourceRecord.from_json)
    dtypes: tuple[str, ...] | None = _read(_texts)  # stored dtypes of the scored matrices
    method: str | None = _read(_text)  # how singular values were computed
    threshold: str | None = _read(_text)  # the signal/noise split of the scores (None: the default)
    device: str | None = _read(_text)
    workers: int | None = _read(_int)
    seconds: int | float | None = _read(_number)  # the scan's, summed over the scans that added types
    bytes_read: int | float | None = _read(_number)  # likewise
    resumed: int | None = _read(_int)  # scores taken over from an interrupted scan
    checkpoint_types: dict[str, TypeRecord] | None = _read(_checkpoint_types)  # every scorable type, scanned or not
    embeddings: Embeddings | None = _read(Embeddings.from_json)
    left_out: dict[str, LeftOut] | None = _read(_left_out)  # module -> why it has no score
    fused_tensors: tuple[str, ...] | None = _read(_texts)  # stored 3-D expert tensors, scored expert by expert
    devices: tuple[str, ...] | None = _read(_texts)  # under torchrun: each rank's device
    matrices_per_rank: tuple[int, ...] | None = _read(_ints)  # under torchrun
    world_size: int | None = _read(_int)  # processes that took part
    model: str | None = _read(_text)  # the model argument, or the --name that stands for it
    name: str | None = _read(_text)  # --name
    note: str | None = _read(_text)  # added by hand to a shipped scan (README: contributing scans)
    scores_sha256: str | None = _read(_text)  # of the scores text it describes: a mixed set is never trusted
    plugin_names: str | None = _read(_text)  # "trainer": the scores file is in the trainer's names
    plugin_sha256: str | None = _read(_text)  # of that scores file, then
    # Not in a sidecar on disk: read_scores sets it for scores whose sidecar describes another text.
    sidecar_mismatch: bool = _read(_sidecar_mismatch, False)
    # Sidecar keys written back exactly as read: those this version does not know, and those its typed
    # fields would not write back identically (wrong types, hand edits, older layouts).
    verbatim: dict[str, Any] = field(default_factory=dict)
    # The keys in the order they were read, which `to_json_dict` keeps (a dict's order is what its readers
    # iterate); keys set since come after them. Empty for a record a scan made: the fields' order.
    read_order: tuple[str, ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def from_json_dict(cls, data: Mapping[str, Any]) -> "Provenance":
        """The record of a sidecar's JSON object (or any dict a caller gave as `Scores.meta`)."""
        known = {spec.name: spec for spec in fields(cls) if "read" in spec.metadata}
        values: dict[str, Any] = {}
        verbatim: dict[str, Any] = {}
        for key, value in data.items():
            spec = known.get(key)
            if spec is None:
                verbatim[key] = copy.deepcopy(value)
                continue
            typed = spec.metadata["read"](value)
            if typed is not None:
                values[key] = typed
            if typed is None or typed == spec.default or not _identical(_to_json(typed), value):
                verbatim[key] = copy.deepcopy(value)
        return cls(**values, verbatim=verbatim, read_order=tuple(data))

    def to_json_dict(self) -> dict[str, Any]:
        """The sidecar's JSON object: the fields a scan records in its order (the absent ones left out),
        each kept `verbatim` value at its key, then unknown keys; a record read from JSON keeps its order."""
        data: dict[str, Any] = {}
        for spec in fields(self):
            if spec.name in ("verbatim", "read_order"):
                continue
            if spec.name in self.verbatim:
                data[spec.name] = copy.deepcopy(self.verbatim[spec.name])
                continue
            value = getattr(self, spec.name)
            if value != spec.default:
                data[spec.name] = _to_json(value)
        for key, value in self.verbatim.items():
            data.setdefault(key, copy.deepcopy(value))
        if not self.read_order:
            return data
        ordered = {key: data[key] for key in self.read_order if key in data}
        ordered.update(data)
        return ordered

    def updated(self, **changes: Any) -> "Provenance":
        """A copy with these fields changed; what was kept verbatim for them is dropped (the new values are written)."""
        kept = {key: value for key, value in self.verbatim.items() if key not in changes}
        return replace(self, **changes, verbatim=kept)

    def is_empty(self) -> bool:
        """True for scores without a sidecar (made elsewhere): nothing is known of how."""
        return not self.to_json_dict()

    def made_with(self, threshold: str) -> bool:
        """Whether the scores were computed with `threshold` (none recorded: the default). A recorded value
        that is not text names no threshold: the scores answer no request and are made again."""
        if "threshold" in self.verbatim:
            return False
        return (DEFAULT_THRESHOLD if self.threshold is None else self.threshold) == threshold

    @property
    def default_types(self) -> set[str] | None:
        """The types a scan without `--types` scores: those inside numbered layers (`TypeRecord.layered`, as
        the inventory marks them); None when the sidecar does not list the checkpoint's types."""
        if self.checkpoint_types is None:
            return None
        return {name for name, record in self.checkpoint_types.items() if record.layered}

    @property
    def is_live(self) -> bool:
        """Whether the scores come from a scan of a model in memory (`spectrum.scan_model`): they are
        named after its own parameters, not a checkpoint's tensors."""
        return self.source is not None and self.source.kind == LIVE_KIND

    @property
    def threshold_used(self) -> str:
        """The threshold the scores were computed with: the recorded one, else the default."""
        return DEFAULT_THRESHOLD if self.threshold is None else self.threshold

    @property
    def scanned_as(self) -> str | None:
        """The name the scores were scanned under (`name`, else `model`); None when the sidecar does not say,
        or says it in something other than text (a hand edit), as `load_scores` has always read it."""
        name = self.verbatim.get("name", self.name)
        recorded = name or self.verbatim.get("model", self.model)
        return recorded if isinstance(recorded, str) else None
