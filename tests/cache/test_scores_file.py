"""The scores file Axolotl reads, both layouts on read, the sidecar, and atomic writes."""

import hashlib
import json
import os

import pytest

from spectrum.cache.scores_file import SIDECAR_MISMATCH, atomic_write_text, meta_path, parse_scores, read_scores, scores_path, write_scores
from spectrum.errors import CacheError
from spectrum.scores import ModuleScore, Scores


def test_paths_follow_axolotl():
    assert scores_path("model_snr_results", "meta-llama/Meta-Llama-3-8B") == os.path.join(
        "model_snr_results", "snr_results_meta-llama-Meta-Llama-3-8B.json"
    )
    assert meta_path("d/snr_results_x.json") == "d/snr_results_x.meta.json"


def test_exact_text_and_round_trip(tmp_path):
    scores = Scores(
        model="org/m",
        entries={"model.layers.0.mlp.up_proj": ModuleScore(0.25, "mlp.up_proj"), "lm_head": ModuleScore(1e-3, "lm_head")},
        meta={"version": "x", "seconds": 1.5},
    )
    path = tmp_path / "cache" / "snr_results_org-m.json"
    write_scores(str(path), scores)
    assert path.read_text() == (
        "{\n"
        '    "model.layers.0.mlp.up_proj": {\n'
        '        "snr": 0.25,\n'
        '        "type": "mlp.up_proj"\n'
        "    },\n"
        '    "lm_head": {\n'
        '        "snr": 0.001,\n'
        '        "type": "lm_head"\n'
        "    }\n"
        "}\n"
    )
    # Each value is exactly {"snr", "type"}; provenance lives only in the sidecar.
    assert all(set(value) == {"snr", "type"} for value in json.loads(path.read_text()).values())
    digest = hashlib.sha256(path.read_bytes()).hexdigest()  # the sidecar names the scores text it describes
    sidecar = {"version": "x", "seconds": 1.5, "scores_sha256": digest}
    assert json.loads((tmp_path / "cache" / "snr_results_org-m.meta.json").read_text()) == sidecar
    again = read_scores(str(path), "org/m")
    assert again.entries == scores.entries and list(again.entries) == list(scores.entries)
    assert again.meta == sidecar


def test_a_sidecar_of_other_scores_gives_no_provenance(tmp_path):
    """The scores file is replaced first and the sidecar second: when the second write fails, the old
    sidecar stays beside new scores, and must not vouch for them."""
    path = tmp_path / "snr_results_m.json"
    write_scores(str(path), Scores("m", {"a.0.b": ModuleScore(0.5, "b")}, meta={"threshold": "marchenko-pastur"}))
    atomic_write_text(str(path), '{"a.0.b": {"snr": 0.0, "type": "b"}}\n')  # new scores, the sidecar write then failed
    assert read_scores(str(path), "m").meta == {SIDECAR_MISMATCH: True}
    meta_path_text = (tmp_path / "snr_results_m.meta.json").read_text()
    (tmp_path / "snr_results_m.meta.json").write_text(meta_path_text.replace('"scores_sha256"', '"other"'))
    assert read_scores(str(path), "m").meta["threshold"] == "marchenko-pastur"  # an older sidecar, without a digest: trusted


def test_float_values_round_trip_exactly(tmp_path):
    value = 0.1 + 0.2
    path = tmp_path / "s.json"
    write_scores(str(path), Scores("m", {"a.0.b": ModuleScore(value, "b")}))
    assert read_scores(str(path), "m").entries["a.0.b"].snr == value


def test_sorted_layout_and_infinity():
    text = '{"input_layernorm": {"model.layers.0.input_layernorm": Infinity, "model.layers.1.input_layernorm": Infinity},' \
        ' "mlp.up_proj": {"model.layers.1.mlp.up_proj": 0.5, "model.layers.0.mlp.up_proj": 0.25}}'
    entries = parse_scores(text)
    assert list(entries) == [
        "model.layers.0.input_layernorm",
        "model.layers.1.input_layernorm",
        "model.layers.1.mlp.up_proj",
        "model.layers.0.mlp.up_proj",
    ]
    assert entries["model.layers.0.input_layernorm"] == ModuleScore(float("inf"), "input_layernorm")
    assert entries["model.layers.0.mlp.up_proj"] == ModuleScore(0.25, "mlp.up_proj")


def test_flat_layout_with_infinity():
    entries = parse_scores('{"model.norm": {"snr": Infinity, "type": "model.norm"}}')
    assert entries == {"model.norm": ModuleScore(float("inf"), "model.norm")}


@pytest.mark.parametrize("text", ["", "   \n", "{}", "not json", "[1, 2]", '{"a": {"snr": "x", "type": "t"}}', '{"a": 3}'])
def test_malformed_cache_is_a_clear_error(text):
    with pytest.raises(CacheError, match="--rescan"):
        parse_scores(text, "cache.json")


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot descend into


@pytest.mark.parametrize(("text", "fragment"), [
    (DEEP, "nested too deeply"),
    ('{"a.0.b": {"snr": 1' + "0" * 400 + ', "type": "b"}}', "entry a.0.b has a score beyond a float's range"),
    ('{"b": {"a.0.b": 1' + "0" * 400 + "}}", "is neither"),
])
def test_hostile_numbers_and_nesting_are_a_clear_error(text, fragment):
    with pytest.raises(CacheError, match="--rescan") as caught:
        parse_scores(text, "cache.json")
    assert fragment in str(caught.value)


def test_a_sidecar_nested_too_deeply_is_no_provenance(tmp_path):
    path = tmp_path / "snr_results_x.json"
    write_scores(str(path), Scores("x", {"a.0.b": ModuleScore(0.5, "b")}, meta={"threshold": "marchenko-pastur"}))
    (tmp_path / "snr_results_x.meta.json").write_text(DEEP)
    assert read_scores(str(path), "x").meta == {}


def test_unreadable_bytes(tmp_path):
    path = tmp_path / "snr_results_x.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CacheError, match="UTF-8"):
        read_scores(str(path), "x")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path):
    path = tmp_path / "out.yaml"
    path.write_text("good\n")
    with pytest.raises(TypeError):
        atomic_write_text(str(path), object())  # fails while writing
    assert path.read_text() == "good\n"
    assert os.listdir(tmp_path) == ["out.yaml"], "no temporary file left behind"


def test_atomic_write_into_a_file_path_is_a_cache_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="cannot write"):
        atomic_write_text(str(blocker / "out.yaml"), "text")
