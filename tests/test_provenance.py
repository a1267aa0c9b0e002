"""The sidecar's typed record (`spectrum.provenance.Provenance`): every sidecar reads and writes back byte
for byte (the shipped ones, one a real scan writes, hand-edited ones), and what a hand edit breaks reads
as absent, as the plain dict was read before."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from spectrum.cache.lookup import load_scores
from spectrum.cache.scores_file import meta_path, read_scores, sidecar_text, write_scores
from spectrum.cache.staleness import merge, missing_types, stale_reason
from spectrum.provenance import FORMAT, LeftOut, Provenance, TypeRecord
from spectrum.scores import ModuleScore, Scores
from spectrum.scoring.checkpoint import scan
from spectrum.workflow import default_types_of, load_or_scan

SHIPPED = sorted((REPO_ROOT / "model_snr_results").glob("*.meta.json"))
ENTRIES = {"model.layers.0.mlp.up_proj": ModuleScore(0.5, "mlp.up_proj"), "lm_head": ModuleScore(0.25, "lm_head")}


def round_trip(text: str) -> str:
    """A sidecar's text read into the record and written out again."""
    return sidecar_text(Provenance.from_json_dict(json.loads(text)))


def write_entry(folder: Path, sidecar: dict) -> str:
    """A scores file of ENTRIES with `sidecar` beside it, as a hand might leave them; the scores file's path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "snr_results_m.json"
    path.write_text(json.dumps({m: {"snr": s.snr, "type": s.type} for m, s in ENTRIES.items()}, indent=4) + "\n")
    (folder / "snr_results_m.meta.json").write_text(json.dumps(sidecar, indent=2, sort_keys=True) + "\n")
    return str(path)


@pytest.mark.parametrize("sidecar", SHIPPED, ids=lambda path: path.name)
def test_shipped_sidecars_round_trip_byte_for_byte(sidecar, tmp_path):
    text = sidecar.read_text(encoding="utf-8")
    assert round_trip(text) == text
    record = Provenance.from_json_dict(json.loads(text))
    assert record.verbatim == {} and record.format == FORMAT  # every key typed, nothing kept aside
    assert record.tool == "spectrum" and record.source.shards and record.checkpoint_types and record.note
    # Through the cache: read with its scores, written again (write_scores adds the digest of the scores text).
    scores_file = sidecar.with_name(sidecar.name.replace(".meta.json", ".json"))
    copy = tmp_path / scores_file.name
    shutil.copy(scores_file, copy)
    shutil.copy(sidecar, meta_path(str(copy)))
    write_scores(str(copy), read_scores(str(copy), "m"))
    digest = hashlib.sha256(scores_file.read_bytes()).hexdigest()
    assert Path(meta_path(str(copy))).read_text() == json.dumps({**json.loads(text), "scores_sha256": digest},
                                                                 indent=2, sort_keys=True) + "\n"


def test_a_scan_records_the_sidecar_layout_of_every_earlier_version(tiny_llama_dir):
    meta = scan(str(tiny_llama_dir), device="cpu", threads=1).meta
    assert list(meta) == ["tool", "version", "source", "dtypes", "method", "threshold", "device", "workers",
                          "seconds", "bytes_read", "checkpoint_types", "embeddings", "world_size", "model"]
    assert list(meta["source"]) == ["kind", "location", "revision", "shards"] and meta["source"]["revision"] is None
    assert all(list(shard) == ["name", "size", "mtime_ns", "sample_sha256"] for shard in meta["source"]["shards"])
    assert list(meta["checkpoint_types"]["mlp.up_proj"]) == ["count", "shapes", "layered"]
    assert meta["checkpoint_types"]["mlp.up_proj"] == {"count": 3, "shapes": [[80, 48]], "layered": True}
    assert meta["embeddings"] == {"input": "model.embed_tokens.weight", "output": "lm_head.weight"}
    assert isinstance(meta["seconds"], float) and isinstance(meta["bytes_read"], int) and meta["dtypes"] == ["BF16"]


def test_a_scanned_sidecar_reads_and_writes_back_byte_for_byte(tiny_llama_dir, tmp_path):
    outcome = load_or_scan(str(tiny_llama_dir), cache_dir=str(tmp_path / "c"), device="cpu", threads=1, name="org/tiny")
    sidecar = Path(meta_path(outcome.cache_file))
    text = sidecar.read_text()
    assert round_trip(text) == text
    assert json.loads(text) == {**outcome.scores.meta, "scores_sha256": json.loads(text)["scores_sha256"]}
    again = read_scores(outcome.cache_file, "org/tiny")
    assert again.provenance.name == again.provenance.model == "org/tiny" and again.provenance.verbatim == {}
    write_scores(outcome.cache_file, again)
    assert sidecar.read_text() == text
    cached = load_or_scan(str(tiny_llama_dir), cache_dir=str(tmp_path / "c"), device="cpu", threads=1, name="org/tiny")
    assert not cached.scanned and cached.scores == again


HAND_EDITED = [
    {},
    {"note": "scanned from a local copy"},
    {"name": 5, "model": "org/m"},
    {"threshold": 5},
    {"threshold": None},
    {"checkpoint_types": [1]},
    {"checkpoint_types": {"mlp.up_proj": 5, "lm_head": {"layered": 1, "extra": [1]}}},
    {"checkpoint_types": {"mlp.up_proj": {"layered": True, "count": "3", "shapes": [[1, "2"]]}}},
    {"embeddings": "none"},
    {"embeddings": {"input": 3, "output": "lm_head.weight"}},
    {"embeddings": {}},
    {"fused_tensors": ["x", 3]},
    {"fused_tensors": "x"},
    {"left_out": {"a": {"type": "mlp.up_proj"}, "b": 3, "c": {"type": 4},
                  "d": {"type": "t", "reason": "score_overflow", "by": "hand"}}},
    {"seconds": True, "bytes_read": 1.5},
    {"source": "x"},
    {"source": {}},
    {"source": {"kind": "hub", "location": 5, "revision": 7, "requested_revision": 9}},
    {"source": {"kind": "local", "shards": [{"name": [1], "size": 1}, "x", None,
                                            {"name": "m.safetensors", "size": True, "mtime_ns": 1.0}]}},
    {"source": {"kind": "gguf", "location": "/x.gguf", "revision": None, "shards": [], "stored_types": {}}},
    {"workers": "8", "dtypes": ["BF16", 3], "world_size": 2.0, "version": 1, "tool": None},
    {"format": 2, "written_by": {"a future": [1, 2.0, None]}},
    {"format": 1},
    {"format": "1"},
    {"sidecar_mismatch": False},
    {"scores_sha256": 5},
    {"plugin_names": 3},
]


@pytest.mark.parametrize("sidecar", HAND_EDITED, ids=lambda sidecar: json.dumps(sidecar)[:60])
def test_hand_edited_sidecars_are_written_back_unchanged(sidecar, tmp_path):
    text = json.dumps(sidecar, indent=2, sort_keys=True) + "\n"
    record = Provenance.from_json_dict(sidecar)
    assert record.to_json_dict() == sidecar and list(record.to_json_dict()) == list(sidecar)
    assert round_trip(text) == text
    # The cache writes them back with its own digests, everything else as it was.
    path = write_entry(tmp_path, sidecar)
    scores = read_scores(path, "m")
    write_scores(path, scores, plugin={"x": ModuleScore(0.1, "t")})
    written = json.loads(Path(meta_path(path)).read_text())
    assert {key: value for key, value in written.items() if key not in ("scores_sha256", "plugin_names",
                                                                           "plugin_sha256")} == {
        key: value for key, value in sidecar.items() if key not in ("scores_sha256", "plugin_names", "sidecar_mismatch")}


def test_what_a_hand_edit_breaks_reads_as_absent(tmp_path):
    def scores_of(sidecar: dict) -> Scores:
        return Scores("org/m", dict(ENTRIES), sidecar)

    unknown_types = scores_of({"checkpoint_types": [1]})
    assert unknown_types.provenance.checkpoint_types is None and default_types_of(unknown_types) is None
    assert missing_types(unknown_types, lambda t: t == "router") is None  # cannot be known
    odd_entries = scores_of({"checkpoint_types": {"mlp.up_proj": 5, "lm_head": {"layered": 1}}})
    assert odd_entries.provenance.checkpoint_types == {"mlp.up_proj": TypeRecord(None, None, False),
                                                       "lm_head": TypeRecord(None, None, True)}
    assert default_types_of(odd_entries) == {"lm_head"} and missing_types(odd_entries, None) == set()
    assert scores_of({"embeddings": "none"}).embedding_patterns() == ["^lm_head.weight$", "^model.embed_tokens.weight$"]
    assert scores_of({"embeddings": {"input": 3, "output": "head.weight"}}).embedding_patterns() == ["^head.weight$"]
    assert scores_of({"embeddings": {}}).embedding_patterns() == []
    assert scores_of({"fused_tensors": ["x", 3]}).provenance.fused_tensors == ("x",)
    assert scores_of({"fused_tensors": "x"}).provenance.fused_tensors is None
    left_out = scores_of({"left_out": {"a": {"type": "t"}, "b": 3, "c": {"type": 4}}}).provenance.left_out
    assert left_out == {"a": LeftOut("t", None, {"type": "t"})}
    assert not scores_of({"threshold": 5}).provenance.made_with("marchenko-pastur")
    assert not scores_of({"threshold": None}).provenance.made_with("marchenko-pastur")
    assert scores_of({}).provenance.made_with("marchenko-pastur") and scores_of({}).provenance.threshold_used == "marchenko-pastur"
    assert stale_reason(scores_of({"source": "x"}).provenance, "org/m") is None
    shards = scores_of({"source": {"kind": "local", "shards": [{"name": [1]}, "x", {"name": "a", "size": 2}]}})
    assert [shard.name for shard in shards.provenance.source.shards] == [None, None, "a"]
    # load_scores names the scores after the sidecar's `name`, else its `model`; a name that is not text: the path.
    assert load_scores(write_entry(tmp_path / "named", {"name": "org/x", "model": "/p"})).model == "org/x"
    assert load_scores(write_entry(tmp_path / "blank", {"name": "", "model": "org/y"})).model == "org/y"
    odd = write_entry(tmp_path / "odd", {"name": 5, "model": "org/m"})
    assert load_scores(odd).model == odd


def test_merge_carries_hand_edited_left_out_entries_as_they_were():
    entry = {"type": "lm_head", "reason": "score_overflow", "by": "hand"}
    cached = Scores("m", {"a.0.b": ModuleScore(0.1, "b")}, {"left_out": {"x": entry}, "seconds": 1, "bytes_read": 2})
    fresh = Scores("m", {"lm_head": ModuleScore(0.2, "lm_head")}, {"seconds": 0.5, "bytes_read": 3, "new": True})
    merged = merge(cached, fresh).meta
    assert merged == {"seconds": 1.5, "bytes_read": 5, "new": True, "left_out": {"x": entry}}


def test_the_format_field_is_not_written_for_this_layout():
    record = Provenance(tool="spectrum")
    assert record.format == FORMAT == 1 and record.to_json_dict() == {"tool": "spectrum"}
    future = Provenance.from_json_dict({"format": 2, "tool": "spectrum"})
    assert future.format == 2 and future.to_json_dict() == {"format": 2, "tool": "spectrum"}


def test_scores_meta_is_the_sidecar_object_of_the_record():
    meta = {"threshold": "gavish-donoho", "note": "n", "custom": [1]}
    scores = Scores("m", dict(ENTRIES), meta)
    assert scores.meta == meta and scores.provenance.threshold == "gavish-donoho"
    assert scores.meta is not scores.meta  # a copy: changing it changes nothing
    scores.meta["note"] = "changed"
    assert scores.provenance.note == "n"
    scores.meta = {**scores.meta, "note": "set"}  # assigning it does
    assert scores.provenance.note == "set" and scores.meta["custom"] == [1]
    assert Scores("m", dict(ENTRIES), provenance=scores.provenance) == scores
    assert Scores("m", {}).meta == {} and Scores("m", {}).provenance.is_empty()
    with pytest.raises(TypeError):
        Scores("m", {}, {}, provenance=Provenance())
    assert repr(Scores("m", {}, {"note": "n"})) == "Scores(model='m', entries={}, meta={'note': 'n'})"
